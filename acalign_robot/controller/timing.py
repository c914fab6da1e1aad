"""How long each section of a control tick takes: the control loop measures itself and reports its tails."""

from __future__ import annotations

import numpy as np

__all__ = ["SECTIONS", "SectionTimer"]

SECTIONS = ("infer", "filter", "obs", "send", "tick")  # the order of a tick's durations in `record`


class SectionTimer:
    """Per-section durations in one preallocated ring (sections x the last `capacity` ticks), summarised as
    p50/p99/max."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self.samples = np.zeros((len(SECTIONS), capacity))
        self.count = 0

    def record(self, durations: tuple[float, ...]) -> None:
        self.samples[:, self.count % self.capacity] = durations
        self.count += 1

    def tick_samples(self) -> np.ndarray:
        """Whole-tick durations (s) of the last `capacity` ticks, oldest first."""
        filled = min(self.count, self.capacity)
        start = self.count % self.capacity if self.count > self.capacity else 0
        return np.roll(self.samples[SECTIONS.index("tick"), :filled], -start)

    def summary(self, last: int | None = None) -> dict[str, float]:
        """p50/p99/max per section over every sample held, or over the `last` ticks only.

        The periodic status calls it on the control thread between two ticks, so it is one percentile call over all
        sections: one call per section and quantile cost ~1 ms there (cold caches after the tick's sleep), more than
        the idle time of a 500 Hz tick, and made the status a deadline miss once a second.
        """
        filled = min(self.count, self.capacity)
        if filled == 0:
            return {}
        if last is not None and last < filled:
            end = self.count % self.capacity
            window = self.samples.take(np.arange(end - last, end) % self.capacity, axis=1)  # the newest `last`
        else:
            window = self.samples[:, :filled]
        p50, p99 = np.percentile(window, (50, 99), axis=1)
        peak = window.max(axis=1)
        result = {}
        for i, name in enumerate(SECTIONS):
            result[f"{name}_p50_s"] = float(p50[i])
            result[f"{name}_p99_s"] = float(p99[i])
            result[f"{name}_max_s"] = float(peak[i])
        return result
