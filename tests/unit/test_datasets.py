import minari
import numpy as np
import pytest

from acalign_robot.data.datasets import DatasetError, dataset_id_from_name, load_transitions, write_dataset
from acalign_robot.data.scores import d4rl_reference, dataset_reference, normalized_score
from tests.helpers import make_episodes


def test_write_read_round_trip_keeps_terminals_and_truncations(minari_store):
    episodes = make_episodes(5)
    write_dataset(
        "rt-v0",
        episodes,
        "Hopper-v5",
        algorithm="synthetic",
        description="d",
        ref_min_score=-1.0,
        ref_max_score=9.0,
        extra_metadata={"kind": "medium", "seed": 3},
    )
    view = load_transitions("rt-v0")
    assert len(view) == sum(len(e) for e in episodes) and view.num_episodes == 5
    np.testing.assert_array_equal(view.terminals, np.concatenate([e.terminations for e in episodes]))
    np.testing.assert_array_equal(view.truncations, np.concatenate([e.truncations for e in episodes]))
    np.testing.assert_allclose(view.next_observations[: len(episodes[0])], episodes[0].observations[1:])
    np.testing.assert_allclose(view.episode_returns(), [e.episode_return for e in episodes])
    dataset = minari.load_dataset("rt-v0")
    assert dataset.storage.metadata["acalign_kind"] == "medium"
    assert dataset_reference(view.metadata).expert == 9.0


def test_load_by_path(minari_store):
    write_dataset("bypath-v0", make_episodes(2), "Hopper-v5", algorithm="a", description="d")
    assert len(load_transitions(minari_store / "bypath-v0")) == 20 + 21


def test_refuses_overwrite_without_force(minari_store):
    write_dataset("once-v0", make_episodes(1), "Hopper-v5", algorithm="a", description="d")
    with pytest.raises(DatasetError, match="already exists"):
        write_dataset("once-v0", make_episodes(1), "Hopper-v5", algorithm="a", description="d")
    write_dataset("once-v0", make_episodes(2), "Hopper-v5", algorithm="a", description="d", force=True)
    assert load_transitions("once-v0").num_episodes == 2


def test_missing_dataset_is_input_error_without_download(minari_store):
    with pytest.raises(DatasetError, match="not in the local Minari store"):
        load_transitions("does-not-exist")


def test_several_datasets_concatenate(minari_store):
    write_dataset("a-v0", make_episodes(2), "Hopper-v5", algorithm="a", description="d")
    write_dataset("b-v0", make_episodes(3), "Hopper-v5", algorithm="a", description="d")
    view = load_transitions(["a-v0", "b-v0"])
    assert view.num_episodes == 5 and view.episode_starts[2] == 41


def test_dataset_names_get_a_version():
    assert dataset_id_from_name("hopper-random-test") == "hopper-random-test-v0"
    assert dataset_id_from_name("ns/hopper-v2") == "ns/hopper-v2"
    with pytest.raises(DatasetError):
        dataset_id_from_name("bad name!")


def test_normalized_score():
    reference = d4rl_reference("Hopper-v5")
    assert reference is not None and "D4RL" in reference.source
    assert normalized_score(reference.expert, reference) == pytest.approx(100.0)
    assert normalized_score(reference.random, reference) == pytest.approx(0.0)
