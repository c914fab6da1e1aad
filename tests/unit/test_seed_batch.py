"""Seed batches (algo/seed_batch.py): S seeds updated as one must be S single-seed SAC / ACA phase-3 learners.

Parity: S agents from S different states, each fed the same batches and the same noise as its seed in the batch,
must end with the same parameters, optimiser moments, temperature and w, to float32 rounding (the batch's batched
matmuls round differently from the single networks' matmuls).
"""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch

from acalign_robot.algo.aca import ACAConfig, OfflineACA, align
from acalign_robot.algo.sac import SAC, SACConfig
from acalign_robot.algo.seed_batch import SeedBatchSAC
from acalign_robot.data.replay_buffer import Batch

OBS, ACT, BATCH, SEEDS = 5, 2, 32, 3
SAC_CONFIG = SACConfig(batch_size=BATCH, hidden_sizes=(16, 16))
# Float32 rounding of the same sums taken in another order, after a few Adam steps of lr 3e-4.
ATOL, RTOL = 1e-6, 1e-5


def random_batch(rng: np.random.Generator) -> Batch:
    return Batch(
        obs=rng.normal(size=(BATCH, OBS)).astype(np.float32),
        action=rng.uniform(-1, 1, (BATCH, ACT)).astype(np.float32),
        reward=rng.normal(size=BATCH).astype(np.float32),
        next_obs=rng.normal(size=(BATCH, OBS)).astype(np.float32),
        terminated=(rng.uniform(size=BATCH) < 0.1).astype(np.float32),
    )


def plain_agents() -> list[SAC]:
    """Plain SAC agents from different initialisations, each a few updates in (so Adam has moments)."""
    agents = []
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        agent = SAC(OBS, ACT, SAC_CONFIG, observations_for_normalizer=rng.normal(size=(100, OBS)).astype(np.float32))
        for _ in range(2):
            agent.update(random_batch(rng))
        agents.append(agent)
    return agents


def aligned_agents(config: ACAConfig) -> list[SAC]:
    """ACA phase-3 agents aligned from different offline agents (each its own prior pi_0)."""
    agents = []
    for seed in range(SEEDS):
        torch.manual_seed(10 + seed)
        rng = np.random.default_rng(10 + seed)
        offline = OfflineACA(OBS, ACT, config, rng.normal(size=(100, OBS)).astype(np.float32))
        for _ in range(2):
            offline.update(random_batch(rng))
        agents.append(align(offline))
    return agents


def run_both(agents: list[SAC], updates: int) -> tuple[SeedBatchSAC, list[list[dict]], list[list[dict]]]:
    """`updates` updates of the seed batch and of each agent alone, on the same batches with the same noise.
    Returns the batch and each seed's statistics, batched and alone ([seed][update])."""
    rng = np.random.default_rng(123)
    batches = [[random_batch(rng) for _ in agents] for _ in range(updates)]
    generators = [torch.Generator().manual_seed(1000 + seed) for seed in range(len(agents))]
    starts = [generator.get_state() for generator in generators]
    learner = SeedBatchSAC(copy.deepcopy(agents), generators)
    batched_infos = [learner.update_seeds(seed_batches) for seed_batches in batches]
    alone_infos = []
    for seed, agent in enumerate(agents):
        torch.set_rng_state(starts[seed])  # the global generator draws what the batch drew from this seed's
        alone_infos.append([agent.update(seed_batches[seed]) for seed_batches in batches])
    return learner, [list(infos) for infos in zip(*batched_infos)], alone_infos


def assert_same_state(batched, alone, path: str = "") -> None:
    """Every tensor and number of two SAC.state_dict()s agree (float32 rounding)."""
    if isinstance(alone, dict):
        assert isinstance(batched, dict), path
        assert batched.keys() == alone.keys(), path
        for key in alone:
            assert_same_state(batched[key], alone[key], f"{path}.{key}")
    elif isinstance(alone, torch.Tensor):
        assert isinstance(batched, torch.Tensor) and batched.shape == alone.shape, path
        torch.testing.assert_close(batched, alone, atol=ATOL, rtol=RTOL, msg=lambda m: f"{path}: {m}")
    elif isinstance(alone, float):
        assert batched == pytest.approx(alone, rel=RTOL, abs=ATOL), path
    else:
        assert batched == alone, path


def assert_parity(agents: list[SAC], updates: int) -> SeedBatchSAC:
    before = [agent.actor.trunk[0].weight.detach().clone() for agent in agents]
    learner, batched_infos, alone_infos = run_both(agents, updates)
    for seed, agent in enumerate(agents):
        assert not torch.equal(agent.actor.trunk[0].weight, before[seed])  # the actors did learn
        assert_same_state(learner.seed_state_dict(seed), agent.state_dict(), f"seed {seed}")
        for batched, alone in zip(batched_infos[seed], alone_infos[seed]):
            assert batched.keys() == alone.keys()
            for key in alone:
                assert batched[key] == pytest.approx(alone[key], rel=1e-3, abs=1e-4), key
    return learner


def test_plain_sac_seeds_batched_are_the_single_agents():
    assert_parity(plain_agents(), updates=4)


def test_aca_phase_3_seeds_batched_are_the_single_agents():
    """The aligned critic, w's decay and the actor's gradient clip, set small so that it binds on every seed: a clip
    over all seeds' gradients together would scale each seed's by another factor than its own norm gives."""
    agents = aligned_agents(ACAConfig(sac=SAC_CONFIG))
    for agent in agents:
        agent.actor_grad_clip = 1e-3
    learner = assert_parity(agents, updates=4)
    assert learner.prior.w == pytest.approx(1.0 - 4 * ACAConfig().w_step)


