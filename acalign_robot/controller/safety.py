"""The controller's safeguards: the action filter on every tick, and the rollback monitor after every episode.

The action filter stands between a policy's output and the driver. Layers, in order, for every tick: finite check
(NaN/inf -> the safe action and a fault that latches SAFE) -> clip to the action bounds -> per-tick rate limit
(|a_t - a_(t-1)| <= max_delta * (high - low), per dimension). A driver that declares robot limits (DriverSpec.limits:
joint ranges, joint velocity limits, the end effector's workspace box) has every observation it returns checked
against them (`observe`, `LimitMonitor`), the last one of an episode included: with `on_limit: hold` the next action
after an observation outside is the safe action (the arm holds, the episode goes on), with `latch` SAFE latches at
once (hardware: an operator looks before motion resumes).
While SAFE is latched the filter returns the driver's safe action until `clear()`. Each intervention is counted and
reported in the returned flags, which travel with the transition.

The rollback monitor (RollbackConfig) watches the returns of finished episodes and names the policy to go back to
when they collapse under a fine-tuned version; the controller does the swap.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from acalign_robot.config import FieldError
from acalign_robot.spaces import RobotLimits

if TYPE_CHECKING:  # for the hints only: the filter's importers (log tools, tests) need no onnxruntime
    from acalign_robot.policy.runner import PolicyRunner

__all__ = ["ActionFilter", "FilterFlags", "LimitMonitor", "RollbackConfig", "RollbackMonitor", "SafetyConfig"]


@dataclass(frozen=True)
class SafetyConfig:
    max_delta_per_tick: float = 1.0  # fraction of the action range per tick; 1.0 still limits a full swing to half
    latch_on_nonfinite: bool = True
    # An observation outside the driver's declared robot limits: "hold" sends the safe action for that tick, "latch"
    # latches SAFE, "off" does not check (a driver without limits is never checked).
    on_limit: Literal["off", "hold", "latch"] = "hold"

    def validate(self) -> None:
        if not 0.0 < self.max_delta_per_tick <= 1.0:
            raise FieldError("max_delta_per_tick", f"must be in (0, 1], got {self.max_delta_per_tick}")


# Bit flags recorded with each transition.
class FilterFlags:
    NONFINITE = 1
    CLIPPED = 2
    RATE_LIMITED = 4
    SAFE = 8  # the safe action was sent (SAFE latched, e-stop, or a fault this tick)
    LIMIT = 16  # the safe action was sent because the last observation was outside the robot's limits (hold)


class LimitMonitor:
    """Checks an observation against a driver's RobotLimits; counts each kind of violation."""

    def __init__(self, limits: RobotLimits):
        joints = limits.joint_position.shape[0]
        self.joint_position = slice(limits.joint_position_index, limits.joint_position_index + joints)
        self.joint_velocity = slice(limits.joint_velocity_index, limits.joint_velocity_index + joints)
        self.end_effector = slice(limits.end_effector_index, limits.end_effector_index + 3)
        self.checks = (
            ("joint_position", self.joint_position, limits.joint_position),
            ("joint_velocity", self.joint_velocity, limits.joint_velocity),
            ("workspace", self.end_effector, limits.workspace),
        )
        self.bounds = tuple(
            (name, where, space.low.astype(np.float32), space.high.astype(np.float32))
            for name, where, space in self.checks
        )
        self.counts = {"limit_ticks": 0, **{f"limit_{name}": 0 for name, _, _ in self.checks}}

    def violations(self, obs: np.ndarray) -> list[str]:
        """The limits `obs` is outside of (NaN compares as inside: the non-finite checks own it)."""
        found = []
        for name, where, low, high in self.bounds:
            part = obs[where]
            if (part < low).any() or (part > high).any():
                self.counts[f"limit_{name}"] += 1
                found.append(name)
        if found:
            self.counts["limit_ticks"] += 1
        return found


