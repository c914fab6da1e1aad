"""The wire codec: every message round-trips, and every malformed frame raises ProtocolError and nothing else."""

from __future__ import annotations

import dataclasses
import struct
import tracemalloc

import msgpack
import numpy as np
import pytest

from acalign_robot.errors import InputError
from acalign_robot.spaces import BoxSpace, RobotLimits
from acalign_robot.wire import protocol
from acalign_robot.wire.protocol import (
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    MAX_EXTRAS,
    MAX_INFO_ARRAY_ELEMENTS,
    MAX_INFO_KEY_CHARS,
    MAX_INFO_KEYS,
    MAX_INFO_TEXT_BYTES,
    MAX_MANIFEST_OBJECTS,
    MAX_NDIM,
    MAX_PAUSE_S,
    MAX_SPACE_ELEMENTS,
    MAX_STATS_VALUES,
    POLICY_MESSAGES,
    PROTOCOL_VERSION,
    TRANSITION_MESSAGES,
    WIRE_DTYPES,
    Clear,
    Error,
    EStop,
    Heartbeat,
    Hello,
    HelloReply,
    Policy,
    ProtocolError,
    Render,
    RenderReply,
    Reset,
    ResetReply,
    Stats,
    Step,
    StepReply,
    TransitionBatch,
    check_info,
    decode,
    encode,
    error_message,
)


def transition_batch(batch: int = 4, obs_dim: int = 11, action_dim: int = 3) -> TransitionBatch:
    rng = np.random.default_rng(0)
    return TransitionBatch(
        stream_id="hopper-0",
        seq=7,
        policy_version=np.arange(batch, dtype=np.int64),
        obs=rng.standard_normal((batch, obs_dim)).astype(np.float32),
        action=rng.uniform(-1, 1, (batch, action_dim)).astype(np.float32),
        reward=rng.standard_normal(batch).astype(np.float32),
        next_obs=rng.standard_normal((batch, obs_dim)).astype(np.float32),
        terminated=np.array([False, False, False, True][:batch]),
        truncated=np.zeros(batch, dtype=bool),
        extras={"executed_action": np.zeros((batch, action_dim), np.float32)},
    )


def hello_reply() -> HelloReply:
    return HelloReply(
        driver_name="mujoco:Hopper-v5",
        observation_space=BoxSpace(low=np.full(11, -np.inf), high=np.full(11, np.inf), units=("",) * 11),
        action_space=BoxSpace(low=-np.ones(3, np.float32), high=np.ones(3, np.float32), units=("N*m",) * 3),
        control_period_s=0.008,
        watchdog_timeout_s=0.05,
        safe_action=np.zeros(3, np.float32),
    )


def arm_limits(end_effector_index: int = 8) -> RobotLimits:
    """Limits of a 3-joint arm over hello_reply()'s 11-element observation: q at 0, qdot at 3, end effector at 8."""
    return RobotLimits(
        joint_position=BoxSpace(-np.ones(3), np.ones(3), ("rad",) * 3),
        joint_velocity=BoxSpace(-2 * np.ones(3), 2 * np.ones(3), ("rad/s",) * 3),
        joint_torque=BoxSpace(-10 * np.ones(3), 10 * np.ones(3), ("N*m",) * 3),
        workspace=BoxSpace(np.array([0.0, -0.5, 0.0]), np.array([0.8, 0.5, 1.0]), ("m",) * 3),
        joint_position_index=0,
        joint_velocity_index=3,
        end_effector_index=end_effector_index,
    )


def every_message() -> list:
    return [
        Hello(client_name="controller-0", role="controller"),
        hello_reply(),
        dataclasses.replace(hello_reply(), can_render=True, can_pause=True),
        dataclasses.replace(hello_reply(), limits=arm_limits()),
        Reset(seed=3),
        Reset(seed=1, pause_s=60.0),
        Reset(),
        ResetReply(obs=np.arange(11, dtype=np.float64), driver_time_s=12.5),
        Step(tick=42, action=np.array([0.1, -0.2, 0.3], np.float32)),
        StepReply(
            tick=42,
            obs=np.arange(11, dtype=np.float64),
            reward=1.25,
            terminated=False,
            truncated=True,
            driver_time_s=13.0,
            watchdog_fired=True,
            safe_action_applied=True,
            estopped=False,
        ),
        StepReply(
            tick=43,
            obs=np.arange(11, dtype=np.float32),
            reward=0.5,
            terminated=False,
            truncated=False,
            driver_time_s=13.5,
            info={"applied_action": np.ones(3, np.float32), "temp_c": 41.5, "contacts": 2, "ok": True, "mode": "ö"},
        ),
        Render(),
        RenderReply(rgb=np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)),
        transition_batch(),
        Policy(version=3, onnx=b"\x08\x01onnx-bytes", manifest={"obs_dim": 11, "nested": {"a": [1, 2.5, None, "x"]}}),
        Heartbeat(sender="driver", time_s=1.5, state="running"),
        EStop(reason="operator pressed the button", source="cli"),
        Clear(source="cli"),
        Stats(source="controller-0", values={"ticks": 1000, "p99_s": 0.0012, "policy": "v3", "safe": False}),
        Error(code="field", message="step.action: missing"),
    ]


