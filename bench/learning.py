"""Learning benchmark: offline-only vs. naive fine-tuning vs. ACA on datasets made by `acalign collect`.

For each dataset: pre-train once (phase 1, reused when the checkpoint exists), then for each online seed run the
naive baseline and ACA from that same checkpoint (`acalign align` + `acalign finetune`, real CLI subprocesses,
1 torch thread each). Reports, in D4RL-normalised score (dataset reference returns):
- switch: the score of the offline actor when online fine-tuning starts;
- dip: the minimum evaluation over the first 10% of online steps, or the first online evaluation if none falls
  there (the collapse ACA is meant to remove);
- worst: the minimum over all online evaluations; final: the mean of the last 10% of the evaluations.
Offline-only is the switch score carried to the end (no online learning). Across seeds each figure is the IQM with a
95% stratified-bootstrap confidence interval (rliable, Agarwal et al. 2021), and the issue's bar is checked on the
IQMs: dip >= 95% of the switch, final > switch, ACA's final >= naive's.

Seeds differ only in the online phase. `--batched-seeds` trains all seeds of a (dataset, method) in one process as
one batched learner (`acalign finetune` with several run directories, algo/seed_batch.py): each seed is aligned as
before and its run directory is the same run as the single-seed path writes, to float32 rounding (same env, buffer and
noise seeding; tests/unit/test_seed_batch.py), so the two paths' results mix. Finished seeds are reused either way,
only for the inputs they were made with (method, --set overrides, online schedule: `bench-inputs.json` in each run
directory; a finished run made with others is refused, exit 2).
It is not the default: on one CPU thread 5 seeds cost about 4.1-4.3x one seed's updates (the networks' matmuls
dominate and do not shrink with batching; docs/results.md, learner speed), and one batch holds one core, so with
`--jobs 2` and a single (dataset, method) the per-seed processes finish sooner. On a GPU, where these small kernels
are launch-bound, the batch should be much cheaper than its seeds one by one (not measured yet).

Scales: ci (minutes), reduced (what a 2-core CPU machine holds), paper (500k offline / 100k online, a GPU machine).
Writes bench/out/learning/results.json, learning.png and a Markdown table (printed; paste into docs/results.md);
with `--publish FILE` (docs/results/learning.json) every run's switch, dip, final and curve is merged into FILE
under its dataset, method label and seed, and the table covers everything FILE holds for these datasets.

    python bench/learning.py --datasets hopper-medium hopper-medium-replay --scale reduced --seeds 3 --jobs 2
    python bench/learning.py --datasets hopper-medium hopper-medium-replay --scale reduced --seeds 5 --batched-seeds
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


def guessed_preset(dataset: str) -> str:
    """The ACA preset a dataset's name suggests (medium when it names none)."""
    return next(
        (kind for kind in ("medium-replay", "medium-expert", "medium", "expert", "random") if kind in dataset), "medium"
    )


def offline_checkpoint_of(out: Path, dataset: str) -> Path:
    return out / dataset / "offline" / "offline.pt"


def pretrain(dataset: str, preset: str, scale: Scale, out: Path, overrides: list[str]) -> Path:
    checkpoint = offline_checkpoint_of(out, dataset)
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


def run_dir_of(offline: Path, method: str, seed: int) -> Path:
    return offline.parent.parent / f"{method}-seed{seed}"


INPUTS_FILE = "bench-inputs.json"


def run_inputs(method: str, scale: Scale, overrides: list[str]) -> dict:
    """What makes an online run what it is, beyond its dataset, pre-training and seed (its directory says those)."""
    return {
        "method": method,
        "overrides": sorted(overrides),
        "online_steps": scale.online_steps,
        "eval_every": scale.eval_every,
        "eval_episodes": scale.eval_episodes,
    }


