"""The ZeroMQ channels on real sockets (127.0.0.1, free ports): timeouts, stale replies, drops, conflation, limits."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import zmq

from acalign_robot.errors import InputError
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
    decode,
    encode,
    error_message,
)
from acalign_robot.wire.transport import (
    CurveClientKeys,
    CurveServerKeys,
    TransportTimeout,
    ZmqControlClient,
    ZmqControlServer,
    ZmqPolicyPublisher,
    ZmqPolicySubscriber,
    ZmqTransitionReceiver,
    ZmqTransitionSender,
    free_tcp_endpoint,
)

pytestmark = pytest.mark.integration

PING = Heartbeat(sender="test", time_s=0.0, state="running")


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)  # closes any socket a failing test left open, then terminates


@pytest.fixture
def opened() -> Iterator[Callable]:
    """Register an endpoint (or raw socket) to be closed at the end of the test, whatever happens."""
    endpoints: list = []

    def register(endpoint):
        endpoints.append(endpoint)
        return endpoint

    try:
        yield register
    finally:
        for endpoint in reversed(endpoints):
            endpoint.close()


def batch(seq: int, size: int = 4, obs_dim: int = 11) -> TransitionBatch:
    return TransitionBatch(
        stream_id="c0",
        seq=seq,
        policy_version=np.zeros(size, np.int64),
        obs=np.zeros((size, obs_dim), np.float32),
        action=np.zeros((size, 3), np.float32),
        reward=np.zeros(size, np.float32),
        next_obs=np.zeros((size, obs_dim), np.float32),
        terminated=np.zeros(size, bool),
        truncated=np.zeros(size, bool),
    )


def answer(request: Message | ProtocolError) -> Message:
    if isinstance(request, ProtocolError):
        return error_message(request)
    if isinstance(request, Step):
        return StepReply(
            tick=request.tick,
            obs=np.zeros(11),
            reward=0.0,
            terminated=False,
            truncated=False,
            driver_time_s=time.monotonic(),
        )
    return Heartbeat(sender="driver", time_s=time.monotonic(), state="running")


@contextmanager
def serving(server: ZmqControlServer, handler=answer) -> Iterator[None]:
    """Answer requests on `server` from a thread (which then owns the socket) until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            got = server.recv(0.01)
            if got is not None:
                server.send(got[0], handler(got[1]))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def test_request_reply(context, opened):
    endpoint = free_tcp_endpoint()
    server = opened(ZmqControlServer(endpoint, context=context))
    client = opened(ZmqControlClient(endpoint, context=context))
    with serving(server):
        for tick in range(20):
            reply = client.request(Step(tick=tick, action=np.zeros(3, np.float32)), timeout_s=5.0)
            assert isinstance(reply, StepReply) and reply.tick == tick
    assert client.counters.sent == client.counters.received == 20
    assert server.counters.received == server.counters.sent == 20
    assert client.counters.bytes_sent == server.counters.bytes_received


def test_timeout_when_the_driver_does_not_answer(context, opened):
    endpoint = free_tcp_endpoint()
    opened(ZmqControlServer(endpoint, context=context))  # bound, never reads
    client = opened(ZmqControlClient(endpoint, context=context))
    started = time.monotonic()
    with pytest.raises(TransportTimeout):
        client.request(PING, timeout_s=0.2)
    assert 0.15 <= time.monotonic() - started < 2.0
    assert client.counters.timeouts == 1


def test_timeout_when_no_driver_is_there(context, opened):
    client = opened(ZmqControlClient(free_tcp_endpoint(), context=context))
    with pytest.raises(TransportTimeout, match="no driver connected"):
        client.request(PING, timeout_s=0.1)
    assert client.counters.timeouts == 1 and client.counters.sent == 0  # nothing queued to be replayed later


def test_a_late_reply_is_discarded_and_one_request_is_in_flight_at_most(context, opened):
    endpoint = free_tcp_endpoint()
    server = opened(ZmqControlServer(endpoint, context=context))
    client = opened(ZmqControlClient(endpoint, context=context))
    with pytest.raises(TransportTimeout, match="no reply"):
        client.request(PING, timeout_s=0.3)  # the server has not read it yet
    with pytest.raises(TransportTimeout, match="earlier request"):
        client.request(PING, timeout_s=0.1)  # nothing is sent while the first is in flight
    first_peer, _ = server.recv(5.0)
    assert server.recv(0.2) is None  # one request reached the server, not two
    server.send(first_peer, Heartbeat(sender="driver", time_s=1.0, state="old"))

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
    assert client.counters.stale == 1 and client.counters.sent == 2


def test_a_request_in_flight_is_forgotten_when_its_driver_is_gone(context, opened):
    """A driver killed with a request unanswered: the disconnect frees the client to step the next driver."""
    endpoint = free_tcp_endpoint()
    first = ZmqControlServer(endpoint, context=context)
    client = opened(ZmqControlClient(endpoint, context=context))
    with pytest.raises(TransportTimeout, match="no reply"):
        client.request(PING, timeout_s=0.3)
    first.close()
    second = opened(bind_when_free(lambda: ZmqControlServer(endpoint, context=context)))

    def answer() -> None:
        peer, _ = second.recv(5.0)
        second.send(peer, Heartbeat(sender="driver", time_s=2.0, state="new"))

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        reply = request_until_answered(client, within_s=5.0)
    finally:
        thread.join(timeout=5)
    assert reply.state == "new"


def bind_when_free(bind, within_s: float = 5.0):
    """`bind()` once the port a closed socket held is free again (ZeroMQ releases it asynchronously)."""
    give_up = time.monotonic() + within_s
    while True:
        try:
            return bind()
        except InputError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.05)


