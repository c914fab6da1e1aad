"""Operator commands on a running session: e-stop and clear, sent straight to every driver.

E-stop goes to the drivers because they are nearest the actuators: a driver latches its safe action at once
(every Step applies it until a Clear) and reports `estopped` in every StepReply, so each controller latches SAFE on
its next tick. Clear releases the drivers; the drivers' Clear count rises in their replies, which each controller
takes as the operator releasing its own SAFE latch too. The session's resolved `session.yaml` says where the
drivers are and which CURVE keys reach them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from acalign_robot import config as config_io
from acalign_robot.errors import InputError

__all__ = ["resolve_session_dir", "send_to_drivers"]


def resolve_session_dir(session: str, sessions_root: str = "sessions") -> Path:
    """A session directory, or the latest run of a session name under `sessions_root`."""
    path = Path(session)
    if (path / "session.yaml").is_file():
        return path
    runs = sorted(p.parent for p in (Path(sessions_root) / session).glob("*/session.yaml"))
    if not runs:
        raise InputError(f"{session!r}: not a session directory, and no run of that name under {sessions_root}/")
    return runs[-1]


def send_to_drivers(session: str, action: str, reason: str = "operator") -> int:
    """Send EStop or Clear to every driver of the session; 0 when all acknowledged, 1 otherwise."""
    from acalign_robot.runtime import protocol as p
    from acalign_robot.runtime.security import SecurityConfig, client_keys, is_local_endpoint
    from acalign_robot.runtime.transport import TransportTimeout, ZmqControlClient

    directory = resolve_session_dir(session)
    # The supervisor's resolved copy of the launch file: endpoints filled in, so it is read as data, not re-validated.
    resolved = yaml.safe_load((directory / "session.yaml").read_text())
    security = config_io.load_text(SecurityConfig, yaml.safe_dump(resolved.get("security") or {}), "security")
    message = p.EStop(reason=reason, source="acalign-cli") if action == "estop" else p.Clear(source="acalign-cli")
    keys = client_keys(security)
    failures = 0
    for robot in resolved["robots"]:
        name, endpoint = robot["name"], robot["control_endpoint"]
        try:
            # Drivers serve CURVE only on an endpoint that leaves their machine (runtime.driver_server.DriverConfig).
            with ZmqControlClient(endpoint, curve=None if is_local_endpoint(endpoint) else keys) as client:
                reply = client.request(message, 2.0)
        except TransportTimeout:
            print(f"{name}: no answer from {endpoint}")
            failures += 1
            continue
        state = reply.state if isinstance(reply, p.Heartbeat) else type(reply).__name__
        print(f"{name}: {action} acknowledged, driver state {state}")
    return 1 if failures else 0
