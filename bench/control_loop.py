"""Control-loop benchmark: a MuJoCo driver process + a controller process at 100 / 500 / 1000 Hz (no learner).

Reports, per target rate: achieved rate, tick latency p50/p99/max (the work of one tick: infer, filter, driver round
trip, transition handling), deadline misses and, next to them, the misses a bare sleeping loop at the same rate
would have with the run's median work (the machine's own share); and, in the same run, the floor: a bare
DEALER/ROUTER round trip to an echo process plus one onnxruntime call of the same policy, measured back to back and
paced at each rate (sleeping between iterations as the controller does). The driver runs Hopper-v5 with one 2 ms
physics step per tick (sim/hopper_500hz.yaml), as fast as asked (no real-time pacing), so the controller's rate is
what is measured. Options compare the link (loopback TCP or ipc://), the scheduler (`--priority`: SCHED_FIFO for
controller and driver, realtime.py), pinned cores (`--pin`: the controller, the floor's loop and the bare loop on
core 0, the driver and the floor's echo process on core 1, realtime.cpu_affinity) and a machine shared with CPU-bound
work (`--load`: stand-ins for learners). Prints a table and writes bench/out/control_loop.json.

    python bench/control_loop.py [--seconds 5] [--rates 100 500 1000] [--logging on|off|both] [--wait sleep|spin|both]
        [--transport tcp|ipc|both] [--priority 0 50] [--pin off|on|both] [--load N]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from runtime_rig import bench_endpoint, export_hopper_policy, hopper_driver, run_controller

from acalign_robot import realtime
from acalign_robot.realtime import RealtimeConfig
from acalign_robot.wire import protocol as p
from acalign_robot.wire.transport import ZmqControlClient

ECHO_SERVER = """
import sys, zmq
from acalign_robot.realtime import RealtimeConfig, apply
cores = tuple(int(core) for core in sys.argv[3].split(",")) if sys.argv[3] else None
# Before the context, so that its I/O thread inherits the scheduling and the cores.
apply(RealtimeConfig(priority=int(sys.argv[2]) or None, cpu_affinity=cores), "echo")
socket = zmq.Context().socket(zmq.ROUTER)
socket.setsockopt(zmq.LINGER, 0)
socket.bind(sys.argv[1])
print("ready", flush=True)
while True:
    socket.send_multipart(socket.recv_multipart())
"""


# `--pin`: the controller's side of a tick (and the loops measured beside it) on one core, the driver's side on another.
CONTROLLER_CORES = (0,)
DRIVER_CORES = (1,)


@contextlib.contextmanager
def scheduled(priority: int, cores: tuple[int, ...] | None = None) -> Iterator[None]:
    """The calling thread under SCHED_FIFO at `priority` (0: the normal scheduler) and pinned to `cores` (None: all)
    for the block."""
    everywhere = os.sched_getaffinity(0)
    realtime.apply(RealtimeConfig(priority=priority or None, cpu_affinity=cores), "bench")
    try:
        yield
    finally:
        realtime.leave_realtime()
        os.sched_setaffinity(0, everywhere)


def measure_floor(
    policy_dir: Path,
    endpoint: str,
    rate_hz: float | None = None,
    priority: int = 0,
    pin: bool = False,
    calls: int = 5000,
) -> dict[str, float]:
    """Bare DEALER/ROUTER round trip (echo process) + one onnxruntime call, per iteration, p50/p99: back to back, or
    paced at `rate_hz` (sleeping to each deadline as the controller does, so both processes wake up every time);
    both ends under SCHED_FIFO at `priority` (0: the normal scheduler) and, with `pin`, on the controller's and the
    driver's cores."""
    import zmq

    from acalign_robot.policy.runner import PolicyRunner

    echo_cores = ",".join(map(str, DRIVER_CORES)) if pin else ""
    command = [sys.executable, "-c", ECHO_SERVER, endpoint, str(priority), echo_cores]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    with scheduled(priority, CONTROLLER_CORES if pin else None):
        context = zmq.Context()  # made inside the block: its I/O thread runs under the same scheduling as the loop
        try:
            server.stdout.readline()
            runner = PolicyRunner.from_dir(policy_dir)
            socket = context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(endpoint)
            obs = np.zeros(11, np.float32)
            payload = np.zeros(16, np.float32).tobytes()
            samples = np.zeros(calls)
            deadline = time.perf_counter()
            for i in range(calls + 200):
                if rate_hz:
                    deadline += 1.0 / rate_hz
                    time.sleep(max(0.0, deadline - time.perf_counter()))
                started = time.perf_counter()
                runner.act(obs)
                socket.send_multipart([b"id", payload])
                socket.recv_multipart()
                if i >= 200:
                    samples[i - 200] = time.perf_counter() - started
        finally:
            context.destroy(linger=0)
            server.kill()
            server.wait()
    return {
        "p50_s": float(np.percentile(samples, 50)),
        "p99_s": float(np.percentile(samples, 99)),
        "max_s": float(samples.max()),
    }


