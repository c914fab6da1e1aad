"""Batch-1 inference latency of the deployed actor: PolicyRunner (onnxruntime) vs torch eager vs numpy.

One actor in three implementations: Hopper's dims (obs 11, action 3), a 2x256 MLP with random weights and a
normaliser fitted to random data, action bounds [-1, 1]. Each implementation is called `--calls` times (default
20k) after `--warmup` calls, one float64 observation per call (as MuJoCo returns them), and every call is timed on
its own with perf_counter_ns, so the tails include the cast, the call overhead and whatever else the machine does.
All three are checked to agree (1e-5) before timing. torch runs with 1 thread, like a learner next to a controller.

Also timed: what a new policy version costs the controller off its hot path, an InferenceSession built from
bytes and a full PolicyRunner from bytes (sha256, space and graph checks, one probe inference).

Targets (DESIGN timing model): PolicyRunner p50 <= 25 us, p99 <= 60 us, and >= 3x faster than torch eager at p50.
Prints a table and writes bench/out/inference.json.

    python bench/inference.py [--calls 20000] [--warmup 2000] [--builds 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from acalign_robot.algo.networks import ObservationNormalizer, TanhGaussianActor
from acalign_robot.export.onnx_export import build_artifact
from acalign_robot.policy.runner import PolicyRunner, session_options

OBS_DIM, ACTION_DIM, HIDDEN = 11, 3, (256, 256)
OUT = Path(__file__).parent / "out" / "inference.json"
TARGETS_US = {"p50": 25.0, "p99": 60.0}
TARGET_SPEEDUP_VS_TORCH = 3.0


def make_actor(seed: int = 0) -> TanhGaussianActor:
    torch.manual_seed(seed)
    actor = TanhGaussianActor(OBS_DIM, ACTION_DIM, HIDDEN)
    data = np.random.default_rng(seed).normal(0.5, 2.0, size=(1000, OBS_DIM))
    actor.normalizer.load_state_dict(ObservationNormalizer.from_data(data).state_dict())
    return actor.eval().requires_grad_(False)


def torch_eager(actor: TanhGaussianActor, low: np.ndarray, high: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    scale, offset = torch.as_tensor((high - low) / 2), torch.as_tensor((high + low) / 2)

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            mean, _ = actor(torch.from_numpy(obs).float()[None])
            return (torch.tanh(mean) * scale + offset)[0].numpy()

    return act


def numpy_actor(actor: TanhGaussianActor, low: np.ndarray, high: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The same actor as float32 matmuls: (obs - mu) / sd -> [Linear, ReLU] x 2 -> Linear -> tanh(mean) scaled."""
    mu, sd = (actor.normalizer.mean.numpy().copy(), actor.normalizer.std.numpy().copy())
    linears = [layer for layer in actor.trunk if isinstance(layer, torch.nn.Linear)]
    weights = [(layer.weight.numpy().T.copy(), layer.bias.numpy().copy()) for layer in linears]  # (in, out), (out,)
    scale, offset = (high - low) / 2, (high + low) / 2

    def act(obs: np.ndarray) -> np.ndarray:
        x = (obs.astype(np.float32) - mu) / sd
        for w, b in weights[:-1]:
            x = np.maximum(x @ w + b, 0.0)
        w, b = weights[-1]
        mean = (x @ w + b)[:ACTION_DIM]  # the full last layer (mean and log std), as the graph computes it
        return np.tanh(mean) * scale + offset

    return act


def percentiles_us(samples_ns: np.ndarray) -> dict[str, float]:
    p50, p99, p999 = np.percentile(samples_ns, [50, 99, 99.9]) / 1000.0
    return {
        "p50_us": round(float(p50), 2),
        "p99_us": round(float(p99), 2),
        "p99_9_us": round(float(p999), 2),
        "max_us": round(float(samples_ns.max()) / 1000.0, 2),
    }


def time_calls(act: Callable[[np.ndarray], np.ndarray], observations: np.ndarray, warmup: int) -> np.ndarray:
    for obs in observations[:warmup]:
        act(obs)
    samples = np.empty(len(observations), dtype=np.int64)
    clock = time.perf_counter_ns
    for i, obs in enumerate(observations):
        start = clock()
        act(obs)
        samples[i] = clock() - start
    return samples