def finished(run_dir: Path, inputs: dict) -> bool:
    """Whether `run_dir` holds a finished run to reuse. One made with other inputs (another --set, say) is refused
    (exit 2): a run directory is named by method and seed only, so it would otherwise be reported under the new
    label. Runs from before the inputs were recorded are reused as they are, with a note."""
    if not (run_dir / "finetuned.pt").exists():
        return False
    recorded = run_dir / INPUTS_FILE
    if not recorded.exists():
        print(f"note: {run_dir} holds a run from before its inputs were recorded: reused as it is", file=sys.stderr)
        return True
    held = json.loads(recorded.read_text())
    if held != inputs:
        print(
            f"bench/learning.py: {run_dir} holds a finished run made with {held}, not {inputs}: "
            "give another --out, or remove that directory",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return True


def aligned_checkpoint(
    offline: Path, preset: str, method: str, run_dir: Path, overrides: list[str], inputs: dict
) -> Path:
    """`acalign align` into the run directory (with its `inputs` recorded): each seed's online run starts from its
    own aligned checkpoint. The alignment's settings are the dataset's preset and this run's --set, never what a
    reused pre-training was given: its stored settings would otherwise carry its --set (a w schedule, say) into every
    later alignment made without them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / INPUTS_FILE).write_text(json.dumps(inputs))
    aligned = run_dir / f"aligned-{method}.pt"
    acalign(
        "align",
        str(offline),
        "--finetune",
        method,
        "--preset",
        preset,
        "--out",
        str(aligned),
        *config_overrides(overrides),
        log=run_dir / "log.txt",
    )
    return aligned


def finetune_schedule(scale: Scale) -> list[str]:
    return [
        "--steps",
        str(scale.online_steps),
        "--eval-every",
        str(scale.eval_every),
        "--eval-episodes",
        str(scale.eval_episodes),
        "--force",
    ]


def online_run(
    offline: Path, preset: str, method: str, seed: int, scale: Scale, overrides: list[str], reused: set[Path]
) -> Path:
    """One seed's online run, unless its directory is among the finished runs `reused` (main checks them first)."""
    run_dir, inputs = run_dir_of(offline, method, seed), run_inputs(method, scale, overrides)
    if run_dir in reused:
        return run_dir
    aligned = aligned_checkpoint(offline, preset, method, run_dir, overrides, inputs)
    acalign(
        "finetune",
        str(aligned),
        "--out",
        str(run_dir),
        "--seed",
        str(seed),
        *finetune_schedule(scale),
        log=run_dir / "log.txt",
    )
    return run_dir


def batched_online_runs(
    offline: Path, preset: str, method: str, seeds: int, scale: Scale, overrides: list[str], reused: set[Path]
) -> list[Path]:
    """Every unfinished seed of `method` in one `acalign finetune` process (a seed batch, algo/seed_batch.py): each
    aligned as `online_run` aligns it, then trained as one batched learner. Each seed's run directory is what
    `online_run` writes (the same run to float32 rounding); the batch's output goes to <dataset>/<method>-batch-log.txt.
    """
    run_dirs, inputs = (
        [run_dir_of(offline, method, seed) for seed in range(seeds)],
        run_inputs(method, scale, overrides),
    )
    pending = [(seed, run_dir) for seed, run_dir in enumerate(run_dirs) if run_dir not in reused]
    if not pending:
        return run_dirs
    aligned = [str(aligned_checkpoint(offline, preset, method, run_dir, overrides, inputs)) for _, run_dir in pending]
    acalign(
        "finetune",
        *aligned,
        "--out",
        *(str(run_dir) for _, run_dir in pending),
        "--seed",
        *(str(seed) for seed, _ in pending),
        *finetune_schedule(scale),
        log=offline.parent.parent / f"{method}-batch-log.txt",
    )
    return run_dirs


def summarize(scores: list[tuple[int, float]], online_steps: int) -> dict[str, float]:
    switch = scores[0][1]
    online = scores[1:] or scores
    # The first 10% of the online steps, and at least the first online evaluation (a short run evaluated every
    # 1000 steps has none inside its first 10%).
    early = [s for step, s in online if step - scores[0][0] <= 0.1 * online_steps] or [online[0][1]]
    last = online[-max(1, round(0.1 * len(online))) :]
    return {
        "switch": switch,
        "dip": min(early),
        "worst": min(s for _, s in scores),
        "final": float(np.mean([s for _, s in last])),
    }


def iqm_with_ci(values: list[float], reps: int = 5000) -> tuple[float, float, float]:
    """IQM over seeds and its 95% bootstrap confidence interval (the estimator `acalign plot` draws)."""
    from acalign_robot.algo.plots import interval_estimate

    return interval_estimate(values, "iqm", reps)


def markdown(runs: list[dict], datasets: list[str]) -> str:
    """One row per (dataset, method label): IQM [95% CI] of each figure over its seeds, and the bar's checks."""
    lines = [
        "IQM over seeds [95% stratified-bootstrap CI], normalised score (dataset reference returns). Bar: dip >= 95% "
        "of switch; final > switch; final >= naive's final (checked on the IQMs).",
        "",
        "| dataset | method | seeds | switch | dip (first 10%) | worst online | final (last 10%) | bar |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset in datasets:
        by_method: dict[str, list[dict]] = {}
        for run in runs:
            if run["dataset"] == dataset:
                by_method.setdefault(run["method"], []).append(run)
        iqms = {m: {k: iqm_with_ci([r[k] for r in rs]) for k in FIGURES} for m, rs in by_method.items()}
        overrides = {m: set(rs[0].get("overrides") or ()) for m, rs in by_method.items()}
        for method, figures in iqms.items():
            cells = [f"{point:.1f} [{low:.1f}, {high:.1f}]" for point, low, high in figures.values()]
            lines.append(
                f"| {dataset} | {method} | {len(by_method[method])} | "
                + " | ".join(cells)
                + f" | {bar(method, iqms, naive_baseline(method, overrides))} |"
            )
    return "\n".join(lines)


def naive_baseline(method: str, overrides: dict[str, set[str]]) -> str | None:
    """The naive row a method is held to: among the naive rows (`naive`, `naive[...]`) whose --set overrides are all
    the method's own, the one sharing the most (naive[reward-scale-5] for aca[reward-scale-5,w-to-0], not a naive
    pre-trained at another reward scale); None for a naive row or where none qualifies."""
    if method.startswith("naive"):
        return None
    candidates = [m for m in overrides if m.startswith("naive") and overrides[m] <= overrides[method]]
    return max(candidates, key=lambda m: len(overrides[m]), default=None)


FIGURES = ("switch", "dip", "worst", "final")


def bar(method: str, iqms: dict, baseline: str | None) -> str:
    """The issue's bar on one row's IQMs; `baseline`: the naive row its final is held to (naive_baseline)."""
    figures = {k: point for k, (point, _, _) in iqms[method].items()}
    checks = [
        ("dip", figures["dip"] >= 0.95 * figures["switch"]),
        ("improves", figures["final"] > figures["switch"]),
    ]
    if baseline is not None:
        checks.append((f">= {baseline}", figures["final"] >= iqms[baseline]["final"][0]))
    return ", ".join(f"{name} {'met' if held else 'missed'}" for name, held in checks)


def publish(path: Path, runs: list[dict]) -> list[dict]:
    """Merge `runs` into the JSON file at `path` (keyed by dataset, method, seed, scale); everything it holds."""
    held = json.loads(path.read_text())["runs"] if path.exists() else []
    key = lambda run: (run["dataset"], run["method"], run["seed"], run["scale"])  # noqa: E731
    merged = {key(run): run for run in held} | {key(run): run for run in runs}
    everything = sorted(merged.values(), key=key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": everything}, indent=1))
    return everything


def plot(runs: list[dict], datasets: list[str], out: Path) -> None:
    """Per dataset: each method's IQM curve over seeds with its 95% CI band (thin lines: the seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        methods = sorted({run["method"] for run in runs if run["dataset"] == dataset})
        others = iter(("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"))
        for method in methods:
            color = "tab:red" if method == "naive" else next(others, "tab:gray")
            curves = [run["curve"] for run in runs if run["dataset"] == dataset and run["method"] == method]
            length = min(len(curve) for curve in curves)
            steps = [step for step, _ in curves[0][:length]]
            values = np.array([[score for _, score in curve[:length]] for curve in curves])  # (seeds, evaluations)
            for seed_curve in values:
                axis.plot(steps, seed_curve, color=color, alpha=0.2, linewidth=0.8)
            band = [iqm_with_ci(list(values[:, i]), reps=1000) for i in range(length)]
            axis.plot(steps, [b[0] for b in band], color=color, label=f"{method} (IQM, {len(curves)} seeds)")
            axis.fill_between(steps, [b[1] for b in band], [b[2] for b in band], color=color, alpha=0.2)
        axis.set_title(dataset)
        axis.set_xlabel("online env steps")
        axis.set_ylabel("normalised score")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
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
    parser.add_argument("--eval-episodes", type=int, help="override the scale's evaluation episodes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="online methods to run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ACA config override for pre-training and alignment (repeatable); an existing offline checkpoint in OUT "
        "is reused as it is, and aligned with the dataset's preset and this run's --set only",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="online runs (seed batches with --batched-seeds) in parallel, one core each"
    )
    parser.add_argument(
        "--batched-seeds",
        action="store_true",
        help="train all seeds of a dataset and method in one process as one batched learner (the same runs, cheaper)",
    )
    parser.add_argument("--out", default="bench/out/learning")
    parser.add_argument(
        "--label",
        help="name of this configuration in tables and --publish (default: the method; e.g. aca[prior]); naive keeps "
        "its name unless the label holds {method}, which each method's name replaces (e.g. {method}[reward-scale-5])",
    )
    parser.add_argument("--publish", metavar="FILE", help="merge every run into FILE (docs/results/learning.json)")
    args = parser.parse_args()

    scale = SCALES[args.scale]
    scale = Scale(
        args.offline_steps or scale.offline_steps,
        args.online_steps or scale.online_steps,
        scale.eval_every,
        args.eval_episodes or scale.eval_episodes,
    )
    out = Path(args.out) / f"{args.scale}-{scale.offline_steps}-{scale.online_steps}"
    out.mkdir(parents=True, exist_ok=True)
    preset_of = dict(zip(args.datasets, args.presets or [guessed_preset(name) for name in args.datasets]))
    # The finished runs to reuse, found before any work: one made with other inputs stops the bench here (exit 2).
    reused: set[Path] = set()
    for dataset in args.datasets:
        for method in args.methods:
            for seed in range(args.seeds):
                run_dir = run_dir_of(offline_checkpoint_of(out, dataset), method, seed)
                if finished(run_dir, run_inputs(method, scale, args.set)):
                    reused.add(run_dir)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        offline = dict(
            zip(args.datasets, pool.map(lambda d: pretrain(d, preset_of[d], scale, out, args.set), args.datasets))
        )
        if args.batched_seeds:
            batches = {
                (d, m): pool.submit(
                    batched_online_runs, offline[d], preset_of[d], m, args.seeds, scale, args.set, reused
                )
                for d in args.datasets
                for m in args.methods
            }
            run_dirs = {(d, m, s): run_dir for (d, m), job in batches.items() for s, run_dir in enumerate(job.result())}
        else:
            jobs = {
                (d, m, s): pool.submit(online_run, offline[d], preset_of[d], m, s, scale, args.set, reused)
                for d in args.datasets
                for m in args.methods
                for s in range(args.seeds)
            }
            run_dirs = {key: job.result() for key, job in jobs.items()}

    runs = []
    for (dataset, method, seed), run_dir in run_dirs.items():
        scores = read_scores(run_dir)
        if args.label and "{method}" in args.label:
            label = args.label.replace("{method}", method)
        else:
            label = args.label if args.label and method != "naive" else method
        runs.append(
            {
                "dataset": dataset,
                "method": label,
                "seed": seed,
                "scale": out.name,
                "overrides": args.set,
                **summarize(scores, scale.online_steps),
                "curve": scores,
            }
        )
    (out / "results.json").write_text(json.dumps({**asdict(scale), "scale": args.scale, "runs": runs}, indent=1))
    everything = publish(Path(args.publish), runs) if args.publish else runs
    shown = [run for run in everything if run["scale"] == out.name]
    plot(shown, args.datasets, out / "learning.png")
    print(
        f"Scale `{args.scale}`: {scale.offline_steps} offline updates, {scale.online_steps} online env steps, "
        f"evaluation every {scale.eval_every} steps with {scale.eval_episodes} deterministic episodes.\n"
    )
    print(markdown(shown, args.datasets))
    print(f"\nwrote {out / 'results.json'} and {out / 'learning.png'} in {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
