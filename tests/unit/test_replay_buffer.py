import numpy as np
import pytest

from acalign_robot.data.datasets import TransitionView
from acalign_robot.data.replay_buffer import ReplayBuffer


def _view(returns, length=3):
    """Episodes of `length` steps whose rewards sum to the given returns; obs encode the episode index."""
    count = len(returns)
    n = count * length
    episode_of = np.repeat(np.arange(count), length)
    return TransitionView(
        observations=episode_of[:, None].astype(np.float32).repeat(2, 1),
        actions=np.zeros((n, 1), np.float32),
        rewards=np.repeat(np.asarray(returns, np.float32) / length, length),
        next_observations=episode_of[:, None].astype(np.float32).repeat(2, 1),
        terminals=np.zeros(n, bool),
        truncations=np.tile([False] * (length - 1) + [True], count),
        episode_starts=np.arange(count) * length,
    )


def test_wrap_around_keeps_newest():
    buffer = ReplayBuffer(5, obs_dim=1, action_dim=1)
    for i in range(8):
        buffer.add([i], [0.0], float(i), [i + 1], 0.0)
    assert len(buffer) == 5 and buffer.total_added == 8
    assert sorted(buffer.reward.tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_batch_larger_than_capacity_keeps_last_rows():
    buffer = ReplayBuffer(4, obs_dim=1, action_dim=1)
    n = 10
    buffer.add_batch(np.arange(n)[:, None], np.zeros((n, 1)), np.arange(n), np.arange(n)[:, None], np.zeros(n))
    assert sorted(buffer.reward.tolist()) == [6.0, 7.0, 8.0, 9.0]


def test_sample_is_float32_and_seeded():
    buffer = ReplayBuffer.from_view(_view([1, 2, 3]))
    first = buffer.sample(16, np.random.default_rng(0))
    second = buffer.sample(16, np.random.default_rng(0))
    assert first.obs.dtype == np.float32 and first.obs.shape == (16, 2)
    np.testing.assert_array_equal(first.reward, second.reward)


def test_empty_buffer_refuses_to_sample():
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(3, 1, 1).sample(1, np.random.default_rng(0))


def test_top_trajectories_seeding_takes_highest_returns():
    view = _view([5.0, 50.0, 1.0, 30.0])
    buffer = ReplayBuffer(100, obs_dim=2, action_dim=1)
    added = buffer.seed_with_top_trajectories(view, 2)
    assert added == 6
    assert set(buffer.obs[: len(buffer), 0].tolist()) == {1.0, 3.0}


def test_state_dict_round_trip():
    buffer = ReplayBuffer.from_view(_view([1, 2]), capacity=10)
    restored = ReplayBuffer(10, 2, 1)
    restored.load_state_dict(buffer.state_dict())
    assert len(restored) == len(buffer) and restored.total_added == buffer.total_added
    np.testing.assert_array_equal(restored.reward[: len(buffer)], buffer.reward[: len(buffer)])
