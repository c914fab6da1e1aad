"""Controller transition logs -> Minari datasets (`acalign logs convert`), so robot data feeds offline training.

One EpisodeRecord per logged episode (runtime/transition_log.py derives them): the executed action (after the
safety filter) is the dataset's action, because it is what the robot did. Everything else the controller recorded
survives as Minari step infos, with Minari's layout of T + 1 entries per episode of T steps: entry 0 belongs to the
reset (no step was taken: NaN for floats, 0 / False otherwise), entry t + 1 to step t:
    policy_action   (T + 1, action_dim)  the raw policy output, before the safety filter
    policy_version  (T + 1,)             int64, the policy version that chose the action
    safety_flags    (T + 1,)             int32 FilterFlags bits
    timestamp_s     (T + 1,)             float64, wall-clock seconds of the step
    seq             (T + 1,)             int64, the controller's batch number
plus any other extras the controller logged. An episode the log cut short (a gap after dropped batches, a
restart, the end of the data) keeps neither a termination nor a truncation on its last step, as `acalign collect`
does with a trailing partial episode; the dataset's metadata counts them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from acalign_robot.data.datasets import DatasetError, EpisodeRecord, dataset_id_from_name, write_dataset
from acalign_robot.runtime.transition_log import LogData, LogEpisode, find_logs, read_log

__all__ = ["convert_logs", "episode_infos", "log_episodes"]


def _reset_entry(values: np.ndarray) -> np.ndarray:
    """The reset's info entry: NaN for floats, zero (False) for integers and booleans."""
    fill = np.nan if values.dtype.kind == "f" else 0
    return np.full((1, *values.shape[1:]), fill, dtype=values.dtype)


def episode_infos(log: LogData, episode: LogEpisode) -> dict[str, np.ndarray]:
    """The per-step fields of one episode as Minari infos: (T + 1, ...) each, entry t + 1 for step t."""
    steps = episode.slice
    per_step = {
        **{name: values[steps] for name, values in log.extras.items()},
        "policy_version": log.policy_version[steps],
        "timestamp_s": log.timestamp_s[steps],
        "seq": log.seq[steps],
    }
    return {name: np.concatenate([_reset_entry(values), values]) for name, values in per_step.items()}


def log_episodes(log: LogData) -> list[EpisodeRecord]:
    """The log's episodes as EpisodeRecords (float32 observations and actions, infos as above)."""
    return [
        EpisodeRecord(
            observations=log.episode_observations(episode).astype(np.float32),
            actions=log.action[episode.slice].astype(np.float32),
            rewards=log.reward[episode.slice].astype(np.float32),
            terminations=log.terminated[episode.slice],
            truncations=log.truncated[episode.slice],
            infos=episode_infos(log, episode),
        )
        for episode in log.episodes
    ]


def _check_spaces(env_id: str, log: LogData) -> None:
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except Exception as exc:  # gymnasium raises several types for an unknown or broken env id
        raise DatasetError(f"--env {env_id}: cannot be created ({type(exc).__name__}: {exc})") from None
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    if (obs_dim, action_dim) != (log.obs_dim, log.action_dim):
        raise DatasetError(
            f"{log.directory}: obs/action dims {log.obs_dim}/{log.action_dim}, but {env_id} has {obs_dim}/{action_dim}"
        )


def convert_logs(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    name: str,
    env_id: str | None = None,
    *,
    force: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Write the logs at `sources` (log dirs, controller dirs or session dirs) as one Minari dataset `name`.

    The env id comes from `env_id`, else from the logs' metadata (they must agree). Returns (the MinariDataset,
    a summary dict).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    directories = [directory for source in sources for directory in find_logs(source)]
    logs = [read_log(directory) for directory in directories]
    if env_id is None:
        recorded = {log.env_id for log in logs}
        if None in recorded or len(recorded) != 1:
            named = ", ".join(f"{log.directory}: {log.env_id}" for log in logs)
            raise DatasetError(f"the logs record no single env id ({named}); pass --env")
        env_id = recorded.pop()
    for log in logs:
        _check_spaces(env_id, log)
    episodes = [record for log in logs for record in log_episodes(log)]
    partial = sum(not episode.complete for log in logs for episode in log.episodes)
    summary = {
        "dataset_id": dataset_id_from_name(name),
        "env_id": env_id,
        "logs": [str(log.directory.resolve()) for log in logs],
        "controllers": sorted({log.controller_id for log in logs}),
        "episodes": len(episodes),
        "transitions": sum(len(log) for log in logs),
        "partial_episodes": partial,
        "dropped_batches": sum(log.dropped_batches for log in logs),
    }
    dataset = write_dataset(
        summary["dataset_id"],
        episodes,
        env_id,
        algorithm="controller logs",
        description=f"executed transitions of {', '.join(summary['controllers'])} on {env_id}, from controller logs",
        extra_metadata={"kind": "robot-log", **{k: v for k, v in summary.items() if k not in ("dataset_id", "env_id")}},
        force=force,
    )
    return dataset, summary
