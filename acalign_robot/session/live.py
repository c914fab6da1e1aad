"""A session's live state, rebuilt once a second from what the supervisor reads anyway, for the operator page and
the opt-in sinks (TensorBoard, rerun: session/sinks.py).

Sources, none of them polled harder than the status line polls them: each controller's and the learner's
`status.json` (written every second by the process itself), the last record of the learner's `metrics.jsonl`
(written every `metrics_every_s`) and each local driver's Stats (one small request a second on the control channel,
which every process may send: the live feed's thread asks it).

A controller's status carries its most recent episodes (tick, seconds, return, policy version); the view keeps the
episodes it has not seen yet, so the returns plot loses no episode that ends between two reads. A restarted
controller counts ticks from zero again: a status whose tick count went down starts the robot's tick mark over.
Everything kept is bounded: MAX_EPISODES episodes per robot, MAX_LOSSES learner records, MAX_EVENTS events.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MAX_EPISODES", "DriverStatsPoller", "LiveFeed", "ProcessState", "SessionView", "read_last_record"]

MAX_EPISODES = 500  # per robot, newest kept: what the returns plot shows
MAX_LOSSES = 300  # learner metrics records kept for its curve (10 minutes at the default 2 s)
MAX_EVENTS = 30  # supervisor events shown, newest last
MAX_RECORD_BYTES = 1 << 20  # the tail of metrics.jsonl read for its last record: a record is ~10-100 kB


@dataclass(frozen=True)
class ProcessState:
    """One supervised process as the page shows it."""

    name: str
    role: str  # driver | controller | learner
    state: str  # running | finished | exited | not started


def read_last_record(path: Path) -> dict | None:
    """The last complete JSON line of a file another process appends to (None when there is none yet)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - MAX_RECORD_BYTES))
            tail = handle.read(MAX_RECORD_BYTES)
    except OSError:
        return None
    for line in reversed(tail.split(b"\n")[:-1]):  # the part after the last newline may be a line still written
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by the tail window
        return record if isinstance(record, dict) else None
    return None


def _number(value: Any) -> float | None:
    """A finite number for the page (JSON has no NaN), None otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class SessionView:
    """Accumulates episodes and learner records across reads; `snapshot()` is the page's JSON."""

    def __init__(self, session: str, robots: list[str], heartbeat_timeout_s: float):
        self.session = session
        self.robots = list(robots)
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._episodes = {robot: deque(maxlen=MAX_EPISODES) for robot in robots}  # [number, return, version]
        self._episode_count = dict.fromkeys(robots, 0)
        self._tick_mark = dict.fromkeys(robots, 0)  # the tick of the newest episode taken
        self._losses: deque = deque(maxlen=MAX_LOSSES)  # [elapsed s, critic loss]
        self._last_metrics_elapsed: float | None = None

    def _take_episodes(self, robot: str, status: dict) -> None:
        if status.get("ticks", 0) < self._tick_mark[robot]:
            self._tick_mark[robot] = 0  # a restarted controller: its ticks (and episode ticks) count from zero
        # A running controller's status has its most recent episodes; its final one (it stopped) the whole log.
        for entry in status.get("recent_episodes", status.get("episode_log")) or ():
            if not isinstance(entry, list) or len(entry) != 4:
                continue
            tick, _seconds, episode_return, version = entry
            if not isinstance(tick, int) or tick <= self._tick_mark[robot]:
                continue
            self._tick_mark[robot] = tick
            self._episode_count[robot] += 1
            episode_return = _number(episode_return)
            rounded = None if episode_return is None else round(episode_return, 3)  # a plot needs no more digits
            self._episodes[robot].append([self._episode_count[robot], rounded, version])

    def _take_metrics(self, record: dict | None) -> None:
        if record is None or record.get("elapsed_s") == self._last_metrics_elapsed:
            return
        self._last_metrics_elapsed = record.get("elapsed_s")
        loss = _number(record.get("loss/critic"))
        elapsed = _number(record.get("elapsed_s"))
        if loss is not None and elapsed is not None:
            self._losses.append([round(elapsed, 1), loss])

    def snapshot(
        self,
        *,
        elapsed_s: float,
        processes: list[ProcessState],
        statuses: dict[str, dict],
        driver_stats: dict[str, dict | None],
        learner_metrics: dict | None,
        events: list[dict],
    ) -> dict:
        """The page's state. `statuses` by process name (with the supervisor's `_age_s`); `driver_stats` by robot
        (None: the driver did not answer this time)."""
        states = {process.name: process.state for process in processes}
        robots = []
        for robot in self.robots:
            status = statuses.get(robot) or {}
            self._take_episodes(robot, status)
            robots.append(self._robot(robot, status, states, driver_stats.get(robot)))
        self._take_metrics(learner_metrics)
        learner = None
        if "learner" in states:
            learner = self._learner(statuses.get("learner") or {}, states["learner"], learner_metrics or {})
        return {
            "session": self.session,
            "elapsed_s": round(elapsed_s, 1),
            "robots": robots,
            "learner": learner,
            "events": events[-MAX_EVENTS:],
        }

    def _stale(self, status: dict, state: str) -> bool:
        return state == "running" and status.get("_age_s", 0.0) > self.heartbeat_timeout_s

    def _robot(self, robot: str, status: dict, states: dict[str, str], driver: dict | None) -> dict:
        state = states.get(robot, "not started")
        tick_p50, tick_p99 = _number(status.get("tick_p50_s")), _number(status.get("tick_p99_s"))
        rollbacks = status.get("rollbacks") or []
        return {
            "name": robot,
            "state": state,
            "driver_state": states.get(f"{robot}-driver", "not started"),
            "stale": self._stale(status, state),
            "episodes": list(self._episodes[robot]),
            "episode_count": self._episode_count[robot],
            "last_return": _number(status.get("last_episode_return")),
            "policy_version": status.get("policy_version"),
            "swaps": status.get("swaps", 0),
            "rollbacks": len(rollbacks),
            "last_rollback": rollbacks[-1] if rollbacks else None,
            "ticks": status.get("ticks", 0),
            "rate_hz": _number(status.get("achieved_rate_hz", status.get("target_rate_hz"))),
            "tick_p50_ms": None if tick_p50 is None else 1000 * tick_p50,
            "tick_p99_ms": None if tick_p99 is None else 1000 * tick_p99,
            "deadline_misses": status.get("deadline_misses", 0),
            "safe": bool(status.get("safe", False)),
            "safe_reason": status.get("safe_reason") or "",
            "driver": None if driver is None else self._driver(driver),
        }

    @staticmethod
    def _driver(stats: dict) -> dict:
        latency = _number(stats.get("last_watchdog_latency_s"))
        return {
            "estopped": bool(stats.get("estopped", False)),
            "estops": stats.get("estops", 0),
            "clears": stats.get("clears", 0),
            "watchdog_events": stats.get("watchdog_events", 0),
            "last_watchdog_latency_ms": None if not latency else 1000 * latency,
            "safe_action_steps": stats.get("safe_action_steps", 0),
            "steps": stats.get("steps", 0),
        }

    def _learner(self, status: dict, state: str, metrics: dict) -> dict:
        return {
            "state": state,
            "stale": self._stale(status, state),
            "learner_state": status.get("state", ""),
            "updates": status.get("updates", 0),
            "updates_per_s": _number(status.get("updates_per_s")),
            "owed_updates": status.get("owed_updates", 0),
            "buffer_size": status.get("buffer_size", 0),
            "published_version": status.get("published_version"),
            "alpha": _number(status.get("alpha")),
            "w": _number(status.get("w")),
            "critic_loss": _number(metrics.get("loss/critic")),
            "critic_losses": list(self._losses),
        }


