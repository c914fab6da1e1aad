"""The hot-swap gate (PolicySwapper) in process: a loopback driver on a thread, in-memory policy channel, real
onnxruntime on hand-built graphs (tests/policy_graphs.py). Each test publishes what a learner (or an attacker) could
and reads what the controller's status reports."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from acalign_robot.controller.process import Controller, ControllerConfig
from acalign_robot.errors import InputError
from acalign_robot.policy.runner import PolicyRunner
from acalign_robot.wire import protocol as p
from acalign_robot.wire.memory import MemoryControlClient, MemoryPolicyPublisher, MemoryPolicySubscriber
from tests.helpers import wait_for
from tests.policy_graphs import graph_policy
from tests.unit.test_controller_logic import driver_thread, policy  # noqa: F401 - the fixture

_, MANIFEST = policy(1, 0.0)  # loopback spaces: obs 4, action 2 in [-1, 1]


class Running:
    """A controller at 250 Hz on its own thread (4 ms period: a 1 ms inference budget), stopped at exit."""

    def __init__(self, server, subscriber=None, current: p.Policy | None = None, **fields):
        current = current or graph_policy(MANIFEST, 1)
        self.publisher = MemoryPolicyPublisher()
        self.subscriber = subscriber or MemoryPolicySubscriber(self.publisher)
        config = ControllerConfig(policy="unused", rate_hz=250, duration_s=60, **fields)
        runner = PolicyRunner(current.onnx, current.manifest)
        self.controller = Controller(config, MemoryControlClient(server), runner, None, self.subscriber)
        self.result: dict = {}
        self._thread = threading.Thread(target=lambda: self.result.update(self.controller.run()), daemon=True)

    def __enter__(self):
        self._thread.start()
        wait_for(lambda: self.controller.ticks > 20, 10, "the control loop to run")
        return self

    def __exit__(self, *exc_info):
        self.controller.stop()
        self._thread.join(timeout=10)

    def publish_until(self, message: p.Policy, done, what: str, timeout_s: float = 20):
        """Publish `message` every 50 ms (a learner re-publishes) until `done(status)` holds."""
        wait_for(
            lambda: self.publisher.send(message) and done(self.controller.stats()), timeout_s, what, interval_s=0.05
        )
        return self.controller.stats()


def rejected(reason: str):
    return lambda stats: stats["swap_rejections"].get(reason, 0) >= 1


def running(version: int):
    return lambda stats: stats["policy_version"] == version


def test_a_slow_candidate_is_refused_for_its_latency_and_the_next_version_gets_in(driver_thread):  # noqa: F811
    with Running(driver_thread) as rig:
        slow = graph_policy(MANIFEST, 2, matmuls=3)  # ~10-20 ms per call against a 1 ms budget
        stats = rig.publish_until(slow, rejected("latency"), "the slow version to be refused")
        assert stats["policy_version"] == 1 and "latency" in stats["last_rejection"]
        assert stats["last_candidate_inference_s"] > 0.001
        stats = rig.publish_until(graph_policy(MANIFEST, 3), running(3), "the next version to be swapped in")
    assert stats["swap_rejections"] == {"latency": 1}  # judged once, however often it was re-published
    assert [entry[0] for entry in rig.result["swap_log"]] == [3]


@pytest.mark.parametrize("odd", [{"batch": 1}, {"batch": None}], ids=["fixed-batch-1", "rank-0-input"])
def test_an_odd_graph_is_refused_and_the_swapper_carries_on(driver_thread, odd):  # noqa: F811
    with Running(driver_thread) as rig:
        stats = rig.publish_until(graph_policy(MANIFEST, 2, **odd), rejected("artifact"), "the odd graph's refusal")
        assert "dynamic batch" in stats["last_rejection"]
        stats = rig.publish_until(graph_policy(MANIFEST, 3), running(3), "the next version to be swapped in")
    assert stats["swapper_alive"] and stats["swaps"] == 1


def test_any_exception_from_a_candidate_is_a_counted_rejection(driver_thread, monkeypatch):  # noqa: F811
    warm_up = PolicyRunner.warm_up

    def failing_for_version_2(runner):  # an exception type nobody foresaw, from inside a candidate
        if runner.manifest.version == 2:
            raise KeyError("onnxruntime said something new")
        warm_up(runner)

    monkeypatch.setattr(PolicyRunner, "warm_up", failing_for_version_2)
    with Running(driver_thread) as rig:
        stats = rig.publish_until(graph_policy(MANIFEST, 2), rejected("error"), "the failing candidate's rejection")
        assert "KeyError" in stats["last_rejection"] and stats["swapper_alive"]
        stats = rig.publish_until(graph_policy(MANIFEST, 3), running(3), "the next version to be swapped in")
    assert stats["swap_rejections"] == {"error": 1}


def test_a_policy_that_saturates_every_action_is_refused(driver_thread):  # noqa: F811
    with Running(driver_thread) as rig:
        saturated = graph_policy(MANIFEST, 2, mean_offset=1e30)  # finite, and every action at its high bound
        stats = rig.publish_until(saturated, rejected("saturated"), "the saturating version to be refused")
    assert stats["policy_version"] == 1 and stats["swaps"] == 0


def test_the_default_deviation_bound_refuses_a_flip_across_the_range(driver_thread):  # noqa: F811
    with Running(driver_thread, current=graph_policy(MANIFEST, 1, mean_offset=-3.0)) as rig:  # actions -0.995
        flipped = graph_policy(MANIFEST, 2, mean_offset=3.0)  # +0.995: 0.995 of the range, not at a bound
        stats = rig.publish_until(flipped, rejected("deviation"), "the flipped version to be refused")
        assert stats["policy_version"] == 1
        nearby = graph_policy(MANIFEST, 3, mean_offset=-2.0)  # -0.96: 0.017 of the range
        stats = rig.publish_until(nearby, running(3), "a nearby version to be swapped in")
    assert stats["swap_rejections"] == {"deviation": 1}


def test_a_per_dimension_bound_lets_one_dimension_flip_and_gates_the_others(driver_thread):  # noqa: F811
    """An arm's wrist rotation may flip between versions (bound 1.0) while the other joint stays at 0.5."""
    start = graph_policy(MANIFEST, 1, mean_offset=(-3.0, -3.0))  # both actions at -0.995
    with Running(driver_thread, current=start, max_policy_deviation=(0.5, 1.0)) as rig:
        first_flips = graph_policy(MANIFEST, 2, mean_offset=(3.0, -3.0))  # action 0 moves 0.995 of its range
        stats = rig.publish_until(first_flips, rejected("deviation"), "the version flipping action 0 to be refused")
        assert "action 0 by 1.00 of its range (max_policy_deviation 0.5)" in stats["last_rejection"]
        assert stats["last_candidate_deviation"] == [pytest.approx(0.995, abs=1e-3), 0.0]
        second_flips = graph_policy(MANIFEST, 3, mean_offset=(-3.0, 3.0))  # action 1 moves as far: within 1.0
        stats = rig.publish_until(second_flips, running(3), "the version flipping action 1 to be swapped in")
    assert stats["swap_rejections"] == {"deviation": 1}


