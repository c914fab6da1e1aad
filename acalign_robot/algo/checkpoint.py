"""Checkpoints: state dicts + config + library versions, written atomically, loaded with `weights_only=True`.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so loading never executes
code from the file. Layout:
    {"format": 1, "phase": "behaviour" | "offline" | "online", "agent": {...state dicts...},
     "config": {...}, "meta": {"env_id", "obs_dim", "action_dim", "action_low", "action_high", "dataset", ...},
     "versions": {"acalign_robot", "torch", "numpy"}}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

import acalign_robot
from acalign_robot.errors import InputError

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = 1
PHASES = ("behaviour", "offline", "online")


class CheckpointError(InputError):
    """A checkpoint file that is missing, unreadable or of the wrong kind."""


def _versions() -> dict[str, str]:
    return {"acalign_robot": acalign_robot.__version__, "torch": str(torch.__version__), "numpy": str(np.__version__)}


def save_checkpoint(path: str | Path, phase: str, agent_state: dict, config: dict, meta: dict[str, Any]) -> Path:
    """Write atomically: a temp file in the same directory, fsync, then rename over the target."""
    if phase not in PHASES:
        raise ValueError(f"unknown checkpoint phase {phase!r}")
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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return path


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
