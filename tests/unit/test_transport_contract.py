"""The channels' contract: one set of behaviour tests, run over the in-memory fakes and over ZeroMQ.

The `channels` fixture gives connected ends of each channel on one transport: `memory` (wire.memory; a unit test)
or `zmq` (wire.transport on real sockets, 127.0.0.1 and a free port each; an integration test). What only one
transport does is tested on that one alone: ZeroMQ's in tests/integration/test_transport_zmq.py (no driver
connected, one control request in flight, frames without an envelope, oversized frames dropping a connection,
CURVE, bad endpoints), the fakes' at the end of this file.
"""

from __future__ import annotations

import inspect
import threading
import time

import numpy as np
import pytest
import zmq

from acalign_robot.wire import transport
from acalign_robot.wire.channels import (
    CONTROL_MAX_BYTES,
    ControlClient,
    ControlServer,
    Peer,
    PolicyReceiver,
    Sender,
    TransitionClient,
    TransitionServer,
    TransportTimeout,
    free_tcp_endpoint,
)
from acalign_robot.wire.memory import (
    MemoryControlClient,
    MemoryControlServer,
    MemoryPolicyPublisher,
    MemoryPolicySubscriber,
    MemoryTransitionReceiver,
    MemoryTransitionSender,
)
from acalign_robot.wire.protocol import (
    Error,
    Heartbeat,
    Policy,
    ProtocolError,
    Stats,
    Step,
    StepReply,
    TransitionAck,
    decode,
    encode,
    error_message,
)
from acalign_robot.wire.transport import (
    ZmqControlClient,
    ZmqControlServer,
    ZmqPolicyPublisher,
    ZmqPolicySubscriber,
    ZmqTransitionReceiver,
    ZmqTransitionSender,
)
from tests.helpers import wait_for
from tests.transport_helpers import PING, batch, serving


class MemoryChannels:
    """Each channel's ends, attached to each other in memory."""

    def control(self, max_message_bytes: int = CONTROL_MAX_BYTES) -> tuple[ControlClient, ControlServer]:
        server = MemoryControlServer(max_message_bytes=max_message_bytes)
        return MemoryControlClient(server, max_message_bytes=max_message_bytes), server

    def broken_control_client(self, server: MemoryControlServer) -> MemoryBrokenClient:
        return MemoryBrokenClient(server)

    def transitions(self, queue_messages: int) -> tuple[TransitionClient, TransitionServer]:
        receiver = MemoryTransitionReceiver(queue_messages=queue_messages)
        return MemoryTransitionSender(receiver), receiver

    def sender_without_learner(self, queue_messages: int) -> TransitionClient:
        """A fake's bound is its receiver's queue, so an absent learner is one that never reads."""
        return MemoryTransitionSender(MemoryTransitionReceiver(queue_messages=queue_messages))

    def policy(self) -> tuple[Sender, PolicyReceiver]:
        publisher = MemoryPolicyPublisher()
        return publisher, MemoryPolicySubscriber(publisher)

    def subscriber(self, publisher: MemoryPolicyPublisher) -> PolicyReceiver:
        return MemoryPolicySubscriber(publisher)


class MemoryBrokenClient:
    """A client of a MemoryControlServer that sends any frame it is given, straight into the server's queue."""

    def __init__(self, server: MemoryControlServer):
        self._server = server
        self._client = MemoryControlClient(server)  # its identity and its reply mailbox

    def send(self, request_id: bytes, frame: bytes) -> None:
        self._server._inbox.put((Peer(self._client._identity, request_id), frame))

    def recv(self, timeout_s: float) -> tuple[bytes, bytes] | None:
        return self._client._replies.get(timeout_s)


