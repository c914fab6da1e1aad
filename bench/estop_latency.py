"""How long `acalign estop` takes, from the CLI's start to each robot's acknowledged e-stop.

Starts real loopback driver processes (`acalign driver`, kind loopback), writes a session directory whose
`session.yaml` names them (what `acalign estop` reads), and runs `acalign estop DIR` as a fresh process again and
again, each followed by `acalign clear DIR`. The clock starts just before the CLI process is created and stops when
the CLI's line for a robot (`NAME: estop acknowledged ...`) arrives on its stdout. A driver applies its safe action
before it answers the EStop, so this is an upper bound on the time to the first safe action, within a pipe read.

Scenarios:
- one: one healthy driver;
- frozen-first: two drivers, the first listed SIGSTOPped (it never answers), the second healthy: the time to the
  healthy robot's acknowledgement, and to the CLI's exit (it waits the reply timeout for the frozen one).
- python: the floor, `python -c pass` to its exit.

    python bench/estop_latency.py [--runs 7]

Prints medians (and min-max) in ms and writes bench/out/estop_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from acalign_robot.wire.channels import free_tcp_endpoint

CLI = [sys.executable, "-m", "acalign_robot.cli"]
OUT = Path(__file__).parent / "out" / "estop_latency.json"


def start_drivers(directory: Path, count: int) -> tuple[list[subprocess.Popen], list[dict]]:
    drivers, robots = [], []
    for index in range(count):
        endpoint = free_tcp_endpoint()
        config = directory / f"driver{index}.yaml"
        config.write_text(yaml.safe_dump({"kind": "loopback", "endpoint": endpoint, "name": f"robot{index}-driver"}))
        ready = directory / f"driver{index}.ready"
        log = open(directory / f"driver{index}.log", "w")
        drivers.append(
            subprocess.Popen(
                [*CLI, "driver", "--config", str(config), "--ready-file", str(ready)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        robots.append({"name": f"robot{index}", "control_endpoint": endpoint})
    deadline = time.monotonic() + 60
    for index, driver in enumerate(drivers):
        while not (directory / f"driver{index}.ready").exists():
            if driver.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((directory / f"driver{index}.log").read_text())
            time.sleep(0.05)
    return drivers, robots


def timed_estop(session_dir: Path, robots: list[str]) -> tuple[dict[str, float], float, int, str]:
    """(ms from the CLI's start to each robot's acknowledgement line, ms to its exit, exit code, its stderr: the
    robots that did not acknowledge)."""
    started = time.monotonic()
    cli = subprocess.Popen([*CLI, "estop", str(session_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acknowledged = {}
    for line in cli.stdout:
        name = line.split(":", 1)[0]
        if name in robots and line.startswith(f"{name}: estop acknowledged"):
            acknowledged[name] = 1000 * (time.monotonic() - started)
    stderr = cli.stderr.read()  # a line at most: it cannot fill its pipe while stdout is read
    code = cli.wait()
    return acknowledged, 1000 * (time.monotonic() - started), code, stderr


def clear(session_dir: Path) -> None:
    subprocess.run([*CLI, "clear", str(session_dir)], stdout=subprocess.DEVNULL, timeout=30)


def summary(values: list[float]) -> dict:
    return {"median_ms": round(statistics.median(values), 1), "min_ms": round(min(values), 1),
            "max_ms": round(max(values), 1), "runs": len(values)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        drivers, robots = start_drivers(directory, 2)
        try:
            one = directory / "one"
            one.mkdir()
            (one / "session.yaml").write_text(yaml.safe_dump({"robots": robots[1:], "security": {}}))
            two = directory / "two"
            two.mkdir()
            (two / "session.yaml").write_text(yaml.safe_dump({"robots": robots, "security": {}}))

            acks, exits = [], []
            for _ in range(args.runs):
                acknowledged, exit_ms, code, _ = timed_estop(one, ["robot1"])
                assert code == 0 and "robot1" in acknowledged, (code, acknowledged)
                acks.append(acknowledged["robot1"])
                exits.append(exit_ms)
                clear(one)
            results["one: CLI start -> acknowledged"] = summary(acks)
            results["one: CLI start -> exit"] = summary(exits)

            os.kill(drivers[0].pid, signal.SIGSTOP)
            acks, exits = [], []
            for _ in range(args.runs):
                acknowledged, exit_ms, code, stderr = timed_estop(two, ["robot0", "robot1"])
                assert code != 0 and "robot0" not in acknowledged and "robot1" in acknowledged, (code, acknowledged)
                assert "not acknowledged by robot0" in stderr, stderr
                acks.append(acknowledged["robot1"])
                exits.append(exit_ms)
                clear(one)
            results["frozen-first: CLI start -> healthy acknowledged"] = summary(acks)
            results["frozen-first: CLI start -> exit (non-zero)"] = summary(exits)
        finally:
            for driver in drivers:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=10)
    floor = []
    for _ in range(args.runs):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        floor.append(1000 * (time.monotonic() - started))
    results["python: python -c pass -> exit"] = summary(floor)
    for name, row in results.items():
        print(
            f"{name:50s} median {row['median_ms']:7.1f} ms  ({row['min_ms']:.1f}-{row['max_ms']:.1f}, n={row['runs']})"
        )
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
