"""Controller transition logs -> Minari datasets (`acalign logs convert`), so robot data feeds offline training.

One EpisodeRecord per logged episode (robot_log/reader.py derives them): the executed action (after the
safety filter) is the dataset's action, because it is what the robot did. Everything else the controller recorded
survives as Minari step infos, with Minari's layout of T + 1 entries per episode of T steps: entry 0 belongs to the
reset (no step was taken: NaN for floats, 0 / False otherwise), entry t + 1 to step t:
    policy_action   (T + 1, action_dim)  the raw policy output, before the safety filter
    policy_version  (T + 1,)             int64, the policy version that chose the action
    safety_flags    (T + 1,)             int32 FilterFlags bits
    timestamp_s     (T + 1,)             float64, wall-clock seconds of the step
    seq             (T + 1,)             int64, the controller's batch number
plus any other extras the controller logged, and the driver's step info (StepReply.info) under its own keys
prefixed `info.` (a number as float64, a bool, an array; a string as fixed-width bytes), e.g. `info.applied_action`
from the MuJoCo driver. An episode the log cut short (a gap after dropped batches, a
restart, a missing or damaged chunk, a dropped transition, the end of the data) keeps neither a termination nor a
truncation on its last step, as `acalign collect` does with a trailing partial episode; the metadata counts them.

Conversion only reads the logs. What cannot be converted is skipped and named, one line each (`summary["skipped"]`):
a missing chunk, a damaged chunk, a temp chunk that is not whole, a log with no readable chunk, and the transitions
whose observation, next observation, executed action or reward is NaN or inf (dropped; the episode is cut there, so
that no dataset episode steps over a hole). Anything skipped makes `convert_logs` refuse (`LogGapError`, nothing
written) unless `allow_gaps`. Notes (`summary["notes"]`: a whole temp chunk read as a closed one) and batches the
controller dropped before logging (`dropped_batches`, counted by the writer) are reported but need no flag.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from acalign_robot.data.datasets import DatasetError, EpisodeRecord, dataset_id_from_name, write_dataset
from acalign_robot.robot_log.format import INFO_PREFIX, INFO_TEXT_PREFIX, LogError, info_columns
from acalign_robot.robot_log.reader import LogData, LogEpisode, find_logs, read_log

__all__ = ["LogGapError", "convert_logs", "episode_infos", "finite_episodes", "log_episodes", "nonfinite_report"]


_INFO_PREFIXES = (INFO_PREFIX, INFO_TEXT_PREFIX)


class LogGapError(DatasetError):
    """Logs that cannot be converted whole; the message has one line per skipped chunk, gap or log."""


def _reset_entry(values: np.ndarray) -> np.ndarray:
    """The reset's info entry: NaN for floats, zero (False) for integers and booleans, b"" for strings."""
    fill = {"f": np.nan, "S": b""}.get(values.dtype.kind, 0)
    return np.full((1, *values.shape[1:]), fill, dtype=values.dtype)


def episode_infos(log: LogData, episode: LogEpisode) -> dict[str, np.ndarray]:
    """The per-step fields of one episode as Minari infos: (T + 1, ...) each, entry t + 1 for step t."""
    steps = episode.slice
    per_step = {
        **{name: values[steps] for name, values in log.extras.items() if not name.startswith(_INFO_PREFIXES)},
        **{INFO_PREFIX + key: values[steps] for key, values in info_columns(log.extras).items()},
        "policy_version": log.policy_version[steps],
        "timestamp_s": log.timestamp_s[steps],
        "seq": log.seq[steps],
    }
    return {name: np.concatenate([_reset_entry(values), values]) for name, values in per_step.items()}


def finite_episodes(log: LogData) -> list[LogEpisode]:
    """The log's episodes without their non-finite transitions: an episode is cut at each one, and a piece keeps
    the episode's ending only if it ends where the episode does."""
    bad = log.nonfinite()
    pieces = []
    for episode in log.episodes:
        keep = ~bad[episode.slice]
        if keep.all():
            pieces.append(episode)
            continue
        # Starts and stops of the runs of kept transitions, as offsets into the episode.
        edges = np.flatnonzero(np.diff(np.concatenate([[False], keep, [False]]).astype(np.int8)))
        for start, stop in zip(edges[::2], edges[1::2]):
            complete = episode.complete and stop == len(episode)
            pieces.append(LogEpisode(episode.start + int(start), episode.start + int(stop), complete))
    return pieces


def nonfinite_report(log: LogData) -> str | None:
    """One line naming the log's non-finite transitions (how many, which fields, the first one), or None."""
    bad = log.nonfinite()
    if not bad.any():
        return None
    fields = {
        "obs": ~np.isfinite(log.obs).all(axis=1),
        "next_obs": ~np.isfinite(log.next_obs).all(axis=1),
        "action": ~np.isfinite(log.action).all(axis=1),
        "reward": ~np.isfinite(log.reward),
    }
    which = ", ".join(f"{name} {int(mask.sum())}" for name, mask in fields.items() if mask.any())
    first = int(np.flatnonzero(bad)[0])
    return (
        f"{log.directory}: {int(bad.sum())} of {len(log)} transitions hold NaN or inf ({which}; the first in "
        f"{log.chunks[log.chunk_index[first]].name}, seq {int(log.seq[first])}): dropped, their episodes cut there"
    )


