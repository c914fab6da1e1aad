"""Dynamics randomisation for the MuJoCo driver: the `randomisation:` block of a sim/ YAML's realism settings.

Each physical parameter is a range `[low, high]` of scales applied to the nominal values the model had when it was
loaded (kept once, at construction): a sample writes `nominal * scale` into the MjModel's own arrays, so no XML is
reloaded on the hot path, and `restore()` writes the nominal values back. `low == high` fixes a parameter (the robot
twin of sim/panda_reach_twin.yaml is such a fixed, off-centre sample). Every element draws its own scale (each
body's mass, each joint's damping), uniformly in the range. What each scale multiplies:

| field | MjModel arrays | note |
|---|---|---|
| `body_mass_scale` | body_mass, body_inertia | uniform density: inertia scales with mass; then mj_setConst |
| `joint_damping_scale` | dof_damping | |
| `joint_friction_scale` | dof_frictionloss | a model without friction loss (Hopper) stays without |
| `actuator_gain_scale` | actuator_gainprm[:, 0], actuator_biasprm[:, 0:3] | the whole force law (servo kp, kv) |
| `contact_friction_scale` | geom_friction[:, 0] | sliding friction of every geom |

Control latency and sensor noise are ranges too (`action_delay_ticks`: integers, inclusive; `observation_noise_std`),
drawn with the rest; when they are left out, the realism block's fixed values apply.

`resample: episode` draws a new sample at every reset; `session` draws one at the first reset and keeps it for the
driver's life. Draws come from their own generator seeded by `seed` (the sim config's seed when absent), apart from
the observation-noise stream, so the same seed gives the same sequence of dynamics whatever else the driver draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from acalign_robot.config import FieldError

__all__ = ["DynamicsRandomiser", "DynamicsSample", "RandomisationConfig"]

_SCALES = ("body_mass_scale", "joint_damping_scale", "joint_friction_scale", "actuator_gain_scale")
_SCALES += ("contact_friction_scale",)


@dataclass(frozen=True)
class RandomisationConfig:
    resample: Literal["episode", "session"] = "episode"
    seed: int | None = None  # None: the sim config's seed
    body_mass_scale: tuple[float, ...] = (1.0, 1.0)
    joint_damping_scale: tuple[float, ...] = (1.0, 1.0)
    joint_friction_scale: tuple[float, ...] = (1.0, 1.0)
    actuator_gain_scale: tuple[float, ...] = (1.0, 1.0)
    contact_friction_scale: tuple[float, ...] = (1.0, 1.0)
    action_delay_ticks: tuple[int, ...] | None = None  # [low, high] ticks, inclusive; None: realism's fixed value
    observation_noise_std: tuple[float, ...] | None = None  # [low, high]; None: realism's fixed value

    def validate(self) -> None:
        for name in _SCALES:
            low, high = _range(self, name)
            if not 0.0 < low <= high:
                raise FieldError(name, f"must be [low, high] with 0 < low <= high, got {[low, high]}")
        if self.action_delay_ticks is not None:
            low, high = _range(self, "action_delay_ticks")
            if not 0 <= low <= high:
                raise FieldError("action_delay_ticks", f"must be [low, high] with 0 <= low <= high, got {[low, high]}")
        if self.observation_noise_std is not None:
            low, high = _range(self, "observation_noise_std")
            if not 0.0 <= low <= high:
                raise FieldError(
                    "observation_noise_std", f"must be [low, high] with 0 <= low <= high, got {[low, high]}"
                )


def _range(config: RandomisationConfig, name: str) -> tuple[float, float]:
    value = getattr(config, name)
    if len(value) != 2:
        raise FieldError(name, f"must be a range [low, high], got {list(value)}")
    return value[0], value[1]


@dataclass
class DynamicsSample:
    """One draw: a scale per element of each randomised array, and the episode's latency and noise."""

    scales: dict[str, np.ndarray] = field(default_factory=dict)  # field name -> (elements,) scales
    action_delay_ticks: int | None = None
    observation_noise_std: float | None = None


class DynamicsRandomiser:
    """Draws and applies DynamicsSamples to one MjModel; the nominal values are the model's at construction."""

    def __init__(self, model, config: RandomisationConfig, seed: int):
        import mujoco  # here, not at the top: the robot-side drivers import without MuJoCo

        self._set_const = mujoco.mj_setConst
        self._scratch = mujoco.MjData(model)  # mj_setConst's workspace, allocated once
        self.model = model
        self.config = config
        self.rng = np.random.default_rng(seed)
        # Copies: the model's arrays are views that every sample overwrites.
        self.nominal = {
            "body_mass": model.body_mass.copy(),
            "body_inertia": model.body_inertia.copy(),
            "dof_damping": model.dof_damping.copy(),
            "dof_frictionloss": model.dof_frictionloss.copy(),
            "actuator_gainprm": model.actuator_gainprm.copy(),
            "actuator_biasprm": model.actuator_biasprm.copy(),
            "geom_friction": model.geom_friction.copy(),
        }
        self._sizes = {
            "body_mass_scale": model.nbody,
            "joint_damping_scale": model.nv,
            "joint_friction_scale": model.nv,
            "actuator_gain_scale": model.nu,
            "contact_friction_scale": model.ngeom,
        }
        self.current: DynamicsSample | None = None

    def sample(self) -> DynamicsSample:
        config = self.config
        drawn = DynamicsSample()
        for name in _SCALES:
            low, high = _range(config, name)
            drawn.scales[name] = self.rng.uniform(low, high, self._sizes[name])
        if config.action_delay_ticks is not None:
            low, high = _range(config, "action_delay_ticks")
            drawn.action_delay_ticks = int(self.rng.integers(low, high + 1))
        if config.observation_noise_std is not None:
            low, high = _range(config, "observation_noise_std")
            drawn.observation_noise_std = float(self.rng.uniform(low, high))
        return drawn

    def apply(self, drawn: DynamicsSample) -> None:
        model, nominal, scales = self.model, self.nominal, drawn.scales
        mass = scales["body_mass_scale"]
        model.body_mass[:] = nominal["body_mass"] * mass
        model.body_inertia[:] = nominal["body_inertia"] * mass[:, None]
        model.dof_damping[:] = nominal["dof_damping"] * scales["joint_damping_scale"]
        model.dof_frictionloss[:] = nominal["dof_frictionloss"] * scales["joint_friction_scale"]
        gain = scales["actuator_gain_scale"]
        model.actuator_gainprm[:, 0] = nominal["actuator_gainprm"][:, 0] * gain
        model.actuator_biasprm[:, 0:3] = nominal["actuator_biasprm"][:, 0:3] * gain[:, None]
        model.geom_friction[:, 0] = nominal["geom_friction"][:, 0] * scales["contact_friction_scale"]
        # Masses feed the model's derived constants (subtree masses, inverse weights the constraint solver uses).
        self._set_const(model, self._scratch)
        self.current = drawn

    def restore(self) -> None:
        """The nominal model, as loaded."""
        for name, values in self.nominal.items():
            getattr(self.model, name)[:] = values
        self._set_const(self.model, self._scratch)
        self.current = None
