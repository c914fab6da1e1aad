"""Export and PolicyRunner: a self-contained graph, parity with the torch actor, exploration statistics, refusals.

One export per module (each costs ~1 s); artifacts that tests damage are copies in tmp_path.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from acalign_robot.algo.networks import ObservationNormalizer, TanhGaussianActor
from acalign_robot.export import onnx_export
from acalign_robot.export.onnx_export import build_artifact, write_artifact
from acalign_robot.policy.manifest import PolicyError, sha256_hex
from acalign_robot.policy.runner import PolicyRunner
from acalign_robot.policy.store import MANIFEST_FILE, POLICY_FILE

OBS_DIM, ACTION_DIM = 11, 3
LOW = np.array([-2.0, 0.0, -0.5], dtype=np.float32)  # not [-1, 1]: the scaling must be in the graph
HIGH = np.array([2.0, 1.0, 3.5], dtype=np.float32)
META = {
    "env_id": "Hopper-v5",
    "obs_dim": OBS_DIM,
    "action_dim": ACTION_DIM,
    "action_low": LOW.tolist(),
    "action_high": HIGH.tolist(),
}


def _actor(seed: int, log_std_bias: tuple[float, ...] | None = None) -> TanhGaussianActor:
    torch.manual_seed(seed)
    actor = TanhGaussianActor(OBS_DIM, ACTION_DIM, (64, 64))
    observations = np.random.default_rng(seed).normal(1.0, 3.0, size=(500, OBS_DIM))
    actor.normalizer.load_state_dict(ObservationNormalizer.from_data(observations).state_dict())
    if log_std_bias is not None:
        with torch.no_grad():
            actor.trunk[-1].bias[ACTION_DIM:] = torch.tensor(log_std_bias)
    return actor.requires_grad_(False)


@pytest.fixture(scope="module")
def clamped():
    """An actor whose log std hits both clamps (+2 and -20) in two of its three dimensions."""
    actor = _actor(0, log_std_bias=(8.0, -30.0, 0.0))
    onnx_bytes, manifest = build_artifact(actor, META, 1234, "test", name="clamped", version=1)
    return actor, onnx_bytes, manifest


@pytest.fixture(scope="module")
def plain():
    actor = _actor(1)
    onnx_bytes, manifest = build_artifact(actor, META, 0, "test", name="plain", version=1)
    return actor, onnx_bytes, manifest


def _torch_reference(actor: TanhGaussianActor, obs: np.ndarray):
    """Written out independently of the exporter's wrapper: normalise, MLP, clamp, tanh, scale to [LOW, HIGH]."""
    with torch.no_grad():
        mean, log_std = actor(torch.as_tensor(obs, dtype=torch.float32))
    mean, log_std = mean.numpy(), log_std.numpy()
    action = LOW + (np.tanh(mean) + 1.0) * (HIGH - LOW) / 2.0
    return action, mean, log_std


def _observations(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(1.0, 6.0, size=(batch, OBS_DIM))  # float64, like MuJoCo's


def _write(directory, onnx_bytes: bytes, manifest: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / POLICY_FILE).write_bytes(onnx_bytes)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_graph_is_one_checked_self_contained_model(clamped):
    _actor_, onnx_bytes, manifest = clamped
    model = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(model, full_check=True)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert all(init.data_location == onnx.TensorProto.DEFAULT for init in model.graph.initializer)
    assert not any(onnx.external_data_helper.uses_external_data(init) for init in model.graph.initializer)
    (graph_input,) = model.graph.input
    assert graph_input.name == "obs" and graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    batch_dim, obs_dim = graph_input.type.tensor_type.shape.dim
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # a dynamic batch axis
    assert obs_dim.dim_value == OBS_DIM
    assert [o.name for o in model.graph.output] == ["action", "mean", "log_std"]
    assert manifest["onnx"]["sha256"] == sha256_hex(onnx_bytes)
    assert manifest["onnx"]["opset"] >= 17


@pytest.mark.parametrize("batch", [1, 64])
def test_parity_with_the_torch_actor(clamped, batch):
    actor, onnx_bytes, manifest = clamped
    runner = PolicyRunner(onnx_bytes, manifest)
    obs = _observations(batch, seed=batch)
    expected = _torch_reference(actor, obs)
    got = runner.act_batch(obs)
    for name, g, e in zip(("action", "mean", "log_std"), got, expected):
        np.testing.assert_allclose(g, e, atol=1e-5, rtol=0, err_msg=name)
    assert (got[2][:, 0] == 2.0).all() and (got[2][:, 1] == -20.0).all()  # both clamps are in the graph
    for row in range(min(batch, 8)):
        np.testing.assert_allclose(runner.act(obs[row]), expected[0][row], atol=1e-5, rtol=0)


def test_actions_stay_in_the_scaled_bounds(clamped):
    actor, onnx_bytes, manifest = clamped
    runner = PolicyRunner(onnx_bytes, manifest, seed=0)
    obs = _observations(256, seed=3) * 10.0  # far outside the data: tanh saturates
    action = runner.act_batch(obs)[0]
    assert (action >= LOW).all() and (action <= HIGH).all()
    assert np.isclose(action, LOW, atol=1e-3).any() or np.isclose(action, HIGH, atol=1e-3).any()
    explored = np.array([runner.act(o, explore=True) for o in obs])
    assert (explored >= LOW).all() and (explored <= HIGH).all()


def test_exploration_matches_the_pre_tanh_gaussian(plain):
    """u = atanh of the rescaled sample is N(mean, exp(log_std)^2): checked with a fixed seed at 5 standard errors."""
    _actor_, onnx_bytes, manifest = plain
    runner = PolicyRunner(onnx_bytes, manifest, seed=123)
    obs = _observations(1, seed=7)[0]
    _, mean, log_std = runner.act_batch(obs[None])
    mean, std = mean[0].astype(np.float64), np.exp(log_std[0].astype(np.float64))
    samples = 20_000
    actions = np.array([runner.act(obs, explore=True) for _ in range(samples)], dtype=np.float64)
    unit = (actions - (HIGH + LOW) / 2) / ((HIGH - LOW) / 2)
    u = np.arctanh(np.clip(unit, -1 + 1e-7, 1 - 1e-7))
    assert np.all(np.abs(u.mean(0) - mean) < 5 * std / math.sqrt(samples))
    assert np.all(np.abs(u.std(0) / std - 1) < 5 / math.sqrt(2 * samples))
    assert np.all(np.abs(np.corrcoef(u.T)[np.triu_indices(ACTION_DIM, 1)]) < 5 / math.sqrt(samples))


def test_exploration_is_seeded_and_deterministic_mode_is_not_random(plain):
    _actor_, onnx_bytes, manifest = plain
    obs = _observations(1, seed=8)[0]
    first, second, other = (PolicyRunner(onnx_bytes, manifest, seed=s) for s in (7, 7, 8))
    second.warm_up()  # what the hot-swap thread does: it must not draw from the noise stream
    draws = [np.array([r.act(obs, explore=True) for _ in range(5)]) for r in (first, second, other)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])
    np.testing.assert_array_equal(first.act(obs), first.act(obs))


