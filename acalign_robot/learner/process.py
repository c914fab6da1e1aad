"""The learner process: ACA phase 3 (online fine-tuning) on transitions streamed by controllers.

`acalign learner --config FILE` runs `serve`: it loads an 'online' checkpoint (from `acalign align`, whose replay
buffer is already seeded per ALGORITHM.md phase 2 step 5, or a previous learner checkpoint), binds two ZeroMQ
channels, and repeats `Learner.step` until a stop condition or SIGTERM/SIGINT:

1. receive: take what the transitions channel holds without blocking (at most MAX_DRAIN_MESSAGES per step, so a
   flood cannot starve the updates), or wait up to IDLE_WAIT_S for a message when no update is owed;
2. train: run the owed gradient updates, `agent.update(buffer.sample(batch))`, for at most UPDATE_SLICE_S, then go
   back to the socket, so a burst of transitions never leaves the receive queue unattended for long (a long
   backlog of updates is worked off in slices, interleaved with receiving);
3. housekeeping: publish every `publish_every` updates, re-publish the latest policy every `republish_every_s`,
   `status.json` every STATUS_EVERY_S, a metrics record every `metrics_every_s`, a checkpoint every
   `checkpoint_every_updates` updates.

Channels (semantics of the sockets: acalign_robot.wire.transport):
- transitions, ROUTER (bind) <-> DEALER (connect) from every controller: TransitionBatch and the controllers' Stats
  up, TransitionAck back. Bounded at both ends; a controller counts what it could not queue. Each controller stream
  numbers its batches 0, 1, 2, ... (`seq`, per stream_id; controller.process starts a new stream per process
  start). A `SequenceLedger` per stream (wire.delivery) records which seqs were taken: a batch taken before is
  counted in `duplicates` and never inserted twice; a seq skipped is a gap until its batch arrives (then it counts
  as `recovered`). Every ACK_EVERY_S, and right after each checkpoint, each active stream gets a TransitionAck with
  what was received and what the last checkpoint holds; the controller resends what is missing and forgets what is
  durable, so a learner killed and resumed gets back what it lost since its checkpoint. Each batch also says the
  oldest seq its controller can still resend (`resend_from`): what is missing below it is written off as `lost` at
  once (a fresh learner that replaces one mid-session asks only for what the controllers hold), and a batch more
  than MAX_AHEAD above its stream's contiguous mark is refused (`refused_ahead`), never a reason to write off the
  past. A batch whose shapes do not fit the checkpoint or that holds a non-finite value is counted in `rejected`
  (with the reason) and not inserted: one NaN would poison the critic.
  A batch that ends an episode carries its return (`episode_return`): delivered exactly once, so the learner's
  metrics and status see every episode once. Stats messages are recorded into the status as they come.
  Per-peer state is bounded: the receiver binds each stream to the connection (and CURVE key) that opened it and
  keeps Stats only from a stream's owner (wire.delivery.StreamOwners: at most MAX_STREAMS streams, refusals
  counted in status `binding`); the learner keeps the MAX_STREAMS streams that sent most recently (older ones are
  evicted: `streams_evicted`, their counters stay in the totals) and the Stats of the MAX_STREAMS sources heard
  most recently (`stats_evicted`), at most MAX_STATS_KEPT values each, strings cut to MAX_STAT_CHARS. So status.json,
  every metrics record and the checkpoint stay a bounded size whatever peers send.
- policy, PUB (bind) -> SUB (connect, conflated) on each controller: latest-only. A Policy carries the ONNX bytes
  and manifest of an `export.onnx_export.ArtifactBuilder`, built in memory, and `version` (also in the manifest).
  The graph is exported once per session (the first publication, ~1-3 s); each later version writes the actor's
  weights into it (tens of ms) on a build thread, from a copy of the actor taken between two updates, so training
  never waits for an export: the training thread pays the copy and the send (`publish_blocking_s` in the metrics).
  A publication due while the previous one is still building is skipped (`publishes_coalesced`): the next one
  carries newer weights.
  Versions strictly increase: 1 + the checkpoint's last published version, then +1 per publication; a resumed
  learner also skips versions it published after its checkpoint (status.json records each one). PUB/SUB drops
  what is sent before a subscriber joins, so the latest policy is re-sent every `republish_every_s`; a controller
  sees the same version again and ignores it.

Choices:
- Initial publication: the checkpoint's actor is published at start (for an aligned checkpoint: version 1, the
  offline actor). A controller started from the first `acalign export` of that checkpoint (also version 1, the same
  actor) keeps what it runs, as controller.process ignores versions it already has, and swaps at version 2; a
  controller waiting for a first policy gets one; a resumed learner re-announces where it stands. The policy
  store's numbers and the learner's are separate counters: a controller started from a store version above 1 ignores
  the learner's versions up to its own.
- UTD: every env step received while the buffer holds more than a batch (as in ALGORITHM.md phase 3, counted
  transition by transition within a batch) adds `utd` update credits; an update spends one. So after the buffer
  first exceeds a batch, updates == floor(utd * env steps received) whenever the learner has caught up. When
  controllers produce faster than the learner can update, the owed updates (`owed_updates` in the status) grow.
  `when_behind: catch_up` (the default) works them off later: the ratio is kept, not the wall-clock pace, and a stop
  on `max_env_steps` stops receiving and finishes the owed updates first. `when_behind: skip` forgives what is owed
  beyond `max_owed_updates` (`updates_skipped`): the pace is kept, not the ratio. `utd_achieved` says which held.
- Actions: the controller sends the executed action (after its safety filter) in the env's units; the agent works
  in [-1, 1]^|A| (the exported graph scales by the checkpoint's action bounds), so the learner maps it back with
  those bounds (clipped to [-1, 1]). Truncations are not terminals: targets bootstrap through them.
- Device: `device: auto|cpu|cuda` (algo.device.resolve_device). The agent, its updates and its noise run there; the
  replay buffer stays in host memory (batches are copied per update) and exports copy the actor to the CPU. `cuda`
  without a GPU logs a warning and runs on the CPU. On the CPU a fixed seed gives bit-identical updates; on a GPU,
  cuBLAS and atomics may reorder sums, so runs are close, not bit-identical.
- Counters: `env_steps` is phase 3's env-step count (it continues the checkpoint's; it is the manifests'
  `training_step`); `updates` counts this learner's gradient updates (restored by `resume`, 0 when starting from a
  checkpoint); `max_env_steps` counts transitions received since that start.

Files in `checkpoint_dir`: `learner.pt` (an 'online' checkpoint that `acalign finetune`, `acalign export` and
`load_online_agent` read too, plus learner state: counters, update credit, per-controller sequence state, the random
generators, so that a resumed run continues exactly where the checkpoint was taken), `status.json` (the current
numbers, replaced atomically every second for a supervisor's status line) and `metrics.jsonl` (unless `metrics`
names another path). learner.pt's own entry, `LearnerState`, is the one list of what a resume restores. Checkpoints
are written when a fresh run starts, on the schedule and when the learner stops; they and status.json are written
atomically and durably (acalign_robot.atomic). A failed checkpoint (an exception) writes nothing, so the last good
one stays, and leaves no temp file. At start, temp files left by dead processes (`.learner.pt.PID.tmp`,
`.status.json.PID.tmp`: a SIGKILL mid-write) are removed.

The configuration, `LearnerConfig`, lives in `learner.config` (torch-free, for launch files) and is re-exported here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import signal
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acalign_robot.algo.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_online_agent,
    online_state,
    save_checkpoint,
)
from acalign_robot.algo.device import resolve_device, set_torch_threads
from acalign_robot.algo.divergence import DivergenceGuard
from acalign_robot.atomic import remove_stale_temp_files, write_text_atomic
from acalign_robot.errors import InputError
from acalign_robot.export.onnx_export import ArtifactBuilder
from acalign_robot.learner.config import LearnerConfig
from acalign_robot.realtime import pin_to_cores
from acalign_robot.wire.channels import Sender, TransitionServer
from acalign_robot.wire.delivery import MAX_STREAMS, STREAM_IDLE_S, SequenceLedger, StreamRefused
from acalign_robot.wire.protocol import Policy, Stats, TransitionBatch
from acalign_robot.wire.security import secure_context
from acalign_robot.wire.transport import ZmqPolicyPublisher, ZmqTransitionReceiver

__all__ = [
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "STATUS_FILE",
    "ControllerStream",
    "Learner",
    "LearnerConfig",
    "LearnerState",
    "serve",
]

CHECKPOINT_FILE = "learner.pt"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"

UPDATE_SLICE_S = 0.05  # longest run of updates between two visits to the transitions socket
MAX_DRAIN_MESSAGES = 256  # most messages taken per visit (the receiver's queue bound): updates always get a turn
IDLE_WAIT_S = 0.05  # wait for a message when no update is owed; also bounds how late housekeeping runs
STATUS_EVERY_S = 1.0
ACK_EVERY_S = 0.1  # how often each active controller stream is told what the learner holds
ACTIVE_STREAM_S = STREAM_IDLE_S  # a stream that sent no batch for this long is not acknowledged any more
MAX_STATS_KEPT = 128  # values kept from one source's Stats (controller.process sends ~60)
MAX_STAT_CHARS = 256  # a longer string value is cut to this
# Totals that stay in the snapshot after a stream is evicted.
_STREAM_TOTALS = ("recovered", "lost", "duplicates", "refused_ahead", "rejected")
_FLOOR_TOLERANCE = 1e-9  # credits are sums of utd * n: 10 * 0.1 must make one whole update, not 0.999...
_log = logging.getLogger(__name__)


@dataclass
class ControllerStream:
    """What the learner knows of one controller's stream of batches (saved in checkpoints)."""

    ledger: SequenceLedger = field(default_factory=SequenceLedger)  # which seqs were taken; gaps and duplicates
    batches: int = 0  # batches taken (inserted or rejected)
    transitions: int = 0  # transitions inserted
    rejected: int = 0  # batches with wrong shapes or non-finite values, not inserted
    last_rejection: str = ""
    episodes: int = 0  # episodes that ended in this stream's batches (TransitionBatch.episode_return)
    last_episode_return: float | None = None
    last_batch_s: float = field(default=-math.inf, compare=False)  # monotonic; not saved (-inf after a resume)

    def summary(self) -> dict[str, Any]:
        ledger = self.ledger
        return {
            "received_through": ledger.received_through,
            "durable_through": ledger.durable_through,
            "highest_seq": ledger.highest,
            "batches": self.batches,
            "transitions": self.transitions,
            "gaps": ledger.gaps,
            "recovered": ledger.recovered,
            "lost": ledger.lost,
            "duplicates": ledger.duplicates,
            "refused_ahead": ledger.refused_ahead,
            "rejected": self.rejected,
            "last_rejection": self.last_rejection,
            "episodes": self.episodes,
            "last_episode_return": self.last_episode_return,
        }

    def total(self, name: str) -> int:
        return self.rejected if name == "rejected" else getattr(self.ledger, name)

    def state(self, durable: bool) -> dict[str, Any]:
        counters = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("ledger", "last_batch_s")}
        return {**counters, "ledger": self.ledger.state(durable)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ControllerStream:
        return cls(**{**state, "ledger": SequenceLedger.from_state(state["ledger"])})


@dataclass
class LearnerState:
    """learner.pt's `learner` entry: what a resumed learner restores beyond the agent, its buffer and env_steps.

    `Learner.save` writes it and a resuming `Learner` restores it (a fresh start from a learner.pt takes only its
    published_version); its field names are the keys in the file, listed here once.
    """

    updates: int
    update_credit: float
    start_env_steps: int
    published_version: int
    streams: dict[str, dict[str, Any]]  # ControllerStream.state(durable=True) by stream id
    retired_streams: dict[str, int]  # the _STREAM_TOTALS of evicted streams
    streams_evicted: int
    numpy_rng: dict[str, Any]  # the batch sampler's bit_generator.state
    torch_rng: torch.Tensor
    cuda_rng: torch.Tensor | None = None  # only a learner on a GPU saves it: the policy's noise is drawn there
    updates_skipped: int = 0  # LearnerConfig.when_behind "skip" (absent from checkpoints made before it)

    def to_dict(self) -> dict[str, Any]:
        saved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.cuda_rng is None:
            del saved["cuda_rng"]
        return saved

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> LearnerState:
        # Checkpoints written before streams were evicted (issue 16) lack the eviction counters.
        return cls(**{"retired_streams": {}, "streams_evicted": 0, **saved})


def _bounded_values(values: dict[str, Any]) -> dict[str, Any]:
    kept = itertools.islice(values.items(), MAX_STATS_KEPT)
    return {key[:MAX_STAT_CHARS]: value[:MAX_STAT_CHARS] if type(value) is str else value for key, value in kept}


class _RateMeter:
    """Updates/s and transitions/s since the previous reading."""

    def __init__(self, now: float, updates: int, env_steps: int):
        self._last = (now, updates, env_steps)

    def read(self, now: float, updates: int, env_steps: int) -> tuple[float, float]:
        then, last_updates, last_steps = self._last
        self._last = (now, updates, env_steps)
        elapsed = max(now - then, 1e-9)
        return (updates - last_updates) / elapsed, (env_steps - last_steps) / elapsed


class Learner:
    """ACA phase 3 fed by a transitions `Receiver`, publishing on a policy `Sender` (ZeroMQ, or the Memory* fakes).

    `run()` publishes the current actor, then steps until a stop condition or `request_stop()`, and checkpoints.
    Tests and benchmarks may call `receive`, `train`, `publish`, `save` and `step` themselves.
    `resume=True` restores everything from `<checkpoint_dir>/learner.pt` instead of reading `config.checkpoint`;
    a fresh start writes that file at once, so that a restart with `resume` (what a supervisor does) always finds one,
    and refuses a checkpoint_dir that already holds another run's.
    """

    def __init__(self, config: LearnerConfig, receiver: TransitionServer, publisher: Sender, *, resume: bool = False):
        config.validate()
        self.config = config
        self.receiver = receiver
        self.publisher = publisher
        checkpoint_dir = Path(config.checkpoint_dir)
        self.checkpoint_path = checkpoint_dir / CHECKPOINT_FILE
        self.status_path = checkpoint_dir / STATUS_FILE
        self.metrics_path = Path(config.metrics) if config.metrics else checkpoint_dir / METRICS_FILE

        source = self.checkpoint_path if resume else Path(config.checkpoint)
        if resume and not source.is_file():
            raise CheckpointError(f"resume: no learner checkpoint at {source} (start once without resume)")
        if not resume and self.checkpoint_path.exists() and self.checkpoint_path.resolve() != source.resolve():
            raise InputError(
                f"{self.checkpoint_path} exists: resume to continue that run, or choose another checkpoint_dir"
            )
        payload = load_checkpoint(source, "online")
        self.device = resolve_device(config.device)
        self.agent, self.buffer, aca_config = load_online_agent(payload, self.device)
        # Stops the learner (DivergenceError, exit 1) when an update's statistics diverge; bounds scale with the
        # largest |reward| seen (algo.divergence.DivergenceBounds).
        self.guard = DivergenceGuard(
            "online fine-tuning (learner)", "update", aca_config.sac.gamma, aca_config.sac.reward_scale
        )
        self.reward_abs_max = float(np.abs(self.buffer.reward[: len(self.buffer)]).max(initial=0.0))
        self.batch_size = aca_config.sac.batch_size
        self.meta: dict[str, Any] = payload["meta"]
        self._aca_config_dict: dict = payload["config"]
        low = np.asarray(self.meta["action_low"], dtype=np.float32)
        high = np.asarray(self.meta["action_high"], dtype=np.float32)
        self._action_scale, self._action_offset = (high - low) / 2, (high + low) / 2
        self.policy_name = config.policy_name or re.sub(r"[^A-Za-z0-9_.-]", "-", self.meta["env_id"])[:64]
        self._algorithm = (
            "SAC naive fine-tuning (baseline)" if self.meta.get("finetune") == "naive" else "ACA phase 3 (online)"
        )

        self.env_steps = int(payload["agent"]["env_steps"])
        entry = payload["agent"].get("learner")  # absent from an aligned checkpoint
        saved = LearnerState.from_dict(entry) if entry is not None else None
        self.rng = np.random.default_rng(config.seed)
        self.streams: OrderedDict[str, ControllerStream]  # least recently sending first; at most MAX_STREAMS
        self._retired = dict.fromkeys(_STREAM_TOTALS, 0)  # totals of evicted streams
        self.streams_evicted = 0
        if resume:
            if saved is None:
                raise CheckpointError(f"{source}: an 'online' checkpoint without learner state: cannot resume from it")
            self._restore(saved)
        else:
            torch.manual_seed(config.seed)  # seeds the CUDA generators too
            self.updates = 0
            self.update_credit = 0.0
            self.updates_skipped = 0
            self.start_env_steps = self.env_steps
            self.published_version = saved.published_version if saved else 0
            self.streams = OrderedDict()

        # The latest Stats values of each source, least recently heard first (MAX_STREAMS sources; MAX_STATS_KEPT
        # values each, strings cut to MAX_STAT_CHARS).
        self._sources: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.stats_evicted = 0
        self._refusals_logged: set[str] = set()  # StreamRefused reasons already logged once
        self._new_returns: list[float] = []  # since the last metrics record
        self._info_sums: dict[str, float] = {}
        self._info_count = 0
        self._latest_policy: Policy | None = None
        self._last_publish_s = -math.inf
        self._builder: ArtifactBuilder | None = None  # the exported graph: made at the first publication
        self._build_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
        self._building: Future | None = None  # the next version, building off the training thread
        self.publish_seconds = 0.0  # how long the latest build took (export or weight rewrite, and parity check)
        self.publish_blocking_s = 0.0  # training-thread time spent on publications: the actor copies and the sends
        self.publishes_coalesced = 0  # publications skipped while the previous one was still building
        self._stop_requested = False
        self._state = "starting"

        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temp_files(checkpoint_dir, (CHECKPOINT_FILE, STATUS_FILE)):
            _log.info("removed %s, left by a process that died while writing it", stale)
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self._metrics_file = open(self.metrics_path, "a")  # open for the learner's lifetime
        now = time.monotonic()
        self._started_s = now
        self._last_status_s = self._last_metrics_s = self._last_ack_s = now
        self._status_rates = _RateMeter(now, self.updates, self.env_steps)
        self._run_rates = _RateMeter(now, self.updates, self.env_steps)  # read once, by the 'stopped' status
        self._metrics_rates = _RateMeter(now, self.updates, self.env_steps)
        if not resume:
            self.save()  # before the first status.json: a restart with `resume` always finds a checkpoint
        self.write_status()

    def _restore(self, state: LearnerState) -> None:
        self.updates = state.updates
        self.update_credit = state.update_credit
        self.updates_skipped = state.updates_skipped
        self.start_env_steps = state.start_env_steps
        # Versions published after the checkpoint was taken must not be reused: status.json saw them.
        self.published_version = max(state.published_version, self._version_in_status())
        self.streams = OrderedDict((cid, ControllerStream.from_state(kept)) for cid, kept in state.streams.items())
        self._retired.update(state.retired_streams)
        self.streams_evicted = state.streams_evicted
        self.rng.bit_generator.state = state.numpy_rng
        torch.set_rng_state(state.torch_rng)
        if self.device.type == "cuda" and state.cuda_rng is not None:
            torch.cuda.set_rng_state(state.cuda_rng, self.device)

    def _learner_state(self) -> LearnerState:
        return LearnerState(
            updates=self.updates,
            update_credit=self.update_credit,
            updates_skipped=self.updates_skipped,
            start_env_steps=self.start_env_steps,
            published_version=self.published_version,
            streams={cid: stream.state(durable=True) for cid, stream in self.streams.items()},
            retired_streams=dict(self._retired),
            streams_evicted=self.streams_evicted,
            numpy_rng=self.rng.bit_generator.state,
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        )

    def _version_in_status(self) -> int:
        """The last version published from this checkpoint_dir as status.json recorded it (0 when unreadable)."""
        try:
            return int(json.loads(self.status_path.read_text())["published_version"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    # --- stop conditions --------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop after the current update (safe to call from a signal handler or another thread)."""
        self._stop_requested = True

    @property
    def owed_updates(self) -> int:
        return math.floor(self.update_credit + _FLOOR_TOLERANCE)

    @property
    def transitions_received(self) -> int:
        return self.env_steps - self.start_env_steps

    def _updates_exhausted(self) -> bool:
        return self.config.max_updates is not None and self.updates >= self.config.max_updates

    def _receiving_done(self) -> bool:
        return self.config.max_env_steps is not None and self.transitions_received >= self.config.max_env_steps

    @property
    def done(self) -> bool:
        """A stop condition holds: max_updates reached, or max_env_steps received and no update owed."""
        return self._updates_exhausted() or (self._receiving_done() and self.owed_updates == 0)

    # --- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> Path:
        """Publish the current actor, step until done or asked to stop, then checkpoint; returns the checkpoint."""
        try:
            self.publish()
            self._state = "running"
            self.write_status()
            while not (self._stop_requested or self.done):
                self.step()
        except BaseException:
            self._state = "failed"
            self.write_status()
            self._metrics_file.close()
            self._build_thread.shutdown(wait=False, cancel_futures=True)
            raise
        return self.shutdown()

    def step(self) -> None:
        """One turn: receive (waiting briefly only when idle), train a slice, housekeeping."""
        self.receive(0.0 if self.owed_updates else IDLE_WAIT_S)
        self.train()
        self.finish_publication()
        self._housekeeping(time.monotonic())

    def shutdown(self) -> Path:
        """Send a version still building, checkpoint, write the last metrics record and a 'stopped' status."""
        self.finish_publication(wait=True)
        self._build_thread.shutdown()
        path = self.save()
        self.write_metrics()
        self._state = "stopped"
        self.write_status()
        self._metrics_file.close()
        return path

    # --- receiving --------------------------------------------------------------------------------------------------

    def receive(self, timeout_s: float = 0.0) -> int:
        """Take what the channel holds (at most MAX_DRAIN_MESSAGES), waiting up to timeout_s for the first message.

        Returns the number of messages taken. Takes none once `max_env_steps` transitions were received.
        """
        taken = 0
        wait_s = timeout_s
        while taken < MAX_DRAIN_MESSAGES and not self._receiving_done():
            message = self.receiver.recv(wait_s)
            if message is None:
                break
            wait_s = 0.0
            taken += 1
            if isinstance(message, TransitionBatch):
                self._take_batch(message)
            elif isinstance(message, Stats):
                self._take_stats(message)
            elif isinstance(message, StreamRefused):  # counted by the receiver's binding (status: binding)
                if message.reason not in self._refusals_logged:
                    self._refusals_logged.add(message.reason)
                    _log.warning("transitions channel: refused %s; further ones are only counted", message)
            elif self.receiver.counters.protocol_errors == 1:  # a ProtocolError: the receiver counts every one
                _log.warning("transitions channel: bad frame (%s); further ones are only counted", message)
        return taken

    def _stream(self, stream_id: str) -> ControllerStream:
        """The stream's books, made (evicting the one that sent least recently beyond MAX_STREAMS) if new."""
        stream = self.streams.get(stream_id)
        if stream is None:
            if len(self.streams) >= MAX_STREAMS:
                _, evicted = self.streams.popitem(last=False)
                for name in _STREAM_TOTALS:
                    self._retired[name] += evicted.total(name)
                self.streams_evicted += 1
            stream = self.streams[stream_id] = ControllerStream()
        else:
            self.streams.move_to_end(stream_id)
        return stream

    def _take_batch(self, batch: TransitionBatch) -> None:
        stream = self._stream(batch.stream_id)
        stream.last_batch_s = time.monotonic()
        if not stream.ledger.take(batch.seq, batch.resend_from):
            return  # a duplicate or too far ahead (counted by the ledger)
        stream.batches += 1
        if batch.episode_return is not None:
            stream.episodes += 1
            stream.last_episode_return = batch.episode_return
            self._new_returns.append(batch.episode_return)
        problem = self._content_problem(batch)
        if problem:
            if not stream.rejected:
                _log.warning("controller %s: batch %d rejected: %s", batch.stream_id, batch.seq, problem)
            stream.rejected += 1
            stream.last_rejection = problem
            return
        count = len(batch)
        # Env steps after whose insertion the buffer holds more than a batch are the ones that earn updates.
        earning = min(count, max(0, len(self.buffer) + count - self.batch_size))
        action = np.clip((batch.action - self._action_offset) / self._action_scale, -1.0, 1.0)
        self.buffer.add_batch(batch.obs, action, batch.reward, batch.next_obs, batch.terminated)
        self.reward_abs_max = max(self.reward_abs_max, float(np.abs(batch.reward).max()))
        self.env_steps += count
        self.update_credit += self.config.utd * earning
        if self.config.when_behind == "skip":
            excess = self.owed_updates - self.config.max_owed_updates
            if excess > 0:
                self.update_credit -= excess
                self.updates_skipped += excess
        stream.transitions += count

    def _content_problem(self, batch: TransitionBatch) -> str:
        """Why `batch` cannot go into this learner's buffer ('' if it can)."""
        count, obs_dim, action_dim = len(batch), self.meta["obs_dim"], self.meta["action_dim"]
        if batch.obs.shape != (count, obs_dim):
            return f"obs of shape {batch.obs.shape}, expected ({count}, {obs_dim})"
        if batch.action.shape != (count, action_dim):
            return f"action of shape {batch.action.shape}, expected ({count}, {action_dim})"
        for name in ("obs", "action", "reward", "next_obs"):
            if not np.isfinite(getattr(batch, name)).all():
                return f"non-finite values in {name}"
        return ""

    def _take_stats(self, stats: Stats) -> None:
        values, name = stats.values, stats.source[:MAX_STAT_CHARS]
        if name in self._sources:
            self._sources.move_to_end(name)
        elif len(self._sources) >= MAX_STREAMS:
            self._sources.popitem(last=False)
            self.stats_evicted += 1
        self._sources[name] = _bounded_values(values)

    # --- training and publishing ------------------------------------------------------------------------------------

    def train(self, budget_s: float = UPDATE_SLICE_S) -> int:
        """Run owed updates for about budget_s (at least one when any is owed); returns how many ran.

        Publishes and checkpoints on their update schedules.
        """
        ran = 0
        deadline = time.monotonic() + budget_s
        while self.owed_updates > 0 and not (self._stop_requested or self._updates_exhausted()):
            info = self.agent.update(self.buffer.sample(self.batch_size, self.rng))
            self.guard.check(self.updates, info, self.reward_abs_max)
            self.update_credit -= 1.0
            self.updates += 1
            ran += 1
            for key, value in info.items():
                self._info_sums[key] = self._info_sums.get(key, 0.0) + value
            self._info_count += 1
            if self.updates % self.config.publish_every == 0:
                self.publish_in_background()
            if self.updates % self.config.checkpoint_every_updates == 0:
                self.save()
            if time.monotonic() >= deadline:
                break
        return ran

    def publish(self) -> Policy:
        """Build the current actor's artifact on this thread and publish it as the next version (at start: the
        session's first export)."""
        self.finish_publication(wait=True)
        policy, self.publish_seconds = self._build(self._actor_copy(), self.env_steps, self.published_version + 1)
        self._send(policy)
        return policy

    def publish_in_background(self) -> None:
        """Start building the current actor's artifact on the build thread; `finish_publication` sends it."""
        if self._building is not None:
            self.publishes_coalesced += 1
            return
        started = time.monotonic()
        actor = self._actor_copy()
        self._building = self._build_thread.submit(self._build, actor, self.env_steps, self.published_version + 1)
        self.publish_blocking_s += time.monotonic() - started

    def finish_publication(self, wait: bool = False) -> None:
        """Send the version built on the build thread once it is ready (or wait for it); its errors raise here."""
        if self._building is None or not (wait or self._building.done()):
            return
        building, self._building = self._building, None
        policy, self.publish_seconds = building.result()
        started = time.monotonic()
        self._send(policy)
        self.publish_blocking_s += time.monotonic() - started

    def _actor_copy(self) -> torch.nn.Module:
        """The actor as it is now, detached from training (the build thread reads it while updates go on)."""
        return copy.deepcopy(self.agent.actor).to("cpu")

    def _build(self, actor: torch.nn.Module, training_step: int, version: int) -> tuple[Policy, float]:
        """(the policy, seconds taken). On the build thread, or on the training thread when none is building."""
        started = time.monotonic()
        if self._builder is None:
            source = str(self.checkpoint_path.resolve())
            self._builder = ArtifactBuilder(actor, self.meta, source, name=self.policy_name, algorithm=self._algorithm)
        onnx_bytes, manifest = self._builder.build(actor, training_step, version)
        return Policy(version=version, onnx=onnx_bytes, manifest=manifest), time.monotonic() - started

    def _send(self, policy: Policy) -> None:
        self.publisher.send(policy)
        self.published_version = policy.version
        self._latest_policy = policy
        self._last_publish_s = time.monotonic()
        self.write_status()  # at once: a resumed learner reads the last version from it, never to reuse it

    def save(self) -> Path:
        """Write learner.pt atomically: agent, buffer, env_steps and `LearnerState` (counters, sequence state, the
        random generators). A failure leaves the previous learner.pt and no temp file."""
        state = online_state(self.agent, self.buffer, self.env_steps, self._learner_state().to_dict())
        path = save_checkpoint(self.checkpoint_path, "online", state, self._aca_config_dict, self.meta)
        self.guard.saved(path, self.updates)
        for stream in self.streams.values():
            stream.ledger.mark_durable()
        self.acknowledge()  # at once: controllers may forget what is now durable
        return path

    def acknowledge(self) -> None:
        """Tell each active controller stream what this learner holds (wire.delivery)."""
        now = time.monotonic()
        for cid, stream in self.streams.items():
            if now - stream.last_batch_s <= ACTIVE_STREAM_S:
                self.receiver.acknowledge(stream.ledger.ack(cid))
        self._last_ack_s = now

    # --- reporting --------------------------------------------------------------------------------------------------

    @property
    def controller_stats(self) -> dict[str, dict[str, Any]]:
        """The latest Stats values per source (the MAX_STREAMS sources heard most recently)."""
        return dict(self._sources)

    def _housekeeping(self, now: float) -> None:
        if now - self._last_ack_s >= ACK_EVERY_S:
            self.acknowledge()
        if self._latest_policy is not None and now - self._last_publish_s >= self.config.republish_every_s:
            self.publisher.send(self._latest_policy)
            self._last_publish_s = now
        if now - self._last_status_s >= STATUS_EVERY_S:
            self.write_status()
        if now - self._last_metrics_s >= self.config.metrics_every_s:
            self.write_metrics()

    def snapshot(self) -> dict[str, Any]:
        """The current numbers (JSON-ready)."""
        streams = self.streams.values()
        return {
            "updates": self.updates,
            "env_steps": self.env_steps,
            "transitions_received": self.transitions_received,
            "owed_updates": self.owed_updates,
            "updates_skipped": self.updates_skipped,
            # Updates per env step received in this run (UTD counts from the first step with more than a batch).
            "utd_achieved": self.updates / max(1, self.env_steps - self.start_env_steps),
            "buffer_size": len(self.buffer),
            "device": str(self.device),
            "published_version": self.published_version,
            "gaps": sum(stream.ledger.gaps for stream in streams),
            **{name: self._retired[name] + sum(stream.total(name) for stream in streams) for name in _STREAM_TOTALS},
            "protocol_errors": self.receiver.counters.protocol_errors,
            "streams": len(self.streams),
            "streams_evicted": self.streams_evicted,
            "stats_evicted": self.stats_evicted,
            "binding": self.receiver.owners.counts(),
            "alpha": self.agent.alpha,
            "w": self.agent.prior.w if self.agent.prior is not None else None,
            "controllers": {cid: stream.summary() for cid, stream in self.streams.items()},
            "last_episode_return": {
                sid: stream.last_episode_return
                for sid, stream in self.streams.items()
                if stream.last_episode_return is not None
            },
        }

    def write_status(self) -> None:
        now = time.monotonic()
        # While running: rates over the last second (a live status line); once stopped: over the whole run (a report).
        meter = self._run_rates if self._state == "stopped" else self._status_rates
        updates_per_s, transitions_per_s = meter.read(now, self.updates, self.env_steps)
        record = {
            "state": self._state,
            "pid": os.getpid(),
            "time": time.time(),
            "uptime_s": now - self._started_s,
            **self.snapshot(),
            "updates_per_s": updates_per_s,
            "transitions_per_s": transitions_per_s,
            "transitions_endpoint": self.config.transitions_endpoint,
            "policy_endpoint": self.config.policy_endpoint,
            "checkpoint": str(self.checkpoint_path),
        }
        write_text_atomic(self.status_path, json.dumps(record) + "\n")
        self._last_status_s = now

    def write_metrics(self) -> None:
        """One JSON line: rates since the previous record, mean losses over its updates, new episode returns."""
        now = time.monotonic()
        updates_per_s, transitions_per_s = self._metrics_rates.read(now, self.updates, self.env_steps)
        losses = {key: total / self._info_count for key, total in self._info_sums.items()} if self._info_count else {}
        record = {
            "time": time.time(),
            "elapsed_s": now - self._started_s,
            **losses,  # first: the snapshot's current alpha and w replace their means over the interval
            **self.snapshot(),
            "updates_per_s": updates_per_s,
            "transitions_per_s": transitions_per_s,
            "publish_s": self.publish_seconds,
            "publish_blocking_s": self.publish_blocking_s,
            "publishes_coalesced": self.publishes_coalesced,
            "episode_returns": self._new_returns,
            "episode_return_mean": float(np.mean(self._new_returns)) if self._new_returns else None,
            "controller_stats": self.controller_stats,  # bounded: MAX_STREAMS sources x MAX_STATS_KEPT values
        }
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        self._info_sums, self._info_count, self._new_returns = {}, 0, []
        self._last_metrics_s = now


def _apply_cpu_settings(config: LearnerConfig) -> None:
    set_torch_threads(config.torch_threads)
    if config.cpu_affinity is not None:
        pin_to_cores(config.cpu_affinity, "cpu_affinity")


def serve(config: LearnerConfig, *, resume: bool = False, ready_file: str | None = None) -> Path:
    """The learner process: threads and affinity, ZeroMQ channels bound, run until done or SIGTERM/SIGINT.

    Channels are bound on their own context with `config.security` (CURVE server keys and client allow-list; a
    non-loopback bind without CURVE is refused). Once the learner is loaded (and, on a fresh start, its first
    learner.pt written), the ready line is printed and `ready_file` written. A signal stops the learner after its
    current update; it checkpoints and this returns the checkpoint's path.
    """
    _apply_cpu_settings(config)
    with contextlib.ExitStack() as stack:  # endpoints close before their context (LIFO)
        secure = stack.enter_context(secure_context(config.security))
        receiver = stack.enter_context(
            ZmqTransitionReceiver(
                config.transitions_endpoint,
                context=secure.context,
                curve=secure.server_keys(config.transitions_endpoint),
            )
        )
        publisher = stack.enter_context(
            ZmqPolicyPublisher(
                config.policy_endpoint, context=secure.context, curve=secure.server_keys(config.policy_endpoint)
            )
        )
        learner = Learner(config, receiver, publisher, resume=resume)
        previous = {
            sig: signal.signal(sig, lambda *_: learner.request_stop()) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            print(
                f"learner ready on {learner.device}: transitions ROUTER {config.transitions_endpoint}, "
                f"policies PUB {config.policy_endpoint}, {len(learner.buffer)} transitions in the buffer, "
                f"{learner.updates} updates, status {learner.status_path}",
                flush=True,
            )
            if ready_file:
                Path(ready_file).write_text(config.transitions_endpoint)
            return learner.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
