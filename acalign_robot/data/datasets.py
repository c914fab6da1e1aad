"""Minari datasets: read any dataset into a flat transition view, write episodes as a dataset.

Reading uses the real `minari` API: a dataset id from the local store (`MINARI_DATASETS_PATH`, never a download)
or a path to a dataset directory. Writing uses `minari.create_dataset_from_buffers`, which needs no jax.

Terminal and time-limit truncation stay apart all the way: `terminals` is the environment's `terminated` (no
bootstrap), `truncations` is a time limit (bootstrap through it). ACA, like SAC, bootstraps through truncation.

Reading drops every transition whose observation, next observation, action or reward is NaN or inf (after the cast
to float32, so a float64 beyond its range counts too): one such value would make every network of a learner that
samples it non-finite. The drops are counted (`TransitionView.nonfinite_dropped`) and logged as a warning naming the
dataset; an episode is cut at each dropped transition. A dataset with no finite transition is an error.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acalign_robot.errors import InputError

__all__ = [
    "DatasetError",
    "EpisodeRecord",
    "TransitionView",
    "dataset_exists",
    "dataset_id_from_name",
    "load_dataset",
    "load_transitions",
    "minari_root",
    "write_dataset",
]

_VERSIONED_ID = re.compile(r"^(?:[\w.-]+/)*[\w.-]+-v\d+$")
_log = logging.getLogger(__name__)


class DatasetError(InputError):
    """A dataset that cannot be found, read or written as asked."""


@dataclass
class EpisodeRecord:
    """One episode as collected: T steps, T + 1 observations (the last one follows the last action)."""

    observations: np.ndarray  # (T + 1, obs_dim)
    actions: np.ndarray  # (T, action_dim)
    rewards: np.ndarray  # (T,)
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray  # (T,) bool
    infos: dict[str, np.ndarray] = field(default_factory=dict)  # each (T + 1, ...), Minari's convention
    seed: int | None = None

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards))


@dataclass(frozen=True)
class TransitionView:
    """Every transition of a dataset, flat and float32, with the episode boundaries kept.

    `episode_starts[i]` is the index of episode i's first transition; episodes are contiguous, in dataset order.
    """

    observations: np.ndarray  # (N, obs_dim)
    actions: np.ndarray  # (N, action_dim)
    rewards: np.ndarray  # (N,)
    next_observations: np.ndarray  # (N, obs_dim)
    terminals: np.ndarray  # (N,) bool: environment termination, no bootstrap
    truncations: np.ndarray  # (N,) bool: time limit (or end of the data), bootstrap through it
    episode_starts: np.ndarray  # (E,) int64
    metadata: dict[str, Any] = field(default_factory=dict)
    nonfinite_dropped: int = 0  # transitions left out on reading because they held NaN or inf

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_starts)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    def episode_slices(self) -> list[slice]:
        ends = np.append(self.episode_starts[1:], len(self))
        return [slice(int(start), int(end)) for start, end in zip(self.episode_starts, ends)]

    def episode_returns(self) -> np.ndarray:
        return np.array([self.rewards[s].sum() for s in self.episode_slices()], dtype=np.float64)

    def top_episode_indices(self, count: int) -> np.ndarray:
        """Transition indices of the `count` highest-return episodes (undiscounted), best first."""
        if count <= 0:
            return np.zeros(0, dtype=np.int64)
        slices = self.episode_slices()
        order = np.argsort(-self.episode_returns(), kind="stable")[:count]
        return np.concatenate([np.arange(slices[i].start, slices[i].stop) for i in order])

    @staticmethod
    def concatenate(views: Sequence[TransitionView]) -> TransitionView:
        """Several datasets as one (e.g. sim data + robot logs); their spaces must agree."""
        first = views[0]
        for view in views[1:]:
            if view.obs_dim != first.obs_dim or view.action_dim != first.action_dim:
                raise DatasetError(
                    f"datasets disagree on spaces: {first.metadata.get('dataset_id')} has obs/action dims "
                    f"{first.obs_dim}/{first.action_dim}, {view.metadata.get('dataset_id')} has "
                    f"{view.obs_dim}/{view.action_dim}"
                )
        offsets = np.cumsum([0] + [len(v) for v in views[:-1]])
        return TransitionView(
            observations=np.concatenate([v.observations for v in views]),
            actions=np.concatenate([v.actions for v in views]),
            rewards=np.concatenate([v.rewards for v in views]),
            next_observations=np.concatenate([v.next_observations for v in views]),
            terminals=np.concatenate([v.terminals for v in views]),
            truncations=np.concatenate([v.truncations for v in views]),
            episode_starts=np.concatenate([v.episode_starts + off for v, off in zip(views, offsets)]),
            metadata={**first.metadata, "sources": [v.metadata.get("dataset_id") for v in views]},
            nonfinite_dropped=sum(v.nonfinite_dropped for v in views),
        )


def minari_root() -> Path:
    """The local Minari store: `MINARI_DATASETS_PATH`, else Minari's own default."""
    from minari.storage.datasets_root_dir import get_dataset_path

    return Path(get_dataset_path())


