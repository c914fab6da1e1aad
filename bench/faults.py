"""Fault and hostile-input matrix: inject each fault into real processes and measure the reaction.

Each row starts a MuJoCo Hopper driver process and a controller process (an untrained exported 2x256 policy,
durable log on; for the learner row also a learner process on an aligned checkpoint of random data), injects one
fault, lets the processes stop, and reads their statistics, logs and exit codes:
- reaction: the measured time from the fault to the safe reaction (driver watchdog latency, controller SAFE
  latch after its last good reply), or what was observed;
- lost: executed transitions (steps the driver answered) missing from the controller's durable log; a controller
  killed with SIGKILL loses its open chunk by design (at most `chunk_transitions`), every other row must be 0; for
  the learner row: logged transitions missing from the restarted learner's buffer (negative: inserted twice);
- crash (printed "fail"): a process that died other than as the fault intended, or the row's expectation not held;
- rss: the attacked process's resident memory before -> after the fault, and its peak (MB), for the hostile rows;
- rate: the controller's achieved control rate over the run / its target (1.00: control held).
The hostile rows come from an attacker with local access (a process of another user on the robot computer, or
the same user's buggy tool): each sends what one socket allows, to a running driver, controller or learner.
Prints a table and writes bench/out/faults.json.

    python bench/faults.py [--only learner_killed ...]
"""

from __future__ import annotations

import argparse
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
from runtime_rig import aligned_checkpoint, export_hopper_policy

CLI = [sys.executable, "-m", "acalign_robot.cli"]


