"""The driver server: one process that owns a driver and serves it on the control channel (ROUTER).

One thread, one loop: receive a request (with a timeout), act on the driver, reply, then check the watchdog.
Requests and replies are the control messages of protocol.py. What the server adds to a bare driver:
- session: a Reset opens a session for the client that sent it (its connection), which alone may then Step, Reset,
  Render and Release. Another client's Reset, Step, Render or Release is refused (Error "session", one line saying
  that another session holds the driver) while the session is live, so no other local process can move the tick
  sequence or step the robot. The session ends with the client's Release (a clean stop), or when the client has sent
  nothing for longer than its lease: the watchdog timeout (it crashed or hung: the watchdog holds the robot, and the
  next client's Reset takes over), or the `pause_s` its Reset asked for. A Step with no session (e.g. after a driver
  restart) is refused with Error "session", which tells the controller to start again with a Reset.
- pauses: a Reset with `pause_s` > 0 (a gymnasium caller, drivers/remote_env.py) on a driver that can pause (a
  simulator) disarms the watchdog for the session: the sim's time stops while the client thinks, instead of being
  stepped with the safe action. A driver that cannot pause (a robot) refuses such a Reset (Error "pause").
- watchdog: once the session's client has started stepping an episode, if no Step *from that client* arrives
  within `watchdog_ms`, the server applies the driver's safe action, and keeps applying it every control period
  until a Step, Reset or Release arrives; the next StepReply says `watchdog_fired`. It is driven by time, checked
  after every request and on every receive timeout, so no other traffic (a flood of frames from another client
  included) can hold it off. The latency from the last command to the safe action is measured.
- e-stop latch: EStop (from any client) makes every Step apply the safe action instead (`estopped` and
  `safe_action_applied` in the reply) until a Clear;
- last-line checks on every action: wrong shape -> Error reply; non-finite -> safe action; outside bounds -> clipped;
- a stale Step (tick not after the session's last one) is refused: it is a late duplicate of a request that timed
  out;
- the driver's StepResult.info goes to the client in StepReply.info once protocol.check_info accepts it; a driver
  that reports anything else gets an Error "driver" reply naming the key (and a line on the driver's stderr);
- every bad frame is answered with an Error and counted; nothing a client sends can stop the loop.
SIGTERM/SIGINT: apply the safe action, close the driver, exit 0.
"""

from __future__ import annotations

import collections
import gc
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from acalign_robot import realtime
from acalign_robot.config import FieldError
from acalign_robot.drivers.base import Driver
from acalign_robot.drivers.plugins import FIELD_CONFIGURED, PYTHON, make_plugin_driver
from acalign_robot.realtime import RealtimeConfig
from acalign_robot.wire import protocol as p
from acalign_robot.wire.channels import ControlServer
from acalign_robot.wire.security import SecurityConfig, is_local_endpoint, secure_context
from acalign_robot.wire.transport import ZmqControlServer

__all__ = ["DriverConfig", "DriverServer", "make_driver", "serve"]

