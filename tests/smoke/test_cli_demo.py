"""`acalign demo --task arm` (what `make demo-arm` runs) end to end on a tiny budget, and its bad input."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.smoke.test_cli import acalign

pytestmark = pytest.mark.smoke

TINY = ("random_episodes=4", "offline_steps=40", "eval_every=40", "eval_episodes=1", "session_s=25", "publish_every=40")


def test_the_arm_demo_runs_the_pipeline_on_the_twin_with_the_arms_limits(tmp_path):
    sets = [arg for value in TINY for arg in ("--set", value)]
    result = acalign("demo", "--task", "arm", "--out", str(tmp_path / "demo-arm"), *sets, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    for step in ("1/5 collect demo-pandareach-random-v0", "2/5 pretrain", "3/5 align", "4/5 export", "5/5 launch"):
        assert step in result.stdout
    (report_path,) = (tmp_path / "demo-arm" / "sessions" / "demo").glob("*/report.json")
    report = json.loads(report_path.read_text())
    assert report["failure"] is None
    (row,) = report["controllers"]
    assert row["robot"] == "panda-0" and row["ticks"] > 100 and row["episodes"] >= 1
    # the controller got the arm's limits from the driver: the filter counts them
    assert {"filter_limit_ticks", "filter_limit_workspace"} <= set(report["safety"]["panda-0"])
    driver = yaml.safe_load((report_path.parent / "panda-0-driver.yaml").read_text())
    assert driver["sim"].endswith("sim/panda_reach_twin.yaml")
    manifest = json.loads(next((tmp_path / "demo-arm" / "policies" / "demo").glob("*/manifest.json")).read_text())
    assert manifest["env_id"] == "acalign/PandaReach-v0"


def test_a_bad_demo_setting_is_exit_2_naming_the_field(tmp_path):
    result = acalign("demo", "--task", "arm", "--out", str(tmp_path), "--set", "session_s=0")
    assert result.returncode == 2 and "session_s: must be positive" in result.stderr
    result = acalign("demo", "--task", "arm", "--out", str(tmp_path), "--set", "sesion_s=10")
    assert result.returncode == 2 and "did you mean 'session_s'" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing ran
