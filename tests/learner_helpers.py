"""A tiny aligned ('online') checkpoint and transition batches for the learner tests (importable as tests.*)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

OBS_DIM, ACTION_DIM = 11, 3
# Not [-1, 1]: the learner must map the controllers' env-unit actions back into the agent's [-1, 1].
ACTION_LOW = np.array([-2.0, 0.0, -0.5], dtype=np.float32)
ACTION_HIGH = np.array([2.0, 1.0, 3.5], dtype=np.float32)


def write_aligned_checkpoint(
    path: Path, *, seeded: int = 64, batch_size: int = 32, hidden: int = 16, seed: int = 0
) -> Path:
    """What `acalign align` writes, small: phase 1 on random data (a few updates), phase 2, a buffer seeded with
    `seeded` random transitions (standing in for the top trajectories), Hopper-v5 sizes with non-unit bounds."""
    import torch

    from acalign_robot import config as config_io
    from acalign_robot.algo.aca import OfflineACA, align, load_preset
    from acalign_robot.algo.checkpoint import online_state, save_checkpoint
    from acalign_robot.data.replay_buffer import ReplayBuffer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = load_preset("medium", (f"sac.hidden_sizes=[{hidden}, {hidden}]", f"sac.batch_size={batch_size}"))
    offline_data = ReplayBuffer(256, OBS_DIM, ACTION_DIM)
    offline_data.add_batch(*random_transitions(rng, 256))
    offline = OfflineACA(OBS_DIM, ACTION_DIM, config, offline_data.obs)
    for _ in range(3):
        offline.update(offline_data.sample(batch_size, rng))
    agent = align(offline)
    buffer = ReplayBuffer(10_000, OBS_DIM, ACTION_DIM)
    if seeded:
        buffer.add_batch(*random_transitions(rng, seeded))
    meta = {
        "env_id": "Hopper-v5",
        "obs_dim": OBS_DIM,
        "action_dim": ACTION_DIM,
        "action_low": ACTION_LOW.tolist(),
        "action_high": ACTION_HIGH.tolist(),
        "datasets": [],
        "offline_steps": 3,
        "ref_random": 0.0,
        "ref_expert": 100.0,
        "ref_source": "test",
        "finetune": "aca",
    }
    state = online_state(agent, buffer, env_steps=0)
    return save_checkpoint(path, "online", state, config_io.to_dict(config), meta)


def random_transitions(rng: np.random.Generator, count: int) -> tuple[np.ndarray, ...]:
    """(obs, action in [-1, 1], reward, next_obs, terminated) as ReplayBuffer.add_batch takes them."""
    return (
        rng.normal(size=(count, OBS_DIM)).astype(np.float32),
        rng.uniform(-1, 1, size=(count, ACTION_DIM)).astype(np.float32),
        rng.normal(size=count).astype(np.float32),
        rng.normal(size=(count, OBS_DIM)).astype(np.float32),
        (rng.random(count) < 0.05).astype(np.float32),
    )


def transition_batch(
    stream_id: str,
    seq: int,
    count: int,
    seed: int = 0,
    resend_from: int | None = 0,
    episode_return: float | None = None,
):
    """A TransitionBatch as a controller sends it: actions in the env's units (within ACTION_LOW..ACTION_HIGH).

    `resend_from` 0: from a controller that can still resend every batch of its stream (None: one that resends none).
    `episode_return`: the batch's last transition ends an episode (truncated) with this return.
    """
    from acalign_robot.wire.protocol import TransitionBatch

    rng = np.random.default_rng(seed)
    unit_action = rng.uniform(-1, 1, size=(count, ACTION_DIM)).astype(np.float32)
    return TransitionBatch(
        stream_id=stream_id,
        seq=seq,
        policy_version=np.ones(count, np.int64),
        obs=rng.normal(size=(count, OBS_DIM)).astype(np.float32),
        action=(ACTION_LOW + (unit_action + 1) / 2 * (ACTION_HIGH - ACTION_LOW)).astype(np.float32),
        reward=rng.normal(size=count).astype(np.float32),
        next_obs=rng.normal(size=(count, OBS_DIM)).astype(np.float32),
        terminated=np.zeros(count, bool),
        truncated=np.arange(count) == count - 1 if episode_return is not None else np.zeros(count, bool),
        resend_from=resend_from,
        episode_return=episode_return,
    )
