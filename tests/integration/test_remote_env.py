"""RemoteEnv and the driver's step info over real processes: a MuJoCo driver served by `acalign driver`, a gymnasium
caller (check_env, rendering, pauses, a second client, SB3 training), and a controller whose log and Minari dataset
carry the driver's `applied_action`."""

from __future__ import annotations

import time

import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env
from gymnasium.utils.passive_env_checker import env_render_passive_checker

from acalign_robot.drivers.remote_env import ENV_ID, DriverBusy, RemoteEnv
from acalign_robot.robot_log.format import info_columns
from acalign_robot.robot_log.reader import read_log
from acalign_robot.wire.channels import free_tcp_endpoint
from tests.helpers import acalign_command, wait_for

pytestmark = pytest.mark.integration


def start_driver(processes, tmp_path, endpoint: str, **fields):
    config = tmp_path / "driver.yaml"
    config.write_text(yaml.safe_dump({"kind": "mujoco", "endpoint": endpoint, **fields}))
    ready = tmp_path / "driver.ready"
    process = processes.start(
        acalign_command("driver", "--config", str(config), "--ready-file", str(ready)),
        tmp_path / "driver.log",
        env={"MUJOCO_GL": "egl"},
    )
    wait_for(lambda: ready.exists() or process.poll() is not None, 60, "the driver to bind")
    assert process.poll() is None, (tmp_path / "driver.log").read_text()
    return process


def test_remote_env_is_a_gymnasium_env_that_renders_pauses_and_refuses_a_second_client(processes, tmp_path):
    import gymnasium as gym

    endpoint = free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint, env_id="Hopper-v5")
    env = gym.make(ENV_ID, endpoint=endpoint, render_mode="rgb_array")
    try:
        assert env.spec.id == ENV_ID and env.unwrapped.spec.kwargs["endpoint"] == endpoint
        # The alternative-render-mode check makes a second env on the same driver while this one holds it.
        check_env(env.unwrapped, skip_render_check=True)
        env.reset(seed=0)
        env_render_passive_checker(env.unwrapped)
        frame = env.render()
        assert frame.shape == (480, 480, 3) and frame.dtype == np.uint8 and np.ptp(frame) > 0
        _, _, _, _, info = env.step(env.action_space.sample())
        time.sleep(0.5)  # five times the driver's 100 ms watchdog: a paused session is not stepped meanwhile
        action = env.action_space.sample()
        _, _, _, _, info = env.step(action)
        assert not info["watchdog_fired"] and not info["safe_action_applied"]
        np.testing.assert_array_equal(info["applied_action"], action)  # no action delay in Hopper's default realism
        second = RemoteEnv(endpoint)
        with pytest.raises(DriverBusy, match="another session holds driver 'mujoco:Hopper-v5'"):
            second.reset()
        second.close()
    finally:
        env.close()
    controller_like = RemoteEnv(endpoint, pause_s=0.0)  # the session was released: this one takes it at once
    try:
        controller_like.reset(seed=0)
        controller_like.step(controller_like.action_space.sample())
        time.sleep(0.5)
        assert controller_like.step(controller_like.action_space.sample())[4]["watchdog_fired"]
    finally:
        controller_like.close()


def test_sb3_trains_against_a_driver_process(processes, tmp_path):
    sb3 = pytest.importorskip("stable_baselines3", reason="stable-baselines3 is a test extra: pip install '.[test]'")
    import gymnasium as gym

    endpoint = free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint, env_id="Hopper-v5")
    env = gym.make(ENV_ID, endpoint=endpoint)
    try:
        model = sb3.PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")
        model.learn(total_timesteps=256)
        assert model.num_timesteps == 256
        obs, _ = env.reset(seed=1)
        action, _ = model.predict(obs, deterministic=True)
        assert env.action_space.contains(action)
    finally:
        env.close()


def test_the_driver_info_reaches_the_log_and_the_minari_dataset(processes, tmp_path, hopper_policy, minari_store):
    import minari

    from acalign_robot.robot_log.to_minari import convert_logs

    sim = tmp_path / "hopper_delayed.yaml"
    sim.write_text(yaml.safe_dump({"env_id": "Hopper-v5", "realism": {"action_delay_ticks": 1}}))
    endpoint = free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint, sim=str(sim))
    config = tmp_path / "controller.yaml"
    config.write_text(
        yaml.safe_dump(
            {"driver_endpoint": endpoint, "policy": str(hopper_policy), "ticks": 150, "output_dir": str(tmp_path / "c")}
        )
    )
    controller = processes.start(acalign_command("controller", "--config", str(config)), tmp_path / "controller.log")
    assert controller.wait(timeout=120) == 0, (tmp_path / "controller.log").read_text()

    log = read_log(tmp_path / "c" / "log")
    applied = info_columns(log.extras)["applied_action"]
    assert applied.shape == log.action.shape
    for episode in log.episodes:  # one tick of delay: each step applied the previous step's action, the first zeros
        np.testing.assert_array_equal(applied[episode.start], 0.0)
        np.testing.assert_array_equal(
            applied[episode.start + 1 : episode.stop], log.action[episode.start : episode.stop - 1]
        )

    convert_logs(tmp_path / "c", "hopper-info", env_id="Hopper-v5")
    dataset = minari.load_dataset("hopper-info-v0")
    for episode, span in zip(dataset.iterate_episodes(), log.episodes):
        infos = episode.infos["info.applied_action"]
        assert np.isnan(infos[0]).all()  # the reset's entry
        np.testing.assert_array_equal(infos[1:], applied[span.slice])
