"""Parity: fine-tuning through the runtime (driver + controller + learner processes) vs. in-process `finetune`.

Both start from the same aligned checkpoint (the demo's InvertedPendulum-v5 pipeline: random data, ACA phase 1,
alignment) and run the same number of env steps with the same ACA phase 3; the runtime's controller runs the
exported policy at 40 ticks/s (unpaced sim) and swaps in the learner's versions, the in-process loop updates after
every env step. Compares training-episode returns against env steps, per seed, in one PNG and a table (the return of
the episodes in the last quarter of the budget). Writes bench/out/runtime_parity/{parity.png,parity.json}.

    python bench/runtime_parity.py [--steps 4000] [--seeds 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np


def prepare(out: Path):
    """Dataset, offline checkpoint, aligned checkpoint and exported policy, as `acalign demo` makes them."""
    import os

    from acalign_robot.algo.aca import load_preset
    from acalign_robot.algo.pipeline import align_checkpoint, pretrain
    from acalign_robot.data.collect import collect_random_episodes
    from acalign_robot.data.datasets import dataset_exists, write_dataset
    from acalign_robot.demo import DemoConfig
    from acalign_robot.export.onnx_export import write_artifact

    demo = DemoConfig()
    os.environ["MINARI_DATASETS_PATH"] = str((out / "datasets").resolve())
    config = load_preset("random", (f"sac.batch_size={demo.batch_size}",))
    if not dataset_exists(demo.dataset):
        episodes = collect_random_episodes(demo.env_id, demo.random_episodes, demo.seed)
        write_dataset(demo.dataset, episodes, demo.env_id, algorithm="uniform random", description="parity data")
    offline = out / "offline" / "offline.pt"
    if not offline.exists():
        pretrain([demo.dataset], config, demo.offline_steps, offline, seed=demo.seed)
    aligned = out / "offline" / "aligned-aca.pt"
    if not aligned.exists():
        align_checkpoint(offline, aligned, config)
    artifacts = sorted((out / "policies" / "parity").glob("*/manifest.json"))
    artifact = artifacts[0].parent if artifacts else write_artifact(aligned, "parity", out / "policies")
    return demo, aligned, artifact


def in_process(demo, aligned: Path, steps: int, seed: int, out: Path) -> list[tuple[int, float]]:
    from acalign_robot.algo.pipeline import EvalSchedule, finetune

    run_dir = out / f"in-process-seed{seed}"
    if not (run_dir / "episodes.csv").exists():
        finetune(aligned, demo.env_id, steps, run_dir / "finetuned.pt", seed=seed, schedule=EvalSchedule(steps, 1))
    with open(run_dir / "episodes.csv") as handle:
        return [(int(row["step"]), float(row["return"])) for row in csv.DictReader(handle)]


def through_runtime(demo, aligned: Path, artifact: Path, steps: int, seed: int, out: Path) -> list[tuple[int, float]]:
    from acalign_robot import config as config_io
    from acalign_robot.controller.process import ControllerConfig
    from acalign_robot.drivers.server import DriverConfig
    from acalign_robot.learner.config import LearnerConfig
    from acalign_robot.session.schema import LaunchConfig, Robot
    from acalign_robot.session.supervisor import Supervisor

    session = LaunchConfig(
        session=f"parity-seed{seed}",
        robots=(
            Robot(
                name="pendulum-0",
                driver=DriverConfig(kind="mujoco", env_id=demo.env_id, watchdog_ms=500, seed=seed),
                controller=ControllerConfig(
                    policy=str(artifact), explore=True, rate_hz=demo.rate_hz, ticks=steps, seed=seed
                ),
            ),
        ),
        learner=LearnerConfig(checkpoint=str(aligned), publish_every=demo.publish_every, seed=seed),
    )
    config_io.validate(session, "the parity session's launch config")
    session_dir = out / f"runtime-seed{seed}" / time.strftime("%Y%m%d-%H%M%S")
    Supervisor(session, session_dir, live=False).run()
    stats = json.loads((session_dir / "pendulum-0" / "stats.json").read_text())
    return [(int(tick), float(ret)) for tick, _, ret, _ in stats["episode_log"]]


def late_mean(episodes: list[tuple[int, float]], steps: int) -> float:
    late = [ret for step, ret in episodes if step > 0.75 * steps]
    return float(np.mean(late)) if late else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default="bench/out/runtime_parity")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demo, aligned, artifact = prepare(out)
    curves = {"in-process": {}, "runtime": {}}
    for seed in range(args.seeds):
        curves["in-process"][seed] = in_process(demo, aligned, args.steps, seed, out)
        curves["runtime"][seed] = through_runtime(demo, aligned, artifact, args.steps, seed, out)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for label, color in (("in-process", "tab:orange"), ("runtime", "tab:blue")):
        for seed, episodes in curves[label].items():
            steps, returns = zip(*episodes) if episodes else ((), ())
            axis.plot(steps, returns, marker=".", color=color, alpha=0.7, label=f"{label} seed {seed}")
    axis.set(xlabel="env steps", ylabel="training episode return", title=f"ACA fine-tuning, {demo.env_id}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "parity.png", dpi=110)
    print(f"{'path':<12} {'seed':>4} {'episodes':>8} {'first return':>12} {'mean return, last 25% of steps':>31}")
    rows = []
    for label, runs in curves.items():
        for seed, episodes in runs.items():
            row = {
                "path": label,
                "seed": seed,
                "episodes": len(episodes),
                "first": episodes[0][1] if episodes else None,
                "late_mean": late_mean(episodes, args.steps),
            }
            rows.append(row)
            print(
                f"{label:<12} {seed:>4} {row['episodes']:>8} {row['first'] or float('nan'):>12.1f} "
                f"{row['late_mean']:>31.1f}"
            )
    (out / "parity.json").write_text(json.dumps({"steps": args.steps, "rows": rows, "curves": curves}, indent=1))
    print(f"\nwrote {out / 'parity.png'} and {out / 'parity.json'}")


if __name__ == "__main__":
    main()
