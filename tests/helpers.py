"""Helpers shared by tests (importable as tests.helpers)."""

from __future__ import annotations

import numpy as np


def make_episodes(count: int, obs_dim: int = 11, action_dim: int = 3, seed: int = 0, length: int = 20):
    """Synthetic episodes with known returns; episode i ends terminated when i is even, truncated when odd."""
    from acalign_robot.data.datasets import EpisodeRecord

    rng = np.random.default_rng(seed)
    episodes = []
    for index in range(count):
        steps = length + index
        terminations = np.zeros(steps, dtype=bool)
        truncations = np.zeros(steps, dtype=bool)
        (terminations if index % 2 == 0 else truncations)[-1] = True
        episodes.append(
            EpisodeRecord(
                observations=rng.normal(size=(steps + 1, obs_dim)).astype(np.float32),
                actions=rng.uniform(-1, 1, size=(steps, action_dim)).astype(np.float32),
                rewards=np.full(steps, float(index), dtype=np.float32),
                terminations=terminations,
                truncations=truncations,
                seed=index,
            )
        )
    return episodes
