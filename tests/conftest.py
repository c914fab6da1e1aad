"""Shared fixtures. Tests never touch the network: every Minari store is a temporary directory."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def minari_store(tmp_path, monkeypatch):
    """An empty, private Minari store (MINARI_DATASETS_PATH) for the test."""
    store = tmp_path / "minari"
    store.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    return store


@pytest.fixture
def tiny_hopper_dataset(minari_store):
    """A 6-episode synthetic dataset on Hopper-v5's spaces in the private store; returns its id."""
    from acalign_robot.data.datasets import write_dataset
    from tests.helpers import make_episodes

    write_dataset(
        "tiny-hopper-v0",
        make_episodes(6),
        "Hopper-v5",
        algorithm="synthetic",
        description="test data",
        ref_min_score=0.0,
        ref_max_score=100.0,
        extra_metadata={"kind": "medium-replay"},
    )
    return "tiny-hopper-v0"
