"""`acalign estop` / `acalign clear` against real driver processes: every driver at once, a frozen one named."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import yaml

from acalign_robot.wire import protocol as p
from acalign_robot.wire.channels import free_tcp_endpoint
from acalign_robot.wire.transport import ZmqControlClient
from tests.helpers import acalign_command, wait_for

pytestmark = pytest.mark.integration


def start_loopback_drivers(processes, tmp_path, names: list[str]) -> dict[str, tuple]:
    """{name: (process, endpoint)} of loopback driver processes, each bound and ready."""
    drivers = {}
    for name in names:
        endpoint = free_tcp_endpoint()
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"kind": "loopback", "endpoint": endpoint, "name": f"{name}-driver"}))
        ready = tmp_path / f"{name}.ready"
        process = processes.start(
            acalign_command("driver", "--config", str(config), "--ready-file", str(ready)), tmp_path / f"{name}.log"
        )
        drivers[name] = (process, endpoint)
    for name, (process, _) in drivers.items():
        ready = tmp_path / f"{name}.ready"
        wait_for(lambda r=ready, d=process: r.exists() or d.poll() is not None, 60, f"{name} to bind")
        assert process.poll() is None, (tmp_path / f"{name}.log").read_text()
    return drivers


def session_dir(tmp_path, drivers: dict[str, tuple]):
    """A session directory as the supervisor writes it, as far as `acalign estop` reads it."""
    directory = tmp_path / "session"
    directory.mkdir()
    robots = [{"name": name, "control_endpoint": endpoint} for name, (_, endpoint) in drivers.items()]
    (directory / "session.yaml").write_text(yaml.safe_dump({"robots": robots, "security": {}}))
    return directory


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(acalign_command(*args), capture_output=True, text=True, timeout=60)


def estopped(endpoint: str) -> bool:
    with ZmqControlClient(endpoint) as client:
        reply = client.request(p.Stats(source="test", values={}), 5.0)
    assert isinstance(reply, p.Stats)
    return bool(reply.values["estopped"])


def line_of(output: str, robot: str) -> tuple[int, str]:
    (found,) = [(index, line) for index, line in enumerate(output.splitlines()) if line.startswith(f"{robot}:")]
    return found


def test_estop_and_clear_reach_every_driver(processes, tmp_path):
    drivers = start_loopback_drivers(processes, tmp_path, ["arm-a", "arm-b"])
    directory = session_dir(tmp_path, drivers)
    stop = run("estop", str(directory), "--reason", "test")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    for name, (_, endpoint) in drivers.items():
        assert "estop acknowledged in" in line_of(stop.stdout, name)[1] and "driver state estopped" in stop.stdout
        assert estopped(endpoint)
    release = run("clear", str(directory))
    assert release.returncode == 0, release.stdout + release.stderr
    for name, (_, endpoint) in drivers.items():
        assert "clear acknowledged in" in line_of(release.stdout, name)[1] and "driver state running" in release.stdout
        assert not estopped(endpoint)


def test_a_frozen_driver_delays_no_other_robots_estop(processes, tmp_path):
    """The frozen driver is listed first: asked one after another, the healthy robot would wait out its timeout."""
    drivers = start_loopback_drivers(processes, tmp_path, ["frozen", "healthy"])
    directory = session_dir(tmp_path, drivers)
    frozen, _ = drivers["frozen"]
    _, healthy_endpoint = drivers["healthy"]
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        stop = run("estop", str(directory))
        # Every line is printed as its answer arrives: the healthy robot's acknowledgement comes before the frozen
        # driver's reply timeout ends, so it is printed first.
        healthy_index, healthy_line = line_of(stop.stdout, "healthy")
        frozen_index, frozen_line = line_of(stop.stdout, "frozen")
        assert healthy_index < frozen_index, stop.stdout
        assert "estop acknowledged" in healthy_line and "driver state estopped" in healthy_line, stop.stdout
        assert "NOT acknowledged" in frozen_line and "no answer within 2 s" in frozen_line, stop.stdout
        # Not acknowledged by every driver: a failure, naming the robot that did not answer.
        assert stop.returncode == 1, stop.stdout + stop.stderr
        assert "not acknowledged by frozen (" in stop.stderr and "healthy" not in stop.stderr, stop.stderr
        assert estopped(healthy_endpoint)

        release = run("clear", str(directory))
        healthy_index, healthy_line = line_of(release.stdout, "healthy")
        assert healthy_index < line_of(release.stdout, "frozen")[0], release.stdout
        assert "clear acknowledged" in healthy_line and release.returncode == 1, release.stdout + release.stderr
        assert "not acknowledged by frozen (" in release.stderr
        assert not estopped(healthy_endpoint)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)


def test_estop_of_a_session_without_robots_here_is_bad_input(tmp_path):
    directory = tmp_path / "session"
    directory.mkdir()
    (directory / "session.yaml").write_text(yaml.safe_dump({"robots": [], "security": {}}))
    result = run("estop", str(directory))
    assert result.returncode == 2 and "no robot of this session runs on this host" in result.stderr, result.stderr
