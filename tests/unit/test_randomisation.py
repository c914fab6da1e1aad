"""Dynamics randomisation (drivers/randomisation.py) through the MuJoCo driver: ranges, seeds, nominal values,
per-episode and per-session draws, latency and noise ranges, on the arm and on a locomotion env."""

from __future__ import annotations

import numpy as np
import pytest

from acalign_robot import config as config_io
from acalign_robot.config import ConfigError, FieldError
from acalign_robot.drivers.mujoco import MujocoDriver, RealismConfig, SimConfig
from acalign_robot.drivers.randomisation import RandomisationConfig

WIDE = RandomisationConfig(
    body_mass_scale=(0.5, 1.5),
    joint_damping_scale=(0.25, 4.0),
    joint_friction_scale=(0.5, 2.0),
    actuator_gain_scale=(0.8, 1.2),
    contact_friction_scale=(0.6, 1.4),
    action_delay_ticks=(0, 3),
    observation_noise_std=(0.0, 0.05),
)
# (MjModel array, column or None for the whole row, the config's range)
FIELDS = [
    ("body_mass", None, WIDE.body_mass_scale),
    ("dof_damping", None, WIDE.joint_damping_scale),
    ("dof_frictionloss", None, WIDE.joint_friction_scale),
    ("actuator_gainprm", 0, WIDE.actuator_gain_scale),
    ("actuator_biasprm", 1, WIDE.actuator_gain_scale),
    ("geom_friction", 0, WIDE.contact_friction_scale),
]


def driver(env_id: str, randomisation: RandomisationConfig, seed: int = 0) -> MujocoDriver:
    return MujocoDriver(SimConfig(env_id=env_id, realism=RealismConfig(randomisation=randomisation), seed=seed))


def column(values: np.ndarray, index: int | None) -> np.ndarray:
    return values if index is None else values[:, index]


@pytest.mark.parametrize("env_id", ["acalign/PandaReach-v0", "Hopper-v5"])
def test_every_scaled_field_stays_in_its_range_and_the_nominal_model_comes_back(env_id):
    sim = driver(env_id, WIDE)
    model, nominal = sim.env.unwrapped.model, sim.randomiser.nominal
    changed = set()
    for _ in range(20):
        sim.reset()
        for name, index, (low, high) in FIELDS:
            base = column(nominal[name], index)
            now = column(getattr(model, name), index)
            has_value = base != 0  # a zero nominal (Hopper's friction loss, a motor's bias) stays zero
            ratio = now[has_value] / base[has_value]
            assert np.all((ratio >= low - 1e-12) & (ratio <= high + 1e-12)), name
            np.testing.assert_array_equal(now[~has_value], 0.0)
            if has_value.any() and not np.allclose(ratio, 1.0):
                changed.add(name)
        assert 0 <= sim._action_delay_ticks <= 3 and 0.0 <= sim._noise_std <= 0.05
        assert len(sim._pending) == sim._action_delay_ticks  # the drawn latency is the one applied
    # inertia follows mass: uniform density
    mass_ratio = model.body_mass[1:] / nominal["body_mass"][1:]
    np.testing.assert_allclose(model.body_inertia[1:] / nominal["body_inertia"][1:], mass_ratio[:, None] * np.ones(3))
    assert {"body_mass", "dof_damping", "actuator_gainprm", "geom_friction"} <= changed
    sim.randomiser.restore()
    for name, values in nominal.items():
        np.testing.assert_array_equal(getattr(model, name), values)


def test_a_seed_repeats_its_draws_and_another_seed_does_not():
    def masses(seed: int) -> list[np.ndarray]:
        sim = driver("acalign/PandaReach-v0", WIDE, seed=seed)
        draws = []
        for _ in range(3):
            sim.reset()
            draws.append(sim.env.unwrapped.model.body_mass.copy())
        return draws

    first, again, other = masses(1), masses(1), masses(2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], first[1])  # per episode: each reset draws anew


def test_per_session_draws_once_and_keeps_it():
    sim = driver("Hopper-v5", RandomisationConfig(resample="session", body_mass_scale=(0.5, 1.5)))
    nominal = sim.randomiser.nominal["body_mass"]
    sim.reset()
    drawn = sim.env.unwrapped.model.body_mass.copy()
    assert not np.array_equal(drawn, nominal)
    for _ in range(3):
        sim.step(np.zeros(3, np.float32))
        sim.reset()
        np.testing.assert_array_equal(sim.env.unwrapped.model.body_mass, drawn)


def test_a_fixed_range_gives_the_same_parameters_every_episode():
    fixed = RandomisationConfig(body_mass_scale=(1.3, 1.3), action_delay_ticks=(2, 2))
    sim = driver("acalign/PandaReach-v0", fixed)
    for _ in range(2):
        sim.reset()
        np.testing.assert_allclose(sim.env.unwrapped.model.body_mass, 1.3 * sim.randomiser.nominal["body_mass"])
        assert sim._action_delay_ticks == 2


def test_dynamics_draws_do_not_depend_on_the_noise_stream():
    config = RandomisationConfig(body_mass_scale=(0.5, 1.5))
    quiet = MujocoDriver(SimConfig(env_id="Hopper-v5", realism=RealismConfig(randomisation=config), seed=3))
    noisy_realism = RealismConfig(observation_noise_std=0.1, nan_observation_probability=0.5, randomisation=config)
    noisy = MujocoDriver(SimConfig(env_id="Hopper-v5", realism=noisy_realism, seed=3))
    for _ in range(3):
        for sim in (quiet, noisy):
            sim.reset()
            for _ in range(5):
                sim.step(np.zeros(3, np.float32))
        np.testing.assert_array_equal(quiet.env.unwrapped.model.body_mass, noisy.env.unwrapped.model.body_mass)


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("body_mass_scale: [1.2, 0.8]", "body_mass_scale"),
        ("joint_damping_scale: [0.0, 1.0]", "joint_damping_scale"),
        ("actuator_gain_scale: [1.0]", "actuator_gain_scale"),
        ("action_delay_ticks: [-1, 2]", "action_delay_ticks"),
        ("observation_noise_std: [0.1, 0.0]", "observation_noise_std"),
        ("resample: sometimes", "resample"),
        ("body_mas_scale: [1.0, 1.0]", "body_mas_scale"),
    ],
)
def test_a_bad_range_is_an_error_naming_its_field(yaml_text, field):
    text = f"env_id: Hopper-v5\nrealism:\n  randomisation:\n    {yaml_text}\n"
    with pytest.raises(ConfigError, match=field):
        config_io.load_text(SimConfig, text, "sim.yaml")


def test_a_range_and_the_fixed_value_of_one_knob_are_refused_together():
    with pytest.raises(FieldError, match="randomisation.action_delay_ticks"):
        RealismConfig(action_delay_ticks=1, randomisation=RandomisationConfig(action_delay_ticks=(0, 2))).validate()


def test_the_shipped_sim_files_load():
    training = config_io.load(SimConfig, "sim/panda_reach.yaml")
    twin = config_io.load(SimConfig, "sim/panda_reach_twin.yaml")
    assert training.env_id == twin.env_id == "acalign/PandaReach-v0"
    assert training.realism.randomisation.resample == "episode" and twin.realism.randomisation.resample == "session"
    # the twin lies outside the training ranges on the parameters it changes
    assert twin.realism.randomisation.body_mass_scale[0] > training.realism.randomisation.body_mass_scale[1]
    assert twin.realism.randomisation.action_delay_ticks[0] > training.realism.randomisation.action_delay_ticks[1]
