"""Launch files: one YAML file describes a session (sim or robot) as a graph of processes.

    session: sim_hopper_finetune
    robots:                        # one driver + one controller per robot (or sim instance)
      - name: hopper-0
        driver: {kind: mujoco, sim: sim/hopper.yaml, watchdog_ms: 100}
        controller: {policy: policies/hopper-aca, explore: true}
    learner: {checkpoint: runs/hopper/aligned-aca.pt}    # optional: online fine-tuning
    endpoints: {transitions: auto, policy: auto}         # auto: free ports on bind_host
    restart: {learner: {mode: on-failure, max_restarts: 3, window_s: 60}}
    include: [fragments/hopper_limits.yaml]              # shared fragments, merged under this file
    operator_page: {host: 127.0.0.1, port: 8470}         # the live page (session/page.py); port 0: a free one
    sinks: {tensorboard: true, rerun: save}              # opt-in copies of the live state (session/sinks.py)

The supervisor fills in every endpoint (each robot's control endpoint, the learner's transitions and policy
endpoints), each process's output directory and name, and the session's `security:` block; process sections must not
set them (session/wiring.py lists those fields, what a launch file sets instead, and the value each gets).

Across machines (`host:` per robot, `learner_host:`), each machine runs `acalign launch --host NAME FILE` on the same
file and starts only its own processes. Such a session names every endpoint explicitly (`auto` would pick a
different free port on each machine): the learner binds `endpoints.transitions` / `endpoints.policy` on its
machine's interface address and the controllers on other machines connect to that same address; a robot's
`control_endpoint` is bound by its driver and used by its controller on the robot's own machine (loopback).

Loading is strict (unknown keys, wrong types: file and line); `check_session` adds the checks that need the world:
files that exist, the policy's spaces against the driver's, rates and safety limits that make sense, endpoints that
each host can bind and reach. `acalign validate` prints them all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from acalign_robot import config as config_io
from acalign_robot.config import FieldError
from acalign_robot.controller.process import ControllerConfig
from acalign_robot.drivers.server import DriverConfig
from acalign_robot.learner.config import LearnerConfig
from acalign_robot.session.wiring import owned_field_refusal
from acalign_robot.wire.security import SecurityConfig, is_local_endpoint

__all__ = [
    "AUTO",
    "Endpoints",
    "LaunchConfig",
    "OperatorPage",
    "Sinks",
    "RestartPolicies",
    "RestartPolicy",
    "Robot",
    "check_session",
    "load_launch",
]

AUTO = "auto"
_ENDPOINT = re.compile(r"^(tcp://[^:/]+:\d{1,5}|ipc://.+)$")
_WILDCARD = re.compile(r"^tcp://(\*|0\.0\.0\.0):")


@dataclass(frozen=True)
class RestartPolicy:
    mode: Literal["never", "on-failure"] = "never"
    max_restarts: int = 3  # within window_s; one more failure stops the session
    window_s: float = 60.0

    def validate(self) -> None:
        if self.max_restarts < 0 or self.window_s <= 0:
            raise FieldError("max_restarts", "max_restarts must be >= 0 and window_s positive")


@dataclass(frozen=True)
class RestartPolicies:
    driver: RestartPolicy = field(default_factory=RestartPolicy)
    controller: RestartPolicy = field(default_factory=RestartPolicy)
    learner: RestartPolicy = field(default_factory=lambda: RestartPolicy(mode="on-failure"))


@dataclass(frozen=True)
class Robot:
    name: str
    driver: DriverConfig
    controller: ControllerConfig
    control_endpoint: str = AUTO  # the driver's ROUTER; auto: a free port on endpoints.bind_host
    host: str = "local"  # which machine runs this robot's driver and controller (`acalign launch --host`)


@dataclass(frozen=True)
class Endpoints:
    bind_host: str = "127.0.0.1"  # where automatic ports are opened (loopback by default)
    transitions: str = AUTO  # learner ROUTER
    policy: str = AUTO  # learner PUB


@dataclass(frozen=True)
class OperatorPage:
    """The session's live page and e-stop buttons (session/page.py), served by the supervisor while it runs.

    Loopback by default. Another interface only with `token_file`: the page is plain HTTP, and whoever can reach the
    port could otherwise press e-stop and clear; with a token file every request must carry its token.
    """

    enabled: bool = True
    host: str = "127.0.0.1"  # the address to listen on
    port: int = 0  # 0: a free port, printed at start and written to <session dir>/page.url
    token_file: str | None = None  # a private file (mode 0600) holding the token; required off loopback

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise FieldError("port", f"must be 0 (a free port) to 65535, got {self.port}")
        if not re.fullmatch(r"[\w.:-]+", self.host):
            raise FieldError("host", f"expected an address or host name, got {self.host!r}")
        if self.enabled and self.token_file is None and not is_loopback_host(self.host):
            raise FieldError(
                "token_file",
                f"the page on {self.host} (not loopback) needs a token: anyone who reaches the port could press "
                "e-stop and clear; write the token into a file only you can read and name it here (docs/security.md)",
            )


@dataclass(frozen=True)
class Sinks:
    """Opt-in copies of the live state the page shows (session/sinks.py), in the session directory or a viewer."""

    tensorboard: bool = False  # <session dir>/tensorboard/ (the tensorboard extra)
    rerun: Literal["off", "save", "connect"] = "off"  # save: <session dir>/session.rrd; connect: a viewer at rerun_url
    rerun_url: str = "rerun+http://127.0.0.1:9876/proxy"  # a running `rerun` viewer's gRPC address (its default)

    def validate(self) -> None:
        if not re.fullmatch(r"rerun\+https?://[^\s/]+(/\S*)?", self.rerun_url):
            raise FieldError("rerun_url", f"expected rerun+http://HOST:PORT/proxy, got {self.rerun_url!r}")


@dataclass(frozen=True)
class LaunchConfig:
    session: str
    robots: tuple[Robot, ...]
    learner: LearnerConfig | None = None
    learner_host: str = "local"
    endpoints: Endpoints = field(default_factory=Endpoints)
    restart: RestartPolicies = field(default_factory=RestartPolicies)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    output_dir: str = "sessions"
    duration_s: float | None = None  # stop the session after this long (none: when controllers finish, or Ctrl-C)
    ready_timeout_s: float = 60.0  # per process, from start to its readiness handshake
    heartbeat_timeout_s: float = 10.0  # a process whose status file is older than this is reported stale
    operator_page: OperatorPage = field(default_factory=OperatorPage)
    sinks: Sinks = field(default_factory=Sinks)

    def validate(self) -> None:
        if not re.fullmatch(r"[\w.-]+", self.session):
            raise FieldError("session", f"use letters, digits, '.', '-' and '_' only, got {self.session!r}")
        if not self.robots:
            raise FieldError("robots", "a session needs at least one robot (driver + controller)")
        names = [robot.name for robot in self.robots]
        if len(set(names)) != len(names):
            raise FieldError("robots", f"robot names must be unique, got {names}")
        for index, robot in enumerate(self.robots):
            for section in ("driver", "controller"):
                refusal = owned_field_refusal(getattr(robot, section), section, robot=f"robots[{index}]")
                if refusal is not None:
                    raise FieldError("robots", refusal)
        if self.learner is not None:
            refusal = owned_field_refusal(self.learner, "learner")
            if refusal is not None:
                raise FieldError("learner", refusal)
        if self.duration_s is not None and self.duration_s <= 0:
            raise FieldError("duration_s", f"must be positive, got {self.duration_s}")


def is_loopback_host(host: str) -> bool:
    """Whether an address (or `localhost`) is reachable only from this machine."""
    return is_local_endpoint(f"tcp://[{host}]:0" if ":" in host else f"tcp://{host}:0")


def load_launch(path: str | Path, overrides: tuple[str, ...] = ()) -> LaunchConfig:
    """Load a launch file. `--set controller.rate_hz=250` (or `driver.` / `robot.`) applies to every robot."""
    robots = _robot_count(Path(path))
    expanded: list[str] = []
    for override in overrides:
        head = override.split(".", 1)[0]
        if head in ("controller", "driver") and robots:
            expanded += [f"robots.{i}.{override}" for i in range(robots)]
        else:
            expanded.append(override)
    return config_io.load(LaunchConfig, path, tuple(expanded))


def _robot_count(path: Path) -> int:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return 0  # the strict loader reports the problem with its location
    robots = data.get("robots") if isinstance(data, dict) else None
    return len(robots) if isinstance(robots, list) else 0


def check_session(config: LaunchConfig, host: str | None = None) -> list[str]:
    """Every problem that needs more than types: a list of one-line messages (empty when the session is sane)."""
    from acalign_robot.drivers.server import make_driver
    from acalign_robot.errors import input_error_from
    from acalign_robot.policy.manifest import PolicyError
    from acalign_robot.policy.runner import PolicyRunner

    problems: list[str] = []
    # (host that binds it, endpoint): the same loopback port on two machines is two endpoints.
    bound = [(robot.host, robot.control_endpoint) for robot in config.robots if robot.control_endpoint != AUTO]
    bound += [(config.learner_host, e) for e in (config.endpoints.transitions, config.endpoints.policy) if e != AUTO]
    explicit = [endpoint for _, endpoint in bound]
    for endpoint in explicit:
        if not _ENDPOINT.match(endpoint):
            problems.append(f"endpoint {endpoint!r}: expected tcp://HOST:PORT or ipc://PATH")
        elif _WILDCARD.match(endpoint):
            problems.append(
                f"endpoint {endpoint!r}: '*' and 0.0.0.0 can be bound but not connected to, and the connecting side "
                "uses the same endpoint: give the address of the interface to listen on"
            )
    duplicates = {pair for pair in bound if bound.count(pair) > 1}
    problems += [f"endpoint {e} is bound by more than one process" for _, e in sorted(duplicates)]
    problems += _bind_policy_problems(config)
    problems += _multi_host_problems(config, host)
    for index, robot in enumerate(config.robots):
        if host is not None and robot.host != host:
            continue
        where = f"robots[{index}] ({robot.name})"
        try:
            driver = make_driver(robot.driver)
        except Exception as exc:
            # Bad input (an unknown env id, a plugin that is not installed) names its field; anything else is the
            # driver failing to start.
            bad_input = input_error_from(exc)
            problems.append(f"{where}.driver: {bad_input if bad_input is not None else f'cannot be created: {exc}'}")
            continue
        spec = driver.spec
        # Hardware, and a sim paced in real time, run at their own period; an unpaced sim runs at the controller's.
        realism = getattr(getattr(driver, "config", None), "realism", None)
        paced = realism is None or realism.realtime
        driver.close()
        period_s = spec.control_period_s
        controller = robot.controller
        if paced and controller.rate_hz is not None and abs(controller.rate_hz * period_s - 1.0) > 0.01:
            problems.append(
                f"{where}.controller.rate_hz: {controller.rate_hz} Hz, but the driver's control period is "
                f"{period_s * 1000:g} ms ({1 / period_s:g} Hz)"
            )
        if robot.driver.watchdog_ms < 2 * period_s * 1000:
            problems.append(
                f"{where}.driver.watchdog_ms: {robot.driver.watchdog_ms} ms is under two control periods "
                f"({2 * period_s * 1000:g} ms): the watchdog would fire between healthy ticks"
            )
        if controller.driver_timeout_ms > robot.driver.watchdog_ms:
            problems.append(
                f"{where}.controller.driver_timeout_ms ({controller.driver_timeout_ms} ms) exceeds the "
                f"driver's watchdog_ms ({robot.driver.watchdog_ms} ms)"
            )
        try:
            PolicyRunner.from_dir(
                controller.policy,
                obs_dim=spec.observation.shape[0],
                action_dim=spec.action.shape[0],
                action_low=spec.action.low,
                action_high=spec.action.high,
            )
        except (PolicyError, ValueError, OSError) as exc:
            problems.append(f"{where}.controller.policy: {exc}")
        if config.learner is not None and not controller.explore:
            problems.append(
                f"{where}.controller.explore is false, but a learner fine-tunes from its transitions "
                "(ACA acts with the stochastic policy online)"
            )
    learner_here = config.learner is not None and (host is None or config.learner_host == host)
    if learner_here and not Path(config.learner.checkpoint).is_file():
        problems.append(
            f"learner.checkpoint: {config.learner.checkpoint} does not exist (make one with `acalign align`)"
        )
    if config.security.curve:
        problems += _key_problems(config, host)
    from acalign_robot.session.sinks import missing_sink_packages

    problems += missing_sink_packages(config.sinks.tensorboard, config.sinks.rerun != "off")
    if config.operator_page.enabled and config.operator_page.token_file is not None:
        from acalign_robot.errors import InputError
        from acalign_robot.session.page import read_token

        try:
            read_token(config.operator_page.token_file)
        except InputError as exc:
            problems.append(f"operator_page.token_file: {exc}")
    return problems


def _bind_policy_problems(config: LaunchConfig) -> list[str]:
    """The bind policy (`wire.security.check_bind`) on every endpoint a process of the session will bind.

    The same call the driver and the learner make as they bind, so that whatever they would refuse at launch is
    refused here first. An automatic endpoint is a free port on `endpoints.bind_host`, chosen at launch; the policy
    looks only at its address.
    """
    from acalign_robot.errors import InputError
    from acalign_robot.wire.security import check_bind

    fields = [(f"robots[{i}].control_endpoint", robot.control_endpoint) for i, robot in enumerate(config.robots)]
    if config.learner is not None:
        fields += [(f"endpoints.{name}", getattr(config.endpoints, name)) for name in ("transitions", "policy")]
    problems = []
    automatic = [name for name, endpoint in fields if endpoint == AUTO]
    if automatic:
        try:
            check_bind(f"tcp://{config.endpoints.bind_host}:PORT", config.security)
        except InputError as exc:
            verb = "is" if len(automatic) == 1 else "are"
            problems.append(f"endpoints.bind_host ({', '.join(automatic)} {verb} auto, on this address): {exc}")
    for name, endpoint in fields:
        if endpoint != AUTO:
            try:
                check_bind(endpoint, config.security)
            except InputError as exc:
                problems.append(f"{name}: {exc}")
    return problems


def _key_problems(config: LaunchConfig, host: str | None) -> list[str]:
    """With CURVE: the key files this host's processes will load exist, are well formed and private enough.

    The same calls the processes make: every controller loads its client key pair and the server's public key; the
    learner, and a driver whose control endpoint leaves the machine, load the server key pair and the allow-list.
    """
    from acalign_robot.errors import InputError
    from acalign_robot.wire.security import client_keys, is_local_endpoint, secure_context

    def control_is_local(robot: Robot) -> bool:
        endpoint = robot.control_endpoint
        return is_local_endpoint(f"tcp://{config.endpoints.bind_host}:1" if endpoint == AUTO else endpoint)

    robots_here = [robot for robot in config.robots if host is None or robot.host == host]
    learner_here = config.learner is not None and (host is None or config.learner_host == host)
    problems = []
    if robots_here:
        try:
            client_keys(config.security)
        except InputError as exc:
            problems.append(f"security, connecting side (controllers): {exc}")
    if learner_here or not all(control_is_local(robot) for robot in robots_here):
        try:
            secure_context(config.security).close()
        except InputError as exc:
            problems.append(f"security, binding side (learner, remote drivers): {exc}")
    return problems


def _multi_host_problems(config: LaunchConfig, host: str | None) -> list[str]:
    """A session across machines: explicit endpoints, reachable from the hosts that connect to them."""
    from acalign_robot.wire.security import is_local_endpoint

    hosts = sorted({robot.host for robot in config.robots} | ({config.learner_host} if config.learner else set()))
    problems = []
    if host is not None and host not in hosts:
        problems.append(f"--host {host}: no process of this launch file runs there (hosts: {', '.join(hosts)})")
    if len(hosts) < 2:
        return problems
    where = f"a session across hosts ({', '.join(hosts)})"
    automatic = [f"robots[{i}].control_endpoint" for i, r in enumerate(config.robots) if r.control_endpoint == AUTO]
    if config.learner is not None:
        automatic += [
            f"endpoints.{name}" for name in ("transitions", "policy") if getattr(config.endpoints, name) == AUTO
        ]
    if automatic:
        problems.append(
            f"{where} needs explicit endpoints, but {', '.join(automatic)} {'is' if len(automatic) == 1 else 'are'} "
            "auto (each host would pick its own free port): write tcp://ADDRESS:PORT, the learner's on its interface "
            "address, each control endpoint on 127.0.0.1"
        )
    remote_robots = [robot.name for robot in config.robots if robot.host != config.learner_host]
    if config.learner is not None and remote_robots:
        for name in ("transitions", "policy"):
            endpoint = getattr(config.endpoints, name)
            if endpoint != AUTO and is_local_endpoint(endpoint):
                problems.append(
                    f"endpoints.{name}: {endpoint} is local to {config.learner_host}, so robots on other hosts "
                    f"({', '.join(remote_robots)}) cannot reach it: bind the learner host's interface address"
                )
    if config.security.curve:
        for index, robot in enumerate(config.robots):
            if robot.control_endpoint != AUTO and not is_local_endpoint(robot.control_endpoint):
                problems.append(
                    f"robots[{index}].control_endpoint: {robot.control_endpoint} would be served with CURVE key "
                    f"{config.security.server_key!r}, whose secret belongs on the learner's host only: the driver and "
                    "controller share a host, bind the control endpoint on 127.0.0.1"
                )
    return problems