def assert_same(a, b) -> None:
    """Field-by-field equality; arrays must match in dtype, shape and values."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b)
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    else:
        assert type(a) is type(b) and a == b


def raw_of(message) -> dict:
    """The message's map form, unpacked (Step and StepReply travel in the fixed layout by default)."""
    return msgpack.unpackb(encode(message, fixed_layout=False))


def packed(raw: dict) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


def code_of(frame, **kwargs) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(frame, **kwargs)
    return info.value.code


@pytest.mark.parametrize("message", every_message(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    frame = encode(message)
    assert isinstance(frame, bytes)
    assert_same(message, decode(frame))


@pytest.mark.parametrize("name", sorted(WIRE_DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3), (1, 2, 1, 2)])
def test_every_wire_dtype_and_shape_round_trips(name, shape):
    action = np.asarray(np.arange(int(np.prod(shape))).reshape(shape) % 2, dtype=WIRE_DTYPES[name])
    decoded = decode(encode(Step(tick=0, action=action))).action
    assert_same(action, decoded)
    assert not decoded.flags.writeable  # a view on the frame: copy before writing


def test_encoding_normalises_numpy_scalars_byte_order_and_lists():
    big_endian = np.array([1.5, -2.0], dtype=">f8")
    decoded = decode(encode(Step(tick=np.int64(5), action=big_endian)))
    assert decoded.tick == 5 and type(decoded.tick) is int
    assert decoded.action.dtype == np.dtype("<f8")
    np.testing.assert_array_equal(decoded.action, big_endian)
    reply = decode(
        encode(
            StepReply(
                tick=1,
                obs=[0.0, 1.0],
                reward=np.float32(0.5),
                terminated=np.bool_(True),
                truncated=False,
                driver_time_s=1,
            )
        )
    )
    assert reply.reward == 0.5 and reply.terminated is True and type(reply.driver_time_s) is float
    stats = decode(encode(Stats(source="x", values={"n": np.int64(3), "f": np.float32(0.25)})))
    assert stats.values == {"n": 3, "f": 0.25}


def test_encode_refuses_what_cannot_go_on_the_wire():
    with pytest.raises(ProtocolError) as info:
        encode(Step(tick=0, action=np.zeros(3, np.float16)))
    assert info.value.code == "array"
    with pytest.raises(ProtocolError) as info:
        encode(Step(tick=0, action=np.array(["a"], dtype=object)))
    assert info.value.code == "array"
    with pytest.raises(ProtocolError) as info:
        encode(Step(tick=1.5, action=np.zeros(3)))  # a float tick is refused, not truncated
    assert info.value.code == "field"
    with pytest.raises(ProtocolError) as info:
        encode(Policy(version=1, onnx=b"x", manifest={"bad": object()}))
    assert info.value.code == "field"
    with pytest.raises(ProtocolError) as info:
        encode({"t": "step"})
    assert info.value.code == "type"


def test_protocol_error_is_an_input_error_and_becomes_an_error_reply():
    with pytest.raises(ProtocolError) as info:
        decode(b"\xc1")
    exc = info.value
    assert isinstance(exc, InputError)
    reply = error_message(exc)
    assert isinstance(reply, Error) and reply.code == exc.code == "malformed" and reply.message
    assert_same(reply, decode(encode(reply)))


def test_wrong_or_missing_version():
    raw = raw_of(Hello(client_name="c", role="controller"))
    assert code_of(packed({**raw, "v": PROTOCOL_VERSION + 1})) == "version"
    assert code_of(packed({**raw, "v": "1"})) == "version"
    del raw["v"]
    assert code_of(packed(raw)) == "version"


def test_error_reads_in_every_version():
    """A peer on another version must still learn why it was refused."""
    raw = raw_of(Error(code="version", message="driver speaks v1"))
    message = decode(packed({**raw, "v": PROTOCOL_VERSION + 7}))
    assert isinstance(message, Error) and message.code == "version"


def test_unknown_or_missing_type():
    raw = raw_of(Clear(source="x"))
    assert code_of(packed({**raw, "t": "reboot"})) == "type"
    assert code_of(packed({**raw, "t": 3})) == "type"
    del raw["t"]
    assert code_of(packed(raw)) == "type"


def test_missing_extra_and_wrongly_typed_fields():
    raw = raw_of(Step(tick=1, action=np.zeros(3, np.float32)))
    assert code_of(packed({k: v for k, v in raw.items() if k != "tick"})) == "field"
    assert code_of(packed({**raw, "speed": 1})) == "field"
    # one extra and one missing: the key count matches, the names do not
    assert code_of(packed({**{k: v for k, v in raw.items() if k != "tick"}, "tock": 1})) == "field"
    assert code_of(packed({**raw, "tick": "1"})) == "field"
    assert code_of(packed({**raw, "tick": True})) == "field"  # bool is not an int here
    assert code_of(packed({**raw, "tick": 1.0})) == "field"
    reply = raw_of(next(m for m in every_message() if isinstance(m, StepReply)))
    assert code_of(packed({**reply, "terminated": 1})) == "field"
    assert code_of(packed({**reply, "reward": "1.0"})) == "field"
    assert decode(packed({**reply, "reward": 2})).reward == 2.0  # an integer is a fine number
    stats = raw_of(Stats(source="x", values={}))
    assert code_of(packed({**stats, "values": {"nested": [1]}})) == "field"
    assert code_of(packed({**stats, "values": [1, 2]})) == "field"


@pytest.mark.parametrize(
    "array",
    [
        ["float32", [3], b"\x00" * 11],  # bytes != prod(shape) * itemsize
        ["float32", [4], b"\x00" * 12],
        ["float32", [-1], b""],
        ["float32", [2**62, 2**62], b"\x00" * 12],
        ["float32", [2**64 - 1, 0], b""],  # empty, but numpy cannot even describe it
        ["float32", [2**40, 2**40, 0], b""],
        ["float32", [1] * (MAX_NDIM + 1), b"\x00" * 4],
        ["float32", [3.0], b"\x00" * 12],
        ["float32", 3, b"\x00" * 12],
        ["float16", [3], b"\x00" * 6],
        ["object", [1], b"\x00" * 8],
        [1, [3], b"\x00" * 12],
        ["float32", [3], "not bytes"],
        ["float32", [3]],
        {"dtype": "float32"},
        ["bool", [3], b"\x00\x01\x02"],
    ],
)
def test_bad_arrays(array):
    raw = raw_of(Step(tick=1, action=np.zeros(3, np.float32)))
    assert code_of(packed({**raw, "action": array})) == "array"


def test_cross_field_rules():
    batch = raw_of(transition_batch())
    short_reward = raw_of(transition_batch(batch=3))["reward"]
    assert code_of(packed({**batch, "reward": short_reward})) == "field"
    assert code_of(packed({**batch, "terminated": batch["reward"]})) == "field"  # float, not bool
    assert code_of(packed({**batch, "extras": {"raw_action": short_reward}})) == "field"
    hello = raw_of(hello_reply())
    assert code_of(packed({**hello, "safe_action": raw_of(Step(tick=0, action=np.full(3, 2.0)))["action"]})) == "field"
    assert code_of(packed({**hello, "control_period_s": 0.0})) == "field"
    flipped = {**hello["action_space"], "low": hello["action_space"]["high"], "high": hello["action_space"]["low"]}
    assert code_of(packed({**hello, "action_space": flipped})) == "field"
    assert code_of(packed({**hello, "action_space": {**hello["action_space"], "units": ["N*m"]}})) == "field"
    assert code_of(packed({**raw_of(Reset(seed=1)), "seed": -1})) == "field"


def test_robot_limits_must_fit_the_observation_and_be_complete():
    outside = dataclasses.replace(hello_reply(), limits=arm_limits(end_effector_index=9))  # 9 + 3 > 11
    with pytest.raises(ProtocolError, match="end_effector_index"):
        encode(outside)
    raw = raw_of(dataclasses.replace(hello_reply(), limits=arm_limits()))
    raw["limits"]["end_effector_index"] = 9
    assert code_of(packed(raw)) == "field"
    raw = raw_of(dataclasses.replace(hello_reply(), limits=arm_limits()))
    del raw["limits"]["joint_torque"]
    assert code_of(packed(raw)) == "field"
    raw = raw_of(dataclasses.replace(hello_reply(), limits=arm_limits()))
    raw["limits"]["workspace"]["low"] = raw["limits"]["workspace"]["high"]
    raw["limits"]["workspace"]["high"] = raw_of(hello_reply())["safe_action"]  # 3 zeros: low > high on x
    assert code_of(packed(raw)) == "field"


def test_an_episode_return_travels_only_with_the_batch_its_episode_ends_in():
    ending = dataclasses.replace(transition_batch(), episode_return=-12.5)  # its last transition is terminated
    assert decode(encode(ending)).episode_return == -12.5 and decode(encode(transition_batch())).episode_return is None
    raw = raw_of(ending)
    assert code_of(packed({**raw, "episode_return": float("nan")})) == "field"
    assert code_of(packed({**raw, "episode_return": "12"})) == "field"
    assert code_of(packed({**raw_of(transition_batch(batch=3)), "episode_return": 1.0})) == "field"  # none ends


def test_manifest_must_be_json_like_and_shallow():
    raw = raw_of(Policy(version=1, onnx=b"x", manifest={}))
    assert code_of(packed({**raw, "manifest": {"blob": b"\x00"}})) == "field"
    deep: dict = {}
    node = deep
    for _ in range(200):
        node["a"] = {}
        node = node["a"]
    assert code_of(packed({**raw, "manifest": deep})) == "field"
    assert code_of(packed({**raw, "onnx": b""})) == "field"


def test_oversized_frames():
    frame = encode(transition_batch())
    assert code_of(frame, max_size=len(frame) - 1) == "size"
    assert isinstance(decode(frame, max_size=len(frame)), TransitionBatch)


@pytest.mark.parametrize("message", every_message(), ids=lambda m: type(m).__name__)
def test_every_truncation_raises_protocol_error(message):
    frame = encode(message)
    for end in range(len(frame)):
        with pytest.raises(ProtocolError):
            decode(frame[:end])
    with pytest.raises(ProtocolError):
        decode(frame + b"\x00")  # trailing bytes


def test_not_a_message_at_all():
    for frame in (b"", packed([1, 2, 3]), packed("step"), packed({1: 2}), packed({"v": 1}), b"\xd4\x01\x00"):
        with pytest.raises(ProtocolError):
            decode(frame)
    assert code_of("a string") == "malformed"
    assert code_of(None) == "malformed"
    assert isinstance(decode(memoryview(encode(Clear(source="x")))), Clear)


def test_random_frames_raise_only_protocol_error():
    rng = np.random.default_rng(1234)
    for _ in range(2000):
        frame = rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        with pytest.raises(ProtocolError):  # anything else escaping decode fails the test
            decode(frame)


def test_mutated_frames_raise_only_protocol_error():
    """Flipped bytes in valid frames reach deeper than random bytes: past the msgpack layer into field checks."""
    rng = np.random.default_rng(5678)
    frames = [encode(message) for message in every_message()]
    decoded = 0
    for _ in range(3000):
        frame = bytearray(frames[int(rng.integers(len(frames)))])
        for _ in range(int(rng.integers(1, 4))):
            frame[int(rng.integers(len(frame)))] = int(rng.integers(256))
        try:
            decode(bytes(frame))
            decoded += 1  # a flip inside a payload (array bytes, a string) can leave a valid message
        except ProtocolError:
            pass
    assert decoded < 3000


# --- Decoding work is bounded by the schema (hostile frames that are small on the wire but huge in memory) ----------


def peak_allocation_while(work) -> int:
    tracemalloc.start()
    try:
        work()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    "hostile",
    [
        [[]] * 500_000,  # one container per byte: ~56 bytes of Python object each once unpacked
        [None] * 1_000_000,
        {"v": PROTOCOL_VERSION, "t": "step", "tick": 0, "action": [[]] * 500_000},  # inside a valid-looking message
        {str(i): {} for i in range(100_000)},
    ],
    ids=["empty-lists", "nils", "inside-a-step", "map"],
)
def test_a_small_frame_of_many_objects_is_refused_before_it_is_unpacked(hostile):
    frame = msgpack.packb(hostile)
    assert len(frame) < 1024 * 1024  # under the control channel's frame limit

    def decode_it():
        with pytest.raises(ProtocolError) as raised:
            decode(frame, accept=CONTROL_REQUESTS)
        assert raised.value.code == "size"

    # Unpacked, these are 30-60x the frame in Python objects; refused first, nothing near the frame's size is built.
    assert peak_allocation_while(decode_it) < len(frame) // 4


