"""The policy artifact the runtime benchmarks drive: an untrained 2x256 Hopper-v5 actor (latency and fault
handling do not depend on the weights)."""

from __future__ import annotations

import json
from pathlib import Path

HOPPER_META = {
    "env_id": "Hopper-v5",
    "obs_dim": 11,
    "action_dim": 3,
    "action_low": [-1.0] * 3,
    "action_high": [1.0] * 3,
}


def export_hopper_policy(directory: Path) -> tuple[Path, bytes, dict]:
    """Write `directory/bench/1/` (policy.onnx + manifest.json); returns its path, the ONNX bytes and the manifest."""
    import torch

    from acalign_robot.algo.networks import TanhGaussianActor
    from acalign_robot.export.onnx_export import build_artifact
    from acalign_robot.runtime.artifacts import MANIFEST_FILE, POLICY_FILE

    torch.manual_seed(0)
    actor = TanhGaussianActor(11, 3, (256, 256)).requires_grad_(False)
    onnx_bytes, manifest = build_artifact(actor, HOPPER_META, 1, "bench", name="bench", version=1)
    target = directory / "bench" / "1"
    target.mkdir(parents=True)
    (target / POLICY_FILE).write_bytes(onnx_bytes)
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    return target, onnx_bytes, manifest