_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class DriverConfig:
    """One driver process. Saved form: the `driver:` section of a launch file, or a file for `acalign driver`."""

    # A built-in (mujoco, loopback, template, replay), `python` (with `target`) or an installed plugin's entry point
    # name: drivers/plugins.py. It is resolved when the driver is made, so that a launch file may name drivers that
    # only their own host has installed.
    kind: str = "mujoco"
    target: str | None = None  # kind python: the driver class, `package.module:Class`
    args: dict[str, Any] = field(default_factory=dict)  # a plugin's (and template's) settings: its Config's fields
    sim: str | None = None  # sim/ task YAML (kind mujoco)
    env_id: str | None = None  # kind mujoco without a sim file: the env with default realism (kind replay: below)
    log: str | None = None  # kind replay: the log directory to serve; env_id only if the log lacks spaces/period
    endpoint: str = "tcp://127.0.0.1:5555"
    watchdog_ms: float = 100.0
    seed: int = 0
    name: str = "driver"
    # Busy-poll for the next request instead of blocking: no wake-up on the control path, at the cost of a whole
    # core, always (for a core reserved to the driver; see docs/architecture.md, timing model).
    spin_wait: bool = False
    # CURVE for a non-loopback endpoint. A loopback or ipc:// control endpoint is served without it: the control link
    # then never leaves the robot's machine, which holds no secret key of the session's server (the learner's).
    security: SecurityConfig = field(default_factory=SecurityConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)  # SCHED_FIFO and cores (realtime.py)

    def validate(self) -> None:
        if (self.kind == PYTHON) != (self.target is not None):
            raise FieldError("target", "kind python needs `target: package.module:Class`; other kinds take none")
        if self.target is not None and not _TARGET.fullmatch(self.target):
            raise FieldError("target", f"expected package.module:Class, got {self.target!r}")
        if self.kind in FIELD_CONFIGURED and self.args:
            raise FieldError("args", f"a {self.kind} driver takes no args (it is set up by this config's own fields)")
        if self.kind == "mujoco" and (self.sim is None) == (self.env_id is None):
            raise FieldError("kind", "a mujoco driver needs exactly one of `sim` (a sim/ YAML file) or `env_id`")
        if (self.kind == "replay") != (self.log is not None):
            raise FieldError("log", "a replay driver needs `log` (a transition log directory); other kinds take none")
        if self.watchdog_ms <= 0:
            raise FieldError("watchdog_ms", f"must be positive, got {self.watchdog_ms}")


def make_driver(config: DriverConfig, source: str = "") -> Driver:
    """The driver `config` describes. A plugin that is not installed, or `args` its Config refuses, is a ConfigError
    (drivers/plugins.py) that names the field, after `source` (the config's file) if given."""
    if config.kind == "loopback":
        from acalign_robot.drivers.loopback import LoopbackDriver

        return LoopbackDriver(seed=config.seed)
    if config.kind == "replay":
        from acalign_robot.drivers.log_playback import ReplayDriver

        return ReplayDriver(config.log, env_id=config.env_id)
    if config.kind == "mujoco":
        from acalign_robot import config as config_io
        from acalign_robot.drivers.mujoco import MujocoDriver, SimConfig

        sim = config_io.load(SimConfig, config.sim) if config.sim else SimConfig(env_id=config.env_id, seed=config.seed)
        return MujocoDriver(sim)
    return make_plugin_driver(config.kind, config.target, config.args, source)


@dataclass
class DriverStats:
    steps: int = 0
    resets: int = 0
    watchdog_events: int = 0  # times the watchdog took over
    watchdog_safe_steps: int = 0  # safe actions applied by the watchdog
    last_watchdog_latency_s: float = 0.0  # last command -> safe action applied
    estops: int = 0
    clears: int = 0
    safe_action_steps: int = 0  # Steps answered with the safe action (e-stop, non-finite action)
    clipped_actions: int = 0
    stale_steps: int = 0
    sessions: int = 0  # sessions opened (by a Reset)
    releases: int = 0  # sessions closed by their client's Release
    session_refusals: int = 0  # Reset / Step / Release from a client that does not hold the session
    bad_requests: int = 0
    driver_errors: int = 0
    bad_infos: int = 0  # steps whose StepResult.info protocol.check_info refused (a driver bug)
    renders: int = 0
    step_time_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10_000))
    # A Step from its arrival (decoded) to its reply queued (encoded): the env step plus the server's own work. The
    # controller's round trip minus this is the link's share (sockets, wake-ups, the controller's codec).
    service_time_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10_000))


