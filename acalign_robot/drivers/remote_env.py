"""A gymnasium Env backed by a driver server, so any gymnasium code can drive the robot or the sim over ZeroMQ.

The spaces come from the driver's handshake (float32 boxes); `reset` and `step` are one control request each.
A driver that does not answer within `timeout_s` raises TransportTimeout: a gymnasium loop has no SAFE state
to fall back to, so the caller decides. The driver's watchdog still applies: a caller that pauses longer than the
driver's `watchdog_ms` between steps sees the safe action applied meanwhile (`info["watchdog_fired"]`); give
slow gymnasium code a driver with a longer watchdog.
"""

from __future__ import annotations

import contextlib
from typing import Any

import gymnasium as gym
import numpy as np

from acalign_robot.wire import protocol as p
from acalign_robot.wire.channels import ControlClient, TransportTimeout
from acalign_robot.wire.transport import ZmqControlClient

__all__ = ["RemoteEnv"]


class RemoteEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, endpoint: str | None = None, *, client: ControlClient | None = None, timeout_s: float = 2.0):
        if (endpoint is None) == (client is None):
            raise ValueError("RemoteEnv needs exactly one of an endpoint or a control client")
        self._client = client if client is not None else ZmqControlClient(endpoint)
        self._owns_client = client is None
        self.timeout_s = timeout_s
        hello = self._request(p.Hello(client_name="remote-env", role="gymnasium"), p.HelloReply)
        self.hello = hello
        self.observation_space = gym.spaces.Box(
            hello.observation_space.low.astype(np.float32),
            hello.observation_space.high.astype(np.float32),
            dtype=np.float32,
        )
        self.action_space = gym.spaces.Box(
            hello.action_space.low.astype(np.float32), hello.action_space.high.astype(np.float32), dtype=np.float32
        )
        self._tick = 0

    def _request(self, message: p.Message, expected: type):
        reply = self._client.request(message, self.timeout_s)
        if isinstance(reply, p.Error):
            raise RuntimeError(f"driver refused {type(message).__name__}: {reply.code}: {reply.message}")
        if not isinstance(reply, expected):
            raise RuntimeError(f"driver answered {type(message).__name__} with {type(reply).__name__}")
        return reply

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        reply = self._request(p.Reset(seed=seed), p.ResetReply)
        return np.asarray(reply.obs, dtype=np.float32), {}

    def step(self, action):
        self._tick += 1
        action = np.asarray(action, dtype=np.float32).reshape(self.action_space.shape)
        reply = self._request(p.Step(tick=self._tick, action=action), p.StepReply)
        # The driver's timestamp stays out of `info`, which must be deterministic for a seed and an action.
        self.last_driver_time_s = reply.driver_time_s
        info = {
            "watchdog_fired": reply.watchdog_fired,
            "safe_action_applied": reply.safe_action_applied,
            "estopped": reply.estopped,
        }
        return np.asarray(reply.obs, dtype=np.float32), float(reply.reward), reply.terminated, reply.truncated, info

    def close(self):
        """End the driver session (its watchdog stops holding the robot for us), then close our connection."""
        with contextlib.suppress(TransportTimeout):
            self._client.request(p.Release(reason="RemoteEnv closed"), self.timeout_s)
        if self._owns_client:
            self._client.close()
