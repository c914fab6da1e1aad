"""When a training run must stop: `DivergenceGuard` stops a run whose update statistics diverge (bounds in
`DivergenceBounds`); the caller checks every update's info, raises `DivergenceError` naming the quantity and the step,
and never writes the diverged state."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DivergenceBounds", "DivergenceError", "DivergenceGuard"]


@dataclass(frozen=True)
class DivergenceBounds:
    """When an update's statistics mean the run has diverged. Generous on purpose: healthy runs stay far inside.

    With R = max(1, max |reward| of the data so far x the run's reward scale: the rewards the critics see) and
    H = 1 / (1 - gamma) (the horizon):
    - every statistic an update reports (losses, alpha, Q mean, entropy, ...) must be finite;
    - alpha <= alpha_per_reward * R. Healthy SAC / ACA runs keep alpha around 1e-3 .. 1 for rewards of order 1
      (alpha trades reward against nats of entropy, so its scale follows the reward's);
    - |Q mean| <= q_horizons * R * H. A soft value is at most (max |r| + alpha * entropy) * H, so 100 horizons of the
      largest reward only pass a critic that has left every value the data can support;
    - the critic loss (a squared error of Q-scale values) <= (q_horizons * R * H) ** 2;
    - phase 1's |Z mean| <= q_horizons * max(R, |entropy|) * H: Z(s) is a soft value of pi less one log-likelihood,
      so per step it carries a reward and a log pi(a'|s') of the actor's samples (whose mean is minus the entropy
      the update reports). The Z loss itself is only held finite: its scale is set by the dataset actions'
      log-likelihood, which a narrow healthy actor makes large. Z bootstrapped from itself diverged on the Panda
      reach medium data (mean 4e4 at 1k updates, 2e8 at 30k; bound there 100 * 4.7 * 100 = 4.7e4).
    A runaway temperature (alpha growing without bound where its entropy target is unreachable) lifts the critic's
    targets with it, so it usually trips the Q bound first (issue 15: alpha 110 with Q mean 2e7 for R = 3.6).
    """

    alpha_per_reward: float = 1e3
    q_horizons: float = 100.0

    def alpha_bound(self, reward_abs_max: float) -> float:
        return self.alpha_per_reward * max(1.0, reward_abs_max)

    def q_bound(self, reward_abs_max: float, gamma: float) -> float:
        return self.q_horizons * max(1.0, reward_abs_max) / (1.0 - gamma)


class DivergenceError(RuntimeError):
    """A run stopped because a training statistic diverged; the message names the quantity, the step and the last
    good checkpoint. `step` and `what` (the quantity, its value and its bound) are kept for callers that rephrase."""

    def __init__(self, message: str, step: int, what: str):
        super().__init__(message)
        self.step, self.what = step, what


class DivergenceGuard:
    """Checks each update's info against `DivergenceBounds` and remembers the last checkpoint written before.

    An update's info describes the parameters it started from, so it vouches for a checkpoint saved after the update
    before it: callers write a checkpoint only once the next update passed (`pipeline.py`).
    """

    def __init__(
        self,
        phase: str,
        unit: str,
        gamma: float,
        reward_scale: float = 1.0,
        bounds: DivergenceBounds = DivergenceBounds(),
    ):
        self.phase, self.unit, self.gamma, self.reward_scale, self.bounds = phase, unit, gamma, reward_scale, bounds
        self.last_good: tuple[Path, int] | None = None

    def saved(self, path: Path, step: int) -> None:
        self.last_good = (Path(path), step)

    def check(self, step: int, info: Mapping[str, float], reward_abs_max: float) -> None:
        """Raise DivergenceError at the first statistic of `info` that is non-finite or beyond its bound.

        `reward_abs_max`: the largest |reward| of the data so far, before the reward scale."""
        reward_abs_max = reward_abs_max * self.reward_scale
        q_bound = self.bounds.q_bound(reward_abs_max, self.gamma)
        q_how = f"{self.bounds.q_horizons:g} x R / (1 - gamma)"
        limits = {
            "alpha": (self.bounds.alpha_bound(reward_abs_max), f"{self.bounds.alpha_per_reward:g} x R"),
            "q_mean": (q_bound, q_how),
            "loss/critic": (q_bound**2, f"({q_how})^2"),
        }
        if "entropy" in info:
            per_step = max(1.0, reward_abs_max, abs(info["entropy"]))
            z_how = f"{self.bounds.q_horizons:g} x max(R, |entropy| = {abs(info['entropy']):.3g}) / (1 - gamma)"
            limits["z_mean"] = (self.bounds.q_horizons * per_step / (1.0 - self.gamma), z_how)
        for name, value in info.items():
            if not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                self._fail(step, f"{name} = {value} is not finite")
            if name in limits and abs(value) > limits[name][0]:
                bound, how = limits[name]
                scale = f"R = {max(1.0, reward_abs_max):.3g}, gamma = {self.gamma}"
                self._fail(step, f"{name} = {value:.4g} is beyond its bound {bound:.4g} ({how}; {scale})")

    def _fail(self, step: int, what: str) -> None:
        if self.last_good is None:
            kept = "no checkpoint of this run was written"
        else:
            kept = f"the last good checkpoint is {self.last_good[0]} ({self.unit} {self.last_good[1]})"
        raise DivergenceError(f"{self.phase} diverged at {self.unit} {step}: {what}; {kept}", step, what)