class DriverServer:
    """Serves `driver` on `server`; `run()` loops until `stop()` (or a signal, when installed by `serve`)."""

    def __init__(self, driver: Driver, server: ControlServer, watchdog_s: float, name: str = "driver"):
        self.driver = driver
        self.server = server
        self.watchdog_s = watchdog_s
        self.name = name
        self.stats = DriverStats()
        self.estopped = False
        self._running = True
        self._session: bytes | None = None  # the connection that holds the session (its routing identity)
        self._session_seen_s = 0.0  # the session client's last Step / Reset: how long it has been silent
        self._pause_s = (
            0.0  # the session's Reset.pause_s: > 0, its silences pause the sim instead of arming the watchdog
        )
        self._armed = False  # the session's client is stepping an episode: the watchdog may fire
        self._last_command_s = time.monotonic()
        self._watchdog_active = False
        self._next_safe_step_s = 0.0  # while the watchdog holds the robot: when it applies the safe action again
        self._watchdog_fired_since_reply = False
        self._last_tick: int | None = None
        space = driver.spec.action
        self._low = np.asarray(space.low, dtype=np.float32)
        self._high = np.asarray(space.high, dtype=np.float32)

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        try:
            while self._running:
                item = self.server.recv(self._recv_timeout())
                if item is not None:
                    arrived = time.perf_counter()
                    peer, request = item
                    self.server.send(peer, self._handle(peer.identity, request))
                    if isinstance(request, p.Step):
                        self.stats.service_time_s.append(time.perf_counter() - arrived)
                self._watchdog()  # after every request too: traffic cannot hold it off
        finally:
            self._apply_safe_action()
            self.driver.close()

    def _recv_timeout(self) -> float:
        if not self._armed:
            return 0.1
        due = self._next_safe_step_s if self._watchdog_active else self._last_command_s + self.watchdog_s
        return max(0.0, due - time.monotonic())

    def _watchdog(self) -> None:
        if not self._armed:
            return
        now = time.monotonic()
        if not self._watchdog_active:
            if now - self._last_command_s < self.watchdog_s:
                return
            self._watchdog_active = True
            self._next_safe_step_s = now
            self.stats.watchdog_events += 1
        if now < self._next_safe_step_s:
            return
        self._next_safe_step_s = max(self._next_safe_step_s + self.driver.spec.control_period_s, now)
        result = self._apply_safe_action()
        if not self._watchdog_fired_since_reply:
            self.stats.last_watchdog_latency_s = time.monotonic() - self._last_command_s
        self._watchdog_fired_since_reply = True
        self.stats.watchdog_safe_steps += 1
        if result is not None and (result.terminated or result.truncated):
            self._armed = False  # the episode is over: nothing to hold until the next Reset

    def _apply_safe_action(self):
        try:
            return self.driver.step(self.driver.safe_action())
        except Exception:  # the watchdog must never take the server down; the next request reports the fault
            self.stats.driver_errors += 1
            return None

    def _handle(self, client: bytes, request: p.Message | p.ProtocolError) -> p.Message:
        if isinstance(request, p.ProtocolError):
            self.stats.bad_requests += 1
            return p.error_message(request)
        try:
            if isinstance(request, (p.Step, p.Reset, p.Release, p.Render)):
                refusal = self._check_session(client, request)
                if refusal is not None:
                    return refusal
            if isinstance(request, p.Step):
                return self._step(request)
            if isinstance(request, p.Render):
                return self._render()
            if isinstance(request, p.Reset):
                return self._reset(client, request)
            if isinstance(request, p.Release):
                return self._release()
            if isinstance(request, p.Hello):
                return self._hello()
            if isinstance(request, p.EStop):
                self.estopped = True
                self.stats.estops += 1
                self._apply_safe_action()
                return self._heartbeat()
            if isinstance(request, p.Clear):
                self.estopped = False
                self.stats.clears += 1
                return self._heartbeat()
            if isinstance(request, p.Stats):
                return p.Stats(source=self.name, values=self._stats_values())
            return self._heartbeat()
        except Exception as exc:  # a driver fault is reported to the client, never fatal to the server
            self.stats.driver_errors += 1
            return p.Error(code="driver", message=f"{type(exc).__name__}: {exc}"[:500])

    def _check_session(self, client: bytes, request: p.Step | p.Reset | p.Release | p.Render) -> p.Error | None:
        """None if `client` may send `request` now; otherwise the refusal (counted)."""
        if self._session == client:
            return None
        lease_s = self._pause_s or self.watchdog_s
        live = self._session is not None and time.monotonic() - self._session_seen_s < lease_s
        if isinstance(request, p.Reset) and not live:
            return None  # no session, or its client fell silent: this Reset takes over
        self.stats.session_refusals += 1
        if live:
            detail = (
                f"another session holds driver {self.driver.spec.name!r} (its client was active within the last "
                f"{lease_s:g} s); one client drives a driver at a time"
            )
        else:
            detail = "no session on this connection: send Reset to start one"
        return p.Error(code="session", message=f"{type(request).__name__} refused: {detail}")

    def _release(self) -> p.Heartbeat:
        """End the session: the client has stopped cleanly, so the watchdog must not take over after it."""
        self._session = None
        self._pause_s = 0.0
        self._armed = False
        self._watchdog_active = False
        self.stats.releases += 1
        return self._heartbeat()

    def _hello(self) -> p.HelloReply:
        spec = self.driver.spec
        return p.HelloReply(
            driver_name=spec.name,
            observation_space=spec.observation,
            action_space=spec.action,
            control_period_s=spec.control_period_s,
            watchdog_timeout_s=self.watchdog_s,
            safe_action=np.asarray(self.driver.safe_action(), dtype=np.float64),
            can_render=spec.can_render,
            can_pause=spec.can_pause,
            limits=spec.limits,
        )

    def _heartbeat(self) -> p.Heartbeat:
        return p.Heartbeat(sender=self.name, time_s=time.monotonic(), state="estopped" if self.estopped else "running")

    def _reset(self, client: bytes, request: p.Reset) -> p.ResetReply | p.Error:
        if request.pause_s > 0 and not self.driver.spec.can_pause:
            self.stats.bad_requests += 1
            return p.Error(
                code="pause",
                message=f"Reset refused: driver {self.driver.spec.name!r} cannot pause (a robot's time goes on); reset "
                "with pause_s=0: its watchdog applies the safe action whenever steps stop",
            )
        obs = self.driver.reset(request.seed)
        self._pause_s = request.pause_s
        self.stats.resets += 1
        if self._session != client:
            self._session = client
            self.stats.sessions += 1
        self._session_seen_s = time.monotonic()
        self._armed = False
        self._watchdog_active = False
        self._watchdog_fired_since_reply = False  # a new episode: what happened before it is reported in stats
        self._last_tick = None
        return p.ResetReply(obs=np.asarray(obs, dtype=np.float32), driver_time_s=time.monotonic())

    def _step(self, request: p.Step) -> p.Message:
        action = request.action
        if action.shape != self._low.shape:
            self.stats.bad_requests += 1
            return p.Error(code="field", message=f"step.action: shape {action.shape}, driver expects {self._low.shape}")
        if self._last_tick is not None and request.tick <= self._last_tick:
            self.stats.stale_steps += 1
            return p.Error(code="stale", message=f"step tick {request.tick} is not after {self._last_tick}")
        self._last_tick = request.tick
        self._session_seen_s = time.monotonic()
        # Plain ufuncs, as in the controller's filter: np.clip, np.all and np.array_equal dispatch through Python and
        # cost ~20 us more per step with the caches cold from waiting for the request.
        safe = self.estopped or not np.isfinite(action).all()
        if safe:
            action = self.driver.safe_action()
            self.stats.safe_action_steps += 1
        else:
            clipped = np.minimum(np.maximum(action, self._low), self._high).astype(np.float32, copy=False)
            if (clipped != action).any():
                self.stats.clipped_actions += 1
            action = clipped
        started = time.perf_counter()
        result = self.driver.step(action)
        self.stats.step_time_s.append(time.perf_counter() - started)
        self.stats.steps += 1
        self._last_command_s = time.monotonic()
        # A paused session's silences stop the sim's time: nothing for the watchdog to hold.
        self._armed = not (result.terminated or result.truncated or self._pause_s)
        self._watchdog_active = False
        fired, self._watchdog_fired_since_reply = self._watchdog_fired_since_reply, False
        try:
            info = p.check_info(result.info, f"driver {self.driver.spec.name!r}: StepResult.info")
        except p.ProtocolError as exc:
            self.stats.bad_infos += 1
            if self.stats.bad_infos == 1:  # a driver bug: said once where its author looks, counted after that
                print(f"{self.name}: {exc.detail}", file=sys.stderr, flush=True)
            return p.Error(code="driver", message=exc.detail[:500])
        return p.StepReply(
            tick=request.tick,
            obs=np.asarray(result.obs, dtype=np.float32),
            reward=float(result.reward),
            terminated=bool(result.terminated),
            truncated=bool(result.truncated),
            driver_time_s=time.monotonic(),
            watchdog_fired=fired,
            safe_action_applied=safe,
            estopped=self.estopped,
            clears=self.stats.clears,
            info=info,
        )

    def _render(self) -> p.RenderReply | p.Error:
        if not self.driver.spec.can_render:
            self.stats.bad_requests += 1
            return p.Error(code="render", message=f"driver {self.driver.spec.name!r} cannot render")
        rgb = self.driver.render()
        shape, dtype = getattr(rgb, "shape", ()), getattr(rgb, "dtype", type(rgb).__name__)
        # Checked here, not left to the encoder: a frame the transport refused to send would take the loop down.
        if dtype != np.uint8 or len(shape) != 3 or shape[2] != 3 or not 0 < shape[0] * shape[1] <= p.MAX_RENDER_PIXELS:
            raise ValueError(f"render() gave {shape} {dtype}, not (h, w, 3) uint8 of <= {p.MAX_RENDER_PIXELS} pixels")
        self.stats.renders += 1
        return p.RenderReply(rgb=np.ascontiguousarray(rgb))

    def _stats_values(self) -> dict[str, p.Scalar]:
        values = {k: v for k, v in vars(self.stats).items() if not isinstance(v, collections.deque)}
        for name, times in (("step_time", self.stats.step_time_s), ("service_time", self.stats.service_time_s)):
            if times:
                p50, p99 = np.percentile(times, (50, 99))
                values[f"{name}_p50_s"], values[f"{name}_p99_s"] = float(p50), float(p99)
        values["estopped"] = self.estopped
        return values | {f"transport_{k}": v for k, v in self.server.counters.as_dict().items()}