def time_builds(build: Callable[[], object], count: int) -> np.ndarray:
    build()  # the first build in a process pays one-off initialisation
    samples = np.empty(count, dtype=np.int64)
    for i in range(count):
        start = time.perf_counter_ns()
        build()
        samples[i] = time.perf_counter_ns() - start
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per implementation (default 20000)")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed calls first (default 2000)")
    parser.add_argument("--builds", type=int, default=200, help="timed session / runner builds (default 200)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    actor = make_actor()
    low, high = -np.ones(ACTION_DIM, dtype=np.float32), np.ones(ACTION_DIM, dtype=np.float32)
    meta = {"env_id": "Hopper-v5", "obs_dim": OBS_DIM, "action_dim": ACTION_DIM}
    meta |= {"action_low": low.tolist(), "action_high": high.tolist()}
    onnx_bytes, manifest = build_artifact(actor, meta, 0, "bench/inference.py", name="bench", version=1)
    runner = PolicyRunner(onnx_bytes, manifest, seed=0)
    implementations = {
        "PolicyRunner.act (onnxruntime)": runner.act,
        "PolicyRunner.act explore": lambda obs: runner.act(obs, explore=True),
        "torch eager": torch_eager(actor, low, high),
        "numpy matmul": numpy_actor(actor, low, high),
    }
    observations = np.random.default_rng(1).normal(0.5, 2.0, size=(args.calls, OBS_DIM))  # float64, like MuJoCo
    for obs in observations[:16]:
        reference = implementations["torch eager"](obs)
        for name in ("PolicyRunner.act (onnxruntime)", "numpy matmul"):
            np.testing.assert_allclose(implementations[name](obs), reference, atol=1e-5, err_msg=name)

    latency = {
        name: percentiles_us(time_calls(act, observations, args.warmup)) for name, act in implementations.items()
    }
    builds = {
        "InferenceSession from bytes": time_builds(
            lambda: ort.InferenceSession(onnx_bytes, session_options(), providers=["CPUExecutionProvider"]),
            args.builds,
        ),
        "PolicyRunner from bytes (sha256, checks, probe)": time_builds(
            lambda: PolicyRunner(onnx_bytes, manifest), args.builds
        ),
    }
    build_ms = {
        name: {
            "p50_ms": round(float(np.percentile(s, 50)) / 1e6, 3),
            "p99_ms": round(float(np.percentile(s, 99)) / 1e6, 3),
        }
        for name, s in builds.items()
    }

    ours, torch_p50 = latency["PolicyRunner.act (onnxruntime)"], latency["torch eager"]["p50_us"]
    speedup = torch_p50 / ours["p50_us"]
    verdicts = {
        f"PolicyRunner p50 <= {TARGETS_US['p50']:g} us": ours["p50_us"] <= TARGETS_US["p50"],
        f"PolicyRunner p99 <= {TARGETS_US['p99']:g} us": ours["p99_us"] <= TARGETS_US["p99"],
        f">= {TARGET_SPEEDUP_VS_TORCH:g}x faster than torch eager at p50 ({speedup:.1f}x)": speedup
        >= TARGET_SPEEDUP_VS_TORCH,
    }

    print(
        f"batch-1 latency, {args.calls} calls after {args.warmup} warm-up (obs {OBS_DIM}, action {ACTION_DIM}, 2x256)"
    )
    print(f"{'implementation':34s} {'p50 us':>8s} {'p99 us':>8s} {'p99.9 us':>9s} {'max us':>9s}")
    for name, row in latency.items():
        print(f"{name:34s} {row['p50_us']:8.1f} {row['p99_us']:8.1f} {row['p99_9_us']:9.1f} {row['max_us']:9.1f}")
    print()
    print(f"{'new policy version':50s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, row in build_ms.items():
        print(f"{name:50s} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f}")
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
                    "onnxruntime": ort.__version__,
                    "torch": str(torch.__version__),
                    "numpy": np.__version__,
                },
                "config": {
                    "calls": args.calls,
                    "warmup": args.warmup,
                    "builds": args.builds,
                    "obs_dim": OBS_DIM,
                    "action_dim": ACTION_DIM,
                    "hidden": list(HIDDEN),
                    "torch_threads": 1,
                },
                "latency_us": latency,
                "new_policy_ms": build_ms,
                "speedup_vs_torch_eager_p50": round(speedup, 2),
                "targets": verdicts,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {OUT}")


if __name__ == "__main__":
    main()
