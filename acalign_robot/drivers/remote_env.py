"""A gymnasium Env backed by a driver server, so any gymnasium code can drive the robot or the sim over ZeroMQ.

Registered as `acalign/Remote-v0` when this module is imported (gymnasium is not a dependency of the robot computer's
install, so the registration cannot live in the package's __init__):

    import acalign_robot.drivers.remote_env  # noqa: F401  (registers acalign/Remote-v0)
    env = gym.make("acalign/Remote-v0", endpoint="tcp://127.0.0.1:5555", render_mode="rgb_array")

or, without the import, `gym.make("acalign_robot.drivers.remote_env:acalign/Remote-v0", endpoint=...)`.

The spaces come from the driver's handshake (float32 boxes); `reset` and `step` are one control request each; `info`
holds the driver's own step report (StepReply.info, e.g. MuJoCo's `applied_action`) and the three safety flags
`watchdog_fired`, `safe_action_applied`, `estopped`. A driver that does not answer within `timeout_s` raises
TransportTimeout: a gymnasium loop has no SAFE state to fall back to, so the caller decides.

Pauses: gymnasium code thinks between steps (a gradient update, a print, a breakpoint) for longer than the driver's
watchdog. With `pause_s` > 0 (the default, 60 s) the env asks the driver to stop the sim's time while it is silent:
the watchdog does not step the sim with the safe action meanwhile, and the session stays this env's for up to
`pause_s` of silence. Only a simulator accepts that; a robot's driver refuses the reset (PauseRefused), and the
caller must choose `pause_s=0`, under which the watchdog holds the robot with its safe action whenever steps stop
and `info["watchdog_fired"]` says so (docs/safety.md, docs/remote_env.md).

One client drives a driver at a time: a second env's reset while this one's session is live raises DriverBusy.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

from acalign_robot.wire import protocol as p
from acalign_robot.wire.channels import ControlClient, TransportError
from acalign_robot.wire.transport import ZmqControlClient

__all__ = ["ENV_ID", "DriverBusy", "PauseRefused", "RemoteEnv"]

ENV_ID = "acalign/Remote-v0"
_ENTRY_POINT = "acalign_robot.drivers.remote_env:RemoteEnv"
# A driver's first render opens its GL context: 1.9 s with software EGL on a loaded 2-core machine, 0.5 s per frame
# after that, far over a step's timeout.
RENDER_TIMEOUT_S = 30.0


class DriverBusy(RuntimeError):
    """Another client's session holds the driver."""


class PauseRefused(RuntimeError):
    """The driver cannot pause (a robot): reset with pause_s=0 and accept its watchdog."""


class RemoteEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        client: ControlClient | None = None,
        timeout_s: float = 2.0,
        pause_s: float = 60.0,
        render_mode: str | None = None,
    ):
        if (endpoint is None) == (client is None):
            raise ValueError("RemoteEnv needs exactly one of an endpoint or a control client")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode {render_mode!r}: a RemoteEnv renders rgb_array or nothing")
        self._client = client if client is not None else ZmqControlClient(endpoint)
        self._owns_client = client is None
        self.endpoint = endpoint if endpoint is not None else "<client>"
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.render_mode = render_mode
        self._in_session = False  # this env's Reset opened a session that it has not released
        self._closed = False
        try:
            hello = self._request(p.Hello(client_name="remote-env", role="gymnasium"), p.HelloReply)
            if render_mode is not None and not hello.can_render:
                raise ValueError(f"driver {hello.driver_name!r} at {self.endpoint} cannot render")
        except BaseException:
            self.close()
            raise
        self.hello = hello
        self.metadata = {**self.metadata, "render_fps": round(1.0 / hello.control_period_s)}
        self.observation_space = gym.spaces.Box(
            hello.observation_space.low.astype(np.float32),
            hello.observation_space.high.astype(np.float32),
            dtype=np.float32,
        )
        self.action_space = gym.spaces.Box(
            hello.action_space.low.astype(np.float32), hello.action_space.high.astype(np.float32), dtype=np.float32
        )
        if endpoint is not None:  # gym.make sets its own; built directly, the env still says how to make another
            kwargs = {"endpoint": endpoint, "timeout_s": timeout_s, "pause_s": pause_s}
            self.spec = EnvSpec(ENV_ID, _ENTRY_POINT, nondeterministic=True, kwargs=kwargs)
        self._tick = 0

    def _request(self, message: p.Message, expected: type, timeout_s: float | None = None):
        reply = self._client.request(message, self.timeout_s if timeout_s is None else timeout_s)
        if isinstance(reply, p.Error):
            what = f"driver at {self.endpoint} refused {type(message).__name__}"
            if reply.code == "session":
                raise DriverBusy(f"{what}: {reply.message}")
            if reply.code == "pause":
                raise PauseRefused(f"{what}: {reply.message}; pass pause_s=0 to RemoteEnv")
            raise RuntimeError(f"{what}: {reply.code}: {reply.message}")
        if not isinstance(reply, expected):
            raise RuntimeError(
                f"driver at {self.endpoint} answered {type(message).__name__} with {type(reply).__name__}"
            )
        return reply

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        reply = self._request(p.Reset(seed=seed, pause_s=self.pause_s), p.ResetReply)
        self._in_session = True
        return np.array(reply.obs, dtype=np.float32), {}

    def step(self, action):
        self._tick += 1
        action = np.asarray(action, dtype=np.float32).reshape(self.action_space.shape)
        reply = self._request(p.Step(tick=self._tick, action=action), p.StepReply)
        # The driver's timestamp stays out of `info`, which must be deterministic for a seed and an action.
        self.last_driver_time_s = reply.driver_time_s
        info = {
            **{key: np.array(value) if isinstance(value, np.ndarray) else value for key, value in reply.info.items()},
            "watchdog_fired": reply.watchdog_fired,
            "safe_action_applied": reply.safe_action_applied,
            "estopped": reply.estopped,
        }
        return np.array(reply.obs, dtype=np.float32), float(reply.reward), reply.terminated, reply.truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        reply = self._request(p.Render(), p.RenderReply, max(self.timeout_s, RENDER_TIMEOUT_S))
        return np.array(reply.rgb)  # a writable copy of the frame's bytes

    def close(self):
        """End the driver session (its watchdog stops holding the robot for us), then close our connection.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._in_session:
                self._client.request(p.Release(reason="RemoteEnv closed"), self.timeout_s)
        except TransportError:  # the driver is gone: there is no session left to release
            pass
        finally:
            if self._owns_client:
                self._client.close()


gym.register(ENV_ID, entry_point=_ENTRY_POINT, nondeterministic=True)