class ZmqChannels:
    """Each channel's ends on real sockets, a free port each; destroying `context` at teardown closes them."""

    def __init__(self, context: zmq.Context):
        self.context = context

    def control(self, max_message_bytes: int = CONTROL_MAX_BYTES) -> tuple[ControlClient, ControlServer]:
        endpoint = free_tcp_endpoint()
        server = ZmqControlServer(endpoint, context=self.context, max_message_bytes=max_message_bytes)
        return ZmqControlClient(endpoint, context=self.context, max_message_bytes=max_message_bytes), server

    def broken_control_client(self, server: ZmqControlServer) -> ZmqBrokenClient:
        return ZmqBrokenClient(self.context, server.endpoint)

    def transitions(self, queue_messages: int) -> tuple[TransitionClient, TransitionServer]:
        endpoint = free_tcp_endpoint()
        receiver = ZmqTransitionReceiver(endpoint, context=self.context, queue_messages=queue_messages)
        return ZmqTransitionSender(endpoint, context=self.context, queue_messages=queue_messages), receiver

    def sender_without_learner(self, queue_messages: int) -> TransitionClient:
        return ZmqTransitionSender(free_tcp_endpoint(), context=self.context, queue_messages=queue_messages)

    def policy(self) -> tuple[Sender, PolicyReceiver]:
        endpoint = free_tcp_endpoint()
        publisher = ZmqPolicyPublisher(endpoint, context=self.context)
        return publisher, ZmqPolicySubscriber(endpoint, context=self.context)

    def subscriber(self, publisher: ZmqPolicyPublisher) -> PolicyReceiver:
        return ZmqPolicySubscriber(publisher.endpoint, context=self.context)


class ZmqBrokenClient:
    """A bare DEALER that sends any [request id, frame] it is given to a control server."""

    def __init__(self, context: zmq.Context, endpoint: str):
        self._socket = context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint)

    def send(self, request_id: bytes, frame: bytes) -> None:
        self._socket.send_multipart([request_id, frame])

    def recv(self, timeout_s: float) -> tuple[bytes, bytes] | None:
        if not self._socket.poll(int(timeout_s * 1000)):
            return None
        request_id, frame = self._socket.recv_multipart()
        return request_id, frame


@pytest.fixture(params=["memory", pytest.param("zmq", marks=pytest.mark.integration)])
def channels(request) -> MemoryChannels | ZmqChannels:
    if request.param == "memory":
        return MemoryChannels()
    return ZmqChannels(request.getfixturevalue("context"))


# --- control: request/reply with a request id, a timeout on every request --------------------------------------------


def test_request_reply(channels):
    client, server = channels.control()
    with serving(server):
        for tick in range(20):
            reply = client.request(Step(tick=tick, action=np.zeros(3, np.float32)), timeout_s=5.0)
            assert isinstance(reply, StepReply) and reply.tick == tick
    assert client.counters.sent == client.counters.received == 20
    assert server.counters.received == server.counters.sent == 20
    assert client.counters.bytes_sent == server.counters.bytes_received > 0


def test_a_request_times_out_when_the_server_does_not_answer(channels):
    client, _ = channels.control()  # the server never reads
    started = time.monotonic()
    with pytest.raises(TransportTimeout):
        client.request(PING, timeout_s=0.2)
    assert 0.15 <= time.monotonic() - started < 2.0
    assert client.counters.timeouts == 1


def test_a_late_reply_is_discarded_as_stale(channels):
    client, server = channels.control()
    with pytest.raises(TransportTimeout):
        client.request(PING, timeout_s=0.3)  # the server has not read it yet
    first_peer, _ = server.recv(5.0)
    server.send(first_peer, Heartbeat(sender="driver", time_s=1.0, state="old"))  # too late

    def answer_the_next() -> None:
        peer, _ = server.recv(5.0)
        server.send(peer, Heartbeat(sender="driver", time_s=2.0, state="current"))

    thread = threading.Thread(target=answer_the_next)
    thread.start()
    try:
        reply = client.request(PING, timeout_s=5.0)
    finally:
        thread.join(timeout=5)
    assert reply.state == "current"
    assert client.counters.stale == 1


