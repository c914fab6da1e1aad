"""The box space every process shares: what a driver declares, the wire carries and a log records.

A domain type, not a wire detail: drivers describe their robot with it (drivers/base.py `DriverSpec`), the protocol
encodes it in HelloReply, the transition log keeps it in its metadata. numpy only, so every process may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BoxSpace"]


@dataclass(frozen=True, slots=True, eq=False)
class BoxSpace:
    """The box `low <= x <= high`: float arrays of one shape, one unit per element ("rad", "m/s"; "" if unknown)."""

    low: np.ndarray
    high: np.ndarray
    units: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.low.shape
