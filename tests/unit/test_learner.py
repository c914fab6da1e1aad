"""The learner's logic on the in-memory transport: sequence numbers, UTD, publishing, checkpoint and resume, stop.

Networks are 2x16 with batch 32. ONNX export costs ~1 s (3 s for a process's first), so only the publishing test
exports for real; the others replace `ArtifactBuilder` with a stub (`fake_export`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from acalign_robot.algo.checkpoint import load_checkpoint
from acalign_robot.cli import main
from acalign_robot.controller.streaming import TransitionBatcher
from acalign_robot.errors import InputError
from acalign_robot.learner import process
from acalign_robot.learner.config import LearnerConfig
from acalign_robot.learner.process import Learner
from acalign_robot.policy.runner import PolicyRunner
from acalign_robot.wire.channels import free_tcp_endpoint
from acalign_robot.wire.delivery import MAX_STREAMS, ResendWindow
from acalign_robot.wire.memory import (
    MemoryPolicyPublisher,
    MemoryPolicySubscriber,
    MemoryTransitionReceiver,
    MemoryTransitionSender,
)
from acalign_robot.wire.protocol import Policy, Stats
from tests.learner_helpers import ACTION_HIGH, ACTION_LOW, transition_batch, write_aligned_checkpoint

BATCH = 32


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The learner's default (serve sets it): with 2 threads on a busy 2-core machine an update takes 50x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_export(monkeypatch):
    """ArtifactBuilder replaced by a stub building (b'onnx', {'version': n}); returns the versions it was asked for."""
    versions = []

    class StubBuilder:
        def __init__(self, actor, meta, source, *, name, algorithm):
            pass

        def build(self, actor, training_step, version):
            versions.append(version)
            return b"onnx", {"version": version}

    monkeypatch.setattr(process, "ArtifactBuilder", StubBuilder)
    return versions


class Rig:
    """A learner on the in-memory transport, with one sender and one policy subscriber attached."""

    def __init__(self, config: LearnerConfig, resume: bool = False):
        self.receiver = MemoryTransitionReceiver(queue_messages=1024)
        self.publisher = MemoryPolicyPublisher()
        self.sender = MemoryTransitionSender(self.receiver)
        self.subscriber = MemoryPolicySubscriber(self.publisher)
        self.learner = Learner(config, self.receiver, self.publisher, resume=resume)

    def push(self, *messages) -> None:
        for message in messages:
            assert self.sender.send(message)

    def catch_up(self) -> None:
        """Receive everything queued, run every owed update and send what they published."""
        self.learner.receive()
        while self.learner.owed_updates:
            self.learner.train()
        self.learner.finish_publication(wait=True)


@pytest.fixture
def make_config(tmp_path):
    """Factory: a LearnerConfig on a tiny aligned checkpoint (seeded with `seeded` transitions)."""

    def make(seeded: int = 64, **fields) -> LearnerConfig:
        checkpoint = tmp_path / f"aligned-{seeded}.pt"
        if not checkpoint.exists():
            write_aligned_checkpoint(checkpoint, seeded=seeded, batch_size=BATCH)
        return LearnerConfig(checkpoint=str(checkpoint), checkpoint_dir=str(tmp_path / "learner"), **fields)

    return make


def test_sequence_numbers_gaps_duplicates_and_two_interleaved_controllers(make_config, fake_export):
    rig = Rig(make_config())
    learner = rig.learner
    seeded = len(learner.buffer)
    rig.push(
        transition_batch("a", 0, 5),
        transition_batch("b", 0, 7),
        transition_batch("a", 1, 5),
        transition_batch("a", 1, 5),  # duplicate
        transition_batch("b", 1, 7),
        transition_batch("a", 4, 5),  # 2 and 3 missing
        transition_batch("a", 3, 5),  # resent: fills a hole
        transition_batch("a", 3, 5),  # resent twice: never inserted twice
        transition_batch("b", 2, 7),
    )
    assert learner.receive() == 9
    a, b = learner.streams["a"], learner.streams["b"]
    assert (a.ledger.received_through, a.ledger.highest, a.batches, a.transitions) == (1, 4, 4, 20)
    assert (a.ledger.gaps, a.ledger.recovered, a.ledger.duplicates) == (1, 1, 2)
    assert (b.ledger.received_through, b.batches, b.transitions, b.ledger.gaps, b.ledger.duplicates) == (2, 3, 21, 0, 0)
    assert len(learner.buffer) == seeded + 20 + 21
    assert learner.env_steps == learner.transitions_received == 41
    snapshot = learner.snapshot()
    assert (snapshot["gaps"], snapshot["recovered"], snapshot["duplicates"], snapshot["rejected"]) == (1, 1, 2, 0)

    learner.acknowledge()  # both streams share the rig's one sender
    acks = {ack.stream_id: ack for ack in iter(lambda: rig.sender.recv(0.0), None)}
    assert (acks["a"].received_through, acks["a"].highest, acks["a"].missing.tolist()) == (1, 4, [2])
    assert (acks["b"].received_through, acks["b"].missing.tolist()) == (2, [])
    assert acks["a"].durable_through == acks["b"].durable_through == -1  # nothing checkpointed since they began
    learner.save()
    acks = {ack.stream_id: ack for ack in iter(lambda: rig.sender.recv(0.0), None)}
    assert (acks["a"].durable_through, acks["b"].durable_through) == (1, 2)


def test_bad_batches_are_rejected_and_actions_are_mapped_to_the_unit_box(make_config, fake_export):
    rig = Rig(make_config())
    learner = rig.learner
    seeded = len(learner.buffer)
    nan_batch = transition_batch("a", 1, 4)
    nan_batch.reward.setflags(write=True)
    nan_batch.reward[2] = np.nan
    wrong = transition_batch("a", 2, 4)
    wrong = dataclasses.replace(wrong, obs=np.zeros((4, 5), np.float32), next_obs=np.zeros((4, 5), np.float32))
    good = transition_batch("a", 0, 4)
    rig.push(good, nan_batch, wrong)
    learner.receive()
    stream = learner.streams["a"]
    assert (stream.batches, stream.rejected, stream.transitions, stream.ledger.gaps) == (3, 2, 4, 0)
    assert "obs of shape (4, 5)" in stream.last_rejection
    assert len(learner.buffer) == seeded + 4
    stored = learner.buffer.action[seeded : seeded + 4]
    expected = (good.action - (ACTION_HIGH + ACTION_LOW) / 2) / ((ACTION_HIGH - ACTION_LOW) / 2)
    np.testing.assert_allclose(stored, expected, atol=1e-6)
    assert np.abs(stored).max() <= 1.0


@pytest.mark.parametrize("when_behind", ["catch_up", "skip"])
def test_a_learner_behind_keeps_the_ratio_or_the_pace_as_configured(make_config, fake_export, when_behind):
    """50 transitions arrive before any update runs: catch_up owes all of them, skip forgives beyond 8 (and says so)."""
    rig = Rig(make_config(seeded=64, when_behind=when_behind, max_owed_updates=8))
    learner = rig.learner
    rig.push(*(transition_batch("a", seq, 10, seed=seq) for seq in range(5)))
    learner.receive()
    assert learner.owed_updates == (50 if when_behind == "catch_up" else 8)
    assert learner.updates_skipped == (0 if when_behind == "catch_up" else 42)
    rig.catch_up()
    status = learner.snapshot()
    assert status["utd_achieved"] == pytest.approx(1.0 if when_behind == "catch_up" else 8 / 50)
    assert status["updates_skipped"] == learner.updates_skipped


@pytest.mark.parametrize("utd", [1.0, 0.5, 2.0])
def test_updates_track_utd_times_env_steps_once_the_buffer_exceeds_a_batch(make_config, fake_export, utd):
    rig = Rig(make_config(seeded=20, utd=utd))
    learner = rig.learner
    sizes = []
    for seq in range(5):
        rig.push(transition_batch("a", seq, 10, seed=seq))
        rig.catch_up()
        sizes.append(len(learner.buffer))
        # Transitions that arrived while the buffer held <= BATCH earn nothing (20 -> 30: none; 30 -> 40: 8).
        earning = sum(min(10, max(0, size - BATCH)) for size in sizes)
        assert learner.updates == int(utd * earning)
    assert sizes == [30, 40, 50, 60, 70] and learner.updates == int(utd * 38)
    assert learner.agent.updates == learner.updates  # the aligned agent starts at 0


def test_a_burst_is_trained_in_slices_between_receives(make_config, fake_export):
    rig = Rig(make_config())
    rig.push(transition_batch("a", 0, 500))
    learner = rig.learner
    learner.receive()
    ran = learner.train(budget_s=0.0)
    assert ran == 1 and learner.owed_updates == 499  # one update, then back to the socket


def test_publishes_every_n_updates_with_increasing_versions_runner_accepts(make_config):
    rig = Rig(make_config(publish_every=5))
    learner = rig.learner
    first = learner.publish()  # what run() does at start: the aligned actor, version 1
    assert isinstance(first, Policy) and first.version == 1
    rig.push(transition_batch("a", 0, 5))
    rig.catch_up()
    received = rig.subscriber.recv(1.0)
    assert isinstance(received, Policy) and received.version == 2 and learner.published_version == 2
    for policy in (first, received):
        assert policy.manifest["version"] == policy.version
        assert policy.manifest["training_step"] == (0 if policy is first else 5)
        runner = PolicyRunner(policy.onnx, policy.manifest, obs_dim=11, action_dim=3)
        action = runner.act(np.zeros(11, np.float32), explore=False)
        assert np.all(action >= ACTION_LOW) and np.all(action <= ACTION_HIGH)
    # The published graph is the live actor's.
    obs = np.random.default_rng(0).normal(size=(4, 11)).astype(np.float32)
    with torch.no_grad():
        expected = torch.tanh(learner.agent.actor(torch.as_tensor(obs))[0]).numpy()
    got = PolicyRunner(received.onnx, received.manifest).act_batch(obs)[0]
    np.testing.assert_allclose(got, ACTION_LOW + (expected + 1) / 2 * (ACTION_HIGH - ACTION_LOW), atol=1e-5)


def test_checkpoint_and_resume_continue_identically(make_config, fake_export):
    config = make_config(checkpoint_every_updates=1000)
    first = Rig(config)
    first.learner.publish()
    first.push(transition_batch("a", 0, 40, seed=1), transition_batch("b", 0, 10, seed=2))
    first.catch_up()
    first.learner.save()
    saved = {
        "updates": first.learner.updates,
        "buffer": len(first.learner.buffer),
        "w": first.learner.agent.prior.w,
        "alpha": first.learner.agent.alpha,
        "streams": copy.deepcopy(first.learner.streams),
        "version": first.learner.published_version,
    }
    later = [transition_batch("a", 1, 30, seed=3), transition_batch("a", 1, 30, seed=3)]  # the second: duplicate
    first.push(*later)
    first.catch_up()
    first.learner.publish()  # version 2, after the checkpoint: then the process dies

    resumed = Rig(config, resume=True)
    learner = resumed.learner
    assert learner.updates == saved["updates"] == 50
    assert len(learner.buffer) == saved["buffer"]
    assert learner.agent.prior.w == saved["w"] and learner.agent.alpha == saved["alpha"]
    assert learner.streams == saved["streams"] and saved["version"] == 1
    assert learner.published_version == 2 and learner.publish().version == 3  # 2 went out after the checkpoint
    # Optimisers still step the live parameters (load_state_dict must not rebind them).
    actor_params = {id(p) for p in learner.agent.actor.parameters()}
    assert {id(p) for p in learner.agent.actor_optimizer.param_groups[0]["params"]} == actor_params
    critic_params = {id(p) for p in learner.agent.critic.parameters()}
    assert {id(p) for p in learner.agent.critic_optimizer.param_groups[0]["params"]} == critic_params

    resumed.push(*later)
    resumed.catch_up()
    assert learner.streams["a"].ledger.duplicates == 1 and learner.updates == first.learner.updates == 80
    for name, value in first.learner.agent.state_dict().items():
        if isinstance(value, dict) and name != "prior":
            for key, tensor in value.items():
                if isinstance(tensor, torch.Tensor):
                    assert torch.equal(tensor, learner.agent.state_dict()[name][key]), (name, key)
    assert learner.agent.prior.w == first.learner.agent.prior.w
    assert learner.agent.alpha == first.learner.agent.alpha
    np.testing.assert_array_equal(learner.buffer.obs, first.learner.buffer.obs)


def test_learner_state_is_learner_pts_entry_and_older_checkpoints_still_resume(make_config, fake_export):
    config = make_config()
    learner = Rig(config).learner
    payload = load_checkpoint(learner.save(), "online")
    entry = payload["agent"]["learner"]
    assert list(entry) == [f.name for f in dataclasses.fields(process.LearnerState) if f.name != "cuda_rng"]  # CPU
    # A learner.pt written before streams were evicted (issue 16) has no eviction counters.
    del entry["retired_streams"], entry["streams_evicted"]
    torch.save(payload, learner.checkpoint_path)
    resumed = Rig(config, resume=True).learner
    assert (resumed.updates, resumed.streams_evicted, resumed.published_version) == (0, 0, 0)


def test_stop_request_finishes_and_writes_checkpoint_status_and_metrics(make_config, fake_export):
    rig = Rig(make_config(metrics_every_s=0.01))
    learner = rig.learner
    rig.push(
        transition_batch("a", 0, 10, episode_return=12.5),
        transition_batch("a", 0, 10, episode_return=12.5),  # the same batch again: a duplicate, not an episode
        transition_batch("a", 1, 10, episode_return=20.0),
        Stats(source="a", values={"episodes": 2, "last_episode_return": 20.0}),  # recorded, not counted as episodes
    )
    timer = threading.Timer(0.5, learner.request_stop)  # what the SIGTERM handler does
    timer.start()
    try:
        path = learner.run()
    finally:
        timer.cancel()
    assert path.exists() and learner.updates == 20
    state = load_checkpoint(path, "online")["agent"]
    assert state["learner"]["updates"] == 20 and state["env_steps"] == 20
    assert state["learner"]["streams"]["a"]["ledger"]["received_through"] == 1
    status = json.loads(learner.status_path.read_text())
    assert status["last_episode_return"] == {"a": 20.0} and status["controllers"]["a"]["episodes"] == 2
    assert status["state"] == "stopped" and status["updates"] == 20 and status["published_version"] == 1
    assert status["updates_per_s"] == pytest.approx(20 / status["uptime_s"], rel=0.05)  # the run's average
    records = [json.loads(line) for line in learner.metrics_path.read_text().splitlines()]
    assert sum(len(record["episode_returns"]) for record in records) == 2
    assert records[-1]["updates"] == 20 and "loss/critic" in records[0] and records[-1]["w"] < 1.0


def test_stops_at_max_updates(make_config, fake_export):
    rig = Rig(make_config(max_updates=7))
    rig.push(transition_batch("a", 0, 20))
    rig.learner.run()
    assert rig.learner.updates == 7 and rig.learner.checkpoint_path.exists()
    with pytest.raises(InputError, match="resume to continue that run"):  # a fresh start never overwrites a run
        Rig(rig.learner.config)


def test_config_validation():
    with pytest.raises(ValueError, match="utd"):
        LearnerConfig(checkpoint="x", checkpoint_dir="y", utd=0).validate()
    with pytest.raises(ValueError, match="must differ"):
        LearnerConfig(checkpoint="x", checkpoint_dir="y", policy_endpoint="tcp://127.0.0.1:5556").validate()
    with pytest.raises(ValueError, match="cpu_affinity"):
        LearnerConfig(checkpoint="x", checkpoint_dir="y", cpu_affinity=(0, 0)).validate()


def test_cli_reports_config_typos_and_missing_resume_checkpoint_with_exit_2(tmp_path, capsys):
    config = tmp_path / "learner.yaml"
    config.write_text(f"checkpoint: x.pt\ncheckpoint_dir: {tmp_path / 'run'}\npublish_evry: 3\n")
    assert main(["learner", "--config", str(config)]) == 2
    assert f"{config}:3: unknown key 'publish_evry' (did you mean 'publish_every'?)" in capsys.readouterr().err
    endpoints = f"transitions_endpoint: {free_tcp_endpoint()}\npolicy_endpoint: {free_tcp_endpoint()}\n"
    config.write_text(f"checkpoint: x.pt\ncheckpoint_dir: {tmp_path / 'run'}\n{endpoints}")
    assert main(["learner", "--config", str(config), "--resume"]) == 2
    assert "no learner checkpoint" in capsys.readouterr().err
    assert main(["learner", "--config", str(config), "--set", "transitions_endpoint=tcp://0.0.0.0:5556"]) == 2
    assert "refusing to bind 'tcp://0.0.0.0:5556' without CURVE" in capsys.readouterr().err


def test_per_peer_state_is_bounded_and_evictions_are_counted(make_config, fake_export):
    rig = Rig(make_config())
    learner, forger = rig.learner, MemoryTransitionSender(rig.receiver)
    robot_stats = Stats(source="robot", values={"episodes": 1, "episode_return": 2.0})
    rig.push(transition_batch("robot@1", 0, 4), transition_batch("robot@1", 0, 4), robot_stats)  # one duplicate
    for index in range(3 * MAX_STREAMS):  # forged stream ids, and Stats from as many sources
        assert forger.send(transition_batch(f"forged-{index}@1", 0, 2))
        assert forger.send(Stats(source=f"source-{index}", values={"x": 1.0}))
    while learner.receive():
        pass
    binding = learner.snapshot()["binding"]
    assert len(learner.streams) == MAX_STREAMS and "robot@1" in learner.streams
    assert binding["refused_full"] == 2 * MAX_STREAMS + 1 and binding["stats_unbound"] == 3 * MAX_STREAMS
    assert set(learner.controller_stats) == {"robot"}  # only a stream's owner reports for it
    learner.write_status()
    status = json.loads(learner.status_path.read_text())
    assert len(status["controllers"]) == MAX_STREAMS and status["binding"] == binding

    rig.receiver.owners.idle_s = 0.0  # every stream now counts as idle: new ones replace the oldest
    assert rig.sender.send(transition_batch("robot@1", 1, 4))
    for index in range(MAX_STREAMS):
        assert forger.send(transition_batch(f"later-{index}@1", 1, 2, resend_from=1))  # each has lost seq 0
    learner.receive()
    assert len(learner.streams) == MAX_STREAMS and learner.streams_evicted == MAX_STREAMS
    assert "robot@1" not in learner.streams and learner.snapshot()["duplicates"] == 1  # evicted, still counted
    assert learner.snapshot()["lost"] == MAX_STREAMS
    saved = load_checkpoint(learner.save(), "online")["agent"]["learner"]
    assert len(saved["streams"]) == MAX_STREAMS and saved["retired_streams"]["duplicates"] == 1


def test_stats_are_kept_bounded_per_source(make_config, fake_export):
    rig = Rig(make_config())
    values = {f"k{index}": "x" * 10_000 for index in range(1000)}
    rig.push(transition_batch("robot@1", 0, 4), Stats(source="robot", values=values))
    rig.learner.receive()
    kept = rig.learner.controller_stats["robot"]
    assert len(kept) == process.MAX_STATS_KEPT and max(map(len, kept.values())) == process.MAX_STAT_CHARS


def test_a_fresh_learner_writes_off_what_the_controller_forgot_and_gets_the_rest(make_config, fake_export):
    rig = Rig(make_config())
    window = ResendWindow(capacity_bytes=10**6, resend_after_s=0.0)
    batcher = TransitionBatcher("c@1", 2, 11, 3, MemoryTransitionSender(rig.receiver), None, window)
    step = (np.zeros(11), np.zeros(3), np.zeros(3), 1.0, np.zeros(11), False, False, 1, 0)
    batcher.seq = 5000  # mid-session: the learner before this one held 0..4989 durably, then was replaced
    for seq in range(4990, 5000):
        window.record(transition_batch("c@1", seq, 2), now=0.0)
    batcher.add(*step)
    batcher.add(*step)  # batch 5000, which tells the learner the window starts at 4990
    rig.learner.receive()
    stream = rig.learner.streams["c@1"]
    assert (stream.ledger.lost, stream.ledger.missing().tolist()) == (4990, list(range(4990, 5000)))
    rig.learner.acknowledge()
    for _ in range(10):
        batcher.service(now=time.perf_counter() + 1.0)  # one resend per tick
    rig.learner.receive()
    assert (stream.ledger.received_through, stream.ledger.gaps, stream.ledger.lost) == (5000, 0, 4990)


def test_stale_temp_files_are_removed_at_start_and_a_failed_save_leaves_none(make_config, fake_export, monkeypatch):
    config = make_config()
    run_dir = Path(config.checkpoint_dir)
    run_dir.mkdir(parents=True)
    dead = run_dir / ".learner.pt.999999999.tmp"  # above any pid_max: that process is gone
    alive = run_dir / f".status.json.{os.getppid()}.tmp"  # a live process may be writing it now
    unrelated = run_dir / ".notes.123.tmp"
    for path in (dead, alive, unrelated):
        path.write_bytes(b"partial")
    learner = Rig(config).learner
    assert not dead.exists() and alive.exists() and unrelated.exists()

    def full_disk(payload, handle):
        handle.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        learner.save()
    assert sorted(path.name for path in run_dir.glob(".learner.pt.*")) == []


def test_a_diverged_update_stops_the_learner_and_keeps_the_last_checkpoint(make_config, fake_export):
    from acalign_robot.algo.divergence import DivergenceError

    rig = Rig(make_config(checkpoint_every_updates=5))
    learner = rig.learner
    rig.push(transition_batch("a", 0, 20))
    learner.receive()
    while learner.owed_updates > 0:
        learner.train()
    assert learner.updates == 20
    kept = learner.checkpoint_path.read_bytes()
    with torch.no_grad():  # what a runaway leaves behind: a critic weight gone to infinity
        next(learner.agent.critic.parameters()).view(-1)[0] = float("inf")
    rig.push(transition_batch("a", 1, 20))
    learner.receive()
    with pytest.raises(DivergenceError, match=r"diverged at update 20: .* is not finite; the last good checkpoint"):
        learner.train()
    assert learner.checkpoint_path.read_bytes() == kept
