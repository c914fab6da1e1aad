"""PolicyRunner: an exported actor on onnxruntime, ready for a control loop (torch-free).

The controller's inference path. Loading is where all the checking happens, off the hot path: the manifest is
validated, the ONNX bytes must match its sha256, the spaces must match what the robot expects, the graph's input
and outputs must match the manifest ((batch, dim) with a dynamic batch), and one probe inference must be finite and
agree with the manifest's action bounds. A runner that was built is safe to swap in by a single reference
assignment; every failure before that, onnxruntime's own exception types on validation-time inference included, is a
`PolicyError` (bad input), never a crash of the controller.

Inference settings follow the timing model (docs: ENVIRONMENT.md measured them): one intra-op and one inter-op
thread (a controller shares its cores with the driver and often the learner), all graph optimisations, and a
preallocated float32 batch-1 input buffer so that `act` allocates nothing for its input.

Exploration happens here, not in the graph: the graph outputs the pre-tanh mean and log std, and `act(explore=True)`
draws u = mean + std * noise from a seeded numpy Generator and returns tanh(u) scaled to the bounds, the same
distribution as the learner's `TanhGaussianActor.sample`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from acalign_robot.policy.manifest import PolicyError, PolicyManifest, sha256_hex
from acalign_robot.policy.store import read_artifact, resolve_artifact

__all__ = ["PolicyRunner", "Provider", "session_options"]

Provider = Literal["cpu", "cuda"]
_ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_log = logging.getLogger(__name__)


def session_options() -> ort.SessionOptions:
    """The controller's onnxruntime settings: 1 intra-op and 1 inter-op thread, all graph optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class PolicyRunner:
    """One policy version, loaded, verified and ready: `act(obs)` for control, `act_batch` for validation.

    `manifest` may be a `PolicyManifest` or its dict form (as received with the bytes in a hot-swap). The expected
    spaces, when given, are checked against the manifest. `seed` seeds the exploration noise (an int, or a numpy
    Generator to continue one stream across policy versions).
    """

    def __init__(
        self,
        onnx_bytes: bytes,
        manifest: PolicyManifest | Mapping[str, Any],
        *,
        obs_dim: int | None = None,
        action_dim: int | None = None,
        action_low: np.ndarray | None = None,
        action_high: np.ndarray | None = None,
        provider: Provider = "cpu",
        seed: int | np.random.Generator | None = None,
    ):
        for _stage in self._load(onnx_bytes, manifest, obs_dim, action_dim, action_low, action_high, provider, seed):
            pass

    @classmethod
    def in_stages(cls, onnx_bytes: bytes, manifest: PolicyManifest | Mapping[str, Any], **kwargs: Any):
        """The constructor as a generator of three stages, each well under 1 ms here (verify: manifest and sha256;
        session: onnxruntime builds it; check: graph and probe): `next()` runs one, and the runner is the
        StopIteration's value. The hot-swap thread runs one stage per idle window of the control loop."""
        runner = cls.__new__(cls)
        yield from runner._load(onnx_bytes, manifest, **kwargs)
        return runner

    def _load(
        self,
        onnx_bytes: bytes,
        manifest: PolicyManifest | Mapping[str, Any],
        obs_dim: int | None = None,
        action_dim: int | None = None,
        action_low: np.ndarray | None = None,
        action_high: np.ndarray | None = None,
        provider: Provider = "cpu",
        seed: int | np.random.Generator | None = None,
    ) -> Iterator[str]:
        if not isinstance(manifest, PolicyManifest):
            manifest = PolicyManifest.from_dict(manifest)
        self.manifest = manifest
        onnx_bytes = bytes(onnx_bytes)  # onnxruntime rejects memoryview / bytearray
        digest = sha256_hex(onnx_bytes)
        if digest != manifest.onnx.sha256:
            raise PolicyError(
                f"policy {manifest.label}: sha256 of the ONNX model is {digest}, the manifest says "
                f"{manifest.onnx.sha256} (corrupt, truncated or tampered with)"
            )
        manifest.check_spaces(obs_dim, action_dim, action_low, action_high)
        self.obs_dim, self.action_dim = manifest.observation_space.dim, manifest.action_space.dim
        yield "verify"
        self._session = self._build_session(onnx_bytes, provider)
        yield "session"
        self.provider: Provider = "cuda" if self._session.get_providers()[0] == _ORT_PROVIDERS["cuda"] else "cpu"
        self._check_graph()

        low = np.asarray(manifest.action_space.low, dtype=np.float32)
        high = np.asarray(manifest.action_space.high, dtype=np.float32)
        self._action_scale, self._action_offset = (high - low) / 2, (high + low) / 2
        self._rng = np.random.default_rng(seed)
        self._obs = np.zeros((1, self.obs_dim), dtype=np.float32)  # the batch-1 input, reused by every act()
        self._feed = {manifest.onnx.input: self._obs}
        self._action_output = [manifest.onnx.outputs[0]]
        self._distribution_outputs = list(manifest.onnx.outputs[1:])
        self._probe()

    @classmethod
    def from_dir(cls, directory: str | Path, **kwargs: Any) -> PolicyRunner:
        """Load `<name>/<version>/` (or `<name>/`, its latest version); keyword arguments as for the constructor."""
        onnx_bytes, manifest = read_artifact(resolve_artifact(directory))
        return cls(onnx_bytes, manifest, **kwargs)

    def act(self, obs: np.ndarray, explore: bool = False) -> np.ndarray:
        """One observation (obs_dim,) -> one action (action_dim,) in the env's bounds, float32.

        Deterministic: tanh(mean) scaled (the graph's `action` output). Exploring: tanh(mean + std * noise) scaled.
        """
        if np.shape(obs) != self._obs.shape[1:]:  # assignment alone would broadcast a scalar or a (1,) array
            raise ValueError(f"expected an observation of shape ({self.obs_dim},), got {np.shape(obs)}")
        self._obs[0] = obs  # casts float64 observations to float32
        if not explore:
            return self._session.run(self._action_output, self._feed)[0][0]
        mean, log_std = self._session.run(self._distribution_outputs, self._feed)
        noise = self._rng.standard_normal(self.action_dim, dtype=np.float32)
        return np.tanh(mean[0] + np.exp(log_std[0]) * noise) * self._action_scale + self._action_offset

    def warm_up(self) -> None:
        """Run both batch-1 paths of `act` once (no noise drawn), so that a new version's first control tick does not
        pay onnxruntime's first-run setup (measured: +20 us, up to +250 us, on the tick that swaps)."""
        self._session.run(self._action_output, self._feed)
        self._session.run(self._distribution_outputs, self._feed)

    def inference_seconds(self, obs: np.ndarray, explore: bool = False) -> float:
        """Wall time (s) of the graph call `act(obs, explore)` makes, without drawing noise: the hot-swap gate's
        latency measure. It writes the batch-1 input buffer, so only for a runner the control loop does not use."""
        self._obs[0] = obs
        outputs = self._distribution_outputs if explore else self._action_output
        started = time.perf_counter()
        self._run(outputs, self._feed)
        return time.perf_counter() - started

    def act_batch(self, obs_batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, obs_dim) -> (action, mean, log_std), each (B, action_dim): deterministic, for validation."""
        obs_batch = np.ascontiguousarray(obs_batch, dtype=np.float32)
        if obs_batch.ndim != 2 or obs_batch.shape[1] != self.obs_dim:
            raise ValueError(f"expected observations of shape (B, {self.obs_dim}), got {obs_batch.shape}")
        action, mean, log_std = self._run(list(self.manifest.onnx.outputs), {self.manifest.onnx.input: obs_batch})
        return action, mean, log_std

    def _run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """A validation-time session call; onnxruntime's own exception types (a graph that fails on this input, a
        shape it refuses) become PolicyError. `act` calls the session directly: nothing in the tick's path."""
        try:
            return self._session.run(outputs, feed)
        except Exception as exc:  # onnxruntime.capi...InvalidArgument, Fail, RuntimeException, ...
            raise PolicyError(
                f"policy {self.manifest.label}: inference failed ({type(exc).__name__}: {str(exc)[:200]})"
            ) from None

    def _build_session(self, onnx_bytes: bytes, provider: str) -> ort.InferenceSession:
        if provider not in _ORT_PROVIDERS:
            raise PolicyError(f"provider must be 'cpu' or 'cuda', got {provider!r}")
        providers = [_ORT_PROVIDERS["cpu"]]
        if provider == "cuda":
            if _ORT_PROVIDERS["cuda"] in ort.get_available_providers():
                providers.insert(0, _ORT_PROVIDERS["cuda"])
            else:
                _log.warning("CUDA requested but this onnxruntime has no CUDA provider: running on the CPU")
                provider = "cpu"
        try:
            session = ort.InferenceSession(onnx_bytes, session_options(), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unparsable or invalid models
            raise PolicyError(
                f"policy {self.manifest.label}: not a loadable ONNX model ({type(exc).__name__}: {exc})"
            ) from None
        # onnxruntime-gpu lists CUDA as available even where its libraries or the device are missing, and then
        # silently runs on the CPU: what the session really uses is the truth.
        if provider == "cuda" and session.get_providers()[0] != _ORT_PROVIDERS["cuda"]:
            _log.warning("CUDA requested but the session runs on %s", session.get_providers()[0])
        return session

    def _check_graph(self) -> None:
        """The graph's input and outputs must be the ones the manifest promises, with the manifest's widths."""
        label, onnx = self.manifest.label, self.manifest.onnx
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != onnx.input or inputs[0].type != "tensor(float)":
            found = [(i.name, i.type) for i in inputs]
            raise PolicyError(
                f"policy {label}: the graph's inputs are {found}, expected one float tensor {onnx.input!r}"
            )
        # (batch, obs_dim) with a dynamic batch: the control loop runs batch 1, the hot-swap gate a probe batch.
        # onnxruntime reports a dynamic dimension as its name (str) or None, a fixed one as an int.
        shape = inputs[0].shape
        if len(shape) != 2 or isinstance(shape[0], int) or shape[1] != self.obs_dim:
            raise PolicyError(
                f"policy {label}: the graph's input has shape {shape}, expected (batch, {self.obs_dim}) with a "
                "dynamic batch"
            )
        outputs = {o.name: o for o in self._session.get_outputs()}
        for name in onnx.outputs:
            if name not in outputs:
                raise PolicyError(f"policy {label}: the graph has no output {name!r} (it has {sorted(outputs)})")
            shape = outputs[name].shape
            if len(shape) != 2 or shape[1] != self.action_dim:
                raise PolicyError(
                    f"policy {label}: output {name!r} has shape {shape}, expected (batch, {self.action_dim})"
                )

    def _probe(self) -> None:
        """One inference at the normaliser's mean: finite outputs, and an action that the manifest's bounds explain.

        The sha256 covers the ONNX file, not the manifest: this catches a manifest whose bounds (which the
        exploration path uses) disagree with the scaling baked into the graph.
        """
        label = self.manifest.label
        probe = np.asarray(self.manifest.normalization.mean, dtype=np.float32)[None]
        action, mean, log_std = self.act_batch(probe)
        if any(x.shape != (1, self.action_dim) for x in (action, mean, log_std)):
            raise PolicyError(f"policy {label}: outputs have shapes {[x.shape for x in (action, mean, log_std)]}")
        if not all(np.isfinite(x).all() for x in (action, mean, log_std)):
            raise PolicyError(f"policy {label}: non-finite outputs on the probe observation")
        expected = np.tanh(mean) * self._action_scale + self._action_offset
        if not np.allclose(action, expected, rtol=1e-4, atol=1e-4 * float(np.abs(self._action_scale).max())):
            raise PolicyError(f"policy {label}: the graph's action scaling disagrees with the manifest's action bounds")
