"""The real-time controller: an ONNX policy driving a driver at a fixed rate, streaming what it executes.

Each tick (period = 1 / rate_hz, or the driver's control period):
    infer   the PolicyRunner's action for the current observation (deterministic, or exploring)
    filter  the safety filter (safety.py): finite check, clip, rate limit, SAFE latch
    obs     one Step request to the driver and its StepReply (the round trip: apply, advance, observe)
    send    the transition into the outgoing batch; a full batch is pushed to the learner without blocking
then sleep until the tick's deadline. The schedule is deadline-based: deadline_k = start + k * period, and the loop
sleeps for what is left of the period after its work, never `sleep(period)`. A tick whose work ends after its
deadline is a deadline miss; the next deadline is then re-anchored to now (no burst of catch-up ticks).
The loop measures every section (p50/p99/max) and publishes Stats.

Hot-swap: a background thread owns the policy subscription (latest-only). It waits for a frame without the GIL,
receives and decodes it, and validates each new version off the control thread (the gate in PolicySwapper: wire
and manifest versions agree, sha256 and spaces and graph contract via PolicyRunner, batch-1 inference within a
fraction of the control period, finite and not all-saturated actions on a probe batch of recent observations,
bounded deviation from the current policy on that batch), builds its onnxruntime session, and leaves it in a
one-slot mailbox; the control loop picks it up between two ticks with one reference assignment. Every transition
records the version of the policy that chose its action. The two threads share the GIL, so the swapper works only
while the control thread sleeps (IdleWindows), one step (< 1 ms) per window, and the process's GIL switch interval
is 0.2 ms: the control thread wakes to a free interpreter.

Faults: no StepReply within `driver_timeout_ms` latches SAFE (the safe action is sent every tick; the driver's
own watchdog covers the controller being gone). An Error in reply to a Step or Reset (the driver restarted and has no
session, another client holds it, the driver failed) is counted by code, latches SAFE, and ends the episode: the
controller then starts a new session (Hello, checked against the contract it started with, then Reset) at most once
per SESSION_RETRY_S, sending nothing else meanwhile, and stays SAFE until the operator clears. At exit it leaves the
robot on its safe action and sends Release, so the driver's watchdog does not take over after it.
Losing the learner never stops control: batches that do not fit the bounded queue are counted as drops, and every
batch stays in a resend window (runtime.delivery) until the learner acknowledges it as checkpointed; what the learner
reports missing (after a drop, or after it was killed and restarted) is resent, one batch per tick at most. At exit
the controller waits up to `final_delivery_s` for the learner to acknowledge its last batch.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acalign_robot import realtime
from acalign_robot.config import FieldError
from acalign_robot.controller.safety import ActionFilter, FilterFlags, SafetyConfig
from acalign_robot.policy.manifest import PolicyError
from acalign_robot.policy.runner import PolicyRunner
from acalign_robot.realtime import RealtimeConfig
from acalign_robot.robot_log.transition_log import TransitionLog
from acalign_robot.wire import protocol as p
from acalign_robot.wire.delivery import ResendWindow
from acalign_robot.wire.security import SecurityConfig, client_keys, is_local_endpoint
from acalign_robot.wire.transport import ControlClient, PolicyReceiver, TransitionClient, TransportTimeout

__all__ = ["Controller", "ControllerConfig", "IdleWindows", "PolicySwapper", "SectionTimer", "run_controller"]

SECTIONS = ("infer", "filter", "obs", "send", "tick")
STATUS_WINDOW_TICKS = 1000  # the periodic status line's p50/p99 cover the most recent ticks
ACK_POLL_S = 0.02  # how often the control loop looks for the learner's acknowledgements
# How long another thread may keep running Python while the control thread waits for the GIL (CPython's default is
# 5 ms, two whole ticks at 500 Hz). A hot-swap step that overruns its idle window then costs the tick <= 0.2 ms.
GIL_SWITCH_INTERVAL_S = 0.0002
SESSION_RETRY_S = 1.0  # after the driver refused a Step or a Reset: how often to try to start a new session


@dataclass(frozen=True)
class RollbackConfig:
    """Revert to the last good policy when online returns collapse (off by default in sim, on for hardware).

    The baseline is the mean return of the first `baseline_episodes` episodes (the policy the session started with,
    before any fine-tuned version). After each episode, the mean of the last `window` returns is compared with
    `fraction` * baseline (for negative baselines: the baseline minus (1 - fraction) * |baseline|); `patience`
    episodes in a row below it roll back to the last version whose window was above it, and newer versions up to
    the bad one are refused from then on. The learner is told with a Stats message.
    """

    enabled: bool = False
    baseline_episodes: int = 5
    window: int = 5
    fraction: float = 0.5
    patience: int = 3

    def validate(self) -> None:
        if min(self.baseline_episodes, self.window, self.patience) < 1:
            raise FieldError("window", "baseline_episodes, window and patience must be >= 1")
        if not 0.0 < self.fraction < 1.0:
            raise FieldError("fraction", f"must be in (0, 1), got {self.fraction}")


@dataclass(frozen=True)
class ControllerConfig:
    """One controller process. Saved form: a launch file's `controllers:` entry, or a file for `acalign controller`."""

    policy: str  # artifact directory: policies/NAME (latest version) or policies/NAME/VERSION
    driver_endpoint: str = "tcp://127.0.0.1:5555"  # set by the supervisor in a launch file
    controller_id: str = "controller-0"
    rate_hz: float | None = None  # None: the driver's control period
    explore: bool = False  # sample from the policy (fine-tuning) instead of tanh(mean) (evaluation)
    seed: int = 0
    episodes: int | None = None  # stop after this many episodes ...
    ticks: int | None = None  # ... or ticks ...
    duration_s: float | None = None  # ... or seconds (whichever first; none: until SIGTERM)
    driver_timeout_ms: float = 100.0
    learner_endpoint: str | None = None  # transitions DEALER (connect); none: no learner
    policy_endpoint: str | None = None  # policy SUB (connect); none: no hot-swap
    transition_batch: int = 64
    queue_batches: int = 256
    resend_window_mb: float = 64.0  # batches kept (array bytes) until the learner has checkpointed them
    resend_after_s: float = 2.0  # a batch the learner lacks is resent once it was sent at least this long ago
    final_delivery_s: float = 2.0  # at exit, wait this long at most for the learner to acknowledge the last batch
    # Hot-swap gate. Deviation: max |a_new - a_cur| / (high - low) over the probe batch and the action dimensions;
    # 1.0 would admit anything (two actions are at most a range apart), 0.5 refuses a version that moves any
    # action by more than half its range at any recent observation (a flip from one bound to the other: 1.0).
    max_policy_deviation: float = 0.5
    # A candidate's batch-1 inference (median of 5, the control loop's call) must take at most this fraction of
    # the control period (2 ms at 125 Hz, 0.5 ms at 500 Hz): the rest is the driver's round trip and the loop.
    max_inference_fraction: float = 0.25
    probe_observations: int = 256
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    rollback: RollbackConfig = field(default_factory=RollbackConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)  # CURVE client keys for remote endpoints
    provider: str = "cpu"
    output_dir: str | None = None  # stats.json (at exit), status.json (every second), log/ (the transition log)
    log: bool = True  # durable log of every executed transition in <output_dir>/log (needs output_dir)
    stats_every_s: float = 1.0
    # Busy-wait for the deadline and for the driver's reply instead of sleeping: the control thread never sleeps, so
    # its core stays hot (tick latency near the floor), at the cost of that whole core (for an isolated core).
    spin_wait: bool = False
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)  # SCHED_FIFO and cores (realtime.py)

    def validate(self) -> None:
        if self.rate_hz is not None and not 0 < self.rate_hz <= 10_000:
            raise FieldError("rate_hz", f"must be in (0, 10000], got {self.rate_hz}")
        if self.driver_timeout_ms <= 0:
            raise FieldError("driver_timeout_ms", f"must be positive, got {self.driver_timeout_ms}")
        if self.transition_batch < 1 or self.queue_batches < 1:
            raise FieldError("transition_batch", "transition_batch and queue_batches must be >= 1")
        if not self.resend_window_mb > 0:
            raise FieldError("resend_window_mb", f"must be positive, got {self.resend_window_mb}")
        for name in ("resend_after_s", "final_delivery_s"):
            if not getattr(self, name) >= 0:
                raise FieldError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.provider not in ("cpu", "cuda"):
            raise FieldError("provider", f"must be 'cpu' or 'cuda', got {self.provider!r}")
        for name in ("max_policy_deviation", "max_inference_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise FieldError(name, f"must be in (0, 1], got {getattr(self, name)}")


class SectionTimer:
    """Per-section durations in preallocated rings (the last `capacity` ticks), summarised as p50/p99/max."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self.samples = {name: np.zeros(capacity) for name in SECTIONS}
        self.count = 0

    def record(self, durations: tuple[float, ...]) -> None:
        index = self.count % self.capacity
        for name, value in zip(SECTIONS, durations):
            self.samples[name][index] = value
        self.count += 1

    def tick_samples(self) -> np.ndarray:
        """Whole-tick durations (s) of the last `capacity` ticks, oldest first."""
        filled = min(self.count, self.capacity)
        start = self.count % self.capacity if self.count > self.capacity else 0
        return np.roll(self.samples["tick"][:filled], -start)

    def summary(self, last: int | None = None) -> dict[str, float]:
        """p50/p99/max per section over every sample held, or over the `last` ticks only (cheap enough for the
        control thread: the whole 100k-sample ring costs ~13 ms of percentiles)."""
        filled = min(self.count, self.capacity)
        if filled == 0:
            return {}
        if last is not None and last < filled:
            end = self.count % self.capacity
            window = np.arange(end - last, end) % self.capacity  # the ring's newest `last` entries
        else:
            window = slice(0, filled)
        result = {}
        for name, ring in self.samples.items():
            values = ring[window]
            result[f"{name}_p50_s"] = float(np.percentile(values, 50))
            result[f"{name}_p99_s"] = float(np.percentile(values, 99))
            result[f"{name}_max_s"] = float(values.max())
        return result


class _TransitionBatcher:
    """Fills preallocated arrays; `flush` turns them into one TransitionBatch with the next sequence number, which
    goes to the durable log (when on) and to the learner (when connected), whose acknowledgements `service` reads
    and answers with resends."""

    def __init__(
        self,
        stream_id: str,
        size: int,
        obs_dim: int,
        action_dim: int,
        sender: TransitionClient | None,
        log: TransitionLog | None,
        window: ResendWindow,
    ):
        self.stream_id, self.size, self.sender, self.log, self.window = stream_id, size, sender, log, window
        self.obs = np.zeros((size, obs_dim), np.float32)
        self.next_obs = np.zeros((size, obs_dim), np.float32)
        self.action = np.zeros((size, action_dim), np.float32)
        self.policy_action = np.zeros((size, action_dim), np.float32)
        self.reward = np.zeros(size, np.float32)
        self.terminated = np.zeros(size, bool)
        self.truncated = np.zeros(size, bool)
        self.version = np.zeros(size, np.int64)
        self.flags = np.zeros(size, np.int32)
        self.timestamp_s = np.zeros(size, np.float64)  # wall clock (time.time()) when the step reply arrived
        self.filled = 0
        self.seq = 0
        self.sent_batches = 0
        self.dropped_batches = 0
        self._next_ack_poll = 0.0

    def add(self, obs, policy_action, action, reward, next_obs, terminated, truncated, version, flags) -> None:
        i = self.filled
        self.obs[i], self.policy_action[i], self.action[i], self.next_obs[i] = obs, policy_action, action, next_obs
        self.reward[i], self.terminated[i], self.truncated[i] = reward, terminated, truncated
        self.version[i], self.flags[i], self.timestamp_s[i] = version, flags, time.time()
        self.filled += 1
        if self.filled == self.size:
            self.flush()

    def flush(self) -> None:
        if self.filled == 0:
            return
        n, self.filled = self.filled, 0
        if self.sender is None and self.log is None:
            return
        batch = p.TransitionBatch(
            stream_id=self.stream_id,
            seq=self.seq,
            policy_version=self.version[:n].copy(),
            obs=self.obs[:n].copy(),
            action=self.action[:n].copy(),
            reward=self.reward[:n].copy(),
            next_obs=self.next_obs[:n].copy(),
            terminated=self.terminated[:n].copy(),
            truncated=self.truncated[:n].copy(),
            extras={"policy_action": self.policy_action[:n].copy(), "safety_flags": self.flags[:n].copy()},
            resend_from=self.window.oldest(self.seq),  # what the learner lacks below it is gone: it writes it off
        )
        self.seq += 1
        if self.log is not None:
            self.log.write(batch, self.timestamp_s[:n].copy())
        if self.sender is None:
            return
        if self.sender.send(batch):
            self.sent_batches += 1
        else:
            self.dropped_batches += 1
        self.window.record(batch, time.perf_counter())

    def service(self, now: float) -> None:
        """Between ticks (`now`: perf_counter): read the learner's acks every ACK_POLL_S, resend at most one batch."""
        if self.sender is None:
            return
        if now >= self._next_ack_poll:
            self._next_ack_poll = now + ACK_POLL_S
            self._take_acks(now)
        self._resend_one(now)

    def deliver_rest(self, timeout_s: float) -> bool:
        """At exit: keep answering acks until the learner holds every batch or `timeout_s` passed; True if it does."""
        if self.sender is None or self.seq == 0:
            return True
        deadline = time.perf_counter() + timeout_s
        while self.window.received_through < self.seq - 1 and (now := time.perf_counter()) < deadline:
            self._take_acks(now, wait_s=min(0.05, deadline - now))
            while self._resend_one(time.perf_counter()):
                pass
        return self.window.received_through >= self.seq - 1

    def _take_acks(self, now: float, wait_s: float = 0.0) -> None:
        """Hand every queued TransitionAck of this stream to the window (waiting up to wait_s for the first)."""
        message = self.sender.recv(wait_s)
        while isinstance(message, p.TransitionAck):
            if message.stream_id == self.stream_id:
                self.window.acknowledge(message, now)
            message = self.sender.recv(0.0)

    def _resend_one(self, now: float) -> bool:
        """Resend the next batch the learner lacks; False when none is due or the channel is full."""
        batch = self.window.next_due(now)
        if batch is None:
            return False
        if self.sender.send(batch):
            return True
        self.window.retry_later(batch)
        return False


class IdleWindows:
    """When the control thread sleeps before its next deadline: the only time the hot-swap thread may do its work.

    Both threads share one GIL. Building an onnxruntime session holds it (~1 ms) and so does Python code (up to the
    5 ms switch interval), so a validation running while the control thread wakes up delays that tick by as much:
    measured, ticks just before a swap took 2 ms instead of 0.7 (bench/hot_swap.py). The control loop `open`s a
    window each time it goes to sleep, until its deadline, and `close`s it on waking; the swapper runs each step of
    its work only in a window with room for that step (PolicySwapper._when_idle), so the GIL is free when the control
    thread needs it.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._until = 0.0  # perf_counter() at which the current window ends; 0: no window
        self._recent = collections.deque(maxlen=64)  # lengths of the latest windows, seconds

    def open(self, until: float) -> None:
        with self._changed:
            self._until = until
            self._recent.append(until - time.perf_counter())
            self._changed.notify_all()

    def typical_long(self) -> float:
        """The 75th percentile of the latest 64 window lengths (0 before the first): a window a step can expect."""
        lengths = sorted(self._recent)
        return lengths[int(0.75 * len(lengths))] if lengths else 0.0

    def close(self) -> None:
        self._until = 0.0

    def wait(self, need_s: float, timeout_s: float) -> bool:
        """Block until a window has at least `need_s` left; False if none came within `timeout_s`."""
        give_up = time.monotonic() + timeout_s
        with self._changed:
            while self._until - time.perf_counter() < need_s:
                left = give_up - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True


class PolicySwapper:
    """Receives policies on its own thread, judges each in the control loop's idle time (IdleWindows), and offers
    the next runner to the control loop.

    Nothing received holds the GIL against the control thread outside an idle window: the thread waits for a frame
    with a poll (no GIL) and takes a view of it (no copy); copying it out of ZeroMQ's buffer and decoding it (16 MiB:
    ~5 ms each) are steps of their own, each in a window with room for the frame's size.

    The gate, in order; each failure is a rejection counted by its reason, and each artifact (wire version, claimed
    sha256) is judged once:
        version    the wire version must be the manifest's (else every re-publish would look new)
        artifact   manifest, sha256, spaces, graph contract ((batch, obs_dim) with a dynamic batch), one probe
        latency    the candidate's batch-1 inference (the control loop's call, on recent observations; median of
                   LATENCY_CALLS) within `max_inference_fraction` of the control period, or, where the machine is
                   so loaded that the running policy measures over that budget too (timed alongside), within twice
                   the running policy's; the probe batch then runs in chunks that the budget holds at the batch-1
                   rate (PROBE_MAX_CHUNKS at most), one per window, beside the running policy's
        nonfinite  finite actions on the probe batch of recent observations
        saturated  every probe action at a bound (e.g. a mean offset of 1e30) where the current policy's are not
        deviation  max |a_new - a_cur| / (high - low) on the probe batch above `max_policy_deviation`
        error      anything else a candidate raises: counted, reported in `last_rejection`, and the next version
                   is considered as usual
    A version at or below the newest one accepted (or one refused after a rollback) is never considered again, so
    no version is swapped in twice. Should the thread itself die (its transport failing), `alive` and `error` say so
    in the controller's status; control goes on with the current policy.
    """

    # A step waits at most this long for a window it fits in; then it takes the next window of any size (a loop
    # whose idle time never fits a step still gets new versions, at the cost of that tick's latency).
    MAX_WAIT_S = 1.0
    LATENCY_CALLS = 5  # batch-1 inferences timed per candidate in one window, each beside one of the running policy
    PROBE_MAX_CHUNKS = 4  # windows the probe batch takes at most (a call's overhead is most of its cost here)
    JUDGED_MEMORY = 64  # artifacts remembered as judged, so that a re-published one is not validated again
    # What copying or decoding a frame costs per byte, for the room those steps ask of a window: 0.3-0.35 ns/byte
    # measured here for 16 MiB (fresh pages included), taken as 1 ns/byte; a window never needs more than 0.9x the
    # typical long one.
    FRAME_S_PER_BYTE = 1e-9

    def __init__(self, subscriber: PolicyReceiver, controller: Controller):
        self.subscriber = subscriber
        self.controller = controller
        self.ready: PolicyRunner | None = None  # the one-slot mailbox, taken by the control loop
        # Runners the control loop swapped out: released here, because destroying an onnxruntime session costs
        # ~0.1-0.3 ms that the control thread would otherwise pay on the swap tick.
        self.retired: list[PolicyRunner] = []
        self.accepted = 0
        self.newest_accepted = 0  # the newest version put in the mailbox
        self.rejections: dict[str, int] = {}
        self.last_rejection = ""
        self.last_publish_to_ready_s = 0.0
        self.last_inference_s: float | None = None  # the latest candidate's batch-1 inference (median), seconds
        self.last_reference_s: float | None = None  # the running policy's, timed alongside it
        self.error: str | None = None  # why the thread died, if it did
        self._judged: collections.deque[tuple[int, str]] = collections.deque(maxlen=self.JUDGED_MEMORY)
        # The latest durations of each step of the work; their minimum (a run not stretched by preemption) is the
        # room the step asks of a window.
        self.step_seconds: dict[str, collections.deque[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-swapper", daemon=True)

    @property
    def alive(self) -> bool:
        """False once the thread died (see `error`); a thread not started yet or stopped on request is not dead."""
        return self.error is None and (self._thread.is_alive() or self._thread.ident is None or self._stop.is_set())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.subscriber.close()

    def _reject(self, reason: str, detail: str) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        self.last_rejection = f"{reason}: {detail}"[:300]

    def _run(self) -> None:
        try:
            realtime.leave_realtime()  # off the control path: never ahead of the control thread
            while not self._stop.is_set():
                if self.retired:
                    self._when_idle("release", self.retired.clear)
                if not self.subscriber.wait(0.1):  # a poll: the GIL stays free while nothing, or a frame, arrives
                    continue
                frame = self.subscriber.take()
                if frame is None or isinstance(frame, p.ProtocolError):
                    self._consider(frame)
                    continue
                need_s = len(frame) * self.FRAME_S_PER_BYTE
                frame = self._when_idle("copy", functools.partial(bytes, frame), need_s)  # bytes: as it is
                self._consider(self._when_idle("decode", functools.partial(self.subscriber.decode, frame), need_s))
        except BaseException as exc:  # noqa: BLE001 - recorded for the status, then the thread ends as it would
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            raise

    def _consider(self, message: p.Message | p.ProtocolError | None) -> None:
        received = time.perf_counter()
        if message is None:
            return
        if isinstance(message, p.ProtocolError):
            self._reject("protocol", str(message))
            return
        held = max(self.controller.runner.manifest.version, self.controller.refused_through_version)
        if message.version <= max(held, self.newest_accepted):
            return  # what we run or already accepted, older, or refused after a rollback: nothing to do
        onnx = message.manifest.get("onnx")
        key = (message.version, str(onnx.get("sha256") if isinstance(onnx, dict) else None))
        if key in self._judged:
            return  # a re-publish of an artifact already refused
        self._judged.append(key)
        try:
            runner = self._validate(message)
        except Exception as exc:  # any failure of a candidate: onnxruntime's own exception types, or a bug here
            self._reject("error", f"version {message.version}: {type(exc).__name__}: {exc}")
            return
        if runner is not None:
            self.ready = runner
            self.accepted += 1
            self.newest_accepted = runner.manifest.version
            self.last_publish_to_ready_s = time.perf_counter() - received

    def _when_idle(self, step: str, work: Callable[[], Any], need_s: float | None = None) -> Any:
        """Run `work` in an idle window of the control loop with room for it: `need_s`, or else the step's shortest
        recent duration; at most 0.9x the 75th percentile of recent windows."""
        windows = self.controller.idle
        durations = self.step_seconds.setdefault(step, collections.deque(maxlen=8))
        if need_s is None:
            need_s = min(durations, default=0.0)
        # A step longer than the usual window (e.g. a session build at 1 kHz) takes a long one of the usual ones.
        need = min(need_s, 0.9 * windows.typical_long())
        if not windows.wait(need, self.MAX_WAIT_S):
            windows.wait(0.0, self.MAX_WAIT_S)
        started = time.perf_counter()
        try:
            return work()
        finally:
            durations.append(time.perf_counter() - started)

    def _load_when_idle(self, stages: Generator[str, None, PolicyRunner]) -> PolicyRunner:
        """Run PolicyRunner.in_stages one stage per idle window; the runner it returns."""
        stage = 0
        while True:
            try:
                self._when_idle(f"load-{stage}", lambda: next(stages))
            except StopIteration as loaded:
                return loaded.value
            stage += 1

    def _validate(self, message: p.Policy) -> PolicyRunner | None:
        """The gate (see the class docstring); the runner, warmed up, or None after a counted rejection."""
        version, config, spec = message.version, self.controller.config, self.controller.spec
        if message.manifest.get("version") != version:
            self._reject("version", f"wire version {version}, manifest version {message.manifest.get('version')!r}")
            return None
        stages = PolicyRunner.in_stages(
            message.onnx,
            message.manifest,
            obs_dim=spec.observation_space.shape[0],
            action_dim=spec.action_space.shape[0],
            action_low=spec.action_space.low,
            action_high=spec.action_space.high,
            provider=config.provider,
            seed=self.controller.rng,
        )
        try:
            runner = self._load_when_idle(stages)
        except (PolicyError, ValueError) as exc:
            self._reject("artifact", str(exc))
            return None
        probe = self.controller.recent_observations()
        budget_s = config.max_inference_fraction * self.controller.period_s
        try:
            inference_s, reference_s = self._inference_seconds(runner, probe)
            self.last_inference_s, self.last_reference_s = inference_s, reference_s
            if inference_s > max(budget_s, 2 * reference_s):
                self._reject(
                    "latency",
                    f"version {version} takes {inference_s * 1e3:.2f} ms per tick (the running policy "
                    f"{reference_s * 1e3:.2f} ms), the budget is {budget_s * 1e3:.2f} ms "
                    f"({config.max_inference_fraction:g} of the period)",
                )
                return None
            chunk = max(-(-len(probe) // self.PROBE_MAX_CHUNKS), int(budget_s / max(inference_s, 1e-6)))
            new_action, current_action = self._probe_actions(runner, probe, chunk)
            self._when_idle("warm-up", runner.warm_up)  # onnxruntime's first-run setup, not on the swap tick
        except PolicyError as exc:  # inference failed on these inputs
            self._reject("artifact", str(exc))
            return None
        if not np.all(np.isfinite(new_action)):
            self._reject("nonfinite", f"version {version} gives non-finite actions on the probe batch")
            return None
        low, high = spec.action_space.low, spec.action_space.high
        span = high - low
        if _all_at_bounds(new_action, low, high) and not _all_at_bounds(current_action, low, high):
            self._reject("saturated", f"version {version} puts every probe action at a bound")
            return None
        deviation = float(np.max(np.abs(new_action - current_action) / span))
        if deviation > config.max_policy_deviation:
            self._reject("deviation", f"version {version} moves actions by {deviation:.2f} of the range")
            return None
        return runner

    def _inference_seconds(self, runner: PolicyRunner, probe: np.ndarray) -> tuple[float, float]:
        """Medians of LATENCY_CALLS batch-1 inferences on probe observations, in one window: the candidate's, as
        `act` calls its graph, and the running policy's (a one-row `act_batch`: its batch-1 buffer is the control
        thread's), alternating so that both see the same load."""

        def pairs() -> list[tuple[float, float]]:
            explore, current = self.controller.config.explore, self.controller.runner
            return [
                (runner.inference_seconds(obs, explore), _timed(current.act_batch, obs[None])[0])
                for obs in probe[np.arange(self.LATENCY_CALLS) % len(probe)]
            ]

        candidate, reference = zip(*self._when_idle("latency", pairs))
        return float(np.median(candidate)), float(np.median(reference))

    def _probe_actions(self, runner: PolicyRunner, probe: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic actions (B, action_dim) of the candidate and of the running policy on the probe batch,
        `chunk` observations of both per idle window."""
        current = self.controller.runner

        def both(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return runner.act_batch(part)[0], current.act_batch(part)[0]

        parts = [
            self._when_idle("probe", functools.partial(both, probe[start : start + chunk]))
            for start in range(0, len(probe), chunk)
        ]
        return np.concatenate([new for new, _ in parts]), np.concatenate([cur for _, cur in parts])


def _timed(work: Callable[[np.ndarray], Any], argument: np.ndarray) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work(argument)
    return time.perf_counter() - started, result


def _all_at_bounds(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> bool:
    """Whether every action (B, action_dim) sits at its low or high bound (to 1e-6 of the range)."""
    return bool(np.all(np.minimum(action - low, high - action) <= 1e-6 * (high - low)))


class Controller:
    """The control loop. Construct with transport endpoints (real or in-memory), then `run()`."""

    def __init__(
        self,
        config: ControllerConfig,
        client: ControlClient,
        runner: PolicyRunner,
        transitions: TransitionClient | None = None,
        policies: PolicyReceiver | None = None,
    ):
        self.config = config
        self.client = client
        self.rng = np.random.default_rng(config.seed)
        reply = client.request(p.Hello(client_name=config.controller_id, role="controller"), 5.0)
        if not isinstance(reply, p.HelloReply):
            raise PolicyError(f"driver at {config.driver_endpoint} answered Hello with {type(reply).__name__}")
        self.spec = reply
        action_space = reply.action_space
        # The artifact must fit this driver: same dims and the same action bounds it was exported for.
        runner.manifest.check_spaces(
            reply.observation_space.shape[0], action_space.shape[0], action_space.low, action_space.high
        )
        self.runner = runner
        self.period_s = 1.0 / config.rate_hz if config.rate_hz else reply.control_period_s
        self.filter = ActionFilter(config.safety, action_space.low, action_space.high, reply.safe_action)
        self.timer = SectionTimer()
        self.log = None
        if config.log and config.output_dir:
            # Chunks close every 5 s (or 1024 transitions): what a kill -9 of the controller can lose.
            self.log = TransitionLog(
                Path(config.output_dir) / "log",
                config.controller_id,
                chunk_transitions=1024,
                chunk_seconds=5.0,
                env_id=runner.manifest.env_id,
                observation_space=reply.observation_space,
                action_space=action_space,
                control_period_s=self.period_s,
            )
        # A stream per process start: a restarted controller's batches (seq from 0 again) are new data to the
        # learner, not duplicates of the previous run's.
        self.batcher = _TransitionBatcher(
            f"{config.controller_id}@{os.getpid()}",
            config.transition_batch,
            reply.observation_space.shape[0],
            action_space.shape[0],
            transitions,
            self.log,
            ResendWindow(int(config.resend_window_mb * 2**20), config.resend_after_s),
        )
        self.transitions = transitions
        # Only a controller that hot-swaps marks its idle time (it costs the tick a lock and a notify).
        self.idle: IdleWindows | None = IdleWindows() if policies is not None else None
        self.swapper = PolicySwapper(policies, self) if policies is not None else None
        self._recent = np.zeros((config.probe_observations, reply.observation_space.shape[0]), np.float32)
        self._recent_count = 0
        self._recent_lock = threading.Lock()
        self._stop = False
        self.ticks = 0
        self.deadline_misses = 0
        self.driver_timeouts = 0
        self.episodes = 0
        self.episode_returns: list[float] = []
        self.episode_log: list[tuple[int, float, float, int]] = []  # (tick, seconds, return, policy version)
        self.swaps = 0
        self.swap_log: list[tuple[int, int, float, float]] = []  # (version, tick, wall time, tick latency s)
        self._clears_seen: int | None = None  # the driver's Clear count at the last reply (None: a new session)
        self.step_errors: dict[str, int] = {}  # Error replies to Step / Reset, by code
        self.session_restarts = 0
        self._session_lost: str | None = None  # why the driver refused us; until a new session, no tick is sent
        self._next_session_try_s = 0.0
        self.released = False  # at exit: the driver acknowledged the Release (its watchdog is disarmed)
        self._last_reply_s = time.monotonic()  # the last StepReply: the start of any fault's reaction time
        self.safe_reaction_s: float | None = None  # last reply before the fault -> SAFE latched
        self.refused_through_version = 0  # after a rollback: versions up to the bad one are never swapped in again
        self.rollbacks: list[tuple[int, int]] = []  # (from version, to version)
        self._good_runner = runner  # the newest version whose returns held up
        self._below = 0  # consecutive episodes with the moving average under the threshold
        self.learner_has_every_batch: bool | None = None  # at exit, with a learner: did it acknowledge every batch

    def stop(self) -> None:
        self._stop = True

    def recent_observations(self) -> np.ndarray:
        with self._recent_lock:
            count = min(self._recent_count, len(self._recent))
            return self._recent[: max(count, 1)].copy()

    def _remember(self, obs: np.ndarray) -> None:
        with self._recent_lock:
            self._recent[self._recent_count % len(self._recent)] = obs
            self._recent_count += 1

    def _note_latch(self) -> None:
        """Measure the first SAFE latch's reaction time: from the last good reply (before the fault) to the latch."""
        if self.filter.safe and self.safe_reaction_s is None:
            self.safe_reaction_s = self.filter.latched_at_s - self._last_reply_s

    def _check_rollback(self) -> None:
        settings = self.config.rollback
        returns = self.episode_returns
        if len(returns) < settings.baseline_episodes:
            return
        baseline = float(np.mean(returns[: settings.baseline_episodes]))
        threshold = baseline - (1.0 - settings.fraction) * abs(baseline)
        if float(np.mean(returns[-settings.window :])) >= threshold:
            self._below = 0
            self._good_runner = self.runner
            return
        self._below += 1
        if self._below < settings.patience or self.runner is self._good_runner:
            return
        bad, good = self.runner.manifest.version, self._good_runner.manifest.version
        self.runner = self._good_runner  # between ticks, like a swap
        self.refused_through_version = max(self.refused_through_version, bad)
        self.rollbacks.append((bad, good))
        self._below = 0
        if self.transitions is not None:
            self.transitions.send(
                p.Stats(source=self.config.controller_id, values={"rollback_from": bad, "rollback_to": good})
            )

    def _reset(self) -> np.ndarray | None:
        """Start an episode; None (and the session marked lost) if the driver refused the Reset or did not answer."""
        try:
            reply = self.client.request(
                p.Reset(seed=self.config.seed + self.episodes), self.config.driver_timeout_ms / 1000 * 20
            )
        except TransportTimeout:
            self._lose_session("no reply to Reset")
            return None
        if not isinstance(reply, p.ResetReply):
            self._refused(reply, "Reset")
            return None
        self.filter.reset()
        return np.asarray(reply.obs, dtype=np.float32)

    def _refused(self, reply: p.Message, request: str) -> None:
        """The driver answered `request` with an Error (or another wrong type): count it, latch SAFE, lose the
        session (the policy: a new session, SAFE until the operator clears; see the module docstring)."""
        code = reply.code if isinstance(reply, p.Error) else type(reply).__name__
        self.step_errors[code] = self.step_errors.get(code, 0) + 1
        detail = f": {reply.message}" if isinstance(reply, p.Error) else ""
        self._lose_session(f"driver refused {request} ({code}{detail})"[:300])

    def _lose_session(self, reason: str) -> None:
        self.filter.latch(reason)
        self._note_latch()
        self._session_lost = reason
        self.batcher.flush()  # the episode ends here: what it executed goes to the learner and the log

    def _restart_session(self) -> np.ndarray | None:
        """Hello + Reset on the same driver contract; the first observation, or None to try again later."""
        self._next_session_try_s = time.monotonic() + SESSION_RETRY_S
        try:
            hello = self.client.request(
                p.Hello(client_name=self.config.controller_id, role="controller"), self.config.driver_timeout_ms / 1000
            )
        except TransportTimeout:
            return None
        if not isinstance(hello, p.HelloReply):
            self._refused(hello, "Hello")
            return None
        if not _same_contract(hello, self.spec):
            raise PolicyError(
                f"the driver at {self.config.driver_endpoint} came back with another contract (spaces, period or "
                "safe action): this controller's policy may not fit it"
            )
        self._clears_seen = None  # a restarted driver counts Clears from 0
        obs = self._reset()
        if obs is not None:
            self._session_lost = None
            self.session_restarts += 1
        return obs

    def _done(self, started: float) -> bool:
        cfg = self.config
        return (
            self._stop
            or (cfg.episodes is not None and self.episodes >= cfg.episodes)
            or (cfg.ticks is not None and self.ticks >= cfg.ticks)
            or (cfg.duration_s is not None and time.monotonic() - started >= cfg.duration_s)
        )

    def run(self) -> dict:
        cfg = self.config
        timeout_s = cfg.driver_timeout_ms / 1000.0
        if self.swapper is not None:
            self.swapper.start()
        obs = self._reset()
        if obs is None:
            raise PolicyError(f"driver at {cfg.driver_endpoint} refused to start an episode: {self._session_lost}")
        episode_return = 0.0
        started = time.monotonic()
        self._last_stats_s = started
        deadline = time.perf_counter() + self.period_s
        while not self._done(started):
            t0 = time.perf_counter()
            if self._session_lost is not None:
                restarted = self._restart_session() if time.monotonic() >= self._next_session_try_s else None
                if restarted is None:  # nothing is sent to a driver that refuses us until a new session starts
                    self._publish_stats_when_due(started)
                    deadline = self._sleep_until(deadline)
                    continue
                obs, episode_return = restarted, 0.0
            swapped = self.swapper is not None and self.swapper.ready is not None
            if swapped:
                if self.runner is not self._good_runner:  # the rollback target stays alive; others are released
                    self.swapper.retired.append(self.runner)
                self.runner, self.swapper.ready = self.swapper.ready, None  # the swap: one reference assignment
                self.swaps += 1
            runner = self.runner
            policy_action = runner.act(obs, cfg.explore)
            t1 = time.perf_counter()
            action, flags = self.filter(policy_action)
            self._note_latch()
            t2 = time.perf_counter()
            try:
                reply = self.client.request(p.Step(tick=self.ticks, action=action), timeout_s)
            except TransportTimeout:
                self.driver_timeouts += 1
                self.filter.latch(f"no reply from the driver within {cfg.driver_timeout_ms} ms")
                self._note_latch()
                reply = None
            t3 = time.perf_counter()
            if reply is not None and not isinstance(reply, p.StepReply):
                self._refused(reply, "Step")
            elif isinstance(reply, p.StepReply):
                self._last_reply_s = time.monotonic()
                if self._clears_seen is not None and reply.clears > self._clears_seen:
                    self.filter.clear()  # `acalign clear`: the operator released every latch
                self._clears_seen = reply.clears
                if reply.estopped:
                    self.filter.latch("driver e-stop")
                    self._note_latch()
                next_obs = np.asarray(reply.obs, dtype=np.float32)
                if reply.safe_action_applied:
                    flags |= FilterFlags.SAFE
                self.batcher.add(
                    obs,
                    policy_action,
                    action,
                    reply.reward,
                    next_obs,
                    reply.terminated,
                    reply.truncated,
                    runner.manifest.version,
                    flags,
                )
                self._remember(obs)
                episode_return += reply.reward
                obs = next_obs
                if reply.terminated or reply.truncated:
                    self.episodes += 1
                    self.episode_returns.append(episode_return)
                    self.episode_log.append(
                        (self.ticks, time.monotonic() - started, episode_return, runner.manifest.version)
                    )
                    if cfg.rollback.enabled:
                        self._check_rollback()
                    episode_return = 0.0
                    self.batcher.flush()
                    obs = self._reset()  # None: the session is lost, and restarted at the top of the loop
            self.batcher.service(t3)
            t4 = time.perf_counter()
            self.ticks += 1
            self.timer.record((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0))
            if swapped:  # the swap tick's own latency: the first inference of a new session
                self.swap_log.append((self.runner.manifest.version, self.ticks, time.time(), t4 - t0))
            self._publish_stats_when_due(started)
            deadline = self._sleep_until(deadline)
        return self._shutdown(started)

    def _publish_stats_when_due(self, started: float) -> None:
        if time.monotonic() - self._last_stats_s >= self.config.stats_every_s:
            self._last_stats_s = time.monotonic()
            self._publish_stats(self.stats(self._last_stats_s - started))

    def _sleep_until(self, deadline: float) -> float:
        """Sleep to the tick's deadline (its idle window for the hot-swap), or count a miss; the next deadline."""
        now = time.perf_counter()
        if now > deadline:
            self.deadline_misses += 1
            deadline = now  # re-anchor: no burst of catch-up ticks
        else:
            if self.idle is not None:
                self.idle.open(deadline)
            if self.config.spin_wait:
                while time.perf_counter() < deadline:
                    pass
            else:
                time.sleep(deadline - now)
            if self.idle is not None:
                self.idle.close()
        return deadline + self.period_s

    def _shutdown(self, started: float) -> dict:
        self.batcher.flush()
        timeout_s = self.config.driver_timeout_ms / 1000
        with contextlib.suppress(TransportTimeout):  # leave the robot on its safe action, then end the session
            if self._session_lost is None:
                self.client.request(p.Step(tick=self.ticks, action=self.filter.safe_action), timeout_s)
            self.released = isinstance(
                self.client.request(p.Release(reason="controller stopped"), timeout_s), p.Heartbeat
            )
        if self.transitions is not None:
            self.learner_has_every_batch = self.batcher.deliver_rest(self.config.final_delivery_s)
        if self.swapper is not None:
            self.swapper.stop()
        stats = self.stats(time.monotonic() - started, final=True)
        if self.log is not None:
            stats["log"] = self.log.close()
        self._publish_stats(stats)
        if self.config.output_dir:
            _write_json(Path(self.config.output_dir) / "stats.json", stats)
            np.save(Path(self.config.output_dir) / "tick_latency_s.npy", self.timer.tick_samples())
        return stats

    def stats(self, elapsed_s: float | None = None, final: bool = False) -> dict:
        """Counters and timings. The periodic status (not `final`) runs on the control thread between two ticks, so
        it summarises only the recent ticks and leaves out the per-episode and per-swap lists."""
        values: dict = {
            "controller_id": self.config.controller_id,
            "ticks": self.ticks,
            "episodes": self.episodes,
            "deadline_misses": self.deadline_misses,
            "driver_timeouts": self.driver_timeouts,
            "step_errors": sum(self.step_errors.values()),
            **{f"step_errors_{code}": count for code, count in self.step_errors.items()},
            "session_restarts": self.session_restarts,
            "session_lost": self._session_lost or "",
            "target_rate_hz": 1.0 / self.period_s,
            "policy_version": self.runner.manifest.version,
            "swaps": self.swaps,
            "rollbacks": [list(entry) for entry in self.rollbacks],
            "transition_batches": self.batcher.seq,
            "transition_batches_sent": self.batcher.sent_batches,
            "transition_batches_dropped": self.batcher.dropped_batches,
            "transition_batches_resent": self.batcher.window.resent,
            "transition_batches_evicted": self.batcher.window.evicted,
            "learner_received_through": self.batcher.window.received_through,
            "safe": self.filter.safe,
            "safe_reaction_s": self.safe_reaction_s,
            "safe_reason": self.filter.safe_reason,
            **{f"filter_{k}": v for k, v in self.filter.counts.items()},
            **self.timer.summary(None if final else STATUS_WINDOW_TICKS),
        }
        if elapsed_s:
            values["achieved_rate_hz"] = self.ticks / elapsed_s
        if self.episode_returns:
            values["last_episode_return"] = self.episode_returns[-1]
        if final:
            values["released"] = self.released
            if self.learner_has_every_batch is not None:
                values["learner_has_every_batch"] = self.learner_has_every_batch
            values["episode_returns"] = self.episode_returns[-1000:]
            values["episode_log"] = self.episode_log[-1000:]
            values["swap_log"] = self.swap_log[-1000:]
        if self.swapper is not None:
            values["swap_rejections"] = dict(self.swapper.rejections)
            values["last_rejection"] = self.swapper.last_rejection
            values["last_publish_to_ready_s"] = self.swapper.last_publish_to_ready_s
            values["last_candidate_inference_s"] = self.swapper.last_inference_s
            values["swapper_alive"] = self.swapper.alive  # False: no new version is considered; see swapper_error
            values["swapper_error"] = self.swapper.error or ""
        return values

    def _publish_stats(self, stats: dict) -> None:
        if self.config.output_dir:
            _write_json(Path(self.config.output_dir) / "status.json", stats)
        if self.transitions is not None:
            flat = {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))}
            self.transitions.send(p.Stats(source=self.config.controller_id, values=flat))