def test_aca_phase_3_variants_batched():
    """Warm-up updates (R alone), alpha following w, and the action-gradient diagnostics, seed by seed."""
    config = ACAConfig(sac=SAC_CONFIG, actor_warmup_updates=2, online_temperature="w", measure_action_gradients=True)
    assert_parity(aligned_agents(config), updates=4)


def test_seeds_at_different_points_are_refused():
    agents = plain_agents()
    agents[1].update(random_batch(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="update count"):
        SeedBatchSAC(agents, [torch.Generator() for _ in agents])


def read_csv(path) -> tuple[list[str], list[list[str]]]:
    with open(path) as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows


def test_finetune_seeds_writes_what_each_seed_alone_writes(tmp_path):
    """The batched online phase against `finetune` run seed by seed from the same aligned checkpoint (Hopper-v5):
    the same files, eval.csv columns and evaluation steps, and the same numbers to float32 rounding (the runs'
    envs, buffer sampling and noise are seeded alike, so only the batch's rounding differs)."""
    from acalign_robot.algo.checkpoint import load_checkpoint
    from acalign_robot.algo.pipeline import EvalSchedule, finetune, finetune_seeds
    from tests.learner_helpers import write_aligned_checkpoint

    aligned = write_aligned_checkpoint(tmp_path / "aligned-aca.pt")
    seeds, steps, schedule = [3, 7], 300, EvalSchedule(every=100, episodes=1)
    alone = [tmp_path / "alone" / f"seed{seed}" / "finetuned.pt" for seed in seeds]
    batched = [tmp_path / "batched" / f"seed{seed}" / "finetuned.pt" for seed in seeds]
    for out, seed in zip(alone, seeds):
        finetune(aligned, None, steps, out, seed=seed, schedule=schedule)
    assert finetune_seeds([aligned, aligned], None, steps, batched, seeds=seeds, schedule=schedule) == batched

    for one, other in zip(alone, batched):
        assert sorted(p.name for p in one.parent.iterdir()) == sorted(p.name for p in other.parent.iterdir())
        (header, rows), (other_header, other_rows) = (
            read_csv(one.parent / "eval.csv"),
            read_csv(other.parent / "eval.csv"),
        )
        assert header == other_header and len(rows) == len(other_rows) == 1 + steps // schedule.every
        for row, other_row in zip(rows, other_rows):
            for name, value, other_value in zip(header, row, other_row):
                if name == "phase" or name == "step":
                    assert value == other_value
                elif name != "wall_s" and value:
                    assert float(other_value) == pytest.approx(float(value), rel=1e-4, abs=1e-4), name
        episodes, other_episodes = (np.array(read_csv(run.parent / "episodes.csv")[1], float) for run in (one, other))
        assert episodes.shape == other_episodes.shape and len(episodes) > 3
        np.testing.assert_array_equal(other_episodes[:, 0], episodes[:, 0])
        np.testing.assert_allclose(other_episodes[:, 1], episodes[:, 1], rtol=1e-4)
        state, other_state = load_checkpoint(one)["agent"], load_checkpoint(other)["agent"]
        assert state["env_steps"] == other_state["env_steps"] == steps
        assert_same_state(other_state["agent"], state["agent"])
        torch.testing.assert_close(other_state["buffer"], state["buffer"], atol=1e-5, rtol=1e-5)


def test_a_diverging_seed_stops_alone(tmp_path, monkeypatch):
    """The other seeds finish and are written; then DivergenceError names the seed that stopped, whose run directory
    gets no checkpoint (its input stays the last good one), as a single-seed run that diverges."""
    from acalign_robot.algo import pipeline
    from acalign_robot.algo.divergence import DivergenceError
    from tests.learner_helpers import write_aligned_checkpoint

    after_step = pipeline._FinetuneRun.after_step

    def seed_7_diverges_at_step_40(run, step, *args):
        if run.seed == 7 and step == 40:
            raise DivergenceError("finetune (aca) diverged at env step 40: q_mean = nan is not finite", 40, "q_mean")
        after_step(run, step, *args)

    monkeypatch.setattr(pipeline._FinetuneRun, "after_step", seed_7_diverges_at_step_40)
    aligned = write_aligned_checkpoint(tmp_path / "aligned-aca.pt")
    outs = [tmp_path / f"seed{seed}" / "finetuned.pt" for seed in (3, 7)]
    schedule = pipeline.EvalSchedule(every=50, episodes=1)
    with pytest.raises(
        DivergenceError, match=r"1 of 2 seeds stopped: seed 7: finetune \(aca\) diverged at env step 40"
    ):
        pipeline.finetune_seeds([aligned, aligned], None, 100, outs, seeds=[3, 7], schedule=schedule)
    assert outs[0].exists() and not outs[1].exists()
    assert [row[1] for row in read_csv(outs[0].parent / "eval.csv")[1]] == ["0", "50", "100"]
    assert [row[1] for row in read_csv(outs[1].parent / "eval.csv")[1]] == ["0"]  # evaluated before it stopped


def test_two_seeds_cannot_share_a_run_directory(tmp_path):
    from acalign_robot.algo.pipeline import finetune_seeds
    from acalign_robot.errors import InputError

    out = tmp_path / "run" / "finetuned.pt"
    with pytest.raises(InputError, match="the same run directory"):
        finetune_seeds([tmp_path / "a.pt", tmp_path / "b.pt"], None, 10, [out, out], seeds=[0, 1])
    assert not out.parent.exists()
