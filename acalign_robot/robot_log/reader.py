"""Reading a transition log (format.py describes it on disk; transition_log.py writes it).

`read_log(directory)` concatenates the closed chunks in order and derives the episodes: an episode ends at
terminated or truncated, and is cut (marked incomplete) at a gap in `seq`, at a segment boundary, where a chunk is
missing and at the end of the data (the trailing partial episode is kept). It only reads: nothing in the directory is
renamed, repaired or removed. What the data lacks is listed in `LogData.problems`, one `LogProblem` per file or gap:
    missing chunk     a chunk number absent between 0 and the last one (numbers run on across segments, so a deleted
                      first or middle chunk shows; a deleted last chunk cannot be told from a log that ended there)
    damaged chunk     truncated, zero-length, byte-flipped (zip CRC), missing arrays, arrays of unequal length: by
                      default `read_log` raises `LogError` naming the file; `skip_damaged=True` leaves it out instead
    temp chunk        a `.tmp` that is not a whole chunk (a writer killed while writing it): its transitions are lost
    recovered chunk   a `.tmp` that is a whole, valid chunk (a writer killed between fsync and rename): it is read like
                      a closed one, and listed as a note (`lost` False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acalign_robot.robot_log.format import (
    CHUNK_FIELDS,
    CHUNK_FORMAT,
    CHUNK_NAME,
    EXTRA_PREFIX,
    META_FILE,
    TEMP_NAME,
    LogError,
    read_meta,
)

__all__ = ["LogData", "LogEpisode", "LogProblem", "find_logs", "read_log"]


@dataclass(frozen=True)
class LogEpisode:
    """Transitions [start, stop) of a log; `complete` when the last one is terminated or truncated."""

    start: int
    stop: int
    complete: bool

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class LogProblem:
    """One thing a log's data lacks, or took from a temp file: the file (the log directory for a gap) and why."""

    path: Path
    reason: str
    lost: bool = True  # transitions are missing from the data; False: a note (a whole temp chunk was read)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True, eq=False)
class LogData:
    """Every transition of a log, in order, with its episodes. Arrays share their first axis (N, ...)."""

    directory: Path
    meta: dict[str, Any]
    chunks: tuple[Path, ...]
    chunk_index: np.ndarray  # (N,) int64: each transition's file in `chunks`
    segment: np.ndarray  # (N,) int64
    seq: np.ndarray  # (N,) int64
    policy_version: np.ndarray  # (N,) int64
    obs: np.ndarray  # (N, obs_dim)
    action: np.ndarray  # (N, action_dim), executed (after the safety filter)
    reward: np.ndarray  # (N,)
    next_obs: np.ndarray  # (N, obs_dim)
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    timestamp_s: np.ndarray  # (N,) float64, wall clock
    extras: dict[str, np.ndarray]  # (N, ...) each: policy_action, safety_flags, ...
    episodes: tuple[LogEpisode, ...]
    dropped_batches: int  # batches the writers dropped (all segments)
    problems: tuple[LogProblem, ...] = ()  # missing, damaged (skipped) and temp chunks, in name order

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def controller_id(self) -> str:
        return str(self.meta.get("controller_id", ""))

    @property
    def env_id(self) -> str | None:
        return self.meta.get("env_id")

    @property
    def obs_dim(self) -> int:
        return self.obs.shape[1]

    @property
    def action_dim(self) -> int:
        return self.action.shape[1]

    @property
    def policy_action(self) -> np.ndarray:
        """The raw policy output; the executed action where the controller did not record it."""
        return self.extras.get("policy_action", self.action)

    @property
    def safety_flags(self) -> np.ndarray:
        return self.extras.get("safety_flags", np.zeros(len(self), np.int32))

    @property
    def lost(self) -> tuple[LogProblem, ...]:
        """The problems that cost transitions (the notes left out)."""
        return tuple(problem for problem in self.problems if problem.lost)

    def nonfinite(self) -> np.ndarray:
        """(N,) bool: transitions whose observation, next observation, executed action or reward is NaN or inf.

        The raw policy action may be NaN on its own (a policy output the safety filter replaced): not counted."""
        return ~(
            np.isfinite(self.obs).all(axis=1)
            & np.isfinite(self.next_obs).all(axis=1)
            & np.isfinite(self.action).all(axis=1)
            & np.isfinite(self.reward)
        )

    def episode_observations(self, episode: LogEpisode) -> np.ndarray:
        """(T + 1, obs_dim): the episode's observations and the one after its last action."""
        return np.concatenate([self.obs[episode.slice], self.next_obs[episode.stop - 1 : episode.stop]])