def _same_contract(a: p.HelloReply, b: p.HelloReply) -> bool:
    """Whether two handshakes describe the same robot interface (spaces, period, safe action)."""
    return (
        a.control_period_s == b.control_period_s
        and all(
            np.array_equal(x.low, y.low) and np.array_equal(x.high, y.high) and x.units == y.units
            for x, y in ((a.observation_space, b.observation_space), (a.action_space, b.action_space))
        )
        and np.array_equal(a.safe_action, b.safe_action)
    )


def _write_json(path: Path, data: dict) -> None:
    """Atomic: a reader (the supervisor) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def run_controller(config: ControllerConfig, ready_file: str | None = None) -> dict:
    """Build ZeroMQ endpoints and the policy runner from `config`, run until done or SIGTERM/SIGINT."""
    from acalign_robot.wire.transport import ZmqControlClient, ZmqPolicySubscriber, ZmqTransitionSender

    realtime.apply(config.realtime, "controller.realtime")  # first: the threads started below inherit it
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    runner = PolicyRunner.from_dir(config.policy, provider=config.provider, seed=config.seed)
    keys = client_keys(config.security)
    # As the driver serves it: CURVE only when the control link leaves this machine (driver_server.DriverConfig).
    client = ZmqControlClient(
        config.driver_endpoint,
        curve=None if is_local_endpoint(config.driver_endpoint) else keys,
        spin=config.spin_wait,
    )
    transitions = (
        ZmqTransitionSender(config.learner_endpoint, queue_messages=config.queue_batches, curve=keys)
        if config.learner_endpoint
        else None
    )
    policies = ZmqPolicySubscriber(config.policy_endpoint, curve=keys) if config.policy_endpoint else None
    try:
        controller = Controller(config, client, runner, transitions, policies)
        if ready_file:  # the driver answered the handshake and the policy fits it
            Path(ready_file).write_text(config.controller_id)
        signal.signal(signal.SIGTERM, lambda signum, frame: controller.stop())
        signal.signal(signal.SIGINT, lambda signum, frame: controller.stop())
        # Everything loaded so far (numpy, onnxruntime, zmq, the runner) moves to a permanent generation: a full
        # collection triggered by a tick's or a hot-swap's allocations no longer walks it while holding the GIL.
        gc.freeze()
        return controller.run()
    finally:
        client.close()
        if transitions is not None:
            transitions.close(linger_s=1.0)  # let the last batch and the final stats reach the learner
