"""PandaReach: a Franka Emika Panda arm brings its end effector to a random target (`acalign/PandaReach-v0`).

The scene is assets/panda/panda_reach.xml beside this module (Apache-2.0 assets, see ATTRIBUTION.md there): seven
joints, each driven by a position servo with the Panda's torque limit as its force range. The task:
- action (7,) in [-1, 1]: joint velocity commands as a fraction of `SPEED_FRACTION` x the Panda's velocity limits.
  The env integrates them into the servos' position targets, kept JOINT_MARGIN_RAD inside the joint ranges, as a
  velocity interface on a position-controlled arm does. A zero action holds the current target: the safe action.
- observation (23,): joint positions (rad), joint velocities (rad/s), end-effector position (m), target position
  (m), target minus end effector (m). `OBS_INDEX` says where each part starts; the driver declares the joint and
  workspace limits over these indices (drivers/base.py `DriverSpec.limits`) so the controller can check them.
- reward: 1 - tanh(2 * distance) - 0.01 * |action|^2, in (-0.07, 1]: dense with a slope everywhere in the
  workspace (a sharper tanh(10 d) is flat beyond 20 cm, and a SAC behaviour run then learned only to keep still),
  and positive near the target, so leaving the workspace (which ends the episode) never pays.
- terminated: the end effector left the workspace box (the robot would stop there); truncated: the time limit
  (gymnasium's TimeLimit, `max_episode_steps` in the registration).
- reset: the ready pose plus uniform noise of +-RESET_NOISE_RAD per joint, a target uniform in TARGET_BOX.
Control rate: 50 Hz (frame_skip 10 of the 2 ms physics step); `frame_skip` may be changed like any MujocoEnv's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco import MujocoEnv

from acalign_robot.spaces import BoxSpace, RobotLimits

__all__ = ["ASSET", "PandaReachEnv"]

# Package data (pyproject.toml), so that the registered env runs from an installed wheel as from a checkout.
ASSET = Path(__file__).resolve().parent / "assets" / "panda" / "panda_reach.xml"

JOINTS = 7
READY_POSE_RAD = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 0.0, 0.785])  # end effector at (0.31, 0, 0.49), down
RESET_NOISE_RAD = 0.05
# Targets stay this far inside the joint ranges: a servo aimed at the range's very end presses into MuJoCo's soft
# joint limit, which the controller's limit check (the whole range) would then see as a violation.
JOINT_MARGIN_RAD = 0.05
# Franka's published limits (frankaemika.github.io/docs/control_parameters.html): rad/s, N*m.
VELOCITY_LIMIT_RAD_S = np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61])
TORQUE_LIMIT_NM = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])
# A full action commands half the velocity limit: the speed a learning arm runs at, and room for the servo's
# overshoot below the limit the controller checks.
SPEED_FRACTION = 0.5
WORKSPACE_LOW_M = np.array([0.0, -0.6, 0.05])  # the end effector's box in the base frame: in front, above the table
WORKSPACE_HIGH_M = np.array([0.8, 0.6, 0.9])
TARGET_LOW_M = np.array([0.3, -0.3, 0.2])
TARGET_HIGH_M = np.array([0.6, 0.3, 0.6])
OBS_INDEX = {"joint_position": 0, "joint_velocity": 7, "end_effector": 14, "target": 17, "error": 20}
OBS_DIM = 23
_END_EFFECTOR = slice(OBS_INDEX["end_effector"], OBS_INDEX["end_effector"] + 3)
_ERROR = slice(OBS_INDEX["error"], OBS_INDEX["error"] + 3)


class PandaReachEnv(MujocoEnv):
    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"]}

    def __init__(self, frame_skip: int = 10, render_mode: str | None = None, width: int = 480, height: int = 480):
        observation_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
        super().__init__(
            str(ASSET),
            frame_skip,
            observation_space,
            render_mode=render_mode,
            width=width,
            height=height,
            default_camera_config={"distance": 2.0, "azimuth": 150.0, "elevation": -25.0, "lookat": [0.3, 0, 0.4]},
        )
        self.metadata = {**PandaReachEnv.metadata, "render_fps": int(np.round(1.0 / self.dt))}
        self._ee_site = self.model.site("end_effector").id
        self._target_site = self.model.site("target").id
        self._joint_low = self.model.jnt_range[:JOINTS, 0].copy()
        self._joint_high = self.model.jnt_range[:JOINTS, 1].copy()
        self._target_q = READY_POSE_RAD.copy()  # the servos' position targets (rad)
        self.limits = RobotLimits(
            joint_position=BoxSpace(self._joint_low, self._joint_high, ("rad",) * JOINTS),
            joint_velocity=BoxSpace(-VELOCITY_LIMIT_RAD_S, VELOCITY_LIMIT_RAD_S, ("rad/s",) * JOINTS),
            joint_torque=BoxSpace(-TORQUE_LIMIT_NM, TORQUE_LIMIT_NM, ("N*m",) * JOINTS),
            workspace=BoxSpace(WORKSPACE_LOW_M.copy(), WORKSPACE_HIGH_M.copy(), ("m",) * 3),
            joint_position_index=OBS_INDEX["joint_position"],
            joint_velocity_index=OBS_INDEX["joint_velocity"],
            end_effector_index=OBS_INDEX["end_effector"],
        )

    def _set_action_space(self) -> spaces.Box:
        self.action_space = spaces.Box(-1.0, 1.0, (JOINTS,), np.float32)
        return self.action_space

    def step(self, action: np.ndarray):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        step_rad = action * SPEED_FRACTION * VELOCITY_LIMIT_RAD_S * self.dt
        self._target_q = np.clip(
            self._target_q + step_rad, self._joint_low + JOINT_MARGIN_RAD, self._joint_high - JOINT_MARGIN_RAD
        )
        self.do_simulation(self._target_q, self.frame_skip)
        obs = self._get_obs()
        end_effector = obs[_END_EFFECTOR]
        distance = float(np.linalg.norm(obs[_ERROR]))
        reward = 1.0 - np.tanh(2.0 * distance) - 0.01 * float(action @ action)
        terminated = bool(np.any(end_effector < WORKSPACE_LOW_M) or np.any(end_effector > WORKSPACE_HIGH_M))
        if self.render_mode == "human":
            self.render()
        return obs, float(reward), terminated, False, {"distance_m": distance}

    def reset_model(self) -> np.ndarray:
        qpos = READY_POSE_RAD + self.np_random.uniform(-RESET_NOISE_RAD, RESET_NOISE_RAD, JOINTS)
        self._target_q = qpos.copy()
        self.model.site_pos[self._target_site] = self.np_random.uniform(TARGET_LOW_M, TARGET_HIGH_M)
        self.set_state(qpos, np.zeros(self.model.nv))
        self.data.ctrl[:] = qpos
        return self._get_obs()

    def _get_obs(self) -> np.ndarray:
        end_effector = self.data.site_xpos[self._ee_site]
        target = self.model.site_pos[self._target_site]
        return np.concatenate(
            [self.data.qpos[:JOINTS], self.data.qvel[:JOINTS], end_effector, target, target - end_effector]
        )