def test_a_policy_manifest_of_a_million_keys_is_refused_quickly():
    manifest = {str(i): i for i in range(1_000_000)}
    frame = packed({"v": PROTOCOL_VERSION, "t": "policy", "version": 1, "onnx": b"x", "manifest": manifest})
    assert peak_allocation_while(lambda: code_of(frame, accept=POLICY_MESSAGES)) < len(frame) // 4
    assert code_of(frame, accept=POLICY_MESSAGES) == "size"


def test_the_largest_valid_messages_fit_their_bounds():
    """The object budget is derived from the per-field limits, so a message at every limit still decodes."""
    n = MAX_SPACE_ELEMENTS
    wide = BoxSpace(low=np.full(n, -1.0), high=np.full(n, 1.0), units=("rad",) * n)
    reply = dataclasses.replace(hello_reply(), observation_space=wide)
    assert decode(encode(reply)).observation_space.shape == (n,)
    stats = Stats(source="driver", values={f"counter_{i}": i for i in range(MAX_STATS_VALUES)})
    assert len(decode(encode(stats), accept=CONTROL_REQUESTS).values) == MAX_STATS_VALUES
    batch = transition_batch()
    extras = {f"extra_{i}": np.zeros((4, 2, 2, 2, 2, 2, 2, 2), np.float32) for i in range(MAX_EXTRAS)}
    message = dataclasses.replace(batch, extras=extras)
    assert len(decode(encode(message), accept=TRANSITION_MESSAGES).extras) == MAX_EXTRAS
    # A manifest as large as its budget allows: one list holding the rest of the budget's numbers.
    numbers = list(range(MAX_MANIFEST_OBJECTS - 8))
    policy = Policy(version=3, onnx=b"\x08" * 300_000, manifest={"bounds": numbers})
    assert decode(encode(policy), accept=POLICY_MESSAGES).manifest["bounds"] == numbers


