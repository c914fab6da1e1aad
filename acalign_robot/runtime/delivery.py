"""Every transition reaches the learner once: resends from the controller, acknowledgements and dedup at the learner.

The transitions channel (transport.py) is bounded and never blocks the controller, so batches can be lost: a full
queue drops one at the sender, and a learner killed with -9 loses what sat in its socket and everything it took
after its last checkpoint. Each controller stream numbers its batches 0, 1, 2, ... (TransitionBatch.seq), and the
two ends keep the following books (torch-free, and pure: the callers own sockets and clocks).

Learner, one `SequenceLedger` per stream (saved in the learner's checkpoint):
    take(seq)        a batch is new (insert it), fills a hole (insert it, counted as recovered) or was taken before
                     (a duplicate: never inserted twice)
    ack()            TransitionAck: `received_through` (every seq up to it taken), `highest`, the `missing` seqs
                     below `highest`, and `durable_through`: what the last checkpoint holds
    mark_durable()   after a checkpoint: what was received is now durable
A ledger keeps at most MAX_AHEAD seqs taken above a hole; past that the oldest holes are written off as `lost`
(their batches were forgotten by the controller too, or it would have resent them by then).

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
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from typing import Any

import numpy as np

from acalign_robot.runtime.protocol import MAX_ACK_MISSING, TransitionAck, TransitionBatch

__all__ = ["MAX_AHEAD", "ResendWindow", "SequenceLedger"]

MAX_AHEAD = 4096  # seqs a ledger keeps above its oldest hole before it writes the hole off


@dataclasses.dataclass
class SequenceLedger:
    """Which batches of one controller stream the learner took."""

    received_through: int = -1  # every seq <= this was taken
    durable_through: int = -1  # every seq <= this is in the last checkpoint
    highest: int = -1  # the highest seq taken
    ahead: set[int] = dataclasses.field(default_factory=set)  # seqs taken above received_through
    duplicates: int = 0  # batches taken before, not inserted again
    recovered: int = 0  # batches that filled a hole (resent after a drop or a learner restart)
    lost: int = 0  # holes written off (MAX_AHEAD)

    @property
    def gaps(self) -> int:
        """Batches missing now: seqs below `highest` not taken."""
        return self.highest - self.received_through - len(self.ahead)

    def take(self, seq: int) -> bool:
        """Record `seq`; True when its batch is to be inserted, False for a duplicate (counted)."""
        if seq <= self.received_through or seq in self.ahead:
            self.duplicates += 1
            return False
        if seq < self.highest:
            self.recovered += 1
        self.highest = max(self.highest, seq)
        self.ahead.add(seq)
        self._advance()
        while len(self.ahead) > MAX_AHEAD:
            oldest = min(self.ahead)
            self.lost += oldest - self.received_through - 1
            self.received_through = oldest - 1
            self._advance()
        return True

    def _advance(self) -> None:
        while self.received_through + 1 in self.ahead:
            self.received_through += 1
            self.ahead.remove(self.received_through)

    def missing(self, limit: int = MAX_ACK_MISSING) -> np.ndarray:
        """The first `limit` seqs below `highest` not taken, ascending."""
        found: list[int] = []
        seq = self.received_through + 1
        while seq < self.highest and len(found) < limit:
            if seq not in self.ahead:
                found.append(seq)
            seq += 1
        return np.asarray(found, dtype=np.int64)

    def mark_durable(self) -> None:
        self.durable_through = self.received_through

    def ack(self, controller_id: str) -> TransitionAck:
        return TransitionAck(
            controller_id=controller_id,
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
