"""Offline replay of controller logs (`acalign replay`): open-loop divergence, headless video, policy evaluation.

Open loop: each logged episode starts the MuJoCo sim in the logged start state, then applies the logged executed
actions one by one, ignoring what the sim does; the L2 norm of (replayed - logged) observation per step says how
far the sim's dynamics are from the system that was logged. A log of the same sim replays with ~1e-6 divergence
(float32 rounding); command latency, sensor noise or a different robot show up as divergence growing with time.

Setting the logged start state. The log records observations, not simulator state, and no seed (the controller's
reset seed is not part of a transition), so replaying "from the same seed" is not available; the state is rebuilt
from the observation instead. gymnasium's MuJoCo locomotion and pendulum envs observe (qpos[k:], qvel): their
first k position coordinates (k = 1 for Hopper, Walker2d and HalfCheetah: the x position; 2 for Swimmer: x, y;
0 for InvertedPendulum) are left out, and the dynamics do not depend on them. So
    k = nq + nv - obs_dim,  qpos = (init_qpos[:k], obs[:nq - k]),  qvel = obs[nq - k:]
and `env.unwrapped.set_state(qpos, qvel)`. An env whose observation is not of that form (Ant-v5 with contact forces,
Humanoid, Reacher, InvertedDoublePendulum) is refused with a ReplayError. Hopper and Walker2d clip observed
velocities to +-10: a state with a faster joint cannot be rebuilt exactly, which shows as divergence at step 0
(reported apart as `start_divergence`).

Video: each logged observation is set as the sim's state and rendered (headless, MUJOCO_GL=egl by default), so the
video shows what was logged, not a re-simulation. The left-out coordinates are integrated from the observed
velocities (qpos[:k] += qvel[:k] * dt) so that a hopper travels across the floor as it did.

Policy evaluation: a policy artifact's deterministic actions on the logged observations against the logged actions;
with a checkpoint, its critic's value estimates on the logged (observation, executed action) pairs (min over the
ensemble; for an ACA online checkpoint the aligned value R + w * prior, as in phase 3's critic). That part imports
torch lazily.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from acalign_robot.errors import InputError
from acalign_robot.robot_log.reader import LogData, find_logs, read_log

__all__ = [
    "ReplayError",
    "StateSetter",
    "critic_values_summary",
    "evaluate_on_log",
    "open_loop",
    "read_single_log",
    "render_log",
    "summary_stats",
]

_VIDEO_FPS = 30.0  # target playback rate: frames are subsampled from the control rate to about this
_log = logging.getLogger(__name__)


class ReplayError(InputError):
    """A log that cannot be replayed as asked (no env id, an env whose state cannot be rebuilt, bad sizes)."""


def read_single_log(path: str | os.PathLike) -> LogData:
    """The one log at `path` (a log directory or a controller directory); a session with several is refused.

    A damaged chunk is an error (LogError naming it); missing and temp chunks are logged as warnings, one each."""
    found = find_logs(path)
    if len(found) > 1:
        names = ", ".join(str(directory) for directory in found)
        raise ReplayError(f"{path}: holds {len(found)} logs ({names}); name one of them")
    log = read_log(found[0])
    for problem in log.problems:
        _log.warning("%s", problem)
    return log


def _env_id(log: LogData, env_id: str | None) -> str:
    env_id = env_id or log.env_id
    if env_id is None:
        raise ReplayError(f"{log.directory}: the log records no env id; pass --env")
    return env_id


def _make_env(env_id: str, **kwargs: Any):
    import gymnasium as gym

    import acalign_robot.sim_tasks  # noqa: F401 - registers the acalign/ env ids

    try:
        return gym.make(env_id, **kwargs)
    except Exception as exc:  # gymnasium raises several types for an unknown or broken env id
        raise ReplayError(f"env {env_id}: cannot be created ({type(exc).__name__}: {exc})") from None


class StateSetter:
    """Sets a gymnasium MuJoCo env's state from one of its observations (the layout in the module docstring)."""

    def __init__(self, env: Any, env_id: str, obs_dim: int):
        self.sim = env.unwrapped
        model = getattr(self.sim, "model", None)
        if model is None or not hasattr(self.sim, "set_state"):
            raise ReplayError(f"{env_id} is not a MuJoCo env: its state cannot be set")
        self.nq, self.nv = model.nq, model.nv
        self.hidden = self.nq + self.nv - obs_dim  # k: the leading qpos coordinates the observation leaves out
        if not 0 <= self.hidden <= self.nq:
            raise ReplayError(
                f"{env_id}: its {obs_dim}-dim observation is not (qpos[k:], qvel) with nq={self.nq}, nv={self.nv}; "
                "its state cannot be rebuilt from an observation"
            )
        # The left-out coordinates can be integrated from their velocities only where qpos and qvel align (no
        # free joints or quaternions).
        self.integrable = self.nq == self.nv
        self.reset_hidden()

    def reset_hidden(self) -> None:
        self.hidden_qpos = np.array(self.sim.init_qpos[: self.hidden], dtype=np.float64)

    def set(self, obs: np.ndarray) -> None:
        obs = np.asarray(obs, dtype=np.float64)
        qpos = np.concatenate([self.hidden_qpos, obs[: self.nq - self.hidden]])
        self.sim.set_state(qpos, obs[self.nq - self.hidden :])

    def advance_hidden(self, obs: np.ndarray) -> None:
        """Integrate the left-out coordinates over one control period with the velocities observed in `obs`."""
        if self.integrable and self.hidden:
            velocity = np.asarray(obs[self.nq - self.hidden : self.nq], dtype=np.float64)  # qvel[:k]
            self.hidden_qpos += velocity * self.sim.dt


