"""The three channels' interface: what controller, driver and learner code may rely on, whatever carries it.

`wire.transport` implements it over ZeroMQ (the channels' socket semantics are written there, next to their code),
`wire.memory` in memory for unit tests. Both go through the codec and counting steps here, so they cannot drift
apart: every frame leaves through `outgoing_frame` (the channel's types and frame limit) and arrives through
`incoming_message` (`protocol.decode`, bounded by the channel's schemas; never unpickled).
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import time
from typing import Any, Protocol

from acalign_robot.wire.delivery import StreamOwners, StreamRefused
from acalign_robot.wire.protocol import Message, ProtocolError, Stats, TransitionAck, TransitionBatch, decode, encode

__all__ = [
    "CONTROL_MAX_BYTES",
    "POLICY_MAX_BYTES",
    "REQUEST_ID",
    "TRANSITIONS_MAX_BYTES",
    "ControlClient",
    "ControlServer",
    "Counters",
    "CurveClientKeys",
    "CurveServerKeys",
    "Peer",
    "PolicyReceiver",
    "Receiver",
    "Sender",
    "TransitionClient",
    "TransitionServer",
    "TransportError",
    "TransportTimeout",
    "check_owner",
    "count_sent",
    "free_tcp_endpoint",
    "incoming_message",
    "outgoing_frame",
]

# Frame limits per channel (bytes). Control messages are tiny; a transition batch of image observations is not;
# a policy is the largest message.
CONTROL_MAX_BYTES = 1024 * 1024
TRANSITIONS_MAX_BYTES = 16 * 1024 * 1024
POLICY_MAX_BYTES = 64 * 1024 * 1024


# Control envelope: DEALER sends [request id, frame]; ROUTER sees [identity, request id, frame] and echoes the id.
REQUEST_ID = struct.Struct("<Q")


class TransportError(Exception):
    """A channel could not do what was asked."""


class TransportTimeout(TransportError, TimeoutError):
    """No reply, or no connected peer, within the timeout."""


@dataclasses.dataclass
class Counters:
    """What one endpoint has done since it was created; `as_dict` feeds a Stats message."""

    sent: int = 0
    received: int = 0  # valid messages
    bytes_sent: int = 0
    bytes_received: int = 0  # every frame, valid or not
    protocol_errors: int = 0  # frames that did not decode (or travel on the wrong channel), malformed envelopes
    timeouts: int = 0  # requests without a reply; receives that waited (timeout_s > 0) and got nothing
    drops: int = 0  # messages not sent because the queue was full or the peer had gone
    stale: int = 0  # control replies to an earlier, timed-out request, discarded

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CurveServerKeys:
    """The binding side's CURVE key pair (z85 bytes, from `zmq.curve_keypair()`)."""

    secret_key: bytes
    public_key: bytes


@dataclasses.dataclass(frozen=True)
class CurveClientKeys:
    """The connecting side's CURVE key pair and the public key of the server it trusts (z85 bytes)."""

    secret_key: bytes
    public_key: bytes
    server_public_key: bytes


@dataclasses.dataclass(frozen=True)
class Peer:
    """Where a control reply goes: the client's routing identity and the request id to echo."""

    identity: bytes
    request_id: bytes


# --- The interface: what controller, driver and learner code may rely on -------------------------------------------


class ControlClient(Protocol):
    counters: Counters

    def request(self, message: Message, timeout_s: float) -> Message:
        """The reply to `message`, or TransportTimeout; a reply that does not decode raises ProtocolError."""

    def close(self, linger_s: float = 0.0) -> None: ...


class ControlServer(Protocol):
    counters: Counters

    def recv(self, timeout_s: float) -> tuple[Peer, Message | ProtocolError] | None:
        """The next request and who sent it (ProtocolError for a bad frame: answer it), or None on timeout."""

    def send(self, peer: Peer, message: Message) -> bool:
        """Reply to `peer`; False (a counted drop) when that client is gone or not reading."""

    def close(self, linger_s: float = 0.0) -> None: ...