def test_over_a_field_limit_is_refused_by_name():
    n = MAX_SPACE_ELEMENTS + 1
    wide = BoxSpace(low=np.full(n, -1.0), high=np.full(n, 1.0), units=("",) * n)
    assert code_of(encode(dataclasses.replace(hello_reply(), observation_space=wide))) == "field"
    stats = Stats(source="x", values={str(i): i for i in range(MAX_STATS_VALUES + 1)})
    with pytest.raises(ProtocolError, match="stats.values: 1025 values"):
        decode(encode(stats))  # every type accepted: the frame is within the budget, the field is not
    assert code_of(encode(stats), accept=CONTROL_REQUESTS) == "size"  # on the control channel, refused earlier
    extras = {str(i): np.zeros(4, np.float32) for i in range(MAX_EXTRAS + 1)}
    assert code_of(encode(dataclasses.replace(transition_batch(), extras=extras))) == "field"


def test_a_channel_refuses_the_types_it_does_not_carry():
    with pytest.raises(ProtocolError, match="Policy does not travel"):
        decode(encode(Policy(version=1, onnx=b"x", manifest={})), accept=CONTROL_REQUESTS)
    with pytest.raises(ProtocolError, match="TransitionBatch does not travel"):
        decode(encode(transition_batch()), accept=CONTROL_REQUESTS)


