"""A minimal driver with no simulator: point masses driven by acceleration commands.

Used by tests and benchmarks that need a driver process without MuJoCo (and by the template as a reference for
the duties of `step`). State per action dimension: position and velocity; observation = [positions, velocities];
reward = -sum(position^2); terminated when a position leaves [-10, 10]; truncated after `max_steps` ticks.
Deterministic given the seed.
"""

from __future__ import annotations

import numpy as np

from acalign_robot.drivers.base import Driver, DriverSpec, StepResult, box

__all__ = ["LoopbackDriver"]


class LoopbackDriver(Driver):
    def __init__(self, action_dim: int = 2, control_period_s: float = 0.01, max_steps: int = 200, seed: int = 0):
        self.max_steps = max_steps
        self.dt = control_period_s
        inf = float("inf")
        self.spec = DriverSpec(
            name="loopback",
            observation=box(
                [-inf] * (2 * action_dim), [inf] * (2 * action_dim), ("m",) * action_dim + ("m/s",) * action_dim
            ),
            action=box([-1.0] * action_dim, [1.0] * action_dim, "m/s^2"),
            control_period_s=control_period_s,
            safe_action=np.zeros(action_dim, dtype=np.float32),
            safe_action_kind="zero",
            can_pause=True,  # no hardware behind it: time stops between steps
        )
        self._rng = np.random.default_rng(seed)
        self._position = np.zeros(action_dim)
        self._velocity = np.zeros(action_dim)
        self._steps = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._position = self._rng.uniform(-1.0, 1.0, size=self._position.shape)
        self._velocity = np.zeros_like(self._velocity)
        self._steps = 0
        return self._observation()

    def step(self, action: np.ndarray) -> StepResult:
        acceleration = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._velocity += acceleration * self.dt
        self._position += self._velocity * self.dt
        self._steps += 1
        reward = -float(np.sum(self._position**2))
        terminated = bool(np.any(np.abs(self._position) > 10.0))
        truncated = self._steps >= self.max_steps and not terminated
        return StepResult(self._observation(), reward, terminated, truncated)

    def _observation(self) -> np.ndarray:
        return np.concatenate([self._position, self._velocity]).astype(np.float32)