class Rig:
    """A driver process and a controller process in a scratch directory; everything is killed by `close()`."""

    def __init__(self, workdir: Path, policy: Path, name: str, driver_fields=None, controller_fields=None):
        from acalign_robot.wire.transport import free_tcp_endpoint

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

    def start(self, role: str, *extra_args: str) -> subprocess.Popen:
        ready = self.dir / f"{role}.ready"
        ready.unlink(missing_ok=True)
        process = subprocess.Popen(
            [*CLI, role, "--config", str(self.dir / f"{role}.yaml"), "--ready-file", str(ready), *extra_args],
            stdout=open(self.dir / f"{role}.log", "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        deadline = time.monotonic() + 60
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return process

    def driver_stats(self) -> dict:
        from acalign_robot.wire import protocol as p
        from acalign_robot.wire.transport import ZmqControlClient

        with ZmqControlClient(self.endpoint) as client:
            return dict(client.request(p.Stats(source="bench", values={}), 5.0).values)

    def controller_stats(self) -> dict:
        path = self.dir / "ctl" / "stats.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def logged(self) -> int:
        from acalign_robot.robot_log.transition_log import LogError, read_log

        try:
            return len(read_log(self.dir / "ctl" / "log").reward)
        except LogError:  # no chunk closed before a kill
            return 0

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) memory of a process, MB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def rate_held(stats: dict) -> float:
    return stats["achieved_rate_hz"] / stats["target_rate_hz"]


def raw_dealer(endpoint: str):
    """A bare ZeroMQ DEALER: the attacker's own client, which follows none of the project's conventions."""
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    return context, socket


def executed_minus_logged(rig: Rig, stats: dict) -> int:
    return stats["ticks"] - stats["driver_timeouts"] - stats.get("step_errors", 0) - rig.logged()


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


def learner_killed(workdir: Path, policy: Path) -> dict:
    from acalign_robot.wire.transport import free_tcp_endpoint

    transitions, policies = free_tcp_endpoint(), free_tcp_endpoint()
    rig = Rig(
        workdir,
        policy,
        "learner-kill",
        controller_fields={
            "duration_s": 30,  # room for the restarted learner's start-up (torch import, checkpoint) on a busy machine
            "explore": True,
            "learner_endpoint": transitions,
            "policy_endpoint": policies,
        },
    )
    learner_dir = rig.dir / "learner"
    learner = {
        "checkpoint": str(aligned_checkpoint(rig.dir / "aligned.pt", seeded=2_000)),
        "checkpoint_dir": str(learner_dir),
        "transitions_endpoint": transitions,
        "policy_endpoint": policies,
        "checkpoint_every_updates": 200,
    }
    (rig.dir / "learner.yaml").write_text(yaml.safe_dump(learner))
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    try:
        first = rig.start("learner")
        rig.start("driver")
        controller = rig.start("controller")
        time.sleep(5.0)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        batches_at_kill = read(rig.dir / "ctl" / "status.json")["transition_batches"]
        time.sleep(2.0)  # control goes on without a learner
        restarted = rig.start("learner", "--resume")
        back = time.monotonic()
        recovery_s = None
        while recovery_s is None and controller.poll() is None:
            (stream,) = list(read(learner_dir / "status.json")["controllers"].values()) or [{"received_through": -1}]
            if stream["received_through"] >= batches_at_kill - 1:
                recovery_s = time.monotonic() - back
            time.sleep(0.05)
        code = controller.wait(timeout=60)
        restarted.send_signal(signal.SIGTERM)
        learner_code = restarted.wait(timeout=120)
        stats = rig.controller_stats()
        streams = list(read(learner_dir / "status.json")["controllers"].values())
        stream = streams[0] if streams else {"duplicates": 0, "transitions": 0}  # none: nothing reached it
        logged = rig.logged()
        return {
            "fault": "learner killed (SIGKILL), back 2 s later",
            "expected": "control goes on; what the learner lost is resent",
            "reaction_ms": 1000 * recovery_s if recovery_s is not None else float("nan"),
            "observed": (
                ("lost batches back within 1 s resolution; " if recovery_s is not None else "never caught up; ")
                + f"{stats['transition_batches_resent']} batches resent, {stream['duplicates']} duplicates refused, "
                f"learner holds {stream['transitions']} of {logged} logged"
            ),
            "lost": logged - stream["transitions"],
            "crash": code != 0 or learner_code != 0 or rig.processes[1].poll() is not None,
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


def control_frame_expansion(workdir: Path, policy: Path) -> dict:
    import msgpack

    rig = Rig(workdir, policy, "control-expansion")
    try:
        driver = rig.start("driver")
        controller = rig.start("controller")
        time.sleep(2.0)
        before, _ = memory_mb(driver.pid)
        frame = msgpack.packb([[]] * 1_000_000)  # 0.95 MiB on the wire, ~75 MB once unpacked
        context, raw = raw_dealer(rig.endpoint)
        started = time.perf_counter()
        raw.send_multipart([bytes(8), frame])
        answered = raw.poll(5000)
        reaction = time.perf_counter() - started
        raw.close()
        context.term()
        after, peak = memory_mb(driver.pid)
        code = controller.wait(timeout=60)
        stats = rig.controller_stats()
        return {
            "fault": "control: 1 MiB frame of 10^6 empty lists",
            "expected": "refused before unpacking; control goes on",
            "reaction_ms": 1000 * reaction if answered else float("nan"),
            "observed": f"driver timeouts {stats['driver_timeouts']}, SAFE {stats['safe']}",
            "rss_mb": [before, after, peak],
            "rate": rate_held(stats),
            "lost": executed_minus_logged(rig, stats),
            "crash": code != 0 or driver.poll() is not None or stats["safe"],
        }
    finally:
        rig.close()


def policy_frame_expansion(workdir: Path, policy: Path) -> dict:
    """A hostile publisher bound where the controller expects its learner: two 16 MiB-class frames."""
    import msgpack
    import zmq

    from acalign_robot.wire.transport import free_tcp_endpoint

    nested = msgpack.packb([[]] * 16_000_000)  # 15.3 MiB of empty lists
    manifest = {"v": 1, "t": "policy", "version": 9, "onnx": b"x", "manifest": {str(i): i for i in range(10**6)}}
    frames = (nested, msgpack.packb(manifest))  # built before the run: packing them takes seconds
    endpoint = free_tcp_endpoint()
    rig = Rig(workdir, policy, "policy-expansion", controller_fields={"policy_endpoint": endpoint, "duration_s": 8})
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.bind(endpoint)
    try:
        rig.start("driver")
        controller = rig.start("controller")
        time.sleep(2.0)
        before, _ = memory_mb(controller.pid)
        for frame in frames:
            publisher.send(frame)
            time.sleep(1.5)
        after, peak = memory_mb(controller.pid)
        code = controller.wait(timeout=60)
        stats = rig.controller_stats()
        return {
            "fault": "policy: 16 MiB of [] + a 10^6-key manifest",
            "expected": "refused; no tick longer than a period",
            "reaction_ms": 1000 * stats["tick_max_s"],
            "observed": f"rejections {stats.get('swap_rejections')}, {stats['deadline_misses']} deadline misses",
            "rss_mb": [before, after, peak],
            "rate": rate_held(stats),
            "lost": executed_minus_logged(rig, stats),
            "crash": code != 0 or stats["safe"] or stats.get("swap_rejections", {}).get("protocol") != len(frames),
        }
    finally:
        publisher.close()
        context.term()
        rig.close()


def watchdog_under_flood(workdir: Path, policy: Path) -> dict:
    from acalign_robot.wire import protocol as p

    rig = Rig(workdir, policy, "watchdog-flood", controller_fields={"duration_s": 60})
    try:
        driver = rig.start("driver")
        controller = rig.start("controller")
        time.sleep(2.0)
        heartbeat = p.encode(p.Heartbeat(sender="flood", time_s=0.0, state="x"))
        context, raw = raw_dealer(rig.endpoint)
        time.sleep(0.2)  # connected before the kill
        os.kill(controller.pid, signal.SIGKILL)
        until, sent = time.monotonic() + 1.0, 0
        while time.monotonic() < until:  # a flood of valid frames that the driver must answer
            raw.send_multipart([bytes(8), heartbeat])
            sent += 1
        raw.close()
        context.term()
        controller.wait()
        stats = rig.driver_stats()
        return {
            "fault": "controller killed + another client floods",
            "expected": "watchdog fires within 100 ms, holds every tick",
            # the hopper falls under the safe action (zero torque) within ~15 ticks, which ends the episode: the
            # watchdog then has nothing left to hold until the next Reset
            "reaction_ms": 1000 * stats["last_watchdog_latency_s"] if stats["watchdog_events"] else float("nan"),
            "observed": f"{sent} frames in 1 s; {stats['watchdog_events']} watchdog events, "
            f"{stats['watchdog_safe_steps']} safe steps until the hopper fell",
            "lost": 0,
            "crash": driver.poll() is not None or stats["watchdog_events"] != 1,
        }
    finally:
        rig.close()


def foreign_step(workdir: Path, policy: Path) -> dict:
    from acalign_robot.wire import protocol as p

    rig = Rig(workdir, policy, "foreign-step")
    try:
        driver = rig.start("driver")
        controller = rig.start("controller")
        time.sleep(2.0)
        context, raw = raw_dealer(rig.endpoint)
        started = time.perf_counter()
        raw.send_multipart([bytes(8), p.encode(p.Step(tick=2**64 - 1, action=np.zeros(3, np.float32)))])
        reply = p.decode(raw.recv_multipart()[1]) if raw.poll(5000) else None
        reaction = time.perf_counter() - started
        raw.close()
        context.term()
        code = controller.wait(timeout=60)
        stats, driver_stats = rig.controller_stats(), rig.driver_stats()
        return {
            "fault": "another client's Step with tick 2**64-1",
            "expected": "refused (session); the controller's steps go on",
            "reaction_ms": 1000 * reaction,
            "observed": f"reply {getattr(reply, 'code', reply)}; {driver_stats['stale_steps']} of the controller's "
            f"steps refused as stale, step errors {stats['step_errors']}",
            "rate": rate_held(stats),
            "lost": executed_minus_logged(rig, stats),
            "crash": code != 0 or driver.poll() is not None or driver_stats["stale_steps"] > 0,
        }
    finally:
        rig.close()


def driver_restarted(workdir: Path, policy: Path) -> dict:
    rig = Rig(workdir, policy, "driver-restart", controller_fields={"duration_s": 10})
    status = rig.dir / "ctl" / "status.json"
    try:
        driver = rig.start("driver")
        controller = rig.start("controller")
        time.sleep(2.0)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        rig.start("driver")
        back = time.monotonic()
        restarted_s = None
        while restarted_s is None and controller.poll() is None:
            if json.loads(status.read_text()).get("session_restarts", 0) >= 1:
                restarted_s = time.monotonic() - back
            time.sleep(0.05)
        code = controller.wait(timeout=60)
        stats = rig.controller_stats()
        return {
            "fault": "driver killed and restarted",
            "expected": "SAFE; a new session (Reset) within 1 s; SAFE until cleared",
            "reaction_ms": 1000 * restarted_s if restarted_s is not None else float("nan"),
            "observed": f"step errors {stats['step_errors']}, SAFE {stats['safe']} ({stats['safe_reason'][:40]})",
            "lost": executed_minus_logged(rig, stats),
            "crash": code != 0 or stats["session_restarts"] < 1 or not stats["safe"],
        }
    finally:
        rig.close()


def clean_stops(workdir: Path, policy: Path) -> dict:
    rig = Rig(workdir, policy, "clean-stops", controller_fields={"duration_s": 2})
    try:
        driver = rig.start("driver")
        codes = [rig.start("controller").wait(timeout=60) for _ in range(4)]
        time.sleep(0.3)
        stats = rig.driver_stats()
        return {
            "fault": "4 clean controller stops",
            "expected": "Release: zero watchdog events",
            "reaction_ms": float("nan"),
            "observed": f"{stats['releases']} releases, {stats['watchdog_events']} watchdog events",
            "lost": 0,
            "crash": any(codes) or driver.poll() is not None or stats["watchdog_events"] != 0,
        }
    finally:
        rig.close()


def main() -> None:
    scenarios = (
        controller_killed,
        learner_killed,
        driver_frozen,
        nan_observations,
        bad_frames,
        corrupted_policy,
        control_frame_expansion,
        policy_frame_expansion,
        watchdog_under_flood,
        foreign_step,
        driver_restarted,
        clean_stops,
    )
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=[s.__name__ for s in scenarios], help="run just these rows")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep every process's config and log there")
    args = parser.parse_args()
    out = Path("bench/out/faults.json")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        policy, _, _ = export_hopper_policy(workdir / "policies")
        rows = [scenario(workdir, policy) for scenario in scenarios if not args.only or scenario.__name__ in args.only]
    print(
        f"{'fault':<44} {'expected reaction':<56} {'measured':>10} {'rss MB':>17} {'rate':>5} {'lost':>5} {'fail':>5}"
    )
    for row in rows:
        lost = f"{row['lost']}" + (f" ({row['lost_note']})" if row.get("lost_note") else "")
        rss = "{:.0f}->{:.0f} ({:.0f})".format(*row["rss_mb"]) if row.get("rss_mb") else "-"
        rate = f"{row['rate']:.2f}" if row.get("rate") is not None else "-"
        print(
            f"{row['fault']:<44} {row['expected']:<56} {row['reaction_ms']:>8.1f}ms {rss:>17} {rate:>5} {lost:>5} "
            f"{'yes' if row['crash'] else 'no':>5}" + (f"   [{row['observed']}]" if row.get("observed") else "")
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
