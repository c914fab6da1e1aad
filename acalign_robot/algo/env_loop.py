"""Training and evaluation in an in-process gymnasium env: the env factory, evaluation and the online loop.

The agent works in actions in [-1, 1]^|A|; `make_env` rescales to the env's bounds so that the same actor is what
gets exported (the export scales to the bounds inside the ONNX graph).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import mujoco
import numpy as np
import torch

import acalign_robot.sim_tasks  # noqa: F401 - registers the acalign/ env ids
from acalign_robot.algo.networks import TanhGaussianActor, tanh_gaussian_sample
from acalign_robot.data.replay_buffer import ReplayBuffer
from acalign_robot.errors import EnvError

if TYPE_CHECKING:
    from acalign_robot.algo.seed_batch import SeedBatchSAC

__all__ = ["LoopState", "OnlineLoop", "SeedBatchLoop", "evaluate", "make_env", "supports_resume"]


def _device_of(module: torch.nn.Module) -> torch.device:
    """Where a module's parameters are, so that the observations fed to it are put there too."""
    return next(module.parameters()).device


def make_env(env_id: str, seed: int | None = None) -> gym.Env:
    """A gymnasium env whose action space is rescaled to [-1, 1] (a no-op for envs already there)."""
    env = gym.make(env_id)
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        raise EnvError(f"env {env_id!r}: only Box action spaces are supported, got {space}")
    if not (np.allclose(space.low, -1.0) and np.allclose(space.high, 1.0)):
        env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


@torch.no_grad()
def evaluate(actor: TanhGaussianActor, env_id: str, episodes: int, seed: int, sampled: bool = False) -> list[float]:
    """Returns over `episodes` episodes on a fresh env: deterministic (tanh of the mean), or with `sampled` actions
    drawn from the policy (how a stochastic behaviour policy's data scores)."""
    env = make_env(env_id)
    device = _device_of(actor)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
            action = actor.sample(obs_t)[0] if sampled else actor.act_deterministic(obs_t)
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


@dataclass
class OnlineLoop:
    """Act in an env with the stochastic policy, store every transition, update at UTD 1 once the buffer holds
    more than a batch. `random_warmup_steps` uniform-random actions first (behaviour agents only; ACA and the
    naive baseline use none). `on_transition` sees every step (for dataset recording).

    A run can be stopped and continued (MuJoCo envs): `on_checkpoint` receives a `LoopState` every
    `checkpoint_every` steps, and `run(..., resume=state)` continues from it exactly as the run would have gone on,
    given the agent and buffer saved at the same step.
    """

    env_id: str
    seed: int
    random_warmup_steps: int = 0
    on_transition: Callable[[dict[str, Any]], None] | None = None
    episode_returns: list[tuple[int, float]] = field(default_factory=list)

    def run(
        self,
        agent,
        buffer: ReplayBuffer,
        steps: int,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        progress=None,
        *,
        resume: LoopState | None = None,
        on_checkpoint: Callable[[LoopState], None] | None = None,
        checkpoint_every: int = 0,
    ) -> None:
        if on_checkpoint is not None and checkpoint_every <= 0:
            raise ValueError(f"checkpoint_every must be positive with on_checkpoint, got {checkpoint_every}")
        env = make_env(self.env_id, self.seed)
        rng = np.random.default_rng(self.seed)
        obs, _ = env.reset(seed=self.seed)
        episode_return, info, first_step = 0.0, {}, 1
        if resume is not None:
            obs, episode_return, first_step = resume.obs, resume.episode_return, resume.step + 1
            resume.restore(env, rng)
            self.episode_returns = list(resume.episode_returns)
            if progress is not None:
                progress.update(resume.step)
        batch_size = agent.config.batch_size
        device = _device_of(agent.actor)
        for step in range(first_step, steps + 1):
            if step <= self.random_warmup_steps:
                action = rng.uniform(-1.0, 1.0, size=env.action_space.shape).astype(np.float32)
            else:
                with torch.no_grad():
                    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
                    action = agent.actor.sample(obs_t)[0][0].cpu().numpy()
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(obs, action, reward, next_obs, float(terminated))
            if self.on_transition is not None:
                self.on_transition(
                    {
                        "obs": obs,
                        "action": action,
                        "reward": reward,
                        "next_obs": next_obs,
                        "terminated": terminated,
                        "truncated": truncated,
                        "step": step,
                    }
                )
            episode_return += float(reward)
            obs = next_obs
            if terminated or truncated:
                self.episode_returns.append((step, episode_return))
                obs, _ = env.reset()
                episode_return = 0.0
            if len(buffer) > batch_size:
                info = agent.update(buffer.sample(batch_size, rng))
            if on_step is not None:
                on_step(step, info)
            if on_checkpoint is not None and step % checkpoint_every == 0:
                on_checkpoint(LoopState.capture(step, obs, episode_return, self.episode_returns, env, rng))
            if progress is not None:
                progress.update(1)
        env.close()