def serve(config: DriverConfig, ready_file: str | None = None, source: str = "") -> DriverServer:
    """Run a driver server until SIGTERM/SIGINT; `ready_file` is written once the socket is bound. `source` names
    the config in error messages (make_driver)."""
    realtime.apply(config.realtime, "driver.realtime")  # first: ZeroMQ's I/O thread inherits it
    driver = make_driver(config, source)  # before the bind: a config it refuses is named whatever the port's state
    try:
        # Refuses a non-loopback bind without CURVE; a local endpoint needs no keys (DriverConfig.security).
        secure = secure_context(SecurityConfig() if is_local_endpoint(config.endpoint) else config.security)
    except BaseException:
        driver.close()
        raise
    try:
        server = ZmqControlServer(
            config.endpoint,
            context=secure.context,
            curve=secure.server_keys(config.endpoint),
            spin=config.spin_wait,
        )
    except BaseException:
        driver.close()
        secure.close()
        raise
    instance = DriverServer(driver, server, config.watchdog_ms / 1000.0, config.name)

    def request_stop(signum, frame):
        instance.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if ready_file:
        with open(ready_file, "w") as handle:
            handle.write(config.endpoint)
    print(f"driver {driver.spec.name} serving on {config.endpoint} (watchdog {config.watchdog_ms} ms)", flush=True)
    # Everything loaded so far (the simulator, numpy, zmq) moves to a permanent generation, as in the controller. A
    # full collection walked it in 50-63 ms in the Panda driver process (57k objects): longer than the controller's
    # 40 ms driver timeout, enough to latch SAFE (the likely cause of a latch in a 10-minute twin session run under
    # SCHED_FIFO, with a driver watchdog event at the same tick).
    gc.freeze()
    try:
        instance.run()
    finally:
        server.close()
        secure.close()
    return instance
