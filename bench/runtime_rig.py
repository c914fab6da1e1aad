"""What the runtime benchmarks share: an untrained 2x256 Hopper-v5 policy artifact (latency and fault handling do not
depend on the weights), a MuJoCo Hopper driver process at one 2 ms physics step per tick (sim/hopper_500hz.yaml,
unpaced), and a controller process run to completion."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "acalign_robot.cli"]
_ipc_names = itertools.count()
HOPPER_META = {
    "env_id": "Hopper-v5",
    "obs_dim": 11,
    "action_dim": 3,
    "action_low": [-1.0] * 3,
    "action_high": [1.0] * 3,
}


def export_hopper_policy(directory: Path) -> tuple[Path, bytes, dict]:
    """Write `directory/bench/1/` (policy.onnx + manifest.json); returns its path, the ONNX bytes and the manifest."""
    import torch

    from acalign_robot.algo.networks import TanhGaussianActor
    from acalign_robot.export.onnx_export import build_artifact
    from acalign_robot.policy.store import MANIFEST_FILE, POLICY_FILE

    torch.manual_seed(0)
    actor = TanhGaussianActor(11, 3, (256, 256)).requires_grad_(False)
    onnx_bytes, manifest = build_artifact(actor, HOPPER_META, 1, "bench", name="bench", version=1)
    target = directory / "bench" / "1"
    target.mkdir(parents=True)
    (target / POLICY_FILE).write_bytes(onnx_bytes)
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))
    return target, onnx_bytes, manifest


def aligned_checkpoint(path: Path, seeded: int = 10_000) -> Path:
    """An 'online' Hopper checkpoint as `acalign align` writes it, on random data: 2x256 networks, `seeded` steps."""
    import numpy as np
    import torch

    from acalign_robot import config as config_io
    from acalign_robot.algo.aca import OfflineACA, align, load_preset
    from acalign_robot.algo.checkpoint import online_state, save_checkpoint
    from acalign_robot.data.replay_buffer import ReplayBuffer

    torch.manual_seed(0)
    obs_dim, action_dim = HOPPER_META["obs_dim"], HOPPER_META["action_dim"]
    rng = np.random.default_rng(0)
    config = load_preset("medium")
    buffer = ReplayBuffer(1_000_000, obs_dim, action_dim)
    buffer.add_batch(
        rng.normal(size=(seeded, obs_dim)).astype(np.float32),
        rng.uniform(-1, 1, size=(seeded, action_dim)).astype(np.float32),
        rng.normal(size=seeded).astype(np.float32),
        rng.normal(size=(seeded, obs_dim)).astype(np.float32),
        np.zeros(seeded, np.float32),
    )
    agent = align(OfflineACA(obs_dim, action_dim, config, buffer.obs[:seeded]))
    meta = {**HOPPER_META, "datasets": [], "finetune": "aca"}
    state = online_state(agent, buffer, env_steps=0)
    return save_checkpoint(path, "online", state, config_io.to_dict(config), meta)


def bench_endpoint(workdir: Path, transport: str = "tcp") -> str:
    """A free loopback TCP endpoint, or a fresh Unix socket path under `workdir` (`transport` "ipc")."""
    from acalign_robot.wire.channels import free_tcp_endpoint

    if transport == "tcp":
        return free_tcp_endpoint()
    return f"ipc://{workdir / f'link-{next(_ipc_names)}.sock'}"


@contextlib.contextmanager
def hopper_driver(
    workdir: Path, label: str, spin_wait: bool = False, transport: str = "tcp", realtime: dict | None = None
) -> Iterator[str]:
    """A MuJoCo Hopper driver process (2 ms per tick, unpaced) for the duration of the block; yields its endpoint.
    `realtime`: the driver's `realtime:` section (SCHED_FIFO priority, cores)."""
    endpoint = bench_endpoint(workdir, transport)
    config = workdir / f"driver-{label}.yaml"
    sim = str(REPO / "sim" / "hopper_500hz.yaml")
    fields = {
        "kind": "mujoco",
        "sim": sim,
        "endpoint": endpoint,
        "watchdog_ms": 500,
        "spin_wait": spin_wait,
        "realtime": realtime or {},
    }
    config.write_text(yaml.safe_dump(fields))
    ready = workdir / f"driver-{label}.ready"
    driver = subprocess.Popen(
        [*CLI, "driver", "--config", str(config), "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while not ready.exists():
            if driver.poll() is not None:
                raise RuntimeError("the driver failed to start")
            time.sleep(0.05)
        yield endpoint
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


def run_controller(workdir: Path, label: str, fields: dict, timeout_s: float) -> dict:
    """Run a controller process with these ControllerConfig fields to its end; returns its stats.json."""
    out = workdir / f"controller-{label}"
    config = workdir / f"controller-{label}.yaml"
    config.write_text(yaml.safe_dump({**fields, "output_dir": str(out)}))
    subprocess.run(
        [*CLI, "controller", "--config", str(config)], check=True, stdout=subprocess.DEVNULL, timeout=timeout_s
    )
    return json.loads((out / "stats.json").read_text())