def dataset_id_from_name(name: str) -> str:
    """Minari ids need a version suffix: `hopper-medium` becomes `hopper-medium-v0`."""
    if not re.fullmatch(r"[\w./-]+", name):
        raise DatasetError(f"dataset name {name!r}: use letters, digits, '-', '_', '.' and '/' only")
    return name if _VERSIONED_ID.match(name) else f"{name}-v0"


def dataset_exists(dataset_id: str) -> bool:
    return (minari_root() / dataset_id).exists()


def load_dataset(id_or_path: str | os.PathLike):
    """Open a Minari dataset by id (local store only, never a download) or by directory path."""
    import minari

    path = Path(id_or_path)
    if path.exists():
        data_dir = path / "data" if (path / "data").is_dir() else path
        try:
            return minari.MinariDataset(data_dir)
        except Exception as exc:
            raise DatasetError(f"{path}: not a readable Minari dataset ({exc})") from None
    dataset_id = dataset_id_from_name(str(id_or_path))
    if not dataset_exists(dataset_id):
        raise DatasetError(
            f"dataset {dataset_id!r} is not in the local Minari store {minari_root()} "
            "(generate one with `acalign collect`, or set MINARI_DATASETS_PATH)"
        )
    try:
        return minari.load_dataset(dataset_id, download=False)
    except Exception as exc:
        raise DatasetError(f"dataset {dataset_id!r}: cannot be read ({exc})") from None


def _flat(array: Any, name: str, source: str) -> np.ndarray:
    if isinstance(array, dict):
        raise DatasetError(f"{source}: {name} is a dict space; only flat Box spaces are supported")
    return np.asarray(array)


def load_transitions(ids_or_paths: str | os.PathLike | Iterable[str | os.PathLike]) -> TransitionView:
    """One or several Minari datasets as a single TransitionView (float32, terminals and truncations apart)."""
    if isinstance(ids_or_paths, (str, os.PathLike)):
        ids_or_paths = [ids_or_paths]
    views = [_load_one(item) for item in ids_or_paths]
    if not views:
        raise DatasetError("no dataset given")
    return views[0] if len(views) == 1 else TransitionView.concatenate(views)


