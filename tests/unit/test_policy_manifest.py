"""The policy manifest and the on-disk store: strict parsing that names the bad field, infinities, layout helpers."""

from __future__ import annotations

import copy
import json
import math

import pytest

from acalign_robot.data.scores import ReferenceScores
from acalign_robot.policy.manifest import (
    ARTIFACT_FORMAT_VERSION,
    Normalization,
    OnnxModel,
    PolicyError,
    PolicyManifest,
    Space,
    load_manifest,
    sha256_hex,
    validate_name,
)
from acalign_robot.policy.store import list_policies, resolve_artifact, resolve_ref, versions

INF = math.inf


def sample_manifest() -> PolicyManifest:
    return PolicyManifest(
        protocol_version=ARTIFACT_FORMAT_VERSION,
        name="hopper",
        version=3,
        env_id="Hopper-v5",
        algorithm="ACA phase 1 (offline)",
        training_step=50_000,
        source="/runs/x/offline.pt",
        created="2026-12-01T06:00:00+00:00",
        onnx=OnnxModel(sha256="ab" * 32, opset=18),
        observation_space=Space(2, (-INF, 0.0), (INF, 1.5)),
        action_space=Space(2, (-2.0, 0.0), (2.0, 1.0)),
        normalization=Normalization((0.5, -1.0), (2.0, 0.25)),
        reference_scores=ReferenceScores(-20.0, 3000.0, "dataset hopper-medium-v0"),
    )


def test_round_trip_through_json_with_infinite_bounds_as_strings():
    manifest = sample_manifest()
    text = manifest.to_json()
    assert '"-inf"' in text and '"inf"' in text and "Infinity" not in text
    assert PolicyManifest.from_dict(json.loads(text)) == manifest
    assert manifest.to_dict()["observation_space"]["low"] == ["-inf", 0.0]


def test_reference_scores_are_optional():
    data = sample_manifest().to_dict()
    data["reference_scores"] = None
    assert PolicyManifest.from_dict(data).reference_scores is None
    del data["reference_scores"]
    assert PolicyManifest.from_dict(data).reference_scores is None


def _edited(edit) -> dict:
    data = copy.deepcopy(sample_manifest().to_dict())
    edit(data)
    return data


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["onnx"].update(extra=1), "unknown key 'onnx.extra'"),
        (lambda d: d.update(colour="red"), "unknown key 'colour'"),
        (lambda d: d["action_space"].pop("high"), "missing key 'action_space.high'"),
        (lambda d: d.pop("onnx"), "missing key 'onnx'"),
        (lambda d: d.update(version="3"), "version: expected an integer"),
        (lambda d: d.update(version=True), "version: expected an integer"),
        (lambda d: d["normalization"].update(mean=[0.5, "x"]), "normalization.mean[1]: expected a number"),
        (lambda d: d["action_space"].update(low=[-1.0]), "action_space.low: has 1 values, dim is 2"),
        (lambda d: d["action_space"].update(high=["inf", 1.0]), "action_space: bounds must be finite"),
        (lambda d: d["action_space"].update(low=[2.0, 0.0]), "action_space.low: must be below high"),
        (lambda d: d["onnx"].update(sha256="XYZ"), "onnx.sha256: must be 64 lowercase hex digits"),
        (lambda d: d["onnx"].update(opset=13), "onnx.opset: must be >= 17"),
        (lambda d: d["onnx"].update(outputs=["action"]), "onnx.outputs: must be"),
        (lambda d: d.update(protocol_version=99), "protocol_version: this runtime reads version 1, got 99"),
        (lambda d: d["normalization"].update(std=[1.0, 0.0]), "normalization.std: must be finite and positive"),
        (lambda d: d["normalization"].update(mean=[0.0], std=[1.0]), "normalization.mean: has 1 values"),
        (lambda d: d.update(created="yesterday"), "created: not an ISO 8601 time"),
        (lambda d: d.update(created="2026-12-01T06:00:00"), "created: needs a UTC offset"),
        (lambda d: d.update(name="../etc"), "name: '../etc' is not a valid policy name"),
        (lambda d: d["reference_scores"].update(expert=-50.0), "reference_scores.expert: must be above random"),
    ],
)
def test_bad_manifest_is_refused_naming_the_field(edit, message):
    with pytest.raises(PolicyError) as caught:
        PolicyManifest.from_dict(_edited(edit), "policies/hopper/3/manifest.json")
    assert str(caught.value).startswith("policies/hopper/3/manifest.json: ")
    assert message in str(caught.value)


def test_not_a_mapping_is_refused():
    with pytest.raises(PolicyError, match="expected an object with PolicyManifest fields"):
        PolicyManifest.from_dict([1, 2, 3])


def test_load_manifest_reports_missing_and_truncated_files(tmp_path):
    with pytest.raises(PolicyError, match="no manifest file"):
        load_manifest(tmp_path / "manifest.json")
    text = sample_manifest().to_json()
    (tmp_path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(PolicyError, match="not a readable JSON manifest"):
        load_manifest(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text(text)
    assert load_manifest(tmp_path / "manifest.json") == sample_manifest()


def test_check_spaces_names_the_mismatch():
    manifest = sample_manifest()
    manifest.check_spaces(obs_dim=2, action_dim=2, action_low=[-2.0, 0.0], action_high=[2.0, 1.0])
    with pytest.raises(PolicyError, match="policy hopper/3: obs_dim is 2, expected 17"):
        manifest.check_spaces(obs_dim=17)
    with pytest.raises(PolicyError, match="action_dim is 2, expected 3"):
        manifest.check_spaces(action_dim=3)
    with pytest.raises(PolicyError, match=r"action high bounds are \[2.0, 1.0\], expected \[1.0, 1.0\]"):
        manifest.check_spaces(action_high=[1.0, 1.0])


def test_sha256_hex_and_names():
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert validate_name("hopper-medium_v2.1") == "hopper-medium_v2.1"
    for bad in ("", ".hidden", "a/b", "x" * 65, "spa ce"):
        with pytest.raises(PolicyError, match="policy name"):
            validate_name(bad)


def test_store_layout_helpers(tmp_path):
    store = tmp_path / "policies"
    for version in ("1", "2", "10"):
        (store / "hopper" / version).mkdir(parents=True)
        (store / "hopper" / version / "manifest.json").write_text("{}")
    (store / "hopper" / ".staging-abc").mkdir()  # an export in progress is not a version
    (store / "empty").mkdir()
    assert versions(store / "hopper") == [1, 2, 10]
    assert list_policies(store) == {"hopper": [1, 2, 10]}
    assert list_policies(tmp_path / "absent") == {}
    assert resolve_artifact(store / "hopper") == store / "hopper" / "10"
    assert resolve_artifact(store / "hopper" / "2") == store / "hopper" / "2"
    assert resolve_ref(store, "hopper") == store / "hopper" / "10"
    assert resolve_ref(store, "hopper/2") == store / "hopper" / "2"
    with pytest.raises(PolicyError, match=r"no policy hopper/3 .*versions: \[1, 2, 10\]"):
        resolve_ref(store, "hopper/3")
    with pytest.raises(PolicyError, match="version must be a positive integer"):
        resolve_ref(store, "hopper/latest")
    with pytest.raises(PolicyError, match="neither a policy version"):
        resolve_artifact(store / "empty")
