"""The runtime's three channels over ZeroMQ: the implementation of `wire.channels` (`wire.memory` fakes it).

Channels (the binding side owns the endpoint named in the launch file):

    control      driver ROUTER (bind)  <->  DEALER (connect): controller; supervisor or CLI for EStop / Clear
    transitions  learner ROUTER (bind) <->  DEALER (connect): every controller; batches up, acknowledgements back
    policy       learner PUB (bind)    -->  SUB (connect, conflated): every controller

Each class below states its channel's semantics next to its code. In short: control is request/reply with a
request id and a timeout on every request; transitions are bounded and never block the sender, which counts what it
drops, and the learner acknowledges what it holds on the same connection (the controller resends the rest);
policies are latest-only. Every receive has a timeout (poll-based; a zero timeout is a non-blocking check),
and every frame is decoded by `protocol.decode`, never unpickled.

E-stop rides the control channel: any process connects a control client to the driver and sends EStop (or Clear);
the driver, the process nearest the actuators, latches its safe action, acknowledges with a Heartbeat, and reports
`estopped` in every StepReply, so the controller learns of it on its next tick and latches SAFE too.

Socket options every socket gets (`_COMMON_OPTIONS`, plus MAXMSGSIZE = the channel's frame limit, so an oversized
frame makes ZeroMQ drop that connection before any byte reaches Python): LINGER 0, IPV6 off, ZMTP heartbeats.
Each channel end's socket type, bind or connect, and its own options (its high-water marks among them) are one row
of a table (`_SocketSetup`: `_CONTROL_CLIENT` ... `_POLICY_SUBSCRIBER`). Counters (`Counters`) on every endpoint
report messages and bytes sent and received, protocol errors, timeouts, drops and stale replies.

CURVE: every constructor takes `curve=` keys (`CurveServerKeys` on the binding side, `CurveClientKeys` on the
connecting side), which encrypt the link and authenticate the server to its clients. Clients are allow-listed by a
ZAP authenticator on the binding side's context, which `wire.security` provides: `secure_context(security)`
gives a context with the authenticator running (only public keys in `authorized_clients_dir` get in) and, through
`server_keys(endpoint)`, the server keys after the bind policy (no non-loopback bind without CURVE unless
`allow_insecure`); `client_keys(security)` gives a client's keys. These constructors enforce neither by themselves:
a CURVE server socket on a context without the authenticator accepts any client that knows its public key.

An endpoint belongs to one thread (ZeroMQ sockets are not thread-safe).
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from typing import Literal

import zmq

from acalign_robot.errors import InputError
from acalign_robot.wire.channels import (
    CONTROL_MAX_BYTES,
    POLICY_MAX_BYTES,
    REQUEST_ID,
    TRANSITIONS_MAX_BYTES,
    Counters,
    CurveClientKeys,
    CurveServerKeys,
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
    "ZmqControlClient",
    "ZmqControlServer",
    "ZmqPolicyPublisher",
    "ZmqPolicySubscriber",
    "ZmqTransitionReceiver",
    "ZmqTransitionSender",
]

_COMMON_OPTIONS: dict[int, int] = {
    zmq.LINGER: 0,  # close() returns at once and discards what is queued: a stopping process never hangs on a peer
    zmq.IPV6: 0,  # IPv4 endpoints (loopback by default)
    zmq.HEARTBEAT_IVL: 1000,  # ms; ZMTP pings notice a peer that vanished without closing TCP (cable, power) ...
    zmq.HEARTBEAT_TIMEOUT: 3000,  # ... within 3 s, and the socket reconnects
}

# The binding ROUTERs that any local process can reach (driver, learner): ZMTP heartbeats off, TCP keepalive to
# notice a vanished peer instead. libzmq 4.3.5 aborts the whole process (assertion `!_io_error`) when a heartbeat
# fires on a connection whose receive queue was full as its peer disconnected: a client that floods a driver busy
# in a slow step, or a learner busy training, and then disconnects, would otherwise kill it.
_NO_HEARTBEAT_KEEPALIVE: dict[int, int] = {
    zmq.HEARTBEAT_IVL: 0,
    zmq.TCP_KEEPALIVE: 1,
    zmq.TCP_KEEPALIVE_IDLE: 10,  # s of silence before the first probe
    zmq.TCP_KEEPALIVE_INTVL: 5,
    zmq.TCP_KEEPALIVE_CNT: 3,
}


@dataclasses.dataclass(frozen=True)
class _SocketSetup:
    """How one channel end opens its socket; `_ZmqEndpoint` adds `_COMMON_OPTIONS` and the frame limit."""

    socket_type: int
    attach: Literal["bind", "connect"]
    options: dict[int, int | bytes]


# Every channel end's socket, in one table (the module docstring draws the channels). The class that opens each one
# says why each option is there; options that follow a constructor argument (a queue length, a routing id) are added
# by that constructor.
_CONTROL_CLIENT = _SocketSetup(zmq.DEALER, "connect", {zmq.IMMEDIATE: 1, zmq.SNDHWM: 4, zmq.RCVHWM: 16})
_CONTROL_SERVER = _SocketSetup(
    zmq.ROUTER, "bind", {zmq.ROUTER_MANDATORY: 1, zmq.SNDHWM: 64, zmq.RCVHWM: 64, **_NO_HEARTBEAT_KEEPALIVE}
)
_TRANSITION_SENDER = _SocketSetup(zmq.DEALER, "connect", {zmq.RCVHWM: 0})  # + SNDHWM (queue_messages), ROUTING_ID
_TRANSITION_RECEIVER = _SocketSetup(  # + RCVHWM (queue_messages)
    zmq.ROUTER, "bind", {zmq.SNDHWM: 16, zmq.ROUTER_MANDATORY: 1, zmq.ROUTER_HANDOVER: 1, **_NO_HEARTBEAT_KEEPALIVE}
)
_POLICY_PUBLISHER = _SocketSetup(zmq.PUB, "bind", {zmq.CONFLATE: 1})
_POLICY_SUBSCRIBER = _SocketSetup(zmq.SUB, "connect", {zmq.CONFLATE: 1, zmq.SUBSCRIBE: b""})

# --- ZeroMQ --------------------------------------------------------------------------------------------------------


class _ZmqEndpoint:
    """One channel end's socket, opened as its `_SocketSetup` says; subclasses add the channel's semantics.

    `options`: what the constructor adds to the setup's options from its own arguments (a queue length, a routing id).
    """

    def __init__(
        self,
        setup: _SocketSetup,
        endpoint: str,
        context: zmq.Context | None,
        curve: CurveServerKeys | CurveClientKeys | None,
        max_message_bytes: int,
        *,
        options: dict[int, int | bytes] | None = None,
        spin: bool = False,
    ):
        self.endpoint = endpoint
        self.spin = spin
        self.max_message_bytes = max_message_bytes
        self.counters = Counters()
        every_option = {**_COMMON_OPTIONS, zmq.MAXMSGSIZE: max_message_bytes, **setup.options, **(options or {})}
        self._socket = (context if context is not None else zmq.Context.instance()).socket(setup.socket_type)
        try:
            for option, value in every_option.items():
                self._socket.setsockopt(option, value)
            _apply_curve(self._socket, curve)
            if setup.attach == "bind":
                self._socket.bind(endpoint)
            else:
                self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            raise InputError(f"cannot {setup.attach} {endpoint!r}: {exc}") from exc

    def close(self, linger_s: float = 0.0) -> None:
        """Close the socket; `linger_s` > 0 lets queued messages go out for that long (a sender's last batch)."""
        self._socket.close(linger=int(linger_s * 1000))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _wait(self, events: int, deadline: float) -> bool:
        """Poll until `events` are possible or the monotonic deadline passes (a passed deadline polls once).

        `spin`: poll without blocking in a loop, so the thread never sleeps and its core stays hot (no wake-up on the
        reply's path); it costs the whole core while waiting.
        libzmq's poll directly: pyzmq's `Socket.poll` builds a Poller and a dict per call, 15-19 us against 4 us
        measured here, paid on every control tick by the controller (its reply) and the driver (its request).
        """
        items = [(self._socket, events)]
        if self.spin:
            while not zmq.zmq_poll(items, 0):
                if time.monotonic() >= deadline:
                    return False
            return True
        timeout_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000.0))
        return bool(zmq.zmq_poll(items, timeout_ms))

    def _route(self, frames: tuple[bytes, ...]) -> bool:
        """ROUTER send without blocking: [identity, ..., frame]; a peer that is gone (ROUTER_MANDATORY) or not reading
        is a counted drop. The frame is the last part."""
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.counters.drops += 1
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.counters.drops += 1
            return False
        count_sent(self.counters, frames[-1])
        return True

    def _recv_single(self, allowed: tuple[type, ...], channel: str, timeout_s: float) -> Message | ProtocolError | None:
        if not self._wait(zmq.POLLIN, time.monotonic() + timeout_s):
            if timeout_s > 0:
                self.counters.timeouts += 1
            return None
        frames = self._socket.recv_multipart(zmq.NOBLOCK)
        if len(frames) != 1:
            self.counters.protocol_errors += 1
            return ProtocolError("malformed", f"a {channel} message is one frame, got {len(frames)}")
        return incoming_message(frames[0], allowed, channel, self.max_message_bytes, self.counters)


