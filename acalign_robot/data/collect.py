"""Dataset generation: the D4RL recipe on our own simulator (`acalign collect`).

Kinds (Fu et al. 2020, "D4RL", section 5):
- random: uniform-random actions.
- expert: rollouts of the fully trained SAC behaviour policy (its best evaluated snapshot).
- medium: rollouts of the behaviour policy stopped at about 1/3 of the expert's return. As in D4RL, the *data*
  scores a third: the snapshot is the one whose sampled-action episodes (the way its rollouts will act; 5 per
  snapshot, then 30 for the six closest) return closest to R_random + (R_expert - R_random) / 3, the earliest on
  ties. Picking it by its deterministic evaluation instead (one noisy evaluation of tanh(mean)) gave a HalfCheetah
  dataset that scored 50 and an offline actor that scored 90: online states then lay outside the data the critic
  was trained on. The dataset's own mean normalised score is recorded, with whether it lies within
  MEDIUM_TOLERANCE of a third.
- medium-replay: every episode the behaviour agent experienced during training up to that medium snapshot.
- medium-expert: medium + expert rollouts.
Rollouts sample from the stochastic policy, as D4RL's did.

One behaviour run per (env, seed) is trained once and reused by every kind: it lives in
`<runs>/behaviour/<env>-seed<seed>/` with actor snapshots, the evaluation curve and every training episode. A run
that was stopped (a session's end, Ctrl-C) continues from its last evaluation when `acalign collect` is run again,
bit for bit as if it had not stopped (`resume.pt`, MuJoCo envs).
`--export-behaviour DIR` copies the two snapshots a dataset was made from (medium and expert, ~300 KB each) into a
snapshots-only run under DIR; `--runs-dir DIR` then makes medium, expert and medium-expert data from them in minutes
instead of a behaviour run of tens of minutes (bit for bit the same data: every evaluation and rollout is seeded per
snapshot). medium-replay needs the training episodes, so only a full behaviour run makes it.
Reference scores recorded in each dataset: R_random = the uniform-random policy's mean return, R_expert = the
expert snapshot's deterministic mean return (Minari's ref_min_score / ref_max_score).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from acalign_robot.data.datasets import DatasetError, EpisodeRecord, write_dataset

__all__ = ["BehaviourRun", "KINDS", "collect_random_episodes", "collect_sac_dataset", "random_policy_return"]

KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
REFERENCE_EPISODES = 10
MEDIUM_FRACTION = 1 / 3  # of the expert's normalised score (D4RL's "medium")
MEDIUM_EPISODES = 5  # sampled-action episodes per snapshot when choosing the medium one: a first screening
MEDIUM_FINALISTS = 6  # the snapshots closest to the target on that screening, evaluated again
MEDIUM_FINAL_EPISODES = 30  # sampled-action episodes per finalist: these scores decide
MEDIUM_TOLERANCE = 0.1  # the medium dataset's mean normalised score should lie within +-10% of MEDIUM_FRACTION


class _EpisodeRecorder:
    """Accumulates steps into EpisodeRecords (T + 1 observations per T steps)."""

    def __init__(self):
        self.episodes: list[EpisodeRecord] = []
        self._reset()

    def _reset(self):
        self._obs, self._actions, self._rewards, self._term, self._trunc = [], [], [], [], []

    def add(self, obs, action, reward, next_obs, terminated, truncated) -> None:
        if not self._obs:
            self._obs.append(np.asarray(obs, dtype=np.float32))
        self._actions.append(np.asarray(action, dtype=np.float32))
        self._rewards.append(float(reward))
        self._term.append(bool(terminated))
        self._trunc.append(bool(truncated))
        self._obs.append(np.asarray(next_obs, dtype=np.float32))
        if terminated or truncated:
            self.flush()

    def state(self) -> dict:
        """The recorded episodes and the open one, as tensors (BehaviourRun's resume point)."""
        import torch

        closed = {k: torch.from_numpy(v) for k, v in _pack_episodes(self.episodes).items()} if self.episodes else {}
        open_steps = {
            "observations": np.stack(self._obs) if self._obs else np.zeros((0, 0), np.float32),
            "actions": np.stack(self._actions) if self._actions else np.zeros((0, 0), np.float32),
            "rewards": np.asarray(self._rewards, dtype=np.float64),
            "terminations": np.asarray(self._term, dtype=bool),
            "truncations": np.asarray(self._trunc, dtype=bool),
        }
        return {"closed": closed, "open": {k: torch.from_numpy(v) for k, v in open_steps.items()}}

    @classmethod
    def from_state(cls, state: dict) -> _EpisodeRecorder:
        recorder = cls()
        if state["closed"]:
            recorder.episodes = _unpack_episodes({k: v.numpy() for k, v in state["closed"].items()})
        open_steps = {k: v.numpy() for k, v in state["open"].items()}
        recorder._obs = list(open_steps["observations"])
        recorder._actions = list(open_steps["actions"])
        recorder._rewards = [float(r) for r in open_steps["rewards"]]
        recorder._term = [bool(t) for t in open_steps["terminations"]]
        recorder._trunc = [bool(t) for t in open_steps["truncations"]]
        return recorder

    def flush(self) -> None:
        """Close the open episode (a trailing partial episode is kept, neither terminated nor truncated)."""
        if self._actions:
            self.episodes.append(
                EpisodeRecord(
                    observations=np.stack(self._obs),
                    actions=np.stack(self._actions),
                    rewards=np.asarray(self._rewards, dtype=np.float32),
                    terminations=np.asarray(self._term),
                    truncations=np.asarray(self._trunc),
                )
            )
        self._reset()


def collect_random_episodes(env_id: str, episodes: int, seed: int, progress: bool = True) -> list[EpisodeRecord]:
    from acalign_robot.algo.env_loop import make_env

    env = make_env(env_id, seed)
    recorder = _EpisodeRecorder()
    for episode in tqdm(range(episodes), desc=f"random {env_id}", disable=not progress, unit="ep"):
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            action = env.action_space.sample()
            next_obs, reward, terminated, truncated, _ = env.step(action)
            recorder.add(obs, action, reward, next_obs, terminated, truncated)
            obs, done = next_obs, terminated or truncated
    env.close()
    for index, record in enumerate(recorder.episodes):
        record.seed = seed + index
    return recorder.episodes


def random_policy_return(env_id: str, seed: int) -> float:
    episodes = collect_random_episodes(env_id, REFERENCE_EPISODES, seed + 10_000, progress=False)
    return float(np.mean([e.episode_return for e in episodes]))


@dataclass
class BehaviourRun:
    """A SAC behaviour agent's training run, stored once and reused by every dataset kind."""

    directory: Path

    @classmethod
    def for_env(cls, runs_dir: str | Path, env_id: str, seed: int) -> BehaviourRun:
        return cls(Path(runs_dir) / "behaviour" / f"{env_id}-seed{seed}")

    @property
    def complete(self) -> bool:
        return (self.directory / "done.json").exists()

    def summary(self) -> dict:
        return json.loads((self.directory / "done.json").read_text())

    @property
    def snapshots_only(self) -> bool:
        return bool(self.summary().get("snapshots_only", False))

    def export_snapshots(self, runs_dir: str | Path, expert_step: int, medium_step: int | None) -> BehaviourRun:
        """A snapshots-only copy of this run under `runs_dir` holding the expert and (when given) medium snapshots and
        their evaluations, merged with what an earlier export put there. It records the medium step: only an export
        that carries one can make medium data."""
        exported = BehaviourRun(Path(runs_dir) / "behaviour" / self.directory.name)
        if exported.directory.resolve() == self.directory.resolve():
            return self
        earlier = exported.summary() if exported.complete else {}
        kept = {expert_step} | ({e["step"] for e in exported.evaluations()} if earlier else set())
        medium_step = medium_step if medium_step is not None else earlier.get("medium_snapshot_step")
        if medium_step is not None:
            kept.add(medium_step)
        (exported.directory / "snapshots").mkdir(parents=True, exist_ok=True)
        for step in sorted(kept):
            if not exported.snapshot_path(step).exists():
                shutil.copyfile(self.snapshot_path(step), exported.snapshot_path(step))
        evaluations = [e for e in self.evaluations() if e["step"] in kept]
        (exported.directory / "evals.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evaluations))
        summary = {**self.summary(), "snapshots_only": True, "medium_snapshot_step": medium_step}
        (exported.directory / "done.json").write_text(json.dumps(summary))
        return exported

    def evaluations(self) -> list[dict]:
        return [json.loads(line) for line in (self.directory / "evals.jsonl").read_text().splitlines()]

    def snapshot_path(self, step: int) -> Path:
        return self.directory / "snapshots" / f"actor_{step:08d}.pt"

    @property
    def resume_path(self) -> Path:
        return self.directory / "resume.pt"

    def train(self, env_id: str, steps: int, seed: int, eval_every: int, eval_episodes: int, warmup: int) -> None:
        """Train the behaviour agent, leaving snapshots and evaluations every `eval_every` steps. On a MuJoCo env the
        run also leaves `resume.pt` (agent, buffer, recorded episodes, loop state) at each of them: a run that was
        stopped continues from its last one, and makes the same snapshots and data as a run that was never stopped.
        (Tens of MB for a 1M-step run: the buffer and the episodes; it is removed when the run is done.)"""
        import torch

        from acalign_robot.algo.checkpoint import buffer_from_state, buffer_state, save_checkpoint
        from acalign_robot.algo.env_loop import LoopState, OnlineLoop, evaluate, make_env, supports_resume
        from acalign_robot.algo.metrics import MetricsWriter
        from acalign_robot.algo.sac import SAC, SACConfig
        from acalign_robot.atomic import write_atomic
        from acalign_robot.data.replay_buffer import ReplayBuffer

        torch.manual_seed(seed)
        env = make_env(env_id)
        obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
        resumable = supports_resume(env)
        env.close()
        config = SACConfig()
        agent = SAC(obs_dim, action_dim, config)
        buffer = ReplayBuffer(steps, obs_dim, action_dim)
        recorder = _EpisodeRecorder()
        steps_of_transition: list[int] = []
        settings = {"env_id": env_id, "steps": steps, "seed": seed, "eval_every": eval_every, "warmup": warmup}
        resume = None
        if self.resume_path.exists():
            saved = self._read_resume_point(settings)
            agent.load_state_dict(saved["agent"])
            buffer = buffer_from_state(saved["buffer"], obs_dim, action_dim)
            recorder = _EpisodeRecorder.from_state(saved["recorder"])
            steps_of_transition = saved["steps_of_transition"].tolist()
            resume = LoopState.from_dict(saved["loop"])
        self._forget_after(resume.step if resume else 0)

        def record(t: dict) -> None:
            recorder.add(t["obs"], t["action"], t["reward"], t["next_obs"], t["terminated"], t["truncated"])
            steps_of_transition.append(t["step"])

        def save_resume_point(state: LoopState) -> None:
            resume_state = {
                "settings": json.dumps(settings),
                "agent": agent.state_dict(),
                "buffer": buffer_state(buffer),
                "recorder": recorder.state(),
                "steps_of_transition": torch.tensor(steps_of_transition, dtype=torch.int64),
                "loop": state.as_dict(),
            }
            write_atomic(self.resume_path, lambda handle: torch.save(resume_state, handle))

        self.directory.mkdir(parents=True, exist_ok=True)
        metrics = MetricsWriter(self.directory)
        evals = open(self.directory / "evals.jsonl", "a")
        meta = {"env_id": env_id, "obs_dim": obs_dim, "action_dim": action_dim, "seed": seed}

        def on_step(step: int, info: dict) -> None:
            if step % 1000 == 0 and info:
                metrics.log(step, info)
            if step % eval_every == 0 or step == steps:
                returns = evaluate(agent.actor, env_id, eval_episodes, seed=seed + 1000)
                save_checkpoint(
                    self.snapshot_path(step),
                    "behaviour",
                    {"actor": agent.actor.state_dict()},
                    {"sac": vars(config)},
                    {**meta, "step": step},
                )
                evals.write(json.dumps({"step": step, "return_mean": float(np.mean(returns))}) + "\n")
                evals.flush()
                metrics.log_eval("behaviour", step, returns, None)

        loop = OnlineLoop(env_id, seed, random_warmup_steps=warmup, on_transition=record)
        with tqdm(total=steps, desc=f"behaviour SAC {env_id}", unit="step") as bar:
            loop.run(
                agent,
                buffer,
                steps,
                on_step=on_step,
                progress=bar,
                resume=resume,
                on_checkpoint=save_resume_point if resumable else None,
                checkpoint_every=eval_every,
            )
        recorder.flush()
        evals.close()
        metrics.close()
        episode_ends = np.cumsum([len(e) for e in recorder.episodes])
        np.savez_compressed(
            self.directory / "training_episodes.npz",
            **_pack_episodes(recorder.episodes),
            env_step_at_episode_end=np.asarray(steps_of_transition)[episode_ends - 1],
        )
        (self.directory / "done.json").write_text(json.dumps({"env_id": env_id, "steps": steps, "seed": seed}))
        self.resume_path.unlink(missing_ok=True)

    def _read_resume_point(self, settings: dict) -> dict:
        """resume.pt, checked against this run's settings before its buffer is allocated; a damaged or foreign one is
        a DatasetError naming it."""
        import torch

        try:
            saved = torch.load(self.resume_path, weights_only=True)
            held = json.loads(saved["settings"])
            capacity, step = int(saved["buffer"]["capacity"]), int(saved["loop"]["step"])
        except Exception as exc:  # a truncated zip, a pickle outside weights_only's allowlist, a missing key
            raise DatasetError(f"{self.resume_path} is damaged ({exc!r}): remove it to start the run again") from None
        if held != settings:
            raise DatasetError(
                f"{self.resume_path} continues a behaviour run with {json.dumps(held)}, not "
                f"{json.dumps(settings)}: remove it to start again"
            )
        if capacity != settings["steps"] or not 0 < step <= settings["steps"]:
            raise DatasetError(
                f"{self.resume_path} holds a buffer of {capacity} transitions at step {step} for a "
                f"{settings['steps']}-step run: remove it to start again"
            )
        return saved

    def _forget_after(self, step: int) -> None:
        """Drop the evaluations and metrics a stopped run logged after its last resume point (all of them when it
        starts again from step 0): they are made again."""
        for name in ("evals.jsonl", "metrics.jsonl"):
            path = self.directory / name
            if path.exists():
                kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
                path.write_text("".join(line + "\n" for line in kept))
        path = self.directory / "eval.csv"
        if path.exists():
            header, *rows = path.read_text().splitlines()
            kept = [row for row in rows if int(row.split(",")[1]) <= step]
            path.write_text("".join(line + "\n" for line in (header, *kept)))

    def training_episodes(self, until_step: int) -> list[EpisodeRecord]:
        """Episodes the agent experienced that ended at or before env step `until_step` (medium-replay)."""
        if self.snapshots_only:
            raise DatasetError(
                f"{self.directory} holds exported snapshots only, not the training episodes that medium-replay "
                "needs: give --runs-dir a directory for the full behaviour run (it is trained there once)"
            )
        data = np.load(self.directory / "training_episodes.npz")
        episodes = _unpack_episodes(data)
        ends = data["env_step_at_episode_end"]
        return [episode for episode, end in zip(episodes, ends) if end <= until_step]

    def load_actor(self, step: int):
        from acalign_robot.algo.checkpoint import load_actor, load_checkpoint

        return load_actor(load_checkpoint(self.snapshot_path(step), "behaviour"))


def _pack_episodes(episodes: list[EpisodeRecord]) -> dict[str, np.ndarray]:
    return {
        "observations": np.concatenate([e.observations for e in episodes]),
        "actions": np.concatenate([e.actions for e in episodes]),
        "rewards": np.concatenate([e.rewards for e in episodes]),
        "terminations": np.concatenate([e.terminations for e in episodes]),
        "truncations": np.concatenate([e.truncations for e in episodes]),
        "lengths": np.asarray([len(e) for e in episodes]),
    }


def _unpack_episodes(data) -> list[EpisodeRecord]:
    # Each array read once: indexing an NpzFile decompresses the whole array again on every access, and every
    # episode's slice would keep its own full copy alive (a 300k-step run's grew past 12 GB).
    arrays = {name: data[name] for name in ("observations", "actions", "rewards", "terminations", "truncations")}
    episodes, step_offset, obs_offset = [], 0, 0
    for length in data["lengths"]:
        length = int(length)
        steps = slice(step_offset, step_offset + length)
        episodes.append(
            EpisodeRecord(
                observations=arrays["observations"][obs_offset : obs_offset + length + 1],
                actions=arrays["actions"][steps],
                rewards=arrays["rewards"][steps],
                terminations=arrays["terminations"][steps],
                truncations=arrays["truncations"][steps],
            )
        )
        step_offset += length
        obs_offset += length + 1
    return episodes


def _rollouts(actor, env_id: str, transitions: int, seed: int, desc: str) -> list[EpisodeRecord]:
    """Stochastic-policy rollouts until `transitions` steps (the last episode is cut as a partial one)."""
    import torch

    from acalign_robot.algo.env_loop import make_env

    env = make_env(env_id, seed)
    recorder = _EpisodeRecorder()
    obs, _ = env.reset(seed=seed)
    episode = 0
    # The same data whether the behaviour run was trained in this process or reused from disk.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in tqdm(range(transitions), desc=desc, unit="step"):
            with torch.no_grad():
                action = actor.sample(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy()
            next_obs, reward, terminated, truncated, _ = env.step(action)
            recorder.add(obs, action, reward, next_obs, terminated, truncated)
            obs = next_obs
            if terminated or truncated:
                episode += 1
                obs, _ = env.reset(seed=seed + episode)
    recorder.flush()
    env.close()
    return recorder.episodes


def _choose_medium_snapshot(run: BehaviourRun, env_id: str, steps: list[int], score, seed: int) -> dict:
    """The snapshot whose sampled-action episodes score closest to MEDIUM_FRACTION of the expert (normalised), the
    earliest on ties: {"step", "score"}. Two rounds: MEDIUM_EPISODES per snapshot, then MEDIUM_FINAL_EPISODES for the
    MEDIUM_FINALISTS closest, whose scores decide (five episodes alone picked a Hopper snapshot that scored 33 on them
    and 23 on thirty)."""
    import torch

    from acalign_robot.algo.env_loop import evaluate

    target = 100.0 * MEDIUM_FRACTION

    def sampled_score(step: int, episodes: int) -> dict:
        with torch.random.fork_rng():  # the same draws for every snapshot, whatever ran before in this process
            torch.manual_seed(seed)
            returns = evaluate(run.load_actor(step), env_id, episodes, seed, sampled=True)
        return {"step": step, "score": score(float(np.mean(returns)))}

    def closest(scored: list[dict]) -> list[dict]:
        return sorted(scored, key=lambda s: (abs(s["score"] - target), s["step"]))

    screened = [sampled_score(step, MEDIUM_EPISODES) for step in tqdm(steps, desc=f"medium snapshot {env_id}")]
    finalists = [s["step"] for s in closest(screened)[:MEDIUM_FINALISTS]]
    final = [sampled_score(step, MEDIUM_FINAL_EPISODES) for step in tqdm(finalists, desc=f"medium finalists {env_id}")]
    return closest(final)[0]


def collect_sac_dataset(
    env_id: str,
    kind: str,
    dataset_id: str,
    *,
    runs_dir: str | Path,
    seed: int,
    behaviour_steps: int,
    transitions: int,
    eval_every: int = 5000,
    eval_episodes: int = 5,
    warmup: int = 5000,
    force: bool = False,
    export_behaviour: str | Path | None = None,
):
    """Train (or reuse) the behaviour run for `env_id`, then write the `kind` dataset; with `export_behaviour`, also
    copy the medium and expert snapshots it used there (BehaviourRun.export_snapshots)."""
    if kind not in KINDS or kind == "random":
        raise DatasetError(f"--kind {kind!r}: expected one of {', '.join(k for k in KINDS if k != 'random')}")
    run = BehaviourRun.for_env(runs_dir, env_id, seed)
    if run.complete and run.summary()["steps"] < behaviour_steps:
        raise DatasetError(
            f"{run.directory} holds a {run.summary()['steps']}-step behaviour run, fewer than --behaviour-steps "
            f"{behaviour_steps}; remove it or ask for at most {run.summary()['steps']}"
        )
    if not run.complete:
        run.train(env_id, behaviour_steps, seed, eval_every, eval_episodes, warmup)
    if kind != "expert" and run.snapshots_only and run.summary().get("medium_snapshot_step") is None:
        raise DatasetError(
            f"{run.directory} holds exported snapshots without a medium one (exported from an expert dataset): "
            "export them again from a medium, medium-replay or medium-expert dataset"
        )
    evals = run.evaluations()
    expert = max(evals, key=lambda e: e["return_mean"])
    random_return = random_policy_return(env_id, seed)

    from acalign_robot.algo.env_loop import evaluate

    expert_return = float(np.mean(evaluate(run.load_actor(expert["step"]), env_id, REFERENCE_EPISODES, seed + 2000)))

    def score(episode_return: float) -> float:
        return 100.0 * (episode_return - random_return) / (expert_return - random_return)

    medium = None if kind == "expert" else _choose_medium_snapshot(run, env_id, [e["step"] for e in evals], score, seed)
    episodes: list[EpisodeRecord] = []
    if kind in ("medium", "medium-expert"):
        episodes += _rollouts(
            run.load_actor(medium["step"]), env_id, transitions, seed + 3000, f"medium rollouts {env_id}"
        )
    if kind in ("expert", "medium-expert"):
        episodes += _rollouts(
            run.load_actor(expert["step"]), env_id, transitions, seed + 4000, f"expert rollouts {env_id}"
        )
    if kind == "medium-replay":
        episodes = run.training_episodes(medium["step"])
    # Complete episodes only: a rollout's last, cut episode would pull the mean down.
    whole = [e for e in episodes if e.terminations[-1] or e.truncations[-1]] or episodes
    dataset_score = float(np.mean([score(e.episode_return) for e in whole]))
    metadata = {
        "kind": kind,
        "seed": seed,
        "behaviour_run": str(run.directory),
        "behaviour_steps": run.summary()["steps"],
        "expert_snapshot_step": expert["step"],
        "random_return": random_return,
        "expert_return": expert_return,
        "dataset_mean_score": dataset_score,
    }
    if medium is not None:
        metadata |= {"medium_snapshot_step": medium["step"], "medium_snapshot_score": medium["score"]}
    if export_behaviour is not None:
        run.export_snapshots(export_behaviour, expert["step"], medium["step"] if medium else None)
    if kind == "medium":
        target = 100.0 * MEDIUM_FRACTION
        metadata["medium_within_tolerance"] = abs(dataset_score - target) <= MEDIUM_TOLERANCE * target
    return write_dataset(
        dataset_id,
        episodes,
        env_id,
        algorithm="SAC behaviour (D4RL recipe)",
        description=f"{kind} data for {env_id}, generated by acalign collect (D4RL recipe, SAC behaviour agent)",
        ref_min_score=random_return,
        ref_max_score=expert_return,
        extra_metadata=metadata,
        force=force,
    )
