"""The driver interface: what the controller needs from a simulator or a real robot, and nothing more.

A driver owns the hardware (or the simulation): it applies an action, advances one control period and returns
the observation. It declares its spaces with bounds and units, its control period and its safe action, which is
what the driver server applies when commands stop arriving (watchdog) and what the controller sends in SAFE state.

Drivers are synchronous and single-threaded; the driver server (runtime/driver_server.py) serves one over ZeroMQ.
Nothing here imports torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["BoxSpec", "Driver", "DriverSpec", "StepResult"]


@dataclass(frozen=True)
class BoxSpec:
    """A flat box space: per-dimension bounds (+-inf allowed for observations) and units."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    units: tuple[str, ...]

    def __post_init__(self):
        if not (len(self.low) == len(self.high) == len(self.units)):
            raise ValueError(
                f"BoxSpec: low/high/units lengths differ ({len(self.low)}/{len(self.high)}/{len(self.units)})"
            )
        if any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise ValueError("BoxSpec: low > high in some dimension")

    @property
    def dim(self) -> int:
        return len(self.low)

    @classmethod
    def from_bounds(cls, low, high, unit: str) -> BoxSpec:
        low, high = np.asarray(low, dtype=np.float64).ravel(), np.asarray(high, dtype=np.float64).ravel()
        return cls(tuple(map(float, low)), tuple(map(float, high)), (unit,) * len(low))

    def to_dict(self) -> dict[str, Any]:
        return {"low": list(self.low), "high": list(self.high), "units": list(self.units)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoxSpec:
        return cls(tuple(map(float, data["low"])), tuple(map(float, data["high"])), tuple(map(str, data["units"])))


@dataclass(frozen=True)
class DriverSpec:
    """What a driver declares in the handshake."""

    name: str
    observation: BoxSpec
    action: BoxSpec
    control_period_s: float
    safe_action: tuple[float, ...]
    safe_action_kind: Literal["zero", "hold"] = "zero"
    env_id: str | None = None  # the gymnasium env this driver stands for, when there is one

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "observation": self.observation.to_dict(),
            "action": self.action.to_dict(),
            "control_period_s": self.control_period_s,
            "safe_action": list(self.safe_action),
            "safe_action_kind": self.safe_action_kind,
            "env_id": self.env_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriverSpec:
        return cls(
            name=str(data["name"]),
            observation=BoxSpec.from_dict(data["observation"]),
            action=BoxSpec.from_dict(data["action"]),
            control_period_s=float(data["control_period_s"]),
            safe_action=tuple(map(float, data["safe_action"])),
            safe_action_kind=data["safe_action_kind"],
            env_id=data.get("env_id"),
        )


@dataclass
class StepResult:
    obs: np.ndarray  # (obs_dim,) float32
    reward: float
    terminated: bool  # the task ended (no bootstrap)
    truncated: bool  # time limit
    info: dict[str, Any] = field(default_factory=dict)


class Driver(ABC):
    """A simulator or robot behind the control channel. Implementations: mujoco.py, loopback.py, template.py."""

    spec: DriverSpec

    @abstractmethod
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Bring the system to a start state and return the first observation (obs_dim,) float32."""

    @abstractmethod
    def step(self, action: np.ndarray) -> StepResult:
        """Apply `action` (already inside the declared bounds) for one control period and observe."""

    def safe_action(self) -> np.ndarray:
        """The action applied when commands stop (watchdog) or the controller is in SAFE state."""
        return np.asarray(self.spec.safe_action, dtype=np.float32)

    def close(self) -> None:  # noqa: B027 - optional hook: drivers without resources need not override it
        """Release the hardware or simulation (idempotent)."""
