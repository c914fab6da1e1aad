"""Training loops shared by every algorithm: in-process gymnasium envs, evaluation, metrics.

The agent works in actions in [-1, 1]^|A|; `make_env` rescales to the env's bounds so that the same actor is what
gets exported (the export scales to the bounds inside the ONNX graph).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from acalign_robot.algo.networks import TanhGaussianActor
from acalign_robot.data.replay_buffer import ReplayBuffer

__all__ = ["MetricsWriter", "OnlineLoop", "evaluate", "make_env", "set_torch_threads"]


def set_torch_threads(threads: int) -> None:
    """Learner processes default to 1 thread: a 2-thread learner disturbs a controller on the same 2 cores."""
    torch.set_num_threads(threads)


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
def evaluate(actor: TanhGaussianActor, env_id: str, episodes: int, seed: int) -> list[float]:
    """Deterministic returns (tanh of the mean) over `episodes` episodes on a fresh env."""
    env = make_env(env_id)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action = actor.act_deterministic(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


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
            self._eval_csv.writerow(["phase", "step", "return_mean", "return_std", "normalized_score", "wall_s"])
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

    def log_eval(self, phase: str, step: int, returns: list[float], normalized: float | None) -> None:
        row = [phase, step, float(np.mean(returns)), float(np.std(returns)), normalized, time.monotonic() - self._start]
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
        for step in range(1, steps + 1):
            if step <= self.random_warmup_steps:
                action = rng.uniform(-1.0, 1.0, size=env.action_space.shape).astype(np.float32)
            else:
                with torch.no_grad():
                    action = agent.actor.sample(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy()
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
