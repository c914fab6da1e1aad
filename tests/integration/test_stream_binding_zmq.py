"""Stream binding on real sockets (127.0.0.1): a stream belongs to the connection that opened it and, on CURVE, to
the client key; a peer that knows a stream id (and even its routing id) cannot speak for it, its owner can again."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zmq

from acalign_robot.wire.channels import free_tcp_endpoint
from acalign_robot.wire.delivery import StreamRefused
from acalign_robot.wire.protocol import Stats, TransitionAck, TransitionBatch
from acalign_robot.wire.security import client_keys, generate_keys, load_public_key, secure_context
from acalign_robot.wire.transport import ZmqTransitionReceiver, ZmqTransitionSender
from tests.integration.test_security_zmq import link
from tests.learner_helpers import transition_batch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE"),
]


@pytest.fixture
def keys(tmp_path) -> Path:
    """learner (server); robot1 and robot2, both allow-listed."""
    for name in ("learner", "robot1", "robot2"):
        generate_keys(tmp_path, name)
    (tmp_path / "clients").mkdir()
    for name in ("robot1", "robot2"):
        shutil.copy(tmp_path / f"{name}.key", tmp_path / "clients" / f"{name}.key")
    return tmp_path


def next_message(receiver: ZmqTransitionReceiver) -> TransitionBatch | Stats | StreamRefused:
    message = receiver.recv(5.0)
    assert message is not None, "nothing arrived within 5 s"
    return message


def test_on_curve_a_stream_belongs_to_its_client_key_whatever_the_connection(keys, client_context):
    endpoint = free_tcp_endpoint()
    leaked_routing_id = b"t-leaked-routing"
    with (
        secure_context(link(keys, "robot1")) as secure,
        ZmqTransitionReceiver(endpoint, context=secure.context, curve=secure.server_keys(endpoint)) as receiver,
    ):
        owner = ZmqTransitionSender(
            endpoint, context=client_context, curve=client_keys(link(keys, "robot1")), routing_id=leaked_routing_id
        )
        assert owner.send(transition_batch("robot1@7", 0, 2))
        assert next_message(receiver).seq == 0
        robot1_key = load_public_key(keys / "robot1.key").decode()
        assert receiver.owners._owners["robot1@7"].key == robot1_key  # the ZAP User-Id: the client's z85 key
        owner.close()

        # Another allow-listed robot with the stream id and the owner's routing id (the owner is gone, so ZeroMQ
        # lets that identity in): refused, and so are its Stats for that source.
        other = ZmqTransitionSender(
            endpoint, context=client_context, curve=client_keys(link(keys, "robot2")), routing_id=leaked_routing_id
        )
        assert other.send(transition_batch("robot1@7", 1, 2)) and other.send(Stats(source="robot1", values={}))
        refused = [next_message(receiver), next_message(receiver)]
        assert all(isinstance(message, StreamRefused) for message in refused)
        assert (receiver.owners.refused_owner, receiver.owners.stats_unbound) == (1, 1)
        other.close()

        # The owner's key on a new connection (a fresh routing id): its stream, and the acks follow it.
        back = ZmqTransitionSender(endpoint, context=client_context, curve=client_keys(link(keys, "robot1")))
        assert back.send(transition_batch("robot1@7", 1, 2)) and back.send(Stats(source="robot1", values={}))
        assert next_message(receiver).seq == 1 and isinstance(next_message(receiver), Stats)
        assert receiver.owners.rebound == 1 and receiver.owners.connection("robot1@7") == back.routing_id
        none_missing = np.zeros(0, np.int64)
        assert receiver.acknowledge(TransitionAck("robot1@7", 1, durable_through=-1, highest=1, missing=none_missing))
        got = back.recv(5.0)
        assert isinstance(got, TransitionAck) and got.received_through == 1
        back.close()


def test_without_curve_a_stream_belongs_to_its_connection_and_its_reconnects(client_context):
    endpoint = free_tcp_endpoint()
    with ZmqTransitionReceiver(endpoint) as receiver:
        owner = ZmqTransitionSender(endpoint, context=client_context)
        assert owner.send(transition_batch("c@1", 0, 2))
        assert next_message(receiver).seq == 0 and receiver.owners._owners["c@1"].key is None
        forger = ZmqTransitionSender(endpoint, context=client_context)  # knows the stream id only
        assert forger.send(transition_batch("c@1", 10**9, 2, resend_from=10**9))
        assert isinstance(next_message(receiver), StreamRefused) and receiver.owners.refused_owner == 1
        routing_id = owner.routing_id
        owner.close()
        forger.close()
        again = ZmqTransitionSender(endpoint, context=client_context, routing_id=routing_id)  # the same sender, back
        assert again.send(transition_batch("c@1", 1, 2))
        assert next_message(receiver).seq == 1 and receiver.owners.refused_owner == 1
        again.close()
