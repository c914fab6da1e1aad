"""`acalign export` and `acalign policies list|show` as subprocesses on a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.smoke


def acalign(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "acalign_robot.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "MUJOCO_GL": "egl"},
    )


def test_export_list_show_and_eval(tmp_path, make_checkpoint):
    checkpoint = make_checkpoint("Hopper-v5")
    store = str(tmp_path / "policies")

    exported = acalign("export", str(checkpoint), "--name", "tiny", "--policies-dir", store)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("policy tiny/1: ")
    assert "Traceback" not in exported.stderr

    listed = acalign("policies", "list", "--policies-dir", store)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "LATEST", "VERSIONS", "ENV"]
    assert row.split()[:4] == ["tiny", "1", "1", "Hopper-v5"]

    shown = acalign("policies", "show", "tiny/1", "--policies-dir", store)
    assert shown.returncode == 0, shown.stderr
    manifest = json.loads(shown.stdout)
    assert (manifest["name"], manifest["version"]) == ("tiny", 1)
    assert "sha256 verified" in shown.stderr

    evaluated = acalign("eval", str(tmp_path / "policies" / "tiny"), "--episodes", "1")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["env_id"] == "Hopper-v5"


def test_bad_policy_references_are_exit_2_with_one_line(tmp_path):
    store = str(tmp_path / "policies")
    assert acalign("policies", "list", "--policies-dir", store).stdout.startswith("no policies in")
    for args in (("policies", "show", "nope"), ("policies", "show", "nope/x"), ("policies", "show", "../etc")):
        result = acalign(*args, "--policies-dir", store)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
