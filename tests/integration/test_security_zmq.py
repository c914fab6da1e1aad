"""CURVE with client allow-listing on real sockets (127.0.0.1, free ports): who gets in, who does not, clean stops."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq

from acalign_robot.errors import InputError
from acalign_robot.wire.channels import CurveClientKeys, TransportTimeout, free_tcp_endpoint
from acalign_robot.wire.protocol import Heartbeat, Policy
from acalign_robot.wire.security import SecurityConfig, client_keys, generate_keys, secure_context
from acalign_robot.wire.transport import (
    ZmqControlClient,
    ZmqControlServer,
    ZmqPolicyPublisher,
    ZmqPolicySubscriber,
    ZmqTransitionReceiver,
    ZmqTransitionSender,
)
from tests.transport_helpers import batch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE"),
]

PING = Heartbeat(sender="test", time_s=0.0, state="running")
REFUSED_WAIT_S = 0.5  # long enough for a handshake on loopback, short enough to keep the suite quick


@pytest.fixture
def keys(tmp_path) -> Path:
    """learner (server), robot1 (allow-listed client) and intruder (a valid key pair nobody allow-listed)."""
    for name in ("learner", "robot1", "intruder"):
        generate_keys(tmp_path, name)
    (tmp_path / "clients").mkdir()
    shutil.copy(tmp_path / "robot1.key", tmp_path / "clients" / "robot1.key")
    return tmp_path


def link(keys: Path, client: str = "robot1") -> SecurityConfig:
    return SecurityConfig(
        curve=True,
        keys_dir=str(keys),
        server_key="learner",
        client_key=client,
        authorized_clients_dir=str(keys / "clients"),
    )


@contextmanager
def answering(server: ZmqControlServer) -> Iterator[None]:
    """Answer every request with a Heartbeat from a thread (which then owns the socket) until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            got = server.recv(0.01)
            if got is not None:
                server.send(got[0], Heartbeat(sender="driver", time_s=time.monotonic(), state="running"))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def outsiders(keys: Path) -> dict[str, CurveClientKeys | None]:
    """Clients the server must refuse: one without CURVE, one with a valid but unlisted key pair."""
    return {"plain": None, "intruder": client_keys(link(keys, client="intruder"))}


def test_control_channel_serves_allow_listed_clients_only(keys, client_context):
    endpoint = free_tcp_endpoint()
    with secure_context(link(keys)) as secure:
        with ZmqControlServer(endpoint, context=secure.context, curve=secure.server_keys(endpoint)) as server:
            trusted = ZmqControlClient(endpoint, context=client_context, curve=client_keys(link(keys)))
            refused = {
                name: ZmqControlClient(endpoint, context=client_context, curve=curve)
                for name, curve in outsiders(keys).items()
            }
            with answering(server):
                assert isinstance(trusted.request(PING, timeout_s=5.0), Heartbeat)
                for name, client in refused.items():
                    with pytest.raises(TransportTimeout):
                        client.request(PING, timeout_s=REFUSED_WAIT_S)
                    assert client.counters.received == 0, name
                for _ in range(3):  # the refused ones do not disturb the allowed one
                    assert isinstance(trusted.request(PING, timeout_s=5.0), Heartbeat)
        assert server.counters.received == 4  # nothing from the outsiders ever reached Python
    assert not secure.authenticator.is_alive() and secure.context.closed


def test_transitions_from_unlisted_clients_never_arrive(keys, client_context):
    endpoint = free_tcp_endpoint()
    with (
        secure_context(link(keys)) as secure,
        ZmqTransitionReceiver(endpoint, context=secure.context, curve=secure.server_keys(endpoint)) as receiver,
    ):
        senders = {
            name: ZmqTransitionSender(endpoint, context=client_context, curve=curve)
            for name, curve in {**outsiders(keys), "robot1": client_keys(link(keys))}.items()
        }
        for seq in range(5):
            for name, sender in senders.items():
                assert sender.send(batch(seq, stream_id=name))  # queued locally: PUSH never blocks
        arrived = []
        while (message := receiver.recv(REFUSED_WAIT_S * 2)) is not None:
            arrived.append((message.stream_id, message.seq))
        assert arrived == [("robot1", seq) for seq in range(5)]


def test_policies_reach_allow_listed_subscribers_only(keys, client_context):
    endpoint = free_tcp_endpoint()
    with (
        secure_context(link(keys)) as secure,
        ZmqPolicyPublisher(endpoint, context=secure.context, curve=secure.server_keys(endpoint)) as publisher,
    ):
        trusted = ZmqPolicySubscriber(endpoint, context=client_context, curve=client_keys(link(keys)))
        refused = [ZmqPolicySubscriber(endpoint, context=client_context, curve=c) for c in outsiders(keys).values()]
        deadline = time.monotonic() + 10.0
        while trusted.recv(0.02) is None:  # PUB/SUB slow joiner: publish until the subscription is in place
            assert time.monotonic() < deadline
            publisher.send(Policy(version=1, onnx=b"secret weights", manifest={}))
        for _ in range(10):
            publisher.send(Policy(version=1, onnx=b"secret weights", manifest={}))
            time.sleep(REFUSED_WAIT_S / 10)
        assert all(subscriber.recv(0.0) is None for subscriber in refused)


def test_the_server_binds_nothing_non_loopback_without_curve(keys):
    with secure_context(SecurityConfig()) as secure:
        assert secure.authenticator is None and secure.server_keys("tcp://127.0.0.1:1") is None
        with pytest.raises(InputError, match="refusing to bind 'tcp://0.0.0.0:5999' without CURVE"):
            secure.server_keys("tcp://0.0.0.0:5999")
    assert secure.context.closed


def test_a_process_exits_promptly_with_or_without_closing(keys, tmp_path):
    """No hang at interpreter exit: neither after close() nor when a process forgets to close (authenticator alive)."""
    script = textwrap.dedent(
        """
        import sys
        from acalign_robot.wire.security import SecurityConfig, secure_context
        from acalign_robot.wire.channels import free_tcp_endpoint
        from acalign_robot.wire.transport import ZmqControlServer

        keys, close = sys.argv[1], sys.argv[2] == "close"
        security = SecurityConfig(curve=True, keys_dir=keys, server_key="learner",
                                  authorized_clients_dir=keys + "/clients")
        secure = secure_context(security)
        endpoint = free_tcp_endpoint()
        server = ZmqControlServer(endpoint, context=secure.context, curve=secure.server_keys(endpoint))
        if close:
            server.close()
            secure.close()
        print("done", flush=True)
        """
    )
    for mode in ("close", "leave-open"):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", script, str(keys), mode], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0 and result.stdout == "done\n", (mode, result.stderr)
        assert time.monotonic() - started < 20.0
