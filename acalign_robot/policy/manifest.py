"""The policy manifest: what a controller must know about an exported actor before it runs it (torch-free).

A policy artifact is `policy.onnx` plus this manifest. The manifest states the contract the ONNX graph was built
for (spaces, normalisation, input and output names, opset), where it came from (algorithm, training step, source
checkpoint, time) and the sha256 of the ONNX bytes, so that a controller can refuse an artifact that is corrupt,
tampered with or built for another robot before it ever drives a motor.

The frozen dataclasses below are the single source of truth; `manifest.json` is their saved form:

    {"protocol_version": 1, "name": "hopper", "version": 3, "env_id": "Hopper-v5",
     "algorithm": "ACA phase 1 (offline)", "training_step": 50000, "source": "/abs/runs/x/offline.pt",
     "created": "2026-12-01T06:00:00+00:00",
     "onnx": {"sha256": "<64 hex>", "opset": 18, "input": "obs", "outputs": ["action", "mean", "log_std"]},
     "observation_space": {"dim": 11, "low": ["-inf", ...], "high": ["inf", ...]},
     "action_space": {"dim": 3, "low": [-1.0, ...], "high": [1.0, ...]},
     "normalization": {"mean": [...], "std": [...]},
     "reference_scores": {"random": -20.3, "expert": 3234.3, "source": "dataset hopper-medium-v0"} | null}

Infinite bounds are written as the strings "inf" and "-inf" (JSON has no infinity; a string is unambiguous where
null would not say which infinity, and `float("-inf")` reads it in any language). Action bounds must be finite.
Loading is strict, like the YAML configs: an unknown key, a missing key or a wrong type is a `PolicyError` naming
the dotted field. The same parser reads a manifest that arrives as a dict (msgpack, hot-swap).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from acalign_robot import config as config_io
from acalign_robot.config import FieldError
from acalign_robot.data.scores import ReferenceScores
from acalign_robot.errors import InputError

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "ARTIFACT_FORMAT_VERSION",
    "Normalization",
    "OnnxModel",
    "PolicyError",
    "PolicyManifest",
    "Space",
    "load_manifest",
    "sha256_hex",
    "validate_name",
]

# The artifact's format: the manifest schema and the graph's input/output contract; a runner refuses any other.
# Versioned apart from the wire (wire.protocol.PROTOCOL_VERSION): an artifact outlives the processes that made it.
# The manifest stores it as `protocol_version` (the key artifacts already on disk carry).
ARTIFACT_FORMAT_VERSION = 1
INPUT_NAME = "obs"  # float32 (batch, obs_dim), raw observations: normalisation is inside the graph
OUTPUT_NAMES = ("action", "mean", "log_std")  # action in the env's bounds; pre-tanh mean and clamped log std
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class PolicyError(InputError):
    """A policy artifact (manifest or ONNX file) that is missing, malformed, corrupt or does not fit its robot."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate_name(name: str) -> str:
    """A policy name is a single path component: letters, digits, '_', '.', '-' (max 64), not starting with a dot."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PolicyError(f"policy name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting alphanumeric")
    return name


@dataclass(frozen=True)
class Space:
    """A Box space: `dim` values with elementwise bounds (+-inf allowed for observations)."""

    dim: int
    low: tuple[float, ...]
    high: tuple[float, ...]

    def validate(self) -> None:
        if self.dim < 1:
            raise FieldError("dim", f"must be >= 1, got {self.dim}")
        for field in ("low", "high"):
            values = getattr(self, field)
            if len(values) != self.dim:
                raise FieldError(field, f"has {len(values)} values, dim is {self.dim}")
            if any(math.isnan(v) for v in values):
                raise FieldError(field, "contains NaN")
        if any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise FieldError("low", "is above high somewhere")


@dataclass(frozen=True)
class OnnxModel:
    """The ONNX file's identity and its input/output contract."""

    sha256: str
    opset: int
    input: str = INPUT_NAME
    outputs: tuple[str, ...] = OUTPUT_NAMES

    def validate(self) -> None:
        if not _SHA256.fullmatch(self.sha256):
            raise FieldError("sha256", f"must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.opset < 17:
            raise FieldError("opset", f"must be >= 17, got {self.opset}")
        if self.input != INPUT_NAME:
            raise FieldError("input", f"must be {INPUT_NAME!r}, got {self.input!r}")
        if self.outputs != OUTPUT_NAMES:
            raise FieldError("outputs", f"must be {list(OUTPUT_NAMES)}, got {list(self.outputs)}")


@dataclass(frozen=True)
class Normalization:
    """The observation normaliser's constants, (obs - mean) / std; the graph applies them, this is for the record."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def validate(self) -> None:
        if len(self.mean) != len(self.std):
            raise FieldError("std", f"has {len(self.std)} values, mean has {len(self.mean)}")
        if not all(math.isfinite(v) for v in self.mean):
            raise FieldError("mean", "must be finite")
        if not all(math.isfinite(v) and v > 0 for v in self.std):
            raise FieldError("std", "must be finite and positive")


@dataclass(frozen=True)
class PolicyManifest:
    protocol_version: int
    name: str
    version: int
    env_id: str
    algorithm: str
    training_step: int  # the learner's step counter at export (its meaning per phase: export/onnx_export.py)
    source: str  # the checkpoint (or learner) the actor came from
    created: str  # ISO 8601 with a UTC offset
    onnx: OnnxModel
    observation_space: Space
    action_space: Space
    normalization: Normalization
    reference_scores: ReferenceScores | None = None  # for normalised scores in `acalign eval`

    def validate(self) -> None:
        if self.protocol_version != ARTIFACT_FORMAT_VERSION:
            raise FieldError(
                "protocol_version", f"this runtime reads version {ARTIFACT_FORMAT_VERSION}, got {self.protocol_version}"
            )
        if not _NAME.fullmatch(self.name):
            raise FieldError("name", f"{self.name!r} is not a valid policy name")
        if self.version < 1:
            raise FieldError("version", f"must be >= 1, got {self.version}")
        if not self.env_id:
            raise FieldError("env_id", "must not be empty")
        if self.training_step < 0:
            raise FieldError("training_step", f"must be >= 0, got {self.training_step}")
        try:
            created = datetime.fromisoformat(self.created)
        except ValueError:
            raise FieldError("created", f"not an ISO 8601 time: {self.created!r}") from None
        if created.tzinfo is None:
            raise FieldError("created", f"needs a UTC offset: {self.created!r}")
        if not all(math.isfinite(v) for v in self.action_space.low + self.action_space.high):
            raise FieldError("action_space", "bounds must be finite (the graph scales tanh into them)")
        if any(lo >= hi for lo, hi in zip(self.action_space.low, self.action_space.high)):
            raise FieldError("action_space.low", "must be below high in every dimension")
        if len(self.normalization.mean) != self.observation_space.dim:
            raise FieldError(
                "normalization.mean",
                f"has {len(self.normalization.mean)} values, observation_space.dim is {self.observation_space.dim}",
            )
        scores = self.reference_scores
        if scores is not None and not scores.expert > scores.random:
            raise FieldError("reference_scores.expert", f"must be above random ({scores.random}), got {scores.expert}")

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> PolicyManifest:
        """Strict parse of a manifest's plain-value form (json.load or msgpack output); PolicyError names the field."""
        try:
            return _build(cls, data, "")
        except _ParseError as exc:
            raise PolicyError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples become lists, infinities the strings "inf"/"-inf")."""
        return _encode_infinities(config_io.to_dict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def check_spaces(
        self,
        obs_dim: int | None = None,
        action_dim: int | None = None,
        action_low: typing.Sequence[float] | None = None,
        action_high: typing.Sequence[float] | None = None,
    ) -> None:
        """Refuse (PolicyError) an artifact whose spaces differ from what the robot or env expects."""
        ours = self.observation_space.dim, self.action_space.dim
        for label, expected, actual in (("obs_dim", obs_dim, ours[0]), ("action_dim", action_dim, ours[1])):
            if expected is not None and expected != actual:
                raise PolicyError(f"policy {self.label}: {label} is {actual}, expected {expected}")
        for label, expected, actual in (
            ("action low", action_low, self.action_space.low),
            ("action high", action_high, self.action_space.high),
        ):
            if expected is None:
                continue
            expected = [float(v) for v in expected]
            # float32 bounds (gymnasium's dtype) against the float64 JSON values: compare at float32 precision
            if len(expected) != len(actual) or any(
                not math.isclose(e, a, rel_tol=1e-6, abs_tol=1e-6) for e, a in zip(expected, actual)
            ):
                raise PolicyError(f"policy {self.label}: {label} bounds are {list(actual)}, expected {expected}")

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


def load_manifest(path: str | Path) -> PolicyManifest:
    """Read and validate a manifest.json; every problem is a PolicyError naming the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"{path}: no manifest file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"{path}: not a readable JSON manifest ({exc})") from None
    return PolicyManifest.from_dict(data, str(path))


