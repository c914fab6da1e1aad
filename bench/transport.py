"""Wire codec and ZeroMQ transport: what a control tick and a transition stream cost.

Three measurements, Hopper's sizes (obs 11 float64 from MuJoCo, action 3 float32):
- codec: encode + decode of one message, timed per call with perf_counter_ns: Step, StepReply, TransitionBatch of
  64 transitions (float32), and a 300 KB Policy for scale;
- the codec cold, as a control tick runs it: each of a tick's four calls (Step and StepReply, the reply carrying the
  MuJoCo driver's `applied_action` info) after a 2 ms sleep, p50 over `--cold-calls`, in the map form and in the
  fixed layout (protocol.py), the two alternating;
- control round trip: ZmqControlClient.request(Step) -> StepReply against a ZmqControlServer in another process
  (like a driver), tcp on 127.0.0.1, `--requests` timed requests after a warm-up;
- transitions: ZmqTransitionSender -> ZmqTransitionReceiver (in another process, decoding every batch), 64
  transitions per message; the sender retries a dropped batch after a short sleep, so everything is delivered and
  the rate is what the learner's side sustains. Drops (full queue) are reported.

Targets: codec Step and StepReply encode+decode p50 <= 10 us each; round trip p50 <= 400 us (ENVIRONMENT.md: a bare
socket ~115 us, REQ/REP 180-240 us on these machines); >= 200k transitions/s (a 1 kHz controller makes 1k/s).
Prints a table and writes bench/out/transport.json.

    python bench/transport.py [--requests 5000] [--messages 3000] [--codec-calls 20000] [--cold-calls 500]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import zmq

from acalign_robot.wire.channels import free_tcp_endpoint
from acalign_robot.wire.protocol import (
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    Policy,
    Step,
    StepReply,
    TransitionBatch,
    decode,
    encode,
)
from acalign_robot.wire.transport import ZmqControlClient, ZmqControlServer, ZmqTransitionReceiver, ZmqTransitionSender

OBS_DIM, ACTION_DIM, BATCH = 11, 3, 64
OUT = Path(__file__).parent / "out" / "transport.json"
TARGETS = {"codec_p50_us": 10.0, "round_trip_p50_us": 400.0, "transitions_per_s": 200_000.0}
HELPER_LIFETIME_S = 300.0  # a helper process exits on its own even if this script dies


def step(tick: int) -> Step:
    return Step(tick=tick, action=np.full(ACTION_DIM, 0.1, np.float32))


def step_reply(tick: int) -> StepReply:
    return StepReply(
        tick=tick,
        obs=np.linspace(-1.0, 1.0, OBS_DIM),
        reward=1.0,
        terminated=False,
        truncated=False,
        driver_time_s=time.monotonic(),
    )


def transition_batch(seq: int) -> TransitionBatch:
    rng = np.random.default_rng(seq)
    return TransitionBatch(
        stream_id="bench",
        seq=seq,
        policy_version=np.ones(BATCH, np.int64),
        obs=rng.standard_normal((BATCH, OBS_DIM)).astype(np.float32),
        action=rng.uniform(-1, 1, (BATCH, ACTION_DIM)).astype(np.float32),
        reward=rng.standard_normal(BATCH).astype(np.float32),
        next_obs=rng.standard_normal((BATCH, OBS_DIM)).astype(np.float32),
        terminated=np.zeros(BATCH, bool),
        truncated=np.zeros(BATCH, bool),
        extras={"raw_action": rng.uniform(-1, 1, (BATCH, ACTION_DIM)).astype(np.float32)},
    )


def percentiles_us(samples_ns: np.ndarray) -> dict[str, float]:
    return {
        name: round(float(np.percentile(samples_ns, q)) / 1e3, 2)
        for name, q in (("p50_us", 50), ("p99_us", 99), ("p99_9_us", 99.9), ("max_us", 100))
    }


def time_codec(message, calls: int) -> dict[str, float]:
    frame = encode(message)
    samples = np.empty(calls, dtype=np.int64)
    for i in range(calls):
        start = time.perf_counter_ns()
        decode(encode(message))
        samples[i] = time.perf_counter_ns() - start
    return {"frame_bytes": len(frame), **percentiles_us(samples)}


def time_codec_cold(calls: int, sleep_s: float = 0.002) -> dict[str, dict[str, float]]:
    """p50 us of each codec call of a control tick, each after `sleep_s` of sleep (caches and predictors cold, as
    after a tick's idle time), map form against fixed layout, alternating which goes first."""
    request = step(1)
    reply = dataclasses.replace(step_reply(1), info={"applied_action": request.action.astype(np.float64)})
    frames = {fixed: (encode(request, fixed), encode(reply, fixed)) for fixed in (False, True)}
    calls_of_a_tick = {
        "encode Step": lambda fixed: encode(request, fixed),
        "decode Step": lambda fixed: decode(frames[fixed][0], accept=CONTROL_REQUESTS),
        "encode StepReply": lambda fixed: encode(reply, fixed),
        "decode StepReply": lambda fixed: decode(frames[fixed][1], accept=CONTROL_REPLIES),
    }
    samples = {(name, fixed): np.empty(calls, np.int64) for name in calls_of_a_tick for fixed in (False, True)}
    for i in range(calls):
        for name, call in calls_of_a_tick.items():
            for fixed in (i % 2 == 0, i % 2 == 1):
                time.sleep(sleep_s)
                start = time.perf_counter_ns()
                call(fixed)
                samples[name, fixed][i] = time.perf_counter_ns() - start
    table = {
        name: {form: float(np.median(samples[name, fixed])) / 1e3 for form, fixed in (("map", False), ("fixed", True))}
        for name in calls_of_a_tick
    }
    table["a tick's four calls"] = {form: sum(row[form] for row in table.values()) for form in ("map", "fixed")}
    table["bytes Step / StepReply"] = {
        form: f"{len(frames[fixed][0])} / {len(frames[fixed][1])}" for form, fixed in (("map", False), ("fixed", True))
    }
    return table


def serve_steps(endpoint: str) -> None:
    """The driver stand-in: answer every Step with a StepReply until terminated."""
    with ZmqControlServer(endpoint) as server:
        deadline = time.monotonic() + HELPER_LIFETIME_S
        while time.monotonic() < deadline:
            got = server.recv(1.0)
            if got is not None:
                server.send(got[0], step_reply(got[1].tick))


def receive_transitions(endpoint: str, messages: int, results) -> None:
    """The learner stand-in: decode `messages` batches; the rate counts what arrived after the first one."""
    with ZmqTransitionReceiver(endpoint) as receiver:
        first = receiver.recv(60.0)  # waits for the sender's start-up
        first_s, transitions_after_first = time.monotonic(), 0
        for _ in range(messages - 1):
            message = receiver.recv(30.0)
            if message is None:
                break
            transitions_after_first += len(message)
        results.send(
            {
                "messages": receiver.counters.received,
                "transitions": len(first) + transitions_after_first,
                "transitions_per_s": transitions_after_first / (time.monotonic() - first_s),
                "messages_per_s": (receiver.counters.received - 1) / (time.monotonic() - first_s),
                "protocol_errors": receiver.counters.protocol_errors,
            }
        )


def start_helper(target: Callable, *args) -> multiprocessing.Process:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    return process


def round_trip(requests: int, warmup: int) -> dict[str, float]:
    endpoint = free_tcp_endpoint()
    helper = start_helper(serve_steps, endpoint)
    try:
        with ZmqControlClient(endpoint) as client:
            client.request(step(0), timeout_s=60.0)  # waits for the helper's start-up (imports, bind)
            for tick in range(warmup):
                client.request(step(tick), timeout_s=5.0)
            samples = np.empty(requests, dtype=np.int64)
            for i in range(requests):
                start = time.perf_counter_ns()
                client.request(step(i), timeout_s=5.0)
                samples[i] = time.perf_counter_ns() - start
            counters = client.counters.as_dict()
    finally:
        helper.terminate()
        helper.join(timeout=10)
    return {**percentiles_us(samples), "timeouts": counters["timeouts"], "stale": counters["stale"]}


def transitions(messages: int) -> dict[str, float]:
    endpoint = free_tcp_endpoint()
    parent_end, child_end = multiprocessing.get_context("spawn").Pipe()
    helper = start_helper(receive_transitions, endpoint, messages, child_end)
    frames = [transition_batch(seq) for seq in range(64)]
    try:
        with ZmqTransitionSender(endpoint) as sender:
            start = time.monotonic()
            for seq in range(messages):
                while not sender.send(frames[seq % len(frames)]):
                    time.sleep(0.0002)  # queue full: the learner is behind (or still starting)
            offered_s = time.monotonic() - start
            if not parent_end.poll(60.0):
                raise RuntimeError("the receiver did not report")
            report = parent_end.recv()
            drops = sender.counters.drops
    finally:
        helper.join(timeout=10)
        if helper.is_alive():
            helper.terminate()
    return {
        "messages": report["messages"],
        "transitions": report["transitions"],
        "transitions_per_s": round(report["transitions_per_s"]),
        "messages_per_s": round(report["messages_per_s"]),
        "send_loop_s": round(offered_s, 3),
        "drops_retried": drops,
        "protocol_errors": report["protocol_errors"],
        "frame_bytes": len(encode(frames[0])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5_000, help="timed control requests (default 5000)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed requests first (default 500)")
    parser.add_argument("--messages", type=int, default=3_000, help="transition batches of 64 (default 3000)")
    parser.add_argument("--codec-calls", type=int, default=20_000, help="timed encode+decode calls (default 20000)")
    parser.add_argument("--cold-calls", type=int, default=500, help="cold calls of each kind and form (default 500)")
    args = parser.parse_args()

    codec = {
        "Step": time_codec(step(1), args.codec_calls),
        "StepReply": time_codec(step_reply(1), args.codec_calls),
        f"TransitionBatch({BATCH})": time_codec(transition_batch(0), args.codec_calls // 4),
        "Policy(300 KB)": time_codec(Policy(version=1, onnx=bytes(300_000), manifest={"obs_dim": 11}), 200),
    }
    cold = time_codec_cold(args.cold_calls)
    control = round_trip(args.requests, args.warmup)
    stream = transitions(args.messages)
    verdicts = {
        f"codec Step p50 <= {TARGETS['codec_p50_us']:g} us": codec["Step"]["p50_us"] <= TARGETS["codec_p50_us"],
        f"codec StepReply p50 <= {TARGETS['codec_p50_us']:g} us": codec["StepReply"]["p50_us"]
        <= TARGETS["codec_p50_us"],
        f"round trip p50 <= {TARGETS['round_trip_p50_us']:g} us": control["p50_us"] <= TARGETS["round_trip_p50_us"],
        f">= {TARGETS['transitions_per_s']:,.0f} transitions/s": stream["transitions_per_s"]
        >= TARGETS["transitions_per_s"],
    }

    print(f"codec: encode + decode per message (obs {OBS_DIM}, action {ACTION_DIM})")
    print(f"{'message':22s} {'bytes':>8s} {'p50 us':>8s} {'p99 us':>8s} {'p99.9 us':>9s}")
    for name, row in codec.items():
        print(f"{name:22s} {row['frame_bytes']:8d} {row['p50_us']:8.2f} {row['p99_us']:8.2f} {row['p99_9_us']:9.2f}")
    print()
    print("codec cold: each call of a control tick after a 2 ms sleep, p50 us, map form vs fixed layout")
    print(f"{'call':22s} {'map':>9s} {'fixed':>9s}")
    for name, row in cold.items():
        print(f"{name:22s} {row['map']:>9} {row['fixed']:>9}" if "bytes" in name else
              f"{name:22s} {row['map']:9.1f} {row['fixed']:9.1f}")  # fmt: skip
    print()
    print(f"control round trip, DEALER/ROUTER over tcp 127.0.0.1, responder process, {args.requests} requests")
    print(f"{'p50 us':>8s} {'p99 us':>8s} {'p99.9 us':>9s} {'max us':>9s} {'timeouts':>9s}")
    print(
        f"{control['p50_us']:8.1f} {control['p99_us']:8.1f} {control['p99_9_us']:9.1f} {control['max_us']:9.1f} "
        f"{control['timeouts']:9d}"
    )
    print()
    print(f"transitions, DEALER/ROUTER over tcp 127.0.0.1, {BATCH} per message, receiver process decodes every batch")
    print(f"{'messages':>9s} {'transitions/s':>14s} {'messages/s':>11s} {'bytes/msg':>10s} {'drops retried':>14s}")
    print(
        f"{stream['messages']:9d} {stream['transitions_per_s']:14,d} {stream['messages_per_s']:11,d} "
        f"{stream['frame_bytes']:10d} {stream['drops_retried']:14d}"
    )
    print()
    for target, ok in verdicts.items():
        print(f"{'PASS' if ok else 'FAIL'}  {target}")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                    "cpus": os.cpu_count(),
                    "load_average_1m": os.getloadavg()[0],
                    "python": platform.python_version(),
                    "pyzmq": zmq.__version__,
                    "libzmq": zmq.zmq_version(),
                    "msgpack": ".".join(map(str, msgpack.version)),
                    "numpy": np.__version__,
                },
                "config": vars(args) | {"obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "batch": BATCH},
                "codec_us": codec,
                "codec_cold_p50_us": cold,
                "control_round_trip_us": control,
                "transitions": stream,
                "targets": verdicts,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
