"""The ACA pipeline as steps on checkpoints: pretrain (phase 1) -> align (phase 2) -> finetune (phase 3), and eval.

Each step reads the previous step's checkpoint and writes its own, so an expensive offline run is done once and
every online run (ACA or the naive baseline, any seed) starts from it.

Checkpoint `meta` carries what later steps need: env id, spaces and the env's action bounds (for export),
dataset ids and reference scores (for normalised scores), the phase-1 step count, the dataset's largest |reward| and
the statistics of the update that vouched for the checkpoint (`train_stats`).

No silent divergence: every update's statistics go through a `DivergenceGuard` (divergence.py: non-finite, or beyond
generous bounds scaled by the data's rewards), which stops the run with `DivergenceError` naming the quantity and
the step. An update's statistics describe the parameters it started from, so `pretrain` writes the checkpoint of an
evaluation only after the next update passed: the checkpoint left behind is the last good one. `finetune` writes
its checkpoint only at the end, so a diverged run leaves its input checkpoint as the last good one. `align` refuses
an offline checkpoint whose alpha or recorded statistics are beyond the same bounds. eval.csv and the progress bar
show alpha and the mean Q so that a drift is seen before it trips the guard.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from acalign_robot import config as config_io
from acalign_robot.algo.aca import (
    ACAConfig,
    OfflineACA,
    RewardScaleChoice,
    align,
    balanced_reward_scale,
    naive_finetuning,
    policy_entropy,
)
from acalign_robot.algo.checkpoint import (
    load_actor,
    load_checkpoint,
    load_online_agent,
    online_state,
    reference_of,
    save_checkpoint,
)
from acalign_robot.algo.device import resolve_device
from acalign_robot.algo.divergence import DivergenceError, DivergenceGuard
from acalign_robot.algo.env_loop import OnlineLoop, SeedBatchLoop, evaluate, make_env
from acalign_robot.algo.metrics import MetricsWriter
from acalign_robot.algo.sac import SAC
from acalign_robot.algo.seed_batch import SeedBatchSAC
from acalign_robot.data.datasets import TransitionView, load_transitions
from acalign_robot.data.replay_buffer import ReplayBuffer
from acalign_robot.data.scores import dataset_reference
from acalign_robot.errors import InputError

__all__ = [
    "EvalSchedule",
    "align_checkpoint",
    "env_id_of",
    "evaluate_checkpoint",
    "finetune",
    "finetune_seeds",
    "pretrain",
]


@dataclass(frozen=True)
class EvalSchedule:
    every: int = 5000
    episodes: int = 5


def env_id_of(view: TransitionView) -> str:
    import json

    spec = view.metadata.get("env_spec")
    if not spec:
        raise InputError(f"dataset {view.metadata.get('dataset_id')} records no env spec; pass --env")
    return json.loads(spec)["id"]


def _log_eval(
    metrics: MetricsWriter, phase: str, step: int, returns: list[float], reference, info: dict[str, float]
) -> dict:
    """An eval.csv row, with alpha and the mean Q of the latest update (`info`, {} before the first)."""
    normalized = reference.normalize(float(np.mean(returns))) if reference else None
    metrics.log_eval(phase, step, returns, normalized, info.get("alpha"), info.get("q_mean"))
    return {"return": float(np.mean(returns)), "score": normalized}


def _postfix(info: dict[str, float], last_return: float | None) -> dict[str, str]:
    """The progress bar's fields: the last evaluation's return, alpha and the mean Q of the latest update."""
    fields = {} if last_return is None else {"ret": f"{last_return:.0f}"}
    for key, label in (("alpha", "alpha"), ("q_mean", "q")):
        if key in info:
            fields[label] = f"{info[key]:.3g}"
    return fields


def _train_stats(info: dict[str, float]) -> dict[str, float]:
    return {key: float(value) for key, value in info.items() if isinstance(value, (int, float))}


def pretrain(
    datasets: list[str],
    config: ACAConfig,
    steps: int,
    out_path: Path,
    *,
    seed: int,
    env_id: str | None = None,
    schedule: EvalSchedule = EvalSchedule(),
    device: str = "cpu",
) -> Path:
    """Phase 1 on one or several datasets; writes an 'offline' checkpoint and `eval.csv` next to it.

    `device`: 'cpu', 'cuda' or 'auto' (resolve_device: 'cuda' without a GPU falls back to the CPU with a warning).
    With `reward_scale_from_data`, a probe of steps // 2 updates chooses `sac.reward_scale` first
    (`probe_reward_scale`); the run proper is then the run that scale would give, bit for bit.
    """
    view = load_transitions(datasets)
    env_id = env_id or env_id_of(view)
    env = make_env(env_id)
    if env.observation_space.shape[0] != view.obs_dim or env.action_space.shape[0] != view.action_dim:
        raise InputError(
            f"datasets have obs/action dims {view.obs_dim}/{view.action_dim}; {env_id} has "
            f"{env.observation_space.shape[0]}/{env.action_space.shape[0]}"
        )
    bounds = env.unwrapped.action_space
    env.close()
    reference = dataset_reference(view.metadata)
    reward_abs_max = float(np.abs(view.rewards).max())
    chosen_scale = {}
    if config.reward_scale_from_data:
        choice = probe_reward_scale(view, config, max(1, steps // 2), seed=seed, device=device)
        config = dataclasses.replace(config, sac=dataclasses.replace(config.sac, reward_scale=choice.reward_scale))
        chosen_scale = {"reward_scale_choice": dataclasses.asdict(choice)}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    meta = {
        "env_id": env_id,
        "obs_dim": view.obs_dim,
        "action_dim": view.action_dim,
        "action_low": [float(x) for x in bounds.low],
        "action_high": [float(x) for x in bounds.high],
        "datasets": list(datasets),
        "dataset_transitions": len(view),
        "dataset_nonfinite_dropped": view.nonfinite_dropped,
        "dataset_reward_abs_max": reward_abs_max,
        "seed": seed,
        "ref_random": reference.random if reference else None,
        "ref_expert": reference.expert if reference else None,
        "ref_source": reference.source if reference else None,
        **chosen_scale,
    }
    agent = OfflineACA(view.obs_dim, view.action_dim, config, view.observations, resolve_device(device))
    buffer = ReplayBuffer.from_view(view)
    metrics = MetricsWriter(out_path.parent)
    config_dict = config_io.to_dict(config)
    guard = DivergenceGuard("pretrain", "update", config.sac.gamma, config.sac.reward_scale)
    pending: tuple[dict, int] | None = None  # (state, step) of an evaluation, written once the next update passed

    def write(state: dict, step: int, stats: dict[str, float]) -> None:
        save_checkpoint(
            out_path, "offline", state, config_dict, {**meta, "offline_steps": step, "train_stats": _train_stats(stats)}
        )
        guard.saved(out_path, step)

    last_return = None
    try:
        with tqdm(total=steps, desc="pretrain (phase 1)", unit="update") as bar:
            for step in range(1, steps + 1):
                info = agent.update(buffer.sample(config.sac.batch_size, rng))
                guard.check(step, info, reward_abs_max)  # vouches for the parameters of update step - 1
                if pending is not None:
                    write(*pending, info)
                    pending = None
                if step % 1000 == 0:
                    metrics.log(step, info)
                if step % schedule.every == 0 or step == steps:
                    returns = evaluate(agent.sac.actor, env_id, schedule.episodes, seed + 1000)
                    last_return = _log_eval(metrics, "offline", step, returns, reference, info)["return"]
                    pending = (copy.deepcopy(agent.state_dict()), step)
                if step % 100 == 0 or pending is not None:
                    bar.set_postfix(_postfix(info, last_return), refresh=False)
                bar.update(1)
        # No update follows the last one: its own alpha is checked, and save_checkpoint checks every tensor.
        guard.check(steps, {"alpha": agent.sac.alpha}, reward_abs_max)
        write(*pending, info)
    finally:
        metrics.close()
    return out_path


def probe_reward_scale(
    view: TransitionView, config: ACAConfig, steps: int, *, seed: int, device: str
) -> RewardScaleChoice:
    """`reward_scale_from_data`: phase 1 for `steps` updates at the configured scale (nothing written), then the
    balanced scale from that actor (`balanced_reward_scale`; its `probe_updates` and `probe_reward_scale` added).

    Why a probe: the scale balances reward against pi_0's entropy, which phase 1 itself shapes (its temperature holds
    the entropy target where the likelihood term allows, and lets the data set it where it does not).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    agent = OfflineACA(view.obs_dim, view.action_dim, config, view.observations, resolve_device(device))
    buffer = ReplayBuffer.from_view(view)
    guard = DivergenceGuard("pretrain (reward-scale probe)", "update", config.sac.gamma, config.sac.reward_scale)
    reward_abs_max = float(np.abs(view.rewards).max())
    for step in tqdm(range(1, steps + 1), desc="pretrain (reward-scale probe)", unit="update"):
        guard.check(step, agent.update(buffer.sample(config.sac.batch_size, rng)), reward_abs_max)
    choice = balanced_reward_scale(agent.sac.actor, view.observations, view.rewards, config.reward_balance)
    return dataclasses.replace(choice, probe_updates=steps, probe_reward_scale=config.sac.reward_scale)


