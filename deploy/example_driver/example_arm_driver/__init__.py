"""An acalign-robot driver plugin: a position-controlled arm whose "SDK" is a simulated servo bus.

The plugin convention (acalign_robot/drivers/base.py): a `Driver` subclass whose settings are one frozen dataclass,
declared as `Config` and taken by `__init__`; a launch file's `args:` block is loaded into it strictly (unknown keys,
wrong types and `validate()` are refused with the file and field). The duties of each method are written out in
acalign_robot/drivers/template.py. For your robot, replace `SimulatedServoBus` with the SDK's client and keep the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acalign_robot.config import FieldError
from acalign_robot.drivers.base import Driver, DriverSpec, StepResult, box

__all__ = ["ExampleArmConfig", "ExampleArmDriver"]


@dataclass(frozen=True)
class ExampleArmConfig:
    """The `args:` of `kind: example_arm`."""

    goal_rad: tuple[float, ...] = (-0.5, 0.0, 0.5)  # one target position per joint: the number of joints
    control_period_s: float = 0.01  # the servo bus's cycle
    max_speed_rad_s: float = 2.0  # the servos' own speed limit
    joint_limit_rad: float = 1.5
    episode_steps: int = 500

    def validate(self) -> None:
        if not self.goal_rad or any(abs(goal) > self.joint_limit_rad for goal in self.goal_rad):
            raise FieldError("goal_rad", f"one target per joint, each within +-joint_limit_rad, got {self.goal_rad}")
        if self.control_period_s <= 0 or self.max_speed_rad_s <= 0 or self.joint_limit_rad <= 0:
            raise FieldError("control_period_s", "control_period_s, max_speed_rad_s and joint_limit_rad must be > 0")
        if self.episode_steps < 1:
            raise FieldError("episode_steps", f"must be at least 1, got {self.episode_steps}")


class SimulatedServoBus:
    """Stands in for a vendor SDK: each servo moves toward its target at most `max_step_rad` per cycle."""

    def __init__(self, joints: int, max_step_rad: float):
        self.positions = np.zeros(joints)
        self.max_step_rad = max_step_rad

    def write_targets(self, targets: np.ndarray) -> None:
        self.positions += np.clip(targets - self.positions, -self.max_step_rad, self.max_step_rad)

    def read_positions(self) -> np.ndarray:
        return self.positions.copy()


class ExampleArmDriver(Driver):
    """Reach `goal_rad` with position commands; observation = positions + goal, reward = -squared distance."""

    Config = ExampleArmConfig

    def __init__(self, config: ExampleArmConfig):
        self.config = config
        joints = len(config.goal_rad)
        self.goal = np.asarray(config.goal_rad)
        self.bus = SimulatedServoBus(joints, config.max_speed_rad_s * config.control_period_s)
        limit = config.joint_limit_rad
        self.spec = DriverSpec(
            name="example-arm",
            observation=box([-limit] * joints + [-np.pi] * joints, [limit] * joints + [np.pi] * joints, "rad"),
            action=box([-limit] * joints, [limit] * joints, "rad"),
            control_period_s=config.control_period_s,
            safe_action=np.zeros(joints, dtype=np.float32),
            safe_action_kind="hold",  # position control: hold where the arm is (safe_action below)
        )
        self._steps = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.bus.positions[:] = 0.0  # a real arm: move to the start pose with the SDK's own trajectory generator
        self._steps = 0
        return self._observation()

    def step(self, action: np.ndarray) -> StepResult:
        action = np.asarray(action, dtype=np.float64)
        rejected = not np.all(np.isfinite(action))  # the server already refuses these; a driver never trusts its caller
        if rejected:
            action = self.safe_action().astype(np.float64)
        limit = self.config.joint_limit_rad
        targets = np.clip(action, -limit, limit)
        speed_limited = bool(np.any(np.abs(targets - self.bus.read_positions()) > self.bus.max_step_rad))
        self.bus.write_targets(targets)
        self._steps += 1
        positions = self.bus.read_positions()
        reward = -float(np.sum((positions - self.goal) ** 2))
        # What the robot reports beside the observation, the same keys every step (StepReply.info): it reaches the
        # controller's log, datasets converted from it, and RemoteEnv's info.
        info = {
            "rejected_action": rejected,
            "speed_limited": speed_limited,  # a servo could not reach its target within one period
            "tracking_error_rad": (targets - positions).astype(np.float32),  # where the servos have yet to go
        }
        return StepResult(self._observation(), reward, False, self._steps >= self.config.episode_steps, info)

    def safe_action(self) -> np.ndarray:
        return self.bus.read_positions().astype(np.float32)

    def _observation(self) -> np.ndarray:
        return np.concatenate([self.bus.read_positions(), self.goal]).astype(np.float32)

    def close(self) -> None:
        self.bus.write_targets(self.bus.read_positions())
