"""Versioned wire messages of the runtime and their codec.

Every message that crosses a socket between driver, controller, learner and supervisor is one small frozen dataclass
below, and travels as one msgpack frame: a map `{"v": PROTOCOL_VERSION, "t": <type tag>, <field>: <value>, ...}`.
A numpy array travels as `[dtype name, shape, raw little-endian bytes]` with the dtype from `WIRE_DTYPES`; nothing
is ever pickled, so a frame can only ever decode into these types, numbers, strings and arrays. The two messages of
every control tick, Step and StepReply, travel in a fixed binary layout instead wherever they fit it (see
"Fixed-layout frames" below): the same fields, read and written with `struct`.

`decode` never trusts its input: a wrong version, an unknown type, a missing, extra or wrongly typed field, an array
whose bytes do not match its dtype and shape, an oversized, truncated or random frame all raise `ProtocolError`
(an `InputError`) with a short machine-readable `code`, and no other exception escapes it. A peer that sent a bad
frame is answered with `error_message(exc)`. `Error` has the same layout in every protocol version, so a peer that
speaks another version can still read why it was refused.

The annotation of each field is its wire schema (see `_CODECS`). Schemas are compiled once at import, so encoding
and decoding the hot-path messages (Step, StepReply) costs a few microseconds and no dataclass introspection.
Messages that hold arrays compare by identity (`eq=False`): compare their fields with numpy instead.

Who sends what:
- control channel, controller (client) -> driver (server), one reply per request:
  Hello -> HelloReply, Reset -> ResetReply, Step -> StepReply, Render -> RenderReply, Release -> Heartbeat,
  Heartbeat -> Heartbeat, Stats -> Stats, EStop -> Heartbeat and Clear -> Heartbeat (the driver's state after
  latching or clearing); a refused request -> Error. Reset opens a session: from then on only that client's Step,
  Reset, Render and Release are accepted, until it sends Release or falls silent for longer than the watchdog (or its
  Reset.pause_s; drivers/server.py). Any process (supervisor, CLI) may connect a control client to the driver to send
  EStop / Clear / Stats.
- transitions channel, controller -> learner: TransitionBatch, and the controller's periodic Stats;
  learner -> controller on the same connection: TransitionAck (which batches the learner holds, so that the
  controller resends what was lost and forgets what the learner has checkpointed).
- policy channel, learner -> controllers: Policy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, get_args

import msgpack
import numpy as np

from acalign_robot.errors import InputError
from acalign_robot.spaces import BoxSpace, RobotLimits

__all__ = [
    "CONTROL_REPLIES",
    "CONTROL_REQUESTS",
    "DEFAULT_MAX_FRAME_BYTES",
    "MAX_INFO_ARRAY_ELEMENTS",
    "MAX_INFO_KEYS",
    "MAX_INFO_KEY_CHARS",
    "MAX_INFO_TEXT_BYTES",
    "MAX_NDIM",
    "MAX_PAUSE_S",
    "MAX_RENDER_PIXELS",
    "POLICY_MESSAGES",
    "PROTOCOL_VERSION",
    "TRANSITION_MESSAGES",
    "TRANSITION_REPLIES",
    "WIRE_DTYPES",
    "Clear",
    "EStop",
    "Error",
    "Heartbeat",
    "Hello",
    "HelloReply",
    "InfoValue",
    "Message",
    "Policy",
    "ProtocolError",
    "Release",
    "Render",
    "RenderReply",
    "Reset",
    "ResetReply",
    "Scalar",
    "Stats",
    "Step",
    "StepReply",
    "TransitionAck",
    "TransitionBatch",
    "check_info",
    "decode",
    "encode",
    "error_message",
]

PROTOCOL_VERSION = 6  # 2: batches and acks name their stream `stream_id` (was `controller_id`); 3: TransitionBatch
# carries `episode_return` (was a Stats key the learner parsed, and lost episodes between two Stats); 4: StepReply
# carries the driver's `info`, Reset asks for `pause_s`, HelloReply says `can_render` / `can_pause`, Render/RenderReply
# 5: HelloReply carries the robot's `limits`; 6: Step and StepReply in the fixed layout
# Upper bound for any frame; each channel passes its own, smaller limit (a policy is the largest message).
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_NDIM = 8
_MAX_ELEMENTS = 2**31  # an empty array's other dimensions (with data, the byte count bounds the shape)
_MAX_NESTING = 32  # depth of a manifest; msgpack itself nests deeper than Python's recursion limit allows us to walk
MAX_ACK_MISSING = 1024  # seqs listed in one TransitionAck
# Schema bounds that make decoding cost proportional to what a message of the type can hold (see `decode`).
MAX_SPACE_ELEMENTS = 4096  # elements of an observation or action space (its units list, a manifest's bounds)
MAX_EXTRAS = 16  # named extra arrays in one TransitionBatch
MAX_STATS_VALUES = 1024  # counters in one Stats
MAX_MANIFEST_OBJECTS = 4 * MAX_SPACE_ELEMENTS + 4096  # msgpack objects in a policy manifest (bounds, normaliser, ...)
# StepReply.info, the driver's own per-step report (motor temperatures, contact flags, the action it applied): small
# by design, it travels every tick and each key becomes a column of the transition log (extras, next to the two the
# controller adds: 2 + MAX_INFO_KEYS <= MAX_EXTRAS).
MAX_INFO_KEYS = 8
MAX_INFO_KEY_CHARS = 32
MAX_INFO_TEXT_BYTES = 64  # UTF-8 bytes of a string value
MAX_INFO_ARRAY_ELEMENTS = 64
MAX_PAUSE_S = 3600.0  # Reset.pause_s: the longest a paused session stays its client's
MAX_RENDER_PIXELS = 512 * 512  # an RGB frame of this many pixels (768 KiB) fits the control channel's 1 MiB frames
assert 2 + MAX_INFO_KEYS <= MAX_EXTRAS, "each info key is a column of TransitionBatch.extras"
_MAX_REPR = 40  # characters of a peer's value quoted back in an error message

# Wire name -> dtype. Little-endian on the wire whatever the host; anything else (object, float16, strings) is refused.
WIRE_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}
_WIRE_NAME = {dtype: name for name, dtype in WIRE_DTYPES.items()}
_BOOL = WIRE_DTYPES["bool"]

Scalar = int | float | str | bool
InfoValue = int | float | bool | str | np.ndarray  # a StepReply.info value (bounds above)


class ProtocolError(InputError):
    """A frame that is not a valid message of this protocol version; `code` says which rule it broke.

    Codes: "version" (missing or other protocol version), "type" (unknown type tag, or a type this channel does not
    carry), "field" (missing, extra or wrongly typed field, or a broken cross-field rule), "array" (dtype not allowed,
    bad shape, byte count != prod(shape) * itemsize), "size" (frame over the receiver's limit), "malformed" (neither
    a msgpack map nor a fixed-layout frame: truncated, trailing or random bytes).
    """

    CODES: ClassVar[frozenset[str]] = frozenset({"version", "type", "field", "array", "size", "malformed"})

    def __init__(self, code: str, detail: str):
        if code not in self.CODES:
            raise ValueError(f"unknown ProtocolError code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _short(value: Any) -> str:
    """A peer's value, quoted back safely: short scalars verbatim, containers by type (their repr could be huge)."""
    if value is not None and type(value) not in (str, bytes, int, float, bool):
        return f"<{type(value).__name__}>"
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


