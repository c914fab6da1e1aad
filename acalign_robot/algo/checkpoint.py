"""Checkpoints: state dicts + config + library versions, written atomically, loaded with `weights_only=True`.

The one home of the checkpoint format: the pipeline's steps, the learner, the exporter and the tools read and write
checkpoints through this module only.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so loading never executes
code from the file. Layout:
    {"format": 1, "phase": "behaviour" | "offline" | "online", "agent": {...state dicts...},
     "config": {...}, "meta": {"env_id", "obs_dim", "action_dim", "action_low", "action_high", "dataset", ...},
     "versions": {"acalign_robot", "torch", "numpy"}}
`agent` by phase:
    behaviour   {"actor": ...}, a behaviour policy's snapshot (data.collect); config {"sac": SACConfig fields}
    offline     OfflineACA.state_dict(): {"sac": SAC.state_dict(), "z", "z_optimizer"}; config ACAConfig
    online      `online_state`: {"agent": SAC.state_dict(), "buffer": `buffer_state`, "env_steps": phase 3's env
                steps, and in a learner's learner.pt "learner": learner.process.LearnerState}; config ACAConfig

Every writer goes through `save_checkpoint`, which refuses (NonFiniteCheckpointError, nothing written, an existing
file left as it was) a payload holding a floating-point tensor with a NaN or inf anywhere, or a non-finite Python
float in the agent's state: a checkpoint is what the next phase, an export or a resumed learner trusts. It writes
through `acalign_robot.atomic.write_atomic` (temp file, fsync, rename, directory fsync; the temp file
`.NAME.PID.tmp` is removed on failure).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

import acalign_robot
from acalign_robot import config as config_io
from acalign_robot.algo.aca import ACAConfig
from acalign_robot.algo.networks import TanhGaussianActor
from acalign_robot.algo.sac import SAC
from acalign_robot.atomic import write_atomic
from acalign_robot.data.replay_buffer import ReplayBuffer
from acalign_robot.data.scores import ReferenceScores
from acalign_robot.errors import InputError

__all__ = [
    "CheckpointError",
    "NonFiniteCheckpointError",
    "buffer_from_state",
    "buffer_state",
    "load_actor",
    "load_checkpoint",
    "load_online_agent",
    "nonfinite_entries",
    "online_state",
    "reference_of",
    "sac_state",
    "save_checkpoint",
]

FORMAT = 1
PHASES = ("behaviour", "offline", "online")


class CheckpointError(InputError):
    """A checkpoint file that is missing, unreadable or of the wrong kind."""


class NonFiniteCheckpointError(RuntimeError):
    """A checkpoint that would hold NaN or inf; the message names the checkpoint and the entries."""


def nonfinite_entries(value: Any, name: str = "", floats: bool = True) -> list[str]:
    """Dotted names of the floating-point tensors holding NaN or inf in `value` (nested dicts, lists, tuples), with
    how many of their elements are; with `floats`, non-finite Python floats too."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                return [f"{name} ({bad} of {value.numel()} values)"]
        return []
    if isinstance(value, float):
        return [f"{name} ({value})"] if floats and not math.isfinite(value) else []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return []
    return [
        entry for key, item in items for entry in nonfinite_entries(item, f"{name}.{key}" if name else str(key), floats)
    ]


def _versions() -> dict[str, str]:
    return {"acalign_robot": acalign_robot.__version__, "torch": str(torch.__version__), "numpy": str(np.__version__)}


def save_checkpoint(path: str | Path, phase: str, agent_state: dict, config: dict, meta: dict[str, Any]) -> Path:
    """Write atomically and durably (acalign_robot.atomic), creating the directory if needed.

    Raises NonFiniteCheckpointError, writing nothing, when a tensor anywhere or a float of the agent's state is NaN or
    inf (config and meta may hold inf floats: an unbounded action space's bounds).
    """
    if phase not in PHASES:
        raise ValueError(f"unknown checkpoint phase {phase!r}")
    bad = nonfinite_entries(agent_state, "agent") + nonfinite_entries({"config": config, "meta": meta}, floats=False)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteCheckpointError(
            f"{path}: not written, {len(bad)} entries of the {phase} checkpoint hold NaN or inf: {shown}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "phase": phase,
        "agent": agent_state,
        "config": config,
        "meta": meta,
        "versions": _versions(),
    }
    return write_atomic(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, expect_phase: str | tuple[str, ...] | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an acalign checkpoint (format {FORMAT} expected)")
    if expect_phase is not None:
        expected = (expect_phase,) if isinstance(expect_phase, str) else expect_phase
        if payload["phase"] not in expected:
            raise CheckpointError(f"{path}: a '{payload['phase']}' checkpoint, expected {' or '.join(expected)}")
    return payload


# --- the agent entry ---------------------------------------------------------------------------------------------


def buffer_state(buffer: ReplayBuffer) -> dict:
    """A replay buffer as tensors and ints (checkpoints hold no numpy arrays: weights_only loading)."""
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in buffer.state_dict().items()}


def buffer_from_state(state: dict, obs_dim: int, action_dim: int) -> ReplayBuffer:
    buffer = ReplayBuffer(int(state["capacity"]), obs_dim, action_dim)
    buffer.load_state_dict({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state.items()})
    return buffer


def online_state(agent: SAC, buffer: ReplayBuffer, env_steps: int, learner: dict[str, Any] | None = None) -> dict:
    """An 'online' checkpoint's `agent` entry; `learner` is a learner's own state (learner.pt only)."""
    state = {"agent": agent.state_dict(), "buffer": buffer_state(buffer), "env_steps": env_steps}
    return state if learner is None else {**state, "learner": learner}


def load_online_agent(payload: dict, device: str | torch.device = "cpu") -> tuple[SAC, ReplayBuffer, ACAConfig]:
    """The agent (on `device`; checkpoints always load onto the CPU first), its replay buffer and its config."""
    meta = payload["meta"]
    config = config_io.from_dict(ACAConfig, payload["config"], "checkpoint config")
    agent = SAC(meta["obs_dim"], meta["action_dim"], config.sac, device)
    agent.load_state_dict(payload["agent"]["agent"])
    buffer = buffer_from_state(payload["agent"]["buffer"], meta["obs_dim"], meta["action_dim"])
    return agent, buffer, config


def sac_state(payload: dict) -> dict:
    """The SAC state dict of any checkpoint phase (a behaviour snapshot's holds the actor only)."""
    agent_state = payload["agent"]
    if payload["phase"] == "offline":
        return agent_state["sac"]
    if payload["phase"] == "online":
        return agent_state["agent"]
    return agent_state


def load_actor(payload: dict) -> TanhGaussianActor:
    """The actor of any checkpoint phase."""
    meta = payload["meta"]
    hidden = tuple(payload["config"]["sac"]["hidden_sizes"])
    actor = TanhGaussianActor(meta["obs_dim"], meta["action_dim"], hidden)
    actor.load_state_dict(sac_state(payload)["actor"])
    return actor.requires_grad_(False)


def reference_of(meta: dict[str, Any]) -> ReferenceScores | None:
    """The reference scores `meta` records (pipeline.pretrain copies the dataset's), or None."""
    if meta.get("ref_random") is None or meta.get("ref_expert") is None:
        return None
    return ReferenceScores(meta["ref_random"], meta["ref_expert"], meta.get("ref_source", "dataset"))
