"""Template for a real robot driver: copy this file, fill in the SDK calls, keep the duties.

A driver is the only code that talks to the robot's SDK. The driver server (drivers/server.py) calls it
from one thread, once per control tick, and applies `safe_action()` by itself when commands stop arriving
(watchdog). The controller never talks to the SDK.

Duties, method by method:

`__init__` (connect, do not move):
    - open the SDK connection; read joint limits from the robot, not from memory;
    - declare `self.spec`: observation and action BoxSpec with bounds and SI units per dimension (rad, rad/s, N*m,
      m, m/s), `control_period_s` (the rate the SDK's command loop runs at), the safe action and whether it means
      "zero" (zero torque/velocity) or "hold" (hold the current position: for position-controlled arms);
    - an arm declares `limits` in its spec (a RobotLimits: joint ranges, velocity and torque limits, the workspace box,
      and where the observation holds joint positions, velocities and the end effector): the controller then checks
      every observation against them (controller/safety.py; acalign/PandaReach-v0 in sim_tasks/ is an example);
    - never command motion here.

`reset(seed)` (bring to a start state, slowly):
    - move to the start pose with the SDK's own trajectory generator and speed limits, or ask the operator to
      place the robot; block until it is there; return the first observation (float32, in the declared units).

`step(action)` (one control period, bounded time):
    - the action is already clipped to bounds and rate-limited by the controller's safety layer; still refuse a
      non-finite action (apply the safe action instead and report `info["rejected_action"] = True`; report the same
      info keys every step, False when nothing was rejected: the controller's log fixes its columns at the first step);
    - put in `info` what the SDK reports that the observation lacks (motor temperatures, contact flags): at most 8
      names, each a number, bool, short string or small array (drivers/base.py StepResult);
    - send the command, wait for the next state sample (the SDK's own clock sets the period), return it;
    - `terminated`: the task ended (fall detected, goal reached); `truncated`: an episode time limit;
    - never block longer than a few control periods: raise on SDK timeouts, the server turns it into an error
      reply and the controller latches SAFE.

`safe_action()`:
    - "zero": zeros; "hold": the last measured position as the position command. Must be cheap and never fail:
      the watchdog calls it when something else already went wrong.

`close()`:
    - apply the safe action, then disconnect. Idempotent.

Timing: the driver server measures how long `step` takes; keep SDK calls non-allocating where possible.
Safety: hardware e-stops stay wired to the robot's own controller; this software layer is in addition to them.

`TemplateDriver` below is a working example of the shape (a position-controlled arm whose "SDK" is a first-order
lag in memory), so the template itself runs in tests and can be launched from launch/robot_template.yaml. Its
settings follow the plugin convention of drivers/base.py (`Config`, set by `args:` under `kind: template`); to serve
your own driver without editing this package, start from the plugin package deploy/example_driver/.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acalign_robot.config import FieldError
from acalign_robot.drivers.base import Driver, DriverSpec, StepResult, box

__all__ = ["TemplateArmConfig", "TemplateDriver"]


@dataclass(frozen=True)
class TemplateArmConfig:
    """The template arm's settings: the `args:` of a `kind: template` driver."""

    joints: int = 3
    control_period_s: float = 0.01
    episode_steps: int = 500

    def validate(self) -> None:
        if self.joints < 1:
            raise FieldError("joints", f"must be at least 1, got {self.joints}")
        if self.control_period_s <= 0:
            raise FieldError("control_period_s", f"must be positive, got {self.control_period_s}")
        if self.episode_steps < 1:
            raise FieldError("episode_steps", f"must be at least 1, got {self.episode_steps}")


class _InMemoryArmSDK:
    """Stands in for a vendor SDK: joint positions follow position commands with a first-order lag."""

    def __init__(self, joints: int, period_s: float, time_constant_s: float = 0.05):
        self.positions = np.zeros(joints)
        self.alpha = min(1.0, period_s / time_constant_s)

    def command_positions(self, target: np.ndarray) -> None:
        self.positions += self.alpha * (target - self.positions)

    def read_positions(self) -> np.ndarray:
        return self.positions.copy()


class TemplateDriver(Driver):
    """A position-controlled arm with `config.joints` joints; the task is to reach `goal` (rad)."""

    Config = TemplateArmConfig

    def __init__(self, config: TemplateArmConfig):
        joints, control_period_s = config.joints, config.control_period_s
        self.joint_limit_rad = 1.5
        self.goal = np.linspace(-0.5, 0.5, joints)
        self.episode_steps = config.episode_steps
        self.sdk = _InMemoryArmSDK(joints, control_period_s)
        limit = self.joint_limit_rad
        self.spec = DriverSpec(
            name="template-arm",
            observation=box([-limit] * joints + [-np.pi] * joints, [limit] * joints + [np.pi] * joints, "rad"),
            action=box([-limit] * joints, [limit] * joints, "rad"),
            control_period_s=control_period_s,
            safe_action=np.zeros(joints, dtype=np.float32),  # the start pose; "hold" overrides safe_action()
            safe_action_kind="hold",
        )
        self._steps = 0

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.sdk.positions[:] = 0.0
        self._steps = 0
        return self._observation()

    def step(self, action: np.ndarray) -> StepResult:
        action = np.asarray(action, dtype=np.float64)
        rejected = not np.all(np.isfinite(action))
        if rejected:
            action = self.safe_action().astype(np.float64)
        self.sdk.command_positions(np.clip(action, -self.joint_limit_rad, self.joint_limit_rad))
        self._steps += 1
        error = self.sdk.read_positions() - self.goal
        done = self._steps >= self.episode_steps
        return StepResult(self._observation(), -float(np.sum(error**2)), False, done, {"rejected_action": rejected})

    def safe_action(self) -> np.ndarray:
        """Hold: command the position the arm is at now."""
        return self.sdk.read_positions().astype(np.float32)

    def _observation(self) -> np.ndarray:
        return np.concatenate([self.sdk.read_positions(), self.goal]).astype(np.float32)

    def close(self) -> None:
        self.sdk.command_positions(self.sdk.read_positions())
