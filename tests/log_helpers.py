"""Transition logs for tests: synthetic batches, and sim logs recorded in-process (no controller process needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from acalign_robot.controller.safety import FilterFlags
from acalign_robot.wire.protocol import TransitionBatch


def synthetic_batch(seq: int, n: int, start: int, obs_dim: int = 11, action_dim: int = 3) -> TransitionBatch:
    """A batch whose every field encodes the global transition index (start .. start + n - 1), so a reader's
    output can be checked element by element. Transition i ends an episode when i % 25 == 24 (terminated on even
    episodes, truncated on odd ones)."""
    index = np.arange(start, start + n)
    ends = index % 25 == 24
    even = (index // 25) % 2 == 0
    return TransitionBatch(
        stream_id="test-0",
        seq=seq,
        policy_version=(index // 100).astype(np.int64),
        obs=(index[:, None] + np.arange(obs_dim) / 100).astype(np.float32),
        action=(index[:, None] / 1000 + np.arange(action_dim)).astype(np.float32),
        reward=(index * 0.5).astype(np.float32),
        next_obs=(index[:, None] + 1 + np.arange(obs_dim) / 100).astype(np.float32),
        terminated=ends & even,
        truncated=ends & ~even,
        extras={
            "policy_action": (index[:, None] / 1000 + np.arange(action_dim) + 0.5).astype(np.float32),
            "safety_flags": (index % 16).astype(np.int32),
        },
    )


def record_sim_log(
    directory: Path,
    env_id: str = "Hopper-v5",
    realism=None,
    *,
    episodes: int = 2,
    max_steps: int = 60,
    batch_size: int = 16,
    chunk_transitions: int = 64,
    seed: int = 0,
    runner=None,
    controller_id: str = "sim-0",
    nan_obs_ticks: frozenset[int] = frozenset(),
    nan_reward_ticks: frozenset[int] = frozenset(),
) -> Path:
    """Run a MujocoDriver in-process as the controller would (actions through a clip 'filter', batches of
    `batch_size` flushed at episode ends) and log every transition. Actions: `runner`'s deterministic ones, else
    Gaussian noise that sometimes leaves the bounds (so policy and executed actions differ). An episode still
    running after `max_steps` is truncated, like a time limit. A failed sensor: the observation after the steps
    of global tick `nan_obs_ticks` (so that tick's next_obs and the next tick's obs) and the rewards of
    `nan_reward_ticks` are NaN."""
    from acalign_robot.drivers.mujoco import MujocoDriver, RealismConfig, SimConfig
    from acalign_robot.robot_log.transition_log import TransitionLog

    driver = MujocoDriver(SimConfig(env_id, realism or RealismConfig(), seed))
    spec = driver.spec
    low, high = spec.action.low.astype(np.float32), spec.action.high.astype(np.float32)
    rng = np.random.default_rng(seed)
    log = TransitionLog(
        directory,
        controller_id,
        chunk_transitions,
        env_id=env_id,
        observation_space=spec.observation,
        action_space=spec.action,
        control_period_s=spec.control_period_s,
    )
    rows: list[tuple] = []
    seq, tick = 0, 0

    def flush() -> None:
        nonlocal seq, rows
        if not rows:
            return
        columns = list(zip(*rows))
        batch = TransitionBatch(
            stream_id=controller_id,
            seq=seq,
            policy_version=np.asarray(columns[0], np.int64),
            obs=np.stack(columns[1]),
            action=np.stack(columns[3]),
            reward=np.asarray(columns[4], np.float32),
            next_obs=np.stack(columns[5]),
            terminated=np.asarray(columns[6], bool),
            truncated=np.asarray(columns[7], bool),
            extras={"policy_action": np.stack(columns[2]), "safety_flags": np.asarray(columns[8], np.int32)},
        )
        log.write(batch, timestamps=np.asarray(columns[9]))
        seq, rows = seq + 1, []

    try:
        for episode in range(episodes):
            obs = driver.reset(seed + episode)
            for step in range(max_steps):
                if runner is not None:
                    policy_action = runner.act(obs)
                else:
                    policy_action = rng.normal(0.0, 0.6, size=low.shape).astype(np.float32)
                action = np.clip(policy_action, low, high)
                flags = FilterFlags.CLIPPED if not np.array_equal(action, policy_action) else 0
                result = driver.step(action)
                sensed_obs = np.full_like(result.obs, np.nan) if tick in nan_obs_ticks else result.obs
                reward = np.nan if tick in nan_reward_ticks else result.reward
                truncated = result.truncated or step == max_steps - 1
                timestamp = 1.7e9 + tick * spec.control_period_s
                rows.append(
                    (episode + 1, obs, policy_action, action, reward, sensed_obs)
                    + (result.terminated, truncated and not result.terminated, flags, timestamp)
                )
                tick += 1
                obs = sensed_obs
                if len(rows) == batch_size:
                    flush()
                if result.terminated or truncated:
                    break
            flush()
    finally:
        log.close()
        driver.close()
    return Path(directory)
