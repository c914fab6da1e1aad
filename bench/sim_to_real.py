"""Sim to real on the Panda reach arm: the offline policy's gap between its training sim and the robot twin, then ACA
vs. naive fine-tuning on the twin through the runtime (driver + controller + learner processes).

Inputs: the offline checkpoint (`acalign pretrain` on sim data of acalign/PandaReach-v0) and the aligned checkpoints
made from it (`acalign align`, `--finetune aca` and `--finetune naive`); both fine-tunings start from its actor.
1. The gap: the offline actor, exported once, in deterministic sessions of `--eval-episodes` (driver + controller,
   launch/sim_panda_eval.yaml) on the nominal sim, the training distribution (sim/panda_reach.yaml) and the twin.
   Episode k of every session has the same start and target (the controller seeds each reset with seed + k), so
   the gap is also given paired: the mean and standard error of the per-episode differences.
2. Per mode and seed, launch/sim_panda_twin_finetune.yaml for `--minutes` of robot time (the controller's 50 Hz loop
   runs in real time), the learner from that mode's aligned checkpoint. From the controller's episode log (exploring
   returns, as the robot experienced them): the dip (the lowest moving mean of WINDOW episodes, from the first
   episode a fine-tuned version ran, minus the mean of the first WINDOW episodes), the final score (the last WINDOW
   episodes), the robot minutes until the moving mean first reached the offline actor's deterministic score on the
   training distribution ("recovered"); the safety events (ticks held by a robot limit, rate-limited ticks, SAFE ticks,
   rollbacks, driver watchdog events). Then the learner's final actor (its learner.pt) exported and evaluated like 1.
Scores are D4RL-normalised with the dataset's references, 100 (R - R_random) / (R_expert - R_random).
Prints a table and writes bench/out/sim_to_real.json (sessions under --out). Resumable: each finished evaluation and
fine-tuning run leaves a result.json in its directory under --out, reused when the bench is run again with the same
inputs (checkpoint or artifact, minutes, episodes, scheduling).

    python bench/sim_to_real.py --offline runs/panda-reach-medium/offline.pt \\
        --aca runs/panda-reach-medium/aligned-aca.pt --naive runs/panda-reach-medium/aligned-naive.pt \\
        [--minutes 5] [--seeds 0] [--eval-episodes 20] [--out bench/out/sim_to_real] [--realtime-priority 50]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from acalign_robot import config as config_io
from acalign_robot.atomic import write_text_atomic
from acalign_robot.export.onnx_export import write_artifact
from acalign_robot.policy.store import read_artifact
from acalign_robot.session.schema import LaunchConfig
from acalign_robot.session.supervisor import Supervisor

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out" / "sim_to_real.json"
SIMS = {"nominal": None, "training": "sim/panda_reach.yaml", "twin": "sim/panda_reach_twin.yaml"}
WINDOW = 10  # episodes (20 s of robot time at 100 ticks an episode)


def run_session(launch_file: str, overrides: list[str], session_dir: Path) -> dict:
    config = config_io.load(LaunchConfig, REPO / "launch" / launch_file, overrides)
    supervisor = Supervisor(config, session_dir, live=False)
    report = supervisor.run()
    if report["failure"]:
        raise RuntimeError(f"{session_dir}: {report['failure']}")
    if supervisor.stop_requested:
        raise SystemExit(f"{session_dir}: stopped by a signal before its end; nothing of it is kept")
    return report


def reuse(result_file: Path, inputs: dict) -> dict | None:
    """The result a previous run of this bench left for the same inputs, or None."""
    if not result_file.exists():
        return None
    previous = json.loads(result_file.read_text())
    return previous["result"] if previous["inputs"] == inputs else None


def keep(result_file: Path, inputs: dict, result: dict) -> dict:
    """Write `result` for `inputs` whole or not at all: a bench stopped mid-write leaves nothing `reuse` misreads."""
    write_text_atomic(result_file, json.dumps({"inputs": inputs, "result": result}, indent=2))
    return result


def evaluate(artifact: Path, sim: str | None, episodes: int, session_dir: Path, realtime: list[str]) -> list[float]:
    """The deterministic returns of `episodes` episodes, in order."""
    inputs = {
        "policy_sha256": read_artifact(artifact)[1].onnx.sha256,
        "sim": sim,
        "episodes": episodes,
        "realtime": realtime,
    }
    previous = reuse(session_dir / "result.json", inputs)
    if previous is not None:
        return previous["episode_returns"]
    if sim:
        driver = [f"robots.0.driver.sim={REPO / sim}"]
    else:  # the env with default realism: the sim the data came from
        driver = ["robots.0.driver.sim=null", "robots.0.driver.env_id=acalign/PandaReach-v0"]
    overrides = [
        f"robots.0.controller.policy={artifact}",
        f"robots.0.controller.episodes={episodes}",
        *driver,
        *realtime,
    ]
    run_session("sim_panda_eval.yaml", overrides, session_dir)
    returns = json.loads((session_dir / "panda-0" / "stats.json").read_text())["episode_returns"]
    return keep(session_dir / "result.json", inputs, {"episode_returns": returns})["episode_returns"]


def moving_mean(returns: np.ndarray) -> np.ndarray:
    return np.convolve(returns, np.ones(WINDOW) / WINDOW, mode="valid")  # (episodes - WINDOW + 1,)


def fine_tune(
    mode: str, aligned: Path, artifact: Path, seed: int, minutes: float, out: Path, target: float, realtime: list[str]
) -> dict:
    run_dir = out / f"{mode}-seed{seed}"
    inputs = {
        "aligned": str(aligned),
        "aligned_mtime": aligned.stat().st_mtime,
        "minutes": minutes,
        "target": target,
        "realtime": realtime,
    }
    previous = reuse(run_dir / "result.json", inputs)
    if previous is not None:
        return previous
    session_dir = run_dir / time.strftime("%Y%m%d-%H%M%S")
    overrides = [
        f"duration_s={minutes * 60}",
        f"learner.checkpoint={aligned}",
        f"learner.seed={seed}",
        f"robots.0.controller.policy={artifact}",
        f"robots.0.controller.seed={seed}",
        f"robots.0.driver.seed={seed}",
        *realtime,
    ]
    report = run_session("sim_panda_twin_finetune.yaml", overrides, session_dir)
    stats = json.loads((session_dir / "panda-0" / "stats.json").read_text())
    log = stats["episode_log"]  # (tick, seconds, return, policy version) per episode
    returns = np.array([ret for _, _, ret, _ in log])
    seconds = np.array([s for _, s, _, _ in log])
    first_tuned = next((i for i, (_, _, _, version) in enumerate(log) if version > 1), len(log))
    means = moving_mean(returns)
    after = means[max(0, first_tuned - WINDOW + 1) :]
    reached = np.flatnonzero(means >= target)
    safety = report["safety"]["panda-0"]
    driver = next(iter(report["drivers"].values()), {})
    learner_pt = session_dir / "learner" / "learner.pt"
    final_artifact = write_artifact(learner_pt, f"sim2real-{mode}-seed{seed}", out / "policies")
    result = {
        "mode": mode,
        "seed": seed,
        "session": str(session_dir),
        "episodes": len(log),
        "robot_minutes": float(seconds[-1] / 60) if len(log) else 0.0,
        "start": float(returns[:WINDOW].mean()),
        "dip": float(after.min() - returns[:WINDOW].mean()) if len(after) else None,
        "final": float(returns[-WINDOW:].mean()),
        "minutes_to_target": float(seconds[reached[0] + WINDOW - 1] / 60) if len(reached) else None,
        "policy_versions": int(log[-1][3]) if log else 0,
        "swaps": stats.get("swaps"),
        "swap_rejections": stats.get("swap_rejections"),
        "learner_updates": (report["learner"] or {}).get("updates"),
        "safety": {
            "limit_ticks": safety.get("filter_limit_ticks"),
            "rate_limited": safety.get("filter_rate_limited"),
            "safe_ticks": safety.get("filter_safe_ticks"),
            "rollbacks": len(safety.get("rollbacks") or []),
            "watchdog_events": driver.get("watchdog_events"),
        },
        "final_artifact": str(final_artifact),
    }
    return keep(run_dir / "result.json", inputs, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--offline", type=Path, required=True, help="offline checkpoint (acalign pretrain)")
    parser.add_argument("--aca", type=Path, required=True, help="aligned checkpoint, --finetune aca")
    parser.add_argument("--naive", type=Path, required=True, help="aligned checkpoint, --finetune naive")
    parser.add_argument("--minutes", type=float, default=5.0, help="robot minutes of fine-tuning per run (default 5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "sim_to_real")
    parser.add_argument(
        "--realtime-priority",
        type=int,
        help="run driver and controller under SCHED_FIFO at this priority, as on hardware (docs/deploy.md; needs root "
        "or CAP_SYS_NICE): keeps other load on the machine from latching SAFE on a late driver reply",
    )
    args = parser.parse_args()
    out = args.out.resolve()
    realtime = []
    if args.realtime_priority is not None:
        realtime = [f"robots.0.{p}.realtime.priority={args.realtime_priority}" for p in ("driver", "controller")]

    offline_artifact = write_artifact(args.offline.resolve(), "sim2real-offline", out / "policies")
    reference = read_artifact(offline_artifact)[1].reference_scores
    offline_returns = {
        name: evaluate(offline_artifact, sim, args.eval_episodes, out / f"eval-offline-{name}", realtime)
        for name, sim in SIMS.items()
    }
    gap = {name: float(np.mean(returns)) for name, returns in offline_returns.items()}
    paired = np.subtract(offline_returns["training"], offline_returns["twin"])
    paired_gap = {"mean": float(paired.mean()), "se": float(paired.std(ddof=1) / np.sqrt(len(paired)))}
    runs = []
    for seed in args.seeds:
        for mode, aligned in (("aca", args.aca), ("naive", args.naive)):
            run = fine_tune(
                mode, aligned.resolve(), offline_artifact, seed, args.minutes, out, gap["training"], realtime
            )
            run["final_eval_twin"] = float(
                np.mean(
                    evaluate(
                        Path(run["final_artifact"]),
                        SIMS["twin"],
                        args.eval_episodes,
                        out / f"eval-{mode}-seed{seed}",
                        realtime,
                    )
                )
            )
            runs.append(run)

    def score(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.1f}" + (f" ({reference.normalize(value):.0f})" if reference else "")

    print(f"offline actor, deterministic, {args.eval_episodes} episodes: return (normalised)")
    for name, value in gap.items():
        print(f"  {name:9s} {score(value)}")
    print(f"  gap (training - twin), paired over episodes: {paired_gap['mean']:.2f} +- {paired_gap['se']:.2f} (se)")
    print()
    print(
        f"{'mode':6s} {'seed':>4s} {'min':>5s} {'start':>12s} {'dip':>7s} {'final':>12s} {'to target':>9s} "
        f"{'eval twin':>12s} {'limit':>6s} {'rate':>6s} {'safe':>5s} {'rb':>3s}"
    )
    for run in runs:
        safety = run["safety"]
        dip = "-" if run["dip"] is None else f"{run['dip']:.1f}"
        to_target = "-" if run["minutes_to_target"] is None else f"{run['minutes_to_target']:.1f}"
        print(
            f"{run['mode']:6s} {run['seed']:4d} {run['robot_minutes']:5.1f} {score(run['start']):>12s} {dip:>7s} "
            f"{score(run['final']):>12s} {to_target:>9s} {score(run['final_eval_twin']):>12s} "
            f"{safety['limit_ticks']!s:>6s} {safety['rate_limited']!s:>6s} {safety['safe_ticks']!s:>5s} "
            f"{safety['rollbacks']:3d}"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "window_episodes": WINDOW,
                "reference_scores": None if reference is None else config_io.to_dict(reference),
                "offline_gap": gap,
                "offline_paired_gap": paired_gap,
                "offline_returns": offline_returns,
                "runs": runs,
            },
            indent=2,
        )
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
