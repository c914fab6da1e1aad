"""Actor -> policy artifact: one self-contained ONNX model plus its manifest (learner side, torch).

The graph is the whole deployable policy, so the controller needs nothing but onnxruntime:

    obs (B, O) float32 -> (obs - mean) / std -> MLP -> pre-tanh mean, log std clamped to [-20, 2]
                       -> action = tanh(mean) * (high - low) / 2 + (high + low) / 2

with outputs `action` (deterministic, in the env's bounds), `mean` and `log_std` (for exploration in the runner).

Exporter: `torch.onnx.export(dynamo=True, external_data=False)`, opset 18. Both exporters work here (parity to
1e-7); the dynamo one is torch's maintained path (`dynamo=False`, TorchScript, is deprecated since torch 2.9), and
its graph is a plain Split where the TorchScript one computes the split points with Shape/Gather/Slice, which
measured ~2 us faster per batch-1 call on onnxruntime. `external_data=False` is required: by default it writes the
weights to a separate `.onnx.data` file, and an artifact must be one file whose sha256 covers the weights. Its cost
is the export time, ~1 s warm and ~3 s for the first export in a process (the TorchScript exporter: ~20 ms), paid
once per `ArtifactBuilder`: later versions write new weights into the same graph.

Every export is checked before it is returned: `onnx.checker` (full check) and parity with the torch actor on a
probe batch through onnxruntime with the controller's own settings.

`training_step` in a manifest written from a checkpoint is the phase's own counter: a behaviour snapshot's env
steps, phase 1's gradient updates, phase 3's online env steps (the `algorithm` field names the phase).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from acalign_robot.algo.checkpoint import CheckpointError, load_actor, load_checkpoint, reference_of
from acalign_robot.algo.networks import TanhGaussianActor
from acalign_robot.policy.manifest import (
    ARTIFACT_FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAMES,
    Normalization,
    OnnxModel,
    PolicyManifest,
    Space,
    sha256_hex,
    validate_name,
)
from acalign_robot.policy.runner import PolicyRunner
from acalign_robot.policy.store import MANIFEST_FILE, POLICY_FILE, versions

__all__ = ["OPSET", "ArtifactBuilder", "build_artifact", "parity_error", "write_artifact"]

OPSET = 18
PARITY_TOLERANCE = 1e-4  # max |onnx - torch| accepted at export; float32 kernels differ by ~1e-7 in practice


class _DeployedActor(nn.Module):
    """What the graph computes: the actor plus the scaling of tanh(mean) from [-1, 1] into [low, high]."""

    def __init__(self, actor: TanhGaussianActor, action_low: Sequence[float], action_high: Sequence[float]):
        super().__init__()
        # A CPU float32 copy: exporting never touches (or moves) the learner's live actor.
        self.actor = copy.deepcopy(actor).to("cpu", torch.float32).eval().requires_grad_(False)
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float32))
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float32))
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_offset", (high + low) / 2)
        self.eval()  # the exporter warns about a module in training mode (an MLP computes the same either way)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor(obs)
        return torch.tanh(mean) * self.action_scale + self.action_offset, mean, log_std


def _check_bounds(action_dim: int, action_low: Sequence[float], action_high: Sequence[float]) -> None:
    low, high = np.asarray(action_low, dtype=np.float64), np.asarray(action_high, dtype=np.float64)
    if low.shape != (action_dim,) or high.shape != (action_dim,):
        raise ValueError(f"action bounds must have {action_dim} values, got {low.shape} and {high.shape}")
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (low < high).all()):
        raise ValueError(f"action bounds must be finite with low < high, got {low.tolist()} / {high.tolist()}")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs a warning per torchvision op it cannot register and torch.export emits its own
    FutureWarnings: noise for a plain MLP, and it would land in every `acalign export` output."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _export_graph(module: _DeployedActor) -> bytes:
    """`module` as one self-contained ONNX model (see the module docstring for the graph); checked, then returned."""
    example = torch.zeros(2, module.actor.obs_dim)  # batch 2: torch.export specialises a batch of 1 to a constant
    buffer = io.BytesIO()
    with _quiet_exporter():
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    onnx_bytes = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(onnx_bytes), full_check=True)
    return onnx_bytes


def _with_random_weights(module: _DeployedActor) -> _DeployedActor:
    """A copy whose every weight and buffer holds random values in [0.5, 1.5). The exporter's optimiser folds the
    constants it can (a zero bias, a unit std, a unit action scale) and so drops their initializers; a graph exported
    from this copy keeps one initializer per tensor, into which any actor of the same architecture can be written."""
    probe = copy.deepcopy(module)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in probe.state_dict().values():  # state_dict tensors share the module's storage
            tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return probe


def parity_error(
    actor: TanhGaussianActor,
    runner: PolicyRunner,
    action_low: Sequence[float],
    action_high: Sequence[float],
    batch: int = 64,
    seed: int = 0,
) -> float:
    """Max |onnxruntime - torch| over action, mean and log_std on a probe batch around the normaliser's statistics."""
    reference = _DeployedActor(actor, action_low, action_high)
    normalizer = reference.actor.normalizer
    generator = torch.Generator().manual_seed(seed)
    obs = normalizer.mean + normalizer.std * 2.0 * torch.randn(batch, actor.obs_dim, generator=generator)
    with torch.no_grad():
        expected = reference(obs)
    got = runner.act_batch(obs.numpy())
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))


