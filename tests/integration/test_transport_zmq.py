"""What only the ZeroMQ channels do, on real sockets (127.0.0.1, free ports).

The behaviour both transports share (request/reply, timeouts, stale replies, bad frames, drops, latest-only policies,
counters) is tested once over both in tests/unit/test_transport_contract.py. Here: no driver connected, one control
request in flight, frames without an envelope, oversized frames dropping a connection, CURVE, bad endpoints.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from acalign_robot.errors import InputError
from acalign_robot.wire.channels import CurveClientKeys, CurveServerKeys, TransportTimeout, free_tcp_endpoint
from acalign_robot.wire.protocol import Heartbeat, ProtocolError, Stats
from acalign_robot.wire.transport import ZmqControlClient, ZmqControlServer
from tests.transport_helpers import PING, serving

pytestmark = pytest.mark.integration


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


def test_timeout_when_no_driver_is_there(context, opened):
    client = opened(ZmqControlClient(free_tcp_endpoint(), context=context))
    with pytest.raises(TransportTimeout, match="no driver connected"):
        client.request(PING, timeout_s=0.1)
    assert client.counters.timeouts == 1 and client.counters.sent == 0  # nothing queued to be replayed later


def test_one_request_is_in_flight_at_most_until_its_late_reply_comes(context, opened):
    """The contract suite checks that a late reply is discarded; this is the ZeroMQ client's gate before it."""
    endpoint = free_tcp_endpoint()
    server = opened(ZmqControlServer(endpoint, context=context))
    client = opened(ZmqControlClient(endpoint, context=context))
    with pytest.raises(TransportTimeout, match="no reply"):
        client.request(PING, timeout_s=0.3)  # the server has not read it yet
    with pytest.raises(TransportTimeout, match="earlier request"):
        client.request(PING, timeout_s=0.1)  # nothing is sent while the first is in flight
    first_peer, _ = server.recv(5.0)
    assert server.recv(0.2) is None  # one request reached the server, not two
    server.send(first_peer, Heartbeat(sender="driver", time_s=1.0, state="late"))
    with pytest.raises(TransportTimeout, match="no reply"):
        client.request(PING, timeout_s=0.5)  # the late reply frees the gate: this one is sent
    assert server.recv(5.0) is not None
    assert client.counters.sent == 2 and client.counters.stale == 1


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


def test_a_frame_without_an_envelope_is_counted_and_skipped(context, opened):
    endpoint = free_tcp_endpoint()
    server = opened(ZmqControlServer(endpoint, context=context))
    raw = opened(context.socket(zmq.DEALER))
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(endpoint)
    raw.send(b"no envelope")  # cannot be answered: counted and skipped
    raw.send_multipart([bytes(8), b"\x93junk"])
    peer, request = server.recv(5.0)
    assert peer.request_id == bytes(8)  # the next frame with an envelope
    assert isinstance(request, ProtocolError) and request.code == "malformed"
    assert server.counters.protocol_errors == 2


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
        "import acalign_robot.wire.protocol, acalign_robot.wire.transport, acalign_robot.wire.memory\n"
        "assert sys.modules['torch'] is None\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