def reward_scale_of(config: dict) -> float:
    """A checkpoint config's `sac.reward_scale` (absent from checkpoints made before it: those ran at 1)."""
    return float(config["sac"].get("reward_scale", 1.0))


def check_offline_checkpoint(payload: dict, path: Path) -> dict:
    """`payload` if its alpha and recorded statistics are within the divergence bounds; else DivergenceError."""
    meta, config = payload["meta"], payload["config"]
    step = int(meta.get("offline_steps", 0))
    stats = {**meta.get("train_stats", {}), "alpha": float(payload["agent"]["sac"]["log_alpha"].exp())}
    guard = DivergenceGuard("pretrain", "update", float(config["sac"]["gamma"]), reward_scale_of(config))
    try:
        guard.check(step, stats, float(meta.get("dataset_reward_abs_max", 1.0)))
    except DivergenceError as exc:
        message = f"align: {path} holds a diverged offline run (update {step}): {exc.what}; pretrain it again"
        raise DivergenceError(message, step, exc.what) from None
    return payload


def align_checkpoint(offline_path: Path, out_path: Path, config: ACAConfig, buffer_capacity: int = 1_000_000) -> Path:
    """Phase 2 (or, with `finetune: naive`, the baseline's carry-over) + the seeded online replay buffer."""
    payload = check_offline_checkpoint(load_checkpoint(offline_path, "offline"), offline_path)
    meta = payload["meta"]
    offline_scale = reward_scale_of(payload["config"])
    if config.reward_scale_from_data and "reward_scale_choice" in meta:
        config = dataclasses.replace(config, sac=dataclasses.replace(config.sac, reward_scale=offline_scale))
    elif config.reward_scale_from_data:
        raise InputError(
            f"align: reward_scale_from_data asks for the scale phase 1 chose, but {offline_path} was pre-trained at a "
            f"fixed sac.reward_scale ({offline_scale}): pre-train with reward_scale_from_data, or align without it"
        )
    elif config.sac.reward_scale != offline_scale:
        raise InputError(
            f"align: sac.reward_scale is {config.sac.reward_scale} but {offline_path} was pre-trained at "
            f"{offline_scale}; rewards are scaled alike in every phase (--set sac.reward_scale={offline_scale})"
        )
    agent = OfflineACA(meta["obs_dim"], meta["action_dim"], config, np.zeros((1, meta["obs_dim"]), np.float32))
    agent.load_state_dict(payload["agent"])
    prior_target = config.finetune == "aca" and config.online_target_entropy == "prior"
    dataset = load_transitions(meta["datasets"]) if config.top_trajectories or prior_target else None
    if config.finetune == "aca":
        entropy = policy_entropy(agent.sac.actor, dataset.observations) if prior_target else None
        online = align(agent, prior_entropy=entropy)
        meta = {**meta, "online_target_entropy": online.target_entropy}
    else:
        online = naive_finetuning(agent)
    buffer = ReplayBuffer(buffer_capacity, meta["obs_dim"], meta["action_dim"])
    if config.top_trajectories:
        seeded = buffer.seed_with_top_trajectories(dataset, config.top_trajectories)
        meta = {**meta, "seeded_transitions": seeded}
    state = online_state(online, buffer, env_steps=0)
    save_checkpoint(out_path, "online", state, config_io.to_dict(config), {**meta, "finetune": config.finetune})
    return out_path


