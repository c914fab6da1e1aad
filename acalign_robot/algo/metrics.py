"""A training run's metrics on disk: JSON lines per update, the evaluation curve as CSV, optionally TensorBoard."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MetricsWriter"]


class MetricsWriter:
    """Metrics as JSON lines (`metrics.jsonl`), the evaluation curve as CSV (`eval.csv`), optional TensorBoard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")
        eval_path = self.run_dir / "eval.csv"
        new_file = not eval_path.exists()
        self._eval_file = open(eval_path, "a", newline="")
        self._eval_csv = csv.writer(self._eval_file)
        if new_file:
            self._eval_csv.writerow(
                ["phase", "step", "return_mean", "return_std", "normalized_score", "wall_s", "alpha", "q_mean"]
            )
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        self._start = time.monotonic()

    def log(self, step: int, values: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def log_eval(
        self,
        phase: str,
        step: int,
        returns: list[float],
        normalized: float | None,
        alpha: float | None = None,
        q_mean: float | None = None,
    ) -> None:
        """One eval.csv row; `alpha` and `q_mean` from the latest update (empty before the first one)."""
        row = [phase, step, float(np.mean(returns)), float(np.std(returns)), normalized, time.monotonic() - self._start]
        row += ["" if alpha is None else alpha, "" if q_mean is None else q_mean]
        self._eval_csv.writerow(row)
        self._eval_file.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._eval_file.close()
        if self._tb is not None:
            self._tb.close()
