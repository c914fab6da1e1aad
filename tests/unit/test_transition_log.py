"""TransitionLog: every field round-trips, episodes are derived, writes never wait, damage is named, reopen appends."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest

from acalign_robot.robot_log.format import META_FILE, LogError
from acalign_robot.robot_log.reader import find_logs, read_log
from acalign_robot.robot_log.transition_log import TransitionLog
from tests.log_helpers import synthetic_batch


def _write(log: TransitionLog, batches: int, n: int = 16, first_seq: int = 0, start: int = 0) -> list:
    written = []
    for k in range(batches):
        batch = synthetic_batch(first_seq + k, n, start + k * n)
        log.write(batch)
        written.append(batch)
    return written


def test_round_trip_keeps_every_field(tmp_path):
    stamps = 1.7e9 + np.arange(16) * 0.002
    with TransitionLog(tmp_path / "log", "test-0", chunk_transitions=32, env_id="Hopper-v5") as log:
        batches = _write(log, 5)
        extra = synthetic_batch(5, 16, 80)
        before = time.time()
        log.write(extra, timestamps=stamps)  # explicit per-transition timestamps ...
        log.write(synthetic_batch(6, 16, 96))  # ... or the write() time
        after = time.time()
    batches += [extra, synthetic_batch(6, 16, 96)]

    data = read_log(tmp_path / "log")

    assert len(data) == 112 and [p.name for p in data.chunks][:2] == ["chunk-0000-000000.npz", "chunk-0000-000001.npz"]
    for name in ("obs", "action", "reward", "next_obs", "terminated", "truncated", "policy_version"):
        expected = np.concatenate([getattr(b, name) for b in batches])
        np.testing.assert_array_equal(getattr(data, name), expected, err_msg=name)
        assert getattr(data, name).dtype == expected.dtype or name == "policy_version"
    for name in ("policy_action", "safety_flags"):
        np.testing.assert_array_equal(data.extras[name], np.concatenate([b.extras[name] for b in batches]))
    assert data.extras["safety_flags"].dtype == np.int32
    np.testing.assert_array_equal(data.policy_action, data.extras["policy_action"])
    np.testing.assert_array_equal(data.seq, np.repeat(np.arange(7), 16))
    np.testing.assert_array_equal(data.timestamp_s[80:96], stamps)
    assert np.all((data.timestamp_s[96:] >= before) & (data.timestamp_s[96:] <= after))
    assert data.controller_id == "test-0" and data.env_id == "Hopper-v5" and data.dropped_batches == 0
    assert (data.meta["obs_dim"], data.meta["action_dim"]) == (11, 3)  # learnt from the first batch
    assert data.meta["created"] and data.meta["format"] == 1

    # Episodes end every 25 transitions; the 12 transitions after the last end are a kept partial episode.
    assert [(e.start, e.stop, e.complete) for e in data.episodes] == [
        (0, 25, True),
        (25, 50, True),
        (50, 75, True),
        (75, 100, True),
        (100, 112, False),
    ]
    np.testing.assert_array_equal(data.episode_observations(data.episodes[0])[-1], data.next_obs[24])


def test_write_never_waits_and_counts_drops_when_the_writer_is_stuck(tmp_path, monkeypatch):
    release = threading.Event()
    original = TransitionLog._write_chunk

    def stuck(self, pending):  # a disk that stalls: the writer thread waits here
        release.wait(10)
        original(self, pending)

    monkeypatch.setattr(TransitionLog, "_write_chunk", stuck)
    log = TransitionLog(tmp_path / "log", "test-0", chunk_transitions=16, queue_batches=4)
    durations = []
    for k in range(20):
        started = time.perf_counter()
        log.write(synthetic_batch(k, 16, 16 * k))
        durations.append(time.perf_counter() - started)
    assert max(durations) < 0.05  # a stalled disk never stalls the caller
    assert log.dropped_batches >= 10  # the writer holds one batch, the queue four: the rest are dropped, counted
    release.set()
    stats = log.close()
    assert stats["log_dropped_batches"] == log.dropped_batches and stats["log_error"] == ""

    data = read_log(tmp_path / "log")
    assert len(data) == 16 * (20 - stats["log_dropped_batches"])
    assert data.dropped_batches > 0
    # A gap in seq (lost batches) cuts the episode there: no episode spans missing transitions.
    for episode in data.episodes:
        assert np.all(np.diff(data.seq[episode.slice]) <= 1)


def test_a_failing_disk_is_reported_not_raised(tmp_path):
    log = TransitionLog(tmp_path / "log", "test-0", chunk_transitions=16)
    shutil.rmtree(tmp_path / "log")  # every later file operation fails
    _write(log, 3)
    stats = log.close()
    assert "FileNotFoundError" in stats["log_error"]
    assert stats["log_dropped_batches"] == 3 and stats["log_written_transitions"] == 0


def test_bad_batches_and_closed_log_are_caller_errors(tmp_path):
    log = TransitionLog(tmp_path / "log", "test-0")
    log.write(synthetic_batch(0, 4, 0))
    with pytest.raises(ValueError, match="obs/action dims 5/3"):
        log.write(synthetic_batch(1, 4, 4, obs_dim=5))
    with pytest.raises(ValueError, match="timestamps"):
        log.write(synthetic_batch(1, 4, 4), timestamps=np.zeros(3))
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.write(synthetic_batch(1, 4, 4))


def test_damaged_chunk_is_named_and_temp_files_are_ignored(tmp_path):
    with TransitionLog(tmp_path / "log", "test-0", chunk_transitions=16) as log:
        _write(log, 3)
    (tmp_path / "log" / ".chunk-0000-000003.npz.tmp").write_bytes(b"half a chunk")  # what a kill leaves
    assert len(read_log(tmp_path / "log")) == 48

    damaged = tmp_path / "log" / "chunk-0000-000001.npz"
    damaged.write_bytes(damaged.read_bytes()[:300])
    with pytest.raises(LogError, match=r"chunk-0000-000001\.npz: damaged log chunk"):
        read_log(tmp_path / "log")


def test_missing_log_and_empty_log_are_input_errors(tmp_path):
    with pytest.raises(LogError, match="not a transition log"):
        read_log(tmp_path)
    TransitionLog(tmp_path / "empty", "test-0").close()
    with pytest.raises(LogError, match="no closed chunks"):
        read_log(tmp_path / "empty")
    with pytest.raises(LogError, match="no transition log here"):
        find_logs(tmp_path / "nowhere")


def test_reopened_log_appends_a_segment_and_episodes_do_not_span_it(tmp_path):
    with TransitionLog(tmp_path / "log", "test-0", chunk_transitions=16) as log:
        _write(log, 2, n=10)  # 20 transitions: an episode still open at the end
    with TransitionLog(tmp_path / "log", "test-0", chunk_transitions=16) as log:
        assert log.segment == 1
        _write(log, 1, n=10, first_seq=0, start=20)  # a restarted controller counts seq from 0 again
    data = read_log(tmp_path / "log")
    assert [p.name for p in data.chunks] == ["chunk-0000-000000.npz", "chunk-0001-000001.npz"]
    assert [(e.start, e.stop, e.complete) for e in data.episodes] == [(0, 20, False), (20, 25, True), (25, 30, False)]
    with pytest.raises(LogError, match="a log of controller 'test-0', not 'other'"):
        TransitionLog(tmp_path / "log", "other")


def test_session_directory_finds_every_controller_log(tmp_path):
    for name in ("controller-1", "controller-0"):
        TransitionLog(tmp_path / "session" / name / "log", name).close()
    assert find_logs(tmp_path / "session") == [tmp_path / "session" / f"controller-{i}" / "log" for i in (0, 1)]
    assert find_logs(tmp_path / "session" / "controller-0") == [tmp_path / "session" / "controller-0" / "log"]
    meta = json.loads((tmp_path / "session" / "controller-0" / "log" / META_FILE).read_text())
    assert meta["controller_id"] == "controller-0" and meta["obs_dim"] is None


def _chunked_log(tmp_path, chunks: int = 5):
    """A log of `chunks` closed chunks of 16 transitions (one batch each)."""
    with TransitionLog(tmp_path / "log", "test-0", chunk_transitions=16) as log:
        _write(log, chunks)
    return tmp_path / "log"


def _digests(directory) -> dict:
    import hashlib

    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: b"", id="zero-length"),
        pytest.param(lambda raw: raw[:600] + bytes([raw[600] ^ 0xFF]) + raw[601:], id="byte-flipped"),
    ],
)
def test_a_damaged_chunk_is_skipped_and_named_on_request_and_nothing_is_modified(tmp_path, damage):
    directory = _chunked_log(tmp_path)
    damaged = directory / "chunk-0000-000002.npz"
    damaged.write_bytes(damage(damaged.read_bytes()))
    before = _digests(directory)
    with pytest.raises(LogError, match=r"chunk-0000-000002\.npz: damaged log chunk"):
        read_log(directory)

    data = read_log(directory, skip_damaged=True)

    assert [p.name for p in data.chunks] == [f"chunk-0000-00000{i}.npz" for i in (0, 1, 3, 4)]
    np.testing.assert_array_equal(data.seq, np.repeat([0, 1, 3, 4], 16))
    (problem,) = data.problems
    assert problem.path == damaged and problem.lost and "damaged chunk" in problem.reason
    assert not any(e.start < 32 < e.stop for e in data.episodes)  # no episode spans the hole
    assert _digests(directory) == before  # reading never repairs, renames or removes


def test_a_missing_chunk_is_a_named_gap_and_cuts_the_episode(tmp_path):
    directory = _chunked_log(tmp_path)
    (directory / "chunk-0000-000001.npz").unlink()
    (directory / "chunk-0000-000002.npz").unlink()

    data = read_log(directory)

    assert len(data) == 48
    (gap,) = data.problems
    assert gap.lost and gap.path == directory and "chunks 000001 to 000002 missing (2 chunks" in gap.reason
    assert (data.episodes[0].start, data.episodes[0].stop, data.episodes[0].complete) == (0, 16, False)
    (directory / "chunk-0000-000000.npz").unlink()  # a missing first chunk shows too
    assert "chunks 000000 to 000002 missing (3 chunks" in read_log(directory).problems[0].reason


def test_a_whole_temp_chunk_is_read_and_a_partial_one_is_named_lost(tmp_path):
    directory = _chunked_log(tmp_path, chunks=4)
    # A writer killed between fsync and rename leaves a whole chunk under its temp name.
    (directory / "chunk-0000-000003.npz").rename(directory / ".chunk-0000-000003.npz.tmp")
    data = read_log(directory)
    assert len(data) == 64 and data.chunks[-1].name == ".chunk-0000-000003.npz.tmp"
    (note,) = data.problems
    assert not note.lost and "read as chunk-0000-000003.npz" in note.reason and data.lost == ()

    (directory / ".chunk-0000-000003.npz.tmp").write_bytes(b"half a chunk")  # a writer killed mid-write
    data = read_log(directory)
    assert len(data) == 48
    (lost,) = data.problems
    assert lost.lost and "not whole" in lost.reason and lost.path.name == ".chunk-0000-000003.npz.tmp"


def test_nonfinite_transitions_are_flagged_not_the_raw_policy_action(tmp_path):
    import dataclasses

    batch = synthetic_batch(0, 16, 0)
    obs, reward = batch.obs.copy(), batch.reward.copy()
    obs[3, 2], reward[7] = np.nan, np.inf
    policy_action = batch.extras["policy_action"].copy()
    policy_action[9] = np.nan  # a NaN policy output the safety filter replaced: the executed action is finite
    batch = dataclasses.replace(batch, obs=obs, reward=reward, extras={**batch.extras, "policy_action": policy_action})
    with TransitionLog(tmp_path / "log", "test-0") as log:
        log.write(batch)
    assert np.flatnonzero(read_log(tmp_path / "log").nonfinite()).tolist() == [3, 7]
