"""libzmq 4.3.5 aborts a process (assertion `!_io_error`) when a connection whose receive queue was full sees its
peer go away (through a ZMTP heartbeat, or as a frozen process resumes). Neither end of the transitions channel nor
a driver may be killed that way: each test runs one end in a child process on 127.0.0.1 and checks that it outlives
a peer that fills its queue and leaves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zmq

from acalign_robot.wire.channels import TransportTimeout, free_tcp_endpoint
from acalign_robot.wire.protocol import Step, TransitionAck, encode
from acalign_robot.wire.transport import ZmqControlClient, ZmqTransitionReceiver
from tests.learner_helpers import transition_batch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HEARTBEATS_S = 3.0  # three heartbeat intervals: where libzmq would have aborted


def child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE, text=True)


def outlives_a_flood(server_code: str, frames: list[list[bytes]]) -> int:
    """Run `server_code` (binds sys.argv[1], prints "bound", sleeps sys.argv[2] s without reading, then reads all and
    prints "taken N") in a child; flood it with `frames` and leave while its queue is full; return N."""
    endpoint = free_tcp_endpoint()
    server = child(server_code, endpoint, str(1.0 + HEARTBEATS_S))
    try:
        assert server.stdout.readline().strip() == "bound"
        flood = zmq.Context.instance().socket(zmq.DEALER)
        flood.setsockopt(zmq.SNDHWM, 10_000)
        flood.connect(endpoint)
        for parts in frames:
            flood.send_multipart(parts)
        time.sleep(1.0)
        flood.close(linger=0)  # gone while the server's queue for it is full
        assert server.wait(timeout=30) == 0
        return int(server.stdout.readline().split()[1])
    finally:
        server.kill()
        server.wait()


def test_the_learners_receiver_outlives_a_peer_that_fills_its_queue_and_leaves():
    receiver = """
        import sys, time
        from acalign_robot.wire.transport import ZmqTransitionReceiver
        with ZmqTransitionReceiver(sys.argv[1], queue_messages=4) as receiver:
            print("bound", flush=True)
            time.sleep(float(sys.argv[2]))  # busy (training, a checkpoint) while the peer floods and leaves
            taken = 0
            while receiver.recv(0.5) is not None:
                taken += 1
            print("taken", taken, flush=True)
        """
    assert outlives_a_flood(receiver, [[encode(transition_batch("flood@1", 0, 2))]] * 500) >= 4


def test_a_controllers_sender_outlives_a_learner_that_leaves_while_its_acks_wait_unread():
    endpoint = free_tcp_endpoint()
    with ZmqTransitionReceiver(endpoint) as receiver:
        sender = child(
            """
            import sys, time
            from acalign_robot.wire.transport import ZmqTransitionSender
            from tests.learner_helpers import transition_batch
            with ZmqTransitionSender(sys.argv[1]) as sender:
                sender.send(transition_batch("c@1", 0, 2))
                time.sleep(float(sys.argv[2]))  # not reading acks (shutting down, or stalled)
                acks = 0
                while sender.recv(0.2) is not None:
                    acks += 1
                print("acks", acks, flush=True)
            """,
            endpoint,
            str(2.0 + HEARTBEATS_S),
        )
        try:
            batch = receiver.recv(20.0)
            assert batch is not None and batch.seq == 0
            ack = TransitionAck("c@1", 0, durable_through=-1, highest=0, missing=np.zeros(0, np.int64))
            sent = 0
            for _ in range(100):  # far more than the 16 a DEALER queued before (paced: the learner's SNDHWM is 16)
                sent += receiver.acknowledge(ack)
                time.sleep(0.005)
            assert sent > 16
            time.sleep(1.0)
        except BaseException:
            sender.kill()
            sender.wait()
            raise
    try:  # the learner has gone, with the acks still unread on the other side
        assert sender.wait(timeout=30) == 0
        assert sender.stdout.readline().split() == ["acks", str(sent)]
    finally:
        sender.kill()
        sender.wait()


def test_a_drivers_control_server_outlives_a_peer_that_fills_its_queue_and_leaves():
    """The driver's ROUTER is reachable by any local process; a driver busy in a slow step (a real robot's SDK call)
    does not read meanwhile."""
    server = """
        import sys, time
        from acalign_robot.wire.transport import ZmqControlServer
        with ZmqControlServer(sys.argv[1]) as server:
            print("bound", flush=True)
            time.sleep(float(sys.argv[2]))  # a slow driver step while the peer floods and leaves
            taken = 0
            while server.recv(0.5) is not None:
                taken += 1
            print("taken", taken, flush=True)
        """
    assert outlives_a_flood(server, [[bytes(8), b"x" * 100]] * 5000) >= 1


def test_a_frozen_driver_resumes_alive_with_one_request_waiting():
    """A driver stopped (SIGSTOP, a debugger, a stalled SDK call) while its controller steps on, times out every tick
    and then leaves: the controller's client keeps one request in flight, not one per tick (hundreds of those filled
    the driver's queue, and it aborted as it resumed)."""
    server = child(
        """
        import sys
        from acalign_robot.wire.protocol import Heartbeat
        from acalign_robot.wire.transport import ZmqControlServer
        with ZmqControlServer(sys.argv[1]) as server:
            print("bound", flush=True)
            taken = 0
            while (request := server.recv(1.5)) is not None:
                server.send(request[0], Heartbeat(sender="driver", time_s=0.0, state="running"))
                taken += 1
            print("taken", taken, flush=True)
        """,
        endpoint := free_tcp_endpoint(),
    )
    client = ZmqControlClient(endpoint)
    step = Step(tick=0, action=np.zeros(3, dtype=np.float32))
    try:
        assert server.stdout.readline().strip() == "bound"
        client.request(step, timeout_s=5.0)
        os.kill(server.pid, signal.SIGSTOP)
        stepped_until = time.monotonic() + 1.5
        timeouts = 0
        while time.monotonic() < stepped_until:  # a controller at 125 Hz whose driver never answers
            try:
                client.request(step, timeout_s=0.008)
            except TransportTimeout:
                timeouts += 1
        client.close()
        os.kill(server.pid, signal.SIGCONT)
        assert server.wait(timeout=30) == 0
        assert timeouts > 100
        label, taken = server.stdout.readline().split()
        assert label == "taken" and 1 <= int(taken) <= 2  # the first step, and the one in flight if it got there
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGCONT)
            server.kill()
        server.wait()