class ArtifactBuilder:
    """Artifacts of one actor, the graph exported once: each version writes the actor's current weights into the
    graph's initializers (`onnx.numpy_helper`) instead of re-running the torch exporter (~1 s, 3 s for a process's
    first; a version then costs milliseconds). The learner keeps one per session and builds off its training thread.

    `meta` is a checkpoint's meta: env_id, obs_dim, action_dim, action_low, action_high; optional obs_low/obs_high
    (unbounded when absent) and ref_random/ref_expert/ref_source (reference scores).
    """

    def __init__(self, actor: TanhGaussianActor, meta: dict[str, Any], source: str, *, name: str, algorithm: str):
        if (actor.obs_dim, actor.action_dim) != (meta["obs_dim"], meta["action_dim"]):
            raise ValueError(
                f"actor is {actor.obs_dim} -> {actor.action_dim}, meta says {meta['obs_dim']} -> {meta['action_dim']}"
            )
        self._meta, self._source, self._name, self._algorithm = meta, source, validate_name(name), algorithm
        self._action_low, self._action_high = meta["action_low"], meta["action_high"]
        _check_bounds(actor.action_dim, self._action_low, self._action_high)
        deployed = self._deployed(actor)
        self._model = onnx.load_from_string(_export_graph(_with_random_weights(deployed)))
        self._initializers = {initializer.name: initializer for initializer in self._model.graph.initializer}
        # Every tensor of the deployed module must be one initializer, or a rewritten version would keep stale
        # weights: the exporter names them by the module's state_dict keys (checked here, once per session).
        missing = set(deployed.state_dict()) - set(self._initializers)
        if missing:
            raise RuntimeError(f"the exported graph holds no initializer for {sorted(missing)}")

    def _deployed(self, actor: TanhGaussianActor) -> _DeployedActor:
        return _DeployedActor(actor, self._action_low, self._action_high)

    def build(self, actor: TanhGaussianActor, training_step: int, version: int) -> tuple[bytes, dict[str, Any]]:
        """(ONNX bytes, manifest dict) of `actor` (same architecture as the exported one) as `version`. Raises
        RuntimeError when the graph with the new weights does not reproduce the torch actor."""
        deployed = self._deployed(actor)
        for key, tensor in deployed.state_dict().items():
            self._initializers[key].CopyFrom(numpy_helper.from_array(tensor.numpy(), key))
        onnx_bytes = self._model.SerializeToString()
        manifest_dict = self._manifest(actor, onnx_bytes, training_step, version).to_dict()
        # Through the strict parser and the runner's own checks: what is returned is what a controller accepts.
        runner = PolicyRunner(onnx_bytes, PolicyManifest.from_dict(manifest_dict, "exported manifest"))
        error = parity_error(actor, runner, self._action_low, self._action_high)
        if error > PARITY_TOLERANCE:
            raise RuntimeError(f"exported graph differs from the torch actor by {error:.3g} (> {PARITY_TOLERANCE})")
        return onnx_bytes, manifest_dict

    def _manifest(self, actor: TanhGaussianActor, onnx_bytes: bytes, training_step: int, version: int):
        meta, obs_dim, normalizer = self._meta, actor.obs_dim, actor.normalizer
        return PolicyManifest(
            protocol_version=ARTIFACT_FORMAT_VERSION,
            name=self._name,
            version=version,
            env_id=meta["env_id"],
            algorithm=self._algorithm,
            training_step=int(training_step),
            source=self._source,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            onnx=OnnxModel(sha256=sha256_hex(onnx_bytes), opset=OPSET),
            observation_space=Space(
                obs_dim,
                tuple(float(v) for v in meta.get("obs_low", [-np.inf] * obs_dim)),
                tuple(float(v) for v in meta.get("obs_high", [np.inf] * obs_dim)),
            ),
            action_space=Space(
                actor.action_dim, tuple(map(float, self._action_low)), tuple(map(float, self._action_high))
            ),
            normalization=Normalization(
                tuple(normalizer.mean.detach().cpu().double().tolist()),
                tuple(normalizer.std.detach().cpu().double().tolist()),
            ),
            reference_scores=reference_of(meta),
        )