@pytest.mark.parametrize("limit_offset", [0, -1])
def test_the_header_scan_counts_every_msgpack_type_exactly(limit_offset):
    value = [
        None, True, False, 0, 127, -32, -33, 255, 65_535, 2**32 - 1, 2**63, -(2**63), 0.5, np.float32(0.5).item(),
        "", "a" * 31, "b" * 32, "c" * 300, "d" * 70_000, b"", b"e" * 300, b"f" * 70_000,
        list(range(15)), list(range(16)), list(range(70_000)), {str(i): i for i in range(15)},
        {str(i): i for i in range(16)}, {str(i): None for i in range(70_000)},
        msgpack.ExtType(1, b"g"), msgpack.ExtType(2, b"h" * 16), msgpack.ExtType(3, b"i" * 300),
        msgpack.ExtType(4, b"j" * 70_000), [[[]]], {"k": {"l": []}},
    ]  # fmt: skip
    frame = msgpack.packb(value, use_bin_type=True)

    def count(item) -> int:
        if isinstance(item, list):
            return 1 + sum(count(x) for x in item)
        if isinstance(item, dict):
            return 1 + sum(count(k) + count(v) for k, v in item.items())
        return 1

    objects = count(msgpack.unpackb(frame, raw=False, strict_map_key=False, ext_hook=lambda code, data: None))
    limit = objects + limit_offset
    if limit_offset == 0:
        protocol._check_object_count(frame, limit)
    else:
        with pytest.raises(ProtocolError, match=f"more than {limit} msgpack objects"):
            protocol._check_object_count(frame, limit)


