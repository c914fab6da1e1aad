"""`acalign learner` as a real process on 127.0.0.1: transitions in over DEALER/ROUTER, policies out over PUB/SUB,
SIGTERM -> checkpoint and exit 0; forged streams and peers neither take a stream over nor grow its state."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time

import pytest
import yaml

from acalign_robot.algo.checkpoint import load_checkpoint
from acalign_robot.policy.runner import PolicyRunner
from acalign_robot.wire.channels import free_tcp_endpoint
from acalign_robot.wire.delivery import MAX_STREAMS
from acalign_robot.wire.protocol import Policy, Stats, TransitionAck
from acalign_robot.wire.transport import ZmqPolicySubscriber, ZmqTransitionSender
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


def _learner_config(tmp_path, checkpoint, transitions: str, policies: str, **fields):
    config = tmp_path / "learner.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "checkpoint": str(checkpoint),
                "checkpoint_dir": str(tmp_path / "learner"),
                "transitions_endpoint": transitions,
                "policy_endpoint": policies,
                **fields,
            }
        )
    )
    return config


def test_learner_process_trains_on_pushed_transitions_publishes_and_checkpoints_on_sigterm(tmp_path):
    checkpoint = write_aligned_checkpoint(tmp_path / "aligned.pt", seeded=64, batch_size=32)
    transitions, policies = free_tcp_endpoint(), free_tcp_endpoint()
    run_dir = tmp_path / "learner"
    config = _learner_config(tmp_path, checkpoint, transitions, policies, publish_every=40, republish_every_s=0.5)
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
            assert ack.stream_id == "robot-1" and ack.highest == 3 and ack.missing.size == 0
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


class _Forwarder:
    """A TCP relay to `target` on a free port; `cut()` closes every relayed connection (a network blip)."""

    def __init__(self, target: str):
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: list[socket.socket] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed
            while True:
                client, _ = self._listener.accept()
                try:
                    upstream = socket.create_connection(self._target)
                except OSError:  # the learner has gone: refuse, as its port would
                    client.close()
                    continue
                self._open += [client, upstream]
                self.connections += 1
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for end in self._open:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        self._open.clear()

    def close(self) -> None:
        self.cut()
        self._listener.close()


def _deliver(sender: ZmqTransitionSender, stream: str, seqs: range, timeout_s: float) -> TransitionAck:
    """Send `seqs` like a controller: resend what the learner has not acknowledged every 0.5 s until it holds them."""
    deadline = time.monotonic() + timeout_s
    held = -1
    while time.monotonic() < deadline:
        for seq in seqs:
            if seq > held:
                sender.send(transition_batch(stream, seq, 4, seed=seq))
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            ack = sender.recv(max(0.0, until - time.monotonic()))
            if isinstance(ack, TransitionAck) and ack.stream_id == stream:
                held = max(held, ack.received_through)
                if held >= seqs[-1]:
                    return ack
    raise AssertionError(f"the learner did not acknowledge {stream} through {seqs[-1]} within {timeout_s} s")


def test_forged_streams_neither_hijack_a_stream_nor_grow_the_learners_state(tmp_path):
    checkpoint = write_aligned_checkpoint(tmp_path / "aligned.pt", seeded=64, batch_size=32)
    transitions, policies = free_tcp_endpoint(), free_tcp_endpoint()
    config = _learner_config(tmp_path, checkpoint, transitions, policies, publish_every=10_000)
    run_dir = tmp_path / "learner"
    run_dir.mkdir()
    stale = run_dir / ".learner.pt.999999999.tmp"  # a learner SIGKILLed mid-checkpoint left it
    stale.write_bytes(b"half a checkpoint")
    stream, log = "controller-0@4242", tmp_path / "learner.log"
    with Processes() as processes, contextlib.ExitStack() as stack:
        ready = tmp_path / "learner.ready"
        learner = processes.start(acalign_command("learner", "--config", str(config), "--ready-file", str(ready)), log)
        wait_for(lambda: ready.exists() or learner.poll() is not None, 60, "the learner to bind")
        assert learner.poll() is None, log.read_text()
        assert not stale.exists()
        relay = _Forwarder(transitions)
        stack.callback(relay.close)
        owner = stack.enter_context(ZmqTransitionSender(relay.endpoint))  # the controller, behind a flaky link
        forger = stack.enter_context(ZmqTransitionSender(transitions, queue_messages=1024))  # knows the stream id
        _deliver(owner, stream, range(5), 30)

        forged = [transition_batch(stream, seq, 4, resend_from=seq) for seq in (10**9, 5, 6)]
        forged += [transition_batch(f"forged-{index}@1", 0, 2) for index in range(3 * MAX_STREAMS)]
        forged += [Stats(source=f"source-{index}", values={"x": "y" * 1000}) for index in range(3 * MAX_STREAMS)]
        for message in forged:
            assert forger.send(message)
        relay.cut()  # the owner reconnects with its routing id, on a new TCP connection
        ack = _deliver(owner, stream, range(5, 10), 30)
        assert relay.connections >= 2 and ack.highest == 9 and ack.missing.size == 0

        def settled():  # every forged message taken: counted as refused (or, unbound, kept: 193 streams)
            status = json.loads((run_dir / "status.json").read_text())
            refused = status.get("binding", {}).get("stats_unbound") == 3 * MAX_STREAMS
            return (refused or len(status["controllers"]) > 3 * MAX_STREAMS) and status

        status = wait_for(settled, 10, "status.json to show every forged message")
        mine = status["controllers"][stream]
        assert (mine["received_through"], mine["highest_seq"], mine["transitions"], mine["lost"]) == (9, 9, 40, 0)
        binding = status["binding"]
        assert binding["refused_owner"] == 3 and binding["refused_full"] == 2 * MAX_STREAMS + 1
        assert len(status["controllers"]) == status["streams"] == MAX_STREAMS
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(timeout=30) == 0, log.read_text()

    saved = load_checkpoint(run_dir / "learner.pt", "online")["agent"]["learner"]
    assert len(saved["streams"]) == MAX_STREAMS and saved["streams"][stream]["ledger"]["received_through"] == 9
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(record["controller_stats"] == {} for record in records)  # no forged source reached the metrics
    assert not list(run_dir.glob(".*.tmp"))