def _apply_curve(sock: zmq.Socket, keys: CurveServerKeys | CurveClientKeys | None) -> None:
    """CURVE must be configured before bind/connect; see the module docstring for what it does and does not check."""
    if isinstance(keys, CurveServerKeys):
        sock.curve_secretkey = keys.secret_key
        sock.curve_publickey = keys.public_key
        sock.curve_server = True
    elif isinstance(keys, CurveClientKeys):
        sock.curve_secretkey = keys.secret_key
        sock.curve_publickey = keys.public_key
        sock.curve_serverkey = keys.server_public_key


class ZmqControlClient(_ZmqEndpoint):
    """Control channel, client side (controller; supervisor or CLI for EStop): DEALER, connects to the driver.

    DEALER rather than REQ: a REQ socket that lost one reply refuses to send again, so a dropped reply or a restarted
    driver would wedge the control loop. A DEALER can always send; each request carries a fresh 8-byte request id
    that the server echoes, and `request` discards any reply with another id (a late answer to a request that
    already timed out), so a reply always belongs to the request it returns from.

    One request in flight. `request` waits at most timeout_s in total, first for a connected driver, then for the
    reply, and raises TransportTimeout; it never retries (the caller decides: a controller goes SAFE).
    IMMEDIATE: requests queue only on a completed connection, so steps are not buffered while the driver is down and
    replayed when it returns. A request that timed out after it left may still reach the driver late: Step.tick
    lets the driver refuse it. HWMs are small for the same reason.
    A request that timed out stays in flight until its late reply comes or its connection drops (a socket monitor
    reports the disconnect); until then `request` waits for that instead of sending another, and times out. So a
    frozen driver (SIGSTOP, a debugger, a stalled SDK call) finds one request waiting when it resumes, not one per
    tick of its freeze: hundreds of those overran its receive queue, and libzmq 4.3.5 aborts a process whose
    stopped input meets the peer's disconnect (assertion `!_io_error`, stream_engine_base.cpp).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context | None = None,
        max_message_bytes: int = CONTROL_MAX_BYTES,
        curve: CurveClientKeys | None = None,
        spin: bool = False,
    ):
        super().__init__(_CONTROL_CLIENT, endpoint, context, curve, max_message_bytes, spin=spin)
        self._last_request_id = 0
        self._unanswered: bytes | None = None  # the id of a request that timed out and is still in flight
        self._disconnects = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def close(self, linger_s: float = 0.0) -> None:
        self._socket.disable_monitor()
        self._disconnects.close(linger=0)
        super().close(linger_s)

    def request(self, message: Message, timeout_s: float) -> Message:
        frame = outgoing_frame(message, CONTROL_REQUESTS, "control", self.max_message_bytes)
        deadline = time.monotonic() + timeout_s
        if self._unanswered is not None and not self._settle_unanswered(deadline):
            self.counters.timeouts += 1
            raise TransportTimeout(f"{self.endpoint} has not answered an earlier request (nothing sent)")
        self._last_request_id += 1
        request_id = REQUEST_ID.pack(self._last_request_id)
        # With IMMEDIATE a send is refused (Again) until the driver is connected: only then is it worth waiting
        # for the socket to become writable. Sending first saves a poll on every tick of a connected session.
        queued = self._send_now((request_id, frame)) or (
            self._wait(zmq.POLLOUT, deadline) and self._send_now((request_id, frame))
        )
        if not queued:
            self.counters.timeouts += 1
            raise TransportTimeout(f"no driver connected at {self.endpoint} within {timeout_s} s")
        count_sent(self.counters, frame)
        self._unanswered = request_id
        while self._wait(zmq.POLLIN, deadline):
            reply = self._take_reply()
            if reply is None:
                continue
            if reply[0] != request_id:
                self.counters.stale += 1
                continue
            self._unanswered = None
            decoded = incoming_message(reply[1], CONTROL_REPLIES, "control", self.max_message_bytes, self.counters)
            if isinstance(decoded, ProtocolError):
                raise decoded
            return decoded
        self.counters.timeouts += 1
        raise TransportTimeout(f"no reply from {self.endpoint} within {timeout_s} s")

    def _take_reply(self) -> tuple[bytes, bytes] | None:
        """The next reply as (request id, frame); None for one without that envelope (counted)."""
        frames = self._socket.recv_multipart(zmq.NOBLOCK)
        if len(frames) != 2 or len(frames[0]) != REQUEST_ID.size:
            self.counters.protocol_errors += 1
            return None
        return frames[0], frames[1]

    def _send_now(self, frames: tuple[bytes, bytes]) -> bool:
        """Queue a request without blocking; False when no driver connection can take it (or it just dropped)."""
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _settle_unanswered(self, deadline: float) -> bool:
        """Wait until the request in flight is answered (its late reply is discarded and counted stale) or its
        connection drops; False if neither happened by the monotonic deadline."""
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._disconnects, zmq.POLLIN)
        while True:
            if self._disconnects.poll(0):
                while self._disconnects.poll(0):  # an event is two frames; every queued one says the same
                    self._disconnects.recv_multipart()
                self._unanswered = None
                return True
            timeout_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000.0))
            ready = dict(poller.poll(timeout_ms))
            if not ready:
                return False
            reply = self._take_reply() if self._socket in ready else None
            if reply is not None:
                self.counters.stale += 1
                if reply[0] == self._unanswered:
                    self._unanswered = None
                    return True


class ZmqControlServer(_ZmqEndpoint):
    """Control channel, server side (driver): ROUTER, binds; any number of clients connect.

    `recv` returns each request with its Peer (identity + request id); answer every request exactly once with
    `send(peer, reply)`, an Error included (`protocol.error_message(exc)` for a frame that did not decode).
    A frame without the [request id, frame] envelope cannot be answered: it is counted and skipped.
    No ZMTP heartbeats (`_NO_HEARTBEAT_KEEPALIVE`: a hostile flood-and-disconnect would abort the driver).
    ROUTER_MANDATORY: a reply to a client that has gone raises inside ZeroMQ instead of vanishing, so it is counted
    as a drop; so is a reply to a client whose queue is full (it stopped reading).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context | None = None,
        max_message_bytes: int = CONTROL_MAX_BYTES,
        curve: CurveServerKeys | None = None,
        spin: bool = False,
    ):
        super().__init__(_CONTROL_SERVER, endpoint, context, curve, max_message_bytes, spin=spin)

    def recv(self, timeout_s: float) -> tuple[Peer, Message | ProtocolError] | None:
        deadline = time.monotonic() + timeout_s
        while self._wait(zmq.POLLIN, deadline):
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
            if len(frames) != 3 or len(frames[1]) != REQUEST_ID.size:
                self.counters.protocol_errors += 1
                continue
            peer = Peer(identity=frames[0], request_id=frames[1])
            return peer, incoming_message(frames[2], CONTROL_REQUESTS, "control", self.max_message_bytes, self.counters)
        if timeout_s > 0:
            self.counters.timeouts += 1
        return None

    def send(self, peer: Peer, message: Message) -> bool:
        frame = outgoing_frame(message, CONTROL_REPLIES, "control", self.max_message_bytes)
        return self._route((peer.identity, peer.request_id, frame))


