"""The driver's session and watchdog against clients it did not expect: real driver and controller processes, real
ZeroMQ on 127.0.0.1, real MuJoCo (issue: hostile-input hardening, watchdog starvation, stale-tick lockout, shutdown)."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
import zmq

from acalign_robot.wire import protocol as p
from acalign_robot.wire.channels import free_tcp_endpoint
from acalign_robot.wire.transport import ZmqControlClient
from tests.helpers import acalign_command, wait_for
from tests.integration.test_runtime_processes import _write, driver_stats, start_driver

pytestmark = pytest.mark.integration

WATCHDOG_MS = 100
ACTION = np.zeros(3, np.float32)  # Hopper-v5


def step(client: ZmqControlClient, tick: int) -> p.Message:
    return client.request(p.Step(tick=tick, action=ACTION), 5.0)


def served_driver(processes, tmp_path) -> str:
    """A MuJoCo Hopper driver process with the test's watchdog; its endpoint."""
    endpoint = free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint, watchdog_ms=WATCHDOG_MS)
    return endpoint


def open_session(client: ZmqControlClient, ticks: int = 1) -> None:
    """Reset (which opens the client's session) and step ticks 0 .. ticks - 1."""
    assert isinstance(client.request(p.Reset(seed=0), 5.0), p.ResetReply)
    for tick in range(ticks):
        assert isinstance(step(client, tick), p.StepReply)


@pytest.mark.parametrize("interval_s", [0.0, WATCHDOG_MS / 1000 / 3], ids=["flood", "paced"])
def test_other_clients_traffic_cannot_hold_off_the_watchdog(processes, tmp_path, interval_s):
    endpoint = served_driver(processes, tmp_path)
    context = zmq.Context()
    other = context.socket(zmq.DEALER)  # a client that sends and never reads its replies
    other.setsockopt(zmq.LINGER, 0)
    other.connect(endpoint)
    heartbeat = p.encode(p.Heartbeat(sender="other", time_s=0.0, state="x"))
    try:
        with ZmqControlClient(endpoint) as controller:
            open_session(controller, ticks=10)
            # The controller falls silent; another local client keeps the driver busy.
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                other.send_multipart([bytes(8), heartbeat])
                time.sleep(interval_s)
    finally:
        other.close()
        context.term()
    stats = driver_stats(endpoint)
    assert stats["watchdog_events"] == 1
    # Held every control period (8 ms) until the hopper falls under the safe action (~13 ticks: the episode ends);
    # under the flood the old loop applied it once.
    assert stats["watchdog_safe_steps"] >= 5


def test_another_client_can_neither_step_nor_move_the_tick_of_a_live_session(processes, tmp_path):
    endpoint = served_driver(processes, tmp_path)
    with ZmqControlClient(endpoint) as controller, ZmqControlClient(endpoint) as intruder:
        open_session(controller)
        refused = [step(intruder, 2**64 - 1), intruder.request(p.Reset(seed=1), 5.0)]
        refused.append(intruder.request(p.Release(reason="not mine"), 5.0))
        assert [type(reply) for reply in refused] == [p.Error] * 3
        assert {reply.code for reply in refused} == {"session"}
        for tick in range(1, 20):  # the controller's own sequence is untouched
            assert isinstance(step(controller, tick), p.StepReply)
    stats = driver_stats(endpoint)
    assert stats["session_refusals"] == 3 and stats["stale_steps"] == 0 and stats["steps"] == 20


def test_a_silent_session_is_taken_over_by_the_next_reset(processes, tmp_path):
    endpoint = served_driver(processes, tmp_path)
    with ZmqControlClient(endpoint) as crashed, ZmqControlClient(endpoint) as successor:
        open_session(crashed)
        time.sleep(2 * WATCHDOG_MS / 1000)
        assert isinstance(successor.request(p.Reset(seed=0), 5.0), p.ResetReply)
        assert isinstance(step(successor, 0), p.StepReply)  # a new session: its ticks start again
        late = step(crashed, 1)
        assert isinstance(late, p.Error) and late.code == "session"
    assert driver_stats(endpoint)["sessions"] == 2


def test_release_disarms_the_watchdog(processes, tmp_path):
    endpoint = served_driver(processes, tmp_path)
    with ZmqControlClient(endpoint) as controller, ZmqControlClient(endpoint) as next_client:
        open_session(controller, ticks=5)
        assert isinstance(controller.request(p.Release(reason="done"), 5.0), p.Heartbeat)
        time.sleep(3 * WATCHDOG_MS / 1000)
        assert isinstance(next_client.request(p.Reset(seed=0), 5.0), p.ResetReply)  # free at once
    stats = driver_stats(endpoint)
    assert stats["watchdog_events"] == 0 and stats["releases"] == 1


