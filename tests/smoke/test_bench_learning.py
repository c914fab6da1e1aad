"""bench/learning.py end to end on a tiny budget: the single-seed and the batched-seeds paths write the same run
directories, and finished seeds are reused by either."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke

BENCH = Path(__file__).resolve().parents[2] / "bench" / "learning.py"
TINY = ["--offline-steps", "60", "--online-steps", "120", "--eval-episodes", "1"]
SMALL_NETS = ["--set", "sac.hidden_sizes=[16, 16]", "--set", "sac.batch_size=16"]


def learning(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BENCH), "--datasets", "tiny-hopper-v0", *TINY, *SMALL_NETS, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=280, cwd=cwd)


def eval_header(run_dir: Path) -> list[str]:
    with open(run_dir / "eval.csv") as handle:
        return next(csv.reader(handle))


def test_batched_seeds_write_the_single_seed_runs_directories(tiny_hopper_dataset, tmp_path):
    out = tmp_path / "out"
    single = learning("--seeds", "1", "--methods", "aca", "--out", str(out), cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    runs = next(out.iterdir()) / tiny_hopper_dataset
    first = (runs / "aca-seed0" / "finetuned.pt").stat().st_mtime_ns

    batched = learning("--seeds", "3", "--methods", "aca", "--batched-seeds", "--out", str(out), cwd=tmp_path)
    assert batched.returncode == 0, batched.stderr[-2000:]
    assert (runs / "aca-seed0" / "finetuned.pt").stat().st_mtime_ns == first  # finished: reused, not rerun
    batch_log = (runs / "aca-batch-log.txt").read_text()
    assert "--seed 1 2" in batch_log and "aca-seed0" not in batch_log  # seeds 1 and 2, in one process
    for seed in range(3):
        run_dir = runs / f"aca-seed{seed}"
        assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in (runs / "aca-seed0").iterdir())
        assert eval_header(run_dir) == eval_header(runs / "aca-seed0")
    results = json.loads((out / next(out.iterdir()).name / "results.json").read_text())
    assert sorted(run["seed"] for run in results["runs"]) == [0, 1, 2]
    assert "| tiny-hopper-v0 | aca | 3 |" in batched.stdout


def test_a_reused_pre_training_is_aligned_with_the_preset_and_this_runs_settings(tiny_hopper_dataset, tmp_path):
    """A --set given at pre-training is stored in the offline checkpoint; a later run from it without that --set
    must not inherit it (it once carried a pre-training's w schedule into a row labelled with the preset's)."""
    from acalign_robot.algo.checkpoint import load_checkpoint

    first, second = tmp_path / "first", tmp_path / "second"
    ran = learning("--seeds", "1", "--methods", "aca", "--set", "w_min=0.3", "--out", str(first), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    scale_dir = next(first.iterdir()).name
    runs = second / scale_dir / tiny_hopper_dataset
    runs.mkdir(parents=True)
    (runs / "offline").symlink_to(first / scale_dir / tiny_hopper_dataset / "offline")  # the same pre-training
    ran = learning("--seeds", "1", "--methods", "aca", "--out", str(second), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]

    def aligned_w_min(out: Path) -> float:
        aligned = out / scale_dir / tiny_hopper_dataset / "aca-seed0" / "aligned-aca.pt"
        return load_checkpoint(aligned, "online")["config"]["w_min"]

    assert aligned_w_min(first) == 0.3
    assert aligned_w_min(second) == 0.5  # the medium preset's
