"""Deterministic evaluation of a policy artifact in gymnasium, through the controller's own PolicyRunner (torch-free).

This evaluates exactly what a robot would run: the ONNX graph with its baked-in normalisation and action scaling.
The graph already outputs actions in the env's bounds, so the env is the raw gymnasium env (no RescaleAction, unlike
`algo.env_loop.make_env`), and its spaces must match the manifest's. Episodes are seeded `seed + episode`, as in
`acalign eval` of a checkpoint, so the two evaluations of the same actor see the same initial states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import acalign_robot.sim_tasks  # noqa: F401 - registers the acalign/ env ids
from acalign_robot.errors import InputError
from acalign_robot.policy.runner import PolicyRunner
from acalign_robot.policy.store import read_artifact, resolve_artifact

__all__ = ["evaluate_policy"]


def evaluate_policy(
    artifact_dir: str | Path, env_id: str | None = None, episodes: int = 10, seed: int = 100
) -> dict[str, Any]:
    """Mean and std of deterministic returns, and the normalised score when the manifest has reference scores.

    `artifact_dir` is a version directory or a policy directory (its latest version). Returns the keys of
    `acalign_robot.algo.pipeline.evaluate_checkpoint`.
    """
    onnx_bytes, manifest = read_artifact(resolve_artifact(artifact_dir))
    env_id = env_id or manifest.env_id
    try:
        env = gym.make(env_id)
    except gym.error.Error as exc:
        raise InputError(f"env {env_id!r}: cannot be made ({exc})") from None
    if not isinstance(env.observation_space, gym.spaces.Box) or not isinstance(env.action_space, gym.spaces.Box):
        raise InputError(f"env {env_id!r}: only Box observation and action spaces are supported")
    runner = PolicyRunner(
        onnx_bytes,
        manifest,
        obs_dim=env.observation_space.shape[0],
        action_dim=env.action_space.shape[0],
        action_low=env.action_space.low,
        action_high=env.action_space.high,
    )
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(runner.act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    mean = float(np.mean(returns))
    scores = manifest.reference_scores
    return {
        "env_id": env_id,
        "episodes": episodes,
        "return_mean": mean,
        "return_std": float(np.std(returns)),
        "normalized_score": scores.normalize(mean) if scores else None,
    }
