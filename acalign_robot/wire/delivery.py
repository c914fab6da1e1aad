"""Every transition reaches the learner once: resends from the controller, acknowledgements and dedup at the learner.

The transitions channel (transport.py) is bounded and never blocks the controller, so batches can be lost: a full
queue drops one at the sender, and a learner killed with -9 loses what sat in its socket and everything it took
after its last checkpoint. Each controller stream numbers its batches 0, 1, 2, ... (TransitionBatch.seq), and the
two ends keep the following books (torch-free, and pure: the callers own sockets and clocks).

Learner, one `SequenceLedger` per stream (saved in the learner's checkpoint):
    take(seq, resend_from)
                     a batch is new (insert it), fills a hole (insert it, counted as recovered), was taken before
                     (a duplicate: never inserted twice) or lies more than MAX_AHEAD above the contiguous mark
                     (refused and counted in `refused_ahead`: never a reason to write the past off)
    ack()            TransitionAck: `received_through` (every seq up to it taken), `highest`, the `missing` seqs
                     below `highest`, and `durable_through`: what the last checkpoint holds
    mark_durable()   after a checkpoint: what was received is now durable
A ledger writes a hole off (counted in `lost`) only when the stream's own controller says it can no longer resend it:
TransitionBatch.resend_from, the oldest seq its ResendWindow holds (None: a sender that resends nothing). So a fresh
learner that replaces one mid-session asks only for what the controllers still hold, and a forged batch far ahead
costs nothing but a counted refusal. Which connection may speak for a stream is `StreamOwners`' business (below).

Controller, `ResendWindow`: a copy of every batch the learner has not yet checkpointed (at most `capacity_bytes` of
arrays: a camera robot's batches are megabytes; older ones are evicted and counted, they stay in the controller's
durable log). On each ack it forgets what is
durable and queues for resending (in place of what earlier acks queued) every batch listed as missing and every batch
above `highest`, unless that batch was (re)sent less than `resend_after_s` ago: in flight, not lost. The control loop
resends at most one queued batch per tick, so a recovery never costs a tick more than one non-blocking send.

A learner restarted from its checkpoint acknowledges that checkpoint's marks; everything after them is still in the
controllers' windows (they forget only durable batches) and is resent, and the ledger turns any batch that arrives
twice on the way into a counted duplicate. Exactly-once insertion thus holds across learner kills for as long as a
window holds what the learner lost (by default 64 MB: ~500k Hopper transitions).

Stream binding, `StreamOwners` (the learner's receiver, wire.transport, keeps one): the first batch of a stream
binds its id to the connection that carried it (the ROUTER routing identity, which ZmqTransitionSender draws at
random per process and keeps across reconnects) and, on a CURVE link, to the client's public key (ZAP User-Id).
A batch for that stream from any other key, or without CURVE from any other connection, is refused and counted
(`refused_owner`); on CURVE the owner's key may come back on a new connection (acks follow it). A Stats message is
kept only from a connection that owns a stream named after its source (`source` or `source@...`), else it is
counted in `stats_unbound`. At most MAX_STREAMS streams are bound: a new one takes the place of the one idle longest
if that one sent nothing for STREAM_IDLE_S (counted in `evicted`), and is refused otherwise (`refused_full`), so no
number of forged stream ids grows the learner's memory, its status or its checkpoint (docs/security.md says what
the binding does not protect against).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import OrderedDict, deque
from typing import Any

import numpy as np

from acalign_robot.wire.protocol import MAX_ACK_MISSING, TransitionAck, TransitionBatch

__all__ = [
    "MAX_AHEAD",
    "MAX_STREAMS",
    "STREAM_IDLE_S",
    "ResendWindow",
    "SequenceLedger",
    "StreamOwners",
    "StreamRefused",
]

MAX_AHEAD = 4096  # a batch more than this above its stream's contiguous mark is refused (the ledger's `ahead` bound)
MAX_STREAMS = 64  # streams bound at once (receiver) and kept with their ledgers and stats (learner)
STREAM_IDLE_S = 30.0  # a stream that sent no batch for this long is not acknowledged and may be evicted


@dataclasses.dataclass
class SequenceLedger:
    """Which batches of one controller stream the learner took."""

    received_through: int = -1  # every seq <= this was taken
    durable_through: int = -1  # every seq <= this is in the last checkpoint
    highest: int = -1  # the highest seq taken
    ahead: set[int] = dataclasses.field(default_factory=set)  # seqs taken above received_through
    duplicates: int = 0  # batches taken before, not inserted again
    recovered: int = 0  # batches that filled a hole (resent after a drop or a learner restart)
    lost: int = 0  # holes written off: older than the controller's resend_from
    refused_ahead: int = 0  # batches more than MAX_AHEAD above received_through, not taken

    @property
    def gaps(self) -> int:
        """Batches missing now: seqs below `highest` not taken."""
        return self.highest - self.received_through - len(self.ahead)

    def take(self, seq: int, resend_from: int | None = 0) -> bool:
        """Record `seq`; True when its batch is to be inserted, False for a duplicate or a refusal (counted).

        `resend_from`: the oldest seq the stream's controller can still resend (None: it resends nothing, so every
        seq below this one that has not arrived is gone). What is missing below it is written off as lost at once.
        """
        self._write_off_below(seq if resend_from is None else resend_from)
        if seq <= self.received_through or seq in self.ahead:
            self.duplicates += 1
            return False
        if seq > self.received_through + MAX_AHEAD:
            self.refused_ahead += 1
            return False
        if seq < self.highest:
            self.recovered += 1
        self.highest = max(self.highest, seq)
        self.ahead.add(seq)
        self._advance()
        return True

    def _write_off_below(self, oldest: int) -> None:
        """Seqs below `oldest` that were not taken will never come: count them lost and move the mark past them."""
        if oldest <= self.received_through + 1:
            return
        mark = oldest - 1
        taken = {seq for seq in self.ahead if seq <= mark}
        self.lost += mark - self.received_through - len(taken)
        self.ahead -= taken
        self.received_through = mark
        self.highest = max(self.highest, mark)
        self._advance()

    def _advance(self) -> None:
        while self.received_through + 1 in self.ahead:
            self.received_through += 1
            self.ahead.remove(self.received_through)

    def missing(self, limit: int = MAX_ACK_MISSING) -> np.ndarray:
        """The first `limit` seqs below `highest` not taken, ascending (numpy: a stream acked 10x/s costs ~30 us)."""
        if self.highest <= self.received_through + 1:
            return np.empty(0, dtype=np.int64)
        below = np.arange(self.received_through + 1, self.highest, dtype=np.int64)
        if self.ahead:
            below = below[~np.isin(below, np.fromiter(self.ahead, np.int64, len(self.ahead)))]
        return below[:limit]

    def mark_durable(self) -> None:
        self.durable_through = self.received_through

    def ack(self, stream_id: str) -> TransitionAck:
        return TransitionAck(
            stream_id=stream_id,
            received_through=self.received_through,
            durable_through=self.durable_through,
            highest=self.highest,
            missing=self.missing(),
        )

    def state(self, durable: bool = False) -> dict[str, Any]:
        """Plain values for a checkpoint; `durable`: as they will be once that checkpoint is written."""
        state = dataclasses.asdict(self)
        state["ahead"] = sorted(self.ahead)
        if durable:
            state["durable_through"] = self.received_through
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SequenceLedger:
        return cls(**{**state, "ahead": set(state["ahead"])})


class StreamRefused(Exception):
    """A batch or Stats that the stream binding refused (returned by a transitions receiver's recv, never raised).

    `reason`: "owner" (the stream is bound to another connection or key), "full" (MAX_STREAMS active streams are
    bound), "stats_unbound" (a Stats whose connection owns no stream of its source).
    """

    def __init__(self, reason: str, stream: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.stream = reason, stream


@dataclasses.dataclass
class _Owner:
    key: str | None  # the CURVE client's public key (ZAP User-Id, z85); None on a link without CURVE
    connection: Any  # where acks go: a ROUTER routing identity (a fake's ack mailbox)
    seen_s: float  # when its latest batch arrived (monotonic)

    def speaks(self, key: str | None, connection: Any) -> bool:
        """On CURVE the owner is its key, on any connection; without CURVE, its connection."""
        return key == self.key and (key is not None or connection == self.connection)


class StreamOwners:
    """Which connection (and, on CURVE, which client key) speaks for each stream; at most `capacity` streams.

    Pure bookkeeping: the receiver passes each message's key, connection and clock. See the module docstring.
    """

    def __init__(self, capacity: int = MAX_STREAMS, idle_s: float = STREAM_IDLE_S):
        self.capacity, self.idle_s = capacity, idle_s
        self._owners: OrderedDict[str, _Owner] = OrderedDict()  # least recently seen first
        self.refused_owner = 0  # batches for a stream bound to another connection or key
        self.refused_full = 0  # batches opening a stream while `capacity` active streams are bound
        self.stats_unbound = 0  # Stats from a connection that owns no stream of that source
        self.evicted = 0  # idle streams unbound to make room for a new one
        self.rebound = 0  # an owner's key that came back on another connection (CURVE reconnect)

    def __len__(self) -> int:
        return len(self._owners)

    def admit(self, stream: str, key: str | None, connection: Any, now: float) -> StreamRefused | None:
        """Bind or check `stream` for a batch from (`key`, `connection`); None when admitted, else the refusal."""
        owner = self._owners.get(stream)
        if owner is None:
            if len(self._owners) >= self.capacity:
                oldest_id, oldest = next(iter(self._owners.items()))
                if now - oldest.seen_s < self.idle_s:
                    self.refused_full += 1
                    return StreamRefused(
                        "full", stream, f"{self.capacity} active streams are bound; stream {stream!r} refused"
                    )
                del self._owners[oldest_id]
                self.evicted += 1
            self._owners[stream] = _Owner(key, connection, now)
            return None
        if not owner.speaks(key, connection):
            self.refused_owner += 1
            whom = "client key" if owner.key != key else "connection"
            return StreamRefused("owner", stream, f"stream {stream!r} is bound to another {whom}")
        if owner.connection != connection:  # the owner's key on a new connection: acks follow it
            owner.connection = connection
            self.rebound += 1
        owner.seen_s = now
        self._owners.move_to_end(stream)
        return None

    def check_stats(self, source: str, key: str | None, connection: Any) -> StreamRefused | None:
        """None when (`key`, `connection`) owns a stream named `source` or `source@...`, else the refusal (counted)."""
        prefix = source + "@"
        for stream, owner in self._owners.items():
            if (stream == source or stream.startswith(prefix)) and owner.speaks(key, connection):
                return None
        self.stats_unbound += 1
        return StreamRefused("stats_unbound", source, f"Stats of {source!r} from a connection owning no stream of it")

    def connection(self, stream: str) -> Any | None:
        """Where acks for `stream` go (None: not bound)."""
        owner = self._owners.get(stream)
        return None if owner is None else owner.connection

    def counts(self) -> dict[str, int]:
        return {
            "bound_streams": len(self._owners),
            "refused_owner": self.refused_owner,
            "refused_full": self.refused_full,
            "stats_unbound": self.stats_unbound,
            "unbound_idle": self.evicted,
            "rebound": self.rebound,
        }


class ResendWindow:
    """The controller's copies of the batches its learner has not checkpointed, and which of them to send again.

    Batches are recorded in seq order and forgotten from the oldest, so the window always holds a contiguous run of
    seqs: a deque indexed by `seq - first_seq`. At most MAX_DUE batches wait to be resent, so handling an ack costs
    the control thread a bounded amount of work even when a whole window is owed.
    """

    MAX_DUE = 256

    def __init__(self, capacity_bytes: int, resend_after_s: float):
        self.capacity_bytes = capacity_bytes
        self.held_bytes = 0
        self.resend_after_s = resend_after_s
        self._batches: deque[TransitionBatch] = deque()
        self._last_sent: deque[float] = deque()
        self._first_seq = 0
        self._due: deque[int] = deque()
        self._queued: set[int] = set()
        self.received_through = -1  # from the latest ack
        self.acks = 0
        self.resent = 0
        self.evicted = 0  # forgotten before the learner held them durably (still in the durable log)

    def __len__(self) -> int:
        return len(self._batches)

    def oldest(self, next_seq: int) -> int:
        """The oldest seq this window can still resend (TransitionBatch.resend_from); `next_seq` when it holds none."""
        return self._first_seq if self._batches else next_seq

    def _forget_oldest(self) -> None:
        self.held_bytes -= _nbytes(self._batches.popleft())
        self._last_sent.popleft()
        self._first_seq += 1

    def record(self, batch: TransitionBatch, now: float) -> None:
        """Keep `batch`, which was just sent (or dropped by a full queue: then it is resent when the learner asks)."""
        if not self._batches:
            self._first_seq = batch.seq
        elif batch.seq != self._first_seq + len(self._batches):
            raise ValueError(f"batch {batch.seq} out of order: the window expects {self._first_seq + len(self)}")
        self._batches.append(batch)
        self._last_sent.append(now)
        self.held_bytes += _nbytes(batch)
        while self.held_bytes > self.capacity_bytes and len(self._batches) > 1:
            self._forget_oldest()
            self.evicted += 1

    def acknowledge(self, ack: TransitionAck, now: float) -> None:
        """Forget what the learner checkpointed; queue what it lacks and has not been sent recently.

        The latest ack is the learner's current view, so it replaces what earlier acks queued.
        """
        self.acks += 1
        self._due.clear()
        self._queued.clear()
        self.received_through = ack.received_through
        while self._batches and self._first_seq <= ack.durable_through:
            self._forget_oldest()
        end = self._first_seq + len(self._batches)
        above = range(max(ack.highest + 1, self._first_seq), end)
        for seq in itertools.chain((int(seq) for seq in ack.missing), above):
            if len(self._due) >= self.MAX_DUE:
                break
            index = seq - self._first_seq
            in_window = 0 <= index < len(self._batches)
            if in_window and seq not in self._queued and now - self._last_sent[index] >= self.resend_after_s:
                self._due.append(seq)
                self._queued.add(seq)

    def next_due(self, now: float) -> TransitionBatch | None:
        """The next batch to resend (marked as sent now), or None."""
        while self._due:
            seq = self._due.popleft()
            self._queued.discard(seq)
            index = seq - self._first_seq
            if 0 <= index < len(self._batches):
                self._last_sent[index] = now
                self.resent += 1
                return self._batches[index]
        return None

    def retry_later(self, batch: TransitionBatch) -> None:
        """`batch` from next_due could not be queued (the channel is full): try it first next time."""
        self._due.appendleft(batch.seq)
        self._queued.add(batch.seq)
        self.resent -= 1


def _nbytes(batch: TransitionBatch) -> int:
    arrays = (batch.obs, batch.next_obs, batch.action, batch.reward, batch.terminated, batch.truncated)
    return sum(array.nbytes for array in (*arrays, batch.policy_version, *batch.extras.values()))
