"""Training loops shared by every algorithm: in-process gymnasium envs, evaluation, metrics.

The agent works in actions in [-1, 1]^|A|; `make_env` rescales to the env's bounds so that the same actor is what
gets exported (the export scales to the bounds inside the ONNX graph).

`DivergenceGuard` stops a run whose update statistics diverge (bounds in `DivergenceBounds`): the caller checks every
update's info, raises `DivergenceError` naming the quantity and the step, and never writes the diverged state.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from acalign_robot.algo.networks import TanhGaussianActor
from acalign_robot.data.replay_buffer import ReplayBuffer

__all__ = [
    "DivergenceBounds",
    "DivergenceError",
    "DivergenceGuard",
    "MetricsWriter",
    "OnlineLoop",
    "evaluate",
    "make_env",
    "resolve_device",
    "set_torch_threads",
]

_log = logging.getLogger(__name__)


def set_torch_threads(threads: int) -> None:
    """Learner processes default to 1 thread: a 2-thread learner disturbs a controller on the same 2 cores."""
    torch.set_num_threads(threads)


def resolve_device(requested: str) -> torch.device:
    """The torch device for `requested` ('auto', 'cpu' or 'cuda'): 'auto' takes CUDA when torch sees a GPU.

    'cuda' on a machine where torch sees none (a CPU build of torch, no driver, CUDA_VISIBLE_DEVICES empty) runs on
    the CPU with a warning instead of failing: a learner keeps working, and its log says why it is slow.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda")
        _log.info("device %s: %s (%s)", requested, device, torch.cuda.get_device_name(device))
        return device
    if requested == "cuda":
        reason = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device visible"
        _log.warning("device cuda requested but torch sees no GPU (%s): running on the CPU", reason)
    return torch.device("cpu")


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def make_env(env_id: str, seed: int | None = None) -> gym.Env:
    """A gymnasium env whose action space is rescaled to [-1, 1] (a no-op for envs already there)."""
    env = gym.make(env_id)
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"{env_id}: only Box action spaces are supported, got {space}")
    if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
        env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


@torch.no_grad()
def evaluate(actor: TanhGaussianActor, env_id: str, episodes: int, seed: int, sampled: bool = False) -> list[float]:
    """Returns over `episodes` episodes on a fresh env: deterministic (tanh of the mean), or with `sampled` actions
    drawn from the policy (how a stochastic behaviour policy's data scores)."""
    env = make_env(env_id)
    device = _device_of(actor)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
            action = actor.sample(obs_t)[0] if sampled else actor.act_deterministic(obs_t)
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


@dataclass(frozen=True)
class DivergenceBounds:
    """When an update's statistics mean the run has diverged. Generous on purpose: healthy runs stay far inside.

    With R = max(1, max |reward| of the data so far) and H = 1 / (1 - gamma) (the horizon):
    - every statistic an update reports (losses, alpha, Q mean, entropy, ...) must be finite;
    - alpha <= alpha_per_reward * R. Healthy SAC / ACA runs keep alpha around 1e-3 .. 1 for rewards of order 1
      (alpha trades reward against nats of entropy, so its scale follows the reward's);
    - |Q mean| <= q_horizons * R * H. A soft value is at most (max |r| + alpha * entropy) * H, so 100 horizons of the
      largest reward only pass a critic that has left every value the data can support;
    - the critic loss (a squared error of Q-scale values) <= (q_horizons * R * H) ** 2. The Z loss is only held
      finite: its scale is set by the dataset actions' log-likelihood, which a narrow healthy actor makes large.
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

    def __init__(self, phase: str, unit: str, gamma: float, bounds: DivergenceBounds = DivergenceBounds()):
        self.phase, self.unit, self.gamma, self.bounds = phase, unit, gamma, bounds
        self.last_good: tuple[Path, int] | None = None

    def saved(self, path: Path, step: int) -> None:
        self.last_good = (Path(path), step)

    def check(self, step: int, info: Mapping[str, float], reward_abs_max: float) -> None:
        """Raise DivergenceError at the first statistic of `info` that is non-finite or beyond its bound."""
        q_bound = self.bounds.q_bound(reward_abs_max, self.gamma)
        q_how = f"{self.bounds.q_horizons:g} x R / (1 - gamma)"
        limits = {
            "alpha": (self.bounds.alpha_bound(reward_abs_max), f"{self.bounds.alpha_per_reward:g} x R"),
            "q_mean": (q_bound, q_how),
            "loss/critic": (q_bound**2, f"({q_how})^2"),
        }
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


class MetricsWriter:
    """Metrics as JSON lines (`metrics.jsonl`), the evaluation curve as CSV (`eval.csv`), optional TensorBoard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")
        eval_path = self.run_dir / "eval.csv"
        new_file = not eval_path.exists()
        self._eval_file = open(eval_path, "a", newline="")
        self._eval_csv = csv.writer(self._eval_file)
        if new_file:
            self._eval_csv.writerow(
                ["phase", "step", "return_mean", "return_std", "normalized_score", "wall_s", "alpha", "q_mean"]
            )
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        self._start = time.monotonic()

    def log(self, step: int, values: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def log_eval(
        self,
        phase: str,
        step: int,
        returns: list[float],
        normalized: float | None,
        alpha: float | None = None,
        q_mean: float | None = None,
    ) -> None:
        """One eval.csv row; `alpha` and `q_mean` from the latest update (empty before the first one)."""
        row = [phase, step, float(np.mean(returns)), float(np.std(returns)), normalized, time.monotonic() - self._start]
        row += ["" if alpha is None else alpha, "" if q_mean is None else q_mean]
        self._eval_csv.writerow(row)
        self._eval_file.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._eval_file.close()
        if self._tb is not None:
            self._tb.close()


@dataclass
class OnlineLoop:
    """Act in an env with the stochastic policy, store every transition, update at UTD 1 once the buffer holds
    more than a batch. `random_warmup_steps` uniform-random actions first (behaviour agents only; ACA and the
    naive baseline use none). `on_transition` sees every step (for dataset recording)."""

    env_id: str
    seed: int
    random_warmup_steps: int = 0
    on_transition: Callable[[dict[str, Any]], None] | None = None
    episode_returns: list[tuple[int, float]] = field(default_factory=list)

    def run(
        self,
        agent,
        buffer: ReplayBuffer,
        steps: int,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        progress=None,
    ) -> None:
        env = make_env(self.env_id, self.seed)
        rng = np.random.default_rng(self.seed)
        obs, _ = env.reset(seed=self.seed)
        episode_return, info = 0.0, {}
        batch_size = agent.config.batch_size
        device = _device_of(agent.actor)
        for step in range(1, steps + 1):
            if step <= self.random_warmup_steps:
                action = rng.uniform(-1.0, 1.0, size=env.action_space.shape).astype(np.float32)
            else:
                with torch.no_grad():
                    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
                    action = agent.actor.sample(obs_t)[0][0].cpu().numpy()
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(obs, action, reward, next_obs, float(terminated))
            if self.on_transition is not None:
                self.on_transition(
                    {
                        "obs": obs,
                        "action": action,
                        "reward": reward,
                        "next_obs": next_obs,
                        "terminated": terminated,
                        "truncated": truncated,
                        "step": step,
                    }
                )
            episode_return += float(reward)
            obs = next_obs
            if terminated or truncated:
                self.episode_returns.append((step, episode_return))
                obs, _ = env.reset()
                episode_return = 0.0
            if len(buffer) > batch_size:
                info = agent.update(buffer.sample(batch_size, rng))
            if on_step is not None:
                on_step(step, info)
            if progress is not None:
                progress.update(1)
        env.close()