@dataclass
class LoopState:
    """Where an OnlineLoop run stands after a step: the env's physics (MuJoCo's full integration state, warm start
    included, so that the next steps are bit for bit those of an uninterrupted run), its time limit's step count
    and reset generator, the loop's sampling generator and torch's. As tensors and strings (a weights-only load)."""

    step: int
    obs: np.ndarray
    episode_return: float
    episode_returns: list[tuple[int, float]]
    physics: np.ndarray
    elapsed_steps: int
    generators: str  # JSON: the loop's and the env's numpy generator states
    torch_generator: torch.Tensor

    @classmethod
    def capture(cls, step: int, obs, episode_return: float, episode_returns, env: gym.Env, rng) -> LoopState:
        model, data = _mujoco_of(env)
        kind = mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(model, kind))
        mujoco.mj_getState(model, data, physics, kind)
        generators = {"loop": rng.bit_generator.state, "env": env.unwrapped.np_random.bit_generator.state}
        return cls(
            step,
            np.array(obs, copy=True),
            float(episode_return),
            list(episode_returns),
            physics,
            int(_time_limit_of(env)._elapsed_steps),
            json.dumps(generators),
            torch.get_rng_state(),
        )

    def restore(self, env: gym.Env, rng: np.random.Generator) -> None:
        model, data = _mujoco_of(env)
        mujoco.mj_setState(model, data, self.physics, mujoco.mjtState.mjSTATE_INTEGRATION)
        _time_limit_of(env)._elapsed_steps = self.elapsed_steps
        generators = json.loads(self.generators)
        rng.bit_generator.state = generators["loop"]
        env.unwrapped.np_random.bit_generator.state = generators["env"]
        torch.set_rng_state(self.torch_generator)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "obs": torch.from_numpy(self.obs),
            "episode_return": self.episode_return,
            "episode_returns": torch.tensor(self.episode_returns, dtype=torch.float64).reshape(-1, 2),
            "physics": torch.from_numpy(self.physics),
            "elapsed_steps": self.elapsed_steps,
            "generators": self.generators,
            "torch_generator": self.torch_generator,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> LoopState:
        returns = [(int(step), float(value)) for step, value in state["episode_returns"].tolist()]
        return cls(
            int(state["step"]),
            state["obs"].numpy(),
            float(state["episode_return"]),
            returns,
            state["physics"].numpy(),
            int(state["elapsed_steps"]),
            state["generators"],
            state["torch_generator"],
        )


def supports_resume(env: gym.Env) -> bool:
    """Whether a LoopState can hold this env's state: MuJoCo envs (their physics state is a flat array)."""
    base = env.unwrapped
    model, data = getattr(base, "model", None), getattr(base, "data", None)
    return isinstance(model, mujoco.MjModel) and isinstance(data, mujoco.MjData)


def _mujoco_of(env: gym.Env) -> tuple[Any, Any]:
    if not supports_resume(env):
        raise EnvError(f"env {env.spec.id if env.spec else env.unwrapped}: a run can be resumed on MuJoCo envs only")
    return env.unwrapped.model, env.unwrapped.data


def _time_limit_of(env: gym.Env) -> gym.wrappers.TimeLimit:
    wrapped = env
    while isinstance(wrapped, gym.Wrapper):
        if isinstance(wrapped, gym.wrappers.TimeLimit):
            return wrapped
        wrapped = wrapped.env
    raise EnvError(f"env {env}: no TimeLimit wrapper to save the episode's step count from")


@dataclass
class SeedBatchLoop:
    """OnlineLoop for the seeds of a `SeedBatchSAC`: one env, replay buffer and sampling generator per seed, each
    seeded as OnlineLoop seeds its own, one batched actor pass per env step and one batched update (UTD 1) once every
    buffer holds more than a batch. Each seed's acting noise comes from its own generator, before that step's
    update, as in its single-seed run. No random warm-up (phase 3 uses none).

    `stop(index)`: that seed's env is no longer stepped nor its buffer filled (a diverged run); its slice of the
    batch goes on being updated, unread: every operation of the update is per seed, so its numbers (NaN included)
    cannot reach the other seeds' slices.
    """

    env_id: str
    seeds: Sequence[int]
    episode_returns: list[list[tuple[int, float]]] = field(default_factory=list)  # per seed: (step, return)
    stopped: set[int] = field(default_factory=set)  # indices into `seeds`

    def stop(self, index: int) -> None:
        self.stopped.add(index)

    def run(
        self,
        learner: SeedBatchSAC,
        buffers: Sequence[ReplayBuffer],
        steps: int,
        on_step: Callable[[int, list[dict[str, float]]], None] | None = None,
        progress=None,
    ) -> None:
        """`on_step(step, infos)`: after each env step, with each seed's latest update statistics ({} before the
        first update)."""
        envs = [make_env(self.env_id, seed) for seed in self.seeds]
        rngs = [np.random.default_rng(seed) for seed in self.seeds]
        observations = [env.reset(seed=seed)[0] for env, seed in zip(envs, self.seeds)]
        self.episode_returns = [[] for _ in self.seeds]
        episode_return = [0.0 for _ in self.seeds]
        infos: list[dict[str, float]] = [{} for _ in self.seeds]
        batch_size = learner.config.batch_size
        device = _device_of(learner.actor)
        for step in range(1, steps + 1):
            with torch.no_grad():
                obs_t = torch.as_tensor(np.stack(observations), dtype=torch.float32, device=device)[:, None]  # (S,1,O)
                mean, log_std = learner.actor(obs_t)
                actions = tanh_gaussian_sample(mean, log_std, learner.action_noise(obs_t))[0][:, 0].cpu().numpy()
            for index, env in enumerate(envs):
                if index in self.stopped:
                    continue
                next_obs, reward, terminated, truncated, _ = env.step(actions[index])
                buffers[index].add(observations[index], actions[index], reward, next_obs, float(terminated))
                episode_return[index] += float(reward)
                observations[index] = next_obs
                if terminated or truncated:
                    self.episode_returns[index].append((step, episode_return[index]))
                    observations[index], _ = env.reset()
                    episode_return[index] = 0.0
            if all(len(buffer) > batch_size for buffer in buffers):
                infos = learner.update_seeds([buffer.sample(batch_size, rng) for buffer, rng in zip(buffers, rngs)])
            if on_step is not None:
                on_step(step, infos)
            if progress is not None:
                progress.update(1)
        for env in envs:
            env.close()
