"""Where a training run computes: the torch device and its thread count, in-process or in the learner process."""

from __future__ import annotations

import logging

import torch

__all__ = ["resolve_device", "set_torch_threads"]

_log = logging.getLogger(__name__)


def set_torch_threads(threads: int) -> None:
    """Learner processes default to 1 thread: a 2-thread learner disturbs a controller on the same 2 cores."""
    torch.set_num_threads(threads)


def resolve_device(requested: str) -> torch.device:
    """The torch device for `requested` ('auto', 'cpu' or 'cuda'): 'auto' takes CUDA when torch sees a GPU.

    'cuda' on a machine where torch sees none (a CPU build of torch, no driver, CUDA_VISIBLE_DEVICES empty) runs on
    the CPU with a warning instead of failing: a learner keeps working, and its log says why it is slow.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda")
        _log.info("device %s: %s (%s)", requested, device, torch.cuda.get_device_name(device))
        return device
    if requested == "cuda":
        reason = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device visible"
        _log.warning("device cuda requested but torch sees no GPU (%s): running on the CPU", reason)
    return torch.device("cpu")