def test_bad_frames_reach_the_server_as_protocol_errors(channels):
    _, server = channels.control()
    broken = channels.broken_control_client(server)
    broken.send(bytes(8), b"\x93junk")
    peer, request = server.recv(5.0)
    assert isinstance(request, ProtocolError) and request.code == "malformed"
    assert server.send(peer, error_message(request))
    request_id, frame = broken.recv(5.0)
    assert request_id == bytes(8) and isinstance(decode(frame), Error)
    broken.send(bytes(8), encode(Policy(version=1, onnx=b"x", manifest={})))  # a message of another channel
    _, request = server.recv(5.0)
    assert isinstance(request, ProtocolError) and request.code == "type"
    assert server.counters.protocol_errors == 2 and server.counters.sent == 1


def test_outgoing_messages_are_checked_against_the_channel(channels):
    client, _ = channels.control(max_message_bytes=64)
    with pytest.raises(ProtocolError) as info:
        client.request(Policy(version=1, onnx=b"x", manifest={}), timeout_s=0.1)
    assert info.value.code == "type"
    with pytest.raises(ProtocolError) as info:
        client.request(Stats(source="c", values={"text": "x" * 100}), timeout_s=0.1)
    assert info.value.code == "size"


def test_a_reply_to_a_gone_client_is_a_counted_drop(channels):
    client, server = channels.control()
    with pytest.raises(TransportTimeout):
        client.request(PING, timeout_s=0.3)
    peer, _ = server.recv(5.0)
    client.close()
    # ZeroMQ's server learns of the disconnect a moment later; a reply sent before that goes to the closing connection
    wait_for(lambda: not server.send(peer, Error(code="late", message="gone")), 5.0, "a reply refused")
    assert server.counters.drops == 1


# --- transitions: bounded, never blocking, counted drops; acknowledgements back ---------------------------------------


def test_transitions_queue_up_to_the_bound_when_the_learner_is_absent_then_drop(channels):
    sender = channels.sender_without_learner(queue_messages=5)
    started = time.monotonic()
    results = [sender.send(batch(seq)) for seq in range(100)]
    assert time.monotonic() - started < 5.0  # never blocked
    assert results == [True] * 5 + [False] * 95
    assert sender.counters.sent == 5 and sender.counters.drops == 95
    with pytest.raises(ProtocolError):
        sender.send(PING)  # not a transitions-channel message


def test_transitions_drop_when_the_learner_is_slow_then_flow(channels):
    sender, receiver = channels.transitions(queue_messages=1)
    big = batch(0, size=64, obs_dim=2000)  # ~1 MB: ZeroMQ's OS buffers fill after a few
    started = time.monotonic()
    sent = sum(sender.send(big) for _ in range(200))
    assert time.monotonic() - started < 5.0  # never blocked
    assert sender.counters.drops == 200 - sent > 0
    received = 0
    while received < sent and receiver.recv(5.0) is not None:
        received += 1
    assert received == sent == receiver.counters.received


def test_transitions_arrive_in_order_and_only_a_receive_that_waited_times_out(channels):
    sender, receiver = channels.transitions(queue_messages=8)
    for seq in range(3):
        assert sender.send(batch(seq))
    assert [receiver.recv(5.0).seq for _ in range(3)] == [0, 1, 2]
    assert receiver.recv(0.0) is None
    assert receiver.counters.timeouts == 0  # a zero-timeout check is not a timeout
    assert receiver.recv(0.01) is None
    assert receiver.counters.timeouts == 1


def test_a_receiver_wakes_up_when_a_message_arrives(channels):
    sender, receiver = channels.transitions(queue_messages=8)
    timer = threading.Timer(0.05, sender.send, args=(batch(9),))
    timer.start()
    try:
        assert receiver.recv(5.0).seq == 9
    finally:
        timer.cancel()
        timer.join()


def ack(stream_id: str, received_through: int) -> TransitionAck:
    return TransitionAck(
        stream_id=stream_id,
        received_through=received_through,
        durable_through=-1,
        highest=received_through,
        missing=np.zeros(0, np.int64),
    )


