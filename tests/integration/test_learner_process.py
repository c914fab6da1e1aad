"""`acalign learner` as a real process on 127.0.0.1: transitions in over PUSH/PULL, policies out over PUB/SUB,
SIGTERM -> checkpoint and exit 0."""

from __future__ import annotations

import json
import signal
import time

import pytest
import yaml

from acalign_robot.algo.checkpoint import load_checkpoint
from acalign_robot.runtime.policy import PolicyRunner
from acalign_robot.runtime.protocol import Policy, Stats
from acalign_robot.runtime.transport import ZmqPolicySubscriber, ZmqTransitionSender, free_tcp_endpoint
from tests.helpers import Processes, acalign_command, wait_for
from tests.learner_helpers import transition_batch, write_aligned_checkpoint

pytestmark = pytest.mark.integration


def _next_policy(subscriber: ZmqPolicySubscriber, newer_than: int, timeout_s: float) -> Policy:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = subscriber.recv(0.2)
        if isinstance(message, Policy) and message.version > newer_than:
            return message
    raise AssertionError(f"no policy newer than version {newer_than} within {timeout_s} s")


def test_learner_process_trains_on_pushed_transitions_publishes_and_checkpoints_on_sigterm(tmp_path):
    checkpoint = write_aligned_checkpoint(tmp_path / "aligned.pt", seeded=64, batch_size=32)
    transitions, policies = free_tcp_endpoint(), free_tcp_endpoint()
    run_dir = tmp_path / "learner"
    config = tmp_path / "learner.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "checkpoint": str(checkpoint),
                "checkpoint_dir": str(run_dir),
                "transitions_endpoint": transitions,
                "policy_endpoint": policies,
                "publish_every": 40,
                "republish_every_s": 0.5,
            }
        )
    )
    log = tmp_path / "learner.log"
    with Processes() as processes:  # kills the learner's process group on any failure
        ready = tmp_path / "learner.ready"
        learner = processes.start(acalign_command("learner", "--config", str(config), "--ready-file", str(ready)), log)
        wait_for(lambda: ready.exists() or learner.poll() is not None, 60, "the learner to bind")
        assert learner.poll() is None, log.read_text()
        assert "learner ready" in log.read_text() and (run_dir / "learner.pt").exists()  # a restart can resume
        with ZmqPolicySubscriber(policies) as subscriber, ZmqTransitionSender(transitions) as sender:
            initial = _next_policy(subscriber, 0, 30)  # the aligned actor, re-published for late subscribers
            assert initial.version == 1
            for seq in range(4):
                assert sender.send(transition_batch("robot-1", seq, 10, seed=seq))
            assert sender.send(Stats(source="robot-1", values={"episodes": 1, "last_episode_return": 3.0}))
            trained = _next_policy(subscriber, 1, 30)
            assert trained.version == 2 and trained.manifest["training_step"] == 40
            PolicyRunner(trained.onnx, trained.manifest, obs_dim=11, action_dim=3)  # what a controller accepts

            status = wait_for(
                lambda: (s := json.loads((run_dir / "status.json").read_text()))["updates"] >= 40 and s,
                10,
                "status.json to show the updates",
            )
            assert status["state"] == "running" and status["gaps"] == 0 and status["duplicates"] == 0
            ack = wait_for(
                lambda: (a := sender.recv(0.2)) is not None and a.received_through == 3 and a,
                10,
                "the learner to acknowledge batch 3 on the same connection",
            )
            assert ack.controller_id == "robot-1" and ack.highest == 3 and ack.missing.size == 0
            learner.send_signal(signal.SIGTERM)
            assert learner.wait(timeout=30) == 0, log.read_text()

    state = load_checkpoint(run_dir / "learner.pt", "online")["agent"]
    assert state["env_steps"] == 40 and state["learner"]["updates"] == 40
    assert (
        state["learner"]["published_version"] == 2
        and state["learner"]["streams"]["robot-1"]["ledger"]["durable_through"] == 3
    )
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"
    assert "learner stopped; checkpoint:" in log.read_text()
