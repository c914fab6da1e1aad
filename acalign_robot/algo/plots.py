"""Learning-curve plots from run directories' eval.csv (normalised score when known, else raw return)."""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["plot_runs", "read_eval_csv"]


def read_eval_csv(run_dir: Path) -> list[dict]:
    path = run_dir / "eval.csv"
    if not path.is_file():
        from acalign_robot.errors import InputError

        raise InputError(f"{run_dir}: no eval.csv (not a run directory?)")
    with open(path) as handle:
        return list(csv.DictReader(handle))


def plot_runs(run_dirs: list[Path], out: Path, title: str = "evaluation") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    use_score = all(row["normalized_score"] not in ("", "None") for d in run_dirs for row in read_eval_csv(d))
    for run_dir in run_dirs:
        rows = read_eval_csv(run_dir)
        steps = [int(row["step"]) for row in rows]
        values = [float(row["normalized_score"] if use_score else row["return_mean"]) for row in rows]
        axis.plot(steps, values, marker=".", label=run_dir.name)
    axis.set_xlabel("step")
    axis.set_ylabel("normalised score" if use_score else "return")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
