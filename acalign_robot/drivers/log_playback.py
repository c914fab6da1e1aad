"""Replay driver: serves a recorded transition log to a controller as if it were the robot (torch- and MuJoCo-free).

`reset` returns the first observation of the next logged episode (in log order, starting over after the last;
the seed is ignored: the log decides). `step` returns the logged next observation, reward, terminated and
truncated whatever action it receives, and records how far that action is from the logged executed action, so a
new policy can be run against exactly the observations the robot produced (the policy never changes what happens:
use `acalign replay open-loop` or a simulator for that). An episode the log cut short (dropped batches, restart,
end of the data) ends with `truncated` on its last logged step. A step with no episode open (after the last step,
the driver server's final safe action) repeats the last observation with reward 0 and `truncated`, uncounted.

The driver's contract comes from the log's `log_meta.json`: spaces and control period when the controller
recorded them; otherwise from the gymnasium env named by the log or by `env_id` (imported only then).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from acalign_robot.drivers.base import Driver, DriverSpec, StepResult, box
from acalign_robot.robot_log.format import LogError
from acalign_robot.robot_log.reader import LogData, LogEpisode, read_log
from acalign_robot.spaces import BoxSpace

__all__ = ["ReplayDriver"]


def _space(recorded: dict[str, Any], default_units: str) -> BoxSpace:
    low = [-np.inf if value is None else value for value in recorded["low"]]
    high = [np.inf if value is None else value for value in recorded["high"]]
    return box(low, high, recorded.get("units") or default_units)


class ReplayDriver(Driver):
    def __init__(self, log_dir: str | os.PathLike, env_id: str | None = None):
        self.log: LogData = read_log(log_dir)
        if not self.log.episodes:
            raise LogError(f"{log_dir}: the log holds no episodes")
        meta = self.log.meta
        env_id = env_id or self.log.env_id
        recorded_obs, recorded_action = meta.get("observation_space"), meta.get("action_space")
        period_s = meta.get("control_period_s")
        if recorded_action is None or period_s is None:
            action_space, period_s = self._from_env(env_id, period_s)
        else:
            action_space = _space(recorded_action, "logged")
        observation_space = (
            _space(recorded_obs, "logged")
            if recorded_obs is not None
            else box([-np.inf] * self.log.obs_dim, [np.inf] * self.log.obs_dim, "logged")
        )
        if observation_space.shape != (self.log.obs_dim,) or action_space.shape != (self.log.action_dim,):
            raise LogError(
                f"{log_dir}: spaces {observation_space.shape}/{action_space.shape} do not fit the logged "
                f"obs/action dims {self.log.obs_dim}/{self.log.action_dim}"
            )
        safe = np.clip(np.zeros(self.log.action_dim), action_space.low, action_space.high).astype(np.float32)
        self.spec = DriverSpec(
            name=f"replay:{self.log.controller_id}",
            observation=observation_space,
            action=action_space,
            control_period_s=float(period_s),
            safe_action=safe,
            safe_action_kind="zero",
            env_id=env_id,
            can_pause=True,  # no hardware behind it: time stops between steps
        )
        self._next_episode = 0
        self._episode: LogEpisode | None = None
        self._cursor = 0
        self._last_obs = self.log.obs[0].astype(np.float32)
        self.idle_steps = 0
        # Deviation counts over the episodes served to their end; the open episode's wait in `_episode_deviations`
        # (a run stops in the middle of one, where the controller's and the server's final safe actions land).
        self._abs_sum = np.zeros(self.log.action_dim)
        self._abs_max = np.zeros(self.log.action_dim)
        self.steps = 0
        self.episodes_completed = 0
        self._episode_deviations: list[np.ndarray] = []
        self._closed = False

    def _from_env(self, env_id: str | None, period_s: float | None) -> tuple[BoxSpace, float]:
        """Action bounds and control period of the logged env, for a log whose controller did not record them."""
        if env_id is None:
            raise LogError(
                f"{self.log.directory}: the log records neither its action space and control period nor an env id; "
                "give the driver an env_id"
            )
        import gymnasium as gym

        import acalign_robot.sim_tasks  # noqa: F401 - registers the acalign/ env ids

        env = gym.make(env_id)
        space = env.action_space
        period_s = period_s if period_s is not None else float(env.unwrapped.dt)
        env.close()
        return box(space.low, space.high, "logged"), period_s

    def reset(self, seed: int | None = None) -> np.ndarray:
        episodes = self.log.episodes
        self._episode = episodes[self._next_episode % len(episodes)]
        self._next_episode += 1
        self._cursor = self._episode.start
        self._episode_deviations = []
        self._last_obs = self.log.obs[self._cursor].astype(np.float32)
        return self._last_obs

    def step(self, action: np.ndarray) -> StepResult:
        episode, i = self._episode, self._cursor
        if episode is None:
            self.idle_steps += 1
            return StepResult(self._last_obs, 0.0, False, True)
        logged = self.log.action[i]
        self._episode_deviations.append(np.abs(np.asarray(action, dtype=np.float64) - logged))
        self._cursor += 1
        last = self._cursor == episode.stop
        if last:
            self._episode = None
            deviations = np.stack(self._episode_deviations)
            self._abs_sum += deviations.sum(axis=0)
            np.maximum(self._abs_max, deviations.max(axis=0), out=self._abs_max)
            self.steps += len(deviations)
            self.episodes_completed += 1
        self._last_obs = self.log.next_obs[i].astype(np.float32)
        truncated = bool(self.log.truncated[i]) or (last and not episode.complete)
        return StepResult(
            self._last_obs,
            float(self.log.reward[i]),
            bool(self.log.terminated[i]),
            truncated,
            {"logged_action": logged},
        )

    def deviation_stats(self) -> dict[str, Any]:
        """How far the received actions were from the logged executed ones, over the episodes served to their end."""
        mean = self._abs_sum / max(self.steps, 1)
        return {
            "steps": self.steps,
            "episodes_completed": self.episodes_completed,
            "episodes_started": self._next_episode,  # past len(log.episodes): served again from the start
            "log_episodes": len(self.log.episodes),
            "unfinished_episode_steps": len(self._episode_deviations) if self._episode is not None else 0,
            "idle_steps": self.idle_steps,
            "mean_abs_per_dim": mean.tolist(),
            "max_abs_per_dim": self._abs_max.tolist(),
            "mean_abs": float(mean.mean()),
            "max_abs": float(self._abs_max.max()),
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # The driver process's output is where a replay run's comparison ends up.
        print(f"replay driver {self.log.directory}: action deviation {json.dumps(self.deviation_stats())}", flush=True)