def request_until_answered(client: ZmqControlClient, within_s: float):
    give_up = time.monotonic() + within_s
    while True:
        try:
            return client.request(PING, timeout_s=0.05)
        except TransportTimeout:
            if time.monotonic() > give_up:
                raise


def test_bad_frames_at_the_server(context, opened):
    endpoint = free_tcp_endpoint()
    server = opened(ZmqControlServer(endpoint, context=context))
    raw = opened(context.socket(zmq.DEALER))
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(endpoint)
    raw.send(b"no envelope")  # cannot be answered: counted and skipped
    raw.send_multipart([bytes(8), b"\x93junk"])
    peer, request = server.recv(5.0)
    assert isinstance(request, ProtocolError) and request.code == "malformed"
    assert server.counters.protocol_errors == 2
    assert server.send(peer, error_message(request))
    assert raw.poll(5000)
    request_id, frame = raw.recv_multipart()
    assert request_id == bytes(8) and isinstance(decode(frame), Error)
    raw.send_multipart([bytes(8), encode(Policy(version=1, onnx=b"x", manifest={}))])  # wrong channel
    _, request = server.recv(5.0)
    assert isinstance(request, ProtocolError) and request.code == "type"


def test_oversized_frames_drop_the_connection_and_the_server_serves_others(context, opened):
    endpoint = free_tcp_endpoint()
    server = opened(ZmqControlServer(endpoint, context=context, max_message_bytes=4096))
    big_sender = opened(ZmqControlClient(endpoint, context=context, max_message_bytes=1 << 20))
    polite = opened(ZmqControlClient(endpoint, context=context))
    with serving(server):
        with pytest.raises(TransportTimeout):
            big_sender.request(Stats(source="big", values={"blob": "x" * 10_000}), timeout_s=0.5)
        assert isinstance(polite.request(PING, timeout_s=5.0), Heartbeat)
        # ZeroMQ dropped the offending connection; the DEALER reconnects and small requests work again
        assert isinstance(big_sender.request(PING, timeout_s=5.0), Heartbeat)
    assert server.counters.protocol_errors == 0  # the big frame never reached Python
    assert server.counters.received == 2


def test_transitions_drop_when_the_learner_is_absent(context, opened):
    sender = opened(ZmqTransitionSender(free_tcp_endpoint(), context=context, queue_messages=5))
    results = [sender.send(batch(seq)) for seq in range(100)]
    assert all(results[:5]) and not any(results[5:])  # the queue holds 5 (SNDHWM), then send never blocks
    assert sender.counters.sent == 5 and sender.counters.drops == 95


def test_transitions_drop_when_the_learner_is_slow_then_flow(context, opened):
    endpoint = free_tcp_endpoint()
    receiver = opened(ZmqTransitionReceiver(endpoint, context=context, queue_messages=1))
    sender = opened(ZmqTransitionSender(endpoint, context=context, queue_messages=1))
    big = batch(0, size=64, obs_dim=2000)  # ~1 MB: the OS buffers fill after a few
    started = time.monotonic()
    sent = sum(sender.send(big) for _ in range(200))
    assert time.monotonic() - started < 5.0  # never blocked
    assert sender.counters.drops == 200 - sent > 0
    received = 0
    while received < sent and receiver.recv(5.0) is not None:
        received += 1
    assert received == sent == receiver.counters.received


def test_policies_are_latest_only(context, opened):
    endpoint = free_tcp_endpoint()
    publisher = opened(ZmqPolicyPublisher(endpoint, context=context))
    subscriber = opened(ZmqPolicySubscriber(endpoint, context=context))
    deadline = time.monotonic() + 5.0
    while subscriber.recv(0.02) is None:  # PUB/SUB slow joiner: publish until the subscription is in place
        assert time.monotonic() < deadline
        publisher.send(Policy(version=0, onnx=b"warm-up", manifest={}))
    while subscriber.recv(0.05) is not None:
        pass
    for version in range(1, 11):
        publisher.send(Policy(version=version, onnx=bytes(100_000), manifest={"version": version}))
    time.sleep(0.3)
    versions = []
    while (message := subscriber.recv(0.2)) is not None:
        versions.append(message.version)
    assert versions == [10]
    assert subscriber.recv(0.0) is None  # the non-blocking check the controller does between ticks


def test_curve_keys_encrypt_and_authenticate_the_server(context, opened):
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    impostor_public, _ = zmq.curve_keypair()
    endpoint = free_tcp_endpoint()
    server = opened(ZmqControlServer(endpoint, context=context, curve=CurveServerKeys(server_secret, server_public)))
    trusting = opened(
        ZmqControlClient(endpoint, context=context, curve=CurveClientKeys(client_secret, client_public, server_public))
    )
    misled = opened(
        ZmqControlClient(
            endpoint, context=context, curve=CurveClientKeys(client_secret, client_public, impostor_public)
        )
    )
    plain = opened(ZmqControlClient(endpoint, context=context))
    with serving(server):
        assert isinstance(trusting.request(PING, timeout_s=5.0), Heartbeat)
        for client in (misled, plain):
            with pytest.raises(TransportTimeout):
                client.request(PING, timeout_s=0.3)


def test_bad_endpoints_are_input_errors(context, opened):
    endpoint = free_tcp_endpoint()
    opened(ZmqControlServer(endpoint, context=context))
    with pytest.raises(InputError, match="cannot bind"):
        ZmqControlServer(endpoint, context=context)  # port taken
    with pytest.raises(InputError, match="cannot connect"):
        ZmqControlClient("tcp://127.0.0.1:notaport", context=context)


def test_runtime_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import acalign_robot.wire.protocol, acalign_robot.wire.transport\n"
        "assert sys.modules['torch'] is None\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
