"""No non-finite data reaches training and no diverged run ends silently: the checkpoint writer refuses NaN / inf,
datasets and the replay buffer drop non-finite transitions, the divergence guard names the quantity and the step."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from acalign_robot.algo.checkpoint import NonFiniteCheckpointError, load_checkpoint, nonfinite_entries, save_checkpoint
from acalign_robot.algo.divergence import DivergenceBounds, DivergenceError, DivergenceGuard
from acalign_robot.data.replay_buffer import ReplayBuffer


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_checkpoint_with_a_nonfinite_tensor_is_never_written(tmp_path):
    good = {"actor": {"weight": torch.ones(3, 2)}, "log_alpha": torch.tensor(0.0), "optimizer": {"state": {}}}
    meta = {"action_low": [-math.inf, -1.0], "action_high": [math.inf, 1.0]}  # unbounded actions are legitimate
    path = save_checkpoint(tmp_path / "offline.pt", "offline", good, {}, meta)
    before = _digest(path)

    bad = {
        "actor": {"weight": torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]])},
        "log_alpha": torch.tensor(float("nan")),
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(4), "step": torch.tensor(3)}}},
        "prior": {"w": float("nan")},
    }
    with pytest.raises(NonFiniteCheckpointError) as caught:
        save_checkpoint(path, "offline", bad, {}, meta)

    message = str(caught.value)
    assert str(path) in message and "3 entries" in message
    assert "agent.actor.weight (2 of 4 values)" in message and "agent.log_alpha (1 of 1 values)" in message
    assert "agent.prior.w (nan)" in message
    assert _digest(path) == before and list(tmp_path.iterdir()) == [path]  # the good file stays, no temp is left
    assert nonfinite_entries(load_checkpoint(path)["agent"]) == []


def test_the_replay_buffer_drops_and_counts_nonfinite_rows():
    buffer = ReplayBuffer(8, 2, 1)
    obs = np.arange(10, dtype=np.float32).reshape(5, 2)
    obs[1, 0] = np.nan
    reward = np.array([1.0, 2.0, -7.0, np.inf, 3.0], np.float32)
    buffer.add_batch(obs, np.zeros((5, 1)), reward, obs + 1, np.zeros(5))
    buffer.add(np.zeros(2), np.array([np.nan]), 0.0, np.zeros(2), 0.0)

    assert len(buffer) == 3 and buffer.total_added == 3 and buffer.nonfinite_dropped == 3
    np.testing.assert_array_equal(buffer.reward[:3], [1.0, -7.0, 3.0])
    assert np.isfinite(buffer.obs[:3]).all() and buffer.reward_abs_max == 7.0


def test_datasets_drop_nonfinite_transitions_and_cut_their_episodes(minari_store, caplog):
    from acalign_robot.data.datasets import load_transitions, write_dataset
    from tests.helpers import make_episodes

    episodes = make_episodes(3)  # 20, 21 and 22 steps
    episodes[1].observations[3, 0] = np.nan  # the obs of step 3 and the next_obs of step 2
    episodes[2].rewards[5] = np.inf
    write_dataset("sensor-nan-v0", episodes, "Hopper-v5", algorithm="test", description="test data")

    view = load_transitions("sensor-nan-v0")

    assert view.nonfinite_dropped == 3 and len(view) == 63 - 3
    assert all(np.isfinite(a).all() for a in (view.observations, view.next_observations, view.rewards, view.actions))
    np.testing.assert_array_equal(view.episode_starts, [0, 20, 22, 39, 44])
    assert "sensor-nan-v0: 3 of 63 transitions hold NaN or inf" in caplog.text


def test_the_guard_names_the_quantity_the_step_and_the_last_good_checkpoint(tmp_path):
    guard = DivergenceGuard("pretrain", "update", gamma=0.99)
    healthy = {"alpha": 0.2, "q_mean": 310.0, "loss/critic": 4.0, "loss/z": 1e12, "z_mean": 900.0, "entropy": -3.0}
    guard.check(10, healthy, reward_abs_max=3.5)  # q bound 100 * 3.5 / 0.01 = 35000; the Z loss is only held finite
    guard.check(11, {**healthy, "z_mean": 1e5, "entropy": -20.0}, reward_abs_max=3.5)  # a narrow actor: Z bound 2e5

    cases = [
        ({"q_mean": 4e4}, "q_mean = 4e+04 is beyond its bound 3.5e+04 (100 x R / (1 - gamma); R = 3.5"),
        ({"q_mean": -4e4}, "q_mean = -4e+04 is beyond its bound 3.5e+04"),
        ({"alpha": 3600.0}, "alpha = 3600 is beyond its bound 3500 (1000 x R; R = 3.5"),
        ({"loss/critic": 2e9}, "loss/critic = 2e+09 is beyond its bound 1.225e+09"),
        ({"z_mean": 4e4}, "z_mean = 4e+04 is beyond its bound 3.5e+04 (100 x max(R, |entropy| = 3) / (1 - gamma)"),
        ({"loss/actor": float("nan")}, "loss/actor = nan is not finite"),
        ({"entropy": float("-inf")}, "entropy = -inf is not finite"),
    ]
    for info, expected in cases:
        with pytest.raises(DivergenceError, match="^pretrain diverged at update 12: ") as caught:
            guard.check(12, {**healthy, **info}, reward_abs_max=3.5)
        assert expected in str(caught.value) and "no checkpoint of this run was written" in str(caught.value)
        assert caught.value.step == 12

    # A run at reward scale 5 sees rewards five times larger, and values with them.
    scaled = DivergenceGuard("pretrain", "update", gamma=0.99, reward_scale=5.0)
    scaled.check(12, {**healthy, "q_mean": 1.5e5}, reward_abs_max=3.5)
    with pytest.raises(DivergenceError, match=r"q_mean = 1\.8e\+05 is beyond its bound 1\.75e\+05 .*R = 17\.5"):
        scaled.check(12, {**healthy, "q_mean": 1.8e5}, reward_abs_max=3.5)

    guard.saved(tmp_path / "offline.pt", 10)
    with pytest.raises(DivergenceError, match=r"the last good checkpoint is .*offline\.pt \(update 10\)"):
        guard.check(12, {"alpha": float("inf")}, reward_abs_max=3.5)
    # Bounds follow the reward scale (with a floor of 1) and the horizon.
    assert DivergenceBounds().q_bound(0.01, 0.99) == pytest.approx(1e4)
    assert DivergenceBounds().q_bound(10.0, 0.999) == pytest.approx(1e6)


def test_a_runaway_temperature_stops_pretraining_and_keeps_the_last_good_checkpoint(tiny_hopper_dataset, tmp_path):
    """Issue 15's phase-1 runaway, made fast: an unreachable entropy target (+20 nats per action dimension) and a
    large learning rate make alpha grow by ~0.1 per update. The guard stops the run; the checkpoint left is the one
    of the last evaluation that a later update vouched for, finite and loadable."""
    from acalign_robot.algo.aca import load_preset
    from acalign_robot.algo.pipeline import EvalSchedule, pretrain

    overrides = ("sac.hidden_sizes=[16, 16]", "sac.batch_size=32", "sac.target_entropy_scale=-20", "sac.lr=0.1")
    out = tmp_path / "run" / "offline.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs it; two threads beside the machine's other work take 4x longer
    try:
        with pytest.raises(DivergenceError) as caught:
            pretrain(
                [tiny_hopper_dataset], load_preset("medium", overrides), 400, out, seed=0, schedule=EvalSchedule(20, 1)
            )
    finally:
        torch.set_num_threads(threads)

    step = caught.value.step
    assert 40 < step < 400 and "alpha = " in caught.value.what and "beyond its bound 5000" in caught.value.what
    payload = load_checkpoint(out, "offline")
    kept = payload["meta"]["offline_steps"]
    assert kept == (step - 2) // 20 * 20 and f"the last good checkpoint is {out} (update {kept})" in str(caught.value)
    assert nonfinite_entries(payload["agent"]) == []
    assert float(payload["agent"]["sac"]["log_alpha"].exp()) < 5000 and payload["meta"]["train_stats"]["alpha"] < 5000
    rows = (tmp_path / "run" / "eval.csv").read_text().splitlines()
    assert rows[0].endswith(",alpha,q_mean") and len(rows) == 1 + (step - 1) // 20
    alphas = [float(row.split(",")[6]) for row in rows[1:]]
    assert alphas == sorted(alphas) and alphas[-1] > 100  # eval.csv shows it coming