class ZmqTransitionSender(_ZmqEndpoint):
    """Transitions channel, controller side: DEALER, connects to the learner.

    Bounded and never blocking: up to `queue_messages` batches wait in ZeroMQ (plus the OS socket buffers); when the
    queue is full (learner slow, gone, or not started yet) `send` returns False and counts a drop instead of
    stalling the control loop. IMMEDIATE stays off, so batches queue (bounded) while the learner starts, and the
    socket reconnects by itself to a restarted learner. `recv` takes the learner's TransitionAcks, from which the
    controller (wire.delivery) resends what a drop or a learner restart lost; the durable log keeps every
    transition in any case. Several controllers may connect to one learner.

    ROUTING_ID: 16 random bytes per sender (`routing_id`), the same on every reconnect. The learner binds each stream
    to the connection that opened it (wire.delivery.StreamOwners), so a reconnect after a network blip is still
    its owner, and a peer that knows only the stream id is not.
    RCVHWM 0 (acks are not capped here): libzmq 4.3.5 aborts the whole process (assertion `!_io_error`,
    stream_engine_base.cpp) when a heartbeat fires on a connection whose receive queue was full as its peer went
    away. The learner bounds the acks instead: one per stream every ACK_EVERY_S, only for STREAM_IDLE_S after the
    stream's latest batch (~100 bytes each), and the controller reads them every ACK_POLL_S.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context | None = None,
        queue_messages: int = 64,
        max_message_bytes: int = TRANSITIONS_MAX_BYTES,
        curve: CurveClientKeys | None = None,
        routing_id: bytes | None = None,
    ):
        # A routing id starting with a zero byte is reserved for the ones ZeroMQ generates.
        self.routing_id = routing_id if routing_id is not None else b"t" + secrets.token_bytes(15)
        options = {zmq.SNDHWM: queue_messages, zmq.ROUTING_ID: self.routing_id}
        super().__init__(_TRANSITION_SENDER, endpoint, context, curve, max_message_bytes, options=options)

    def send(self, message: Message) -> bool:
        frame = outgoing_frame(message, TRANSITION_MESSAGES, "transitions", self.max_message_bytes)
        try:
            self._socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.counters.drops += 1
            return False
        count_sent(self.counters, frame)
        return True

    def recv(self, timeout_s: float) -> Message | ProtocolError | None:
        return self._recv_single(TRANSITION_REPLIES, "transitions", timeout_s)


class ZmqTransitionReceiver(_ZmqEndpoint):
    """Transitions channel, learner side: ROUTER, binds; batches from all controllers, fairly queued.

    `queue_messages` bounds what waits on this side; beyond it the senders' queues fill and they count drops.
    Each stream is bound to the connection that opened it (its routing identity, stable across the sender's
    reconnects) and, on CURVE, to the client's public key (the ZAP User-Id of its frames): `owners`, a bounded
    wire.delivery.StreamOwners. A batch or Stats the binding refuses comes out of `recv` as a StreamRefused
    (counted there), and `acknowledge` reaches the stream's owner. A restarted controller opens a new stream (its id
    holds the PID). ROUTER_HANDOVER: a sender that reconnects (same routing id) while this side still holds its old
    connection (a network blip, until heartbeats notice) takes that identity over at once; without it libzmq 4.3
    refuses the new connection for good. ROUTER_MANDATORY makes an ack to a vanished connection a counted drop
    instead of a silent one.
    No ZMTP heartbeats on this side (TCP keepalive finds dead peers instead, within ~25 s): libzmq 4.3.5 aborts the
    process when a heartbeat fires on a connection whose queue was full as its peer went away, so a peer that
    floods while the learner trains or checkpoints, then disconnects, would kill the learner. The controllers'
    heartbeats still reach this side and are answered.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context | None = None,
        queue_messages: int = 256,
        max_message_bytes: int = TRANSITIONS_MAX_BYTES,
        curve: CurveServerKeys | None = None,
    ):
        options = {zmq.RCVHWM: queue_messages}
        super().__init__(_TRANSITION_RECEIVER, endpoint, context, curve, max_message_bytes, options=options)
        self.owners = StreamOwners()

    def recv(self, timeout_s: float) -> Message | ProtocolError | StreamRefused | None:
        deadline = time.monotonic() + timeout_s
        while self._wait(zmq.POLLIN, deadline):
            frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            if len(frames) != 2:
                self.counters.protocol_errors += 1
                return ProtocolError("malformed", f"a transitions message is one frame, got {len(frames) - 1}")
            message = incoming_message(
                frames[1].bytes, TRANSITION_MESSAGES, "transitions", self.max_message_bytes, self.counters
            )
            return check_owner(self.owners, message, _curve_user_id(frames[1]), frames[0].bytes)
        if timeout_s > 0:
            self.counters.timeouts += 1
        return None

    def acknowledge(self, ack: TransitionAck) -> bool:
        frame = outgoing_frame(ack, TRANSITION_REPLIES, "transitions", self.max_message_bytes)
        identity = self.owners.connection(ack.stream_id)
        if identity is None:
            self.counters.drops += 1
            return False
        return self._route((identity, frame))


