"""The learner's `device`: CPU runs with a fixed seed are bit-identical; `cuda` without a GPU falls back, and says so.

The learner runs on the in-memory transport with a stub export (as in test_learner.py). A GPU path cannot be checked on
the machines these tests run on; the fallback is checked with torch's CUDA probe forced to 'no GPU', so the test means
the same on a machine that has one.
"""

from __future__ import annotations

import logging

import pytest
import torch

from acalign_robot import config as config_io
from acalign_robot.algo.device import resolve_device
from acalign_robot.config import ConfigError
from acalign_robot.learner import process
from acalign_robot.learner.config import LearnerConfig
from acalign_robot.learner.process import Learner
from acalign_robot.wire.memory import MemoryPolicyPublisher, MemoryTransitionReceiver, MemoryTransitionSender
from tests.learner_helpers import transition_batch, write_aligned_checkpoint

BATCH = 32


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The learner's default: with 2 threads on a busy 2-core machine an update takes far longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class StubBuilder:
    """Stands in for ArtifactBuilder: an export costs ~1-3 s and these tests compare devices, not artifacts."""

    def __init__(self, actor, meta, source, *, name, algorithm):
        pass

    def build(self, actor, training_step, version):
        return b"onnx", {"version": version}


@pytest.fixture
def stub_export(monkeypatch):
    monkeypatch.setattr(process, "ArtifactBuilder", StubBuilder)


@pytest.fixture
def checkpoint(tmp_path):
    return write_aligned_checkpoint(tmp_path / "aligned.pt", seeded=64, batch_size=BATCH)


def train_on_fixed_batches(checkpoint, checkpoint_dir, device: str) -> Learner:
    """A fresh learner (seed 0) fed the same three batches, every owed update run."""
    receiver = MemoryTransitionReceiver(queue_messages=64)
    sender = MemoryTransitionSender(receiver)
    config = LearnerConfig(checkpoint=str(checkpoint), checkpoint_dir=str(checkpoint_dir), device=device, seed=0)
    learner = Learner(config, receiver, MemoryPolicyPublisher())
    for seq in range(3):
        assert sender.send(transition_batch("robot-0", seq, 20, seed=seq))
    learner.receive()
    while learner.owed_updates:
        learner.train()
    return learner


def tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested state dict (optimiser moments included), by dotted path."""
    found = {}
    for key, value in state.items():
        path = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            found[path] = value
        elif isinstance(value, dict):
            found |= tensors(value, f"{path}.")
        elif isinstance(value, (list, tuple)):
            found |= tensors(dict(enumerate(value)), f"{path}.")
    return found


def test_a_fixed_seed_on_the_cpu_gives_bit_identical_updates(checkpoint, tmp_path, stub_export):
    first = train_on_fixed_batches(checkpoint, tmp_path / "first", "cpu")
    second = train_on_fixed_batches(checkpoint, tmp_path / "second", "cpu")
    assert first.device == second.device == torch.device("cpu")
    assert first.updates == second.updates > 20  # 60 transitions on a seeded buffer of 64: one update per step
    state, again = tensors(first.agent.state_dict()), tensors(second.agent.state_dict())
    assert state.keys() == again.keys() and any("optimizer" in key for key in state)
    different = [key for key in state if not torch.equal(state[key], again[key])]
    assert different == []
    assert first.agent.alpha == second.agent.alpha and first.agent.prior.w == second.agent.prior.w


def test_cuda_without_a_gpu_runs_on_the_cpu_with_a_warning(checkpoint, tmp_path, stub_export, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="acalign_robot.algo.device"):
        learner = train_on_fixed_batches(checkpoint, tmp_path / "learner", "cuda")
    assert learner.device == torch.device("cpu") and learner.updates > 0
    assert all(p.device.type == "cpu" for p in learner.agent.actor.parameters())
    assert learner.snapshot()["device"] == "cpu"
    (record,) = [r for r in caplog.records if "device cuda requested" in r.getMessage()]
    assert record.levelno == logging.WARNING and "running on the CPU" in record.getMessage()


def test_auto_takes_the_cpu_quietly_without_a_gpu_and_bad_names_are_refused(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="acalign_robot.algo.device"):
        assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    assert caplog.records == []
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="device"):
        config_io.load_text(LearnerConfig, "checkpoint: a.pt\ndevice: gpu\n", "learner.yaml")
