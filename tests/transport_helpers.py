"""Messages and a serving thread shared by the transport tests (importable as tests.transport_helpers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from acalign_robot.wire.channels import ControlServer
from acalign_robot.wire.protocol import (
    Heartbeat,
    Message,
    ProtocolError,
    Step,
    StepReply,
    TransitionBatch,
    error_message,
)

PING = Heartbeat(sender="test", time_s=0.0, state="running")


def batch(seq: int, size: int = 4, obs_dim: int = 11, stream_id: str = "c0") -> TransitionBatch:
    return TransitionBatch(
        stream_id=stream_id,
        seq=seq,
        policy_version=np.zeros(size, np.int64),
        obs=np.zeros((size, obs_dim), np.float32),
        action=np.zeros((size, 3), np.float32),
        reward=np.zeros(size, np.float32),
        next_obs=np.zeros((size, obs_dim), np.float32),
        terminated=np.zeros(size, bool),
        truncated=np.zeros(size, bool),
    )


def answer(request: Message | ProtocolError) -> Message:
    """What a driver answers: an Error for a bad frame, a StepReply to a Step, a Heartbeat otherwise."""
    if isinstance(request, ProtocolError):
        return error_message(request)
    if isinstance(request, Step):
        return StepReply(
            tick=request.tick,
            obs=np.zeros(11),
            reward=0.0,
            terminated=False,
            truncated=False,
            driver_time_s=time.monotonic(),
        )
    return Heartbeat(sender="driver", time_s=time.monotonic(), state="running")


@contextmanager
def serving(server: ControlServer, handler: Callable[[Message | ProtocolError], Message] = answer) -> Iterator[None]:
    """Answer requests on `server` from a thread (which then owns a ZeroMQ socket) until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            got = server.recv(0.01)
            if got is not None:
                server.send(got[0], handler(got[1]))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
