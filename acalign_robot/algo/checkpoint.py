"""Checkpoints: state dicts + config + library versions, written atomically, loaded with `weights_only=True`.

A checkpoint is a dict of tensors and plain Python values only (no pickled classes), so loading never executes
code from the file. Layout:
    {"format": 1, "phase": "behaviour" | "offline" | "online", "agent": {...state dicts...},
     "config": {...}, "meta": {"env_id", "obs_dim", "action_dim", "action_low", "action_high", "dataset", ...},
     "versions": {"acalign_robot", "torch", "numpy"}}

Every writer goes through `save_checkpoint`, which refuses (NonFiniteCheckpointError, nothing written, an existing
file left as it was) a payload holding a floating-point tensor with a NaN or inf anywhere, or a non-finite Python
float in the agent's state: a checkpoint is what the next phase, an export or a resumed learner trusts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

import acalign_robot
from acalign_robot.errors import InputError

__all__ = ["CheckpointError", "NonFiniteCheckpointError", "load_checkpoint", "nonfinite_entries", "save_checkpoint"]

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
    """Write atomically: a temp file in the same directory, fsync, then rename over the target.

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