def _load_one(id_or_path: str | os.PathLike) -> TransitionView:
    dataset = load_dataset(id_or_path)
    source = str(id_or_path)
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc")}
    starts, total = [], 0
    for episode in dataset.iterate_episodes():
        observations = _flat(episode.observations, "observations", source)
        steps = len(episode.rewards)
        if steps == 0:
            continue
        if len(observations) != steps + 1:
            raise DatasetError(f"{source}: episode {episode.id} has {len(observations)} observations for {steps} steps")
        starts.append(total)
        total += steps
        columns["obs"].append(observations[:-1])
        columns["next"].append(observations[1:])
        columns["act"].append(_flat(episode.actions, "actions", source).reshape(steps, -1))
        columns["rew"].append(np.asarray(episode.rewards).reshape(steps))
        columns["term"].append(np.asarray(episode.terminations, dtype=bool).reshape(steps))
        columns["trunc"].append(np.asarray(episode.truncations, dtype=bool).reshape(steps))
    if total == 0:
        raise DatasetError(f"{source}: the dataset holds no transitions")
    arrays = {
        "observations": np.concatenate(columns["obs"]).astype(np.float32),
        "actions": np.concatenate(columns["act"]).astype(np.float32),
        "rewards": np.concatenate(columns["rew"]).astype(np.float32),
        "next_observations": np.concatenate(columns["next"]).astype(np.float32),
        "terminals": np.concatenate(columns["term"]),
        "truncations": np.concatenate(columns["trunc"]),
    }
    episode_starts = np.asarray(starts, dtype=np.int64)
    finite = (
        np.isfinite(arrays["observations"]).all(axis=1)
        & np.isfinite(arrays["next_observations"]).all(axis=1)
        & np.isfinite(arrays["actions"]).all(axis=1)
        & np.isfinite(arrays["rewards"])
    )
    dropped = int(total - finite.sum())
    if dropped == total:
        raise DatasetError(f"{source}: every one of its {total} transitions holds NaN or inf")
    if dropped:
        # A kept transition starts an episode where its episode starts or where the one before it was dropped.
        starts_here = np.zeros(total, dtype=bool)
        starts_here[episode_starts] = True
        starts_here[1:] |= ~finite[:-1]
        episode_starts = np.flatnonzero(starts_here[finite]).astype(np.int64)
        arrays = {name: values[finite] for name, values in arrays.items()}
        _log.warning(
            "dataset %s: %d of %d transitions hold NaN or inf (observation, action or reward): dropped",
            source,
            dropped,
            total,
        )
    return TransitionView(
        **arrays,
        episode_starts=episode_starts,
        metadata=dict(dataset.storage.metadata),
        nonfinite_dropped=dropped,
    )


def write_dataset(
    dataset_id: str,
    episodes: Sequence[EpisodeRecord],
    env_id: str,
    *,
    algorithm: str,
    description: str,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    extra_metadata: dict[str, Any] | None = None,
    force: bool = False,
    spaces: tuple[Any, Any] | None = None,
):
    """Write episodes as a Minari dataset in the local store; refuses to overwrite unless `force`.

    `spaces` (observation, action gymnasium spaces) stand in for an env gymnasium does not know (a robot's log):
    the dataset then records `env_id` in its metadata only, and no env spec.

    `extra_metadata` (e.g. kind, seed, behaviour policy) is stored in the dataset's metadata so that
    `minari show` and `load_dataset(...).storage.metadata` return it.
    """
    import shutil

    import minari
    from minari.data_collector import EpisodeBuffer

    if not episodes:
        raise DatasetError(f"{dataset_id}: no episodes to write")
    if dataset_exists(dataset_id):
        if not force:
            raise DatasetError(f"dataset {dataset_id!r} already exists in {minari_root()} (use --force to replace it)")
        shutil.rmtree(minari_root() / dataset_id)
    buffers = [
        EpisodeBuffer(
            id=index,
            seed=episode.seed,
            observations=np.asarray(episode.observations),
            actions=np.asarray(episode.actions),
            rewards=list(map(float, episode.rewards)),
            terminations=list(map(bool, episode.terminations)),
            truncations=list(map(bool, episode.truncations)),
            infos=episode.infos or None,
        )
        for index, episode in enumerate(episodes)
    ]
    dataset = minari.create_dataset_from_buffers(
        dataset_id=dataset_id,
        buffer=buffers,
        env=None if spaces else env_id,
        eval_env=None if spaces else env_id,
        observation_space=spaces[0] if spaces else None,
        action_space=spaces[1] if spaces else None,
        algorithm_name=algorithm,
        author="acalign-robot",
        author_email="acalign-robot@localhost",
        code_permalink="https://github.com/acalign-robot/acalign-robot",
        ref_min_score=ref_min_score,
        ref_max_score=ref_max_score,
        description=description,
    )
    if spaces:
        extra_metadata = {**(extra_metadata or {}), "env_id": env_id}
    if extra_metadata:
        dataset.storage.update_metadata({f"acalign_{key}": value for key, value in extra_metadata.items()})
    return dataset
