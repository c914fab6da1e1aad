"""`sinks: {tensorboard: true, rerun: save}` on a real `acalign launch` (MuJoCo Hopper driver and controller): the
session's episode returns reach TensorBoard, its logged transitions reach the rerun recording."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.helpers import acalign_command

pytestmark = pytest.mark.integration


def test_a_session_writes_its_tensorboard_scalars_and_rerun_recording(tmp_path, hopper_policy):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    pytest.importorskip("rerun", reason="the rerun extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    launch = {
        "session": "sinks",
        "output_dir": str(tmp_path / "sessions"),
        "robots": [
            {
                "name": "hopper-0",
                "driver": {"kind": "mujoco", "env_id": "Hopper-v5"},
                "controller": {"policy": str(hopper_policy), "explore": False, "episodes": 40},
            }
        ],
        "operator_page": {"enabled": False},
        "sinks": {"tensorboard": True, "rerun": "save"},
    }
    path = tmp_path / "sinks.yaml"
    path.write_text(yaml.safe_dump(launch, sort_keys=False))
    result = subprocess.run(acalign_command("launch", str(path)), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "operator page" not in result.stdout and "live feed" not in result.stderr, result.stderr
    (session_dir,) = (tmp_path / "sessions" / "sinks").glob("*")

    events = EventAccumulator(str(session_dir / "tensorboard"))
    events.Reload()
    returns = events.Scalars("hopper-0/episode_return")
    assert [e.step for e in returns] == list(range(1, 41))  # every episode once, the last ones from the final status
    assert events.Scalars("hopper-0/tick_p99_ms")

    printed = subprocess.run(
        [sys.executable, "-m", "rerun", "rrd", "print", str(session_dir / "session.rrd")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr
    for entity in ("/hopper-0/observation", "/hopper-0/action/executed", "/hopper-0/action/policy"):
        assert f" - {entity} - " in printed.stdout, entity
