"""The controller's durable transition log: every executed transition on disk, in chunks a crash cannot corrupt.

Why: robot time is expensive and a log is the only record of what a policy really did on the hardware. The log feeds
offline pre-training (`acalign logs convert` -> Minari), evaluation and `acalign replay`.

Writing never blocks the control loop. `TransitionLog.write(batch)` only checks the batch's shapes and appends a
reference to it to a bounded queue: a deque, so the control thread takes no lock, makes no system call and wakes no
thread (~10 us, bench/transition_logging.py). A background writer thread polls the queue every 20 ms, gathers
transitions and writes each closed chunk durably (acalign_robot.atomic.replace_durably): a temp file in the log
directory, flush + fsync, rename over the final name, fsync of the directory. A process killed at any moment
(kill -9, power loss after the rename reached the disk) loses at most the open chunk (and the batches still queued) and
leaves every closed chunk whole; a half-written temp file is never read. A full queue (the disk stalled for minutes:
1024 batches of 64 are over 2 minutes at 500 Hz) drops the batch and counts it, never waits; a writer that hit an
I/O error stops writing and counts every later batch as dropped (`stats()["log_error"]`). The writer shares the GIL
with the control thread: closing a chunk costs it CPU in proportion to the chunk's size, in pieces (concatenation,
npz encoding; the file writes and fsync release the GIL): about 1 ms for 4096 transitions. The controller closes
chunks of 1024 transitions or 5 s (controller/process.py), once every ~2 s at 500 Hz; that is the most a tick can
wait for the writer.

The writer keeps a reference to each batch: its arrays must not change after `write` (TransitionBatch is frozen and
the controller's batcher sends copies).

Directory layout:
    log_meta.json                 written at creation (acalign_robot.atomic): format, controller_id, env_id, obs_dim,
                                  action_dim, observation/action spaces and control period when the caller knows
                                  them (bounds as lists, null = unbounded), created (ISO 8601) and created_unix_s
    chunk-SSSS-NNNNNN.npz         closed chunks; SSSS = segment, NNNNNN = chunk number (zero-padded: names sort
                                  in writing order)
    .chunk-SSSS-NNNNNN.npz.tmp    the chunk being written (ignored by readers; left behind by a kill)

A segment is one writer's lifetime: a restarted controller that reopens its log directory appends a new segment, and
episodes never span two segments.

Chunk format: an uncompressed `.npz` (numpy's zip of `.npy` files, written with `np.savez`, read with
`np.load(allow_pickle=False)`: no pickle, no object arrays) with these named arrays, n = transitions in the chunk:
    format           ()            int64, CHUNK_FORMAT
    controller_id    ()            unicode string
    segment          ()            int64
    dropped_batches  ()            int64, batches this writer had dropped when the chunk closed (cumulative)
    seq              (n,)          int64, TransitionBatch.seq of each transition's batch (a gap = dropped batches)
    policy_version   (n,)          int64, the policy version that chose each action
    obs              (n, obs_dim)  as sent (float32 from the controller)
    action           (n, act_dim)  the executed action, after the safety filter
    reward           (n,)
    next_obs         (n, obs_dim)
    terminated       (n,)          bool
    truncated        (n,)          bool
    timestamp_s      (n,)          float64, wall-clock seconds since the epoch (time.time())
    extra.<name>     (n, ...)      each TransitionBatch.extras entry: policy_action (the raw policy output),
                                   safety_flags (controller/safety.py FilterFlags bits), ...
A chunk closes at a batch boundary once it holds `chunk_transitions` transitions, or `chunk_seconds` after its
first transition arrived (a slow robot still reaches the disk regularly), or at `close()`.

Reading: `read_log(directory)` concatenates the closed chunks in order and derives the episodes: an episode ends at
terminated or truncated, and is cut (marked incomplete) at a gap in `seq`, at a segment boundary, where a chunk is
missing and at the end of the data (the trailing partial episode is kept). It only reads: nothing in the directory is
renamed, repaired or removed. What the data lacks is listed in `LogData.problems`, one `LogProblem` per file or gap:
    missing chunk     a chunk number absent between 0 and the last one (numbers run on across segments, so a deleted
                      first or middle chunk shows; a deleted last chunk cannot be told from a log that ended there)
    damaged chunk     truncated, zero-length, byte-flipped (zip CRC), missing arrays, arrays of unequal length: by
                      default `read_log` raises `LogError` naming the file; `skip_damaged=True` leaves it out instead
    temp chunk        a `.tmp` that is not a whole chunk (a writer killed while writing it): its transitions are lost
    recovered chunk   a `.tmp` that is a whole, valid chunk (a writer killed between fsync and rename): it is read like
                      a closed one, and listed as a note (`lost` False)"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from acalign_robot.atomic import replace_durably, write_text_atomic
from acalign_robot.errors import InputError
from acalign_robot.realtime import leave_realtime
from acalign_robot.spaces import BoxSpace
from acalign_robot.wire.protocol import TransitionBatch

__all__ = [
    "CHUNK_FORMAT",
    "META_FILE",
    "LogData",
    "LogEpisode",
    "LogError",
    "LogProblem",
    "TransitionLog",
    "find_logs",
    "read_log",
]

CHUNK_FORMAT = 1
META_FILE = "log_meta.json"
_CHUNK_NAME = re.compile(r"^chunk-(\d{4})-(\d{6})\.npz$")
_TEMP_NAME = re.compile(r"^\.(chunk-\d{4}-\d{6}\.npz)\.tmp$")
_EXTRA = "extra."
_BASE_FIELDS = ("seq", "policy_version", "obs", "action", "reward", "next_obs", "terminated", "truncated")
_CHUNK_FIELDS = ("format", "controller_id", "segment", "dropped_batches", *_BASE_FIELDS, "timestamp_s")
_POLL_S = 0.02  # how often the writer looks for new batches: the lag of the log behind the robot, not a cost
_log = logging.getLogger(__name__)


class LogError(InputError):
    """A transition log that cannot be opened or read: the message names the directory or chunk file."""


def _space_json(space: BoxSpace | None) -> dict[str, Any] | None:
    if space is None:
        return None

    def bounds(values: np.ndarray) -> list[float | None]:
        return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]

    return {"low": bounds(space.low), "high": bounds(space.high), "units": list(space.units)}


class TransitionLog:
    """Durable, non-blocking log of one controller's TransitionBatches (see the module docstring).

    Construct when logging is on, `write(batch)` every batch the controller builds, `close()` at shutdown.
    The optional keyword arguments only enrich `log_meta.json` (env id, spaces, control period), which
    `acalign logs convert` and the replay driver read; the log works without them.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        controller_id: str,
        chunk_transitions: int = 4096,
        *,
        chunk_seconds: float = 60.0,
        queue_batches: int = 1024,
        env_id: str | None = None,
        observation_space: BoxSpace | None = None,
        action_space: BoxSpace | None = None,
        control_period_s: float | None = None,
    ):
        if chunk_transitions < 1 or queue_batches < 1 or not chunk_seconds > 0:
            raise ValueError("chunk_transitions and queue_batches must be >= 1 and chunk_seconds > 0")
        self.directory = Path(directory)
        self.controller_id = controller_id
        self.chunk_transitions = chunk_transitions
        self.chunk_seconds = chunk_seconds
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment, self._next_chunk = self._open_segment()
        obs_dim = observation_space.shape[0] if observation_space is not None else None
        action_dim = action_space.shape[0] if action_space is not None else None
        self._meta_path = self.directory / META_FILE
        if not self._meta_path.exists():
            now = time.time()
            self._write_meta(
                {
                    "format": CHUNK_FORMAT,
                    "controller_id": controller_id,
                    "env_id": env_id,
                    "obs_dim": obs_dim,
                    "action_dim": action_dim,
                    "observation_space": _space_json(observation_space),
                    "action_space": _space_json(action_space),
                    "control_period_s": control_period_s,
                    "created": datetime.fromtimestamp(now, timezone.utc).isoformat(),
                    "created_unix_s": now,
                }
            )
        meta = self._meta = read_meta(self.directory)
        if meta.get("controller_id") != controller_id:
            raise LogError(
                f"{self._meta_path}: a log of controller {meta.get('controller_id')!r}, not {controller_id!r}"
            )
        # Shapes every batch must have; unknown ones are fixed by the first batch.
        self._obs_dim: int | None = meta.get("obs_dim")
        self._action_dim: int | None = meta.get("action_dim")
        self._extra_keys: frozenset[str] | None = None
        # The hand-off: deque.append/popleft are atomic under the GIL, so the control thread takes no lock, makes no
        # system call and wakes no thread; the writer polls every `_POLL_S` instead.
        self._inbox: collections.deque[tuple[TransitionBatch, np.ndarray | None, float]] = collections.deque()
        self._queue_batches = queue_batches
        self._stop = threading.Event()
        self._dropped_by_caller = 0  # queue full, or the writer had failed (counted on the control thread)
        self._dropped_by_writer = 0  # pending batches of a chunk that could not be written
        self.written_transitions = 0
        self.written_chunks = 0
        self.error: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"transition-log-{controller_id}", daemon=True)
        self._thread.start()

    # --- caller side (the control thread) ------------------------------------------------------------------------

    def write(self, batch: TransitionBatch, timestamps: np.ndarray | None = None) -> None:
        """Log `batch`; never blocks. `timestamps` (batch,) wall-clock seconds; default: now, for every transition.

        Raises ValueError for a batch whose shapes or extras differ from the log's (a caller bug), and RuntimeError
        after `close()`.
        """
        if self._closed:
            raise RuntimeError(f"transition log {self.directory} is closed")
        self._check(batch, timestamps)
        if self.error is not None or len(self._inbox) >= self._queue_batches:
            self._dropped_by_caller += 1
            return
        self._inbox.append((batch, timestamps, time.time()))

    @property
    def dropped_batches(self) -> int:
        return self._dropped_by_caller + self._dropped_by_writer

    def _check(self, batch: TransitionBatch, timestamps: np.ndarray | None) -> None:
        n = len(batch)
        obs_dim, action_dim = batch.obs.shape[1], batch.action.shape[1]
        if self._obs_dim is None:
            self._obs_dim = obs_dim
        if self._action_dim is None:
            self._action_dim = action_dim
        if self._extra_keys is None:
            self._extra_keys = frozenset(batch.extras)
        if obs_dim != self._obs_dim or action_dim != self._action_dim or batch.extras.keys() != self._extra_keys:
            raise ValueError(
                f"transition log {self.directory}: batch with obs/action dims {obs_dim}/{action_dim} and extras "
                f"{sorted(batch.extras)}; the log has {self._obs_dim}/{self._action_dim} and {sorted(self._extra_keys)}"
            )
        if timestamps is not None and np.shape(timestamps) != (n,):
            raise ValueError(f"timestamps: expected shape ({n},), got {np.shape(timestamps)}")

    def stats(self) -> dict[str, int | str]:
        """Flat counters for the controller's status and Stats messages."""
        return {
            "log_written_transitions": self.written_transitions,
            "log_written_chunks": self.written_chunks,
            "log_dropped_batches": self.dropped_batches,
            "log_queued_batches": len(self._inbox),
            "log_error": self.error or "",
        }

    def close(self, timeout_s: float = 60.0) -> dict[str, int | str]:
        """Write what is queued and the open chunk, stop the writer, return `stats()`. Idempotent; waits for the disk.

        Call it from the thread that writes (a write racing a close could be left unwritten).
        """
        if not self._closed:
            self._closed = True
            self._stop.set()
            self._thread.join(timeout_s)
        return self.stats()

    def __enter__(self) -> TransitionLog:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- writer thread -------------------------------------------------------------------------------------------

    def _open_segment(self) -> tuple[int, int]:
        """(segment, next chunk number): a reopened log continues after its last closed chunk."""
        numbers = [
            (int(match[1]), int(match[2]))
            for match in (_CHUNK_NAME.match(path.name) for path in self.directory.iterdir())
            if match
        ]
        if not numbers:
            return 0, 0
        return max(s for s, _ in numbers) + 1, max(c for _, c in numbers) + 1

    def _write_meta(self, meta: dict[str, Any]) -> None:
        write_text_atomic(self._meta_path, json.dumps(meta, indent=1))

    def _run(self) -> None:
        leave_realtime()  # a real-time controller's writer: disk I/O off the control path, never ahead of it
        pending: list[tuple[TransitionBatch, np.ndarray | None, float]] = []
        pending_count, opened_at = 0, 0.0
        while True:
            stopping = self._stop.wait(_POLL_S)
            while self._inbox:
                item = self._inbox.popleft()
                if not pending:
                    opened_at = time.monotonic()
                pending.append(item)
                pending_count += len(item[0])
                if pending_count >= self.chunk_transitions:
                    self._flush(pending)
                    pending, pending_count = [], 0
            if pending and (stopping or time.monotonic() - opened_at >= self.chunk_seconds):
                self._flush(pending)
                pending, pending_count = [], 0
            if stopping:
                return

    def _flush(self, pending: list[tuple[TransitionBatch, np.ndarray | None, float]]) -> None:
        if self.error is not None:
            self._dropped_by_writer += len(pending)
            return
        try:
            self._write_chunk(pending)
        except Exception as exc:  # disk full, removed, read-only, ...: the robot keeps running, the stats say why
            self.error = f"{type(exc).__name__}: {exc}"
            self._dropped_by_writer += len(pending)
            _log.error("transition log %s: writing stopped (%s)", self.directory, self.error)

    def _write_chunk(self, pending: list[tuple[TransitionBatch, np.ndarray | None, float]]) -> None:
        batches = [batch for batch, _, _ in pending]
        first = batches[0]
        arrays: dict[str, np.ndarray] = {
            "format": np.int64(CHUNK_FORMAT),
            "controller_id": np.str_(self.controller_id),
            "segment": np.int64(self.segment),
            "dropped_batches": np.int64(self.dropped_batches),
            "seq": np.concatenate([np.full(len(b), b.seq, np.int64) for b in batches]),
            "policy_version": np.concatenate([b.policy_version for b in batches]).astype(np.int64),
            "timestamp_s": np.concatenate(
                [
                    np.full(len(b), stamp) if stamps is None else np.asarray(stamps, np.float64)
                    for b, stamps, stamp in pending
                ]
            ),
        }
        for name in _BASE_FIELDS[2:]:
            arrays[name] = np.concatenate([getattr(b, name) for b in batches])
        for name in first.extras:
            arrays[_EXTRA + name] = np.concatenate([b.extras[name] for b in batches])
        if self._meta.get("obs_dim") is None:  # the caller did not know the spaces: the first batch tells
            self._meta = {**self._meta, "obs_dim": first.obs.shape[1], "action_dim": first.action.shape[1]}
            self._write_meta(self._meta)
        path = self.directory / f"chunk-{self.segment:04d}-{self._next_chunk:06d}.npz"
        # Not atomic.write_atomic: the temp chunk keeps its PID-free name and stays after a failure, because readers
        # recover a whole one (a writer killed between fsync and rename) and report a partial one as lost.
        temp = path.with_name(f".{path.name}.tmp")
        replace_durably(path, temp, lambda handle: np.savez(handle, **arrays))
        self._next_chunk += 1
        self.written_chunks += 1
        self.written_transitions += len(arrays["seq"])


# --- reading ----------------------------------------------------------------------------------------------------


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


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise LogError(f"{directory}: not a transition log (no {META_FILE})") from None
    except (OSError, ValueError) as exc:
        raise LogError(f"{path}: unreadable log metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise LogError(f"{path}: log metadata must be a JSON object")
    return meta


class _Damaged(Exception):
    """A chunk file that is not a whole, valid chunk; the message says why (without the path)."""


def _read_chunk(path: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The chunk's arrays, checked against the format and the log's dimensions; raises _Damaged."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as exc:  # damaged bytes make zipfile / numpy raise many types (BadZipFile, EOFError, ValueError..)
        raise _Damaged(f"{type(exc).__name__}: {exc}") from None
    missing = [name for name in _CHUNK_FIELDS if name not in arrays]
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
    match = _CHUNK_NAME.match(name)
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
    closed = [name for name in names if _CHUNK_NAME.match(name)]
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
        temp = _TEMP_NAME.match(name)
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
    extra_names = sorted(name for name in chunks[0] if name.startswith(_EXTRA))
    for path, chunk in zip(paths, chunks):
        names_here = sorted(name for name in chunk if name.startswith(_EXTRA))
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
        extras={name[len(_EXTRA) :]: column(name) for name in extra_names},
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
