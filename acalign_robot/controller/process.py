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

Hot-swap (hot_swap.py): a background thread judges each new policy version off the control thread, in the loop's
idle time, and leaves the accepted runner in a one-slot mailbox; the control loop picks it up between two ticks with
one reference assignment. Every transition records the version of the policy that chose its action. With rollback
on (safety.py: RollbackMonitor), a collapse of the episode returns swaps the last good version back in, also
between two ticks.

Faults: no StepReply within `driver_timeout_ms` latches SAFE (the safe action is sent every tick; the driver's
own watchdog covers the controller being gone). An Error in reply to a Step or Reset (the driver restarted and has no
session, another client holds it, the driver failed) is counted by code, latches SAFE, and ends the episode: the
controller then starts a new session (Hello, checked against the contract it started with, then Reset) at most once
per SESSION_RETRY_S, sending nothing else meanwhile, and stays SAFE until the operator clears. At exit it leaves the
robot on its safe action and sends Release, so the driver's watchdog does not take over after it.
Losing the learner never stops control: transitions go to the durable log and the learner in bounded batches,
resent until the learner has them (streaming.py).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from acalign_robot import realtime
from acalign_robot.atomic import write_text_atomic
from acalign_robot.config import FieldError
from acalign_robot.controller.hot_swap import GateSettings, IdleWindows, PolicySwapper
from acalign_robot.controller.safety import ActionFilter, FilterFlags, RollbackConfig, RollbackMonitor, SafetyConfig
from acalign_robot.controller.streaming import TransitionBatcher
from acalign_robot.controller.timing import SectionTimer
from acalign_robot.errors import InputError
from acalign_robot.policy.manifest import PolicyError
from acalign_robot.policy.runner import PolicyRunner
from acalign_robot.realtime import RealtimeConfig
from acalign_robot.robot_log.transition_log import TransitionLog
from acalign_robot.wire import protocol as p
from acalign_robot.wire.channels import ControlClient, PolicyReceiver, TransitionClient, TransportTimeout
from acalign_robot.wire.delivery import ResendWindow
from acalign_robot.wire.security import SecurityConfig, client_keys, is_local_endpoint

__all__ = ["Controller", "ControllerConfig", "run_controller"]

STATUS_WINDOW_TICKS = 1000  # the periodic status line's p50/p99 cover the most recent ticks
# The newest deadline misses and SAFE latches kept for stats.json (the session report's markers); 10k ticks are
# ~60 kB of JSON.
MAX_MISSES_LOGGED, MAX_LATCHES_LOGGED = 10_000, 1000
RECENT_EPISODES = 64  # episodes in each periodic status: more than end within a second at any real rate
# How long another thread may keep running Python while the control thread waits for the GIL (CPython's default is
# 5 ms, two whole ticks at 500 Hz). A hot-swap step that overruns its idle window then costs the tick <= 0.2 ms.
GIL_SWITCH_INTERVAL_S = 0.0002
SESSION_RETRY_S = 1.0  # after the driver refused a Step or a Reset: how often to try to start a new session


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
    # Hot-swap gate. Deviation: max |a_new - a_cur| / (high - low) over the probe batch, per action dimension;
    # 1.0 would admit anything (two actions are at most a range apart), 0.5 refuses a version that moves any
    # action by more than half its range at any recent observation (a flip from one bound to the other: 1.0).
    # One bound for every dimension, or a list of one per dimension (a joint whose command barely matters to the
    # task, such as an arm's wrist rotation, may flip between versions while the others stay gated).
    max_policy_deviation: float | tuple[float, ...] = 0.5
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
    # The periodic status (status.json, a Stats message to the learner) is written in a tick's idle time when it fits
    # there before the next deadline, so that it does not make a tick late; at the latest 2 x stats_every_s apart.
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
        if not 0 < self.max_inference_fraction <= 1:
            raise FieldError("max_inference_fraction", f"must be in (0, 1], got {self.max_inference_fraction}")
        deviations = np.atleast_1d(self.max_policy_deviation)
        if deviations.size == 0 or not np.all((deviations > 0) & (deviations <= 1)):
            raise FieldError(
                "max_policy_deviation",
                f"must be in (0, 1], one value or one per action dimension, got {self.max_policy_deviation}",
            )