def test_runner_loads_a_directory_and_checks_expected_spaces(tmp_path, plain):
    _actor_, onnx_bytes, manifest = plain
    _write(tmp_path / "plain" / "1", onnx_bytes, manifest)
    runner = PolicyRunner.from_dir(
        tmp_path / "plain", obs_dim=OBS_DIM, action_dim=ACTION_DIM, action_low=LOW, action_high=HIGH
    )
    assert runner.manifest.label == "plain/1" and runner.provider == "cpu"
    with pytest.raises(PolicyError, match="policy plain/1: obs_dim is 11, expected 17"):
        PolicyRunner.from_dir(tmp_path / "plain", obs_dim=17)
    with pytest.raises(PolicyError, match="action_dim is 3, expected 6"):
        PolicyRunner.from_dir(tmp_path / "plain", action_dim=6)
    with pytest.raises(PolicyError, match="action low bounds"):
        PolicyRunner.from_dir(tmp_path / "plain", action_low=-np.ones(3))
    for wrong in (np.zeros(1), np.zeros(12), np.zeros((1, 11)), 0.0):
        with pytest.raises(ValueError, match=r"expected an observation of shape \(11,\)"):
            runner.act(wrong)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("flip_byte", "sha256 of the ONNX model is"),
        ("wrong_sha", "sha256 of the ONNX model is"),
        ("truncate", "sha256 of the ONNX model is"),
        ("truncate_with_matching_sha", "not a loadable ONNX model"),
        ("garbage_with_matching_sha", "not a loadable ONNX model"),
        ("truncate_manifest", "not a readable JSON manifest"),
        ("bounds_edited_in_manifest", "action scaling disagrees with the manifest's action bounds"),
        ("missing_onnx", "no policy.onnx"),
    ],
)
def test_damaged_artifacts_are_refused(tmp_path, plain, damage, message):
    _actor_, onnx_bytes, manifest = plain
    manifest = json.loads(json.dumps(manifest))
    directory = tmp_path / "plain" / "1"
    if damage == "flip_byte":
        middle = len(onnx_bytes) // 2
        onnx_bytes = onnx_bytes[:middle] + bytes([onnx_bytes[middle] ^ 0x01]) + onnx_bytes[middle + 1 :]
    elif damage == "wrong_sha":
        manifest["onnx"]["sha256"] = "0" * 64
    elif damage == "truncate":
        onnx_bytes = onnx_bytes[: len(onnx_bytes) // 3]
    elif damage in ("truncate_with_matching_sha", "garbage_with_matching_sha"):
        onnx_bytes = onnx_bytes[: len(onnx_bytes) // 3] if damage.startswith("truncate") else b"\x08\x07garbage" * 50
        manifest["onnx"]["sha256"] = sha256_hex(onnx_bytes)
    elif damage == "bounds_edited_in_manifest":
        manifest["action_space"]["high"] = [4.0, 1.0, 3.5]
    _write(directory, onnx_bytes, manifest)
    if damage == "truncate_manifest":
        text = (directory / MANIFEST_FILE).read_text()
        (directory / MANIFEST_FILE).write_text(text[: len(text) - 40])
    elif damage == "missing_onnx":
        (directory / POLICY_FILE).unlink()
    with pytest.raises(PolicyError, match=message):
        PolicyRunner.from_dir(directory)


def test_provider_choice(plain, caplog):
    _actor_, onnx_bytes, manifest = plain
    with pytest.raises(PolicyError, match="provider must be 'cpu' or 'cuda'"):
        PolicyRunner(onnx_bytes, manifest, provider="tpu")
    with caplog.at_level(logging.WARNING, logger="acalign_robot.policy.runner"):
        runner = PolicyRunner(onnx_bytes, manifest, provider="cuda")
    if runner.provider == "cpu":  # a CPU-only onnxruntime, or onnxruntime-gpu without a usable GPU
        assert "CUDA requested" in caplog.text
    else:
        assert "CUDAExecutionProvider" in ort.get_available_providers()


def test_write_artifact_numbers_versions_and_never_overwrites(tmp_path, make_checkpoint, monkeypatch):
    from acalign_robot.algo.checkpoint import load_actor, load_checkpoint

    checkpoint = make_checkpoint("Hopper-v5")
    store = tmp_path / "policies"
    first = write_artifact(checkpoint, "hopper", store)
    first_bytes = (first / POLICY_FILE).read_bytes()
    second = write_artifact(checkpoint, "hopper", store)
    assert (first.name, second.name) == ("1", "2")

    # A concurrent writer takes number 3 between our look at the store and our rename: we must move on to 4.
    (store / "hopper" / "3").mkdir()
    (store / "hopper" / "3" / "marker").write_text("someone else's")
    real_versions, calls = onnx_export.versions, []

    def stale_on_first_look(name_dir):
        calls.append(name_dir)
        return [v for v in real_versions(name_dir) if v != 3 or len(calls) > 1]

    monkeypatch.setattr(onnx_export, "versions", stale_on_first_look)
    fourth = write_artifact(checkpoint, "hopper", store)
    assert fourth.name == "4" and len(calls) == 2
    assert (first / POLICY_FILE).read_bytes() == first_bytes
    assert (store / "hopper" / "3" / "marker").read_text() == "someone else's"
    assert sorted(p.name for p in (store / "hopper").iterdir()) == ["1", "2", "3", "4"]  # no staging left behind

    runner = PolicyRunner.from_dir(store / "hopper", obs_dim=11, action_dim=3)
    manifest = runner.manifest
    assert (manifest.name, manifest.version, manifest.env_id) == ("hopper", 4, "Hopper-v5")
    assert manifest.algorithm == "ACA phase 1 (offline)" and manifest.training_step == 0
    assert manifest.source == str(checkpoint.resolve())
    assert manifest.observation_space.low == (-math.inf,) * 11
    assert manifest.action_space.low == (-1.0,) * 3
    assert (manifest.reference_scores.random, manifest.reference_scores.expert) == (0.0, 100.0)
    actor = load_actor(load_checkpoint(checkpoint))
    np.testing.assert_allclose(manifest.normalization.mean, actor.normalizer.mean.numpy(), rtol=1e-7)
    obs = _observations(16, seed=5)
    with torch.no_grad():
        expected = torch.tanh(actor(torch.as_tensor(obs, dtype=torch.float32))[0]).numpy()
    np.testing.assert_allclose(runner.act_batch(obs)[0], expected, atol=1e-5, rtol=0)

    with pytest.raises(PolicyError, match="policy name"):
        write_artifact(checkpoint, "../escape", store)


def test_a_builder_writes_each_version_into_one_graph_whatever_weights_it_was_made_from():
    """The graph is exported once (from random weights, so no initializer is folded away: a zero actor with an
    identity normaliser is the worst case) and each version is the same graph with that actor's weights written in."""
    zero = TanhGaussianActor(OBS_DIM, ACTION_DIM, (64, 64)).requires_grad_(False)
    with torch.no_grad():
        for parameter in zero.parameters():
            parameter.zero_()
    builder = onnx_export.ArtifactBuilder(zero, META, "test", name="stream", algorithm="test")
    obs = np.random.default_rng(2).normal(1.0, 3.0, size=(16, OBS_DIM)).astype(np.float32)
    graphs = []
    for version, actor in enumerate((zero, _actor(3), _actor(4)), start=1):
        onnx_bytes, manifest = builder.build(actor, training_step=10 * version, version=version)
        assert manifest["version"] == version and manifest["onnx"]["sha256"] == sha256_hex(onnx_bytes)
        got = PolicyRunner(onnx_bytes, manifest).act_batch(obs)
        for g, e in zip(got, _torch_reference(actor, obs)):
            np.testing.assert_allclose(g, e, atol=1e-5)
        graphs.append([(node.op_type, list(node.input)) for node in onnx.load_from_string(onnx_bytes).graph.node])
    assert graphs[0] == graphs[1] == graphs[2]
