"""Learner speed: gradient updates per second of our SAC / ACA updates vs. a straightforward reference.

All in one run, CPU, 1 torch thread, batch 256, Hopper sizes (obs 11, action 3), 2x256 MLPs, 2 critics:
- ours: batched ensemble critics (one baddbmm per layer), the critic frozen during the actor step;
- reference: what a first implementation looks like: one nn.Sequential per critic and per Z, one Adam per network,
  Python loops over the ensemble.
Ours and the reference are timed in interleaved chunks of 10 updates (median chunk), so that other load on a shared
machine hits both alike. Also the machine's measured matmul GFLOP/s (1 thread) and the fraction of it each update
reaches (FLOPs counted with torch.utils.flop_counter).

Seed batches (algo/seed_batch.py): the ACA phase-3 update at HalfCheetah sizes (obs 17, action 6, 2x256, batch 256)
for one seed (SAC, the single-seed path) and for 1 and 5 seeds as one `SeedBatchSAC`, timed in the same interleaved
chunks: updates/s per seed and what 5 seeds cost in units of one seed's update.

Prints the tables and writes bench/out/learner_speed.json.

    python bench/learner_speed.py [--updates 300]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from acalign_robot.algo.aca import ACAConfig, OfflineACA, align
from acalign_robot.algo.networks import TanhGaussianActor
from acalign_robot.algo.sac import SAC, SACConfig
from acalign_robot.algo.seed_batch import SeedBatchSAC
from acalign_robot.data.replay_buffer import Batch

OBS, ACT, BATCH, HIDDEN, CRITICS = 11, 3, 256, 256, 2
CHEETAH_OBS, CHEETAH_ACT, SEEDS = 17, 6, 5  # the seed-batch rows: HalfCheetah sizes, 5 seeds


def random_batch(rng: np.random.Generator, obs_dim: int = OBS, action_dim: int = ACT) -> Batch:
    return Batch(
        obs=rng.normal(size=(BATCH, obs_dim)).astype(np.float32),
        action=rng.uniform(-1, 1, (BATCH, action_dim)).astype(np.float32),
        reward=rng.normal(size=BATCH).astype(np.float32),
        next_obs=rng.normal(size=(BATCH, obs_dim)).astype(np.float32),
        terminated=np.zeros(BATCH, np.float32),
    )


def mlp(inputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1)
    )


class ReferenceSAC:
    """A straightforward SAC (and phase-1 ACA when `with_z`): separate networks and optimisers, Python loops."""

    def __init__(self, with_z: bool):
        self.actor = TanhGaussianActor(OBS, ACT, (HIDDEN, HIDDEN))
        self.critics = [mlp(OBS + ACT) for _ in range(CRITICS)]
        self.targets = [copy.deepcopy(c) for c in self.critics]
        self.zs = [mlp(OBS) for _ in range(CRITICS)] if with_z else []
        self.log_alpha = torch.zeros((), requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.critic_opts = [torch.optim.Adam(c.parameters(), lr=3e-4) for c in self.critics]
        self.z_opts = [torch.optim.Adam(z.parameters(), lr=3e-4) for z in self.zs]
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=3e-4)

    def update(self, batch: Batch) -> None:
        obs, action, reward, next_obs, done = (
            torch.as_tensor(x) for x in (batch.obs, batch.action, batch.reward, batch.next_obs, batch.terminated)
        )
        new_action, log_prob, _ = self.actor.sample(obs)
        alpha_loss = -(self.log_alpha * (log_prob.detach() - ACT)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_action, next_log_prob, _ = self.actor.sample(next_obs)
            next_q = torch.min(
                torch.stack([t(torch.cat([next_obs, next_action], 1)).squeeze(-1) for t in self.targets]), 0
            )
            target = reward + 0.99 * (1 - done) * (next_q.values - alpha * next_log_prob)
        for critic, opt in zip(self.critics, self.critic_opts):
            loss = F.mse_loss(critic(torch.cat([obs, action], 1)).squeeze(-1), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        dataset_log_prob = self.actor.log_prob(obs, action) if self.zs else None
        if self.zs:
            with torch.no_grad():
                next_z = torch.min(torch.stack([z(next_obs).squeeze(-1) for z in self.zs]), 0).values
                z_target = reward + 0.99 * (1 - done) * (next_log_prob + next_z - alpha * next_log_prob)
            for z, opt in zip(self.zs, self.z_opts):
                loss = F.mse_loss(dataset_log_prob.detach() + z(obs).squeeze(-1), z_target)
                opt.zero_grad()
                loss.backward()
                opt.step()
        q = torch.min(torch.stack([c(torch.cat([obs, new_action], 1)).squeeze(-1) for c in self.critics]), 0).values
        actor_loss = (alpha * log_prob - q).mean()
        if self.zs:
            actor_loss = 30.0 / q.abs().mean().detach() * actor_loss - dataset_log_prob.mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            for target_net, critic in zip(self.targets, self.critics):
                for tp, p in zip(target_net.parameters(), critic.parameters()):
                    tp.mul_(0.995).add_(0.005 * p)


def updates_per_second(
    updates: list, count: int, rng: np.random.Generator, chunk: int = 10, dims: tuple[int, int] = (OBS, ACT)
) -> list[float]:
    """Updates per second of each function in `updates`, timed in interleaved chunks of `chunk` updates (ours,
    reference, ours, ...) so that a load change on a shared machine hits all of them alike; each rate is from the
    median chunk time. `count` updates per function after 20 warm-up updates, on batches of `dims` (obs, action)."""
    batches = [random_batch(rng, *dims) for _ in range(16)]
    for update in updates:
        for i in range(20):
            update(batches[i % 16])
    chunk_s: list[list[float]] = [[] for _ in updates]
    for start in range(0, count, chunk):
        for update, times in zip(updates, chunk_s):
            began = time.perf_counter()
            for i in range(start, start + chunk):
                update(batches[i % 16])
            times.append(time.perf_counter() - began)
    return [chunk / float(np.median(times)) for times in chunk_s]


def flops_per_update(update, rng: np.random.Generator) -> int:
    with FlopCounterMode(display=False) as counter:
        update(random_batch(rng))
    return counter.get_total_flops()


def seed_batch_rows(count: int, rng: np.random.Generator) -> list[dict]:
    """ACA phase 3 at HalfCheetah sizes: one seed alone (SAC) and 1 and SEEDS seeds as one SeedBatchSAC."""
    config = ACAConfig(sac=SACConfig())
    observations = rng.normal(size=(1000, CHEETAH_OBS)).astype(np.float32)
    aligned = align(OfflineACA(CHEETAH_OBS, CHEETAH_ACT, config, observations))

    def batch_of(seeds: int) -> SeedBatchSAC:
        generators = [torch.Generator().manual_seed(seed) for seed in range(seeds)]
        return SeedBatchSAC([copy.deepcopy(aligned) for _ in range(seeds)], generators)

    one, many = batch_of(1), batch_of(SEEDS)
    candidates = {  # name: (update of one batch, seeds it updates)
        "1 seed (SAC)": (copy.deepcopy(aligned).update, 1),
        "1 seed batched": (lambda batch: one.update_seeds([batch]), 1),
        f"{SEEDS} seeds batched": (lambda batch: many.update_seeds([batch] * SEEDS), SEEDS),
    }
    rates = updates_per_second(
        [update for update, _ in candidates.values()], count, rng, dims=(CHEETAH_OBS, CHEETAH_ACT)
    )
    single_rate = rates[0]
    return [
        {
            "learner": name,
            "seeds": seeds,
            "updates_per_s": rate,
            "seed_updates_per_s": rate * seeds,
            "cost_in_single_seed_updates": single_rate / rate,
        }
        for (name, (_, seeds)), rate in zip(candidates.items(), rates)
    ]


def matmul_gflops(size: int = 512, repeats: int = 50) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(5):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--out", default="bench/out/learner_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = ACAConfig(sac=SACConfig())
    observations = rng.normal(size=(1000, OBS)).astype(np.float32)

    offline = OfflineACA(OBS, ACT, config, observations)
    online = align(OfflineACA(OBS, ACT, config, observations))
    candidates = {
        "phase 1 (offline ACA)": (offline.update, ReferenceSAC(with_z=True).update),
        "plain SAC / naive": (SAC(OBS, ACT, config.sac).update, ReferenceSAC(with_z=False).update),
        "phase 3 (aligned ACA)": (online.update, None),
    }
    peak = matmul_gflops()
    rows = []
    for name, (ours, reference) in candidates.items():
        rates = updates_per_second([ours] if reference is None else [ours, reference], args.updates, rng)
        ours_rate = rates[0]
        ours_flops = flops_per_update(ours, rng)
        row = {
            "update": name,
            "ours_per_s": ours_rate,
            "gflop_per_update": ours_flops / 1e9,
            "fraction_of_peak": ours_rate * ours_flops / 1e9 / peak,
        }
        if reference is not None:
            row["reference_per_s"] = rates[1]
            row["speedup"] = ours_rate / row["reference_per_s"]
        rows.append(row)

    print(f"matmul peak (512x512, 1 thread): {peak:.1f} GFLOP/s; batch {BATCH}, {args.updates} timed updates\n")
    print(f"{'update':<24}{'ours/s':>9}{'reference/s':>13}{'speedup':>9}{'GFLOP/upd':>11}{'% of peak':>11}")
    for row in rows:
        reference = f"{row['reference_per_s']:.1f}" if "reference_per_s" in row else "-"
        speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
        print(
            f"{row['update']:<24}{row['ours_per_s']:>9.1f}{reference:>13}{speedup:>9}"
            f"{row['gflop_per_update']:>11.3f}{100 * row['fraction_of_peak']:>10.1f}%"
        )
    seed_rows = seed_batch_rows(args.updates, rng)
    print(f"\nACA phase 3, HalfCheetah sizes (obs {CHEETAH_OBS}, action {CHEETAH_ACT}), batch {BATCH}:\n")
    print(f"{'learner':<20}{'updates/s':>11}{'per seed/s':>12}{'cost (1 seed = 1)':>19}")
    for row in seed_rows:
        print(
            f"{row['learner']:<20}{row['updates_per_s']:>11.1f}{row['seed_updates_per_s']:>12.1f}"
            f"{row['cost_in_single_seed_updates']:>18.2f}x"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"matmul_gflops": peak, "batch": BATCH, "threads": 1, "rows": rows, "seed_batch_rows": seed_rows}
    out.write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
