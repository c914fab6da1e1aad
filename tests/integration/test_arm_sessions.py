"""The Panda reach arm through real processes: a MuJoCo driver serving the robot twin, a controller running an
ONNX policy at the arm's 50 Hz with the arm's limits from the driver's handshake."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import acalign_robot.sim_tasks  # noqa: F401 - registers acalign/PandaReach-v0 (make_checkpoint makes the env)
from acalign_robot.algo.networks import TanhGaussianActor
from acalign_robot.controller.safety import FilterFlags
from acalign_robot.export.onnx_export import build_artifact
from acalign_robot.policy.manifest import PolicyManifest
from acalign_robot.robot_log.reader import read_log
from acalign_robot.wire.channels import free_tcp_endpoint
from tests.helpers import acalign_command, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARM = "acalign/PandaReach-v0"


def start_driver(processes, tmp_path: Path, endpoint: str, **fields):
    config = tmp_path / "driver.yaml"
    config.write_text(yaml.safe_dump({"kind": "mujoco", "endpoint": endpoint, "watchdog_ms": 60, **fields}))
    ready = tmp_path / "driver.ready"
    process = processes.start(
        acalign_command("driver", "--config", str(config), "--ready-file", str(ready)), tmp_path / "driver.log"
    )
    wait_for(lambda: ready.exists() or process.poll() is not None, 60, "the driver to bind")
    assert process.poll() is None, (tmp_path / "driver.log").read_text()


def run_controller(processes, tmp_path: Path, fields: dict) -> dict:
    config = tmp_path / "controller.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "ctl"), "driver_timeout_ms": 40, **fields}))
    controller = processes.start(acalign_command("controller", "--config", str(config)), tmp_path / "controller.log")
    assert controller.wait(timeout=120) == 0, (tmp_path / "controller.log").read_text()
    return json.loads((tmp_path / "ctl" / "stats.json").read_text())


def constant_policy(directory: Path, action: list[float]) -> Path:
    """An artifact on the arm's spaces that always commands tanh(atanh(action)) = `action` (zero weights, the mean's
    bias set)."""
    actor = TanhGaussianActor(23, 7, (8,)).requires_grad_(False)
    with torch.no_grad():
        for parameter in actor.parameters():
            parameter.zero_()
        actor.trunk[-1].bias[:7] = torch.atanh(torch.tensor(action))
    meta = {"env_id": ARM, "obs_dim": 23, "action_dim": 7, "action_low": [-1.0] * 7, "action_high": [1.0] * 7}
    onnx_bytes, manifest = build_artifact(actor, meta, 0, "test", name="push", version=1)
    target = directory / "push" / "1"
    target.mkdir(parents=True)
    (target / "policy.onnx").write_bytes(onnx_bytes)
    (target / "manifest.json").write_text(PolicyManifest.from_dict(manifest).to_json())
    return target


def test_a_policy_drives_the_arm_twin_at_50_hz_with_its_limits_checked(processes, tmp_path, make_checkpoint):
    from acalign_robot.export.onnx_export import write_artifact

    artifact = write_artifact(make_checkpoint(ARM), "arm-test", tmp_path / "policies")
    endpoint = free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint, sim=str(REPO / "sim" / "panda_reach_twin.yaml"))
    stats = run_controller(
        processes,
        tmp_path,
        {
            "driver_endpoint": endpoint,
            "policy": str(artifact),
            "ticks": 250,
            "explore": True,
            "safety": {"max_delta_per_tick": 0.1},
        },
    )
    assert stats["ticks"] == 250 and stats["episodes"] >= 2  # 100-tick episodes (or shorter: workspace exits)
    assert stats["target_rate_hz"] == pytest.approx(50.0) and stats["driver_timeouts"] == 0 and not stats["safe"]
    assert "filter_limit_ticks" in stats  # the limits came with the handshake and are checked
    assert stats["filter_rate_limited"] > 0  # a random policy's steps exceed 0.1 of the range per tick


def test_an_arm_leaving_its_workspace_latches_the_controller_safe(processes, tmp_path):
    # joint 1 (the base) at full speed: the hand swings round behind the robot, out of the box in front of it
    artifact = constant_policy(tmp_path / "policies", [0.999, 0, 0, 0, 0, 0, 0])
    endpoint = free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint, env_id=ARM)
    stats = run_controller(
        processes,
        tmp_path,
        {"driver_endpoint": endpoint, "policy": str(artifact), "ticks": 200, "safety": {"on_limit": "latch"}},
    )
    assert stats["safe"] and "workspace" in stats["safe_reason"]
    assert stats["filter_limit_workspace"] >= 1 and stats["filter_safe_ticks"] > 0
    # what the controller sent after the latch is the safe action (zero: hold the joint targets)
    log = read_log(tmp_path / "ctl" / "log")
    held = (log.extras["safety_flags"] & FilterFlags.SAFE) != 0
    assert held.any() and np.all(log.action[held] == 0.0) and np.any(log.action[~held, 0] > 0.5)