def build_artifact(
    actor: TanhGaussianActor,
    meta: dict[str, Any],
    training_step: int,
    source: str,
    *,
    name: str,
    version: int,
    algorithm: str = "ACA phase 3 (online)",
) -> tuple[bytes, dict[str, Any]]:
    """One artifact in memory: (ONNX bytes, manifest dict); `ArtifactBuilder` for a stream of versions."""
    return ArtifactBuilder(actor, meta, source, name=name, algorithm=algorithm).build(actor, training_step, version)


def _algorithm_and_step(payload: dict) -> tuple[str, int]:
    phase, meta = payload["phase"], payload["meta"]
    if phase == "behaviour":
        return "SAC (behaviour policy)", int(meta.get("step", 0))
    if phase == "offline":
        return "ACA phase 1 (offline)", int(meta.get("offline_steps", 0))
    label = "SAC naive fine-tuning (baseline)" if meta.get("finetune") == "naive" else "ACA phase 3 (online)"
    return label, int(payload["agent"].get("env_steps", 0))


def _with_env_spaces(meta: dict[str, Any]) -> dict[str, Any]:
    """Meta plus the env's observation bounds, and its action bounds where the checkpoint lacks them (behaviour
    snapshots do). An env gymnasium cannot make leaves observations unbounded; missing action bounds are an error."""
    import gymnasium as gym

    import acalign_robot.sim_tasks  # noqa: F401 - registers the acalign/ env ids

    try:
        env = gym.make(meta["env_id"])
    except gym.error.Error as exc:
        if "action_low" not in meta:
            raise CheckpointError(
                f"the checkpoint has no action bounds and env {meta['env_id']!r} cannot be made ({exc})"
            ) from None
        return meta
    obs_space, action_space = env.observation_space, env.unwrapped.action_space
    env.close()
    if obs_space.shape != (meta["obs_dim"],):
        raise CheckpointError(f"env {meta['env_id']} observes {obs_space.shape}, the checkpoint {meta['obs_dim']}")
    spaces = {"obs_low": obs_space.low.tolist(), "obs_high": obs_space.high.tolist()}
    if "action_low" not in meta:
        spaces |= {"action_low": action_space.low.tolist(), "action_high": action_space.high.tolist()}
    return {**meta, **spaces}


def write_artifact(checkpoint_path: str | Path, name: str, policies_dir: str | Path = "policies") -> Path:
    """Export a checkpoint's actor as the next version of policy `name`; returns `<policies_dir>/<name>/<version>`.

    The version is built in a hidden temporary directory and renamed into place, so readers never see half an
    artifact and an existing version is never overwritten (a concurrent writer that takes the number first makes
    this one move on to the next number).
    """
    validate_name(name)
    checkpoint_path = Path(checkpoint_path)
    payload = load_checkpoint(checkpoint_path)
    actor = load_actor(payload)
    algorithm, training_step = _algorithm_and_step(payload)
    meta = _with_env_spaces(payload["meta"])
    name_dir = Path(policies_dir) / name
    name_dir.mkdir(parents=True, exist_ok=True)
    version = (versions(name_dir) or [0])[-1] + 1
    onnx_bytes, manifest = build_artifact(
        actor,
        meta,
        training_step,
        str(checkpoint_path.resolve()),
        name=name,
        version=version,
        algorithm=algorithm,
    )
    staging = name_dir / f".staging-{uuid.uuid4().hex}"  # not mkdtemp: its 0700 mode would outlive the rename
    staging.mkdir()
    try:
        _write_synced(staging / POLICY_FILE, onnx_bytes)
        while True:
            _write_synced(staging / MANIFEST_FILE, PolicyManifest.from_dict(manifest).to_json().encode())
            target = name_dir / str(manifest["version"])
            try:
                # rename() onto an existing non-empty directory fails (ENOTEMPTY/EEXIST): never an overwrite
                staging.rename(target)
                return target
            except OSError:
                if not target.exists():
                    raise
                manifest = {**manifest, "version": versions(name_dir)[-1] + 1}
    finally:
        if staging.exists():
            for leftover in staging.iterdir():
                leftover.unlink()
            staging.rmdir()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
