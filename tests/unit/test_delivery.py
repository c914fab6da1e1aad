"""The acknowledgement books of the transitions channel: SequenceLedger (learner) and ResendWindow (controller)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from acalign_robot.controller.streaming import TransitionBatcher
from acalign_robot.wire import delivery
from acalign_robot.wire.delivery import ResendWindow, SequenceLedger, StreamOwners
from acalign_robot.wire.memory import MemoryTransitionReceiver, MemoryTransitionSender
from acalign_robot.wire.protocol import TransitionAck, decode, encode
from tests.learner_helpers import transition_batch


def ack(received_through: int, highest: int, missing=(), durable_through: int = -1) -> TransitionAck:
    return TransitionAck(
        stream_id="c",
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


def test_a_batch_far_ahead_is_refused_and_never_writes_off_the_past(monkeypatch):
    monkeypatch.setattr(delivery, "MAX_AHEAD", 3)
    ledger = SequenceLedger()
    for seq in (0, 2, 3):
        assert ledger.take(seq)
    assert not ledger.take(10**9) and not ledger.take(5)  # 5 > received_through (0) + 3
    assert (ledger.received_through, ledger.highest, ledger.lost, ledger.refused_ahead) == (0, 3, 0, 2)
    assert ledger.take(1) and ledger.received_through == 3  # the hole is still filled by its resend
    assert ledger.take(5) and ledger.missing().tolist() == [4]


def test_what_the_controller_can_no_longer_resend_is_written_off_at_once():
    ledger = SequenceLedger()  # a fresh learner; the controller's window holds 4990..5000
    assert ledger.take(5000, resend_from=4990)
    assert (ledger.received_through, ledger.lost, ledger.missing().tolist()) == (4989, 4990, list(range(4990, 5000)))
    assert all(ledger.take(seq, resend_from=4990) for seq in range(4990, 5000))
    assert (ledger.received_through, ledger.gaps) == (5000, 0)
    assert ledger.take(5003, resend_from=5002)  # the window evicted 5001 before it was resent: gone
    assert (ledger.received_through, ledger.lost, ledger.missing().tolist()) == (5001, 4991, [5002])
    assert not ledger.take(5001, resend_from=0) and ledger.duplicates == 1  # a stale resend_from moves nothing back
    fire_and_forget = SequenceLedger()  # resend_from None: the sender resends nothing
    assert fire_and_forget.take(0, None) and fire_and_forget.take(3, None)
    assert (fire_and_forget.received_through, fire_and_forget.lost, fire_and_forget.gaps) == (3, 2, 0)


def test_a_stream_is_bound_to_its_connection_or_on_curve_to_its_key():
    owners = StreamOwners(capacity=2, idle_s=10.0)
    assert owners.admit("c@1", None, "conn-a", now=0.0) is None and owners.connection("c@1") == "conn-a"
    refused = owners.admit("c@1", None, "conn-b", now=0.1)  # knows the stream id, not the connection
    assert refused.reason == "owner" and owners.refused_owner == 1 and owners.connection("c@1") == "conn-a"
    assert owners.admit("c@1", None, "conn-a", now=0.2) is None  # the owner (same routing id after a reconnect)
    assert owners.admit("k@1", "key-1", "conn-c", now=0.3) is None
    assert owners.admit("k@1", "key-2", "conn-c", now=0.4).reason == "owner"  # another key on its connection
    assert owners.admit("k@1", "key-1", "conn-d", now=0.5) is None  # its key on a new connection: acks follow
    assert owners.connection("k@1") == "conn-d" and (owners.rebound, owners.refused_owner) == (1, 2)
    assert owners.check_stats("c", None, "conn-a") is None and owners.check_stats("k", "key-1", "conn-x") is None
    assert owners.check_stats("c", None, "conn-b").reason == "stats_unbound"
    assert owners.check_stats("k@", "key-1", "conn-d").reason == "stats_unbound"  # names no stream
    assert owners.admit("new@1", None, "conn-e", now=5.0).reason == "full"  # both others are active
    assert owners.admit("new@2", None, "conn-e", now=10.25) is None  # c@1 idle for 10 s: unbound to make room
    assert owners.connection("c@1") is None and (owners.evicted, owners.refused_full, len(owners)) == (1, 1, 2)


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
    batcher = TransitionBatcher(
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
