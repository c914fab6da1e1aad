"""`evaluate_policy` runs the exported artifact in the raw gymnasium env and agrees with the checkpoint's evaluation."""

from __future__ import annotations

import pytest

from acalign_robot.algo.pipeline import evaluate_checkpoint
from acalign_robot.export.onnx_export import write_artifact
from acalign_robot.policy.evaluate import evaluate_policy
from acalign_robot.policy.manifest import PolicyError

pytestmark = pytest.mark.integration


def test_artifact_and_checkpoint_evaluations_agree_on_non_unit_bounds(tmp_path, make_checkpoint):
    # Pendulum's torque bounds are [-2, 2]: the artifact scales inside the graph, the checkpoint path through
    # gymnasium's RescaleAction; the same seeds must give the same returns.
    checkpoint = make_checkpoint("Pendulum-v1")
    directory = write_artifact(checkpoint, "pendulum", tmp_path / "policies")

    from_artifact = evaluate_policy(directory.parent, episodes=2, seed=100)
    from_checkpoint = evaluate_checkpoint(checkpoint, None, 2, 100)

    assert from_artifact.keys() == from_checkpoint.keys()
    assert from_artifact["env_id"] == "Pendulum-v1" and from_artifact["episodes"] == 2
    assert from_artifact["return_mean"] == pytest.approx(from_checkpoint["return_mean"], rel=1e-3)
    assert from_artifact["normalized_score"] == pytest.approx(from_artifact["return_mean"])  # references 0 / 100

    with pytest.raises(PolicyError, match="obs_dim is 3, expected 11"):
        evaluate_policy(directory, env_id="Hopper-v5", episodes=1)
