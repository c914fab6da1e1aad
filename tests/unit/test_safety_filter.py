"""The controller's action filter: finite check -> clip -> rate limit -> SAFE latch, each intervention flagged."""

from __future__ import annotations

import numpy as np
import pytest

from acalign_robot.config import FieldError
from acalign_robot.controller.safety import ActionFilter, FilterFlags, SafetyConfig

LOW = np.array([-1.0, -2.0], np.float32)
HIGH = np.array([1.0, 2.0], np.float32)
SAFE_ACTION = np.zeros(2, np.float32)


def make_filter(**settings) -> ActionFilter:
    return ActionFilter(SafetyConfig(**settings), LOW, HIGH, SAFE_ACTION)


def test_an_action_inside_every_limit_passes_unchanged():
    action_filter = make_filter()
    action, flags = action_filter(np.array([0.5, -1.0], np.float32))
    np.testing.assert_array_equal(action, [0.5, -1.0])
    assert flags == 0 and action.dtype == np.float32
    assert action_filter.counts == {"nonfinite": 0, "clipped": 0, "rate_limited": 0, "safe_ticks": 0}


def test_out_of_bounds_is_clipped_and_the_step_from_the_previous_action_is_limited():
    action_filter = make_filter(max_delta_per_tick=0.25)  # 0.5 and 1.0 per tick on these ranges
    action, flags = action_filter(np.array([3.0, -0.2], np.float32))
    np.testing.assert_allclose(action, [0.5, -0.2])  # clipped to 1.0, then limited to 0 + 0.5
    assert flags == FilterFlags.CLIPPED | FilterFlags.RATE_LIMITED
    action, flags = action_filter(np.array([1.0, -2.0], np.float32))
    np.testing.assert_allclose(action, [1.0, -1.2])  # from the previous executed action, not the policy's
    assert flags == FilterFlags.RATE_LIMITED
    assert (action_filter.counts["clipped"], action_filter.counts["rate_limited"]) == (1, 2)
    action_filter.reset()  # a new episode starts again from the safe action
    action, _ = action_filter(np.array([1.0, 0.0], np.float32))
    np.testing.assert_allclose(action, [0.5, 0.0])


def test_a_non_finite_action_latches_safe_until_cleared():
    action_filter = make_filter()
    action, flags = action_filter(np.array([np.nan, 0.0], np.float32))
    np.testing.assert_array_equal(action, SAFE_ACTION)
    assert flags == FilterFlags.NONFINITE | FilterFlags.SAFE and action_filter.safe
    assert "non-finite" in action_filter.safe_reason and action_filter.latched_at_s is not None
    action, flags = action_filter(np.array([0.5, 0.5], np.float32))  # a good action does not release the latch
    np.testing.assert_array_equal(action, SAFE_ACTION)
    assert flags == FilterFlags.SAFE and action_filter.counts["safe_ticks"] == 2
    action_filter.clear()
    action, flags = action_filter(np.array([0.5, 0.5], np.float32))
    np.testing.assert_array_equal(action, [0.5, 0.5])
    assert flags == 0 and not action_filter.safe


def test_without_the_latch_a_non_finite_action_repeats_the_previous_one():
    action_filter = make_filter(latch_on_nonfinite=False)
    action_filter(np.array([0.25, 0.5], np.float32))
    action, flags = action_filter(np.array([np.inf, 0.0], np.float32))
    np.testing.assert_array_equal(action, [0.25, 0.5])
    assert flags == FilterFlags.NONFINITE and not action_filter.safe


def test_an_external_latch_sends_the_safe_action():
    action_filter = make_filter()
    action_filter.latch("driver e-stop")
    action_filter.latch("a second reason does not replace the first")
    action, flags = action_filter(np.array([0.5, 0.5], np.float32))
    np.testing.assert_array_equal(action, SAFE_ACTION)
    assert flags == FilterFlags.SAFE and action_filter.safe_reason == "driver e-stop"


@pytest.mark.parametrize("max_delta", [0.0, -0.1, 1.5])
def test_the_rate_limit_must_be_a_fraction_of_the_range(max_delta):
    with pytest.raises(FieldError, match="max_delta_per_tick"):
        SafetyConfig(max_delta_per_tick=max_delta).validate()