class _Damaged(Exception):
    """A chunk file that is not a whole, valid chunk; the message says why (without the path)."""


def _read_chunk(path: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The chunk's arrays, checked against the format and the log's dimensions; raises _Damaged."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as exc:  # damaged bytes make zipfile / numpy raise many types (BadZipFile, EOFError, ValueError..)
        raise _Damaged(f"{type(exc).__name__}: {exc}") from None
    missing = [name for name in CHUNK_FIELDS if name not in arrays]
    if missing:
        raise _Damaged(f"missing arrays {missing}")
    if arrays["format"].shape != () or int(arrays["format"]) != CHUNK_FORMAT:
        raise _Damaged(f"chunk format {arrays['format']}, this reader reads {CHUNK_FORMAT}")
    n = len(arrays["seq"])
    for name, value in arrays.items():
        if name not in ("format", "controller_id", "segment", "dropped_batches") and (
            value.ndim < 1 or len(value) != n
        ):
            raise _Damaged(f"{name} has {value.shape}, expected {n} transitions")
    for name, key in (("obs", "obs_dim"), ("next_obs", "obs_dim"), ("action", "action_dim")):
        width = meta.get(key)
        if arrays[name].ndim != 2 or (width is not None and arrays[name].shape[1] != width):
            raise _Damaged(f"{name} has {arrays[name].shape}, the log's {key} is {width}")
    return arrays


def _episodes(
    run: np.ndarray, seq: np.ndarray, terminated: np.ndarray, truncated: np.ndarray
) -> tuple[LogEpisode, ...]:
    """`run`: (N,) the contiguous run of chunks (same segment, no chunk missing) each transition belongs to."""
    done = terminated | truncated
    # A cut after i: the episode ended, or the next transition follows missing chunks, lost batches or a restart.
    cut = done.copy()
    cut[:-1] |= (run[1:] != run[:-1]) | (seq[1:] > seq[:-1] + 1)
    cut[-1] = True
    stops = np.flatnonzero(cut) + 1
    starts = np.concatenate([[0], stops[:-1]])
    return tuple(LogEpisode(int(a), int(b), bool(done[b - 1])) for a, b in zip(starts, stops))


def _number(name: str) -> tuple[int, int]:
    """(segment, chunk number) of a closed chunk's file name."""
    match = CHUNK_NAME.match(name)
    return int(match[1]), int(match[2])


def _missing_chunks(directory: Path, numbers: set[int]) -> list[tuple[int, LogProblem]]:
    """(first number, problem) per run of chunk numbers absent below the highest one (numbers run on across
    segments)."""
    runs: list[list[int]] = []
    for number in sorted(set(range(max(numbers) + 1)) - numbers):
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return [
        (
            run[0],
            LogProblem(
                directory,
                f"chunk {run[0]:06d} missing (deleted?): its transitions are lost"
                if len(run) == 1
                else f"chunks {run[0]:06d} to {run[-1]:06d} missing ({len(run)} chunks, deleted?): "
                "their transitions are lost",
            ),
        )
        for run in runs
    ]


def read_log(directory: str | os.PathLike, *, skip_damaged: bool = False) -> LogData:
    """Every readable chunk of a log directory, in order, and `problems` naming what is missing (module docstring).

    A damaged closed chunk raises LogError naming the file, unless `skip_damaged` (then it is a problem). A temp
    chunk that is whole is read; one that is not is a problem. Raises LogError when no chunk can be read.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    names = sorted(path.name for path in directory.iterdir())
    closed = [name for name in names if CHUNK_NAME.match(name)]
    problems: list[tuple[int, LogProblem]] = []  # (chunk number, problem): listed in chunk order
    found: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}
    for name in closed:
        path = directory / name
        try:
            found[name] = (path, _read_chunk(path, meta))
        except _Damaged as exc:
            if not skip_damaged:
                raise LogError(f"{path}: damaged log chunk ({exc})") from None
            reason = f"damaged chunk ({exc}): skipped, its transitions are lost"
            problems.append((_number(name)[1], LogProblem(path, reason)))
    numbers = {_number(name)[1] for name in closed}
    for name in names:
        temp = TEMP_NAME.match(name)
        if temp is None:
            continue
        path, final = directory / name, temp[1]
        number = _number(final)[1]
        numbers.add(number)
        if final in closed:
            problems.append((number, LogProblem(path, f"a temp copy of {final}, which exists: ignored", lost=False)))
            continue
        try:
            found[final] = (path, _read_chunk(path, meta))
        except _Damaged:
            reason = "temp chunk that is not whole (being written, or its writer stopped mid-write): lost"
            problems.append((number, LogProblem(path, reason)))
            continue
        reason = f"whole temp chunk (its writer stopped before the rename): read as {final}"
        problems.append((number, LogProblem(path, reason, lost=False)))
    if numbers:
        problems.extend(_missing_chunks(directory, numbers))
    if not found:
        if problems:
            raise LogError(f"{directory}: no readable chunk ({'; '.join(str(p) for _, p in problems)})")
        raise LogError(f"{directory}: the log holds no closed chunks yet (a killed writer loses its open chunk)")
    order = sorted(found)
    paths = [found[name][0] for name in order]
    chunks = [found[name][1] for name in order]
    extra_names = sorted(name for name in chunks[0] if name.startswith(EXTRA_PREFIX))
    for path, chunk in zip(paths, chunks):
        names_here = sorted(name for name in chunk if name.startswith(EXTRA_PREFIX))
        if names_here != extra_names:
            raise LogError(f"{path}: extras {names_here}, earlier chunks have {extra_names}")
        if str(chunk["controller_id"]) != meta.get("controller_id"):
            raise LogError(f"{path}: written by controller {str(chunk['controller_id'])!r}, the log's meta disagrees")

    def column(name: str) -> np.ndarray:
        try:
            return np.concatenate([chunk[name] for chunk in chunks])
        except ValueError as exc:  # shapes differ between chunks
            raise LogError(f"{directory}: chunks disagree on {name} ({exc})") from None

    # Runs of contiguous chunks: a new run at a segment boundary and after a chunk that is missing or was skipped.
    run_ids, run = [], 0
    for k, name in enumerate(order):
        if k and (_number(name)[0] != _number(order[k - 1])[0] or _number(name)[1] != _number(order[k - 1])[1] + 1):
            run += 1
        run_ids.append(np.full(len(chunks[k]["seq"]), run, np.int64))
    segment = np.concatenate([np.full(len(c["seq"]), int(c["segment"]), np.int64) for c in chunks])
    seq, terminated, truncated = column("seq"), column("terminated"), column("truncated")
    last_chunk_of_segment: dict[int, dict[str, np.ndarray]] = {int(c["segment"]): c for c in chunks}
    return LogData(
        directory=directory,
        meta=meta,
        chunks=tuple(paths),
        chunk_index=np.concatenate([np.full(len(c["seq"]), k, np.int64) for k, c in enumerate(chunks)]),
        segment=segment,
        seq=seq,
        policy_version=column("policy_version"),
        obs=column("obs"),
        action=column("action"),
        reward=column("reward"),
        next_obs=column("next_obs"),
        terminated=terminated,
        truncated=truncated,
        timestamp_s=column("timestamp_s"),
        extras={name[len(EXTRA_PREFIX) :]: column(name) for name in extra_names},
        episodes=_episodes(np.concatenate(run_ids), seq, terminated, truncated),
        dropped_batches=sum(int(c["dropped_batches"]) for c in last_chunk_of_segment.values()),
        problems=tuple(problem for _, problem in sorted(problems, key=lambda item: item[0])),
    )


def find_logs(path: str | os.PathLike) -> list[Path]:
    """The log directories at `path`: the log itself, `path/log`, or every `*/log` of a session directory."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return [path]
    if (path / "log" / META_FILE).is_file():
        return [path / "log"]
    found = sorted(candidate.parent for candidate in path.glob(f"*/log/{META_FILE}"))
    if not found:
        raise LogError(f"{path}: no transition log here (expected {META_FILE}, log/{META_FILE} or */log/{META_FILE})")
    return found
