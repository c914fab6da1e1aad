"""In-memory fakes of the three channels (`wire.channels`): the interface `wire.transport` implements, without
sockets.

For unit tests of controller, driver and learner logic (STYLE.md rule 7); tests/unit/test_transport_contract.py runs
one set of behaviour tests over these and the ZeroMQ endpoints. Each fake has the same methods and counters as its
ZeroMQ counterpart and goes through the same codec, size limits and stream binding: it calls the helpers in
`wire.channels` that the ZeroMQ endpoints call, so the two cannot drift apart. Unlike ZeroMQ sockets, a fake may be
used across threads. Where the two differ: a fake receiver reports an oversized frame as ProtocolError("size") where
ZeroMQ silently drops the connection; all senders to one fake transition receiver share its one bounded queue
(ZeroMQ has one per sender); a fake control client does not hold back a request while an earlier one is unanswered
(ZmqControlClient does).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from typing import Any

from acalign_robot.wire.channels import (
    CONTROL_MAX_BYTES,
    POLICY_MAX_BYTES,
    REQUEST_ID,
    TRANSITIONS_MAX_BYTES,
    Counters,
    Peer,
    TransportTimeout,
    check_owner,
    count_sent,
    incoming_message,
    outgoing_frame,
)
from acalign_robot.wire.delivery import StreamOwners, StreamRefused
from acalign_robot.wire.protocol import (
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    POLICY_MESSAGES,
    TRANSITION_MESSAGES,
    TRANSITION_REPLIES,
    Message,
    ProtocolError,
    TransitionAck,
)

__all__ = [
    "MemoryControlClient",
    "MemoryControlServer",
    "MemoryPolicyPublisher",
    "MemoryPolicySubscriber",
    "MemoryTransitionReceiver",
    "MemoryTransitionSender",
]


class _Mailbox:
    """A thread-safe FIFO of at most `capacity` items; `conflate` keeps only the newest (ZeroMQ's CONFLATE)."""

    def __init__(self, capacity: int, conflate: bool = False):
        self._items: deque[Any] = deque()
        self._capacity = 1 if conflate else capacity
        self._conflate = conflate
        self._ready = threading.Condition()

    def put(self, item: Any) -> bool:
        with self._ready:
            if self._conflate:
                self._items.clear()
            elif len(self._items) >= self._capacity:
                return False
            self._items.append(item)
            self._ready.notify()
            return True

    def get(self, timeout_s: float) -> Any | None:
        with self._ready:
            if not self._ready.wait_for(lambda: self._items, timeout=max(0.0, timeout_s)):
                return None
            return self._items.popleft()


def _get_counted(mailbox: _Mailbox, counters: Counters, timeout_s: float) -> Any | None:
    """The next item, or None after timeout_s (a receive that waited and got nothing counts as a timeout)."""
    item = mailbox.get(timeout_s)
    if item is None and timeout_s > 0:
        counters.timeouts += 1
    return item


def _recv_mailbox(
    mailbox: _Mailbox, allowed: tuple[type, ...], channel: str, max_bytes: int, counters: Counters, timeout_s: float
) -> Message | ProtocolError | None:
    frame = _get_counted(mailbox, counters, timeout_s)
    return None if frame is None else incoming_message(frame, allowed, channel, max_bytes, counters)


class MemoryControlServer:
    """In-memory ZmqControlServer; clients attach with `MemoryControlClient(server)`."""

    def __init__(self, *, max_message_bytes: int = CONTROL_MAX_BYTES, queue_messages: int = 64):
        self.max_message_bytes = max_message_bytes
        self.counters = Counters()
        self._inbox = _Mailbox(queue_messages)
        self._clients: dict[bytes, _Mailbox] = {}
        self._identities = itertools.count()

    def _attach(self, replies: _Mailbox) -> bytes:
        identity = b"client-%d" % next(self._identities)
        self._clients[identity] = replies
        return identity

    def recv(self, timeout_s: float) -> tuple[Peer, Message | ProtocolError] | None:
        item = _get_counted(self._inbox, self.counters, timeout_s)
        if item is None:
            return None
        peer, frame = item
        return peer, incoming_message(frame, CONTROL_REQUESTS, "control", self.max_message_bytes, self.counters)

    def send(self, peer: Peer, message: Message) -> bool:
        frame = outgoing_frame(message, CONTROL_REPLIES, "control", self.max_message_bytes)
        replies = self._clients.get(peer.identity)
        if replies is None or not replies.put((peer.request_id, frame)):
            self.counters.drops += 1
            return False
        count_sent(self.counters, frame)
        return True

    def close(self, linger_s: float = 0.0) -> None:
        self._clients.clear()  # like a closed ROUTER: later replies go nowhere and clients time out


class MemoryControlClient:
    """In-memory ZmqControlClient attached to a MemoryControlServer (request ids and stale replies included)."""

    def __init__(self, server: MemoryControlServer, *, max_message_bytes: int = CONTROL_MAX_BYTES):
        self.max_message_bytes = max_message_bytes
        self.counters = Counters()
        self._server = server
        self._replies = _Mailbox(16)
        self._identity = server._attach(self._replies)
        self._last_request_id = 0

    def request(self, message: Message, timeout_s: float) -> Message:
        frame = outgoing_frame(message, CONTROL_REQUESTS, "control", self.max_message_bytes)
        deadline = time.monotonic() + timeout_s
        self._last_request_id += 1
        request_id = REQUEST_ID.pack(self._last_request_id)
        if not self._server._inbox.put((Peer(self._identity, request_id), frame)):
            self.counters.timeouts += 1
            raise TransportTimeout("the server's queue is full")
        count_sent(self.counters, frame)
        while (item := self._replies.get(deadline - time.monotonic())) is not None:
            reply_id, reply_frame = item
            if reply_id != request_id:
                self.counters.stale += 1
                continue
            reply = incoming_message(reply_frame, CONTROL_REPLIES, "control", self.max_message_bytes, self.counters)
            if isinstance(reply, ProtocolError):
                raise reply
            return reply
        self.counters.timeouts += 1
        raise TransportTimeout(f"no reply within {timeout_s} s")

    def close(self, linger_s: float = 0.0) -> None:
        self._server._clients.pop(self._identity, None)


class MemoryTransitionReceiver:
    """In-memory ZmqTransitionReceiver; senders attach with `MemoryTransitionSender(receiver)`.

    One bounded queue shared by all senders (ZeroMQ has one per sender): a full queue is a counted drop at the sender.
    Streams are bound as on ZeroMQ (`owners`): a sender's connection is its ack mailbox, its key the `key` it was
    made with (a CURVE User-Id stand-in).
    """

    def __init__(self, *, queue_messages: int = 256, max_message_bytes: int = TRANSITIONS_MAX_BYTES):
        self.max_message_bytes = max_message_bytes
        self.counters = Counters()
        self._queue = _Mailbox(queue_messages)
        self.owners = StreamOwners()

    def recv(self, timeout_s: float) -> Message | ProtocolError | StreamRefused | None:
        item = _get_counted(self._queue, self.counters, timeout_s)
        if item is None:
            return None
        acks, frame = item
        message = incoming_message(frame, TRANSITION_MESSAGES, "transitions", self.max_message_bytes, self.counters)
        return check_owner(self.owners, message, getattr(acks, "key", None), acks)

    def acknowledge(self, ack: TransitionAck) -> bool:
        frame = outgoing_frame(ack, TRANSITION_REPLIES, "transitions", self.max_message_bytes)
        acks = self.owners.connection(ack.stream_id)
        if acks is None or not acks.put(frame):
            self.counters.drops += 1
            return False
        count_sent(self.counters, frame)
        return True

    def close(self, linger_s: float = 0.0) -> None:
        self.owners = StreamOwners()  # like a closed ROUTER: later acks go nowhere


class _AckMailbox(_Mailbox):
    """A fake sender's connection: where its acks go, and the key a CURVE link would report for it."""

    def __init__(self, capacity: int, key: str | None):
        super().__init__(capacity)
        self.key = key


class MemoryTransitionSender:
    """In-memory ZmqTransitionSender: `send` never blocks and returns False (a counted drop) when the queue is full.

    `key`: what a CURVE link would report as this sender's User-Id (None: no CURVE)."""

    def __init__(
        self,
        receiver: MemoryTransitionReceiver,
        *,
        max_message_bytes: int = TRANSITIONS_MAX_BYTES,
        key: str | None = None,
    ):
        self.max_message_bytes = max_message_bytes
        self.counters = Counters()
        self._receiver = receiver
        self._acks = _AckMailbox(16, key)

    def send(self, message: Message) -> bool:
        frame = outgoing_frame(message, TRANSITION_MESSAGES, "transitions", self.max_message_bytes)
        if not self._receiver._queue.put((self._acks, frame)):
            self.counters.drops += 1
            return False
        count_sent(self.counters, frame)
        return True

    def recv(self, timeout_s: float) -> Message | ProtocolError | None:
        return _recv_mailbox(
            self._acks, TRANSITION_REPLIES, "transitions", self.max_message_bytes, self.counters, timeout_s
        )

    def close(self, linger_s: float = 0.0) -> None:
        """Nothing to release or deliver late; present for the interface."""


class MemoryPolicyPublisher:
    """In-memory ZmqPolicyPublisher; subscribers attach with `MemoryPolicySubscriber(publisher)`."""

    def __init__(self, *, max_message_bytes: int = POLICY_MAX_BYTES):
        self.max_message_bytes = max_message_bytes
        self.counters = Counters()
        self._subscribers: list[_Mailbox] = []

    def send(self, message: Message) -> bool:
        frame = outgoing_frame(message, POLICY_MESSAGES, "policy", self.max_message_bytes)
        for latest in self._subscribers:
            latest.put(frame)
        count_sent(self.counters, frame)
        return True

    def close(self, linger_s: float = 0.0) -> None:
        self._subscribers.clear()


class MemoryPolicySubscriber:
    """In-memory ZmqPolicySubscriber: latest-only, like CONFLATE; it sees policies published after it attached."""

    def __init__(self, publisher: MemoryPolicyPublisher, *, max_message_bytes: int = POLICY_MAX_BYTES):
        self.max_message_bytes = max_message_bytes
        self.counters = Counters()
        self._publisher = publisher
        self._latest = _Mailbox(1, conflate=True)
        publisher._subscribers.append(self._latest)

    def wait(self, timeout_s: float) -> bool:
        with self._latest._ready:
            return bool(self._latest._ready.wait_for(lambda: self._latest._items, timeout=max(0.0, timeout_s)))

    def take(self) -> bytes | None:
        return self._latest.get(0.0)

    def decode(self, frame: bytes | memoryview) -> Message | ProtocolError:
        return incoming_message(frame, POLICY_MESSAGES, "policy", self.max_message_bytes, self.counters)

    def recv(self, timeout_s: float) -> Message | ProtocolError | None:
        return _recv_mailbox(self._latest, POLICY_MESSAGES, "policy", self.max_message_bytes, self.counters, timeout_s)

    def close(self, linger_s: float = 0.0) -> None:
        if self._latest in self._publisher._subscribers:
            self._publisher._subscribers.remove(self._latest)