def test_per_dimension_bounds_must_match_the_drivers_actions(driver_thread):  # noqa: F811
    with pytest.raises(InputError, match="3 bounds for the driver's 2 action dimensions"):
        Running(driver_thread, max_policy_deviation=(0.5, 0.5, 1.0))


def test_a_wire_version_that_is_not_the_manifests_is_refused_once(driver_thread):  # noqa: F811
    with Running(driver_thread) as rig:
        mismatched = graph_policy(MANIFEST, 3, wire_version=5)
        stats = rig.publish_until(mismatched, rejected("version"), "the mismatch to be refused")
        for _ in range(20):  # re-published: neither re-judged nor swapped in
            rig.publisher.send(mismatched)
            time.sleep(0.02)
        wait_for(lambda: rig.subscriber.counters.received >= 15, 10, "the re-publishes to be received")
        stats = rig.controller.stats()
    assert stats["swap_rejections"] == {"version": 1}
    assert stats["swaps"] == 0 and stats["policy_version"] == 1


def test_a_version_is_accepted_once_however_often_it_arrives(driver_thread):  # noqa: F811
    """Without a running loop (nothing takes the mailbox), a re-published version must not be validated again:
    before, the control loop could swap the same version in twice."""
    rig = Running(driver_thread)
    controller, publisher, subscriber = rig.controller, rig.publisher, rig.subscriber
    controller.idle.open(time.perf_counter() + 600)  # one long idle window, as if the loop slept
    controller.swapper.start()
    try:
        publisher.send(graph_policy(MANIFEST, 2))
        wait_for(lambda: controller.swapper.ready is not None, 20, "version 2 to be ready")
        publisher.send(graph_policy(MANIFEST, 2))
        wait_for(lambda: subscriber.counters.received == 2, 20, "the re-publish to be received")
        publisher.send(graph_policy(MANIFEST, 3))
        wait_for(lambda: controller.swapper.ready.manifest.version == 3, 20, "version 3 to be ready")
        assert controller.swapper.accepted == 2  # 2 once, 3 once
    finally:
        controller.swapper.stop()


def test_nothing_received_on_the_policy_channel_is_decoded_outside_an_idle_window(driver_thread):  # noqa: F811
    rig = Running(driver_thread)
    controller, subscriber = rig.controller, rig.subscriber
    controller.swapper.start()
    try:
        rig.publisher.send(graph_policy(MANIFEST, 2))
        time.sleep(0.3)  # the control loop "runs" (no window opens): the frame waits, undecoded
        assert subscriber.counters.received == 0 and controller.swapper.accepted == 0
        controller.idle.open(time.perf_counter() + 600)
        wait_for(lambda: controller.swapper.ready is not None, 20, "the policy to be taken in the idle window")
        assert subscriber.counters.received == 1
    finally:
        controller.swapper.stop()


class BreakingSubscriber(MemoryPolicySubscriber):
    """A subscriber whose transport fails once a policy came (ZeroMQ's context terminated under it)."""

    def take(self):
        frame = super().take()
        if frame is not None:
            raise zmq.ZMQError(zmq.ETERM)
        return frame


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread dies, as meant
def test_a_dead_swapper_shows_in_the_status_and_control_goes_on(driver_thread):  # noqa: F811
    publisher = MemoryPolicyPublisher()
    with Running(driver_thread, subscriber=BreakingSubscriber(publisher)) as rig:
        rig.publisher = publisher
        assert rig.controller.stats()["swapper_alive"]
        stats = rig.publish_until(
            graph_policy(MANIFEST, 2), lambda stats: not stats["swapper_alive"], "the swapper to die", timeout_s=10
        )
        assert "ZMQError" in stats["swapper_error"]
        ticks = rig.controller.ticks
        wait_for(lambda: rig.controller.ticks > ticks + 20, 10, "the control loop to go on")
        assert not rig.controller.stats()["safe"]
    assert rig.result["swapper_alive"] is False and rig.result["policy_version"] == 1