class ActionFilter:
    def __init__(
        self,
        config: SafetyConfig,
        low: np.ndarray,
        high: np.ndarray,
        safe_action: np.ndarray,
        limits: RobotLimits | None = None,
    ):
        self.config = config
        self.limits = None if limits is None or config.on_limit == "off" else LimitMonitor(limits)
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        self.safe_action = np.asarray(safe_action, dtype=np.float32)
        self.max_delta = (self.high - self.low) * np.float32(config.max_delta_per_tick)
        self.safe = False
        self.safe_reason = ""
        self.latched_at_s: float | None = None  # time.monotonic() of the last latch
        self.counts = {"nonfinite": 0, "clipped": 0, "rate_limited": 0, "safe_ticks": 0}
        self._previous = self.safe_action.copy()
        self._hold = False  # the last observation was outside the robot's limits (on_limit: hold)

    def latch(self, reason: str) -> None:
        """Enter SAFE (idempotent): the safe action is sent until `clear()`."""
        if not self.safe:
            self.safe, self.safe_reason = True, reason
            self.latched_at_s = time.monotonic()

    def clear(self) -> None:
        self.safe, self.safe_reason = False, ""

    def reset(self) -> None:
        """A new episode: the rate limit starts again from the safe action."""
        self._previous = self.safe_action.copy()
        self._hold = False

    def observe(self, obs: np.ndarray) -> None:
        """Check an observation the driver returned against the robot's limits (a no-op without them)."""
        if self.limits is None:
            return
        outside = self.limits.violations(obs)
        if outside and self.config.on_limit == "latch":
            self.latch(f"observation outside the robot's limits: {', '.join(outside)}")
        self._hold = bool(outside)

    def __call__(self, action: np.ndarray) -> tuple[np.ndarray, int]:
        """(executed action, flags) for the policy's `action`.

        Written with plain ufuncs (maximum/minimum, `!=`): np.clip and np.array_equal cost ~1.8 us each in Python-level
        dispatch, which is most of this filter on a 3-dimensional action.
        """
        flags = 0
        if not np.isfinite(action).all():
            self.counts["nonfinite"] += 1
            flags |= FilterFlags.NONFINITE
            if self.config.latch_on_nonfinite:
                self.latch("policy produced a non-finite action")
            else:
                action = self._previous
        if self._hold and not self.safe:
            self._previous = self.safe_action
            return self.safe_action, flags | FilterFlags.LIMIT | FilterFlags.SAFE
        if self.safe:
            self.counts["safe_ticks"] += 1
            self._previous = self.safe_action
            return self.safe_action, flags | FilterFlags.SAFE
        clipped = np.minimum(np.maximum(action, self.low), self.high)
        if (clipped != action).any():
            self.counts["clipped"] += 1
            flags |= FilterFlags.CLIPPED
        previous = self._previous
        limited = np.minimum(np.maximum(clipped, previous - self.max_delta), previous + self.max_delta)
        if (limited != clipped).any():
            self.counts["rate_limited"] += 1
            flags |= FilterFlags.RATE_LIMITED
        self._previous = limited.astype(np.float32, copy=False)
        return self._previous, flags


@dataclass(frozen=True)
class RollbackConfig:
    """Revert to a good policy when online returns collapse (off by default in sim, on for hardware).

    The baseline is the mean return of the first `baseline_episodes` episodes (the policy the session started with,
    before any fine-tuned version). After each episode, the mean of the last `window` returns is compared with
    `fraction` * baseline (for negative baselines: the baseline minus (1 - fraction) * |baseline|); `patience`
    episodes in a row below it roll back, and newer versions up to the bad one are refused from then on. The
    learner is told with a Stats message.

    Where to (`to`):
      first      the version the session started with: the one vetted before deployment (the default). A slow
                 decline can carry the window over several versions, so the newest version whose window held up may
                 already be on the way down: on the robot twin, naive fine-tuning rolled back to such a version.
      last_good  the newest version whose window was above the threshold: keeps what fine-tuning gained, at the
                 risk above.
    """

    enabled: bool = False
    baseline_episodes: int = 5
    window: int = 5
    fraction: float = 0.5
    patience: int = 3
    to: Literal["first", "last_good"] = "first"

    def validate(self) -> None:
        if min(self.baseline_episodes, self.window, self.patience) < 1:
            raise FieldError("window", "baseline_episodes, window and patience must be >= 1")
        if not 0.0 < self.fraction < 1.0:
            raise FieldError("fraction", f"must be in (0, 1), got {self.fraction}")


class RollbackMonitor:
    """The rollback decision (RollbackConfig): fed each finished episode's return, it names the runner to go back to.

    It keeps the runner to go back to alive: `good_runner`, the one the session started with, or with `to:
    last_good` the newest one whose returns held up (the first until then, and for ever when rollback is off).
    """

    def __init__(self, config: RollbackConfig, runner: PolicyRunner):
        self.config = config
        self.good_runner = runner
        self._baseline_returns: list[float] = []  # the first `baseline_episodes` returns
        self._recent_returns: collections.deque[float] = collections.deque(maxlen=config.window)
        self._below = 0  # consecutive episodes with the moving average under the threshold

    def after_episode(self, episode_return: float, runner: PolicyRunner) -> PolicyRunner | None:
        """Record the return of an episode that ended under `runner` (the one running now); the runner to roll back
        to, or None to keep `runner`."""
        settings = self.config
        if not settings.enabled:
            return None
        if len(self._baseline_returns) < settings.baseline_episodes:
            self._baseline_returns.append(episode_return)
        self._recent_returns.append(episode_return)
        if len(self._baseline_returns) < settings.baseline_episodes:
            return None
        baseline = float(np.mean(self._baseline_returns))
        threshold = baseline - (1.0 - settings.fraction) * abs(baseline)
        if float(np.mean(self._recent_returns)) >= threshold:
            self._below = 0
            if settings.to == "last_good":
                self.good_runner = runner
            return None
        self._below += 1
        if self._below < settings.patience or runner is self.good_runner:
            return None
        self._below = 0
        return self.good_runner