def step_reply_with(info) -> StepReply:
    return StepReply(tick=1, obs=np.zeros(3, np.float32), reward=0.0, terminated=False, truncated=False,
                     driver_time_s=0.0, info=info)  # fmt: skip


def test_info_values_are_normalised_and_the_largest_valid_info_decodes():
    info = {"a": np.float32(0.5), "b": np.int64(3), "c": np.bool_(True), "d": np.arange(4, dtype=">f8")}
    decoded = decode(encode(step_reply_with(info))).info
    assert decoded["a"] == 0.5 and type(decoded["b"]) is int and decoded["c"] is True
    assert decoded["d"].dtype == np.dtype("<f8")
    keys = [f"{i}".rjust(MAX_INFO_KEY_CHARS, "k") for i in range(MAX_INFO_KEYS)]
    largest = {key: np.zeros(MAX_INFO_ARRAY_ELEMENTS, np.float64) for key in keys}
    largest[keys[0]] = "é" * (MAX_INFO_TEXT_BYTES // 2)
    assert len(decode(encode(step_reply_with(largest)), accept=CONTROL_REPLIES).info) == MAX_INFO_KEYS


@pytest.mark.parametrize(
    "info, match",
    [
        ({str(i): 0 for i in range(MAX_INFO_KEYS + 1)}, "9 keys"),
        ({"k" * (MAX_INFO_KEY_CHARS + 1): 0}, "is not a string of 1 to 32"),
        ({"": 0}, "is not a string of 1 to 32"),
        ({"s": "x" * (MAX_INFO_TEXT_BYTES + 1)}, "more than 64 UTF-8 bytes"),
        ({"s": "é" * (MAX_INFO_TEXT_BYTES // 2 + 1)}, "more than 64 UTF-8 bytes"),
        ({"a": np.zeros(MAX_INFO_ARRAY_ELEMENTS + 1)}, "65 elements"),
        ({"a": np.zeros(2, np.float16)}, "dtype float16"),
        ({"l": [1, 2]}, "a list"),
        ({"d": {"nested": 1}}, "a dict"),
        ({"n": None}, "a NoneType"),
        ({"b": b"raw"}, "a bytes"),
        ({"i": 2**64}, "outside 64 bits"),
        ({"s": "ok \ud800"}, "not valid UTF-8"),  # msgpack cannot send a lone surrogate
        ([("a", 1)], "expected a dict"),
    ],
)
def test_a_driver_info_that_breaks_a_bound_is_refused_by_name(info, match):
    with pytest.raises(ProtocolError, match=match) as raised:
        check_info(info, "driver x: StepResult.info")
    assert raised.value.code == "field" and "driver x: StepResult.info" in str(raised.value)
    if isinstance(info, dict):
        with pytest.raises(ProtocolError, match=match):  # the encoder applies the same rule
            encode(step_reply_with(info))


@pytest.mark.parametrize(
    "info, code",
    [
        ({str(i): 0 for i in range(MAX_INFO_KEYS + 1)}, "field"),
        ({"k" * (MAX_INFO_KEY_CHARS + 1): 0}, "field"),
        ({"s": "x" * (MAX_INFO_TEXT_BYTES + 1)}, "field"),
        ({"a": ["float64", [MAX_INFO_ARRAY_ELEMENTS + 1], bytes(8 * (MAX_INFO_ARRAY_ELEMENTS + 1))]}, "field"),
        ({"a": ["float64", [2], bytes(7)]}, "array"),
        ({"l": [1, 2]}, "array"),  # a list is only ever an array
        ({"d": {"x": 1}}, "field"),
        ({"n": None}, "field"),
        ({"b": b"raw"}, "field"),
        ({1: 0}, "malformed"),  # msgpack's strict_map_key refuses a non-string key
    ],
)
def test_a_hostile_info_from_a_peer_is_refused(info, code):
    raw = raw_of(step_reply_with({}))
    raw["info"] = info
    assert code_of(packed(raw), accept=CONTROL_REPLIES) == code


def test_an_info_of_many_objects_costs_no_more_than_its_bound():
    raw = raw_of(step_reply_with({}))
    raw["info"] = {str(i): 0 for i in range(100_000)}
    frame = packed(raw)
    assert len(frame) < 1024 * 1024  # under the control channel's frame limit
    assert peak_allocation_while(lambda: code_of(frame, accept=CONTROL_REPLIES)) < len(frame) // 4
    assert code_of(frame, accept=CONTROL_REPLIES) == "size"


@pytest.mark.parametrize("pause_s", [-1.0, float("nan"), float("inf"), MAX_PAUSE_S + 1])
def test_reset_pause_is_bounded(pause_s):
    raw = raw_of(Reset())
    raw["pause_s"] = pause_s
    assert code_of(packed(raw), accept=CONTROL_REQUESTS) == "field"


@pytest.mark.parametrize(
    "rgb",
    [
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((513, 512, 3), np.uint8),
    ],
    ids=["rgba", "gray", "float", "empty", "over-the-pixel-bound"],
)
def test_a_render_reply_is_an_rgb_frame_of_bounded_size(rgb):
    raw = raw_of(RenderReply(rgb=np.zeros((2, 2, 3), np.uint8)))
    raw["rgb"] = raw_of(RenderReply(rgb=np.zeros((1, 1, 3), np.uint8)))["rgb"][:1] + [list(rgb.shape), rgb.tobytes()]
    raw["rgb"][0] = {"uint8": "uint8", "float32": "float32"}[str(rgb.dtype)]
    assert code_of(packed(raw), accept=CONTROL_REPLIES) == "field"


# --- Step and StepReply in the fixed layout ---------------------------------------------------------------------------

FIXED_HEADS = {"step": "<BBBBHq", "step_reply": "<BBBBHqddBqH"}  # the layout as protocol.py documents it


def fixed_step(action=(0.5, -0.25), tick: int = 9) -> bytes:
    return encode(Step(tick=tick, action=np.asarray(action, np.float32)))


def fixed_reply(info=None, **fields) -> bytes:
    return encode(dataclasses.replace(step_reply_with(info or {}), **fields))


def test_step_and_step_reply_travel_in_the_fixed_layout_and_read_as_the_map_does():
    messages = [m for m in every_message() if type(m) in (Step, StepReply)]
    for message in messages:
        fixed, mapped = encode(message), encode(message, fixed_layout=False)
        assert fixed[:1] == b"\xc1" and mapped[:1] != b"\xc1" and len(fixed) < len(mapped)
        assert_same(decode(fixed), decode(mapped))
        assert_same(message, decode(fixed))
    flags = decode(fixed_reply(terminated=True, estopped=True, clears=2**40, tick=-(2**63)))
    assert (flags.terminated, flags.truncated, flags.watchdog_fired, flags.safe_action_applied, flags.estopped) == (
        True, False, False, False, True,
    )  # fmt: skip
    assert flags.clears == 2**40 and flags.tick == -(2**63)


def test_what_the_fixed_layout_cannot_hold_travels_as_a_map():
    for message in (
        Step(tick=2**63, action=np.zeros(2, np.float32)),  # a tick beyond int64
        Step(tick=0, action=np.zeros((2, 2), np.float32)),  # not 1-D
        Step(tick=0, action=np.zeros(2, np.int32)),  # not a float
        Step(tick=0, action=np.zeros(2, ">f8")),  # big-endian: the map form converts it
        StepReply(tick=0, obs=[0.0, 1.0], reward=0.0, terminated=False, truncated=False, driver_time_s=0.0),
    ):
        frame = encode(message)
        assert frame[:1] != b"\xc1"
        assert type(decode(frame)) is type(message)


def test_fixed_frames_keep_every_bound_of_the_map_form():
    assert code_of(b"\xc1\x07" + bytes(20)) == "type"  # no such kind
    assert code_of(fixed_step(), accept=CONTROL_REPLIES) == "type"  # a Step is no reply
    assert code_of(fixed_reply(), accept=CONTROL_REQUESTS) == "type"

    def with_head(frame: bytes, tag: str, index: int, value) -> bytes:
        head = struct.Struct(FIXED_HEADS[tag])
        fields = list(head.unpack_from(frame))
        fields[index] = value
        return head.pack(*fields) + frame[head.size :]

    step, reply = fixed_step(), fixed_reply({"temp_c": 40.5})
    assert code_of(with_head(step, "step", 2, PROTOCOL_VERSION - 1)) == "version"
    assert code_of(with_head(step, "step", 3, 2)) == "array"  # dtype code: only float32 and float64
    assert code_of(with_head(step, "step", 4, MAX_SPACE_ELEMENTS + 1)) == "array"  # before any length is trusted
    assert code_of(with_head(step, "step", 4, 3)) == "malformed"  # says 3 values, holds 2
    assert code_of(with_head(reply, "step_reply", 8, 1 << 5)) == "field"  # a flag bit no flag uses
    assert code_of(with_head(reply, "step_reply", 10, 1000)) == "malformed"  # info said longer than the frame
    head = struct.calcsize(FIXED_HEADS["step_reply"]) + 3 * 4
    assert code_of(reply[:head] + b"\xc1" + reply[head + 1 :], accept=CONTROL_REPLIES) == "malformed"  # not msgpack
    for info, code in (({"n": None}, "field"), ({"k" * (MAX_INFO_KEY_CHARS + 1): 0}, "field"), ([1, 2], "field")):
        raw_info = packed(info)
        frame = with_head(reply[:head], "step_reply", 10, len(raw_info)) + raw_info
        assert code_of(frame, accept=CONTROL_REPLIES) == code


def test_a_fixed_frame_info_of_many_objects_is_refused_before_it_is_unpacked():
    raw_info = packed([[]] * 60_000)  # one container per byte
    assert len(raw_info) < 2**16  # fits the layout's info length
    head = struct.Struct(FIXED_HEADS["step_reply"])
    fields = list(head.unpack_from(fixed_reply()))
    fields[10] = len(raw_info)
    frame = head.pack(*fields) + np.zeros(3, np.float32).tobytes() + raw_info
    assert peak_allocation_while(lambda: code_of(frame, accept=CONTROL_REPLIES)) < len(frame) // 4
    assert code_of(frame, accept=CONTROL_REPLIES) == "size"


def test_fixed_frame_arrays_are_read_only_and_owned_whatever_buffer_holds_the_frame():
    for frame in (fixed_step(), bytearray(fixed_step()), memoryview(bytearray(fixed_step())), memoryview(fixed_step())):
        action = decode(frame).action
        assert not action.flags.writeable
        np.testing.assert_array_equal(action, np.asarray((0.5, -0.25), np.float32))
    buffer = bytearray(fixed_step())
    message = decode(buffer)
    buffer[-4:] = np.float32(7).tobytes()  # the caller reuses its buffer
    buffer.extend(b"more")  # and may resize it: the message holds no view on it
    np.testing.assert_array_equal(message.action, np.asarray((0.5, -0.25), np.float32))
    assert_same(decode(memoryview(fixed_step()).cast("c")), decode(fixed_step()))  # any one-byte format


def test_a_frame_in_an_odd_buffer_is_refused_as_malformed():
    released = memoryview(fixed_step())
    released.release()
    for frame in (
        memoryview(np.array(0xC1, np.uint8)),  # zero-dimensional
        memoryview(b"\xc1\x01" * 20)[::2],  # strided
        memoryview(bytes(6000))[::2],
        released,
    ):
        assert code_of(frame) == "malformed"


def test_encode_refuses_by_name_what_neither_form_can_carry():
    for message in (
        dataclasses.replace(step_reply_with({}), info={"text": "\ud800"}),  # a lone surrogate is no UTF-8
        dataclasses.replace(step_reply_with({}), terminated=np.array([True, False])),
        dataclasses.replace(step_reply_with({}), info=None),
    ):
        with pytest.raises(ProtocolError) as info:
            encode(message)
        assert info.value.code == "field"


def test_random_frames_behind_the_fixed_marker_raise_only_protocol_error():
    rng = np.random.default_rng(4321)
    for _ in range(2000):
        kind = int(rng.choice([1, 2, int(rng.integers(256))]))
        body = rng.integers(0, 256, size=int(rng.integers(0, 120)), dtype=np.uint8).tobytes()
        with pytest.raises(ProtocolError):
            decode(b"\xc1" + bytes([kind, PROTOCOL_VERSION]) + body)
