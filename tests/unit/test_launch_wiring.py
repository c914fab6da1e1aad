"""The fields the supervisor fills in for each process (session/wiring.py): a launch file may not set them, and what
the supervisor overwrites is exactly what a launch file is refused, so the two cannot drift apart."""

from __future__ import annotations

import re

import pytest
import yaml

from acalign_robot import config as config_io
from acalign_robot.config import ConfigError
from acalign_robot.controller.process import ControllerConfig
from acalign_robot.drivers.server import DriverConfig
from acalign_robot.learner.config import LearnerConfig
from acalign_robot.session.schema import load_launch
from acalign_robot.session.supervisor import Supervisor

SECURITY = "set the session's `security:` block"
ELSEWHERE = "tcp://127.0.0.1:9"  # an endpoint a launch file might try to give a process


def launch_data(tmp_path) -> dict:
    """One robot and a learner, explicit endpoints and CURVE, so that every field the supervisor fills in changes."""
    return {
        "session": "wired",
        "robots": [
            {
                "name": "arm-0",
                "control_endpoint": "tcp://127.0.0.1:7100",
                "driver": {"kind": "loopback"},
                "controller": {"policy": str(tmp_path / "policy"), "explore": True},
            }
        ],
        "learner": {"checkpoint": str(tmp_path / "aligned.pt")},
        "endpoints": {"transitions": "tcp://127.0.0.1:7000", "policy": "tcp://127.0.0.1:7001"},
        "security": {"curve": True, "keys_dir": str(tmp_path / "keys"), "server_key": "learner", "client_key": "robot"},
    }


def load(tmp_path, data: dict):
    path = tmp_path / "session.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_launch(path)


def section_of(data: dict, section: str) -> dict:
    return data["learner"] if section == "learner" else data["robots"][0][section]


@pytest.mark.parametrize(
    "section, field, value, refusal",
    [
        ("driver", "endpoint", ELSEWHERE, "robots: robots[0].driver.endpoint: set robots[0].control_endpoint"),
        ("driver", "name", "mine", "robots: robots[0].driver.name: set robots[0].name instead"),
        ("driver", "security", {"allow_insecure": True}, f"robots: robots[0].driver.security: {SECURITY}"),
        (
            "controller",
            "driver_endpoint",
            ELSEWHERE,
            "robots: robots[0].controller.driver_endpoint: set control_endpoint instead",
        ),
        (
            "controller",
            "learner_endpoint",
            ELSEWHERE,
            "robots: robots[0].controller: learner endpoints come from `endpoints:`",
        ),
        (
            "controller",
            "policy_endpoint",
            ELSEWHERE,
            "robots: robots[0].controller: learner endpoints come from `endpoints:`",
        ),
        ("controller", "output_dir", "out", "robots: robots[0].controller.output_dir: the session directory is used"),
        ("controller", "controller_id", "c", "robots: robots[0].controller.controller_id: set robots[0].name instead"),
        ("controller", "security", {"allow_insecure": True}, f"robots: robots[0].controller.security: {SECURITY}"),
        ("learner", "transitions_endpoint", ELSEWHERE, "learner: learner endpoints come from `endpoints:`"),
        ("learner", "policy_endpoint", ELSEWHERE, "learner: learner endpoints come from `endpoints:`"),
        ("learner", "checkpoint_dir", "runs/mine", "learner: learner.checkpoint_dir: the session directory is used"),
        ("learner", "security", {"allow_insecure": True}, f"learner: learner.security: {SECURITY}"),
    ],
)
def test_a_launch_file_may_not_set_a_field_the_supervisor_fills_in(tmp_path, section, field, value, refusal):
    data = launch_data(tmp_path)
    section_of(data, section)[field] = value
    with pytest.raises(ConfigError, match=re.escape(refusal) + "$"):
        load(tmp_path, data)


def test_what_the_supervisor_overwrites_is_what_a_launch_file_is_refused(tmp_path):
    data = launch_data(tmp_path)
    supervisor = Supervisor(load(tmp_path, data), tmp_path / "session", live=False)
    supervisor.prepare()
    written = {
        "driver": config_io.load(DriverConfig, tmp_path / "session" / "arm-0-driver.yaml"),
        "controller": config_io.load(ControllerConfig, tmp_path / "session" / "arm-0.yaml"),
        "learner": config_io.load(LearnerConfig, tmp_path / "session" / "learner.yaml"),
    }
    given = {"driver": DriverConfig, "controller": ControllerConfig, "learner": LearnerConfig}
    overwritten = {}
    for section, config in written.items():
        before = config_io.to_dict(config_io.from_dict(given[section], section_of(data, section)))
        after = config_io.to_dict(config)
        overwritten[section] = sorted(name for name in after if after[name] != before[name])
    assert overwritten == {
        "driver": sorted(["endpoint", "name", "security"]),
        "controller": sorted(
            ["driver_endpoint", "learner_endpoint", "policy_endpoint", "output_dir", "controller_id", "security"]
        ),
        "learner": sorted(["transitions_endpoint", "policy_endpoint", "checkpoint_dir", "security"]),
    }
    for section, names in overwritten.items():
        for name in names:
            refused = launch_data(tmp_path)
            section_of(refused, section)[name] = config_io.to_dict(getattr(written[section], name))
            with pytest.raises(ConfigError):
                load(tmp_path, refused)