class Sender(Protocol):
    counters: Counters

    def send(self, message: Message) -> bool:
        """Queue `message` without blocking; False (a counted drop) when it could not be queued."""

    def close(self, linger_s: float = 0.0) -> None: ...


class Receiver(Protocol):
    counters: Counters

    def recv(self, timeout_s: float) -> Message | ProtocolError | None:
        """The next message (ProtocolError for a bad frame), or None when none came within timeout_s."""

    def close(self, linger_s: float = 0.0) -> None: ...


class TransitionClient(Sender, Receiver, Protocol):
    """The controller's end of the transitions channel: `send` batches and Stats, `recv` the learner's acks."""


class PolicyReceiver(Receiver, Protocol):
    """The controller's end of the policy channel. Besides `recv`, its three steps apart, so that the hot-swap thread
    can run the two that hold the GIL (in proportion to the frame's size) when the control thread sleeps."""

    def wait(self, timeout_s: float) -> bool:
        """True once a frame is waiting (within timeout_s); nothing is taken, and the GIL is free while it waits."""

    def take(self) -> bytes | memoryview | ProtocolError | None:
        """The waiting frame, not copied and not decoded (microseconds whatever its size); None if none waits."""

    def decode(self, frame: bytes | memoryview) -> Message | ProtocolError:
        """A frame from `take` as a policy-channel message, or the ProtocolError saying why not (counted)."""


class TransitionServer(Receiver, Protocol):
    """The learner's end of the transitions channel: `recv` batches and Stats from every controller.

    `recv` also returns a StreamRefused (wire.delivery) for a batch or Stats that the stream binding refused;
    `owners` holds that binding and its counters."""

    owners: StreamOwners

    def recv(self, timeout_s: float) -> Message | ProtocolError | StreamRefused | None: ...

    def acknowledge(self, ack: TransitionAck) -> bool:
        """Send `ack` to the connection that owns its stream; False (a counted drop) when none does, or that
        controller is gone or not reading."""


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """`tcp://host:port` on a port that was free a moment ago (another process could take it before a bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return f"tcp://{host}:{probe.getsockname()[1]}"


# The codec and counting steps of every endpoint, ZeroMQ (wire.transport) and in-memory (wire.memory).


def outgoing_frame(message: Message, allowed: tuple[type, ...], channel: str, max_bytes: int) -> bytes:
    """The frame for `message`; refuses a type the channel does not carry and a frame its receiver would drop."""
    if not isinstance(message, allowed):
        raise ProtocolError("type", f"{type(message).__name__} does not travel on the {channel} channel")
    frame = encode(message)
    if len(frame) > max_bytes:
        raise ProtocolError("size", f"{type(message).__name__} of {len(frame)} bytes exceeds the {channel} limit")
    return frame


def incoming_message(
    frame: bytes, allowed: tuple[type, ...], channel: str, max_bytes: int, counters: Counters
) -> Message | ProtocolError:
    """A received frame as a message of this channel, or the ProtocolError saying why not (counted)."""
    counters.bytes_received += len(frame)
    try:
        message = decode(frame, max_bytes, accept=allowed)
    except ProtocolError as exc:
        counters.protocol_errors += 1
        return exc
    counters.received += 1
    return message


def count_sent(counters: Counters, frame: bytes) -> None:
    counters.sent += 1
    counters.bytes_sent += len(frame)


def check_owner(
    owners: StreamOwners, message: Message | ProtocolError, key: str | None, connection: Any
) -> Message | ProtocolError | StreamRefused:
    """`message`, or the StreamRefused saying why its sender may not speak for its stream (counted in `owners`)."""
    if isinstance(message, TransitionBatch):
        return owners.admit(message.stream_id, key, connection, time.monotonic()) or message
    if isinstance(message, Stats):
        return owners.check_stats(message.source, key, connection) or message
    return message
