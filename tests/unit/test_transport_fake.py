"""The in-memory channels: the same interface and semantics as the ZeroMQ ones, without sockets."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest

from acalign_robot.wire import transport
from acalign_robot.wire.protocol import (
    Error,
    Heartbeat,
    Message,
    Policy,
    ProtocolError,
    Stats,
    Step,
    StepReply,
    TransitionBatch,
    error_message,
)
from acalign_robot.wire.transport import (
    MemoryControlClient,
    MemoryControlServer,
    MemoryPolicyPublisher,
    MemoryPolicySubscriber,
    MemoryTransitionReceiver,
    MemoryTransitionSender,
    TransportTimeout,
)


def batch(seq: int, size: int = 2) -> TransitionBatch:
    return TransitionBatch(
        stream_id="c0",
        seq=seq,
        policy_version=np.zeros(size, np.int64),
        obs=np.zeros((size, 11), np.float32),
        action=np.zeros((size, 3), np.float32),
        reward=np.zeros(size, np.float32),
        next_obs=np.zeros((size, 11), np.float32),
        terminated=np.zeros(size, bool),
        truncated=np.zeros(size, bool),
    )


def step_reply(tick: int) -> StepReply:
    return StepReply(
        tick=tick, obs=np.zeros(11), reward=0.0, terminated=False, truncated=False, driver_time_s=float(tick)
    )


@contextmanager
def serving(server, handler: Callable[[Message | ProtocolError], Message]) -> Iterator[None]:
    """Answer every request on `server` from a thread until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            got = server.recv(0.01)
            if got is not None:
                peer, request = got
                server.send(peer, handler(request))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def answer(request: Message | ProtocolError) -> Message:
    if isinstance(request, ProtocolError):
        return error_message(request)
    if isinstance(request, Step):
        return step_reply(request.tick)
    return Heartbeat(sender="fake-driver", time_s=0.0, state="running")


@pytest.mark.parametrize(
    ("fake", "real", "methods"),
    [
        (MemoryControlClient, transport.ZmqControlClient, ("request", "close")),
        (MemoryControlServer, transport.ZmqControlServer, ("recv", "send", "close")),
        (MemoryTransitionSender, transport.ZmqTransitionSender, ("send", "recv", "close")),
        (MemoryTransitionReceiver, transport.ZmqTransitionReceiver, ("recv", "acknowledge", "close")),
        (MemoryPolicyPublisher, transport.ZmqPolicyPublisher, ("send", "close")),
        (MemoryPolicySubscriber, transport.ZmqPolicySubscriber, ("recv", "close")),
    ],
)
def test_fakes_have_the_zmq_interface(fake, real, methods):
    for name in methods:
        assert inspect.signature(getattr(fake, name)) == inspect.signature(getattr(real, name)), name


def test_request_reply():
    server = MemoryControlServer()
    client = MemoryControlClient(server)
    with serving(server, answer):
        reply = client.request(Step(tick=3, action=np.zeros(3, np.float32)), timeout_s=2.0)
    assert isinstance(reply, StepReply) and reply.tick == 3
    assert client.counters.sent == client.counters.received == 1
    assert server.counters.received == server.counters.sent == 1
    assert client.counters.bytes_sent == server.counters.bytes_received > 0


def test_request_times_out_without_a_server_reply():
    client = MemoryControlClient(MemoryControlServer())
    with pytest.raises(TransportTimeout):
        client.request(Heartbeat(sender="c", time_s=0.0, state="running"), timeout_s=0.02)
    assert client.counters.timeouts == 1


def test_a_late_reply_is_discarded_as_stale():
    server = MemoryControlServer()
    client = MemoryControlClient(server)
    ping = Heartbeat(sender="c", time_s=0.0, state="running")
    with pytest.raises(TransportTimeout):
        client.request(ping, timeout_s=0.01)
    first_peer, _ = server.recv(1.0)

    def answer_late_then_current() -> None:
        second_peer, _ = server.recv(5.0)
        server.send(first_peer, Heartbeat(sender="driver", time_s=1.0, state="old"))
        server.send(second_peer, Heartbeat(sender="driver", time_s=2.0, state="current"))

    thread = threading.Thread(target=answer_late_then_current)
    thread.start()
    try:
        reply = client.request(ping, timeout_s=5.0)
    finally:
        thread.join(timeout=5)
    assert reply.state == "current"
    assert client.counters.stale == 1