def test_an_acknowledgement_reaches_the_sender_of_its_stream_only(channels):
    sender, receiver = channels.transitions(queue_messages=8)
    assert sender.send(batch(0))
    assert receiver.recv(5.0).seq == 0  # binds stream c0 to this sender's connection
    assert receiver.acknowledge(ack("c0", 0))
    got = sender.recv(5.0)
    assert isinstance(got, TransitionAck) and (got.stream_id, got.received_through) == ("c0", 0)
    assert receiver.acknowledge(ack("nobody", -1)) is False  # no connection owns that stream
    assert receiver.counters.sent == 1 and receiver.counters.drops == 1


# --- policies: latest-only ---------------------------------------------------------------------------------------


def wait_until_subscribed(publisher: Sender, subscriber: PolicyReceiver) -> None:
    """Publish version 0 until `subscriber` receives one (PUB/SUB's slow joiner), then drain what it holds."""
    deadline = time.monotonic() + 5.0
    while subscriber.recv(0.02) is None:
        assert time.monotonic() < deadline
        publisher.send(Policy(version=0, onnx=b"warm-up", manifest={}))
    while subscriber.recv(0.05) is not None:
        pass


def test_policies_are_latest_only(channels):
    publisher, subscriber = channels.policy()
    wait_until_subscribed(publisher, subscriber)
    for version in range(1, 11):
        publisher.send(Policy(version=version, onnx=bytes(100_000), manifest={"version": version}))
    time.sleep(0.3)
    versions = []
    while (message := subscriber.recv(0.2)) is not None:
        versions.append(message.version)
    assert versions == [10]
    assert subscriber.recv(0.0) is None  # the non-blocking check the controller does between ticks


def test_a_subscriber_gets_only_policies_published_after_it_joined(channels):
    publisher, early = channels.policy()
    wait_until_subscribed(publisher, early)
    publisher.send(Policy(version=1, onnx=b"x", manifest={}))
    late = channels.subscriber(publisher)
    assert early.recv(5.0).version == 1
    assert late.recv(0.2) is None  # nothing is kept for a subscriber that joins after a publish
    wait_until_subscribed(publisher, late)
    while early.recv(0.05) is not None:  # the warm-ups
        pass
    publisher.send(Policy(version=2, onnx=b"x", manifest={}))
    assert early.recv(5.0).version == late.recv(5.0).version == 2
    late.close()
    publisher.send(Policy(version=3, onnx=b"x", manifest={}))
    assert early.recv(5.0).version == 3  # the others stay subscribed


def test_a_policy_is_waited_for_taken_and_decoded_in_three_steps(channels):
    publisher, subscriber = channels.policy()
    wait_until_subscribed(publisher, subscriber)
    assert subscriber.wait(0.0) is False and subscriber.take() is None
    publisher.send(Policy(version=7, onnx=b"x", manifest={}))
    assert subscriber.wait(5.0)
    frame = subscriber.take()
    assert subscriber.take() is None  # taken
    assert subscriber.decode(frame).version == 7
    assert subscriber.decode(b"\x93junk").code == "malformed"
    assert subscriber.counters.protocol_errors == 1


# --- what only the in-memory fakes do ------------------------------------------------------------------------------


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


def test_a_fake_receiver_reports_bad_and_oversized_frames_as_protocol_errors():
    """Where ZeroMQ drops the connection of an oversized frame before Python sees it (test_transport_zmq.py)."""
    receiver = MemoryTransitionReceiver(max_message_bytes=1000)
    receiver._queue.put((None, b"\x00junk"))
    receiver._queue.put((None, b"\x00" * 2000))
    assert receiver.recv(0.0).code == "malformed"
    assert receiver.recv(0.0).code == "size"
    assert receiver.counters.protocol_errors == 2


def test_a_closed_fake_subscriber_receives_nothing():
    publisher = MemoryPolicyPublisher()
    subscriber = MemoryPolicySubscriber(publisher)
    subscriber.close()
    publisher.send(Policy(version=1, onnx=b"x", manifest={}))
    assert subscriber.recv(0.0) is None