class _FinetuneRun:
    """One phase-3 run's bookkeeping in its run directory: evaluations (eval.csv), metrics, the divergence guard, the
    training episodes (episodes.csv) and the finetuned checkpoint. `finetune` keeps one; `finetune_seeds` one per
    seed, so that each seed's directory is what its single-seed run writes."""

    def __init__(
        self, payload: dict, online_path: Path, env_id: str, out_path: Path, seed: int, steps: int, gamma: float
    ):
        self.payload, self.meta, self.env_id = payload, payload["meta"], env_id
        self.out_path, self.seed, self.steps = out_path, seed, steps
        self.method = self.meta.get("finetune", "aca")
        self.reference = reference_of(self.meta)
        self.start_step = int(payload["agent"]["env_steps"])
        self.offline_reward_abs_max = float(self.meta.get("dataset_reward_abs_max", 0.0))
        self.guard = DivergenceGuard(f"finetune ({self.method})", "env step", gamma, reward_scale_of(payload["config"]))
        # Nothing is written before the end: the input stays the last good checkpoint.
        self.guard.saved(online_path, self.start_step)
        self.metrics = MetricsWriter(out_path.parent)
        self.last_return: float | None = None

    def evaluate(self, actor: torch.nn.Module, step: int, info: dict, episodes: int) -> None:
        returns = evaluate(actor, self.env_id, episodes, self.seed + 1000)
        self.last_return = _log_eval(self.metrics, "online", step, returns, self.reference, info)["return"]

    def after_step(
        self, step: int, info: dict, buffer: ReplayBuffer, schedule: EvalSchedule, actor: Callable[[], torch.nn.Module]
    ) -> None:
        """Check the latest update, log it every 1000 steps, evaluate `actor()` on the schedule."""
        total = self.start_step + step
        self.guard.check(total, info, max(self.offline_reward_abs_max, buffer.reward_abs_max))
        if step % 1000 == 0 and info:
            self.metrics.log(total, info)
        if step % schedule.every == 0 or step == self.steps:
            self.evaluate(actor(), total, info, schedule.episodes)

    def finish(self, agent: SAC, buffer: ReplayBuffer, episode_returns: list[tuple[int, float]]) -> Path:
        """The final alpha checked, episodes.csv and the finetuned checkpoint written."""
        total = self.start_step + self.steps
        self.guard.check(total, {"alpha": agent.alpha}, max(self.offline_reward_abs_max, buffer.reward_abs_max))
        with open(self.out_path.parent / "episodes.csv", "w", newline="") as handle:  # the training episodes' returns
            writer = csv.writer(handle)
            writer.writerow(["step", "return"])
            writer.writerows((self.start_step + step, episode_return) for step, episode_return in episode_returns)
        save_checkpoint(self.out_path, "online", online_state(agent, buffer, total), self.payload["config"], self.meta)
        return self.out_path