class DriverStatsPoller:
    """Each local driver's Stats, one request per driver per call, on one connection per driver kept open.

    Used from one thread only (the live feed's). A driver that does not answer within `timeout_s` reads as None;
    its client keeps that request in flight (wire/transport.py) and answers None at once until the late reply or a
    reconnect, so a frozen driver costs the feed one timeout, not one per second.
    """

    def __init__(self, robots: list[tuple[str, str]], timeout_s: float = 0.25):
        self.robots = robots
        self.timeout_s = timeout_s
        self._clients: dict = {}

    def poll(self) -> dict[str, dict | None]:
        from acalign_robot.wire import protocol as p
        from acalign_robot.wire.channels import TransportTimeout
        from acalign_robot.wire.transport import ZmqControlClient

        stats: dict[str, dict | None] = {}
        for name, endpoint in self.robots:
            stats[name] = None
            try:
                client = self._clients.get(name) or self._clients.setdefault(name, ZmqControlClient(endpoint))
                reply = client.request(p.Stats(source="operator-page", values={}), self.timeout_s)
            except (TransportTimeout, OSError):
                continue
            if isinstance(reply, p.Stats):
                stats[name] = dict(reply.values)
        return stats

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


class LiveFeed:
    """Builds the session's live state once a second on its own thread and hands it to each consumer (the page,
    the opt-in sinks). A fault in building or consuming a state is printed once per distinct fault and the feed goes
    on: neither the page nor a sink may end a session."""

    def __init__(self, collect: Callable[[], dict], consumers: list[Callable[[dict], None]], period_s: float = 1.0):
        self.collect = collect
        self.consumers = consumers
        self.period_s = period_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session-live-feed", daemon=True)
        self._reported: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop after the state being built (its driver requests end within their timeout), then build and hand
        out one last state: the processes have stopped by now, and their final status holds every episode."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._guarded("the last live state could not be built", self._step)

    def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            self._guarded("the live state could not be built", self._step)
            self._stopping.wait(max(0.0, self.period_s - (time.monotonic() - started)))

    def _step(self) -> None:
        state = self.collect()
        for consume in self.consumers:
            self._guarded(f"{getattr(consume, '__qualname__', consume)} failed", lambda c=consume: c(state))

    def _guarded(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:
            problem = f"{what}: {type(exc).__name__}: {exc}"
            if problem not in self._reported and len(self._reported) < 100:  # once each, and bounded
                self._reported.add(problem)
                print(f"\nlive feed: {problem}", file=sys.stderr, flush=True)
