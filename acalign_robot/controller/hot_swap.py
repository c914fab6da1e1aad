"""Hot-swap: new policy versions judged off the control thread and handed to the control loop between two ticks.

A background thread (PolicySwapper) owns the policy subscription (latest-only). It waits for a frame without the
GIL, receives and decodes it, and validates each new version off the control thread (the gate: wire and manifest
versions agree, sha256 and spaces and graph contract via PolicyRunner, batch-1 inference within a fraction of the
control period, finite and not all-saturated actions on a probe batch of recent observations, bounded deviation
from the current policy on that batch), builds its onnxruntime session, and leaves it in a one-slot mailbox; the
control loop picks it up between two ticks with one reference assignment. The two threads share the GIL, so the
swapper works only while the control thread sleeps (IdleWindows), one step (< 1 ms) per window, and the controller
process's GIL switch interval is 0.2 ms (process.GIL_SWITCH_INTERVAL_S): the control thread wakes to a free
interpreter.

The swapper sees the controller through a narrow interface: GateSettings (what a candidate is held to, fixed for
the controller's life), the IdleWindows the control loop opens, and ControlLoopState (the live state it reads: the
running policy, the version refused through after a rollback, the recent observations).
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from acalign_robot import realtime
from acalign_robot.policy.manifest import PolicyError
from acalign_robot.policy.runner import PolicyRunner
from acalign_robot.wire import protocol as p
from acalign_robot.wire.channels import PolicyReceiver

__all__ = ["ControlLoopState", "GateSettings", "IdleWindows", "PolicySwapper"]


@dataclass(frozen=True)
class GateSettings:
    """What the gate holds every candidate to, fixed for the controller's life: the driver's spaces, the control
    period and the controller's gate settings (ControllerConfig explains the two bounds)."""

    obs_dim: int
    action_low: np.ndarray  # (action_dim,), the driver's action bounds
    action_high: np.ndarray  # (action_dim,)
    control_period_s: float  # the latency budget is `max_inference_fraction` of it
    explore: bool  # how the control loop calls `act`, and so how a candidate's latency is timed
    provider: str  # onnxruntime's execution provider for each candidate's session
    max_policy_deviation: np.ndarray  # (action_dim,), a fraction of each dimension's range
    max_inference_fraction: float
    seed: int  # seeds the one generator that every candidate's exploration noise is drawn from


class ControlLoopState(Protocol):
    """The live state of the control loop that the swapper reads from its own thread (the Controller)."""

    @property
    def runner(self) -> PolicyRunner:
        """The policy the control loop runs now: the reference for a candidate's latency and deviation."""
        ...

    @property
    def refused_through_version(self) -> int:
        """After a rollback: versions up to the bad one are never considered again (0: none refused)."""
        ...

    def recent_observations(self) -> np.ndarray:
        """A copy of the latest observations (B, obs_dim), B >= 1: the probe batch."""
        ...


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
        deviation  max |a_new - a_cur| / (high - low) on the probe batch above `max_policy_deviation` in any
                   action dimension (one bound for all, or one per dimension)
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

    def __init__(self, subscriber: PolicyReceiver, gate: GateSettings, idle: IdleWindows, loop: ControlLoopState):
        self.subscriber = subscriber
        self.gate = gate
        self.idle = idle
        self.loop = loop
        self._rng = np.random.default_rng(gate.seed)  # one generator for every candidate's exploration noise
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
        # The latest candidate's deviation per action dimension (fraction of the range): what a bound can be set from.
        self.last_deviation: list[float] | None = None
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
        held = max(self.loop.runner.manifest.version, self.loop.refused_through_version)
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
        durations = self.step_seconds.setdefault(step, collections.deque(maxlen=8))
        if need_s is None:
            need_s = min(durations, default=0.0)
        # A step longer than the usual window (e.g. a session build at 1 kHz) takes a long one of the usual ones.
        need = min(need_s, 0.9 * self.idle.typical_long())
        if not self.idle.wait(need, self.MAX_WAIT_S):
            self.idle.wait(0.0, self.MAX_WAIT_S)
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
        version, gate = message.version, self.gate
        if message.manifest.get("version") != version:
            self._reject("version", f"wire version {version}, manifest version {message.manifest.get('version')!r}")
            return None
        stages = PolicyRunner.in_stages(
            message.onnx,
            message.manifest,
            obs_dim=gate.obs_dim,
            action_dim=gate.action_low.shape[0],
            action_low=gate.action_low,
            action_high=gate.action_high,
            provider=gate.provider,
            seed=self._rng,
        )
        try:
            runner = self._load_when_idle(stages)
        except (PolicyError, ValueError) as exc:
            self._reject("artifact", str(exc))
            return None
        probe = self.loop.recent_observations()
        budget_s = gate.max_inference_fraction * gate.control_period_s
        try:
            inference_s, reference_s = self._inference_seconds(runner, probe)
            self.last_inference_s, self.last_reference_s = inference_s, reference_s
            if inference_s > max(budget_s, 2 * reference_s):
                self._reject(
                    "latency",
                    f"version {version} takes {inference_s * 1e3:.2f} ms per tick (the running policy "
                    f"{reference_s * 1e3:.2f} ms), the budget is {budget_s * 1e3:.2f} ms "
                    f"({gate.max_inference_fraction:g} of the period)",
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
        low, high = gate.action_low, gate.action_high
        span = high - low
        if _all_at_bounds(new_action, low, high) and not _all_at_bounds(current_action, low, high):
            self._reject("saturated", f"version {version} puts every probe action at a bound")
            return None
        deviation = np.max(np.abs(new_action - current_action) / span, axis=0)  # per action dimension
        self.last_deviation = [round(float(value), 4) for value in deviation]
        over = np.flatnonzero(deviation > gate.max_policy_deviation)
        if over.size:
            dim = int(over[np.argmax(deviation[over] / gate.max_policy_deviation[over])])
            self._reject(
                "deviation",
                f"version {version} moves action {dim} by {deviation[dim]:.2f} of its range "
                f"(max_policy_deviation {gate.max_policy_deviation[dim]:g})",
            )
            return None
        return runner

    def _inference_seconds(self, runner: PolicyRunner, probe: np.ndarray) -> tuple[float, float]:
        """Medians of LATENCY_CALLS batch-1 inferences on probe observations, in one window: the candidate's, as
        `act` calls its graph, and the running policy's (a one-row `act_batch`: its batch-1 buffer is the control
        thread's), alternating so that both see the same load."""

        def pairs() -> list[tuple[float, float]]:
            explore, current = self.gate.explore, self.loop.runner
            return [
                (runner.inference_seconds(obs, explore), _timed(current.act_batch, obs[None])[0])
                for obs in probe[np.arange(self.LATENCY_CALLS) % len(probe)]
            ]

        candidate, reference = zip(*self._when_idle("latency", pairs))
        return float(np.median(candidate)), float(np.median(reference))

    def _probe_actions(self, runner: PolicyRunner, probe: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic actions (B, action_dim) of the candidate and of the running policy on the probe batch,
        `chunk` observations of both per idle window."""
        current = self.loop.runner

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
