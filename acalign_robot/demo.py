"""`acalign demo`: the whole pipeline on a small embedded default, end to end, in a few minutes on 2 CPU cores.

Steps (each reuses its output when it already exists, so a re-run continues instead of overwriting):
1. collect a uniform-random dataset of InvertedPendulum-v5 into the demo's own Minari store;
2. pre-train ACA offline (phase 1), 3. align (phase 2), 4. export the actor to ONNX (policies registry),
5. fine-tune online (phase 3) with the runtime when it is available, else in-process,
6. print the evaluation table and where the learning-curve PNG is.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    env_id: str = "InvertedPendulum-v5"
    dataset: str = "demo-invertedpendulum-random-v0"
    random_episodes: int = 300
    offline_steps: int = 2_000
    online_steps: int = 5_000
    eval_every: int = 1_000
    eval_episodes: int = 5
    batch_size: int = 128
    seed: int = 0


def _step(title: str, done: bool) -> bool:
    print(f"==> {title}{' (exists, reused)' if done else ''}", flush=True)
    return done


def run_demo(out_dir: Path, config: DemoConfig = DemoConfig()) -> dict:
    from acalign_robot.algo.aca import load_preset
    from acalign_robot.algo.pipeline import EvalSchedule, align_checkpoint, finetune, pretrain
    from acalign_robot.algo.plots import plot_runs
    from acalign_robot.algo.train import set_torch_threads
    from acalign_robot.data.collect import collect_random_episodes
    from acalign_robot.data.datasets import dataset_exists, write_dataset

    set_torch_threads(1)
    out_dir = out_dir.resolve()
    os.environ["MINARI_DATASETS_PATH"] = str(out_dir / "datasets")
    schedule = EvalSchedule(config.eval_every, config.eval_episodes)
    aca_config = load_preset("random", (f"sac.batch_size={config.batch_size}",))

    if not _step(
        f"1/5 collect {config.dataset} ({config.random_episodes} random episodes)", dataset_exists(config.dataset)
    ):
        episodes = collect_random_episodes(config.env_id, config.random_episodes, config.seed)
        random_return = sum(e.episode_return for e in episodes) / len(episodes)
        write_dataset(
            config.dataset,
            episodes,
            config.env_id,
            algorithm="uniform random",
            description="acalign demo data",
            extra_metadata={"kind": "random", "random_return": random_return},
        )

    offline = out_dir / "offline" / "offline.pt"
    if not _step(f"2/5 pretrain ACA offline ({config.offline_steps} updates)", offline.exists()):
        pretrain([config.dataset], aca_config, config.offline_steps, offline, seed=config.seed, schedule=schedule)

    aligned = out_dir / "offline" / "aligned-aca.pt"
    if not _step("3/5 align the critic to the offline actor", aligned.exists()):
        align_checkpoint(offline, aligned, aca_config)

    artifact = _export(aligned, out_dir / "policies")

    online_dir = out_dir / "online"
    finetuned = online_dir / "finetuned.pt"
    if not _step(f"5/5 fine-tune online ({config.online_steps} env steps)", finetuned.exists()):
        finetune(aligned, config.env_id, config.online_steps, finetuned, seed=config.seed, schedule=schedule)

    png = plot_runs([online_dir], out_dir / "learning_curve.png", title=f"ACA fine-tuning, {config.env_id}")
    with open(online_dir / "eval.csv") as handle:
        rows = list(csv.DictReader(handle))
    print(f"\n{'online step':>12} {'return':>10}")
    for row in rows:
        print(f"{int(row['step']):>12} {float(row['return_mean']):>10.1f}")
    print(f"\npolicy artifact: {artifact}\nlearning curve:  {png}")
    return {"rows": rows, "png": png, "artifact": artifact}


def _export(checkpoint: Path, policies_dir: Path) -> Path:
    from acalign_robot.export.onnx_export import write_artifact

    existing = sorted(policies_dir.glob("demo/*/manifest.json"))
    if _step("4/5 export the aligned actor to ONNX", bool(existing)):
        return existing[-1].parent
    return write_artifact(checkpoint, "demo", policies_dir)
