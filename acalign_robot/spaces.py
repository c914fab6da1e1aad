"""The box space every process shares: what a driver declares, the wire carries and a log records.

A domain type, not a wire detail: drivers describe their robot with it (drivers/base.py `DriverSpec`), the protocol
encodes it in HelloReply, the transition log keeps it in its metadata. numpy only, so every process may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BoxSpace", "RobotLimits"]


@dataclass(frozen=True, slots=True, eq=False)
class BoxSpace:
    """The box `low <= x <= high`: float arrays of one shape, one unit per element ("rad", "m/s"; "" if unknown)."""

    low: np.ndarray
    high: np.ndarray
    units: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.low.shape


@dataclass(frozen=True, slots=True, eq=False)
class RobotLimits:
    """A robot's physical limits, and where its observation holds the quantities they bound.

    A driver declares them (DriverSpec.limits), the wire carries them in HelloReply, and the controller's safety
    filter checks each observation against them (controller/safety.py `LimitMonitor`). Torque is enforced by the
    robot (its servos' force range) and declared for the operator; it is not in the observation.
    """

    joint_position: BoxSpace  # (joints,) rad
    joint_velocity: BoxSpace  # (joints,) rad/s
    joint_torque: BoxSpace  # (joints,) N*m
    workspace: BoxSpace  # (3,) m: the end effector's box in the robot's base frame
    joint_position_index: int  # obs[i : i + joints] are the joint positions
    joint_velocity_index: int  # obs[i : i + joints] are the joint velocities
    end_effector_index: int  # obs[i : i + 3] is the end effector's position

    def check(self, obs_dim: int) -> None:
        """Raise ValueError when the limits do not fit an observation of `obs_dim` elements."""
        joints = self.joint_position.shape[0]
        if self.joint_velocity.shape != (joints,) or self.joint_torque.shape != (joints,):
            raise ValueError(f"limits: joint_velocity and joint_torque must have {joints} elements like joint_position")
        if self.workspace.shape != (3,):
            raise ValueError(f"limits: the workspace is an (x, y, z) box, got shape {self.workspace.shape}")
        for name, size in (("joint_position", joints), ("joint_velocity", joints), ("end_effector", 3)):
            index = getattr(self, f"{name}_index")
            if not 0 <= index <= obs_dim - size:
                raise ValueError(f"limits: {name}_index {index} + {size} does not fit the observation ({obs_dim})")