def _curve_user_id(frame: zmq.Frame) -> str | None:
    """The ZAP User-Id of a received frame: wire.security's authenticator sets the client's z85 public key on a
    CURVE link; None without ZAP (no CURVE), where libzmq has no such property."""
    try:
        user_id = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return user_id or None


class ZmqPolicyPublisher(_ZmqEndpoint):
    """Policy channel, learner side: PUB, binds; every connected controller receives each policy.

    Latest-only: CONFLATE here and on each SUB keeps at most one policy per queue, the newest, so a controller never
    receives an older policy after a newer one was published. CONFLATE cannot carry multipart messages, which is
    why a policy is a single frame. PUB never blocks and never reports a drop (ZeroMQ drops silently for a slow
    subscriber), which latest-only makes harmless: `send` always returns True. A controller that connects after a
    publish (PUB/SUB's slow joiner) receives the next one, so the learner re-publishes its latest policy now and then.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context | None = None,
        max_message_bytes: int = POLICY_MAX_BYTES,
        curve: CurveServerKeys | None = None,
    ):
        super().__init__(_POLICY_PUBLISHER, endpoint, context, curve, max_message_bytes)

    def send(self, message: Message) -> bool:
        frame = outgoing_frame(message, POLICY_MESSAGES, "policy", self.max_message_bytes)
        self._socket.send(frame, zmq.NOBLOCK)
        count_sent(self.counters, frame)
        return True


class ZmqPolicySubscriber(_ZmqEndpoint):
    """Policy channel, controller side: SUB to everything, connects, CONFLATE (at most the newest policy waits).

    The controller's hot-swap thread `wait`s for a frame (a poll: ZeroMQ's I/O thread assembles it, and the GIL is
    free), `take`s it (a view, no copy), then copies and `decode`s it each in an idle window of the control loop
    with room for its size, because both hold the GIL for as long as the frame is big (16 MiB: ~5 ms each;
    controller/hot_swap.py: PolicySwapper). Nothing on this socket ever waits on the learner.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context | None = None,
        max_message_bytes: int = POLICY_MAX_BYTES,
        curve: CurveClientKeys | None = None,
    ):
        super().__init__(_POLICY_SUBSCRIBER, endpoint, context, curve, max_message_bytes)

    def wait(self, timeout_s: float) -> bool:
        return self._wait(zmq.POLLIN, time.monotonic() + timeout_s)

    def take(self) -> memoryview | ProtocolError | None:
        """A view on ZeroMQ's buffer of the waiting frame (no copy)."""
        try:
            frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        if len(frames) != 1:
            self.counters.protocol_errors += 1
            return ProtocolError("malformed", f"a policy message is one frame, got {len(frames)}")
        return frames[0].buffer

    def decode(self, frame: bytes | memoryview) -> Message | ProtocolError:
        return incoming_message(frame, POLICY_MESSAGES, "policy", self.max_message_bytes, self.counters)

    def recv(self, timeout_s: float) -> Message | ProtocolError | None:
        return self._recv_single(POLICY_MESSAGES, "policy", timeout_s)