def test_a_clean_controller_stop_leaves_the_watchdog_quiet(processes, tmp_path, hopper_policy):
    endpoint = served_driver(processes, tmp_path)
    config = _write(
        tmp_path / "controller.yaml",
        {"driver_endpoint": endpoint, "policy": str(hopper_policy), "ticks": 150, "output_dir": str(tmp_path / "c")},
    )
    for run in range(3):  # the fault showed in 3 of 4 sessions
        controller = processes.start(acalign_command("controller", "--config", str(config)), tmp_path / f"c{run}.log")
        assert controller.wait(timeout=120) == 0, (tmp_path / f"c{run}.log").read_text()
        assert json.loads((tmp_path / "c" / "stats.json").read_text())["released"] is True
    time.sleep(3 * WATCHDOG_MS / 1000)
    stats = driver_stats(endpoint)
    assert stats["releases"] == 3 and stats["watchdog_events"] == 0


def test_the_controller_starts_a_new_session_after_a_driver_restart_and_the_operator_clears_it(
    processes, tmp_path, hopper_policy
):
    endpoint = free_tcp_endpoint()
    driver = start_driver(processes, tmp_path, endpoint, watchdog_ms=WATCHDOG_MS)
    output = tmp_path / "ctl"
    config = _write(
        tmp_path / "controller.yaml",
        {"driver_endpoint": endpoint, "policy": str(hopper_policy), "duration_s": 60, "output_dir": str(output)},
    )
    controller = processes.start(acalign_command("controller", "--config", str(config)), tmp_path / "controller.log")
    wait_for(lambda: driver_stats(endpoint)["steps"] > 50, 60, "the controller to step the driver")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=10)
    (tmp_path / "driver.ready").unlink()
    start_driver(processes, tmp_path, endpoint, watchdog_ms=WATCHDOG_MS)  # a fresh driver: no session, no episode

    def status() -> dict:
        return json.loads((output / "status.json").read_text())

    wait_for(lambda: status()["session_restarts"] >= 1, 30, "the controller to start a new session")
    assert status()["safe"] and driver_stats(endpoint)["sessions"] == 1
    with ZmqControlClient(endpoint) as operator:  # what `acalign clear` sends
        assert isinstance(operator.request(p.Clear(source="test"), 5.0), p.Heartbeat)
    wait_for(lambda: not status()["safe"], 10, "the clear to release SAFE")
    steps_after_clear = driver_stats(endpoint)["steps"]
    wait_for(lambda: driver_stats(endpoint)["steps"] > steps_after_clear + 50, 10, "control to go on")
    controller.send_signal(signal.SIGTERM)
    assert controller.wait(timeout=30) == 0, (tmp_path / "controller.log").read_text()
    stats = json.loads((output / "stats.json").read_text())
    assert stats["session_restarts"] >= 1 and stats["step_errors"] + stats["driver_timeouts"] >= 1


class SessionHolder:
    """Another client that holds the driver's session: it Resets once, then steps at 50 Hz on its own thread."""

    def __init__(self, endpoint: str):
        import threading

        self.client = ZmqControlClient(endpoint)
        assert isinstance(self.client.request(p.Reset(seed=0), 5.0), p.ResetReply)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.02):
            reply = step(self.client, tick)
            if isinstance(reply, p.StepReply) and (reply.terminated or reply.truncated):
                self.client.request(p.Reset(seed=tick), 5.0)
            tick += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.close()


def test_a_controller_that_never_gets_a_session_exits_non_zero(processes, tmp_path, hopper_policy):
    endpoint = served_driver(processes, tmp_path)
    output = tmp_path / "ctl"
    config = _write(
        tmp_path / "controller.yaml",
        {"driver_endpoint": endpoint, "policy": str(hopper_policy), "duration_s": 6, "output_dir": str(output)},
    )
    # At start: the driver is held by another live client, so the controller's first Reset is refused.
    holder = SessionHolder(endpoint)
    try:
        refused = processes.start(acalign_command("controller", "--config", str(config)), tmp_path / "refused.log")
        assert refused.wait(timeout=120) == 2
        assert "refused to start an episode" in (tmp_path / "refused.log").read_text()
    finally:
        holder.close()
    # Mid-run: the controller freezes for longer than the watchdog, another client takes the session meanwhile.
    controller = processes.start(acalign_command("controller", "--config", str(config)), tmp_path / "controller.log")
    status = output / "status.json"
    wait_for(lambda: status.exists() and json.loads(status.read_text())["ticks"] > 50, 60, "the controller to step")
    os.kill(controller.pid, signal.SIGSTOP)
    time.sleep(3 * WATCHDOG_MS / 1000)
    holder = SessionHolder(endpoint)
    os.kill(controller.pid, signal.SIGCONT)
    try:
        assert controller.wait(timeout=60) == 1
    finally:
        holder.close()
    stats = json.loads((output / "stats.json").read_text())
    assert stats["safe"] and stats["step_errors_session"] >= 1 and stats["session_lost"]
    assert "ended without a driver session" in (tmp_path / "controller.log").read_text()