def summary_stats(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    percentiles = np.percentile(values, [5, 50, 95])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "p5": float(percentiles[0]),
        "p50": float(percentiles[1]),
        "p95": float(percentiles[2]),
        "max": float(values.max()),
    }


# --- open loop ----------------------------------------------------------------------------------------------------


def open_loop(log: LogData, env_id: str | None = None, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Replay every logged episode open loop; per-step divergence statistics (and a PNG + JSON in `out_dir`)."""
    env_id = _env_id(log, env_id)
    env = _make_env(env_id)
    try:
        setter = StateSetter(env, env_id, log.obs_dim)
        if env.action_space.shape != (log.action_dim,):
            raise ReplayError(f"{log.directory}: {log.action_dim}-dim actions, {env_id} takes {env.action_space.shape}")
        env.reset(seed=0)  # gymnasium envs refuse to step before their first reset
        divergences, starts, early = [], [], 0
        for episode in log.episodes:
            observed = log.episode_observations(episode)
            setter.reset_hidden()
            setter.set(observed[0])
            # _get_obs: every gymnasium MuJoCo env's observation of its current state (what reset/step return).
            starts.append(float(np.linalg.norm(setter.sim._get_obs() - observed[0])))
            errors = np.empty(len(episode))
            ended_at = None
            for t, action in enumerate(log.action[episode.slice]):
                # The unwrapped env: no time limit or order checks, the log decides the episode's length.
                obs, _, terminated, _, _ = setter.sim.step(np.asarray(action, dtype=np.float64))
                errors[t] = np.linalg.norm(obs - observed[t + 1])
                if terminated and ended_at is None:
                    ended_at = t
            early += ended_at is not None and ended_at < len(episode) - 1
            divergences.append(errors)
    finally:
        env.close()
    longest = max(len(errors) for errors in divergences)
    table = np.full((len(divergences), longest), np.nan)
    for row, errors in zip(table, divergences):
        row[: len(errors)] = errors
    result = {
        "log": str(log.directory),
        "env_id": env_id,
        "episodes": len(divergences),
        "steps": int(sum(len(errors) for errors in divergences)),
        "start_divergence_max": float(max(starts)),
        "divergence_mean": float(np.nanmean(table)),
        "divergence_max": float(np.nanmax(table)),
        "final_divergence_mean": float(np.mean([errors[-1] for errors in divergences])),
        "replays_terminated_early": int(early),
        "per_step_mean": np.nanmean(table, axis=0).tolist(),  # index t: after the t-th action, over episodes
        "per_step_max": np.nanmax(table, axis=0).tolist(),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "open_loop.json").write_text(json.dumps(result, indent=1))
        _plot_divergence(result, out_dir / "divergence.png")
        result["outputs"] = [str(out_dir / "open_loop.json"), str(out_dir / "divergence.png")]
    return result


def _plot_divergence(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(result["per_step_mean"]) + 1)
    figure, axis = plt.subplots(figsize=(8, 4.5))
    axis.plot(steps, result["per_step_mean"], label="mean over episodes")
    axis.plot(steps, result["per_step_max"], label="max over episodes", alpha=0.7)
    axis.set_yscale("log")
    axis.set_xlabel("step in episode")
    axis.set_ylabel("||obs_replay - obs_logged||")
    axis.set_title(f"open-loop replay in {result['env_id']}: {result['episodes']} episodes")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# --- video --------------------------------------------------------------------------------------------------------


def render_log(
    log: LogData,
    out_path: str | os.PathLike,
    env_id: str | None = None,
    *,
    episodes: int = 1,
    width: int = 320,
    height: int = 240,
) -> dict[str, Any]:
    """An mp4 of the first `episodes` logged episodes (headless); sizes must be multiples of 16 (H.264 blocks)."""
    if width % 16 or height % 16 or width <= 0 or height <= 0:
        raise ReplayError(f"video size {width}x{height}: width and height must be positive multiples of 16")
    os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is first imported; no effect once it is
    import imageio.v2 as imageio

    env_id = _env_id(log, env_id)
    env = _make_env(env_id, render_mode="rgb_array", width=width, height=height)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frames = 0
    try:
        env.reset(seed=0)
        setter = StateSetter(env, env_id, log.obs_dim)
        stride = max(1, round(1.0 / (setter.sim.dt * _VIDEO_FPS)))
        fps = 1.0 / (setter.sim.dt * stride)
        with imageio.get_writer(out_path, fps=fps, codec="libx264", macro_block_size=16) as writer:
            for episode in log.episodes[:episodes]:
                setter.reset_hidden()
                for t, obs in enumerate(log.episode_observations(episode)):
                    if t:
                        setter.advance_hidden(obs)
                    if t % stride == 0:
                        setter.set(obs)
                        writer.append_data(env.render())
                        frames += 1
    finally:
        env.close()
    return {"video": str(out_path), "env_id": env_id, "episodes": min(episodes, len(log.episodes)), "frames": frames}


# --- policy and critic on logged data -------------------------------------------------------------------------------


def _deviation(actions: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    absolute = np.abs(actions.astype(np.float64) - reference.astype(np.float64))
    return {
        "mean_abs_per_dim": absolute.mean(axis=0).tolist(),
        "max_abs_per_dim": absolute.max(axis=0).tolist(),
        "mean_abs": float(absolute.mean()),
        "max_abs": float(absolute.max()),
    }


def evaluate_on_log(
    log: LogData, policy: str | os.PathLike, checkpoint: str | os.PathLike | None = None
) -> dict[str, Any]:
    """A policy's deterministic actions vs the logged ones, and (with a checkpoint) its critic's values."""
    from acalign_robot.policy.runner import PolicyRunner

    runner = PolicyRunner.from_dir(policy, obs_dim=log.obs_dim, action_dim=log.action_dim)
    actions = np.concatenate([runner.act_batch(log.obs[start : start + 4096])[0] for start in range(0, len(log), 4096)])
    result: dict[str, Any] = {
        "log": str(log.directory),
        "policy": runner.manifest.label,
        "transitions": len(log),
        "episodes": len(log.episodes),
        "vs_executed_action": _deviation(actions, log.action),
        "vs_logged_policy_action": _deviation(actions, log.policy_action),
    }
    if checkpoint is not None:
        result["critic"] = {"checkpoint": str(checkpoint), **critic_values_summary(checkpoint, log)}
    return result


def critic_values_summary(checkpoint: str | os.PathLike, log: LogData) -> dict[str, Any]:
    """Summary of min-over-ensemble Q(obs, executed action) of a checkpoint's critic on the log (torch)."""
    import torch

    from acalign_robot import config as config_io
    from acalign_robot.algo.checkpoint import load_checkpoint, sac_state
    from acalign_robot.algo.losses import prior_term
    from acalign_robot.algo.networks import atanh_clipped
    from acalign_robot.algo.sac import SAC, SACConfig

    payload = load_checkpoint(checkpoint)
    meta = payload["meta"]
    if (meta["obs_dim"], meta["action_dim"]) != (log.obs_dim, log.action_dim):
        raise ReplayError(
            f"{checkpoint}: obs/action dims {meta['obs_dim']}/{meta['action_dim']}, the log has "
            f"{log.obs_dim}/{log.action_dim}"
        )
    sac_config = config_io.from_dict(SACConfig, payload["config"]["sac"], f"{checkpoint} (sac config)")
    agent = SAC(meta["obs_dim"], meta["action_dim"], sac_config)
    agent.load_state_dict(sac_state(payload))
    # The learner's actions live in [-1, 1]; the log holds the env's.
    low, high = np.asarray(meta["action_low"]), np.asarray(meta["action_high"])
    scaled = 2.0 * (log.action - low) / (high - low) - 1.0
    values = []
    with torch.no_grad():
        for start in range(0, len(log), 4096):
            obs = torch.as_tensor(log.obs[start : start + 4096], dtype=torch.float32)
            action = torch.as_tensor(scaled[start : start + 4096], dtype=torch.float32)
            q = agent.critic(obs, action)  # (ensemble, batch)
            if agent.prior is not None:  # ACA phase 3: Q = R + w * soft-clipped prior log-likelihood
                prior = agent.prior
                q = q + prior.w * prior_term(prior.actor, obs, atanh_clipped(action), prior.beta)
            values.append(q.min(0).values.numpy())
    values = np.concatenate(values)
    return {
        "phase": payload["phase"],
        "q_min_over_ensemble": summary_stats(values),
        "finite": bool(np.isfinite(values).all()),
    }
