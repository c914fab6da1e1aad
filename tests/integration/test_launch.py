"""`acalign validate` and `acalign launch` with real processes: report, safe stop, no orphans, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import acalign_command, wait_for

pytestmark = pytest.mark.integration


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def session_file(tmp_path: Path, policy: Path, **extra) -> Path:
    robot = {
        "name": "hopper-0",
        "driver": {"kind": "mujoco", "env_id": "Hopper-v5"},
        "controller": {"policy": str(policy), "explore": False},
    }
    robot_extra = extra.pop("robot", {})
    for key, value in robot_extra.items():
        robot[key] = {**robot.get(key, {}), **value} if isinstance(value, dict) else value
    data = {"session": "test", "output_dir": str(tmp_path / "sessions"), "robots": [robot], **extra}
    path = tmp_path / "session.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def session_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "sessions" / "test").glob("*"))


def test_validate_lists_every_problem(tmp_path, hopper_policy):
    path = session_file(
        tmp_path,
        hopper_policy,
        endpoints={"transitions": "tcp://127.0.0.1:7001", "policy": "tcp://127.0.0.1:7001"},
        robot={"driver": {"watchdog_ms": 5}, "controller": {"policy": str(tmp_path / "missing")}},
        learner={"checkpoint": str(tmp_path / "nope.pt")},
    )
    result = subprocess.run(acalign_command("validate", str(path)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    for expected in (
        "bound by more than one process",
        "watchdog_ms: 5.0 ms is under two control periods",
        "controller.policy",
        "learner.checkpoint",
        "explore is false",
    ):
        assert expected in result.stderr, (expected, result.stderr)


def test_validate_reports_unknown_keys_with_file_and_line(tmp_path, hopper_policy):
    path = session_file(tmp_path, hopper_policy)
    path.write_text(path.read_text().replace("explore: false", "explroe: false"))
    result = subprocess.run(acalign_command("validate", str(path)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{path}:" in result.stderr and "did you mean 'explore'" in result.stderr


@pytest.mark.parametrize("with_learner", [False, True])
def test_validate_refuses_what_launch_would_a_wildcard_bind_host_without_curve(
    tmp_path, hopper_policy, aligned_hopper_checkpoint, with_learner
):
    """The driver and the learner refuse to bind 0.0.0.0 without CURVE; validate must say so before they start."""
    learner = {"learner": {"checkpoint": str(aligned_hopper_checkpoint)}} if with_learner else {}
    path = session_file(
        tmp_path,
        hopper_policy,
        endpoints={"bind_host": "0.0.0.0"},
        robot={"controller": {"explore": True}},
        **learner,
    )
    automatic = "robots[0].control_endpoint" + (", endpoints.transitions, endpoints.policy" if with_learner else "")
    for command in ("validate", "launch"):
        result = subprocess.run(acalign_command(command, str(path)), capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (command, result.stdout + result.stderr)
        assert f"endpoints.bind_host ({automatic} " in result.stderr, result.stderr
        assert "refusing to bind 'tcp://0.0.0.0:PORT' without CURVE" in result.stderr, result.stderr
    assert not session_dirs(tmp_path)  # launch started nothing
    # The escape hatch, written explicitly, is what the processes accept too.
    path.write_text(path.read_text() + "security: {allow_insecure: true}\n")
    result = subprocess.run(acalign_command("validate", str(path)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_names_the_field_of_an_explicit_endpoint_the_bind_policy_refuses(tmp_path, hopper_policy):
    path = session_file(tmp_path, hopper_policy, robot={"control_endpoint": "tcp://192.0.2.1:7100"})
    result = subprocess.run(acalign_command("validate", str(path)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "robots[0].control_endpoint: refusing to bind 'tcp://192.0.2.1:7100' without CURVE" in result.stderr


def test_sim_eval_session_ends_cleanly_with_a_report(tmp_path, hopper_policy):
    path = session_file(tmp_path, hopper_policy, robot={"controller": {"episodes": 3}})
    result = subprocess.run(acalign_command("launch", str(path)), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    (directory,) = session_dirs(tmp_path)
    report = json.loads((directory / "report.json").read_text())
    assert report["failure"] is None and report["controllers"][0]["episodes"] == 3
    assert (directory / "report.png").stat().st_size > 10_000 and "| hopper-0 |" in result.stdout
    assert report["drivers"]["hopper-0"]["steps"] >= report["controllers"][0]["ticks"]
    assert [e["event"] for e in report["events"] if e["process"] == "hopper-0"][-1] == "stopped"


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_no_process_survives_the_supervisor(tmp_path, hopper_policy, how):
    path = session_file(tmp_path, hopper_policy, duration_s=120)
    supervisor = subprocess.Popen(
        acalign_command("launch", str(path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    children: list[int] = []
    try:
        wait_for(
            lambda: session_dirs(tmp_path) and (session_dirs(tmp_path)[0] / "hopper-0" / "status.json").exists(),
            120,
            "the session to run",
        )
        children = children_of(supervisor.pid)
        assert len(children) == 2
        os.kill(supervisor.pid, how)
        supervisor.wait(timeout=60)
        wait_for(lambda: not any(alive(pid) for pid in children), 30, "every child to stop")
    finally:
        for pid in [supervisor.pid, *children]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    if how == signal.SIGTERM:
        assert (session_dirs(tmp_path)[0] / "report.json").exists()


def test_a_driver_that_crashes_on_start_is_reported_with_its_log(tmp_path, hopper_policy):
    import zmq

    context = zmq.Context()
    blocker = context.socket(zmq.ROUTER)
    port = blocker.bind_to_random_port("tcp://127.0.0.1")
    try:
        path = session_file(tmp_path, hopper_policy, robot={"control_endpoint": f"tcp://127.0.0.1:{port}"})
        result = subprocess.run(acalign_command("launch", str(path)), capture_output=True, text=True, timeout=120)
    finally:
        blocker.close(linger=0)
        context.term()
    assert result.returncode == 1
    assert "hopper-0-driver exited with code 2 before it was ready" in result.stderr
    assert "cannot bind" in result.stderr  # the driver's own last log line


def test_learner_is_restarted_on_failure_and_policies_advance(tmp_path, hopper_policy, aligned_hopper_checkpoint):
    path = session_file(
        tmp_path,
        hopper_policy,
        duration_s=40,
        robot={"controller": {"explore": True}},
        learner={"checkpoint": str(aligned_hopper_checkpoint), "publish_every": 50, "checkpoint_every_updates": 100},
        restart={"learner": {"mode": "on-failure", "max_restarts": 2, "window_s": 60}},
    )
    supervisor = subprocess.Popen(
        acalign_command("launch", str(path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        learner_status = lambda: session_dirs(tmp_path) and session_dirs(tmp_path)[0] / "learner" / "status.json"  # noqa: E731
        wait_for(lambda: learner_status() and learner_status().exists(), 120, "the learner to run")
        time.sleep(3)
        (learner,) = [
            pid
            for pid in children_of(supervisor.pid)
            if "learner" in Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        ]
        os.kill(learner, signal.SIGKILL)
        output, _ = supervisor.communicate(timeout=180)
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
    assert supervisor.returncode == 0, output
    report = json.loads((session_dirs(tmp_path)[0] / "report.json").read_text())
    assert any(e["event"] == "restart" and e["process"] == "learner" for e in report["events"]), report["events"]
    controller = report["controllers"][0]
    assert controller["policy_version"] > 1 and controller["swaps"] >= 1
    assert report["learner"]["updates"] > 0
    # Exactly once: what the killed learner had not checkpointed was resent, and nothing went in twice.
    (stats_file,) = session_dirs(tmp_path)[0].glob("*/stats.json")
    stats = json.loads(stats_file.read_text())
    learner = json.loads((session_dirs(tmp_path)[0] / "learner" / "status.json").read_text())
    (stream,) = learner["controllers"].values()
    assert stats["learner_has_every_batch"], stats
    assert stream["gaps"] == stream["lost"] == 0 and stream["received_through"] == stats["transition_batches"] - 1
    assert stream["transitions"] == stats["log"]["log_written_transitions"], (stream, stats["log"])


def test_estop_latches_every_layer_and_clear_releases_it(tmp_path, hopper_policy):
    path = session_file(tmp_path, hopper_policy, duration_s=90)
    supervisor = subprocess.Popen(
        acalign_command("launch", str(path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        status_path = lambda: session_dirs(tmp_path) and session_dirs(tmp_path)[0] / "hopper-0" / "status.json"  # noqa: E731
        wait_for(lambda: status_path() and status_path().exists(), 120, "the session to run")
        session_dir = session_dirs(tmp_path)[0]
        stop = subprocess.run(
            acalign_command("estop", str(session_dir), "--reason", "test"), capture_output=True, text=True, timeout=30
        )
        assert stop.returncode == 0 and "estopped" in stop.stdout, stop.stdout + stop.stderr
        wait_for(lambda: json.loads(status_path().read_text())["safe"], 10, "the controller to latch SAFE")
        assert json.loads(status_path().read_text())["safe_reason"] == "driver e-stop"
        clear = subprocess.run(acalign_command("clear", str(session_dir)), capture_output=True, text=True, timeout=30)
        assert clear.returncode == 0 and "running" in clear.stdout
        wait_for(lambda: not json.loads(status_path().read_text())["safe"], 10, "the controller to leave SAFE")
        os.kill(supervisor.pid, signal.SIGTERM)
        supervisor.wait(timeout=60)
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
    report = json.loads((session_dirs(tmp_path)[0] / "report.json").read_text())
    assert report["drivers"]["hopper-0"]["estops"] == 1 and report["drivers"]["hopper-0"]["clears"] == 1
    assert report["safety"]["hopper-0"]["filter_safe_ticks"] > 0
