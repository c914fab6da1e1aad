"""A behaviour run's snapshots exported on their own (`acalign collect --export-behaviour`): only the snapshots asked
for, their evaluations, merged across exports, and refused for medium-replay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acalign_robot.data.collect import BehaviourRun
from acalign_robot.data.datasets import DatasetError

STEPS = (250, 500, 750, 1000)


@pytest.fixture
def full_run(tmp_path) -> BehaviourRun:
    """A finished behaviour run on disk, its snapshots standing in as distinct bytes (nothing here loads them)."""
    run = BehaviourRun.for_env(tmp_path / "runs", "Hopper-v5", 0)
    (run.directory / "snapshots").mkdir(parents=True)
    for step in STEPS:
        run.snapshot_path(step).write_bytes(f"actor at {step}".encode())
    (run.directory / "evals.jsonl").write_text(
        "".join(json.dumps({"step": s, "return_mean": s / 10}) + "\n" for s in STEPS)
    )
    (run.directory / "done.json").write_text(json.dumps({"env_id": "Hopper-v5", "steps": 1000, "seed": 0}))
    return run


def test_an_export_holds_only_the_snapshots_asked_for_and_their_evaluations(full_run, tmp_path):
    exported = full_run.export_snapshots(tmp_path / "shipped", expert_step=1000, medium_step=500)

    assert exported.complete and exported.snapshots_only and not full_run.snapshots_only
    assert sorted(p.name for p in (exported.directory / "snapshots").iterdir()) == [
        "actor_00000500.pt",
        "actor_00001000.pt",
    ]
    assert exported.snapshot_path(500).read_bytes() == b"actor at 500"
    assert [e["step"] for e in exported.evaluations()] == [500, 1000]
    assert exported.summary()["steps"] == 1000 and exported.summary()["medium_snapshot_step"] == 500


def test_a_second_export_adds_to_the_first_and_keeps_its_medium(full_run, tmp_path):
    full_run.export_snapshots(tmp_path / "shipped", expert_step=1000, medium_step=None)
    exported = full_run.export_snapshots(tmp_path / "shipped", expert_step=1000, medium_step=250)
    assert [e["step"] for e in exported.evaluations()] == [250, 1000]
    assert exported.snapshot_path(250).exists() and exported.snapshot_path(1000).exists()

    exported = full_run.export_snapshots(tmp_path / "shipped", expert_step=750, medium_step=None)
    assert [e["step"] for e in exported.evaluations()] == [250, 750, 1000]
    assert exported.summary()["medium_snapshot_step"] == 250


def test_medium_replay_from_an_export_is_refused_with_the_reason(full_run, tmp_path):
    exported = full_run.export_snapshots(tmp_path / "shipped", expert_step=1000, medium_step=500)

    with pytest.raises(DatasetError, match="exported snapshots only"):
        exported.training_episodes(500)


def test_medium_replay_reads_the_training_episodes_once_and_by_episode_end(full_run):
    """Every episode is a view of one array per field: a copy per episode made a 300k-step run's medium-replay grow
    past 12 GB."""
    lengths = [3, 5, 2]
    steps = sum(lengths)
    np.savez_compressed(
        full_run.directory / "training_episodes.npz",
        observations=np.arange((steps + len(lengths)) * 2, dtype=np.float64).reshape(-1, 2),
        actions=np.zeros((steps, 1)),
        rewards=np.arange(steps, dtype=np.float64),
        terminations=np.zeros(steps, bool),
        truncations=np.ones(steps, bool),
        lengths=np.asarray(lengths),
        env_step_at_episode_end=np.cumsum(lengths),
    )

    episodes = full_run.training_episodes(until_step=8)

    assert [len(e.rewards) for e in episodes] == [3, 5]
    assert episodes[1].rewards.tolist() == [3, 4, 5, 6, 7]
    assert episodes[1].observations[0].tolist() == [8, 9]  # each episode holds its final observation too
    assert episodes[0].observations.base is episodes[1].observations.base
    assert episodes[0].rewards.base is episodes[1].rewards.base
