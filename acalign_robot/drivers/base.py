"""The driver interface: what the controller needs from a simulator or a real robot, and nothing more.

A driver owns the hardware (or the simulation): it applies an action, advances one control period and returns
the observation. It declares its spaces with bounds and units, its control period and its safe action, which is
what the driver server applies when commands stop arriving (watchdog) and what the controller sends in SAFE state.

Drivers are synchronous and single-threaded; the driver server (drivers/server.py) serves one over ZeroMQ.
Nothing here imports torch.

Your own driver is a plugin (drivers/plugins.py), never an edit of this package. The convention it follows:
- it subclasses `Driver`;
- its settings are one dataclass, declared as the class attribute `Config`, and `__init__` takes an instance of it
  as its only argument. A driver config's `args:` block is loaded into `Config` as strictly as any config file
  (unknown keys, wrong types, its `validate()`). A driver without settings leaves `Config` as None and is built
  with no arguments (and refuses any `args:`);
- a launch file names it by `kind: python` with `target: package.module:Class`, or, once its package registers it in
  the `acalign.drivers` entry-point group, by the entry point's name (`kind: my_arm`).
deploy/example_driver/ is a complete plugin package to copy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from acalign_robot.spaces import BoxSpace, RobotLimits

__all__ = ["BoxSpace", "Driver", "DriverSpec", "RobotLimits", "StepResult", "box"]


def box(low, high, units) -> BoxSpace:
    """A BoxSpace from bounds (+-inf allowed for observations) and one unit string, or one per dimension."""
    low = np.asarray(low, dtype=np.float64).ravel()
    high = np.asarray(high, dtype=np.float64).ravel()
    if low.shape != high.shape or np.any(low > high):
        raise ValueError(f"box bounds must have one shape and low <= high, got {low} / {high}")
    units = (units,) * low.size if isinstance(units, str) else tuple(units)
    if len(units) != low.size:
        raise ValueError(f"box: {len(units)} units for {low.size} dimensions")
    return BoxSpace(low, high, units)


@dataclass(frozen=True)
class DriverSpec:
    """What a driver declares in the handshake."""

    name: str
    observation: BoxSpace
    action: BoxSpace
    control_period_s: float
    safe_action: np.ndarray  # (action_dim,) for "zero"; a "hold" driver overrides Driver.safe_action()
    safe_action_kind: Literal["zero", "hold"] = "zero"
    env_id: str | None = None  # the gymnasium env this driver stands for, when there is one
    # A simulator whose time stops between steps: a client may ask for pauses (Reset.pause_s) in which the watchdog
    # steps nothing. Never for a robot: its time goes on, and only the safe action keeps it safe (docs/safety.md).
    can_pause: bool = False
    can_render: bool = False  # `render()` returns an RGB frame
    # A robot's joint, velocity, torque and workspace limits, where the observation holds them: the controller's
    # safety filter checks every observation against them (None: the driver declares no such limits).
    limits: RobotLimits | None = None

    def __post_init__(self) -> None:
        if self.limits is not None:
            self.limits.check(self.observation.shape[0])


@dataclass
class StepResult:
    obs: np.ndarray  # (obs_dim,) float32
    reward: float
    terminated: bool  # the task ended (no bootstrap)
    truncated: bool  # time limit
    # The driver's own report on the step, passed to the client in StepReply.info and logged: at most 8 names, each a
    # number, bool, string (<= 64 UTF-8 bytes) or numpy array (<= 64 elements); protocol.check_info says what fails.
    # Report the same keys every step: the controller's log fixes its columns at the first step.
    info: dict[str, Any] = field(default_factory=dict)


class Driver(ABC):
    """A simulator or robot behind the control channel. Implementations: mujoco.py, loopback.py, template.py."""

    Config: ClassVar[type | None] = None  # the settings dataclass `__init__` takes (the plugin convention, above)
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

    def render(self) -> np.ndarray:
        """An RGB image of the scene now, (height, width, 3) uint8; only drivers whose spec says `can_render`."""
        raise NotImplementedError(f"driver {self.spec.name} cannot render")

    def close(self) -> None:  # noqa: B027 - optional hook: drivers without resources need not override it
        """Release the hardware or simulation (idempotent)."""
