"""The acknowledgement books of the transitions channel: SequenceLedger (learner) and ResendWindow (controller)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from acalign_robot.runtime import delivery
from acalign_robot.runtime.controller import _TransitionBatcher
from acalign_robot.runtime.delivery import ResendWindow, SequenceLedger
from acalign_robot.runtime.protocol import TransitionAck, decode, encode
from acalign_robot.runtime.transport import MemoryTransitionReceiver, MemoryTransitionSender
from tests.learner_helpers import transition_batch


def ack(received_through: int, highest: int, missing=(), durable_through: int = -1) -> TransitionAck:
    return TransitionAck(
        controller_id="c",
        received_through=received_through,
        durable_through=durable_through,
        highest=highest,
        missing=np.asarray(missing, dtype=np.int64),
    )


def test_ledger_takes_each_seq_once_and_fills_holes():
    ledger = SequenceLedger()
    assert [ledger.take(seq) for seq in (0, 1, 4, 1, 2)] == [True, True, True, False, True]
    assert (ledger.received_through, ledger.highest, ledger.gaps) == (2, 4, 1)
    assert ledger.missing().tolist() == [3]
    assert ledger.take(3) and not ledger.take(3) and not ledger.take(0)
    assert (ledger.received_through, ledger.gaps, ledger.recovered, ledger.duplicates) == (4, 0, 2, 3)
    assert ledger.ahead == set()


def test_ledger_state_round_trips_and_marks_what_a_checkpoint_holds():
    ledger = SequenceLedger()
    for seq in (0, 1, 5, 7):
        ledger.take(seq)
    state = ledger.state(durable=True)
    assert state["durable_through"] == 1 and ledger.durable_through == -1  # durable once written, not before
    restored = SequenceLedger.from_state(state)
    assert restored.ahead == {5, 7} and restored.missing().tolist() == [2, 3, 4, 6]
    ledger.mark_durable()
    message = decode(encode(ledger.ack("c")))
    assert (message.received_through, message.durable_through, message.highest) == (1, 1, 7)
    assert message.missing.tolist() == [2, 3, 4, 6]


def test_ledger_writes_off_the_oldest_hole_when_too_much_waits_above_it(monkeypatch):
    monkeypatch.setattr(delivery, "MAX_AHEAD", 3)
    ledger = SequenceLedger()
    for seq in (0, 2, 3, 4, 5):
        ledger.take(seq)
    assert (ledger.received_through, ledger.lost, ledger.ahead) == (5, 1, set())


def test_an_ack_that_breaks_its_invariants_is_refused_on_decode():
    with pytest.raises(Exception, match="durable_through"):
        decode(encode(ack(received_through=3, highest=1)))


def test_window_resends_what_the_learner_lacks_once_it_has_waited():
    window = ResendWindow(capacity_bytes=10**6, resend_after_s=1.0)
    for seq in range(6):
        window.record(transition_batch("c", seq, 2), now=0.0)
    window.acknowledge(ack(received_through=1, highest=3, missing=[2], durable_through=0), now=0.5)
    assert len(window) == 5 and window.next_due(0.5) is None  # forgot 0; 2, 4, 5 are young: in flight
    window.acknowledge(ack(received_through=1, highest=3, missing=[2], durable_through=1), now=2.0)
    resent = [window.next_due(2.0).seq for _ in range(3)]
    assert resent == [2, 4, 5] and window.next_due(2.0) is None and window.resent == 3
    window.acknowledge(ack(received_through=1, highest=3, missing=[2], durable_through=1), now=2.5)  # stale ack
    assert window.next_due(2.5) is None  # resent half a second ago: not again yet
    window.acknowledge(ack(received_through=5, highest=5, durable_through=5), now=3.0)
    assert len(window) == 0 and window.received_through == 5


def test_window_after_a_learner_restart_resends_everything_past_its_checkpoint():
    window = ResendWindow(capacity_bytes=10**6, resend_after_s=1.0)
    for seq in range(10):
        window.record(transition_batch("c", seq, 2), now=float(seq) / 10)
    window.acknowledge(ack(received_through=6, highest=6, durable_through=3), now=2.0)
    # The learner died and came back from its checkpoint (seq 3); it has already taken 9 from the socket.
    window.acknowledge(ack(received_through=3, highest=9, missing=range(4, 9), durable_through=3), now=4.0)
    assert [window.next_due(4.0).seq for _ in range(5)] == [4, 5, 6, 7, 8] and window.next_due(4.0) is None


def test_window_evicts_the_oldest_beyond_capacity_and_retries_a_full_channel_first():
    batch_bytes = delivery._nbytes(transition_batch("c", 0, 2))
    window = ResendWindow(capacity_bytes=3 * batch_bytes, resend_after_s=0.0)
    for seq in range(5):
        window.record(transition_batch("c", seq, 2), now=0.0)
    assert len(window) == 3 and window.evicted == 2 and window.held_bytes == 3 * batch_bytes
    window.acknowledge(ack(received_through=-1, highest=-1), now=1.0)  # a learner holding nothing
    first = window.next_due(1.0)
    assert first.seq == 2  # 0 and 1 are gone (they remain in the durable log)
    window.retry_later(first)
    assert [window.next_due(1.0).seq for _ in range(3)] == [2, 3, 4] and window.resent == 3
    with pytest.raises(ValueError, match="out of order"):
        window.record(transition_batch("c", 9, 2), now=1.0)


def test_a_batch_dropped_by_a_full_queue_reaches_the_learner_once_it_asks():
    learner = MemoryTransitionReceiver(queue_messages=1)
    batcher = _TransitionBatcher(
        "c",
        size=2,
        obs_dim=11,
        action_dim=3,
        sender=MemoryTransitionSender(learner),
        log=None,
        window=ResendWindow(capacity_bytes=10**6, resend_after_s=1.0),
    )
    step = (np.zeros(11), np.zeros(3), np.zeros(3), 1.0, np.zeros(11), False, False, 1, 0)
    for _ in range(4):  # two batches: the second finds the learner's queue full
        batcher.add(*step)
    assert (batcher.sent_batches, batcher.dropped_batches) == (1, 1)

    ledger = SequenceLedger()
    assert ledger.take(learner.recv(0.0).seq)
    assert learner.acknowledge(ledger.ack("c"))  # holds 0; 1 never arrived
    batcher.service(now=time.perf_counter() + 2.0)  # the ack is read and batch 1, sent 2 s ago, goes again
    resent = learner.recv(0.0)
    assert resent.seq == 1 and ledger.take(resent.seq) and batcher.window.resent == 1
    assert learner.acknowledge(ledger.ack("c"))
    assert batcher.deliver_rest(timeout_s=1.0)  # the learner now holds both