def bare_loop_misses(
    rate_hz: float, seconds: float, work_s: float, priority: int = 0, pin: bool = False
) -> dict[str, float]:
    """The machine's own share of deadline misses: a loop that only sleeps to each deadline, at the same rate and
    under the same scheduling as the run (`priority`: SCHED_FIFO, 0: normal; `pin`: the controller's core), and
    counts the wake-ups late by more than the period minus `work_s` (the controller's median tick): the ticks that
    would miss if every tick did the median work."""
    period_s = 1.0 / rate_hz
    ticks = int(seconds * rate_hz)
    late = np.zeros(ticks)
    with scheduled(priority, CONTROLLER_CORES if pin else None):
        deadline = time.perf_counter() + period_s
        for i in range(ticks):
            now = time.perf_counter()
            if now < deadline:
                time.sleep(deadline - now)
            late[i] = time.perf_counter() - deadline
            deadline += period_s
    would_miss = int((late > period_s - work_s).sum())
    return {
        "wake_late_p99_s": float(np.percentile(late, 99)),
        "misses": would_miss,
        "miss_fraction": would_miss / ticks,
    }


class Setting(NamedTuple):
    rate_hz: float
    log: bool
    spin: bool
    transport: str
    priority: int  # SCHED_FIFO priority of controller and driver (realtime.priority); 0: the normal scheduler
    pin: bool  # controller on CONTROLLER_CORES, driver on DRIVER_CORES (realtime.cpu_affinity)

    @property
    def label(self) -> str:
        wait = "spin" if self.spin else "sleep"
        pinned = "-pinned" if self.pin else ""
        return f"{self.rate_hz:g}-{'log' if self.log else 'nolog'}-{wait}-{self.transport}-prio{self.priority}{pinned}"


def realtime_section(setting: Setting, cores: tuple[int, ...]) -> dict:
    """The `realtime:` section of one of the setting's two processes; `cores`: that process's cores when pinned."""
    section: dict = {"priority": setting.priority} if setting.priority else {}
    if setting.pin:
        section["cpu_affinity"] = list(cores)
    return section


def run_setting(setting: Setting, seconds: float, policy_dir: Path, workdir: Path) -> dict:
    with hopper_driver(
        workdir,
        setting.label,
        spin_wait=setting.spin,
        transport=setting.transport,
        realtime=realtime_section(setting, DRIVER_CORES),
    ) as endpoint:
        fields = {
            "driver_endpoint": endpoint,
            "policy": str(policy_dir),
            "rate_hz": setting.rate_hz,
            "duration_s": seconds,
            "log": setting.log,
            "spin_wait": setting.spin,
            "realtime": realtime_section(setting, CONTROLLER_CORES),
        }
        stats = run_controller(workdir, setting.label, fields, seconds + 120)
        with ZmqControlClient(endpoint) as client:  # the driver's own timing of the env step (its physics)
            reply = client.request(p.Stats(source="bench", values={}), 5.0)
        stats["env_step_p50_s"] = reply.values["step_time_p50_s"]
        stats["driver_service_p50_s"] = reply.values["service_time_p50_s"]
        return stats