# ---------------------------------------------------------------------------------------------------------------
# strict dict -> dataclass parsing (the YAML loader in config.py works on YAML nodes, this on decoded values)


class _ParseError(ValueError):
    pass


def _encode_infinities(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return [_encode_infinities(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode_infinities(v) for k, v in value.items()}
    return value


def _dotted(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _build(tp: Any, value: Any, path: str) -> Any:
    label = path or "manifest"
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [option for option in typing.get_args(tp) if option is not type(None)]
        return _build(inner, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _ParseError(f"{label}: expected a list, got {value!r}")
        (inner, _ellipsis) = typing.get_args(tp)
        return tuple(_build(inner, item, f"{path}[{i}]") for i, item in enumerate(value))
    if tp is float:
        if value in ("inf", "-inf"):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _ParseError(f'{label}: expected a number (or "inf"/"-inf"), got {value!r}')
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _ParseError(f"{label}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _ParseError(f"{label}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported manifest field type {tp!r} at {label}")


def _build_dataclass(cls: type, value: Any, path: str) -> Any:
    label = path or "manifest"
    if not isinstance(value, Mapping):
        raise _ParseError(f"{label}: expected an object with {cls.__name__} fields, got {type(value).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(str(key) for key in value if key not in fields)
    if unknown:
        raise _ParseError(f"unknown key '{_dotted(path, unknown[0])}'")
    missing = [
        name
        for name, field in fields.items()
        if name not in value and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise _ParseError(f"missing key '{_dotted(path, missing[0])}'")
    obj = cls(**{key: _build(hints[key], item, _dotted(path, key)) for key, item in value.items()})
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except FieldError as exc:
            raise _ParseError(f"{_dotted(path, exc.field)}: {exc.message}") from None
    return obj