def deviation_bounds(max_policy_deviation: float | tuple[float, ...], action_dim: int) -> np.ndarray:
    """The swap gate's deviation bound per action dimension (action_dim,): a single bound for every dimension, or
    the list given, which must name one per dimension of the driver's actions."""
    bounds = np.atleast_1d(np.asarray(max_policy_deviation, dtype=np.float64))
    if bounds.size == 1:
        return np.full(action_dim, bounds[0])
    if bounds.size != action_dim:
        raise InputError(
            f"controller.max_policy_deviation: {bounds.size} bounds for the driver's {action_dim} action dimensions"
        )
    return bounds


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
        self.filter = ActionFilter(
            config.safety, action_space.low, action_space.high, reply.safe_action, limits=reply.limits
        )
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
        self.batcher = TransitionBatcher(
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
        self.idle: IdleWindows | None = None
        self.swapper: PolicySwapper | None = None
        if policies is not None:
            self.idle = IdleWindows()
            gate = GateSettings(
                obs_dim=reply.observation_space.shape[0],
                action_low=action_space.low,
                action_high=action_space.high,
                control_period_s=self.period_s,
                explore=config.explore,
                provider=config.provider,
                max_policy_deviation=deviation_bounds(config.max_policy_deviation, action_space.shape[0]),
                max_inference_fraction=config.max_inference_fraction,
                seed=config.seed,
            )
            self.swapper = PolicySwapper(policies, gate, self.idle, self)  # self: its ControlLoopState
        self._recent = np.zeros((config.probe_observations, reply.observation_space.shape[0]), np.float32)
        self._recent_count = 0
        self._recent_lock = threading.Lock()
        self._stop = False
        self.ticks = 0
        self.deadline_misses = 0
        self._status_cost_s = 0.0  # what the last periodic status took on the control thread
        # The ticks that missed their deadline and the SAFE latches (tick, monotonic time, reason), for the session
        # report's markers; bounded, so a loop that misses every tick for hours keeps the newest only.
        self.miss_ticks: collections.deque[int] = collections.deque(maxlen=MAX_MISSES_LOGGED)
        self.latch_log: collections.deque[tuple[int, float, str]] = collections.deque(maxlen=MAX_LATCHES_LOGGED)
        self._started_s = time.monotonic()  # run() sets it again: the origin of the episode and latch times
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
        self.rollback_monitor = RollbackMonitor(config.rollback, runner)
        self.refused_through_version = 0  # after a rollback: versions up to the bad one are never swapped in again
        self.rollbacks: list[tuple[int, int]] = []  # (from version, to version)
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
        """Log a new SAFE latch with its reason (the filter keeps only the current one, emptied by a clear) and
        measure the first latch's reaction time: from the last good reply (before the fault) to the latch."""
        if not self.filter.safe or (self.latch_log and self.latch_log[-1][1] == self.filter.latched_at_s):
            return
        self.latch_log.append((self.ticks, self.filter.latched_at_s, self.filter.safe_reason))
        if self.safe_reaction_s is None:
            self.safe_reaction_s = self.filter.latched_at_s - self._last_reply_s

    def _roll_back_if_returns_collapsed(self, episode_return: float) -> None:
        """After an episode: swap the last good version back in if the monitor says so, and tell the learner."""
        good_runner = self.rollback_monitor.after_episode(episode_return, self.runner)
        if good_runner is None:
            return
        bad, good = self.runner.manifest.version, good_runner.manifest.version
        self.runner = good_runner  # between ticks, like a swap
        self.refused_through_version = max(self.refused_through_version, bad)
        self.rollbacks.append((bad, good))
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
        obs = np.asarray(reply.obs, dtype=np.float32)
        self.filter.observe(obs)
        return obs

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
        started = self._started_s = time.monotonic()
        self._last_stats_s = started
        self._publish_stats(self.stats(0.0))  # status.json exists from the first tick, not a period later
        deadline = time.perf_counter() + self.period_s
        while not self._done(started):
            t0 = time.perf_counter()
            if self._session_lost is not None:
                restarted = self._restart_session() if time.monotonic() >= self._next_session_try_s else None
                if restarted is None:  # nothing is sent to a driver that refuses us until a new session starts
                    self._publish_stats_when_due(started, deadline)
                    deadline = self._sleep_until(deadline)
                    continue
                obs, episode_return = restarted, 0.0
            swapped = self.swapper is not None and self.swapper.ready is not None
            if swapped:
                # The rollback target stays alive; the swapper's thread releases the others.
                if self.runner is not self.rollback_monitor.good_runner:
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
                self.filter.observe(next_obs)
                self._note_latch()
                if reply.safe_action_applied:
                    flags |= FilterFlags.SAFE
                episode_return += reply.reward
                episode_ends = reply.terminated or reply.truncated
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
                    episode_return if episode_ends else None,
                    reply.info,
                )
                self._remember(obs)
                obs = next_obs
                if episode_ends:
                    self.episodes += 1
                    self.episode_returns.append(episode_return)
                    self.episode_log.append(
                        (self.ticks, time.monotonic() - started, episode_return, runner.manifest.version)
                    )
                    self._roll_back_if_returns_collapsed(episode_return)
                    episode_return = 0.0
                    obs = self._reset()  # None: the session is lost, and restarted at the top of the loop
            self.batcher.service(t3)
            t4 = time.perf_counter()
            self.ticks += 1
            self.timer.record((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0))
            if swapped:  # the swap tick's own latency: the first inference of a new session
                self.swap_log.append((self.runner.manifest.version, self.ticks, time.time(), t4 - t0))
            self._publish_stats_when_due(started, deadline)
            deadline = self._sleep_until(deadline)
        return self._shutdown(started)

    def _publish_stats_when_due(self, started: float, deadline: float) -> None:
        """The periodic status, in this tick's idle time before `deadline` (perf_counter) if the last one's cost fits
        there; otherwise a later tick's, and once it is a whole period late, now. It costs ~1-2 ms with the caches
        cold from sleeping (summaries, JSON, a file), more than a 500 Hz tick leaves idle: written at once, it made
        a tick late every second (docs/results.md, control loop)."""
        now = time.monotonic()
        since_s = now - self._last_stats_s
        if since_s < self.config.stats_every_s:
            return
        began = time.perf_counter()
        if deadline - began > self._status_cost_s or since_s >= 2 * self.config.stats_every_s:
            self._last_stats_s = now
            self._publish_stats(self.stats(now - started))
            self._status_cost_s = time.perf_counter() - began

    def _sleep_until(self, deadline: float) -> float:
        """Sleep to the tick's deadline (its idle window for the hot-swap), or count a miss; the next deadline."""
        now = time.perf_counter()
        if now > deadline:
            self.deadline_misses += 1
            self.miss_ticks.append(self.ticks)
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
            _write_json(Path(self.config.output_dir) / "stats.json", stats, durable=True)
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
            "info_values_missing": self.batcher.info_values_missing,  # driver info keys a step lacked (filled)
            "info_values_dropped": self.batcher.info_values_dropped,  # new keys, other types or shapes: not logged
            "transition_batches_resent": self.batcher.window.resent,
            "transition_batches_evicted": self.batcher.window.evicted,
            "learner_received_through": self.batcher.window.received_through,
            "safe": self.filter.safe,
            "safe_reaction_s": self.safe_reaction_s,
            "safe_reason": self.filter.safe_reason,
            **{f"filter_{k}": v for k, v in self.filter.counts.items()},
            **({f"filter_{k}": v for k, v in self.filter.limits.counts.items()} if self.filter.limits else {}),
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
            values["miss_ticks"] = list(self.miss_ticks)
            values["safety_log"] = [[tick, at_s - self._started_s, reason] for tick, at_s, reason in self.latch_log]
        else:
            # Every episode for the supervisor's live page, which reads this status once a second: several short
            # episodes may end within one second, and last_episode_return alone would lose all but the last.
            values["recent_episodes"] = self.episode_log[-RECENT_EPISODES:]
        if self.swapper is not None:
            values["swap_rejections"] = dict(self.swapper.rejections)
            values["last_rejection"] = self.swapper.last_rejection
            values["last_publish_to_ready_s"] = self.swapper.last_publish_to_ready_s
            values["last_candidate_inference_s"] = self.swapper.last_inference_s
            values["last_candidate_deviation"] = self.swapper.last_deviation
            values["swapper_alive"] = self.swapper.alive  # False: no new version is considered; see swapper_error
            values["swapper_error"] = self.swapper.error or ""
        return values

    def _publish_stats(self, stats: dict) -> None:
        if self.config.output_dir:
            # Mostly on the control thread, between two ticks: an fsync there could outlast a tick on a busy disk,
            # and status.json is the supervisor's live view (stats.json is the record).
            _write_json(Path(self.config.output_dir) / "status.json", stats, durable=False)
        if self.transitions is not None:
            flat = {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))}
            self.transitions.send(p.Stats(source=self.config.controller_id, values=flat))


def _same_contract(a: p.HelloReply, b: p.HelloReply) -> bool:
    """Whether two handshakes describe the same robot interface (spaces, period, safe action, robot limits: the
    safety filter checks observations against the first handshake's)."""
    spaces = [(a.observation_space, b.observation_space), (a.action_space, b.action_space)]
    if (a.limits is None) != (b.limits is None):
        return False
    if a.limits is not None:
        if (a.limits.joint_position_index, a.limits.joint_velocity_index, a.limits.end_effector_index) != (
            b.limits.joint_position_index,
            b.limits.joint_velocity_index,
            b.limits.end_effector_index,
        ):
            return False
        names = ("joint_position", "joint_velocity", "joint_torque", "workspace")
        spaces += [(getattr(a.limits, name), getattr(b.limits, name)) for name in names]
    return (
        a.control_period_s == b.control_period_s
        and all(
            np.array_equal(x.low, y.low) and np.array_equal(x.high, y.high) and x.units == y.units for x, y in spaces
        )
        and np.array_equal(a.safe_action, b.safe_action)
    )


def _write_json(path: Path, data: dict, *, durable: bool) -> None:
    """Atomic (acalign_robot.atomic): a reader (the supervisor) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1), durable=durable)


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
