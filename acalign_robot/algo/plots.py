"""Learning-curve plots from run directories' eval.csv (normalised score when known, else raw return).

Run directories that differ only by a trailing seed (`aca-seed0`, `aca-seed1`, ... in the same parent) are one
method: its curve is the IQM (or the mean) over the seeds at each evaluation step, with a 95% stratified-bootstrap
confidence interval as a band (rliable, Agarwal et al. 2021; one task, so the strata are the seeds) and each seed
as a thin line. A method with one run is drawn as its line. Steps are those that every seed of a method evaluated.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

__all__ = ["interval_estimate", "learning_figure", "plot_runs", "read_eval_csv", "seed_groups"]

SEED_SUFFIX = re.compile(r"[-_.]?seed[-_]?\d+$")


def read_eval_csv(run_dir: Path) -> list[dict]:
    path = run_dir / "eval.csv"
    if not path.is_file():
        from acalign_robot.errors import InputError

        raise InputError(f"{run_dir}: no eval.csv (not a run directory?)")
    with open(path) as handle:
        return list(csv.DictReader(handle))


def seed_groups(run_dirs: list[Path]) -> dict[str, list[Path]]:
    """Run directories grouped by parent and name without a seed suffix, labelled by that name (with the parent's
    name when two parents hold the same method), in the order first given."""
    keyed: dict[tuple[Path, str], list[Path]] = {}
    for run_dir in run_dirs:
        keyed.setdefault((run_dir.resolve().parent, SEED_SUFFIX.sub("", run_dir.name) or run_dir.name), []).append(
            run_dir
        )
    names = [name for _, name in keyed]
    return {
        (name if names.count(name) == 1 else f"{parent.name}/{name}"): runs for (parent, name), runs in keyed.items()
    }


def interquartile_mean(scores: np.ndarray) -> float:
    """rliable's `aggregate_iqm` (scipy's `trim_mean(scores, 0.25, axis=None)`: the mean of the middle half after
    cutting int(n/4) values from each end), in plain numpy: the bootstrap calls it thousands of times per interval,
    and scipy's argument handling made each call ~40x slower (280 us against 7 us for 5 values)."""
    ordered = np.sort(scores, axis=None)
    cut = int(0.25 * ordered.size)
    return float(ordered[cut : ordered.size - cut].mean())


def interval_estimate(values: list[float], statistic: str = "iqm", reps: int = 2000) -> tuple[float, float, float]:
    """The statistic over seeds and its 95% stratified-bootstrap confidence interval: (point, low, high)."""
    try:
        from rliable import library as rly
        from rliable import metrics
    except ImportError as exc:
        from acalign_robot.errors import InputError

        raise InputError(
            f"a band across seeds needs rliable ({exc}): pip install 'acalign-robot[bench]'; one run per method "
            "needs no band"
        ) from None
    aggregate = {"iqm": interquartile_mean, "mean": metrics.aggregate_mean}[statistic]
    if len(values) == 1:  # one seed: its value, and no spread to resample
        return (float(values[0]),) * 3
    scores = {"x": np.asarray(values, dtype=float)[:, None]}  # (runs, tasks)
    # rliable draws its resampling indices from numpy's global generator (`np.random.choice`), not from the
    # `random_state` it passes on, so the interval depended on how many were computed before it in the process.
    # Seeded here and restored after: the same values give the same interval wherever they are computed.
    global_state = np.random.get_state()
    np.random.seed(0)
    try:
        point, interval = rly.get_interval_estimates(
            scores, lambda x: np.array([aggregate(x)]), reps=reps, random_state=np.random.RandomState(0)
        )
    finally:
        np.random.set_state(global_state)
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def _curves(runs: list[Path], use_score: bool) -> tuple[list[int], np.ndarray]:
    """The steps every run evaluated and the values there: (steps, array (runs, steps))."""
    by_run = []
    for run_dir in runs:
        rows = read_eval_csv(run_dir)
        by_run.append(
            {int(row["step"]): float(row["normalized_score" if use_score else "return_mean"]) for row in rows}
        )
    steps = sorted(set.intersection(*(set(curve) for curve in by_run)))
    if not steps:
        from acalign_robot.errors import InputError

        raise InputError(f"{', '.join(str(r) for r in runs)}: no evaluation step common to these seeds")
    return steps, np.array([[curve[step] for step in steps] for curve in by_run])


def plot_runs(run_dirs: list[Path], out: Path, title: str = "evaluation", statistic: str = "iqm") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = learning_figure(run_dirs, title, statistic)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def learning_figure(run_dirs: list[Path], title: str = "evaluation", statistic: str = "iqm"):
    """One line per method (its statistic over seeds, with a band when it has several) and a thin line per seed."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    use_score = all(row["normalized_score"] not in ("", "None") for d in run_dirs for row in read_eval_csv(d))
    colours = iter(plt.get_cmap("tab10").colors * 3)
    groups = seed_groups(run_dirs)
    for label, runs in groups.items():
        colour = next(colours)
        steps, values = _curves(runs, use_score)
        if len(runs) == 1:
            axis.plot(steps, values[0], marker=".", color=colour, label=label)
            continue
        for seed_curve in values:
            axis.plot(steps, seed_curve, color=colour, alpha=0.25, linewidth=0.8)
        band = np.array([interval_estimate(list(values[:, i]), statistic) for i in range(len(steps))])
        axis.plot(
            steps, band[:, 0], marker=".", color=colour, label=f"{label} ({statistic.upper()}, {len(runs)} seeds)"
        )
        axis.fill_between(steps, band[:, 1], band[:, 2], color=colour, alpha=0.2)
    axis.set_xlabel("step")
    axis.set_ylabel("normalised score" if use_score else "return")
    axis.set_title(f"{title} (bands: 95% bootstrap CI over seeds)" if len(groups) < len(run_dirs) else title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
