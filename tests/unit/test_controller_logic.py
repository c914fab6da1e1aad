"""Controller logic on in-memory channels (no sockets): a loopback driver served by a DriverServer on a thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from acalign_robot.algo.networks import TanhGaussianActor
from acalign_robot.controller.hot_swap import IdleWindows
from acalign_robot.controller.process import Controller, ControllerConfig
from acalign_robot.controller.safety import RollbackConfig, RollbackMonitor
from acalign_robot.drivers.loopback import LoopbackDriver
from acalign_robot.drivers.server import DriverServer
from acalign_robot.export.onnx_export import build_artifact
from acalign_robot.policy.manifest import PolicyError
from acalign_robot.policy.runner import PolicyRunner
from acalign_robot.wire import protocol as p
from acalign_robot.wire.memory import (
    MemoryControlClient,
    MemoryControlServer,
    MemoryPolicyPublisher,
    MemoryPolicySubscriber,
    MemoryTransitionReceiver,
    MemoryTransitionSender,
)

META = {"env_id": "loopback", "obs_dim": 4, "action_dim": 2, "action_low": [-1.0, -1.0], "action_high": [1.0, 1.0]}


def policy(version: int, push: float) -> tuple[bytes, dict]:
    """A constant-action policy: tanh(push) on every dimension (zero weights, the mean's bias set)."""
    actor = TanhGaussianActor(4, 2, (8,)).requires_grad_(False)
    with torch.no_grad():
        for parameter in actor.parameters():
            parameter.zero_()
        actor.trunk[-1].bias[:2] = push
    return build_artifact(actor, META, version, "test", name="const", version=version)


@pytest.fixture
def driver_thread():
    server = MemoryControlServer()
    driver_server = DriverServer(LoopbackDriver(max_steps=50, seed=0), server, watchdog_s=5.0)
    thread = threading.Thread(target=driver_server.run, daemon=True)
    thread.start()
    yield server
    driver_server.stop()
    thread.join(timeout=5)


@pytest.fixture
def slow_masses_driver():
    """The loopback driver with a 0.1 s step: a full push moves the masses ~12 m in an episode, so the returns of a
    pushing policy collapse whatever the start (with 0.01 s, 0.12 m: within the returns' spread)."""
    server = MemoryControlServer()
    driver_server = DriverServer(LoopbackDriver(control_period_s=0.1, max_steps=50, seed=0), server, watchdog_s=5.0)
    thread = threading.Thread(target=driver_server.run, daemon=True)
    thread.start()
    yield server
    driver_server.stop()
    thread.join(timeout=5)


def make_controller(server, version=1, push=0.0, **fields):
    onnx_bytes, manifest = policy(version, push)
    config = ControllerConfig(policy="unused", rate_hz=2000, **fields)
    return config, onnx_bytes, manifest, PolicyRunner(onnx_bytes, manifest)


def test_rollback_reverts_to_the_first_version_and_refuses_the_bad_one(slow_masses_driver):
    config, _, _, runner = make_controller(
        slow_masses_driver,
        episodes=60,
        rollback=RollbackConfig(enabled=True, baseline_episodes=3, window=2, fraction=0.5, patience=2),
        # This test is about rollback, not the swap gate's latency check: at 2 kHz (0.125 ms of budget) a busy
        # machine's scheduling noise alone refused the pushing version.
        max_inference_fraction=1.0,
    )
    publisher = MemoryPolicyPublisher()
    learner = MemoryTransitionReceiver()
    controller = Controller(
        config,
        MemoryControlClient(slow_masses_driver),
        runner,
        MemoryTransitionSender(learner),
        MemoryPolicySubscriber(publisher),
    )
    bad_bytes, bad_manifest = policy(2, 3.0)  # full push: the masses fly off, returns collapse
    bad = p.Policy(version=2, onnx=bad_bytes, manifest=bad_manifest)

    def publish_after_baseline():
        while controller.episodes < 4 and not controller._stop:
            threading.Event().wait(0.01)
        for _ in range(50):  # re-published, as a learner does: it must stay refused after the rollback
            publisher.send(bad)
            threading.Event().wait(0.02)

    threading.Thread(target=publish_after_baseline, daemon=True).start()
    stats = controller.run()
    assert stats["swaps"] == 1, stats["last_rejection"]  # once: a re-published version is not swapped again
    assert stats["rollbacks"] == [[2, 1]]
    assert stats["policy_version"] == 1
    told = []
    while (message := learner.recv(0.0)) is not None:
        if isinstance(message, p.Stats) and "rollback_from" in message.values:
            told.append(message.values)
    assert told == [{"rollback_from": 2, "rollback_to": 1}]


def test_rollback_is_off_by_default(driver_thread):
    config, *_, runner = make_controller(driver_thread, episodes=3)
    assert config.rollback.enabled is False
    stats = Controller(config, MemoryControlClient(driver_thread), runner).run()
    assert stats["rollbacks"] == [] and stats["episodes"] == 3


def test_each_episode_ends_a_batch_that_carries_its_return(driver_thread):
    """The learner sees every episode's return once, in the batch its last transition is in (not from Stats)."""
    config, *_, runner = make_controller(driver_thread, episodes=3, transition_batch=16)  # 50-step episodes
    learner = MemoryTransitionReceiver()
    stats = Controller(config, MemoryControlClient(driver_thread), runner, MemoryTransitionSender(learner)).run()
    batches = []
    while (message := learner.recv(0.0)) is not None:
        if isinstance(message, p.TransitionBatch):
            batches.append(message)
    ending = [batch for batch in batches if batch.episode_return is not None]
    assert [batch.episode_return for batch in ending] == pytest.approx(stats["episode_returns"])
    assert len(ending) == 3 and all(batch.truncated[-1] or batch.terminated[-1] for batch in ending)
    rewards = 0.0  # since the last episode's end: the return is the sum over the batches the episode spans
    for batch in batches:
        rewards += float(batch.reward.sum())
        if batch.episode_return is not None:
            assert rewards == pytest.approx(batch.episode_return, rel=1e-5)
            rewards = 0.0


def test_the_rollback_monitor_names_the_last_version_whose_returns_held_up():
    started, tuned, bad = object(), object(), object()  # runners: only their identity matters to the monitor
    settings = RollbackConfig(enabled=True, baseline_episodes=3, window=2, fraction=0.5, patience=2, to="last_good")
    monitor = RollbackMonitor(settings, started)
    for _ in range(3):
        assert monitor.after_episode(10.0, started) is None  # baseline 10: the threshold is 5
    assert monitor.after_episode(10.0, tuned) is None and monitor.good_runner is tuned
    assert monitor.after_episode(-10.0, bad) is None  # the window's mean is 0: below once, patience 2
    assert monitor.after_episode(-10.0, bad) is tuned  # below twice: back to the last good one
    for _ in range(settings.patience):  # still below, but on the last good one: nothing to go back to
        assert monitor.after_episode(-10.0, tuned) is None
    assert RollbackMonitor(RollbackConfig(), started).after_episode(-1e9, bad) is None  # off by default


def test_the_rollback_monitor_goes_back_to_the_first_version_by_default():
    """A slow decline: the tuned version's window still held up, but the session goes back to where it started."""
    started, tuned, bad = object(), object(), object()
    settings = RollbackConfig(enabled=True, baseline_episodes=3, window=2, fraction=0.5, patience=2)
    monitor = RollbackMonitor(settings, started)
    for _ in range(3):
        assert monitor.after_episode(10.0, started) is None
    assert monitor.after_episode(6.0, tuned) is None and monitor.good_runner is started  # held up, not the target
    assert monitor.after_episode(-10.0, bad) is None
    assert monitor.after_episode(-10.0, bad) is started


def test_a_latched_controller_sends_the_safe_action_every_tick(driver_thread):
    config, *_, runner = make_controller(driver_thread, ticks=30)
    controller = Controller(config, MemoryControlClient(driver_thread), runner)
    controller.filter.latch("test")
    stats = controller.run()
    assert stats["safe"] and stats["filter_safe_ticks"] == 30
    actions = np.zeros(2, np.float32)
    assert np.array_equal(controller.filter(actions)[0], controller.filter.safe_action)


def test_section_timer_summarises_the_newest_ticks_of_its_ring():
    from acalign_robot.controller.timing import SectionTimer

    timer = SectionTimer(capacity=10)
    for tick in range(25):
        timer.record((float(tick),) * 5)
    recent = timer.summary(last=3)
    assert recent["tick_max_s"] == 24.0 and recent["tick_p50_s"] == 23.0
    assert timer.summary()["tick_p50_s"] == 19.5  # the ring holds ticks 15..24
    assert list(timer.tick_samples()) == [float(t) for t in range(15, 25)]


def test_idle_windows_let_a_step_run_only_while_the_control_loop_sleeps_long_enough():
    windows = IdleWindows()
    assert not windows.wait(0.0, 0.01)  # no window yet
    windows.open(time.perf_counter() + 0.001)
    assert windows.wait(0.0, 0.01) and not windows.wait(0.05, 0.01)  # too short for a 50 ms step
    windows.close()
    assert not windows.wait(0.0, 0.01)
    waiter = threading.Thread(target=lambda: results.append(windows.wait(0.02, 2.0)))
    results: list[bool] = []
    waiter.start()
    time.sleep(0.05)
    windows.open(time.perf_counter() + 0.1)  # the control loop goes to sleep for 100 ms: the waiter may run
    waiter.join(timeout=2)
    assert results == [True]
    assert 0.09 < windows.typical_long() <= 0.1


def test_a_runner_loaded_in_stages_is_the_runner_the_constructor_builds():
    onnx_bytes, manifest = policy(1, 0.5)
    stages = PolicyRunner.in_stages(onnx_bytes, manifest, obs_dim=4, action_dim=2)
    assert [next(stages), next(stages)] == ["verify", "session"]
    with pytest.raises(StopIteration) as loaded:
        next(stages)
    obs = np.zeros(4, np.float32)
    np.testing.assert_array_equal(loaded.value.value.act(obs), PolicyRunner(onnx_bytes, manifest).act(obs))
    damaged = PolicyRunner.in_stages(onnx_bytes[:-1], manifest)
    with pytest.raises(PolicyError, match="sha256"):
        next(damaged)  # refused in the first stage, before any session is built


def test_the_final_stats_keep_the_missed_ticks_and_each_latch_with_its_reason(driver_thread):
    """What the session report marks: the ticks that missed their deadline, and when SAFE latched and why."""
    config, *_, runner = make_controller(driver_thread, ticks=30)
    controller = Controller(config, MemoryControlClient(driver_thread), runner)
    controller.period_s = 1e-7  # no tick's work fits: each one misses
    controller.filter.latch("operator test")  # before the first tick: logged by it, at a time just before the run
    stats = controller.run()
    assert stats["deadline_misses"] == 30 and stats["miss_ticks"] == list(range(1, 31))
    ((tick, at_s, reason),) = stats["safety_log"]  # logged once, not once per tick while SAFE
    assert tick == 0 and -1.0 < at_s <= 0.0 and reason == "operator test"


def test_a_driver_that_comes_back_with_other_limits_has_another_contract():
    import dataclasses

    from acalign_robot.controller.process import _same_contract
    from tests.unit.test_protocol import arm_limits, hello_reply

    with_limits = dataclasses.replace(hello_reply(), limits=arm_limits())
    assert _same_contract(with_limits, dataclasses.replace(hello_reply(), limits=arm_limits()))
    assert not _same_contract(with_limits, hello_reply())  # the limits gone
    assert not _same_contract(with_limits, dataclasses.replace(hello_reply(), limits=arm_limits(end_effector_index=7)))
    wider = dataclasses.replace(arm_limits(), workspace=dataclasses.replace(arm_limits().workspace, high=np.ones(3)))
    assert not _same_contract(with_limits, dataclasses.replace(hello_reply(), limits=wider))


def test_the_periodic_status_waits_for_idle_time_that_fits_it(driver_thread, tmp_path):
    """Written at once, the status (~1-2 ms with cold caches) made a 500 Hz tick late every second."""
    config, *_, runner = make_controller(driver_thread, episodes=1, log=False, output_dir=str(tmp_path))
    controller = Controller(config, MemoryControlClient(driver_thread), runner)
    status = tmp_path / "status.json"
    started = time.monotonic()
    controller._status_cost_s = 0.005
    controller._last_stats_s = time.monotonic() - 1.5 * config.stats_every_s  # due
    controller._publish_stats_when_due(started, deadline=time.perf_counter() + 0.001)  # 1 ms idle < 5 ms
    assert not status.exists()
    controller._publish_stats_when_due(started, deadline=time.perf_counter() + 0.05)
    assert status.exists() and 0 < controller._status_cost_s < 0.05
    status.unlink()
    controller._status_cost_s = 0.005
    controller._last_stats_s = time.monotonic() - 2.5 * config.stats_every_s  # a whole period late: now, regardless
    controller._publish_stats_when_due(started, deadline=time.perf_counter() - 0.001)
    assert status.exists()