def test_a_bad_frame_reaches_the_server_as_protocol_error():
    server = MemoryControlServer()
    client = MemoryControlClient(server)
    peer = transport.Peer(identity=client._identity, request_id=bytes(8))
    server._inbox.put((peer, b"junk"))  # what a broken client would send
    got_peer, request = server.recv(0.0)
    assert got_peer == peer
    assert isinstance(request, ProtocolError) and request.code == "malformed"
    assert server.send(got_peer, error_message(request))
    assert server.counters.protocol_errors == 1 and server.counters.sent == 1


def test_outgoing_messages_are_checked_against_the_channel():
    client = MemoryControlClient(MemoryControlServer(), max_message_bytes=64)
    with pytest.raises(ProtocolError) as info:
        client.request(Policy(version=1, onnx=b"x", manifest={}), timeout_s=0.1)
    assert info.value.code == "type"
    with pytest.raises(ProtocolError) as info:
        client.request(Stats(source="c", values={"text": "x" * 100}), timeout_s=0.1)
    assert info.value.code == "size"


def test_the_server_refuses_replies_to_gone_clients():
    server = MemoryControlServer()
    client = MemoryControlClient(server)
    with pytest.raises(TransportTimeout):
        client.request(Heartbeat(sender="c", time_s=0.0, state="running"), timeout_s=0.01)
    peer, _ = server.recv(1.0)
    client.close()
    assert server.send(peer, Error(code="late", message="gone")) is False
    assert server.counters.drops == 1


def test_transitions_are_bounded_and_drops_counted():
    receiver = MemoryTransitionReceiver(queue_messages=3)
    sender = MemoryTransitionSender(receiver)
    results = [sender.send(batch(seq)) for seq in range(5)]
    assert results == [True, True, True, False, False]
    assert sender.counters.sent == 3 and sender.counters.drops == 2
    assert [receiver.recv(0.0).seq for _ in range(3)] == [0, 1, 2]
    assert receiver.recv(0.0) is None
    assert receiver.counters.timeouts == 0  # a zero-timeout check is not a timeout
    assert receiver.recv(0.01) is None
    assert receiver.counters.timeouts == 1
    with pytest.raises(ProtocolError):
        sender.send(Heartbeat(sender="c", time_s=0.0, state="running"))  # not a transitions-channel message


def test_receiver_reports_a_bad_frame_as_protocol_error():
    receiver = MemoryTransitionReceiver(max_message_bytes=1000)
    receiver._queue.put((None, b"\x00junk"))
    receiver._queue.put((None, b"\x00" * 2000))
    assert receiver.recv(0.0).code == "malformed"
    assert receiver.recv(0.0).code == "size"
    assert receiver.counters.protocol_errors == 2


def test_policies_are_latest_only_per_subscriber():
    publisher = MemoryPolicyPublisher()
    early = MemoryPolicySubscriber(publisher)
    for version in range(1, 4):
        publisher.send(Policy(version=version, onnx=b"x", manifest={}))
    late = MemoryPolicySubscriber(publisher)
    assert early.recv(0.0).version == 3
    assert early.recv(0.0) is None
    assert late.recv(0.0) is None  # joined after the publishes
    publisher.send(Policy(version=4, onnx=b"x", manifest={}))
    assert early.recv(0.0).version == late.recv(0.0).version == 4
    late.close()
    publisher.send(Policy(version=5, onnx=b"x", manifest={}))
    assert late.recv(0.0) is None and early.recv(0.0).version == 5


def test_a_receiver_wakes_up_when_a_message_arrives():
    receiver = MemoryTransitionReceiver()
    sender = MemoryTransitionSender(receiver)
    timer = threading.Timer(0.05, sender.send, args=(batch(9),))
    timer.start()
    try:
        assert receiver.recv(5.0).seq == 9
    finally:
        timer.cancel()
