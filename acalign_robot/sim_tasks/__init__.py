"""Sim tasks of this project, registered as gymnasium env ids on import (torch-free; needs gymnasium and mujoco).

- `acalign/PandaReach-v0`: a Franka Panda reaches a random target at 50 Hz (panda_reach.py).

Every tool that makes an env by id imports this first (`acalign collect / pretrain / eval`, the MuJoCo driver,
log replay); other code (SB3, RemoteEnv users) does `import acalign_robot.sim_tasks` before `gymnasium.make`.
Registration is not done on `import acalign_robot`: gymnasium costs ~0.4 s to import, and a controller-only install
has no gymnasium at all.
"""

from __future__ import annotations

import gymnasium

__all__ = ["PANDA_REACH"]

PANDA_REACH = "acalign/PandaReach-v0"

if PANDA_REACH not in gymnasium.registry:  # importlib.reload must not register twice (gymnasium warns)
    gymnasium.register(
        PANDA_REACH, entry_point="acalign_robot.sim_tasks.panda_reach:PandaReachEnv", max_episode_steps=100
    )