@contextlib.contextmanager
def background_load(processes: int) -> Iterator[None]:
    """`processes` CPU-bound processes, each a one-thread matmul loop standing in for a learner on the same cores."""
    burn = "import numpy as np\nx = np.ones((256, 256), np.float32)\nwhile True:\n    x = np.tanh(x @ x)\n"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", burn], env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        )
        for _ in range(processes)
    ]
    try:
        yield
    finally:
        for child in children:
            child.kill()
            child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", type=float, nargs="+", default=[100.0, 500.0, 1000.0])
    parser.add_argument(
        "--logging",
        choices=("on", "off", "both"),
        default="on",
        help="the controller's durable transition log (both: each rate with and without it)",
    )
    parser.add_argument(
        "--wait",
        choices=("sleep", "spin", "both"),
        default="sleep",
        help="how controller and driver wait: block/sleep (default) or busy-poll (spin_wait: a core each)",
    )
    parser.add_argument(
        "--transport",
        choices=("tcp", "ipc", "both"),
        default="tcp",
        help="the control link: loopback TCP (default) or a Unix socket (ipc://), the floor measured the same way",
    )
    parser.add_argument(
        "--priority",
        type=int,
        nargs="+",
        default=[0],
        help="SCHED_FIFO priority of controller and driver (realtime.priority), 0 for the normal scheduler; several "
        "to compare (needs root or CAP_SYS_NICE)",
    )
    parser.add_argument(
        "--pin",
        choices=("off", "on", "both"),
        default="off",
        help=f"controller (and the floor's and the bare loop) on cores {list(CONTROLLER_CORES)}, driver (and the "
        f"floor's echo) on {list(DRIVER_CORES)} (realtime.cpu_affinity); both: each setting pinned and not",
    )
    parser.add_argument(
        "--load", type=int, default=0, help="CPU-bound background processes during the runs (stand-ins for learners)"
    )
    parser.add_argument("--out", default="bench/out/control_loop.json")
    args = parser.parse_args()
    settings = [
        Setting(rate, log, spin, transport, priority, pin)
        for rate, spin, log, transport, priority, pin in itertools.product(
            args.rates,
            {"sleep": (False,), "spin": (True,), "both": (False, True)}[args.wait],
            {"on": (True,), "off": (False,), "both": (False, True)}[args.logging],
            ("tcp", "ipc") if args.transport == "both" else (args.transport,),
            args.priority,
            {"off": (False,), "on": (True,), "both": (False, True)}[args.pin],
        )
    ]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        policy_dir, _, _ = export_hopper_policy(workdir / "policies")
        transports = sorted({setting.transport for setting in settings})
        floors = {transport: measure_floor(policy_dir, bench_endpoint(workdir, transport)) for transport in transports}
        rows = []
        with background_load(args.load):
            for setting in settings:
                stats = run_setting(setting, args.seconds, policy_dir, workdir)
                paced_floor = measure_floor(
                    policy_dir,
                    bench_endpoint(workdir, setting.transport),
                    rate_hz=setting.rate_hz,
                    priority=setting.priority,
                    pin=setting.pin,
                    calls=2000,
                )
                rows.append(
                    {
                        **setting._asdict(),
                        "load": args.load,
                        "achieved_hz": stats["achieved_rate_hz"],
                        "ticks": stats["ticks"],
                        "tick_p50_s": stats["tick_p50_s"],
                        "tick_p99_s": stats["tick_p99_s"],
                        "tick_max_s": stats["tick_max_s"],
                        "deadline_misses": stats["deadline_misses"],
                        "miss_fraction": stats["deadline_misses"] / max(stats["ticks"], 1),
                        "infer_p50_s": stats["infer_p50_s"],
                        "filter_p50_s": stats["filter_p50_s"],
                        "obs_p50_s": stats["obs_p50_s"],
                        "send_p50_s": stats["send_p50_s"],
                        "ratio_to_floor_p50": stats["tick_p50_s"] / floors[setting.transport]["p50_s"],
                        "paced_floor": paced_floor,
                        "ratio_to_paced_floor_p50": stats["tick_p50_s"] / paced_floor["p50_s"],
                        "env_step_p50_s": stats["env_step_p50_s"],
                        # The driver's share of `obs`: a Step from its arrival to its reply queued (physics included).
                        "driver_service_p50_s": stats["driver_service_p50_s"],
                        # Issue 20's floor: what a tick cannot avoid, the paced round trip + inference + physics.
                        "ratio_to_paced_floor_with_physics_p50": stats["tick_p50_s"]
                        / (paced_floor["p50_s"] + stats["env_step_p50_s"]),
                        "bare_loop": bare_loop_misses(
                            setting.rate_hz, args.seconds, stats["tick_p50_s"], setting.priority, setting.pin
                        ),
                    }
                )
    us = 1e6
    for transport, floor in floors.items():
        print(
            f"floor over {transport} (DEALER/ROUTER echo + one onnxruntime call, back to back): "
            f"p50 {floor['p50_s'] * us:.0f} us, p99 {floor['p99_s'] * us:.0f} us"
        )
    print(f"background load: {args.load} CPU-bound processes")
    print(
        f"\n{'target Hz':>9} {'link':>4} {'wait':>5} {'prio':>4} {'pin':>3} {'log':>4} {'achieved':>9} {'ticks':>7} "
        f"{'p50 us':>8} {'p99 us':>8} {'max us':>8} {'misses':>7} {'miss %':>7} {'bare %':>7} "
        f"{'p50/floor':>9} {'paced floor us':>14} {'p50/paced':>9} {'physics us':>10} {'p50/(paced+phys)':>16}"
        f" {'extra misses pp':>15} {'driver us':>9}   sections p50 us (infer/filter/obs/send)"
    )
    for r in rows:
        print(
            f"{r['rate_hz']:>9.0f} {r['transport']:>4} {'spin' if r['spin'] else 'sleep':>5} {r['priority']:>4} "
            f"{'on' if r['pin'] else 'off':>3} "
            f"{'on' if r['log'] else 'off':>4} {r['achieved_hz']:>9.1f} {r['ticks']:>7} "
            f"{r['tick_p50_s'] * us:>8.0f} {r['tick_p99_s'] * us:>8.0f} {r['tick_max_s'] * us:>8.0f} "
            f"{r['deadline_misses']:>7} {100 * r['miss_fraction']:>6.2f}% "
            f"{100 * r['bare_loop']['miss_fraction']:>6.2f}% "
            f"{r['ratio_to_floor_p50']:>9.2f} {r['paced_floor']['p50_s'] * us:>14.0f} "
            f"{r['ratio_to_paced_floor_p50']:>9.2f} {r['env_step_p50_s'] * us:>10.0f} "
            f"{r['ratio_to_paced_floor_with_physics_p50']:>16.2f} "
            f"{100 * (r['miss_fraction'] - r['bare_loop']['miss_fraction']):>15.2f} "
            f"{r['driver_service_p50_s'] * us:>9.0f}   "
            + "/".join(f"{r[f'{name}_p50_s'] * us:.0f}" for name in ("infer", "filter", "obs", "send"))
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"floors": floors, "rows": rows, "seconds": args.seconds, "load": args.load}, indent=1))
    print(
        "\nbare %: a loop that only sleeps to each deadline at the same rate and priority, right after the run:"
        " wake-ups late by more than the period minus the run's median tick (this machine's own share of the misses);"
        " paced floor:"
        " the floor's round trip + inference at the row's rate and priority, sleeping between iterations like the"
        " controller;"
        " prio: SCHED_FIFO priority of controller and driver (0: normal scheduler);"
        f" pin: controller, floor loop and bare loop on cores {list(CONTROLLER_CORES)}, driver and echo on"
        f" {list(DRIVER_CORES)};"
        " physics: the driver's env step (p50); extra misses pp: miss % minus bare %;"
        " driver: the driver's own time per Step (arrival to reply queued, physics included), part of obs."
        "\nTargets (issue 20): extra misses <= 0.1 pp and p50/(paced+phys) <= 1.3 at 500 Hz and 1 kHz."
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
