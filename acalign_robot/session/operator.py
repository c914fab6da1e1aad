"""Operator commands on a running session: e-stop and clear, sent straight to every driver at once.

E-stop goes to the drivers because they are nearest the actuators: a driver applies its safe action as soon as the
EStop arrives, latches it (every Step applies it until a Clear) and reports `estopped` in every StepReply, so each
controller latches SAFE on its next tick. Clear releases the drivers; the drivers' Clear count rises in their
replies, which each controller takes as the operator releasing its own SAFE latch too. The session's resolved
`session.yaml` says where the drivers are and which CURVE keys reach them.

Every driver is asked in parallel, one thread and one control client each, so that a frozen or unreachable driver
(which holds its thread for the whole reply timeout) delays no other robot's e-stop. Each robot's line is printed
as its answer arrives, with the time since the requests left; the command exits 1, naming every robot that did not
acknowledge, unless all did. A driver acknowledges with a Heartbeat in the state asked for (`estopped`, `running`).

This path runs at the start of a fresh process when every millisecond counts: it imports only what reading
`session.yaml` and sending a control message need (yaml; zmq, msgpack and numpy through the protocol), and reads
CURVE key files only when a driver's endpoint leaves the machine. docs/safety.md has its timing.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from acalign_robot.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable

    from acalign_robot.wire.security import SecurityConfig

__all__ = ["REPLY_TIMEOUT_S", "DriverAnswer", "ask_drivers", "resolve_session_dir", "send_to_drivers"]

REPLY_TIMEOUT_S = 2.0  # per driver, all drivers at once: the longest `acalign estop` waits for an answer
_EXPECTED_STATE = {"estop": "estopped", "clear": "running"}


@dataclass(frozen=True)
class DriverAnswer:
    """What one robot's driver said to an EStop or Clear."""

    robot: str
    endpoint: str
    acknowledged: bool
    elapsed_s: float  # from the moment the requests left to this answer (or to giving up)
    detail: str  # the driver's state when it acknowledged, why not otherwise


def resolve_session_dir(session: str, sessions_root: str = "sessions") -> Path:
    """A session directory, or the latest run of a session name under `sessions_root`."""
    path = Path(session)
    if (path / "session.yaml").is_file():
        return path
    runs = sorted(p.parent for p in (Path(sessions_root) / session).glob("*/session.yaml"))
    if not runs:
        raise InputError(f"{session!r}: not a session directory, and no run of that name under {sessions_root}/")
    return runs[-1]


def send_to_drivers(session: str, action: Literal["estop", "clear"], reason: str = "operator") -> int:
    """Send EStop or Clear to every driver of the session at once; 0 when all acknowledged, 1 otherwise."""
    import yaml

    from acalign_robot import config as config_io
    from acalign_robot.wire.security import SecurityConfig

    directory = resolve_session_dir(session)
    # The supervisor's resolved copy of the launch file: endpoints filled in, so it is read as data, not re-validated.
    resolved = yaml.safe_load((directory / "session.yaml").read_text())
    security = config_io.from_dict(SecurityConfig, resolved.get("security") or {}, "security")
    robots = [(robot["name"], robot["control_endpoint"]) for robot in resolved.get("robots") or ()]
    if not robots:
        raise InputError(f"{directory / 'session.yaml'}: no robot of this session runs on this host")

    def report(answer: DriverAnswer) -> None:
        when = f"in {1000 * answer.elapsed_s:.1f} ms"
        if answer.acknowledged:
            print(f"{answer.robot}: {action} acknowledged {when} ({answer.detail})", flush=True)
        else:
            print(f"{answer.robot}: {action} NOT acknowledged: {answer.detail} (gave up {when})", flush=True)

    answers = ask_drivers(robots, action, security, reason=reason, on_answer=report)
    missing = [answer for answer in answers if not answer.acknowledged]
    if missing:
        names = ", ".join(f"{answer.robot} ({answer.endpoint}: {answer.detail})" for answer in missing)
        consequence = " (its robot may still be moving: use its hardware e-stop)" if action == "estop" else ""
        print(f"acalign {action}: not acknowledged by {names}{consequence}", file=sys.stderr)
        return 1
    return 0


def ask_drivers(
    robots: list[tuple[str, str]],
    action: Literal["estop", "clear"],
    security: SecurityConfig,
    *,
    reason: str = "operator",
    source: str = "acalign-cli",
    timeout_s: float = REPLY_TIMEOUT_S,
    on_answer: Callable[[DriverAnswer], None] | None = None,
) -> list[DriverAnswer]:
    """Send EStop or Clear to every (robot name, control endpoint) at once, one thread each; one answer per robot.

    `source` names the sender in the message (the CLI, the session's page). `on_answer(answer)` is called as each
    answer arrives (from that robot's thread, one call at a time). Returns the answers in the order of `robots`.
    Never raises for one driver's fault: it becomes that robot's answer.
    """
    from acalign_robot.wire import protocol as p
    from acalign_robot.wire.channels import TransportTimeout
    from acalign_robot.wire.security import client_keys, is_local_endpoint
    from acalign_robot.wire.transport import ZmqControlClient

    message = p.EStop(reason=reason, source=source) if action == "estop" else p.Clear(source=source)
    expected = _EXPECTED_STATE[action]
    keys, keys_problem = None, None
    if not all(is_local_endpoint(endpoint) for _, endpoint in robots):
        try:
            keys = client_keys(security)
        except InputError as exc:  # only the remote drivers are out of reach; the local ones are still asked
            keys_problem = f"no CURVE keys for a remote driver: {exc}"
    answers: dict[str, DriverAnswer] = {}
    lock = threading.Lock()
    started = time.monotonic()

    def exchange(endpoint: str) -> tuple[bool, str]:
        """(acknowledged, the driver's state or why not) for one driver."""
        local = is_local_endpoint(endpoint)  # drivers serve CURVE only on an endpoint that leaves their machine
        if not local and keys is None:
            return False, keys_problem
        try:
            with ZmqControlClient(endpoint, curve=None if local else keys) as client:
                reply = client.request(message, timeout_s)
        except TransportTimeout:
            return False, f"no answer within {timeout_s:g} s (driver frozen, gone or unreachable)"
        except Exception as exc:  # a bad endpoint, a malformed reply: this robot's answer, never a lost thread
            return False, f"{type(exc).__name__}: {exc}"
        if isinstance(reply, p.Heartbeat):
            return reply.state == expected, f"driver state {reply.state}"
        if isinstance(reply, p.Error):
            return False, f"the driver answered Error {reply.code}: {reply.message}"
        return False, f"the driver answered {type(reply).__name__}, not a Heartbeat"

    def ask(name: str, endpoint: str) -> None:
        acknowledged, detail = exchange(endpoint)
        answer = DriverAnswer(name, endpoint, acknowledged, time.monotonic() - started, detail)
        with lock:
            answers[name] = answer
            if on_answer is not None:
                on_answer(answer)

    threads = [threading.Thread(target=ask, args=robot, name=f"{action}-{robot[0]}", daemon=True) for robot in robots]
    for thread in threads:
        thread.start()
    for thread in threads:  # each request gives up after timeout_s; the margin covers socket setup and close
        thread.join(timeout=max(0.0, started + timeout_s + 1.0 - time.monotonic()))
    with lock:
        return [
            answers.get(name)
            or DriverAnswer(name, endpoint, False, time.monotonic() - started, "its request never returned")
            for name, endpoint in robots
        ]
