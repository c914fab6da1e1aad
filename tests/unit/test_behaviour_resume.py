"""A behaviour run that was stopped continues from its last resume point and makes what an unstopped run makes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import acalign_robot.algo.env_loop as env_loop
from acalign_robot.data.collect import BehaviourRun
from acalign_robot.data.datasets import DatasetError

SETTINGS = {"env_id": "Hopper-v5", "steps": 390, "seed": 0, "eval_every": 130, "eval_episodes": 1, "warmup": 50}


class Stopped(Exception):
    pass


def _stop_at_third_evaluation(monkeypatch) -> None:
    """The run dies at step 390's evaluation: after the resume point at 260 (its buffer passed the batch size of 256
    at step 257, so the agent and its optimisers have moved), before the next one."""
    evaluate, calls = env_loop.evaluate, []

    def evaluate_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Stopped
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(env_loop, "evaluate", evaluate_then_stop)


def test_a_stopped_behaviour_run_continues_to_the_same_snapshots_and_episodes(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = BehaviourRun(tmp_path / "straight")
        straight.train(**SETTINGS)

        resumed = BehaviourRun(tmp_path / "resumed")
        with monkeypatch.context() as patch:
            _stop_at_third_evaluation(patch)
            with pytest.raises(Stopped):
                resumed.train(**SETTINGS)
        assert resumed.resume_path.exists() and not resumed.complete
        assert [e["step"] for e in resumed.evaluations()] == [130, 260]
        with pytest.raises(DatasetError, match="remove it to start again"):
            resumed.train(**{**SETTINGS, "steps": 520})
        resumed.train(**SETTINGS)
    finally:
        torch.set_num_threads(threads)

    assert resumed.complete and not resumed.resume_path.exists()
    assert resumed.evaluations() == straight.evaluations()
    for step in (130, 260, 390):
        ours, theirs = (torch.load(r.snapshot_path(step), weights_only=True) for r in (resumed, straight))
        for name, value in theirs["agent"]["actor"].items():
            torch.testing.assert_close(ours["agent"]["actor"][name], value, rtol=0, atol=0)
    ours, theirs = (np.load(r.directory / "training_episodes.npz") for r in (resumed, straight))
    assert sorted(ours.files) == sorted(theirs.files)
    for name in theirs.files:
        np.testing.assert_array_equal(ours[name], theirs[name])
    logged = [json.loads(line)["step"] for line in (resumed.directory / "metrics.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged))  # the steps logged before the stop are not logged twice


def test_a_damaged_resume_point_is_named_and_nothing_is_trained(tmp_path):
    run = BehaviourRun(tmp_path / "run")
    run.directory.mkdir(parents=True)
    run.resume_path.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    with pytest.raises(DatasetError, match=r"resume\.pt is damaged .*remove it to start the run again"):
        run.train(**SETTINGS)
    assert not run.complete and not (run.directory / "snapshots").exists()
