"""Learner throughput: updates/s and transitions/s of the learner loop while controllers stream to it over ZeroMQ,
next to the phase-3 update alone, all in one run.

Setup: Hopper sizes (obs 11, action 3), 2x256 networks, batch 256, 1 torch thread, UTD 1, publish_every 500 (the
session's first publication exports ONNX, ~1-3 s, before the window; each later one writes new weights into that
graph on the learner's build thread), an aligned checkpoint built from random data with 10k transitions in its
buffer. Stages:
- in-process: `agent.update(buffer.sample(256))` alone, the ceiling;
- the `Learner` (its real loop: `Learner.step`, real ROUTER and PUB sockets on 127.0.0.1) fed by 1, then 2,
  synthetic controller processes.
The three stages run in rounds (`--rounds`, default 3) and each streaming rate is compared with its own round's
in-process rate, measured just before it: this machine's speed drifts by tens of percent between minutes, so a
ceiling measured once at the start says little about a window measured later. The summary is the median ratio.

Controllers push at a fixed rate, not as fast as the learner consumes: a controller is paced by its robot, never by
the learner (it drops rather than waits). The default, 100 Hz per controller in batches of 10, is a typical hardware
rate (DESIGN.md: 10-500 Hz) and more than the ~50 updates/s a 1-thread CPU learner manages, so the learner is
saturated: updates/s is its best while ingesting, transitions/s shows that ingest keeps up with the controllers, and
`owed` (updates still due at UTD 1 when the window closes) is the backlog that UTD 1 builds in real time.
`publ. block` is the share of the window the training thread spent on publications (copying the actor, sending);
`build ms` the build thread's time for the last version. Target (issue 20): a streaming learner >= 97% of the
in-process rate.

    python bench/learner_throughput.py [--seconds 25] [--rate-hz 100] [--rounds 3]

Prints a table and writes bench/out/learner_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from runtime_rig import aligned_checkpoint

from acalign_robot.wire.channels import free_tcp_endpoint
from acalign_robot.wire.protocol import TransitionBatch
from acalign_robot.wire.transport import ZmqTransitionSender

OBS, ACT, BATCH, HIDDEN = 11, 3, 256, 256
TRANSITIONS_PER_MESSAGE = 10


def synthetic_controller(endpoint: str, index: int, rate_hz: float, stop, results) -> None:
    """Push random Hopper-sized batches at `rate_hz` transitions/s (deadline-paced) until `stop` is set; report."""
    controller_id = f"controller-{index}"
    rng = np.random.default_rng(index)
    sender = ZmqTransitionSender(endpoint)
    period_s = TRANSITIONS_PER_MESSAGE / rate_hz
    n = TRANSITIONS_PER_MESSAGE
    seq, dropped = 0, 0
    deadline = time.monotonic()
    while not stop.is_set():
        batch = TransitionBatch(
            stream_id=controller_id,
            seq=seq,
            policy_version=np.ones(n, np.int64),
            obs=rng.normal(size=(n, OBS)).astype(np.float32),
            action=rng.uniform(-1, 1, size=(n, ACT)).astype(np.float32),
            reward=rng.normal(size=n).astype(np.float32),
            next_obs=rng.normal(size=(n, OBS)).astype(np.float32),
            terminated=np.zeros(n, bool),
            truncated=np.zeros(n, bool),
        )
        seq += 1
        if not sender.send(batch):
            dropped += 1
        deadline += period_s
        time.sleep(max(0.0, deadline - time.monotonic()))
    time.sleep(0.5)  # let ZeroMQ hand over the last batches (LINGER 0 discards what is queued at close)
    sender.close()
    results.put({"controller_id": controller_id, "batches_sent": seq - dropped, "batches_dropped": dropped})


def in_process_rate(checkpoint: Path, seconds: float) -> float:
    """Updates/s of `agent.update(buffer.sample(256))` alone for a `seconds` window."""
    from acalign_robot.algo.checkpoint import load_checkpoint, load_online_agent

    agent, buffer, config = load_online_agent(load_checkpoint(checkpoint))
    rng = np.random.default_rng(0)
    for _ in range(10):  # warm-up: first calls allocate
        agent.update(buffer.sample(config.sac.batch_size, rng))
    start, updates = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        agent.update(buffer.sample(config.sac.batch_size, rng))
        updates += 1
    return updates / (time.perf_counter() - start)


def streaming_stage(checkpoint: Path, work_dir: Path, controllers: int, rate_hz: float, seconds: float) -> dict:
    """The learner loop fed by `controllers` processes for a `seconds` window that opens at their first batch."""
    from acalign_robot import config as config_io
    from acalign_robot.learner.config import LearnerConfig
    from acalign_robot.learner.process import Learner
    from acalign_robot.wire.transport import ZmqPolicyPublisher, ZmqTransitionReceiver

    config = LearnerConfig(
        checkpoint=str(checkpoint),
        checkpoint_dir=str(work_dir / f"learner-{controllers}"),
        transitions_endpoint=free_tcp_endpoint(),
        policy_endpoint=free_tcp_endpoint(),
        publish_every=500,
        checkpoint_every_updates=1_000_000,  # a checkpoint of the 10k buffer is not what is measured here
    )
    config_io.validate(config, "the bench's learner config")
    context = multiprocessing.get_context("spawn")
    results, stop = context.Queue(), context.Event()
    with (
        ZmqTransitionReceiver(config.transitions_endpoint) as receiver,
        ZmqPolicyPublisher(config.policy_endpoint) as publisher,
    ):
        learner = Learner(config, receiver, publisher)
        learner.publish()  # what run() does first (the process's first export is the slow one: not in the window)
        workers = [
            context.Process(
                target=synthetic_controller,
                args=(config.transitions_endpoint, i, rate_hz, stop, results),
            )
            for i in range(controllers)
        ]
        for worker in workers:
            worker.start()
        try:
            while learner.transitions_received == 0:
                learner.step()
            start, updates0, steps0 = time.monotonic(), learner.updates, learner.env_steps
            version0, blocking0 = learner.published_version, learner.publish_blocking_s
            while time.monotonic() - start < seconds:
                learner.step()
            elapsed = time.monotonic() - start
            row = {
                "stage": f"learner, {controllers} controller{'s' if controllers > 1 else ''}",
                "controllers": controllers,
                "updates_per_s": (learner.updates - updates0) / elapsed,
                "transitions_per_s": (learner.env_steps - steps0) / elapsed,
                "offered_transitions_per_s": controllers * rate_hz,
                "window_s": elapsed,
                "owed_updates_at_end": learner.owed_updates,
                "publishes_in_window": learner.published_version - version0,
                "build_s": learner.publish_seconds,  # the last version's build, on the build thread
                "publish_blocking_share": (learner.publish_blocking_s - blocking0) / elapsed,
                "publishes_coalesced": learner.publishes_coalesced,
                **{key: learner.snapshot()[key] for key in ("gaps", "duplicates", "rejected", "buffer_size")},
            }
            learner.shutdown()
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=30)
                if worker.is_alive():
                    worker.kill()
    reports = [results.get(timeout=5) for _ in workers]
    row["sender_drops"] = sum(report["batches_dropped"] for report in reports)
    return row


COLUMNS = (  # header, width, row -> text
    ("round", 6, lambda row: str(row["round"])),
    ("updates/s", 10, lambda row: f"{row['updates_per_s']:.1f}"),
    ("vs alone", 9, lambda row: f"{row['vs_alone']:.0%}"),
    ("trans/s", 9, lambda row: f"{row['transitions_per_s']:.1f}"),
    ("offered/s", 10, lambda row: f"{row['offered_transitions_per_s']:.0f}"),
    ("owed", 7, lambda row: str(row["owed_updates_at_end"])),
    ("publ.", 6, lambda row: str(row["publishes_in_window"])),
    ("publ. block", 12, lambda row: f"{row['publish_blocking_share']:.2%}"),
    ("build ms", 9, lambda row: f"{1000 * row['build_s']:.0f}"),
    ("gaps", 6, lambda row: str(row["gaps"])),
    ("dups", 6, lambda row: str(row["duplicates"])),
    ("drops", 7, lambda row: str(row["sender_drops"])),
)


def print_table(rows: list[dict]) -> None:
    """One line per stage and round; an in-process row has only its rate (it is its round's 100%)."""
    print(f"{'stage':<26}" + "".join(f"{header:>{width}}" for header, width, _ in COLUMNS))
    for row in rows:
        cells = []
        for header, width, text in COLUMNS:
            available = header in ("round", "updates/s", "vs alone") or "controllers" in row
            cells.append(f"{text(row) if available else '-':>{width}}")
        print(f"{row['stage']:<26}" + "".join(cells))


def median_ratios(rows: list[dict]) -> dict[str, float]:
    """Per streaming stage, the median over rounds of its rate against its own round's in-process rate."""
    stages = sorted({row["stage"] for row in rows if "controllers" in row})
    return {stage: float(np.median([row["vs_alone"] for row in rows if row["stage"] == stage])) for stage in stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="measurement window per streaming stage")
    parser.add_argument("--rate-hz", type=float, default=100.0, help="transitions/s per synthetic controller")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of in-process, 1 and 2 controllers")
    parser.add_argument("--out", default="bench/out/learner_throughput.json")
    args = parser.parse_args()

    import torch

    from acalign_robot.algo.device import set_torch_threads

    set_torch_threads(1)  # the learner's default (LearnerConfig.torch_threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = Path(tmp)
        checkpoint = aligned_checkpoint(work_dir / "aligned.pt")
        for round_index in range(args.rounds):
            ceiling = in_process_rate(checkpoint, args.seconds / 2)
            rows.append(
                {"stage": "in-process update alone", "round": round_index, "updates_per_s": ceiling, "vs_alone": 1}
            )
            for controllers in (1, 2):
                row = streaming_stage(
                    checkpoint, work_dir / f"round-{round_index}", controllers, args.rate_hz, args.seconds
                )
                rows.append({**row, "round": round_index, "vs_alone": row["updates_per_s"] / ceiling})
    ratios = median_ratios(rows)

    print(f"\nHopper sizes, 2x{HIDDEN} networks, batch {BATCH}, 1 torch thread, UTD 1, publish every 500 updates;")
    print(f"controllers push {args.rate_hz:.0f} transitions/s each in batches of {TRANSITIONS_PER_MESSAGE}\n")
    print_table(rows)
    print("\nmedian over rounds, against the same round's in-process rate (target >= 97%):")
    for stage, ratio in ratios.items():
        print(f"  {stage}: {ratio:.1%}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "obs_dim": OBS,
        "action_dim": ACT,
        "hidden": [HIDDEN, HIDDEN],
        "batch": BATCH,
        "torch_threads": 1,
        "utd": 1.0,
        "publish_every": 500,
        "rate_hz_per_controller": args.rate_hz,
        "transitions_per_message": TRANSITIONS_PER_MESSAGE,
        "window_s": args.seconds,
        "machine": {
            "cpus": multiprocessing.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "rows": rows,
        "median_vs_alone": ratios,
    }
    out.write_text(json.dumps(record, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
