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


@pytest.fixture
def make_checkpoint(tmp_path):
    """Factory: an untrained phase-1 ('offline') checkpoint on an env's spaces, saved as `acalign pretrain` saves one.

    Small (2x32) networks; the normaliser is fitted to shifted, scaled random observations so that exports exercise
    the normalisation; meta carries the env's action bounds and reference scores 0 / 100.
    """

    def make(env_id: str = "Hopper-v5", filename: str = "offline.pt", seed: int = 0):
        import gymnasium as gym
        import numpy as np
        import torch

        from acalign_robot import config as config_io
        from acalign_robot.algo.aca import OfflineACA, load_preset
        from acalign_robot.algo.checkpoint import save_checkpoint

        env = gym.make(env_id)
        obs_dim, bounds = env.observation_space.shape[0], env.unwrapped.action_space
        env.close()
        torch.manual_seed(seed)
        config = load_preset("medium", ("sac.hidden_sizes=[32, 32]",))
        observations = np.random.default_rng(seed).normal(0.5, 2.0, size=(256, obs_dim)).astype(np.float32)
        agent = OfflineACA(obs_dim, bounds.shape[0], config, observations)
        meta = {
            "env_id": env_id,
            "obs_dim": obs_dim,
            "action_dim": bounds.shape[0],
            "action_low": bounds.low.tolist(),
            "action_high": bounds.high.tolist(),
            "datasets": [],
            "offline_steps": 0,
            "ref_random": 0.0,
            "ref_expert": 100.0,
            "ref_source": "test",
        }
        return save_checkpoint(tmp_path / filename, "offline", agent.state_dict(), config_io.to_dict(config), meta)

    return make


@pytest.fixture
def processes():
    """Start child processes with `processes.start(args, log_path)`; every one is killed at teardown."""
    from tests.helpers import Processes

    with Processes() as started:
        yield started


@pytest.fixture
def hopper_policy(tmp_path, make_checkpoint):
    """An exported (untrained, small) Hopper-v5 policy artifact directory."""
    from acalign_robot.export.onnx_export import write_artifact

    return write_artifact(make_checkpoint("Hopper-v5"), "hopper-test", tmp_path / "policies")


@pytest.fixture
def aligned_hopper_checkpoint(tmp_path, make_checkpoint):
    """An 'online' (aligned) checkpoint of a small untrained Hopper agent, as `acalign align` writes it."""
    from acalign_robot.algo.aca import load_preset
    from acalign_robot.algo.pipeline import align_checkpoint

    offline = make_checkpoint("Hopper-v5")
    config = load_preset("medium", ("sac.hidden_sizes=[32, 32]", "sac.batch_size=64"))
    return align_checkpoint(offline, tmp_path / "aligned-aca.pt", config, buffer_capacity=50_000)


@pytest.fixture
def context():
    """A ZeroMQ context of the test's own; destroying it at teardown closes any socket the test left open."""
    import zmq

    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
def client_context():
    """The connecting side's own ZeroMQ context (a robot computer's process); destroying it closes the test's
    clients."""
    import zmq

    context = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)
