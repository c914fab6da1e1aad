"""The `realtime:` section of controller and driver configurations: bad values are named, defaults change nothing."""

from __future__ import annotations

import pytest

from acalign_robot import config as config_io
from acalign_robot.config import ConfigError
from acalign_robot.controller.process import ControllerConfig
from acalign_robot.drivers.server import DriverConfig
from acalign_robot.realtime import RealtimeConfig


@pytest.mark.parametrize("priority", [0, 100, -5])
def test_a_priority_outside_sched_fifo_range_is_refused_by_name(priority):
    text = f"policy: policies/x\nrealtime:\n  priority: {priority}\n"
    with pytest.raises(ConfigError, match=r"realtime\.priority.*1\.\.99"):
        config_io.load_text(ControllerConfig, text)


@pytest.mark.parametrize("cores", ["[]", "[0, 0]", "[-1]"])
def test_bad_cores_are_refused_by_name(cores):
    text = f"kind: loopback\nrealtime:\n  cpu_affinity: {cores}\n"
    with pytest.raises(ConfigError, match=r"realtime\.cpu_affinity"):
        config_io.load_text(DriverConfig, text)


def test_the_default_asks_for_nothing():
    assert ControllerConfig(policy="x").realtime == RealtimeConfig(priority=None, cpu_affinity=None)
    assert DriverConfig(kind="loopback").realtime == RealtimeConfig()
