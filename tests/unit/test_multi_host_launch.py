"""Launch files across machines: the checks `acalign validate --host` adds, and what the supervisor writes per process.

Drivers are the in-memory loopback kind; the policy path is left missing (its problem is reported and ignored here).
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from acalign_robot import config as config_io
from acalign_robot.config import ConfigError
from acalign_robot.controller.process import ControllerConfig
from acalign_robot.drivers.server import DriverConfig
from acalign_robot.learner.config import LearnerConfig
from acalign_robot.session.schema import check_session, load_launch
from acalign_robot.session.supervisor import Supervisor
from acalign_robot.wire.security import generate_keys

LEARNER = "tcp://10.200.0.2"


def launch_file(tmp_path, **fields) -> dict:
    """Two robots on robot1/robot2, a learner on `workstation`, explicit endpoints and CURVE; `fields` replace keys."""
    robots = [
        {
            "name": f"arm-{i}",
            "host": f"robot{i}",
            "control_endpoint": "tcp://127.0.0.1:7100",  # the same port on two machines: two endpoints
            "driver": {"kind": "loopback"},
            "controller": {"policy": str(tmp_path / "missing-policy"), "explore": True},
        }
        for i in (1, 2)
    ]
    data = {
        "session": "fleet",
        "robots": robots,
        "learner": {"checkpoint": str(tmp_path / "missing.pt")},
        "learner_host": "workstation",
        "endpoints": {"transitions": f"{LEARNER}:7000", "policy": f"{LEARNER}:7001"},
        "security": {
            "curve": True,
            "keys_dir": str(tmp_path / "keys"),
            "server_key": "learner",
            "client_key": "robot",
            "authorized_clients_dir": str(tmp_path / "keys" / "clients"),
        },
        "output_dir": str(tmp_path / "sessions"),
    }
    return data | fields


def problems_of(tmp_path, data: dict, host: str | None = None) -> list[str]:
    path = tmp_path / "session.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return [p for p in check_session(load_launch(path), host) if "missing-policy" not in p and "missing.pt" not in p]


@pytest.fixture
def keys(tmp_path):
    for name in ("learner", "robot"):
        generate_keys(tmp_path / "keys", name)
    (tmp_path / "keys" / "clients").mkdir()
    shutil.copy(tmp_path / "keys" / "robot.key", tmp_path / "keys" / "clients" / "robot.key")


def test_a_sane_fleet_file_passes_on_every_host(tmp_path, keys):
    for host in (None, "robot1", "robot2", "workstation"):
        assert problems_of(tmp_path, launch_file(tmp_path), host) == [], host


def test_auto_endpoints_are_refused_across_hosts_but_not_on_one(tmp_path, keys):
    data = launch_file(tmp_path, endpoints={"transitions": "auto", "policy": f"{LEARNER}:7001"})
    data["robots"][1]["control_endpoint"] = "auto"
    (problem,) = problems_of(tmp_path, data, "robot1")
    assert (
        "needs explicit endpoints" in problem
        and "robots[1].control_endpoint, endpoints.transitions are auto" in problem
    )
    one_host = launch_file(tmp_path, endpoints={"transitions": "auto", "policy": "auto"}, learner_host="robot1")
    one_host["robots"] = one_host["robots"][:1]
    one_host["robots"][0]["control_endpoint"] = "auto"
    assert problems_of(tmp_path, one_host, "robot1") == []


def test_learner_endpoints_must_be_reachable_from_the_robots_hosts(tmp_path, keys):
    data = launch_file(tmp_path, endpoints={"transitions": "tcp://127.0.0.1:7000", "policy": "tcp://0.0.0.0:7001"})
    problems = problems_of(tmp_path, data)
    assert any("endpoints.transitions: tcp://127.0.0.1:7000 is local to workstation" in p for p in problems)
    assert any("'tcp://0.0.0.0:7001': '*' and 0.0.0.0 can be bound but not connected to" in p for p in problems)


def test_a_control_endpoint_off_the_robot_with_curve_and_duplicates_per_host(tmp_path, keys):
    data = launch_file(tmp_path)
    data["robots"][0]["control_endpoint"] = "tcp://10.200.0.11:7100"
    assert any(
        "robots[0].control_endpoint" in p and "bind the control endpoint on 127.0.0.1" in p
        for p in problems_of(tmp_path, data)
    )
    data = launch_file(tmp_path)
    data["robots"][1]["host"] = "robot1"  # now both loopback control endpoints are on one machine
    assert problems_of(tmp_path, data) == ["endpoint tcp://127.0.0.1:7100 is bound by more than one process"]


def test_unknown_host_and_missing_keys_are_named(tmp_path):
    data = launch_file(tmp_path)
    assert any(
        "--host robto: no process of this launch file runs there (hosts: robot1, robot2, workstation)" in p
        for p in problems_of(tmp_path, data, "robto")
    )
    (robot_problem,) = problems_of(tmp_path, data, "robot1")
    assert robot_problem.startswith("security, connecting side") and "robot.key_secret" in robot_problem
    (learner_problem,) = problems_of(tmp_path, data, "workstation")
    assert learner_problem.startswith("security, binding side") and "learner.key_secret" in learner_problem


def test_process_sections_cannot_set_their_own_security(tmp_path):
    data = launch_file(tmp_path)
    data["robots"][0]["controller"]["security"] = {"allow_insecure": True}
    path = tmp_path / "session.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"robots\[0\].controller.security: set the session's `security:` block"):
        load_launch(path)


def test_the_supervisor_writes_the_session_security_into_each_process_config(tmp_path, keys):
    path = tmp_path / "session.yaml"
    path.write_text(yaml.safe_dump(launch_file(tmp_path)))
    config = load_launch(path)
    robot1 = Supervisor(config, tmp_path / "robot1", host="robot1", live=False)
    robot1.prepare()
    assert [p.name for p in robot1.processes] == ["arm-1-driver", "arm-1"]
    driver = config_io.load(DriverConfig, tmp_path / "robot1" / "arm-1-driver.yaml")
    controller = config_io.load(ControllerConfig, tmp_path / "robot1" / "arm-1.yaml")
    assert driver.security == controller.security == config.security and config.security.curve
    assert driver.endpoint == controller.driver_endpoint == "tcp://127.0.0.1:7100"
    assert (controller.learner_endpoint, controller.policy_endpoint) == (f"{LEARNER}:7000", f"{LEARNER}:7001")
    # `acalign estop` on robot1 reads session.yaml: it must name robot1's driver only (arm-2's 127.0.0.1:7100 is
    # on robot2, and the same address here is arm-1's).
    resolved = yaml.safe_load((tmp_path / "robot1" / "session.yaml").read_text())
    assert [robot["name"] for robot in resolved["robots"]] == ["arm-1"]
    workstation = Supervisor(config, tmp_path / "workstation", host="workstation", live=False)
    workstation.prepare()
    assert [p.name for p in workstation.processes] == ["learner"]
    learner = config_io.load(LearnerConfig, tmp_path / "workstation" / "learner.yaml")
    assert learner.security == config.security
    assert (learner.transitions_endpoint, learner.policy_endpoint) == (f"{LEARNER}:7000", f"{LEARNER}:7001")
