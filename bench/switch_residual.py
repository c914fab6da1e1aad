"""How far the aligned critic starts from the online soft Bellman fixed point, on its own dataset.

At the switch ACA's critic is Q_i = R_i + w L with R_i = Z_i (ALGORITHM.md, phase 2), and online fine-tuning fits Q
to the alpha = 1 soft Bellman target. For every transition of the dataset this computes that target's residual at
the switch, with the code of the online critic loss (losses.aligned_critic_terms):

    delta_i(s,a) = r + gamma (1-d) [min_j Rbar_j(s',a') + w L(s',a') - alpha log pi(a'|s')] - (R_i(s,a) + w L(s,a))

A constant offset (the mean) moves every action's value alike and leaves the actor's gradient alone; the spread
across states (the standard deviation, the 5th-95th percentile range) is what temporal-difference learning must
move in the first online updates, and the actor follows those moving values. `z_target_alpha: learned` (the
reference) fits Z at the offline temperature, so its Z is off the alpha = 1 fixed point by about
gamma (1 - alpha_off) E[log pi] per step; `one` fits it at alpha = 1 (ALGORITHM.md, phase 1 step 3).

    python bench/switch_residual.py --checkpoint DATASET ALIGNED.pt [--checkpoint DATASET ALIGNED.pt ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from acalign_robot.algo import losses
from acalign_robot.algo.checkpoint import load_checkpoint, load_online_agent
from acalign_robot.data.datasets import load_transitions


@torch.no_grad()
def switch_residuals(dataset: str, checkpoint: Path, chunk: int = 8192, seed: int = 0) -> dict:
    payload = load_checkpoint(checkpoint, expect_phase="online")
    agent, _, config = load_online_agent(payload)
    if agent.prior is None:
        raise SystemExit(f"{checkpoint}: a naive fine-tuning checkpoint has no aligned critic")
    torch.manual_seed(seed)
    data = load_transitions(dataset)
    alpha, w, gamma = agent.log_alpha.exp(), agent.prior.w, config.sac.gamma
    residuals = []
    for start in range(0, len(data), chunk):
        part = slice(start, start + chunk)
        obs = torch.as_tensor(data.observations[part])
        action = torch.as_tensor(data.actions[part])
        reward = torch.as_tensor(data.rewards[part])
        next_obs = torch.as_tensor(data.next_observations[part])
        terminated = torch.as_tensor(data.terminals[part], dtype=torch.float32)
        prediction, target, _ = losses.aligned_critic_terms(  # prediction (E, B), target (B,)
            agent.critic,
            agent.target_critic,
            losses.PriorAt(agent.prior.actor, obs, agent.prior.beta),
            losses.PriorAt(agent.prior.actor, next_obs, agent.prior.beta),
            obs,
            action,
            reward,
            next_obs,
            terminated,
            losses.Draw(agent.actor, next_obs),
            alpha,
            w,
            gamma,
        )
        residuals.append((target - prediction).flatten().numpy())
    delta = np.concatenate(residuals)
    return {
        "dataset": dataset,
        "checkpoint": str(checkpoint),
        "z_target_alpha": config.z_target_alpha,
        "transitions": len(data),
        "reward_mean": float(np.mean(data.rewards)),
        "mean": float(delta.mean()),
        "std": float(delta.std()),
        "p5": float(np.percentile(delta, 5)),
        "p95": float(np.percentile(delta, 95)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint",
        nargs=2,
        action="append",
        required=True,
        metavar=("DATASET", "ALIGNED"),
        help="a dataset id (or path) and an `acalign align` checkpoint made from it (repeatable)",
    )
    parser.add_argument("--out", default="bench/out/switch_residual.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [switch_residuals(dataset, Path(path)) for dataset, path in args.checkpoint]
    print(f"{'dataset':<26}{'z_target_alpha':>15}{'mean r':>8}{'mean delta':>12}{'std delta':>11}{'p5..p95':>20}")
    for row in rows:
        spread = f"{row['p5']:.1f}..{row['p95']:.1f}"
        print(
            f"{row['dataset']:<26}{row['z_target_alpha']:>15}{row['reward_mean']:>8.2f}"
            f"{row['mean']:>12.1f}{row['std']:>11.1f}{spread:>20}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
