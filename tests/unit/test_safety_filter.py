"""The controller's action filter: finite check -> clip -> rate limit -> SAFE latch, each intervention flagged."""

from __future__ import annotations

import numpy as np
import pytest

from acalign_robot.config import FieldError
from acalign_robot.controller.safety import ActionFilter, FilterFlags, SafetyConfig
from acalign_robot.spaces import BoxSpace, RobotLimits

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


# Robot limits over a 9-element observation: joint positions at 0, joint velocities at 2, end effector at 4.
LIMITS = RobotLimits(
    joint_position=BoxSpace(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), ("rad",) * 2),
    joint_velocity=BoxSpace(np.array([-2.0, -2.0]), np.array([2.0, 2.0]), ("rad/s",) * 2),
    joint_torque=BoxSpace(np.array([-5.0, -5.0]), np.array([5.0, 5.0]), ("N*m",) * 2),
    workspace=BoxSpace(np.array([0.0, -0.5, 0.1]), np.array([0.8, 0.5, 1.0]), ("m",) * 3),
    joint_position_index=0,
    joint_velocity_index=2,
    end_effector_index=4,
)
INSIDE = np.array([0.5, -0.5, 1.0, -1.0, 0.4, 0.0, 0.5, 9.0, 9.0], np.float32)  # the last two are not limited


def with_limits(**settings) -> ActionFilter:
    return ActionFilter(SafetyConfig(**settings), LOW, HIGH, SAFE_ACTION, limits=LIMITS)


@pytest.mark.parametrize(
    ("index", "value", "kind"),
    [(1, -1.2, "joint_position"), (3, 2.5, "joint_velocity"), (4, 0.9, "workspace"), (6, 0.05, "workspace")],
)
def test_after_an_observation_outside_a_robot_limit_the_next_action_holds(index, value, kind):
    action_filter = with_limits()
    action_filter.observe(INSIDE)
    action, flags = action_filter(np.array([0.5, -1.0], np.float32))
    assert flags == 0 and action_filter.limits.counts["limit_ticks"] == 0
    outside = INSIDE.copy()
    outside[index] = value
    action_filter.observe(outside)
    action, flags = action_filter(np.array([0.5, -1.0], np.float32))
    np.testing.assert_array_equal(action, SAFE_ACTION)
    assert flags == FilterFlags.LIMIT | FilterFlags.SAFE and not action_filter.safe  # held, not latched
    assert action_filter.limits.counts == {
        "limit_ticks": 1,
        "limit_joint_position": int(kind == "joint_position"),
        "limit_joint_velocity": int(kind == "joint_velocity"),
        "limit_workspace": int(kind == "workspace"),
    }
    action_filter.observe(INSIDE)  # back inside: the policy again, rate-limited from the hold
    action, flags = action_filter(np.array([0.5, -1.0], np.float32))
    np.testing.assert_array_equal(action, [0.5, -1.0])
    assert flags == 0
    action_filter.observe(outside)
    action_filter.reset()  # a new episode starts from a fresh observation: no hold carried over
    assert action_filter(np.array([0.5, -1.0], np.float32))[1] == 0


def test_on_limit_latch_latches_safe_and_off_does_not_check():
    outside = INSIDE.copy()
    outside[4] = 2.0  # the end effector out of the workspace
    latching = with_limits(on_limit="latch")
    latching.observe(outside)
    assert latching.safe and "workspace" in latching.safe_reason
    latching.observe(INSIDE)  # inside again: still SAFE until clear()
    action, flags = latching(np.array([0.5, -1.0], np.float32))
    np.testing.assert_array_equal(action, SAFE_ACTION)
    assert flags == FilterFlags.SAFE
    unchecked = with_limits(on_limit="off")
    unchecked.observe(outside)
    action, flags = unchecked(np.array([0.5, -1.0], np.float32))
    np.testing.assert_array_equal(action, [0.5, -1.0])
    assert flags == 0 and unchecked.limits is None