def finetune(
    online_path: Path,
    env_id: str | None,
    steps: int,
    out_path: Path,
    *,
    seed: int,
    schedule: EvalSchedule = EvalSchedule(),
    device: str = "cpu",
) -> Path:
    """Phase 3 in-process (gymnasium env, no runtime): UTD 1, stochastic actions, no random warm-up.

    `device` as for `pretrain`; the env steps on the CPU either way, one observation at a time.
    """
    torch.manual_seed(seed)
    payload = load_checkpoint(online_path, "online")
    agent, buffer, config = load_online_agent(payload, resolve_device(device))
    run = _FinetuneRun(
        payload, online_path, env_id or payload["meta"]["env_id"], out_path, seed, steps, config.sac.gamma
    )
    run.evaluate(agent.actor, run.start_step, {"alpha": agent.alpha}, schedule.episodes)

    def on_step(step: int, info: dict) -> None:
        run.after_step(step, info, buffer, schedule, lambda: agent.actor)
        if step % 100 == 0 or step == steps:
            bar.set_postfix(_postfix(info, run.last_return), refresh=False)

    loop = OnlineLoop(run.env_id, seed)
    try:
        with tqdm(total=steps, desc=f"finetune ({run.method})", unit="step") as bar:
            loop.run(agent, buffer, steps, on_step=on_step, progress=bar)
    finally:
        run.metrics.close()
    return run.finish(agent, buffer, loop.episode_returns)


