"""MuJoCo driver: any gymnasium MuJoCo env behind the driver interface, with realism settings from `sim/` YAML.

Realism settings (SimConfig):
- `control_period_s`: the control period. Physics substeps (gymnasium's frame_skip) = round(period / timestep),
  asserted to divide evenly: a period the model's timestep cannot express is an error, not a silent rounding.
- `action_delay_ticks`: an action takes effect that many ticks later (the first ticks apply the safe action),
  like a robot whose command path has latency.
- `observation_noise_std`: Gaussian noise on every returned observation (seeded).
- `realtime`: pace steps to the control period in wall-clock time (as hardware would), or run as fast as possible.
- `nan_observation_probability`: fault injection: each observation is all NaN with this probability (a sensor
  dropout), to test what the layers above do with it.
- `randomisation`: dynamics randomisation (masses, damping, friction, actuator gains, contact friction, latency and
  noise ranges), per episode or per session: drivers/randomisation.py.
An env that declares `limits` (a RobotLimits, as acalign/PandaReach-v0 does) has them in the DriverSpec.
Actions arrive in the env's own bounds (the exported policy scales to them). Each step reports
`info["applied_action"]`: the action the physics applied, which differs from the commanded one under
`action_delay_ticks`.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

import numpy as np

from acalign_robot.config import FieldError
from acalign_robot.drivers.base import Driver, DriverSpec, StepResult, box
from acalign_robot.drivers.randomisation import DynamicsRandomiser, RandomisationConfig
from acalign_robot.errors import EnvError

__all__ = ["MujocoDriver", "RealismConfig", "SimConfig", "physics_substeps"]


@dataclass(frozen=True)
class RealismConfig:
    control_period_s: float | None = None  # None: the env's default (frame_skip * timestep)
    action_delay_ticks: int = 0
    observation_noise_std: float = 0.0
    realtime: bool = False
    nan_observation_probability: float = 0.0
    randomisation: RandomisationConfig | None = None

    def validate(self) -> None:
        if self.control_period_s is not None and self.control_period_s <= 0:
            raise FieldError("control_period_s", f"must be positive, got {self.control_period_s}")
        if self.action_delay_ticks < 0:
            raise FieldError("action_delay_ticks", f"must be >= 0, got {self.action_delay_ticks}")
        if self.observation_noise_std < 0:
            raise FieldError("observation_noise_std", f"must be >= 0, got {self.observation_noise_std}")
        if not 0.0 <= self.nan_observation_probability <= 1.0:
            raise FieldError(
                "nan_observation_probability", f"must be in [0, 1], got {self.nan_observation_probability}"
            )
        # One home per knob: a randomised latency or noise range replaces the fixed value, it does not add to it.
        randomised = self.randomisation
        if randomised is not None and randomised.action_delay_ticks is not None and self.action_delay_ticks:
            raise FieldError("randomisation.action_delay_ticks", "set either this range or action_delay_ticks")
        if randomised is not None and randomised.observation_noise_std is not None and self.observation_noise_std:
            raise FieldError("randomisation.observation_noise_std", "set either this range or observation_noise_std")


@dataclass(frozen=True)
class SimConfig:
    """A sim task: which gymnasium MuJoCo env, with which realism. Saved form: sim/<task>.yaml."""

    env_id: str
    realism: RealismConfig = field(default_factory=RealismConfig)
    seed: int = 0


def physics_substeps(control_period_s: float, timestep_s: float) -> int:
    """MuJoCo steps per control period; the period must be a whole number of physics timesteps."""
    substeps = round(control_period_s / timestep_s)
    assert substeps >= 1 and abs(substeps * timestep_s - control_period_s) < 1e-9, (
        f"control period {control_period_s} s is not a whole number of {timestep_s} s physics steps"
    )
    return substeps


class MujocoDriver(Driver):
    def __init__(self, config: SimConfig):
        import gymnasium as gym
        from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

        import acalign_robot.sim_tasks  # noqa: F401 - registers the acalign/ env ids

        self.config = config
        realism = config.realism
        probe = gym.make(config.env_id)
        if not isinstance(probe.unwrapped, MujocoEnv):
            probe.close()
            raise EnvError(f"env {config.env_id!r} is not a gymnasium MuJoCo env (the mujoco driver serves only those)")
        boxes = (probe.observation_space, probe.action_space)
        if not all(isinstance(space, gym.spaces.Box) and len(space.shape) == 1 for space in boxes):
            probe.close()
            raise EnvError(f"env {config.env_id!r}: only flat Box observation and action spaces are supported")
        timestep_s = float(probe.unwrapped.model.opt.timestep)
        default_substeps = int(probe.unwrapped.frame_skip)
        probe.close()
        if realism.control_period_s is None:
            substeps = default_substeps
        else:
            try:
                substeps = physics_substeps(realism.control_period_s, timestep_s)
            except AssertionError as exc:
                from acalign_robot.config import ConfigError

                raise ConfigError(f"realism.control_period_s: {exc}") from None
        # rgb_array costs nothing until the first render() (gymnasium opens the GL context then); MUJOCO_GL=egl renders
        # without a display.
        options = {"render_mode": "rgb_array"} | ({"frame_skip": substeps} if substeps != default_substeps else {})
        self.env = gym.make(config.env_id, **options)
        randomisation = realism.randomisation
        self.randomiser = (
            None
            if randomisation is None
            else DynamicsRandomiser(
                self.env.unwrapped.model,
                randomisation,
                config.seed if randomisation.seed is None else randomisation.seed,
            )
        )
        self._action_delay_ticks = realism.action_delay_ticks
        self._noise_std = realism.observation_noise_std
        self.control_period_s = substeps * timestep_s
        space = self.env.action_space
        self.spec = DriverSpec(
            name=f"mujoco:{config.env_id}",
            observation=box(self.env.observation_space.low, self.env.observation_space.high, "sim"),
            action=box(space.low, space.high, "actuator ctrl"),
            control_period_s=self.control_period_s,
            safe_action=np.zeros(space.shape[0], dtype=np.float32),
            safe_action_kind="zero",
            env_id=config.env_id,
            can_pause=True,  # a simulation: its time stops between steps
            can_render=True,
            limits=getattr(self.env.unwrapped, "limits", None),
        )
        self._rng = np.random.default_rng(config.seed)
        self._pending: collections.deque[np.ndarray] = collections.deque()
        self._last_step_time: float | None = None
        self._seeded = False

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is None and not self._seeded:
            seed = self.config.seed  # the first reset is seeded from the sim config: runs are reproducible
        self._seeded = True
        randomiser = self.randomiser
        if randomiser is not None and (randomiser.current is None or randomiser.config.resample == "episode"):
            drawn = randomiser.sample()
            randomiser.apply(drawn)
            realism = self.config.realism
            self._action_delay_ticks = (
                realism.action_delay_ticks if drawn.action_delay_ticks is None else drawn.action_delay_ticks
            )
            self._noise_std = (
                realism.observation_noise_std if drawn.observation_noise_std is None else drawn.observation_noise_std
            )
        obs, _ = self.env.reset(seed=seed)
        self._pending = collections.deque(self.safe_action() for _ in range(self._action_delay_ticks))
        self._last_step_time = None
        return self._observe(obs)

    def step(self, action: np.ndarray) -> StepResult:
        self._pending.append(np.asarray(action, dtype=np.float32))
        applied = self._pending.popleft()
        if self.config.realism.realtime:
            self._pace()
        obs, reward, terminated, truncated, _ = self.env.step(applied)
        return StepResult(
            self._observe(obs), float(reward), bool(terminated), bool(truncated), {"applied_action": applied}
        )

    def render(self) -> np.ndarray:
        return self.env.render()

    def _pace(self) -> None:
        """Hold each step to the control period in wall-clock time (hardware cannot run faster than real time)."""
        now = time.perf_counter()
        if self._last_step_time is not None:
            remaining = self._last_step_time + self.control_period_s - now
            if remaining > 0:
                time.sleep(remaining)
        self._last_step_time = time.perf_counter()

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        realism = self.config.realism
        if self._noise_std > 0:
            obs = obs + self._rng.normal(0.0, self._noise_std, size=obs.shape).astype(np.float32)
        if realism.nan_observation_probability > 0 and self._rng.random() < realism.nan_observation_probability:
            obs = np.full_like(obs, np.nan)
        return obs

    def close(self) -> None:
        self.env.close()
