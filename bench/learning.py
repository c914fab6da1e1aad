"""Learning benchmark: offline-only vs. naive fine-tuning vs. ACA on datasets made by `acalign collect`.

For each dataset: pre-train once (phase 1, reused when the checkpoint exists), then for each online seed run the
naive baseline and ACA from that same checkpoint (`acalign align` + `acalign finetune`, real CLI subprocesses,
1 torch thread each). Reports, in D4RL-normalised score (dataset reference returns):
- switch: the score of the offline actor when online fine-tuning starts;
- dip: the minimum evaluation over the first 10% of online steps (the collapse ACA is meant to remove);
- worst: the minimum over all online evaluations; final: the last evaluation.
Offline-only is the switch score carried to the end (no online learning).

Scales: ci (minutes), reduced (what a 2-core CPU machine holds), paper (500k offline / 100k online, a GPU machine).
Writes bench/out/learning/results.json, learning.png and a Markdown table (printed; paste into docs/results.md).

    python bench/learning.py --datasets hopper-medium hopper-medium-replay --scale reduced --seeds 3 --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Scale:
    offline_steps: int
    online_steps: int
    eval_every: int
    eval_episodes: int


SCALES = {
    "ci": Scale(offline_steps=2_000, online_steps=2_000, eval_every=500, eval_episodes=3),
    "reduced": Scale(offline_steps=50_000, online_steps=20_000, eval_every=1_000, eval_episodes=5),
    "paper": Scale(offline_steps=500_000, online_steps=100_000, eval_every=1_000, eval_episodes=10),
}
METHODS = ("naive", "aca")


def acalign(*args: str, log: Path) -> None:
    command = [sys.executable, "-m", "acalign_robot.cli", *args]
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        result = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed (exit {result.returncode}); see {log}")


def read_scores(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "eval.csv") as handle:
        rows = list(csv.DictReader(handle))
    key = "normalized_score" if all(r["normalized_score"] not in ("", "None") for r in rows) else "return_mean"
    return [(int(r["step"]), float(r[key])) for r in rows]


def config_overrides(overrides: list[str]) -> list[str]:
    """`--set KEY=VALUE` arguments for the CLI, one pair per override."""
    return [argument for override in overrides for argument in ("--set", override)]


def pretrain(dataset: str, preset: str, scale: Scale, out: Path, overrides: list[str]) -> Path:
    checkpoint = out / dataset / "offline" / "offline.pt"
    if checkpoint.exists():
        return checkpoint
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    acalign(
        "pretrain",
        dataset,
        "--out",
        str(checkpoint.parent),
        "--steps",
        str(scale.offline_steps),
        "--preset",
        preset,
        "--eval-every",
        str(scale.eval_every * 5),
        "--eval-episodes",
        str(scale.eval_episodes),
        *config_overrides(overrides),
        log=checkpoint.parent / "log.txt",
    )
    return checkpoint


def online_run(offline: Path, method: str, seed: int, scale: Scale, overrides: list[str]) -> Path:
    run_dir = offline.parent.parent / f"{method}-seed{seed}"
    if (run_dir / "finetuned.pt").exists():
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    aligned = run_dir / f"aligned-{method}.pt"
    acalign(
        "align",
        str(offline),
        "--finetune",
        method,
        "--out",
        str(aligned),
        *config_overrides(overrides),
        log=run_dir / "log.txt",
    )
    acalign(
        "finetune",
        str(aligned),
        "--out",
        str(run_dir),
        "--steps",
        str(scale.online_steps),
        "--seed",
        str(seed),
        "--eval-every",
        str(scale.eval_every),
        "--eval-episodes",
        str(scale.eval_episodes),
        "--force",
        log=run_dir / "log.txt",
    )
    return run_dir


def summarize(scores: list[tuple[int, float]], online_steps: int) -> dict[str, float]:
    switch = scores[0][1]
    early = [s for step, s in scores[1:] if step - scores[0][0] <= 0.1 * online_steps] or [switch]
    return {"switch": switch, "dip": min(early), "worst": min(s for _, s in scores), "final": scores[-1][1]}


def markdown(results: dict, scale_name: str, scale: Scale, seeds: int) -> str:
    lines = [
        f"Scale `{scale_name}`: {scale.offline_steps} offline updates, {scale.online_steps} online env steps, "
        f"{seeds} online seeds, evaluation every {scale.eval_every} steps with {scale.eval_episodes} deterministic "
        "episodes. Normalised score (dataset reference returns), median over seeds [min, max].",
        "",
        "| dataset | method | switch | dip (first 10%) | worst online | final |",
        "|---|---|---|---|---|---|",
    ]
    for dataset, methods in results.items():
        for method, runs in methods.items():
            cells = []
            for key in ("switch", "dip", "worst", "final"):
                values = [run[key] for run in runs]
                cells.append(f"{np.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]")
            lines.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    colors = {"naive": "tab:red", "aca": "tab:blue"}
    for axis, (dataset, methods) in zip(axes[0], curves.items()):
        for method, runs in methods.items():
            for index, scores in enumerate(runs):
                steps, values = zip(*scores)
                axis.plot(steps, values, color=colors[method], alpha=0.7, label=method if index == 0 else None)
        axis.set_title(dataset)
        axis.set_xlabel("online env steps")
        axis.set_ylabel("normalised score")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", required=True, help="Minari dataset ids made by acalign collect")
    parser.add_argument("--presets", nargs="*", help="ACA preset per dataset (default: guessed from the name)")
    parser.add_argument("--scale", choices=SCALES, default="ci")
    parser.add_argument("--offline-steps", type=int, help="override the scale's offline updates")
    parser.add_argument("--online-steps", type=int, help="override the scale's online env steps")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="online methods to run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ACA config override for pre-training and alignment (repeatable); an existing offline checkpoint in OUT "
        "is reused as it is",
    )
    parser.add_argument("--jobs", type=int, default=1, help="online runs in parallel (one core each)")
    parser.add_argument("--out", default="bench/out/learning")
    args = parser.parse_args()

    scale = SCALES[args.scale]
    scale = Scale(
        args.offline_steps or scale.offline_steps,
        args.online_steps or scale.online_steps,
        scale.eval_every,
        scale.eval_episodes,
    )
    out = Path(args.out) / f"{args.scale}-{scale.offline_steps}-{scale.online_steps}"
    out.mkdir(parents=True, exist_ok=True)
    presets = args.presets or [
        next((k for k in ("medium-replay", "medium-expert", "medium", "expert", "random") if k in name), "medium")
        for name in args.datasets
    ]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        offline = dict(
            zip(
                args.datasets,
                pool.map(lambda d: pretrain(d[0], d[1], scale, out, args.set), zip(args.datasets, presets)),
            )
        )
        jobs = {
            (d, m, s): pool.submit(online_run, offline[d], m, s, scale, args.set)
            for d in args.datasets
            for m in args.methods
            for s in range(args.seeds)
        }
        run_dirs = {key: job.result() for key, job in jobs.items()}

    results: dict = {}
    curves: dict = {}
    for dataset in args.datasets:
        results[dataset] = {}
        curves[dataset] = {}
        switch = [
            summarize(read_scores(run_dirs[(dataset, args.methods[0], s)]), scale.online_steps)["switch"]
            for s in range(args.seeds)
        ]
        results[dataset]["offline-only"] = [{"switch": v, "dip": v, "worst": v, "final": v} for v in switch]
        for method in args.methods:
            scores = [read_scores(run_dirs[(dataset, method, s)]) for s in range(args.seeds)]
            curves[dataset][method] = scores
            results[dataset][method] = [summarize(s, scale.online_steps) for s in scores]
    table = markdown(results, args.scale, scale, args.seeds)
    payload = {
        "scale": args.scale,
        **asdict(scale),
        "seeds": args.seeds,
        "results": results,
        "curves": curves,
        "wall_s": time.monotonic() - start,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    plot(curves, out / "learning.png")
    print(table)
    print(f"\nwrote {out / 'results.json'} and {out / 'learning.png'} in {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
