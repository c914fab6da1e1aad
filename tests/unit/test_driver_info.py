"""The driver's step info from driver to transition batch, and the driver server's per-session pause and render rules
(in-memory control channel; the same paths over real processes are in tests/integration/test_remote_env.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from acalign_robot.controller.streaming import TransitionBatcher
from acalign_robot.drivers.base import StepResult
from acalign_robot.drivers.loopback import LoopbackDriver
from acalign_robot.drivers.server import DriverServer
from acalign_robot.drivers.template import TemplateArmConfig, TemplateDriver
from acalign_robot.robot_log.format import info_columns
from acalign_robot.wire import protocol as p
from acalign_robot.wire.delivery import ResendWindow
from acalign_robot.wire.memory import MemoryControlClient, MemoryControlServer


class ReportingDriver(LoopbackDriver):
    """The loopback driver, reporting whatever `next_info` holds."""

    next_info: object = None

    def step(self, action: np.ndarray) -> StepResult:
        result = super().step(action)
        result.info = self.next_info
        return result


@pytest.fixture
def serve():
    started = []

    def start(driver, watchdog_s: float = 0.05) -> tuple[DriverServer, MemoryControlServer]:
        server = MemoryControlServer()
        instance = DriverServer(driver, server, watchdog_s=watchdog_s)
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        started.append((instance, thread))
        return instance, server

    yield start
    for instance, thread in started:
        instance.stop()
        thread.join(timeout=5)


def test_a_driver_info_reaches_the_client_and_a_bad_one_is_an_error_naming_the_key(serve, capsys):
    driver = ReportingDriver()
    instance, server = serve(driver)
    client = MemoryControlClient(server)
    client.request(p.Reset(), 1.0)
    driver.next_info = {"temp_c": np.float32(40.5), "contact": np.bool_(True), "mode": "grip", "q": np.arange(2)}
    reply = client.request(p.Step(tick=1, action=np.zeros(2, np.float32)), 1.0)
    assert reply.info["temp_c"] == 40.5 and reply.info["contact"] is True and reply.info["mode"] == "grip"
    np.testing.assert_array_equal(reply.info["q"], [0, 1])
    driver.next_info = {"pose": {"x": 1.0}}
    reply = client.request(p.Step(tick=2, action=np.zeros(2, np.float32)), 1.0)
    assert isinstance(reply, p.Error) and reply.code == "driver"
    assert reply.message.startswith("driver 'loopback': StepResult.info.pose: a dict; an info value is a number")
    assert instance.stats.bad_infos == 1 and "StepResult.info.pose: a dict" in capsys.readouterr().err


def test_an_info_string_msgpack_cannot_send_is_refused_at_the_driver_and_the_server_goes_on(serve):
    driver = ReportingDriver()
    instance, server = serve(driver)
    client = MemoryControlClient(server)
    client.request(p.Reset(), 1.0)
    driver.next_info = {"mode": "grip \ud800"}  # a lone surrogate: not UTF-8
    reply = client.request(p.Step(tick=1, action=np.zeros(2, np.float32)), 1.0)
    assert isinstance(reply, p.Error) and reply.code == "driver" and "not valid UTF-8" in reply.message
    driver.next_info = {"mode": "grip"}
    assert client.request(p.Step(tick=2, action=np.zeros(2, np.float32)), 1.0).info == {"mode": "grip"}


def test_a_paused_session_is_not_stepped_by_the_watchdog_and_keeps_the_driver(serve):
    instance, server = serve(LoopbackDriver(), watchdog_s=0.05)
    holder, other = MemoryControlClient(server), MemoryControlClient(server)
    holder.request(p.Reset(pause_s=30.0), 1.0)
    holder.request(p.Step(tick=1, action=np.ones(2, np.float32)), 1.0)
    time.sleep(0.3)  # six watchdog timeouts
    reply = holder.request(p.Step(tick=2, action=np.ones(2, np.float32)), 1.0)
    assert not reply.watchdog_fired and instance.stats.watchdog_safe_steps == 0
    refused = other.request(p.Reset(), 1.0)
    assert refused.code == "session" and "another session holds driver 'loopback'" in refused.message
    holder.request(p.Reset(pause_s=0.0), 1.0)  # the same client, now as a controller: the watchdog is back
    holder.request(p.Step(tick=1, action=np.ones(2, np.float32)), 1.0)
    time.sleep(0.3)
    assert holder.request(p.Step(tick=2, action=np.ones(2, np.float32)), 1.0).watchdog_fired


def test_a_robot_driver_refuses_to_pause_and_a_driver_without_a_renderer_refuses_render(serve):
    _, server = serve(TemplateDriver(TemplateArmConfig()))
    client = MemoryControlClient(server)
    refused = client.request(p.Reset(pause_s=10.0), 1.0)
    assert refused.code == "pause" and "cannot pause" in refused.message
    client.request(p.Reset(), 1.0)
    assert client.request(p.Render(), 1.0).code == "render"
    hello = client.request(p.Hello(client_name="t", role="test"), 1.0)
    assert not hello.can_pause and not hello.can_render


class ListLog:
    """Stands in for TransitionLog: keeps the batches written."""

    def __init__(self):
        self.batches = []

    def write(self, batch: p.TransitionBatch, timestamps: np.ndarray) -> None:
        self.batches.append(batch)


def add(batcher: TransitionBatcher, info: dict) -> None:
    zeros = np.zeros(2, np.float32)
    batcher.add(zeros, zeros, zeros, 0.0, zeros, False, False, 1, 0, None, info)


def test_the_batcher_fixes_info_columns_at_the_first_step_and_counts_what_does_not_fit():
    log = ListLog()
    rows = TransitionBatcher("c@1", 4, 2, 2, None, log, ResendWindow(1 << 20, 1.0))
    add(rows, {"a": np.array([1.0, 2.0], np.float32), "n": 3, "ok": True, "mode": "grip"})
    add(rows, {"a": np.array([3.0, 4.0], np.float32), "n": 4.5, "ok": False, "mode": "é"})
    add(rows, {"n": "five", "ok": True, "mode": "open", "new": 1})  # a missing, n of another type, a new key
    add(rows, {"a": np.zeros(3, np.float32), "n": 6, "ok": 1, "mode": 7})  # wrong shape, int for a bool, int for text
    (batch,) = log.batches
    assert sorted(batch.extras) == ["info.a", "info.n", "info.ok", "info_text.mode", "policy_action", "safety_flags"]
    columns = info_columns(batch.extras)
    np.testing.assert_array_equal(columns["a"][:2], [[1, 2], [3, 4]])
    assert np.isnan(columns["a"][2:]).all()
    np.testing.assert_array_equal(columns["n"], [3.0, 4.5, np.nan, 6.0])
    np.testing.assert_array_equal(columns["ok"], [True, False, True, False])
    assert list(columns["mode"]) == [b"grip", "é".encode(), b"open", b""]
    assert rows.info_values_missing == 1 and rows.info_values_dropped == 5
    assert batch.extras["info_text.mode"].shape == (4, p.MAX_INFO_TEXT_BYTES)
    p.decode(p.encode(batch))  # the columns travel to the learner as they are


def test_the_driver_freezes_what_it_loaded_before_it_serves(monkeypatch):
    """A full collection of the driver's start-up objects took 50-63 ms in the Panda driver, beyond the controller's
    40 ms driver timeout: they move to the permanent generation before the first request is served."""
    import gc
    import signal

    from acalign_robot.drivers import server as driver_server
    from acalign_robot.wire.channels import free_tcp_endpoint

    frozen_when_serving = []
    monkeypatch.setattr(
        driver_server.DriverServer, "run", lambda self: frozen_when_serving.append(gc.get_freeze_count())
    )
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}  # serve() sets them
    gc.unfreeze()
    try:
        driver_server.serve(driver_server.DriverConfig(kind="loopback", endpoint=free_tcp_endpoint()))
    finally:
        gc.unfreeze()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert frozen_when_serving and frozen_when_serving[0] > 0