def log_episodes(log: LogData, episodes: Sequence[LogEpisode] | None = None) -> list[EpisodeRecord]:
    """The log's episodes (or the given ones) as EpisodeRecords (float32 observations and actions, infos as above)."""
    return [
        EpisodeRecord(
            observations=log.episode_observations(episode).astype(np.float32),
            actions=log.action[episode.slice].astype(np.float32),
            rewards=log.reward[episode.slice].astype(np.float32),
            terminations=log.terminated[episode.slice],
            truncations=log.truncated[episode.slice],
            infos=episode_infos(log, episode),
        )
        for episode in (log.episodes if episodes is None else episodes)
    ]


def _gymnasium_knows(env_id: str) -> bool:
    import gymnasium as gym

    return env_id in gym.registry


def _logged_spaces(env_id: str, logs: Sequence[LogData]):
    """(observation, action) gymnasium Boxes from the logs' metadata: what a robot's driver declared, for an env id
    gymnasium does not know. All logs must record the same ones."""
    import gymnasium as gym

    recorded = [(log.meta.get("observation_space"), log.meta.get("action_space")) for log in logs]
    if any(None in pair or pair != recorded[0] for pair in recorded):
        raise DatasetError(
            f"gymnasium has no env {env_id!r} and the logs do not all record the same observation and action spaces; "
            "pass --env with an env of the same spaces"
        )
    boxes = []
    for space in recorded[0]:
        low = np.array([-np.inf if value is None else value for value in space["low"]], dtype=np.float32)
        high = np.array([np.inf if value is None else value for value in space["high"]], dtype=np.float32)
        boxes.append(gym.spaces.Box(low, high, dtype=np.float32))
    return tuple(boxes)


def _check_spaces(env_id: str, log: LogData) -> None:
    import gymnasium as gym

    import acalign_robot.sim_tasks  # noqa: F401 - registers the acalign/ env ids

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


def _read_logs(directories: Sequence) -> tuple[list[LogData], list[str], list[str]]:
    """(the readable logs, one line per skipped log / chunk / gap / non-finite run, one line per note)."""
    logs, skipped, notes = [], [], []
    for directory in directories:
        try:
            log = read_log(directory, skip_damaged=True)
        except LogError as exc:
            skipped.append(f"{exc}: the whole log is skipped")
            continue
        logs.append(log)
        skipped.extend(str(problem) for problem in log.lost)
        notes.extend(str(problem) for problem in log.problems if not problem.lost)
        line = nonfinite_report(log)
        if line is not None:
            skipped.append(line)
    return logs, skipped, notes


def convert_logs(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    name: str,
    env_id: str | None = None,
    *,
    force: bool = False,
    allow_gaps: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Write the logs at `sources` (log dirs, controller dirs or session dirs) as one Minari dataset `name`.

    The env id comes from `env_id`, else from the logs' metadata (they must agree). Anything skipped (module
    docstring) raises LogGapError before anything is written, unless `allow_gaps`. Returns (the MinariDataset, a
    summary dict: counts, and the `skipped` and `notes` lines).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    directories = [directory for source in sources for directory in find_logs(source)]
    logs, skipped, notes = _read_logs(directories)
    if not logs:
        raise LogError("no log can be read: " + "; ".join(skipped))
    if skipped and not allow_gaps:
        lines = "\n".join(f"  {line}" for line in skipped)
        raise LogGapError(
            f"{len(skipped)} part(s) of the logs cannot be converted; nothing was written "
            f"(pass --allow-gaps to convert what is intact):\n{lines}"
        )
    spaces = None
    if env_id is None:
        recorded = {log.env_id for log in logs}
        if None in recorded or len(recorded) != 1:
            named = ", ".join(f"{log.directory}: {log.env_id}" for log in logs)
            raise DatasetError(f"the logs record no single env id ({named}); pass --env")
        env_id = recorded.pop()
        if not _gymnasium_knows(env_id):  # a robot's own name: the dataset takes the spaces its driver declared
            spaces = _logged_spaces(env_id, logs)
    if spaces is None:
        for log in logs:
            _check_spaces(env_id, log)
    kept = {id(log): finite_episodes(log) for log in logs}
    episodes = [record for log in logs for record in log_episodes(log, kept[id(log)])]
    if not episodes:
        raise LogGapError("no transition of the logs is finite: nothing to convert\n" + "\n".join(skipped))
    summary = {
        "dataset_id": dataset_id_from_name(name),
        "env_id": env_id,
        "logs": [str(log.directory.resolve()) for log in logs],
        "controllers": sorted({log.controller_id for log in logs}),
        "episodes": len(episodes),
        "transitions": sum(len(episode) for episode in episodes),
        "logged_transitions": sum(len(log) for log in logs),
        "nonfinite_transitions": sum(int(log.nonfinite().sum()) for log in logs),
        "partial_episodes": sum(not episode.complete for pieces in kept.values() for episode in pieces),
        "dropped_batches": sum(log.dropped_batches for log in logs),
        "skipped": skipped,
        "notes": notes,
    }
    dataset = write_dataset(
        summary["dataset_id"],
        episodes,
        env_id,
        algorithm="controller logs",
        description=f"executed transitions of {', '.join(summary['controllers'])} on {env_id}, from controller logs",
        extra_metadata={"kind": "robot-log", **{k: v for k, v in summary.items() if k not in ("dataset_id", "env_id")}},
        force=force,
        spaces=spaces,
    )
    return dataset, summary
