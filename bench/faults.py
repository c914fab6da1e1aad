"""Fault matrix: inject each fault into real processes and measure the reaction.

Each row starts a MuJoCo Hopper driver process and a controller process (an untrained exported 2x256 policy,
durable log on), injects one fault, lets the processes stop, and reads their statistics, logs and exit codes:
- reaction: the measured time from the fault to the safe reaction (driver watchdog latency, controller SAFE
  latch after its last good reply), or what was observed;
- lost: executed transitions (steps the driver answered) missing from the controller's durable log; a controller
  killed with SIGKILL loses its open chunk by design (at most `chunk_transitions`), every other row must be 0;
- crash: a process that died other than as the fault intended.
Prints a table and writes bench/out/faults.json.

    python bench/faults.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from runtime_rig import export_hopper_policy

CLI = [sys.executable, "-m", "acalign_robot.cli"]


class Rig:
    """A driver process and a controller process in a scratch directory; everything is killed by `close()`."""

    def __init__(self, workdir: Path, policy: Path, name: str, driver_fields=None, controller_fields=None):
        from acalign_robot.runtime.transport import free_tcp_endpoint

        self.dir = workdir / name
        self.dir.mkdir()
        self.endpoint = free_tcp_endpoint()
        self.processes: list[subprocess.Popen] = []
        driver = {
            "kind": "mujoco",
            "env_id": "Hopper-v5",
            "endpoint": self.endpoint,
            "watchdog_ms": 100,
            **(driver_fields or {}),
        }
        (self.dir / "driver.yaml").write_text(yaml.safe_dump(driver))
        controller = {
            "driver_endpoint": self.endpoint,
            "policy": str(policy),
            "output_dir": str(self.dir / "ctl"),
            "driver_timeout_ms": 50,
            "duration_s": 6,
            **(controller_fields or {}),
        }
        (self.dir / "controller.yaml").write_text(yaml.safe_dump(controller))

    def start(self, role: str) -> subprocess.Popen:
        ready = self.dir / f"{role}.ready"
        process = subprocess.Popen(
            [*CLI, role, "--config", str(self.dir / f"{role}.yaml"), "--ready-file", str(ready)],
            stdout=open(self.dir / f"{role}.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        deadline = time.monotonic() + 60
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return process

    def driver_stats(self) -> dict:
        from acalign_robot.runtime import protocol as p
        from acalign_robot.runtime.transport import ZmqControlClient

        with ZmqControlClient(self.endpoint) as client:
            return dict(client.request(p.Stats(source="bench", values={}), 5.0).values)

    def controller_stats(self) -> dict:
        path = self.dir / "ctl" / "stats.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def logged(self) -> int:
        from acalign_robot.runtime.transition_log import LogError, read_log

        try:
            return len(read_log(self.dir / "ctl" / "log").reward)
        except LogError:  # no chunk closed before a kill
            return 0

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def executed_minus_logged(rig: Rig, stats: dict) -> int:
    return stats["ticks"] - stats["driver_timeouts"] - rig.logged()


def controller_killed(workdir: Path, policy: Path) -> dict:
    rig = Rig(workdir, policy, "controller-kill", controller_fields={"duration_s": 60})
    try:
        rig.start("driver")
        controller = rig.start("controller")
        time.sleep(2.0)
        os.kill(controller.pid, signal.SIGKILL)
        controller.wait()
        time.sleep(0.5)
        stats = rig.driver_stats()
        executed = stats["steps"] - stats["watchdog_safe_steps"]
        crash = rig.processes[0].poll() is not None
        return {
            "fault": "controller killed (SIGKILL)",
            "expected": "driver applies the safe action within 100 ms",
            "reaction_ms": 1000 * stats["last_watchdog_latency_s"],
            "lost": executed - rig.logged(),
            "lost_note": "open chunk, by design",
            "crash": crash,
        }
    finally:
        rig.close()


def driver_frozen(workdir: Path, policy: Path) -> dict:
    rig = Rig(workdir, policy, "driver-sigstop")
    try:
        driver = rig.start("driver")
        controller = rig.start("controller")
        time.sleep(2.0)
        os.kill(driver.pid, signal.SIGSTOP)
        code = controller.wait(timeout=60)
        os.kill(driver.pid, signal.SIGCONT)
        stats = rig.controller_stats()
        return {
            "fault": "driver frozen (SIGSTOP)",
            "expected": "controller latches SAFE within 50 ms",
            "reaction_ms": 1000 * stats["safe_reaction_s"],
            "lost": executed_minus_logged(rig, stats),
            "crash": code != 0 or driver.poll() is not None,
        }
    finally:
        rig.close()


def nan_observations(workdir: Path, policy: Path) -> dict:
    sim = workdir / "nan_sim.yaml"
    sim.write_text(yaml.safe_dump({"env_id": "Hopper-v5", "realism": {"nan_observation_probability": 0.01}}))
    rig = Rig(workdir, policy, "nan-obs", driver_fields={"env_id": None, "sim": str(sim)})
    try:
        rig.start("driver")
        code = rig.start("controller").wait(timeout=60)
        stats = rig.controller_stats()
        return {
            "fault": "NaN observations from the driver",
            "expected": "SAFE latched before the next action",
            "reaction_ms": 1000 * stats["safe_reaction_s"],
            "lost": executed_minus_logged(rig, stats),
            "crash": code != 0 or rig.processes[0].poll() is not None,
        }
    finally:
        rig.close()


def bad_frames(workdir: Path, policy: Path) -> dict:
    import msgpack
    import zmq

    rig = Rig(workdir, policy, "bad-frames")
    try:
        rig.start("driver")
        controller = rig.start("controller")
        rng = np.random.default_rng(0)
        context = zmq.Context()
        raw = context.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(rig.endpoint)
        frames = [rng.bytes(int(rng.integers(1, 300))) for _ in range(500)]
        frames.append(msgpack.packb({"v": 99, "t": "step"}))
        latencies = []
        for index, frame in enumerate(frames):
            started = time.perf_counter()
            raw.send_multipart([index.to_bytes(8, "little"), frame])
            if raw.poll(2000):
                raw.recv_multipart()
                latencies.append(time.perf_counter() - started)
        raw.send_multipart([b"x" * 8, b"y" * (2 * 1024 * 1024)])  # oversized: ZeroMQ drops the connection
        raw.close()
        context.term()
        code = controller.wait(timeout=60)
        stats, driver = rig.controller_stats(), rig.driver_stats()
        return {
            "fault": f"{len(frames)} bad frames + 1 oversized at the driver",
            "expected": "each answered with an Error, counted; control goes on",
            "reaction_ms": 1000 * float(np.median(latencies)),
            "observed": f"{driver['bad_requests']} counted, {len(latencies)} answered",
            "lost": executed_minus_logged(rig, stats),
            "crash": code != 0 or rig.processes[0].poll() is not None,
        }
    finally:
        rig.close()


def corrupted_policy(workdir: Path, policy: Path) -> dict:
    broken = workdir / "broken" / "bench" / "1"
    broken.mkdir(parents=True)
    data = bytearray((policy / "policy.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "policy.onnx").write_bytes(bytes(data))
    (broken / "manifest.json").write_text((policy / "manifest.json").read_text())
    rig = Rig(workdir, broken, "corrupted-onnx")
    try:
        rig.start("driver")
        started = time.perf_counter()
        controller = rig.start("controller")
        code = controller.wait(timeout=60)
        message = (rig.dir / "controller.log").read_text().strip().splitlines()[-1]
        return {
            "fault": "corrupted ONNX file at controller start",
            "expected": "refused before any motion, exit 2",
            "reaction_ms": 1000 * (time.perf_counter() - started),
            "observed": f"exit {code}: {message[:60]}",
            "lost": 0,
            "crash": code != 2,
        }
    finally:
        rig.close()


def main() -> None:
    out = Path("bench/out/faults.json")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        policy, _, _ = export_hopper_policy(workdir / "policies")
        rows = [
            scenario(workdir, policy)
            for scenario in (controller_killed, driver_frozen, nan_observations, bad_frames, corrupted_policy)
        ]
    print(f"{'fault':<42} {'expected reaction':<52} {'measured':>10} {'lost':>5} {'crash':>6}")
    for row in rows:
        lost = f"{row['lost']}" + (f" ({row['lost_note']})" if row.get("lost_note") else "")
        print(
            f"{row['fault']:<42} {row['expected']:<52} {row['reaction_ms']:>8.1f}ms {lost:>5} "
            f"{'yes' if row['crash'] else 'no':>6}" + (f"   [{row['observed']}]" if row.get("observed") else "")
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
