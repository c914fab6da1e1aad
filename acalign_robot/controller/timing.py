"""How long each section of a control tick takes: the control loop measures itself and reports its tails."""

from __future__ import annotations

import numpy as np

__all__ = ["SECTIONS", "SectionTimer"]

SECTIONS = ("infer", "filter", "obs", "send", "tick")  # the order of a tick's durations in `record`


class SectionTimer:
    """Per-section durations in preallocated rings (the last `capacity` ticks), summarised as p50/p99/max."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self.samples = {name: np.zeros(capacity) for name in SECTIONS}
        self.count = 0

    def record(self, durations: tuple[float, ...]) -> None:
        index = self.count % self.capacity
        for name, value in zip(SECTIONS, durations):
            self.samples[name][index] = value
        self.count += 1

    def tick_samples(self) -> np.ndarray:
        """Whole-tick durations (s) of the last `capacity` ticks, oldest first."""
        filled = min(self.count, self.capacity)
        start = self.count % self.capacity if self.count > self.capacity else 0
        return np.roll(self.samples["tick"][:filled], -start)

    def summary(self, last: int | None = None) -> dict[str, float]:
        """p50/p99/max per section over every sample held, or over the `last` ticks only (cheap enough for the
        control thread: the whole 100k-sample ring costs ~13 ms of percentiles)."""
        filled = min(self.count, self.capacity)
        if filled == 0:
            return {}
        if last is not None and last < filled:
            end = self.count % self.capacity
            window = np.arange(end - last, end) % self.capacity  # the ring's newest `last` entries
        else:
            window = slice(0, filled)
        result = {}
        for name, ring in self.samples.items():
            values = ring[window]
            result[f"{name}_p50_s"] = float(np.percentile(values, 50))
            result[f"{name}_p99_s"] = float(np.percentile(values, 99))
            result[f"{name}_max_s"] = float(values.max())
        return result
