"""The session supervisor behind `acalign launch`: start, watch and stop the processes of a launch file.

Start order: learner (it binds the transitions and policy endpoints), drivers (they bind the control endpoints),
controllers. Each process runs `acalign <role> --config <resolved yaml> --ready-file <file>` in its own process
group, with its output in `<session dir>/<name>.log`; the supervisor waits for its ready file (the readiness
handshake: sockets bound, for a controller the driver's handshake done) and on a timeout or an early exit prints the
process's last log lines and stops the session.

The operator page (session/page.py, on unless `operator_page: {enabled: false}`) is served from before the first
process starts until every process has stopped: a live view of the session and its e-stop and clear buttons. The
same live state goes to the opt-in sinks (`sinks:`, session/sinks.py: TensorBoard, rerun).

While running: exits are handled by each role's restart policy (never / on-failure with at most N restarts in a
window; a restarted learner resumes from its checkpoint); status files (`status.json`, written every second by
controllers and the learner) feed a live status line, and a status file older than `heartbeat_timeout_s` is
reported stale. The session ends at `duration_s`, when every controller has finished its budget, on Ctrl-C/SIGTERM,
or when a process fails beyond its restart policy.

Stop order (the safe order): controllers first (each sends the safe action and exits), then the drivers (they apply
their safe action and close), then the learner (it writes its checkpoint). Anything still alive after its grace
period is killed with its whole process group. If the supervisor itself is killed (even with SIGKILL), each child
notices that its parent is gone (session/lifeline.py) and stops itself the same safe way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from acalign_robot import config as config_io
from acalign_robot.session.lifeline import SUPERVISOR_ENV
from acalign_robot.session.schema import AUTO, LaunchConfig, RestartPolicy
from acalign_robot.session.wiring import Wiring, fill_owned_fields

__all__ = ["ManagedProcess", "SessionFailed", "Supervisor"]

GRACE_S = {"controller": 5.0, "driver": 5.0, "learner": 60.0}


class SessionFailed(RuntimeError):
    """A process could not start, or failed beyond its restart policy."""


@dataclass
class ManagedProcess:
    name: str
    role: str  # driver | controller | learner
    config_path: Path
    directory: Path
    restart: RestartPolicy
    extra_args: tuple[str, ...] = ()
    popen: subprocess.Popen | None = None
    restarts: deque = field(default_factory=deque)  # monotonic times of recent restarts
    finished: bool = False  # exited 0 on its own (a controller that completed its budget)

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def ready_path(self) -> Path:
        return self.directory / f"{self.name}.ready"

    def start(self, resume: bool = False) -> None:
        self.ready_path.unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "acalign_robot.cli",
            self.role,
            "--config",
            str(self.config_path),
            "--ready-file",
            str(self.ready_path),
            *self.extra_args,
            *(["--resume"] if resume else []),
        ]
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "a") as log:
            self.popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM the process group, wait up to grace_s, then SIGKILL it. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._signal(signal.SIGKILL)  # any grandchild left in the group
        return self.popen.returncode

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
            os.killpg(self.popen.pid, signum)


class Supervisor:
    def __init__(self, config: LaunchConfig, session_dir: Path, host: str | None = None, live: bool | None = None):
        self.config = config
        self.session_dir = session_dir
        self.host = host
        self.live = sys.stdout.isatty() if live is None else live
        self.processes: list[ManagedProcess] = []
        self.events: list[dict] = []
        self._stop_requested = False
        self._started = time.monotonic()
        self.driver_stats: dict[str, dict] = {}
        self.page_url: str | None = None

    def request_stop(self, *_args) -> None:
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        """Whether Ctrl-C, SIGTERM or a caller asked the session to stop before its end."""
        return self._stop_requested

    def _event(self, kind: str, process: str, detail: str = "") -> None:
        self.events.append(
            {"t_s": round(time.monotonic() - self._started, 3), "event": kind, "process": process, "detail": detail}
        )

    def prepare(self) -> None:
        """Resolve endpoints, fill in the fields each process's config leaves to the supervisor (session/wiring.py),
        check each config and write it into the session directory."""
        from acalign_robot.wire.channels import free_tcp_endpoint

        cfg = self.config
        self.session_dir.mkdir(parents=True, exist_ok=True)
        bind_host = cfg.endpoints.bind_host

        def resolve(endpoint: str) -> str:
            return free_tcp_endpoint(bind_host) if endpoint == AUTO else endpoint

        transitions = policy = None
        if cfg.learner is not None:
            transitions, policy = resolve(cfg.endpoints.transitions), resolve(cfg.endpoints.policy)
        session = Wiring(self.session_dir, cfg.security, transitions, policy)
        robots = []
        for robot in cfg.robots:
            wiring = dataclasses.replace(session, robot=robot.name, control_endpoint=resolve(robot.control_endpoint))
            robots.append(
                dataclasses.replace(
                    robot,
                    control_endpoint=wiring.control_endpoint,
                    driver=fill_owned_fields(robot.driver, "driver", wiring),
                    controller=fill_owned_fields(robot.controller, "controller", wiring),
                )
            )
        learner = None if cfg.learner is None else fill_owned_fields(cfg.learner, "learner", session)
        self.resolved = dataclasses.replace(cfg, robots=tuple(robots), learner=learner)
        # A host's part of a multi-host session records only the robots that run here: `acalign estop` reads this file,
        # and another host's loopback control endpoint would name a port of this machine.
        robots_here = tuple(robot for robot in self.resolved.robots if self._runs_here(robot.host))
        config_io.save(dataclasses.replace(self.resolved, robots=robots_here), self.session_dir / "session.yaml")
        if self.resolved.learner is not None and self._runs_here(cfg.learner_host):
            self._add("learner", "learner", self.resolved.learner, cfg.restart.learner)
        for robot in robots:
            if self._runs_here(robot.host):
                self._add(f"{robot.name}-driver", "driver", robot.driver, cfg.restart.driver)
        for robot in robots:
            if self._runs_here(robot.host):
                self._add(robot.name, "controller", robot.controller, cfg.restart.controller)

    def _runs_here(self, host: str) -> bool:
        return self.host is None or host == self.host

    def _add(self, name: str, role: str, process_config, restart: RestartPolicy) -> None:
        path = self.session_dir / f"{name}.yaml"
        config_io.validate(process_config, f"the config for {path}")  # as the process will when it loads the file
        config_io.save(process_config, path)
        self.processes.append(ManagedProcess(name, role, path, self.session_dir, restart))

    def _start_and_wait(self, process: ManagedProcess, resume: bool = False) -> None:
        process.start(resume)
        self._event("start", process.name, "resume" if resume else "")
        deadline = time.monotonic() + self.config.ready_timeout_s
        while not process.ready_path.exists():
            if not process.alive():
                raise SessionFailed(
                    f"{process.name} exited with code {process.popen.returncode} before it was "
                    f"ready; last log lines:\n{process.tail()}"
                )
            if time.monotonic() > deadline or self._stop_requested:
                raise SessionFailed(
                    f"{process.name} was not ready within {self.config.ready_timeout_s} s; last log "
                    f"lines:\n{process.tail()}"
                )
            time.sleep(0.05)
        self._event("ready", process.name)

    def run(self) -> dict:
        """Start everything, watch until the session ends, stop in the safe order; returns the report."""
        from acalign_robot.session.report import write_report

        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        self.prepare()
        closing = self._start_live_view()
        failure = None
        try:
            for process in self.processes:
                self._start_and_wait(process)
            print(
                f"session {self.config.session}: {len(self.processes)} processes running, logs in {self.session_dir}",
                flush=True,
            )
            self._watch()
        except SessionFailed as exc:
            failure = str(exc)
            self._event("failure", "supervisor", failure.splitlines()[0])
        finally:
            self._shutdown()
            for close in closing:
                close()
        report = write_report(self, failure)
        if failure:
            raise SessionFailed(failure)
        return report

    def _local_robots(self) -> list[tuple[str, str]]:
        """(name, control endpoint) of the robots that run on this host: what `acalign estop` reads in session.yaml."""
        return [(robot.name, robot.control_endpoint) for robot in self.resolved.robots if self._runs_here(robot.host)]

    def _start_live_view(self) -> list:
        """The operator page and the opt-in sinks, fed once a second by one live feed (session/live.py); the page's
        address is printed and written to `page.url` in the session directory. Returns what closes them, in order."""
        from acalign_robot.session.live import DriverStatsPoller, LiveFeed, ProcessState, SessionView, read_last_record

        page_config, sinks = self.config.operator_page, self.config.sinks
        if not page_config.enabled and not sinks.tensorboard and sinks.rerun == "off":
            return []
        robots = self._local_robots()
        view = SessionView(self.config.session, [name for name, _ in robots], self.config.heartbeat_timeout_s)
        poller = DriverStatsPoller(robots)
        metrics_path = self.session_dir / "learner" / "metrics.jsonl"

        def state(process: ManagedProcess) -> str:
            if process.finished:
                return "finished"
            if process.popen is None:
                return "not started"
            return "running" if process.alive() else "exited"

        def collect() -> dict:  # on the live feed's thread, once a second
            return view.snapshot(
                elapsed_s=time.monotonic() - self._started,
                processes=[ProcessState(p.name, p.role, state(p)) for p in list(self.processes)],
                statuses=self.status(),
                driver_stats=poller.poll(),
                learner_metrics=read_last_record(metrics_path),
                events=list(self.events),
            )

        consumers, closing = [], [poller.close]  # closed in reverse: the feed first, its driver clients last
        try:
            if sinks.tensorboard:
                from acalign_robot.session.sinks import TensorBoardSink

                tensorboard = TensorBoardSink(self.session_dir / "tensorboard")
                consumers.append(tensorboard.write)
                closing.append(tensorboard.close)
            if sinks.rerun != "off":
                from acalign_robot.session.sinks import RerunSink

                log_dirs = {name: self.session_dir / name / "log" for name, _ in robots}
                save_to = self.session_dir / "session.rrd" if sinks.rerun == "save" else None
                rerun = RerunSink(self.config.session, log_dirs, save_to=save_to, connect_url=sinks.rerun_url)
                consumers.append(rerun.write)
                closing.append(rerun.close)
            if page_config.enabled:
                page = self._start_page(robots)
                consumers.append(page.publish)
                closing.append(page.close)
        except BaseException:  # a page or sink that cannot start (a taken port): close what did, then report it
            for close in reversed(closing):
                close()
            raise
        feed = LiveFeed(collect, consumers)
        feed.start()
        closing.append(feed.close)
        return closing[::-1]

    def _start_page(self, robots: list[tuple[str, str]]):
        from acalign_robot.session.page import OperatorPageServer

        def record(action: str, robot: str | None, answers: list) -> None:
            detail = "; ".join(
                f"{a.robot} {'acknowledged' if a.acknowledged else 'NOT acknowledged'} in {1000 * a.elapsed_s:.1f} ms"
                for a in answers
            )
            self._event(action, "operator-page", f"{robot or 'every robot'}: {detail}")

        page = OperatorPageServer(self.config.operator_page, robots, self.resolved.security, record)
        self.page_url = page.start()
        (self.session_dir / "page.url").write_text(self.page_url + "\n")
        note = " (add ?token=<your token_file's contents>)" if page.token_required else ""
        print(f"operator page: {self.page_url}{note}", flush=True)
        return page

    def _watch(self) -> None:
        last_line = 0.0
        while not self._stop_requested:
            if self.config.duration_s is not None and time.monotonic() - self._started >= self.config.duration_s:
                self._event("stop", "supervisor", "duration reached")
                return
            for process in self.processes:
                if process.finished or process.alive():
                    continue
                code = process.popen.returncode
                if code == 0 and process.role in ("controller", "learner"):  # a budget reached, not a failure
                    process.finished = True
                    self._event("finished", process.name)
                    continue
                self._event("exit", process.name, f"code {code}")
                self._restart_or_fail(process, code)
            controllers = [p for p in self.processes if p.role == "controller"]
            if controllers and all(p.finished for p in controllers):
                self._event("stop", "supervisor", "every controller finished")
                return
            if time.monotonic() - last_line >= (1.0 if self.live else 10.0):
                last_line = time.monotonic()
                self._print_status()
            time.sleep(0.2)
        self._event("stop", "supervisor", "stop requested (signal)")

    def _restart_or_fail(self, process: ManagedProcess, code: int) -> None:
        policy = process.restart
        now = time.monotonic()
        while process.restarts and now - process.restarts[0] > policy.window_s:
            process.restarts.popleft()
        if policy.mode == "on-failure" and len(process.restarts) < policy.max_restarts:
            process.restarts.append(now)
            print(
                f"\n{process.name} exited with code {code}; restarting "
                f"({len(process.restarts)}/{policy.max_restarts} in {policy.window_s:g} s)",
                flush=True,
            )
            self._start_and_wait(process, resume=process.role == "learner")
            self._event("restart", process.name, f"after code {code}")
            return
        raise SessionFailed(
            f"{process.name} exited with code {code} (restart policy: {policy.mode}); last log lines:\n{process.tail()}"
        )

    def status(self) -> dict[str, dict]:
        statuses = {}
        for process in self.processes:
            path = self.session_dir / (process.name if process.role != "learner" else "learner") / "status.json"
            try:
                statuses[process.name] = json.loads(path.read_text())
                statuses[process.name]["_age_s"] = time.time() - path.stat().st_mtime
            except (OSError, ValueError):
                continue
        return statuses

    def _print_status(self) -> None:
        statuses = self.status()
        parts = [f"{time.monotonic() - self._started:6.1f}s"]
        for process in self.processes:
            status = statuses.get(process.name)
            if process.role == "controller" and status:
                stale = " STALE" if status["_age_s"] > self.config.heartbeat_timeout_s and not process.finished else ""
                last = status.get("last_episode_return")
                parts.append(
                    f"{process.name}: {status.get('achieved_rate_hz', status.get('target_rate_hz', 0)):.0f} Hz "
                    f"p99 {1000 * status.get('tick_p99_s', 0):.2f} ms ep {status.get('episodes', 0)} "
                    f"last {'-' if last is None else f'{last:.0f}'} v{status.get('policy_version')}"
                    f"{' SAFE' if status.get('safe') else ''}{stale}"
                )
            elif process.role == "learner" and status:
                parts.append(
                    f"learner: {status.get('updates_per_s', 0):.0f} upd/s v{status.get('published_version')} "
                    f"buffer {status.get('buffer_size', 0)}"
                )
        line = " | ".join(parts)
        print(("\r" + line[:200].ljust(200)) if self.live else line, end="" if self.live else "\n", flush=True)

    def _query_driver_stats(self) -> None:
        from acalign_robot.wire import protocol as p
        from acalign_robot.wire.channels import TransportTimeout
        from acalign_robot.wire.transport import ZmqControlClient

        for robot in self.resolved.robots:
            if not self._runs_here(robot.host):
                continue
            try:
                with ZmqControlClient(robot.control_endpoint) as client:
                    reply = client.request(p.Stats(source="supervisor", values={}), 1.0)
                if isinstance(reply, p.Stats):
                    self.driver_stats[robot.name] = dict(reply.values)
            except (TransportTimeout, OSError):
                continue

    def _shutdown(self) -> None:
        if self.live:
            print(flush=True)
        for role in ("controller", "driver", "learner"):
            if role == "driver":
                self._query_driver_stats()  # before the drivers go: watchdog and e-stop counts for the report
            for process in (p for p in self.processes if p.role == role):
                code = process.stop(GRACE_S[role])
                self._event("stopped", process.name, f"code {code}")