def finetune_seeds(
    online_paths: list[Path],
    env_id: str | None,
    steps: int,
    out_paths: list[Path],
    *,
    seeds: list[int],
    schedule: EvalSchedule = EvalSchedule(),
    device: str = "cpu",
) -> list[Path]:
    """`finetune` for several seeds of one configuration in one process, as one `SeedBatchSAC` (seed_batch.py).

    Seed i starts from `online_paths[i]` and writes `out_paths[i]` and its run directory exactly as
    `finetune(online_paths[i], ..., seed=seeds[i])` does: its env, buffer sampling and noise are seeded as there (its
    noise generator continues torch's global one from where that run starts drawing), so it is the same run up to
    float32 rounding. A seed that diverges stops alone: the others finish and are written, then DivergenceError names
    the ones that stopped (their inputs stay the last good checkpoints).
    """
    if not (len(online_paths) == len(out_paths) == len(seeds)):
        raise InputError(
            f"{len(online_paths)} checkpoints, {len(out_paths)} outputs and {len(seeds)} seeds: give one each"
        )
    if len({path.resolve().parent for path in out_paths}) != len(out_paths):
        raise InputError(f"two seeds would write the same run directory: {[str(path.parent) for path in out_paths]}")
    device = resolve_device(device)
    agents, buffers, generators, runs = [], [], [], []
    for online_path, out_path, seed in zip(online_paths, out_paths, seeds):
        torch.manual_seed(seed)
        payload = load_checkpoint(online_path, "online")
        agent, buffer, config = load_online_agent(payload, device)
        generators.append(_generator_continuing_global(device))
        run = _FinetuneRun(
            payload, online_path, env_id or payload["meta"]["env_id"], out_path, seed, steps, config.sac.gamma
        )
        run.evaluate(agent.actor, run.start_step, {"alpha": agent.alpha}, schedule.episodes)
        agents.append(agent)
        buffers.append(buffer)
        runs.append(run)
    if len({run.env_id for run in runs}) != 1:
        raise InputError(f"the seeds' checkpoints are for different envs: {sorted({run.env_id for run in runs})}")
    learner = SeedBatchSAC(agents, generators)
    loop = SeedBatchLoop(runs[0].env_id, seeds)
    failures: dict[int, DivergenceError] = {}

    def on_step(step: int, infos: list[dict]) -> None:
        for index, run in enumerate(runs):
            if index in failures:
                continue
            try:
                run.after_step(step, infos[index], buffers[index], schedule, partial(learner.seed_actor, index))
            except DivergenceError as exc:
                failures[index] = exc
                loop.stop(index)
        if step % 100 == 0 or step == steps:
            returns = "/".join("-" if run.last_return is None else f"{run.last_return:.0f}" for run in runs)
            bar.set_postfix({"ret": returns}, refresh=False)

    try:
        desc = f"finetune ({runs[0].method}, seeds {', '.join(map(str, seeds))})"
        with tqdm(total=steps, desc=desc, unit="step") as bar:
            loop.run(learner, buffers, steps, on_step=on_step, progress=bar)
    finally:
        for run in runs:
            run.metrics.close()
    for index, run in enumerate(runs):
        if index not in failures:
            try:
                run.finish(learner.seed_agent(index), buffers[index], loop.episode_returns[index])
            except DivergenceError as exc:
                failures[index] = exc
    if failures:
        message = "; ".join(f"seed {seeds[index]}: {exc}" for index, exc in sorted(failures.items()))
        first = failures[min(failures)]
        raise DivergenceError(f"{len(failures)} of {len(seeds)} seeds stopped: {message}", first.step, first.what)
    return [run.out_path for run in runs]


def _generator_continuing_global(device: torch.device) -> torch.Generator:
    """A generator in the state of torch's global one for `device`: it draws what that one would draw next."""
    generator = torch.Generator(device=device)
    global_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
    generator.set_state(global_state)
    return generator


def evaluate_checkpoint(path: Path, env_id: str | None, episodes: int, seed: int) -> dict[str, Any]:
    payload = load_checkpoint(path)
    env_id = env_id or payload["meta"]["env_id"]
    returns = evaluate(load_actor(payload), env_id, episodes, seed)
    reference = reference_of(payload["meta"])
    mean = float(np.mean(returns))
    return {
        "env_id": env_id,
        "episodes": episodes,
        "return_mean": mean,
        "return_std": float(np.std(returns)),
        "normalized_score": reference.normalize(mean) if reference else None,
    }
