"""The controller side runs without torch: the policy runtime imports and acts in a process where torch is blocked."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from acalign_robot.algo.networks import TanhGaussianActor
from acalign_robot.export.onnx_export import build_artifact
from acalign_robot.policy.store import MANIFEST_FILE, POLICY_FILE

# Blocks torch and the learner-only onnx packages (a robot computer has onnxruntime, not onnx) for the whole process,
# then loads an artifact and runs the runner and the evaluator's imports.
SCRIPT = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "onnx", "onnxscript"}:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocked())
import json
import numpy as np
from acalign_robot.policy.runner import PolicyRunner
import acalign_robot.policy.store, acalign_robot.policy.evaluate, acalign_robot.policy.manifest

runner = PolicyRunner.from_dir(sys.argv[1], obs_dim=4, action_dim=2)
action = runner.act(np.asarray(json.loads(sys.argv[2])), explore=False)
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {"torch", "onnx", "onnxscript"})
print(json.dumps({"action": action.tolist(), "loaded": loaded}))
"""


def test_policy_runtime_imports_and_runs_with_torch_blocked(tmp_path):
    torch.manual_seed(0)
    actor = TanhGaussianActor(4, 2, (16, 16)).requires_grad_(False)
    meta = {"env_id": "Test-v0", "obs_dim": 4, "action_dim": 2, "action_low": [-1, -3], "action_high": [1, 3]}
    onnx_bytes, manifest = build_artifact(actor, meta, 0, "test", name="tiny", version=1)
    directory = tmp_path / "tiny" / "1"
    directory.mkdir(parents=True)
    (directory / POLICY_FILE).write_bytes(onnx_bytes)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    obs = [0.1, -0.2, 0.3, 0.5]

    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(directory), json.dumps(obs)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["loaded"] == []
    with torch.no_grad():
        mean, _ = actor(torch.tensor([obs]))
    expected = torch.tanh(mean)[0].numpy() * np.array([1.0, 3.0])
    np.testing.assert_allclose(reply["action"], expected, atol=1e-5, rtol=0)
