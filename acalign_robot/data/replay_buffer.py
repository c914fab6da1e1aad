"""A preallocated numpy ring buffer of transitions with uniform sampling.

Used for offline data (a buffer as large as the dataset), online fine-tuning and the learner process. Stores
float32; `terminated` is the environment's termination (no bootstrap). Time-limit truncations are not stored as
terminals, so targets bootstrap through them.

A transition whose observation, next observation, action or reward is NaN or inf (a failed sensor on a robot) is
never stored: it is counted in `nonfinite_dropped`. One such row would make every network that samples it, and so
every checkpoint, non-finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from acalign_robot.data.datasets import TransitionView

__all__ = ["Batch", "ReplayBuffer"]


@dataclass(frozen=True)
class Batch:
    """A sampled batch; every array has the batch as its first axis."""

    obs: np.ndarray  # (B, obs_dim) float32
    action: np.ndarray  # (B, action_dim) float32
    reward: np.ndarray  # (B,) float32
    next_obs: np.ndarray  # (B, obs_dim) float32
    terminated: np.ndarray  # (B,) float32, 1.0 where the episode terminated (no bootstrap)


class ReplayBuffer:
    """Fixed-capacity FIFO ring buffer; the oldest transitions are overwritten when full."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros((capacity, action_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self._next_index = 0
        self._size = 0
        self._added = 0
        self.nonfinite_dropped = 0  # rows refused by add / add_batch (not saved in state_dict)
        self.reward_abs_max = 0.0  # max |reward| of every row stored so far (a scale for divergence bounds)

    def __len__(self) -> int:
        return self._size

    @property
    def total_added(self) -> int:
        """Transitions added since creation (including overwritten ones)."""
        return self._added

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        """Add one transition."""
        self.add_batch(
            np.asarray(obs)[None],
            np.asarray(action)[None],
            np.asarray([reward]),
            np.asarray(next_obs)[None],
            np.asarray([terminated]),
        )

    def add_batch(self, obs, action, reward, next_obs, terminated) -> None:
        """Add n transitions (arrays with n rows), wrapping around the end of the ring; non-finite rows are dropped."""
        obs, action, reward, next_obs = map(np.asarray, (obs, action, reward, next_obs))
        finite = (
            np.isfinite(obs).all(axis=1)
            & np.isfinite(action).all(axis=1)
            & np.isfinite(reward)
            & np.isfinite(next_obs).all(axis=1)
        )
        if not finite.all():
            self.nonfinite_dropped += int(len(finite) - finite.sum())
            obs, action, reward, next_obs = obs[finite], action[finite], reward[finite], next_obs[finite]
            terminated = np.asarray(terminated)[finite]
        count = len(reward)
        if count == 0:
            return
        self.reward_abs_max = max(self.reward_abs_max, float(np.abs(reward).max()))
        if count > self.capacity:  # only the newest `capacity` rows can survive
            obs, action, reward = obs[-self.capacity :], action[-self.capacity :], reward[-self.capacity :]
            next_obs, terminated = next_obs[-self.capacity :], terminated[-self.capacity :]
            self._added += count - self.capacity
            count = self.capacity
        indices = (self._next_index + np.arange(count)) % self.capacity
        self.obs[indices] = obs
        self.action[indices] = action
        self.reward[indices] = reward
        self.next_obs[indices] = next_obs
        self.terminated[indices] = terminated
        self._next_index = int((self._next_index + count) % self.capacity)
        self._size = min(self._size + count, self.capacity)
        self._added += count

    def add_view(self, view: TransitionView, indices: np.ndarray | None = None) -> None:
        """Add transitions of a dataset (all of them, or the given indices)."""
        if indices is None:
            indices = np.arange(len(view))
        self.add_batch(
            view.observations[indices],
            view.actions[indices],
            view.rewards[indices],
            view.next_observations[indices],
            view.terminals[indices].astype(np.float32),
        )

    @classmethod
    def from_view(cls, view: TransitionView, capacity: int | None = None) -> ReplayBuffer:
        buffer = cls(capacity or len(view), view.obs_dim, view.action_dim)
        buffer.add_view(view)
        return buffer

    def seed_with_top_trajectories(self, view: TransitionView, count: int) -> int:
        """Copy the `count` highest-return trajectories of `view` in (ALGORITHM.md phase 2, step 5).

        Returns the number of transitions added.
        """
        indices = view.top_episode_indices(count)
        if len(indices):
            self.add_view(view, indices)
        return len(indices)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """Uniform sample with replacement from what the buffer holds."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        indices = rng.integers(0, self._size, size=batch_size)
        return Batch(
            obs=self.obs[indices],
            action=self.action[indices],
            reward=self.reward[indices],
            next_obs=self.next_obs[indices],
            terminated=self.terminated[indices],
        )

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Contents and position, for checkpoints (arrays are trimmed to the filled part)."""
        return {
            "capacity": self.capacity,
            "obs": self.obs[: self._size].copy(),
            "action": self.action[: self._size].copy(),
            "reward": self.reward[: self._size].copy(),
            "next_obs": self.next_obs[: self._size].copy(),
            "terminated": self.terminated[: self._size].copy(),
            "next_index": self._next_index,
            "added": self._added,
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"buffer capacity {self.capacity} does not match the saved {state['capacity']}")
        size = len(state["reward"])
        for name in ("obs", "action", "reward", "next_obs", "terminated"):
            getattr(self, name)[:size] = state[name]
        self._size = size
        self._next_index = int(state["next_index"])
        self._added = int(state["added"])
        self.reward_abs_max = float(np.abs(self.reward[:size]).max()) if size else 0.0
