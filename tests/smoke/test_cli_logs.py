"""`acalign logs convert` and `acalign replay open-loop|render|eval` as a user runs them, on a tiny sim log."""

from __future__ import annotations

import json

import pytest

from acalign_robot.cli import main
from tests.log_helpers import record_sim_log
from tests.smoke.test_cli import acalign

pytestmark = pytest.mark.smoke


@pytest.fixture
def session(tmp_path):
    """A session directory with one controller's log (Hopper-v5, 2 short episodes)."""
    record_sim_log(tmp_path / "session" / "controller-0" / "log", episodes=2, max_steps=20)
    return tmp_path / "session"


def test_convert_and_replay_commands(session, minari_store, tmp_path):
    result = acalign("logs", "convert", str(session), "--name", "robot-log")
    assert result.returncode == 0, result.stderr
    assert "wrote robot-log-v0: 2 episodes (0 partial)" in result.stdout
    assert (minari_store / "robot-log-v0").is_dir()
    again = acalign("logs", "convert", str(session), "--name", "robot-log")
    assert again.returncode == 2 and "already exists" in again.stderr

    result = acalign("replay", "open-loop", str(session / "controller-0"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["episodes"] == 2 and summary["divergence_max"] < 1e-4
    assert (session / "controller-0" / "open-loop" / "divergence.png").is_file()

    video = tmp_path / "video.mp4"
    result = acalign("replay", "render", str(session / "controller-0" / "log"), "--out", str(video), "--width", "64")
    assert result.returncode == 0, result.stderr
    assert video.stat().st_size > 0 and "frames" in result.stdout


def test_eval_command(session, hopper_policy, make_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(
        [
            "replay",
            "eval",
            str(session),
            "--policy",
            str(hopper_policy),
            "--checkpoint",
            str(make_checkpoint("Hopper-v5")),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert result["critic"]["finite"] and len(result["vs_executed_action"]["max_abs_per_dim"]) == 3


def test_bad_input_is_exit_2_with_one_line(tmp_path, session, minari_store):
    result = acalign("replay", "open-loop", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "no transition log here" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = acalign("logs", "convert", str(session), "--name", "x", "--env", "Walker2d-v5")
    assert result.returncode == 2 and "obs/action dims 11/3, but Walker2d-v5 has 17/6" in result.stderr