# --- Messages -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Client -> driver, first request on a control connection: who is asking and in which role."""

    TAG: ClassVar[str] = "hello"
    client_name: str
    role: str  # "controller", "supervisor", ...


@dataclass(frozen=True, slots=True, eq=False)
class HelloReply:
    """Driver -> client: the contract of this driver (spaces, timing, safe action)."""

    TAG: ClassVar[str] = "hello_reply"
    driver_name: str
    observation_space: BoxSpace
    action_space: BoxSpace
    control_period_s: float  # the driver's tick; the controller's rate must match it
    watchdog_timeout_s: float  # no Step within this long -> the driver applies safe_action on its own
    safe_action: np.ndarray  # (action_dim,), what the driver holds in SAFE / e-stop / watchdog
    can_render: bool = False  # the driver answers Render with an RGB frame
    can_pause: bool = False  # a simulator whose time stops between steps: it accepts Reset.pause_s > 0
    limits: RobotLimits | None = None  # joint, velocity, torque and workspace limits over the observation

    def _check(self) -> None:
        for name in ("control_period_s", "watchdog_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ProtocolError("field", f"hello_reply.{name}: must be a positive number, got {_short(value)}")
        space = self.action_space
        if self.safe_action.shape != space.shape:
            raise ProtocolError(
                "field", f"hello_reply.safe_action: shape {self.safe_action.shape} != action space {space.shape}"
            )
        inside = np.all((space.low <= self.safe_action) & (self.safe_action <= space.high))
        if not inside:
            raise ProtocolError("field", "hello_reply.safe_action: outside the action bounds (or not finite)")
        if self.limits is not None:
            try:
                self.limits.check(self.observation_space.shape[0])
            except ValueError as exc:
                raise ProtocolError("field", f"hello_reply.{exc}") from None


@dataclass(frozen=True, slots=True)
class Reset:
    """Client -> driver: start a new episode, optionally seeded (simulators), and say how the watchdog treats pauses.

    `pause_s` 0 (a controller): once stepping, no Step within the watchdog timeout -> the driver applies its safe action
    every control period, and another client may take the session over. `pause_s` > 0 (a gymnasium caller that thinks
    between steps): the driver's time stops while the client is silent, its watchdog never steps, and the session stays
    the client's for up to `pause_s` of silence. Only a driver with `can_pause` (a simulator) accepts it: a robot's
    time does not stop (docs/safety.md).
    """

    TAG: ClassVar[str] = "reset"
    seed: int | None = None
    pause_s: float = 0.0

    def _check(self) -> None:
        if self.seed is not None and self.seed < 0:
            raise ProtocolError("field", f"reset.seed: must be >= 0, got {self.seed}")
        if not 0.0 <= self.pause_s <= MAX_PAUSE_S:  # also refuses NaN
            raise ProtocolError("field", f"reset.pause_s: must be in [0, {MAX_PAUSE_S}], got {_short(self.pause_s)}")


@dataclass(frozen=True, slots=True, eq=False)
class ResetReply:
    """Driver -> client: the first observation of the episode."""

    TAG: ClassVar[str] = "reset_reply"
    obs: np.ndarray  # (obs_dim,)
    driver_time_s: float  # the driver's time.monotonic(): compare only with other driver timestamps


@dataclass(frozen=True, slots=True, eq=False)
class Step:
    """Controller -> driver, once per control tick: apply this action."""

    TAG: ClassVar[str] = "step"
    tick: int  # the controller's tick counter; lets the driver refuse a late (stale) step
    action: np.ndarray  # (action_dim,)


@dataclass(frozen=True, slots=True, eq=False)
class StepReply:
    """Driver -> controller: the observation after the step, and what the driver really did."""

    TAG: ClassVar[str] = "step_reply"
    tick: int  # echo of Step.tick
    obs: np.ndarray  # (obs_dim,)
    reward: float
    terminated: bool
    truncated: bool
    driver_time_s: float  # the driver's time.monotonic() when obs was read
    watchdog_fired: bool = False  # the driver's watchdog applied the safe action since the last reply
    safe_action_applied: bool = False  # the driver applied its safe action instead of Step.action
    estopped: bool = False  # the driver is latched in e-stop until a Clear
    clears: int = 0  # Clear messages the driver has received: an increase is the operator releasing SAFE
    # The driver's own report on the step (StepResult.info): at most MAX_INFO_KEYS names, each a number, bool, short
    # string or small array (see `check_info`). The MuJoCo driver reports `applied_action`.
    info: dict[str, InfoValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Render:
    """The session's client -> driver: an RGB image of the scene now (drivers whose HelloReply says `can_render`)."""

    TAG: ClassVar[str] = "render"


@dataclass(frozen=True, slots=True, eq=False)
class RenderReply:
    """Driver -> client: the frame, (height, width, 3) uint8, at most MAX_RENDER_PIXELS pixels."""

    TAG: ClassVar[str] = "render_reply"
    rgb: np.ndarray

    def _check(self) -> None:
        shape = self.rgb.shape
        if (
            self.rgb.dtype != np.uint8
            or len(shape) != 3
            or shape[2] != 3
            or not 0 < shape[0] * shape[1] <= MAX_RENDER_PIXELS
        ):
            raise ProtocolError(
                "field",
                f"render_reply.rgb: expected (h, w, 3) uint8 of at most {MAX_RENDER_PIXELS} pixels, got "
                f"{shape} {self.rgb.dtype}",
            )


@dataclass(frozen=True, slots=True, eq=False)
class TransitionBatch:
    """Controller -> learner: consecutive executed transitions; arrays share their first axis (batch, ...)."""

    TAG: ClassVar[str] = "transitions"
    MAX_ID_CHARS: ClassVar[int] = 256  # a stream id is a name: the learner keeps it in its status and checkpoint
    stream_id: str  # the sending stream, one per controller process (`<controller name>@<pid>`)
    seq: int  # per-stream batch counter: a gap at the learner means batches were dropped
    policy_version: np.ndarray  # (batch,) int, the policy version that chose each action
    obs: np.ndarray  # (batch, obs_dim)
    action: np.ndarray  # (batch, action_dim), the action after the safety filter
    reward: np.ndarray  # (batch,) float
    next_obs: np.ndarray  # (batch, obs_dim)
    terminated: np.ndarray  # (batch,) bool
    truncated: np.ndarray  # (batch,) bool
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # policy_action, safety_flags: (batch, ...)
    # The oldest seq the controller can still resend (its ResendWindow's first); the learner writes off what it lacks
    # below it at once. None: a sender that resends nothing (every missing seq below `seq` is gone).
    resend_from: int | None = None
    # The return (sum of rewards since the driver's reset) of the episode that ends with this batch's last transition;
    # None when no episode ends here. A controller sends a batch at each episode's end, so each batch ends at most
    # one, and delivery exactly once gives the learner every episode once.
    episode_return: float | None = None

    def __len__(self) -> int:
        return self.reward.shape[0]

    def _check(self) -> None:
        if len(self.stream_id) > self.MAX_ID_CHARS:
            raise ProtocolError("field", f"transitions.stream_id: more than {self.MAX_ID_CHARS} characters")
        if self.seq < 0 or not (self.resend_from is None or 0 <= self.resend_from <= self.seq):
            raise ProtocolError("field", "transitions: expected 0 <= resend_from <= seq (or no resend_from)")
        if self.reward.ndim != 1:
            raise ProtocolError("field", f"transitions.reward: expected shape (batch,), got {self.reward.shape}")
        batch = self.reward.shape[0]
        kinds = {"policy_version": "iu", "reward": "f", "terminated": "b", "truncated": "b"}
        for name, kinds_allowed in kinds.items():
            value = getattr(self, name)
            if value.shape != (batch,) or value.dtype.kind not in kinds_allowed:
                raise ProtocolError(
                    "field",
                    f"transitions.{name}: expected ({batch},) of kind {kinds_allowed}, got {value.shape} {value.dtype}",
                )
        if self.obs.ndim < 2 or self.obs.shape[0] != batch or self.next_obs.shape != self.obs.shape:
            raise ProtocolError(
                "field", f"transitions: obs {self.obs.shape} / next_obs {self.next_obs.shape} for batch {batch}"
            )
        arrays = {"action": self.action, **self.extras}
        for name, value in arrays.items():
            if value.ndim < 1 or value.shape[0] != batch:
                raise ProtocolError("field", f"transitions.{name}: first axis must be the batch ({batch})")
        if self.episode_return is not None:
            if not math.isfinite(self.episode_return):
                raise ProtocolError("field", f"transitions.episode_return: must be finite, got {self.episode_return}")
            if batch == 0 or not (self.terminated[-1] or self.truncated[-1]):
                raise ProtocolError("field", "transitions.episode_return: the batch's last transition ends no episode")


@dataclass(frozen=True, slots=True, eq=False)
class TransitionAck:
    """Learner -> one controller stream: which of its batches the learner holds.

    `received_through` and `durable_through` are contiguous marks (every seq at or below was taken; -1: none).
    A batch at or below `durable_through` is in the learner's last checkpoint, so the controller may forget it;
    `missing` lists seqs below `highest` that never arrived (the first MAX_ACK_MISSING), which the controller resends,
    as it does batches above `highest` that have waited too long.
    """

    TAG: ClassVar[str] = "transition_ack"
    stream_id: str
    received_through: int
    durable_through: int
    highest: int  # the highest seq taken (-1: none)
    missing: np.ndarray  # (n,) int64, ascending

    def _check(self) -> None:
        if not -1 <= self.durable_through <= self.received_through <= self.highest:
            raise ProtocolError(
                "field", "transition_ack: expected -1 <= durable_through <= received_through <= highest"
            )
        if self.missing.ndim != 1 or self.missing.dtype.kind not in "iu" or self.missing.shape[0] > MAX_ACK_MISSING:
            raise ProtocolError("field", f"transition_ack.missing: expected (<= {MAX_ACK_MISSING},) integers")


@dataclass(frozen=True, slots=True)
class Policy:
    """Learner -> controllers: a policy version, its ONNX bytes and its manifest (JSON-like dict)."""

    TAG: ClassVar[str] = "policy"
    version: int
    onnx: bytes
    manifest: dict[str, Any]

    def _check(self) -> None:
        if self.version < 0 or not self.onnx:
            raise ProtocolError("field", "policy: version must be >= 0 and onnx non-empty")


@dataclass(frozen=True, slots=True)
class Release:
    """The controlling client -> driver: the session is over (a clean stop). The driver disarms its watchdog, so it
    does not step the robot with the safe action by itself after the controller has gone."""

    TAG: ClassVar[str] = "release"
    reason: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Liveness and state of a process; the driver's answer to Heartbeat, EStop and Clear."""

    TAG: ClassVar[str] = "heartbeat"
    sender: str
    time_s: float  # the sender's time.monotonic()
    state: str  # e.g. "running", "estopped", "safe"


@dataclass(frozen=True, slots=True)
class EStop:
    """Latch the receiver into its safe state until a Clear."""

    TAG: ClassVar[str] = "estop"
    reason: str
    source: str


@dataclass(frozen=True, slots=True)
class Clear:
    """Release an e-stop latch."""

    TAG: ClassVar[str] = "clear"
    source: str


@dataclass(frozen=True, slots=True)
class Stats:
    """Flat counters and timings of a process (counters, p50/p99 in seconds, versions)."""

    TAG: ClassVar[str] = "stats"
    source: str
    values: dict[str, Scalar]


@dataclass(frozen=True, slots=True)
class Error:
    """A refused request. `code` is machine-readable (a ProtocolError code or an application code)."""

    TAG: ClassVar[str] = "error"
    code: str
    message: str


Message = (
    Hello
    | HelloReply
    | Reset
    | ResetReply
    | Step
    | StepReply
    | Render
    | RenderReply
    | TransitionBatch
    | TransitionAck
    | Policy
    | Release
    | Heartbeat
    | EStop
    | Clear
    | Stats
    | Error
)

# What each channel carries; a receiver refuses anything else with ProtocolError("type").
CONTROL_REQUESTS: tuple[type, ...] = (Hello, Reset, Step, Render, Release, Heartbeat, EStop, Clear, Stats)
CONTROL_REPLIES: tuple[type, ...] = (HelloReply, ResetReply, StepReply, RenderReply, Heartbeat, Stats, Error)
TRANSITION_MESSAGES: tuple[type, ...] = (TransitionBatch, Stats)
TRANSITION_REPLIES: tuple[type, ...] = (TransitionAck,)
POLICY_MESSAGES: tuple[type, ...] = (Policy,)


def error_message(exc: ProtocolError) -> Error:
    """The Error to send back to a peer whose frame raised `exc`."""
    return Error(code=exc.code, message=exc.detail[:200])


# --- Field codecs: one (encode, decode) pair per annotation ---------------------------------------------------------
# Encoders turn local values (numpy scalars included) into msgpack-native ones; decoders check a peer's value and
# raise ProtocolError naming the field (`where`, e.g. "step.action").


def _enc_array(value: Any) -> list:
    array = np.asarray(value)
    name = _WIRE_NAME.get(array.dtype)
    if name is None:  # a big-endian or disallowed dtype
        little = array.dtype.newbyteorder("<")
        name = _WIRE_NAME.get(little)
        if name is None:
            raise ProtocolError("array", f"dtype {array.dtype} is not allowed on the wire ({', '.join(WIRE_DTYPES)})")
        array = array.astype(little)
    return [name, list(array.shape), array.tobytes()]


def _dec_array(raw: Any, where: str) -> np.ndarray:
    """A read-only array viewing the frame's bytes (copy it to write)."""
    if type(raw) is not list or len(raw) != 3:
        raise ProtocolError("array", f"{where}: expected [dtype, shape, bytes]")
    name, shape, data = raw
    dtype = WIRE_DTYPES.get(name) if type(name) is str else None
    if dtype is None:
        raise ProtocolError("array", f"{where}: dtype {_short(name)} is not allowed")
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise ProtocolError("array", f"{where}: shape must be a list of at most {MAX_NDIM} sizes")
    count = 1
    for size in shape:
        if type(size) is not int or size < 0:
            raise ProtocolError("array", f"{where}: bad size {_short(size)} in shape")
        count *= size
    if type(data) is not bytes or len(data) != count * dtype.itemsize:
        raise ProtocolError("array", f"{where}: byte count does not match {name} {shape}")
    if count == 0 and math.prod(max(size, 1) for size in shape) > _MAX_ELEMENTS:
        raise ProtocolError("array", f"{where}: empty shape {shape} has a dimension numpy cannot hold")
    if dtype is _BOOL and data.translate(None, b"\x00\x01"):
        raise ProtocolError("array", f"{where}: bool bytes must be 0 or 1")
    array = np.frombuffer(data, dtype)
    return array if len(shape) == 1 else array.reshape(shape)  # reshape costs ~0.4 us: skip it on the 1-D hot path


def _dec_int(raw: Any, where: str) -> int:
    if type(raw) is not int:
        raise ProtocolError("field", f"{where}: expected an integer, got {type(raw).__name__}")
    return raw


def _dec_optional_int(raw: Any, where: str) -> int | None:
    return None if raw is None else _dec_int(raw, where)


def _dec_float(raw: Any, where: str) -> float:
    if type(raw) is float:
        return raw
    if type(raw) is int:  # a peer may write 0 for 0.0
        return float(raw)
    raise ProtocolError("field", f"{where}: expected a number, got {type(raw).__name__}")


def _dec_optional_float(raw: Any, where: str) -> float | None:
    return None if raw is None else _dec_float(raw, where)


def _exact(kind: type) -> Callable[[Any, str], Any]:
    def decode_exact(raw: Any, where: str) -> Any:
        if type(raw) is not kind:
            raise ProtocolError("field", f"{where}: expected {kind.__name__}, got {type(raw).__name__}")
        return raw

    return decode_exact


def _dec_dict(raw: Any, where: str) -> dict:
    if type(raw) is not dict or any(type(key) is not str for key in raw):
        raise ProtocolError("field", f"{where}: expected a map with string keys")
    return raw


def _enc_space(space: BoxSpace) -> dict:
    return {"low": _enc_array(space.low), "high": _enc_array(space.high), "units": list(space.units)}


def _dec_space(raw: Any, where: str) -> BoxSpace:
    raw = _dec_dict(raw, where)
    if set(raw) != {"low", "high", "units"}:
        raise ProtocolError("field", f"{where}: a space has exactly low, high, units")
    low = _dec_array(raw["low"], f"{where}.low")
    high = _dec_array(raw["high"], f"{where}.high")
    units = raw["units"]
    if low.dtype.kind != "f" or high.shape != low.shape:
        raise ProtocolError("field", f"{where}: low and high must be float arrays of one shape")
    if low.size > MAX_SPACE_ELEMENTS:
        raise ProtocolError("field", f"{where}: {low.size} elements, more than {MAX_SPACE_ELEMENTS}")
    if type(units) is not list or len(units) != low.size or any(type(unit) is not str for unit in units):
        raise ProtocolError("field", f"{where}.units: one string per element ({low.size})")
    if not np.all(low <= high):  # also refuses NaN bounds
        raise ProtocolError("field", f"{where}: low <= high must hold everywhere")
    return BoxSpace(low=low, high=high, units=tuple(units))


_LIMIT_SPACES = ("joint_position", "joint_velocity", "joint_torque", "workspace")
_LIMIT_INDICES = ("joint_position_index", "joint_velocity_index", "end_effector_index")


def _enc_limits(limits: RobotLimits | None) -> dict | None:
    if limits is None:
        return None
    return {
        **{name: _enc_space(getattr(limits, name)) for name in _LIMIT_SPACES},
        **{name: operator.index(getattr(limits, name)) for name in _LIMIT_INDICES},
    }


def _dec_limits(raw: Any, where: str) -> RobotLimits | None:
    """Shapes and indices are checked against the observation in HelloReply._check."""
    if raw is None:
        return None
    raw = _dec_dict(raw, where)
    if set(raw) != {*_LIMIT_SPACES, *_LIMIT_INDICES}:
        raise ProtocolError("field", f"{where}: limits have exactly {', '.join((*_LIMIT_SPACES, *_LIMIT_INDICES))}")
    return RobotLimits(
        **{name: _dec_space(raw[name], f"{where}.{name}") for name in _LIMIT_SPACES},
        **{name: _dec_int(raw[name], f"{where}.{name}") for name in _LIMIT_INDICES},
    )


def _enc_arrays(arrays: dict[str, Any]) -> dict:
    return {str(name): _enc_array(value) for name, value in arrays.items()}


def _dec_arrays(raw: Any, where: str) -> dict[str, np.ndarray]:
    raw = _dec_dict(raw, where)
    if len(raw) > MAX_EXTRAS:
        raise ProtocolError("field", f"{where}: {len(raw)} arrays, more than {MAX_EXTRAS}")
    return {name: _dec_array(value, f"{where}.{name}") for name, value in raw.items()}


def _enc_scalars(values: dict[str, Any]) -> dict:
    out = {}
    for name, value in values.items():
        value = value.item() if isinstance(value, np.generic) else value
        if type(value) not in (int, float, str, bool):
            raise TypeError(f"{name}: expected a number or string, got {type(value).__name__}")
        out[str(name)] = value
    return out


def _dec_scalars(raw: Any, where: str) -> dict[str, Scalar]:
    raw = _dec_dict(raw, where)
    if len(raw) > MAX_STATS_VALUES:
        raise ProtocolError("field", f"{where}: {len(raw)} values, more than {MAX_STATS_VALUES}")
    for name, value in raw.items():
        if type(value) not in (int, float, str, bool):
            raise ProtocolError("field", f"{where}.{name}: expected a number or string, got {type(value).__name__}")
    return raw


def _info_value_problem(value: Any) -> str | None:
    """Why `value` cannot be a StepReply.info value (None: it can); the same rule for a driver and a peer."""
    kind = type(value)
    if kind is bool or kind is float:
        return None
    if kind is int:
        return None if -(2**63) <= value < 2**64 else "an integer outside 64 bits"
    if kind is str:
        if len(value) > MAX_INFO_TEXT_BYTES:
            return f"a string of more than {MAX_INFO_TEXT_BYTES} UTF-8 bytes"
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: msgpack could not send it, and the server loop would stop there
            return "a string that is not valid UTF-8 (a lone surrogate)"
        if len(encoded) > MAX_INFO_TEXT_BYTES:
            return f"a string of more than {MAX_INFO_TEXT_BYTES} UTF-8 bytes"
        return None
    if kind is np.ndarray:
        if value.size > MAX_INFO_ARRAY_ELEMENTS:
            return f"an array of {value.size} elements, more than {MAX_INFO_ARRAY_ELEMENTS}"
        return None
    return f"a {kind.__name__}"


_INFO_RULE = (
    f"an info value is a number, a bool, a string of up to {MAX_INFO_TEXT_BYTES} UTF-8 bytes or a numpy array of up to "
    f"{MAX_INFO_ARRAY_ELEMENTS} elements ({', '.join(WIRE_DTYPES)})"
)


def check_info(info: Any, where: str = "info") -> dict[str, InfoValue]:
    """A driver's StepResult.info as it goes on the wire (numpy scalars as Python numbers, arrays in a wire dtype);
    ProtocolError("field") naming the key and the rule for anything else. The driver server calls it on every step,
    so a driver that reports something else fails at the driver with this message, not with a malformed frame."""
    if not isinstance(info, dict):
        raise ProtocolError("field", f"{where}: expected a dict, got {type(info).__name__}")
    if len(info) > MAX_INFO_KEYS:
        raise ProtocolError("field", f"{where}: {len(info)} keys, more than {MAX_INFO_KEYS}")
    out: dict[str, InfoValue] = {}
    for key, value in info.items():
        if type(key) is not str or not 0 < len(key) <= MAX_INFO_KEY_CHARS:
            raise ProtocolError(
                "field", f"{where}: key {_short(key)} is not a string of 1 to {MAX_INFO_KEY_CHARS} chars"
            )
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray) and value.dtype not in _WIRE_NAME:
            little = value.dtype.newbyteorder("<")
            if little not in _WIRE_NAME:
                raise ProtocolError("field", f"{where}.{key}: dtype {value.dtype}; {_INFO_RULE}")
            value = value.astype(little)
        problem = _info_value_problem(value)
        if problem is not None:
            raise ProtocolError("field", f"{where}.{key}: {problem}; {_INFO_RULE}")
        out[key] = value
    return out


def _enc_info(info: dict[str, Any]) -> dict:
    return {
        key: _enc_array(value) if type(value) is np.ndarray else value
        for key, value in check_info(info, "step_reply.info").items()
    }


def _dec_info(raw: Any, where: str) -> dict[str, InfoValue]:
    raw = _dec_dict(raw, where)
    if len(raw) > MAX_INFO_KEYS:
        raise ProtocolError("field", f"{where}: {len(raw)} keys, more than {MAX_INFO_KEYS}")
    out: dict[str, InfoValue] = {}
    for key, value in raw.items():
        if not 0 < len(key) <= MAX_INFO_KEY_CHARS:
            raise ProtocolError("field", f"{where}: key {_short(key)} is not 1 to {MAX_INFO_KEY_CHARS} characters")
        if type(value) is list:  # the only list an info value can be is an array
            value = _dec_array(value, f"{where}.{key}")
        problem = _info_value_problem(value)
        if problem is not None:
            raise ProtocolError("field", f"{where}.{key}: {problem}")
        out[key] = value
    return out


def _check_json(value: Any, where: str, depth: int = 0) -> None:
    if depth > _MAX_NESTING:
        raise ProtocolError("field", f"{where}: nested deeper than {_MAX_NESTING}")
    if value is None or type(value) in (str, int, float, bool):
        return
    if type(value) is list:
        for item in value:
            _check_json(item, where, depth + 1)
    elif type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ProtocolError("field", f"{where}: keys must be strings")
            _check_json(item, f"{where}.{key}", depth + 1)
    else:
        raise ProtocolError("field", f"{where}: {type(value).__name__} is not JSON-like")


def _dec_json(raw: Any, where: str) -> dict[str, Any]:
    _check_json(_dec_dict(raw, where), where)
    return raw


def _same(value: Any) -> Any:
    return value


_ARRAY_OBJECTS = 4 + MAX_NDIM  # [dtype, [sizes...], bytes]
_SPACE_OBJECTS = 7 + 2 * _ARRAY_OBJECTS + MAX_SPACE_ELEMENTS  # {low, high, units: [one string per element]}


@dataclass(frozen=True)
class _Codec:
    encode: Callable[[Any], Any]
    decode: Callable[[Any, str], Any]  # (peer's value, "tag.field") -> value, or ProtocolError
    max_objects: int  # msgpack objects (containers and scalars) a valid value of this field holds at most


# Annotation (as written in the dataclasses above) -> its codec. A field with any other annotation is a bug that
# _compile reports at import time.
_CODECS: dict[str, _Codec] = {
    "int": _Codec(operator.index, _dec_int, 1),  # index(): numpy integers pass, a float is refused, not truncated
    "int | None": _Codec(lambda value: None if value is None else operator.index(value), _dec_optional_int, 1),
    "float": _Codec(float, _dec_float, 1),
    "float | None": _Codec(lambda value: None if value is None else float(value), _dec_optional_float, 1),
    "bool": _Codec(bool, _exact(bool), 1),
    "str": _Codec(_same, _exact(str), 1),
    "bytes": _Codec(bytes, _exact(bytes), 1),
    "np.ndarray": _Codec(_enc_array, _dec_array, _ARRAY_OBJECTS),
    "BoxSpace": _Codec(_enc_space, _dec_space, _SPACE_OBJECTS),
    "RobotLimits | None": _Codec(_enc_limits, _dec_limits, 1 + 14 + 4 * _SPACE_OBJECTS),
    "dict[str, np.ndarray]": _Codec(_enc_arrays, _dec_arrays, 1 + MAX_EXTRAS * (1 + _ARRAY_OBJECTS)),
    "dict[str, Scalar]": _Codec(_enc_scalars, _dec_scalars, 1 + 2 * MAX_STATS_VALUES),
    "dict[str, Any]": _Codec(_same, _dec_json, MAX_MANIFEST_OBJECTS),
    "dict[str, InfoValue]": _Codec(_enc_info, _dec_info, 1 + MAX_INFO_KEYS * (1 + _ARRAY_OBJECTS)),
}


@dataclass(frozen=True)
class _Schema:
    cls: type
    tag: str
    n_keys: int  # fields + "v" + "t"
    encoders: tuple[tuple[str, Callable[[Any], Any]], ...]
    decoders: tuple[tuple[str, str, Callable[[Any, str], Any]], ...]  # (name, "tag.name", decode)
    check: Callable[[Any], None] | None
    max_objects: int  # msgpack objects in the largest valid frame of this type: the map, its keys and values


def _compile(cls: type) -> _Schema:
    fields = dataclasses.fields(cls)
    unknown = [f"{cls.__name__}.{f.name}: {f.type}" for f in fields if f.type not in _CODECS]
    if unknown:
        raise TypeError(f"no wire codec for {unknown}")
    return _Schema(
        cls=cls,
        tag=cls.TAG,
        n_keys=len(fields) + 2,
        encoders=tuple((f.name, _CODECS[f.type].encode) for f in fields),
        decoders=tuple((f.name, f"{cls.TAG}.{f.name}", _CODECS[f.type].decode) for f in fields),
        check=getattr(cls, "_check", None),
        max_objects=1 + 2 * 2 + sum(1 + _CODECS[f.type].max_objects for f in fields),
    )


_MESSAGE_TYPES: tuple[type, ...] = get_args(Message)  # every message type, listed once (in `Message`)
_SCHEMA_BY_CLASS: dict[type, _Schema] = {cls: _compile(cls) for cls in _MESSAGE_TYPES}
_SCHEMA_BY_TAG: dict[str, _Schema] = {schema.tag: schema for schema in _SCHEMA_BY_CLASS.values()}


# --- Codec ----------------------------------------------------------------------------------------------------------


def encode(message: Message, fixed_layout: bool = True) -> bytes:
    """One frame for `message`: Step and StepReply in the fixed layout where they fit it (`fixed_layout` False: the
    msgpack map, as every other message). Raises ProtocolError for a value that cannot go on the wire."""
    schema = _SCHEMA_BY_CLASS.get(type(message))
    if schema is None:
        raise ProtocolError("type", f"{type(message).__name__} is not a protocol message")
    if schema.check is not None:
        schema.check(message)
    encode_fixed = _FIXED_ENCODERS.get(type(message)) if fixed_layout else None
    frame = encode_fixed(message) if encode_fixed is not None else None
    if frame is not None:
        return frame
    out: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": schema.tag}
    for name, encode_field in schema.encoders:
        try:
            out[name] = encode_field(getattr(message, name))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError("field", f"{schema.tag}.{name}: {exc}") from exc
    try:
        return msgpack.packb(out, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a manifest value msgpack cannot represent
        raise ProtocolError("field", f"{schema.tag}: {exc}") from exc


def decode(
    frame: bytes | bytearray | memoryview,
    max_size: int = DEFAULT_MAX_FRAME_BYTES,
    accept: tuple[type, ...] = _MESSAGE_TYPES,
) -> Message:
    """The message in one frame from a peer; any problem raises ProtocolError (and nothing else).

    `accept`: the message types the receiving channel carries; anything else is refused with code "type". The work
    of decoding is bounded by those types' schemas before msgpack allocates anything: a frame may hold at most as
    many msgpack objects as the largest valid message of an accepted type (`_Schema.max_objects`), which a header
    scan checks first (code "size"). Without it a 1 MiB frame of 10^6 empty lists unpacks into ~75 MB of Python
    objects and holds the GIL for half a second. Arrays in the result are read-only views on the frame's bytes.
    """
    if type(frame) not in (bytes, bytearray, memoryview):
        raise ProtocolError("malformed", f"a frame is bytes, got {type(frame).__name__}")
    if type(frame) is memoryview:
        try:
            frame = frame.cast("B")  # one byte per item whatever the view's format (no copy)
        except (TypeError, ValueError) as exc:  # a strided or released view
            raise ProtocolError("malformed", f"a frame is a contiguous buffer ({exc})") from None
    size = len(frame)
    if size > max_size:
        raise ProtocolError("size", f"frame of {size} bytes exceeds the limit of {max_size}")
    if size and frame[0] == _FIXED_MARKER:
        return _decode_fixed(frame, accept)
    raw = _unpack_bounded(frame, _max_objects(accept), "not a msgpack frame")
    if type(raw) is not dict:
        raise ProtocolError("malformed", f"a message is a msgpack map, got {type(raw).__name__}")
    version = raw.get("v")
    tag = raw.get("t")
    if type(version) is not int:
        raise ProtocolError("version", "no protocol version")
    if version != PROTOCOL_VERSION and tag != Error.TAG:  # Error reads the same in every version
        raise ProtocolError("version", f"protocol version {version}, this side speaks {PROTOCOL_VERSION}")
    schema = _SCHEMA_BY_TAG.get(tag) if type(tag) is str else None
    if schema is None:
        raise ProtocolError("type", f"unknown message type {_short(tag)}")
    if schema.cls not in accept:
        raise ProtocolError("type", f"{schema.cls.__name__} does not travel on this channel")
    if len(raw) != schema.n_keys:
        raise _field_mismatch(raw, schema)
    values = []
    for name, where, decode_field in schema.decoders:
        if name not in raw:
            raise _field_mismatch(raw, schema)
        values.append(decode_field(raw[name], where))
    message = schema.cls(*values)
    if schema.check is not None:
        schema.check(message)
    return message


# --- Fixed-layout frames ------------------------------------------------------------------------------------------
#
# Step and StepReply cross the control link once per tick each. After the 1-2 ms a controller sleeps between ticks,
# every call runs cold, and the generic map (a dict built, packed, unpacked and checked field by field) costs a tick's
# four codec calls about 30% more than `struct` does (bench/transport.py, docs/results.md). A fixed-layout frame
# starts with 0xC1, the one byte msgpack never uses, so the two forms cannot be confused: `encode` writes this layout
# whenever the message fits it (a 1-D float32 or float64 array, integers within 64 bits) and the map otherwise;
# `decode` reads both. All numbers are little-endian.
#   Step:      0xC1, kind 1, version (u8), array dtype (u8: 0 float32, 1 float64), n (u16), tick (i64)
#              | action: n values
#   StepReply: 0xC1, kind 2, version, dtype, n, tick (i64), reward (f64), driver_time_s (f64), flags (u8), clears
#              (i64), info length (u16) | obs: n values | info: the map form's msgpack map, that many bytes (or none)
#   flags: terminated 1, truncated 2, watchdog_fired 4, safe_action_applied 8, estopped 16 (`_reply_flags`).
_FIXED_MARKER = 0xC1
_FIXED_DTYPES = (WIRE_DTYPES["float32"], WIRE_DTYPES["float64"])
_FIXED_DTYPE_CODE = {dtype: code for code, dtype in enumerate(_FIXED_DTYPES)}
_STEP_KIND, _STEP_REPLY_KIND = 1, 2
_STEP_HEAD = struct.Struct("<BBBBHq")
_STEP_REPLY_HEAD = struct.Struct("<BBBBHqddBqH")
_REPLY_FLAG_BITS = 5
_INFO_OBJECTS = _CODECS["dict[str, InfoValue]"].max_objects


def _fixed_array_code(array: Any) -> int | None:
    """The layout's dtype code of a 1-D array it can carry as it is, or None."""
    if type(array) is not np.ndarray or array.ndim != 1 or array.size > MAX_SPACE_ELEMENTS:
        return None
    return _FIXED_DTYPE_CODE.get(array.dtype)


def _encode_step_fixed(message: Step) -> bytes | None:
    code = _fixed_array_code(message.action)
    if code is None:
        return None
    try:
        head = _STEP_HEAD.pack(_FIXED_MARKER, _STEP_KIND, PROTOCOL_VERSION, code, message.action.size, message.tick)
    except struct.error:  # a tick that is not an integer within 64 bits: the map form refuses it by name
        return None
    return head + message.action.tobytes()


def _encode_step_reply_fixed(message: StepReply) -> bytes | None:
    code = _fixed_array_code(message.obs)
    if code is None or type(message.info) is not dict:
        return None
    try:
        info = msgpack.packb(_enc_info(message.info), use_bin_type=True) if message.info else b""
        flags = _reply_flags(message)
        head = _STEP_REPLY_HEAD.pack(
            _FIXED_MARKER,
            _STEP_REPLY_KIND,
            PROTOCOL_VERSION,
            code,
            message.obs.size,
            message.tick,
            message.reward,
            message.driver_time_s,
            flags,
            message.clears,
            len(info),
        )
    except (struct.error, TypeError, ValueError):  # a value the layout cannot hold: the map form refuses it by name
        return None
    return head + message.obs.tobytes() + info


def _reply_flags(message: StepReply) -> int:
    # Spelled out, as in _decode_fixed: a loop over the names costs a cold tick more than the five terms.
    return (
        bool(message.terminated)
        | bool(message.truncated) << 1
        | bool(message.watchdog_fired) << 2
        | bool(message.safe_action_applied) << 3
        | bool(message.estopped) << 4
    )


_FIXED_ENCODERS: dict[type, Callable[[Any], bytes | None]] = {
    Step: _encode_step_fixed,
    StepReply: _encode_step_reply_fixed,
}


def _decode_fixed(frame: bytes | bytearray | memoryview, accept: tuple[type, ...]) -> Step | StepReply:
    """A fixed-layout frame (its first byte is 0xC1; a memoryview already cast to bytes); ProtocolError for anything
    that does not match the layout."""
    if len(frame) < 2:
        raise ProtocolError("malformed", "a frame of one byte")
    kind = frame[1]
    if kind == _STEP_KIND:
        cls, head = Step, _STEP_HEAD
    elif kind == _STEP_REPLY_KIND:
        cls, head = StepReply, _STEP_REPLY_HEAD
    else:
        raise ProtocolError("type", f"unknown fixed-layout message kind {kind}")
    tag = cls.TAG
    if len(frame) < head.size:
        raise ProtocolError("malformed", f"{tag}: {len(frame)} bytes, shorter than its {head.size}-byte header")
    fields = head.unpack_from(frame)
    _, _, version, code, count, tick = fields[:6]
    if version != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {version}, this side speaks {PROTOCOL_VERSION}")
    if cls not in accept:
        raise ProtocolError("type", f"{cls.__name__} does not travel on this channel")
    if code >= len(_FIXED_DTYPES):
        raise ProtocolError("array", f"{tag}: array dtype code {code} is not 0 (float32) or 1 (float64)")
    if count > MAX_SPACE_ELEMENTS:
        raise ProtocolError("array", f"{tag}: {count} elements, more than {MAX_SPACE_ELEMENTS}")
    dtype = _FIXED_DTYPES[code]
    info_bytes = fields[-1] if cls is StepReply else 0
    array_end = head.size + count * dtype.itemsize
    if len(frame) != array_end + info_bytes:
        raise ProtocolError("malformed", f"{tag}: {len(frame)} bytes where its header makes {array_end + info_bytes}")
    # A view on immutable bytes, as the map form's arrays are; a caller's mutable buffer is copied (a few KB at most),
    # so that nothing it does later changes the message.
    data = frame if type(frame) is bytes else bytes(frame[head.size : array_end])
    array = np.frombuffer(data, dtype, count, head.size if data is frame else 0)
    if cls is Step:
        message = Step(tick, array)
    else:
        reward, driver_time_s, flags, clears = fields[6:10]
        if flags >> _REPLY_FLAG_BITS:
            raise ProtocolError("field", f"{tag}: flags {flags:#x} set bits no flag uses")
        info = _decode_fixed_info(memoryview(frame)[array_end:]) if info_bytes else {}  # no copy
        # The flags as _reply_flags packs them.
        message = StepReply(
            tick,
            array,
            reward,
            bool(flags & 1),  # terminated
            bool(flags & 2),  # truncated
            driver_time_s,
            bool(flags & 4),  # watchdog_fired
            bool(flags & 8),  # safe_action_applied
            bool(flags & 16),  # estopped
            clears,
            info,
        )
    check = _SCHEMA_BY_CLASS[cls].check
    if check is not None:
        check(message)
    return message


def _decode_fixed_info(raw: memoryview) -> dict[str, InfoValue]:
    """A StepReply's info in the fixed layout: the map form's info, bounded the same way before it is unpacked."""
    return _dec_info(_unpack_bounded(raw, _INFO_OBJECTS, "step_reply.info: not a msgpack map"), "step_reply.info")


def _unpack_bounded(frame: bytes | bytearray | memoryview, max_objects: int, what: str) -> Any:
    """msgpack's reading of `frame` once a header scan has found at most `max_objects` objects in it (ProtocolError
    "size" otherwise, before anything is built); ProtocolError "malformed", saying `what`, for bytes msgpack refuses."""
    if len(frame) > max_objects:  # every msgpack object takes at least one byte: a smaller frame needs no scan
        _check_object_count(frame, max_objects)
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types (ValueError, ExtraData, StackError, ...) on bad input
        raise ProtocolError("malformed", f"{what} ({type(exc).__name__})") from exc


@functools.cache
def _max_objects(accept: tuple[type, ...]) -> int:
    """Objects in the largest valid frame of any type in `accept` (the Error reply of any version included)."""
    return max(_SCHEMA_BY_CLASS[cls].max_objects for cls in (*accept, Error))


# msgpack type byte -> (how many bytes its length field has, or the fixed payload size; kind). Kinds: "fixed" (the
# payload follows, of the given size), "bytes" (a big-endian length of the given width, then that many bytes),
# "array" / "map" (a big-endian count of the given width, then that many items / key-value pairs).
_WIDE_HEADERS: dict[int, tuple[int, str]] = {
    0xC0: (0, "fixed"), 0xC2: (0, "fixed"), 0xC3: (0, "fixed"),  # nil, false, true
    0xC4: (1, "bytes"), 0xC5: (2, "bytes"), 0xC6: (4, "bytes"),  # bin 8/16/32
    0xC7: (1, "ext"), 0xC8: (2, "ext"), 0xC9: (4, "ext"),  # ext 8/16/32: length, type byte, data
    0xCA: (4, "fixed"), 0xCB: (8, "fixed"),  # float 32/64
    0xCC: (1, "fixed"), 0xCD: (2, "fixed"), 0xCE: (4, "fixed"), 0xCF: (8, "fixed"),  # uint 8..64
    0xD0: (1, "fixed"), 0xD1: (2, "fixed"), 0xD2: (4, "fixed"), 0xD3: (8, "fixed"),  # int 8..64
    0xD4: (2, "fixed"), 0xD5: (3, "fixed"), 0xD6: (5, "fixed"), 0xD7: (9, "fixed"), 0xD8: (17, "fixed"),  # fixext
    0xD9: (1, "bytes"), 0xDA: (2, "bytes"), 0xDB: (4, "bytes"),  # str 8/16/32
    0xDC: (2, "array"), 0xDD: (4, "array"),
    0xDE: (2, "map"), 0xDF: (4, "map"),
}  # fmt: skip


def _check_object_count(frame: bytes | bytearray | memoryview, max_objects: int) -> None:
    """Walk the msgpack headers of `frame` without building anything; refuse it once it holds more than
    `max_objects` objects. Malformed structure is left to msgpack, which reports it on unpacking."""
    position, pending, objects, end = 0, 1, 0, len(frame)
    while pending and position < end:
        pending -= 1
        objects += 1
        if objects > max_objects:
            raise ProtocolError(
                "size",
                f"frame holds more than {max_objects} msgpack objects, the most a valid message of this channel holds",
            )
        head = frame[position]
        position += 1
        if head <= 0x7F or head >= 0xE0:  # positive / negative fixint
            continue
        if head <= 0x8F:  # fixmap
            pending += 2 * (head & 0x0F)
        elif head <= 0x9F:  # fixarray
            pending += head & 0x0F
        elif head <= 0xBF:  # fixstr
            position += head & 0x1F
        else:
            width, kind = _WIDE_HEADERS.get(head, (0, "fixed"))  # 0xC1 (never used) is msgpack's to refuse
            if kind == "fixed":
                position += width
                continue
            count = int.from_bytes(frame[position : position + width], "big")
            position += width
            if kind == "bytes":
                position += count
            elif kind == "ext":
                position += 1 + count
            elif kind == "array":
                pending += count
            else:
                pending += 2 * count


def _field_mismatch(raw: dict, schema: _Schema) -> ProtocolError:
    expected = {"v", "t", *(name for name, _ in schema.encoders)}
    missing = sorted(expected.difference(raw))
    extra = [_short(key) for key in raw if key not in expected][:5]
    return ProtocolError("field", f"{schema.tag}: missing {missing}, unexpected {extra}")
