"""The session report (session/report.py) from the files a session leaves: the summary at the top of report.md, the
panels of report.png (only those with data, the deadline and the misses drawn, versions as a legend), and
`acalign plot`'s bands across seeds (algo/plots.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from acalign_robot.algo.plots import interquartile_mean, interval_estimate, learning_figure, seed_groups  # noqa: E402
from acalign_robot.session.report import figure, read_recorded, write_report  # noqa: E402

RATE_HZ = 40.0
DEADLINE_MS = 1000 / RATE_HZ


def _stats(ticks: int, misses: list[int], versions: list[int], latches: list) -> dict:
    returns = [10.0 * (i + 1) for i in range(len(versions))]
    return {
        "ticks": ticks,
        "episodes": len(versions),
        "deadline_misses": len(misses),
        "miss_ticks": misses,
        "driver_timeouts": 0,
        "step_errors": 0,
        "session_restarts": 0,
        "target_rate_hz": RATE_HZ,
        "achieved_rate_hz": RATE_HZ,
        "tick_p50_s": 0.002,
        "tick_p99_s": 0.004,
        "tick_max_s": 0.030 if misses else 0.005,
        "policy_version": versions[-1] if versions else 1,
        "swaps": len(set(versions)) - 1 if versions else 0,
        "rollbacks": [],
        "transition_batches_sent": 10,
        "transition_batches_dropped": 0,
        "safe": False,
        "safe_reason": "",
        "safe_reaction_s": 0.01 if latches else None,
        "filter_nonfinite": 0,
        "filter_clipped": 0,
        "filter_rate_limited": 0,
        "filter_safe_ticks": 40 if latches else 0,
        "episode_returns": returns,
        "episode_log": [[10 * (i + 1), 0.5 * (i + 1), r, v] for i, (r, v) in enumerate(zip(returns, versions))],
        "safety_log": latches,
    }


def _session(
    tmp_path: Path,
    *,
    misses: list[int] = (),
    versions: list[int] = (1, 1, 2, 3),
    latches: list = (),
    learner: bool = True,
    ticks: int = 200,
) -> tuple[SimpleNamespace, dict]:
    """A finished session directory with one robot (and a learner) and a stub of the supervisor that ran it."""
    directory = tmp_path / "session"
    (directory / "robot-0").mkdir(parents=True)
    stats = _stats(ticks, list(misses), list(versions), [list(entry) for entry in latches])
    (directory / "robot-0" / "stats.json").write_text(json.dumps(stats))
    latency_s = np.full(ticks, 0.002)
    latency_s[[tick - 1 for tick in misses]] = 0.030  # the tick numbered n is sample n - 1
    np.save(directory / "robot-0" / "tick_latency_s.npy", latency_s)
    processes = [SimpleNamespace(name="robot-0", role="controller")]
    events = [
        {"t_s": 1.0, "event": "ready", "process": "learner", "detail": ""},
        {"t_s": 2.0, "event": "ready", "process": "robot-0", "detail": ""},
        {"t_s": 9.0, "event": "stop", "process": "supervisor", "detail": "duration reached"},
        {"t_s": 10.0, "event": "stopped", "process": "robot-0", "detail": "code 0"},
    ]
    if learner:
        processes.append(SimpleNamespace(name="learner", role="learner"))
        (directory / "learner").mkdir()
        status = {"updates": 150, "env_steps": 200, "transitions_received": 200, "owed_updates": 0}
        status |= {"published_version": 3, "gaps": 0, "duplicates": 0, "updates_per_s": 20.0, "alpha": 0.2, "w": 0.5}
        (directory / "learner" / "status.json").write_text(json.dumps(status))
        records = [
            {"elapsed_s": t, "loss/critic": 1.0 / t, "alpha": 0.2, "w": 0.5, "updates_per_s": 20.0, "owed_updates": 3}
            for t in (1.0, 2.0, 3.0)
        ]
        (directory / "learner" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    robot = SimpleNamespace(
        name="robot-0", driver=SimpleNamespace(kind="mujoco", env_id="Pendulum", sim=None, log=None)
    )
    supervisor = SimpleNamespace(
        session_dir=directory,
        processes=processes,
        config=SimpleNamespace(session="test"),
        resolved=SimpleNamespace(robots=[robot], learner=SimpleNamespace(metrics=None) if learner else None),
        driver_stats={"robot-0": {"steps": ticks, "watchdog_events": 0, "estops": len(latches), "clears": 0}},
        events=events,
    )
    return supervisor, write_report(supervisor, None)


def _drawn(supervisor: SimpleNamespace, report: dict):
    learner = supervisor.session_dir / "learner" / "metrics.jsonl"
    recorded = read_recorded(supervisor.session_dir, ["robot-0"], learner if learner.exists() else None)
    drawn = figure(report, recorded)
    panels = {axis.get_title(): axis for axis in drawn.axes if axis.get_title()}
    return drawn, panels


def test_the_summary_leads_report_md_with_the_numbers_and_verdicts_and_no_empty_field(tmp_path):
    supervisor, report = _session(tmp_path, misses=[50, 120, 121], latches=[[80, 2.5, "driver e-stop"]])
    text = (supervisor.session_dir / "report.md").read_text()
    head = text.split("## Controllers")[0]
    assert "- ran: robot-0 (mujoco Pendulum) and a learner, 10 s; ended: duration reached" in head
    assert "- robot-0 returns: first 10.0, last 40.0, mean of the last 4 25.0 (4 episodes)" in head
    assert "- robot-0 policy: v1 -> v3, 2 swaps, 0 refused" in head
    assert "- robot-0 deadline: 3 misses in 200 ticks of 25.0 ms (40 Hz)" in head
    # The latch in session time (the controller's clock starts at its ready event, 2 s), counts in words.
    safety = "- robot-0 safety: SAFE latched 1x 'driver e-stop' (first at 4.5 s); 40 ticks on the safe action; "
    assert safety + "driver: 1 e-stop\n" in head
    assert "- learner: 150 updates (20.0/s), 200 transitions, published v3, 0 updates owed at the end" in head
    assert "CHECK robot-0: 3 deadline misses in 200 ticks (1.50%" in head
    assert "CHECK robot-0: SAFE latched" in head and "ok    transitions: every batch reached the learner" in head
    assert "robot-0 at 4.5 s (after tick 80): driver e-stop" in text  # session time: + the ready event at 2 s
    # Nothing printed without its value (the old report's `safe_reason ,`), no zero count listed as a safety event.
    assert " ," not in text and "None" not in text and "filter_clipped" not in text
    assert report["safety"]["robot-0"]["safety_log"] == [[80, 2.5, "driver e-stop"]]  # report.json keeps it all


def test_a_clean_session_without_learner_says_so_and_draws_only_its_panels(tmp_path):
    supervisor, report = _session(tmp_path, learner=False)
    head = (supervisor.session_dir / "report.md").read_text().split("## Controllers")[0]
    assert "- robot-0 safety: no event" in head and "- learner: none in this session" in head
    assert "ok    robot-0: every tick met its deadline" in head and "ok    robot-0: no safety event" in head
    assert "transitions" not in head and "## Learner" not in head
    drawn, panels = _drawn(supervisor, report)
    assert len(drawn.axes) == len(panels) == 3  # returns and the two latency panels; no empty grid cell left
    assert not any(title.startswith(("learner", "transition", "safety")) for title in panels), panels
    assert (supervisor.session_dir / "report.png").stat().st_size > 10_000
    plt.close(drawn)


def test_a_session_with_misses_draws_the_deadline_and_marks_the_missed_ticks(tmp_path):
    supervisor, report = _session(tmp_path, misses=[50, 120, 121])
    drawn, panels = _drawn(supervisor, report)
    histogram = next(axis for title, axis in panels.items() if title.startswith("tick latency ("))
    assert any(list(line.get_xdata()) == [DEADLINE_MS, DEADLINE_MS] for line in histogram.get_lines())
    assert any("deadline 25.0 ms (3 misses)" in text.get_text() for text in histogram.get_legend().get_texts())
    timeline = next(axis for title, axis in panels.items() if title.startswith("tick latency per tick"))
    assert any(list(line.get_ydata()) == [DEADLINE_MS, DEADLINE_MS] for line in timeline.get_lines())
    (markers,) = [c for c in timeline.collections if "deadline misses" in c.get_label()]
    np.testing.assert_allclose(markers.get_offsets(), [[50, 30.0], [120, 30.0], [121, 30.0]])
    plt.close(drawn)


def test_versions_are_a_legend_of_discrete_colours_never_a_colorbar(tmp_path):
    supervisor, report = _session(tmp_path, versions=[1, 1, 1])
    drawn, panels = _drawn(supervisor, report)
    returns = panels["episode returns (colour: policy version)"]
    assert [text.get_text() for text in returns.get_legend().get_texts()] == ["v1"]
    assert all(axis.get_label() != "<colorbar>" for axis in drawn.axes)
    plt.close(drawn)
    supervisor, report = _session(tmp_path / "many", versions=list(range(1, 26)))
    drawn, panels = _drawn(supervisor, report)
    labels = [text.get_text() for text in panels["episode returns (colour: policy version)"].get_legend().get_texts()]
    assert len(labels) == 10 and labels[0] == "v1-v3" and labels[-1] == "v24-v25"  # contiguous ranges, all covered
    plt.close(drawn)


def test_learner_curves_are_drawn_at_session_time(tmp_path):
    supervisor, report = _session(tmp_path)
    drawn, panels = _drawn(supervisor, report)
    critic = panels["learner: critic loss"]
    (line,) = critic.get_lines()
    np.testing.assert_allclose(line.get_xdata(), [2.0, 3.0, 4.0])  # elapsed_s + the learner's ready event (1.0 s)
    assert {line.get_label() for line in panels["learner: temperature alpha and prior weight w"].get_lines()} == {
        "alpha",
        "w",
    }
    assert "learner: updates/s and updates owed" in panels and "transition batches to the learner" in panels
    plt.close(drawn)


def _eval_csv(run_dir: Path, scores: list[float]) -> Path:
    run_dir.mkdir(parents=True)
    with open(run_dir / "eval.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["phase", "step", "return_mean", "return_std", "normalized_score", "wall_s", "alpha", "q_mean"])
        for step, score in zip((0, 1000, 2000), scores):
            writer.writerow(["online", step, score, 0.0, score, 0.0, "", ""])
    return run_dir


def test_runs_that_differ_by_a_seed_are_one_method(tmp_path):
    runs = [tmp_path / name for name in ("aca-seed0", "aca-seed1", "naive_seed0", "offline")]
    other = tmp_path / "elsewhere" / "aca-seed0"
    assert seed_groups(runs) == {"aca": runs[:2], "naive": [runs[2]], "offline": [runs[3]]}
    assert list(seed_groups([*runs[:2], other])) == [f"{tmp_path.name}/aca", "elsewhere/aca"]


def test_acalign_plot_draws_the_iqm_over_seeds_with_its_band(tmp_path):
    seeds = [[10.0, 20.0, 30.0], [12.0, 25.0, 40.0], [8.0, 15.0, 90.0], [11.0, 22.0, 35.0]]
    runs = [_eval_csv(tmp_path / f"aca-seed{i}", scores) for i, scores in enumerate(seeds)]
    alone = _eval_csv(tmp_path / "naive", [5.0, 6.0, 7.0])
    drawn = learning_figure([*runs, alone])
    (axis,) = drawn.axes
    (iqm,) = [line for line in axis.get_lines() if line.get_label() == "aca (IQM, 4 seeds)"]
    expected = [interval_estimate([s[i] for s in seeds], "iqm") for i in range(3)]
    np.testing.assert_allclose(iqm.get_ydata(), [point for point, _, _ in expected])
    # The IQM of the last step leaves out the odd seed's 90; the band holds the point and has a width.
    assert iqm.get_ydata()[-1] == pytest.approx(np.mean([35.0, 40.0]))
    (band,) = axis.collections
    low, high = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
    assert low < min(iqm.get_ydata()) and high > max(iqm.get_ydata())
    assert sum(1 for line in axis.get_lines() if line.get_label().startswith("_")) == 4  # a thin line per seed
    assert [line.get_label() for line in axis.get_lines() if line.get_label() == "naive"] == ["naive"]
    plt.close(drawn)


@pytest.mark.parametrize("seeds", [2, 3, 4, 5, 7, 10, 13])
def test_the_interquartile_mean_is_rliables(seeds):
    from rliable import metrics

    rng = np.random.default_rng(seeds)
    scores = np.round(rng.normal(50.0, 20.0, size=(seeds, 1)))  # rounded: ties, as equal returns give
    assert interquartile_mean(scores) == pytest.approx(metrics.aggregate_iqm(scores), rel=1e-12)


def test_one_seed_has_its_value_as_interval():
    assert interval_estimate([42.0], "iqm") == (42.0, 42.0, 42.0)


def test_an_interval_does_not_depend_on_what_was_computed_before_it():
    values = [58.3, 57.9, 25.1, 22.3, 48.8]
    first = interval_estimate(values, "iqm", 1000)
    np.random.seed(123)
    np.random.random(7)  # the global generator moved, as any earlier interval or caller moves it
    after = np.random.get_state()[1].copy()
    assert interval_estimate(values, "iqm", 1000) == first
    assert np.array_equal(np.random.get_state()[1], after)  # and it is left where the caller had it
