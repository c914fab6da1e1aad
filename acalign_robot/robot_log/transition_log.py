"""The controller's durable transition log: every executed transition on disk, in chunks a crash cannot corrupt.

Why: robot time is expensive and a log is the only record of what a policy really did on the hardware. The log feeds
offline pre-training (`acalign logs convert` -> Minari), evaluation and `acalign replay`. This module writes it; the
on-disk format (directory layout, chunk arrays) is described in format.py, and reader.py reads it back.

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

A chunk closes at a batch boundary once it holds `chunk_transitions` transitions, or `chunk_seconds` after its
first transition arrived (a slow robot still reaches the disk regularly), or at `close()`.

The writer keeps a reference to each batch: its arrays must not change after `write` (TransitionBatch is frozen and
the controller's batcher sends copies).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from acalign_robot.atomic import replace_durably, write_text_atomic
from acalign_robot.realtime import leave_realtime
from acalign_robot.robot_log.format import (
    BASE_FIELDS,
    CHUNK_FORMAT,
    CHUNK_NAME,
    EXTRA_PREFIX,
    META_FILE,
    LogError,
    chunk_file_name,
    read_meta,
    temp_file_name,
)
from acalign_robot.spaces import BoxSpace
from acalign_robot.wire.protocol import TransitionBatch

__all__ = ["TransitionLog"]

_POLL_S = 0.02  # how often the writer looks for new batches: the lag of the log behind the robot, not a cost
_log = logging.getLogger(__name__)


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
            for match in (CHUNK_NAME.match(path.name) for path in self.directory.iterdir())
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
        for name in BASE_FIELDS[2:]:
            arrays[name] = np.concatenate([getattr(b, name) for b in batches])
        for name in first.extras:
            arrays[EXTRA_PREFIX + name] = np.concatenate([b.extras[name] for b in batches])
        if self._meta.get("obs_dim") is None:  # the caller did not know the spaces: the first batch tells
            self._meta = {**self._meta, "obs_dim": first.obs.shape[1], "action_dim": first.action.shape[1]}
            self._write_meta(self._meta)
        path = self.directory / chunk_file_name(self.segment, self._next_chunk)
        # Not atomic.write_atomic: the temp chunk keeps its PID-free name and stays after a failure, because readers
        # recover a whole one (a writer killed between fsync and rename) and report a partial one as lost.
        temp = path.with_name(temp_file_name(path.name))
        replace_durably(path, temp, lambda handle: np.savez(handle, **arrays))
        self._next_chunk += 1
        self.written_chunks += 1
        self.written_transitions += len(arrays["seq"])
