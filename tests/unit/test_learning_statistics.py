"""bench/learning.py's figures: what "dip" and "final" mean, the IQM and its interval (rliable), the bar, and the
merge into docs/results/learning.json."""

from __future__ import annotations

import json

import pytest

from bench.learning import bar, iqm_with_ci, naive_baseline, publish, summarize


def test_final_is_the_mean_of_the_last_tenth_and_dip_the_early_minimum():
    scores = [(0, 50.0)] + [(1000 * i, 40.0 + i) for i in range(1, 21)]  # 20 online evaluations
    figures = summarize(scores, online_steps=20_000)
    assert figures["switch"] == 50.0
    assert figures["dip"] == 41.0  # min over steps <= 2000
    assert figures["worst"] == 41.0
    assert figures["final"] == pytest.approx((59.0 + 60.0) / 2)  # the last 2 of 20


def test_a_short_run_dips_at_least_at_its_first_evaluation():
    scores = [(0, 90.0), (1000, 70.0), (2000, 50.0), (3000, 60.0)]
    assert summarize(scores, online_steps=3000)["dip"] == 70.0  # no evaluation inside the first 300 steps


def test_iqm_trims_the_outer_quartiles_and_its_interval_contains_it():
    point, low, high = iqm_with_ci([1.0, 2.0, 3.0, 4.0, 100.0])
    assert point == pytest.approx(3.0)  # the seed at 100 is trimmed away
    assert low <= point <= high and high < 100.0
    assert iqm_with_ci([5.0, 5.0, 5.0]) == pytest.approx((5.0, 5.0, 5.0))


def test_the_bar_is_checked_on_the_iqms():
    def figures(switch, dip, final):
        return {"switch": (switch, 0, 0), "dip": (dip, 0, 0), "worst": (dip, 0, 0), "final": (final, 0, 0)}

    iqms = {"aca": figures(90, 88, 100), "naive": figures(90, 60, 105)}
    assert bar("aca", iqms, "naive") == "dip met, improves met, >= naive missed"
    assert bar("naive", iqms, None) == "dip missed, improves met"


def test_a_variant_is_held_to_the_naive_row_that_shares_its_pre_training_settings():
    overrides = {
        "naive": set(),  # pre-trained at reward scale 1
        "naive[reward-scale-5]": {"sac.reward_scale=5"},
        "aca[reward-scale-5,w-to-0]": {"sac.reward_scale=5", "w_min=0"},
        "aca": set(),
        "aca[entropy-scale-2]": {"sac.target_entropy_scale=2"},
    }
    assert naive_baseline("aca[reward-scale-5,w-to-0]", overrides) == "naive[reward-scale-5]"
    assert naive_baseline("aca", overrides) == "naive"
    assert naive_baseline("aca[entropy-scale-2]", overrides) == "naive"
    assert naive_baseline("naive[reward-scale-5]", overrides) is None
    assert naive_baseline("aca", {"aca": set(), "naive[reward-scale-5]": {"sac.reward_scale=5"}}) is None


def test_publish_merges_runs_by_dataset_method_seed_and_scale(tmp_path):
    path = tmp_path / "results" / "learning.json"

    def run(method, seed, final):
        return {"dataset": "d", "method": method, "seed": seed, "scale": "reduced", "final": final}

    publish(path, [run("aca", 0, 1.0), run("aca", 1, 2.0)])
    everything = publish(path, [run("aca", 1, 3.0), run("naive", 0, 4.0)])
    assert [(r["method"], r["seed"], r["final"]) for r in everything] == [
        ("aca", 0, 1.0),
        ("aca", 1, 3.0),
        ("naive", 0, 4.0),
    ]


def test_a_finished_run_is_reused_only_for_the_inputs_it_was_made_with(tmp_path, capsys):
    from bench.learning import INPUTS_FILE, SCALES, finished, run_inputs

    run_dir = tmp_path / "halfcheetah-medium" / "aca-seed0"
    made = run_inputs("aca", SCALES["ci"], ["w_min=0.25", "sac.reward_scale=5"])
    assert not finished(run_dir, made)  # nothing there yet
    run_dir.mkdir(parents=True)
    (run_dir / "finetuned.pt").write_bytes(b"")
    assert finished(run_dir, made) and "before its inputs were recorded" in capsys.readouterr().err
    (run_dir / INPUTS_FILE).write_text(json.dumps(made))
    assert finished(run_dir, run_inputs("aca", SCALES["ci"], ["sac.reward_scale=5", "w_min=0.25"]))  # any order
    with pytest.raises(SystemExit) as refused:
        finished(run_dir, run_inputs("aca", SCALES["ci"], ["sac.reward_scale=5"]))
    assert refused.value.code == 2 and "give another --out" in capsys.readouterr().err
