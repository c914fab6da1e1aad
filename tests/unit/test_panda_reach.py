"""acalign/PandaReach-v0: gymnasium's env checker, the control rate, termination and truncation, and the robot's
limits as the env enforces them and the MuJoCo driver declares them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import acalign_robot.sim_tasks  # noqa: F401 - registers acalign/PandaReach-v0
from acalign_robot.config import ConfigError
from acalign_robot.drivers.mujoco import MujocoDriver, RealismConfig, SimConfig
from acalign_robot.sim_tasks import panda_reach as task

ENV_ID = "acalign/PandaReach-v0"


def test_the_env_passes_gymnasiums_checker_and_renders_offscreen():
    env = gym.make(ENV_ID)
    # "human" needs a display: the render modes are checked below with an offscreen one
    check_env(env.unwrapped, skip_render_check=True)
    renderer = gym.make(ENV_ID, render_mode="rgb_array", width=64, height=48)
    renderer.reset(seed=0)
    frame = renderer.render()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0
    renderer.close()


def test_control_rate_spaces_and_time_limit():
    env = gym.make(ENV_ID)
    assert env.unwrapped.dt == pytest.approx(0.02)  # 50 Hz: 10 x 2 ms
    assert env.action_space.shape == (7,) and np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (task.OBS_DIM,)
    for step in range(1, 101):  # noqa: B007 - `step` is checked after the loop
        obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
        assert not terminated
    assert truncated and step == 100  # the time limit is a truncation, never a termination


def test_the_reward_is_dense_and_highest_at_the_target():
    env = gym.make(ENV_ID).unwrapped
    env.reset(seed=1)
    _, far, *_ = env.step(np.zeros(7, np.float32))
    env.model.site_pos[env.model.site("target").id] = env.data.site_xpos[env.model.site("end_effector").id]
    _, near, *_ = env.step(np.zeros(7, np.float32))
    assert near > 0.9 > far and near <= 1.0


def test_leaving_the_workspace_terminates():
    env = gym.make(ENV_ID).unwrapped
    env.reset(seed=0)
    # the base turned to face backwards: the hand is behind the robot, outside the box in front of it
    pose = task.READY_POSE_RAD + np.array([2.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    env.set_state(pose, np.zeros(7))
    env._target_q = pose.copy()
    _, _, terminated, truncated, _ = env.step(np.zeros(7, np.float32))
    assert terminated and not truncated


def test_joint_targets_stay_inside_the_joint_ranges_and_the_servos_inside_the_torque_limits():
    env = gym.make(ENV_ID).unwrapped
    env.reset(seed=0)
    low, high = env.model.jnt_range[:, 0] + task.JOINT_MARGIN_RAD, env.model.jnt_range[:, 1] - task.JOINT_MARGIN_RAD
    for _ in range(150):  # full speed one way: the targets reach the ranges' ends (less the margin) and stop there
        env.step(np.array([1, 1, 1, -1, 1, 1, 1], np.float32))
        assert np.all(env._target_q >= low) and np.all(env._target_q <= high)
        assert np.all(np.abs(env.data.actuator_force) <= task.TORQUE_LIMIT_NM + 1e-9)
    assert np.any(env._target_q == low) or np.any(env._target_q == high)
    assert np.all(env.data.qpos > env.model.jnt_range[:, 0]) and np.all(env.data.qpos < env.model.jnt_range[:, 1])


def test_the_driver_declares_the_arms_limits():
    spec = MujocoDriver(SimConfig(env_id=ENV_ID)).spec
    limits = spec.limits
    model = gym.make(ENV_ID).unwrapped.model
    np.testing.assert_array_equal(limits.joint_position.low, model.jnt_range[:, 0])
    np.testing.assert_array_equal(limits.joint_position.high, model.jnt_range[:, 1])
    np.testing.assert_array_equal(limits.joint_velocity.high, task.VELOCITY_LIMIT_RAD_S)
    # the declared torque limits are the ones the servos enforce
    np.testing.assert_array_equal(limits.joint_torque.high, model.actuator_forcerange[:, 1])
    np.testing.assert_array_equal(limits.workspace.low, task.WORKSPACE_LOW_M)
    assert limits.joint_torque.units[0] == "N*m" and limits.workspace.units == ("m",) * 3
    assert (limits.joint_position_index, limits.joint_velocity_index, limits.end_effector_index) == (0, 7, 14)
    assert spec.control_period_s == pytest.approx(0.02)
    assert MujocoDriver(SimConfig(env_id="Hopper-v5")).spec.limits is None


def test_the_control_period_is_a_whole_number_of_physics_steps():
    faster = MujocoDriver(SimConfig(env_id=ENV_ID, realism=RealismConfig(control_period_s=0.01)))
    assert faster.env.unwrapped.frame_skip == 5 and faster.spec.control_period_s == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="control_period_s"):
        MujocoDriver(SimConfig(env_id=ENV_ID, realism=RealismConfig(control_period_s=0.015)))
