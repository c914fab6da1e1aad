"""`acalign demo`: the whole pipeline on a small embedded default, end to end, in a few minutes on 2 CPU cores.

Two tasks (`DEMOS`): `pendulum` (what `make demo` runs) on InvertedPendulum-v5, and `arm` (`make demo-arm`) on the
Franka Panda reach task: its offline data come from the nominal sim, its fine-tuning session runs on the robot twin
(sim/panda_reach_twin.yaml: heavier, more friction and latency, paced in real time) with the arm's limits checked by
the controller and robot-grade safety settings (launch/fragments/panda_limits.yaml). `--set FIELD=VALUE` changes a
DemoConfig field (the smoke test shrinks the budget that way).

Steps (each reuses its output when it already exists, so a re-run continues instead of overwriting):
1. collect a uniform-random dataset of the task's env into the demo's own Minari store;
2. pre-train ACA offline (phase 1), 3. align (phase 2), 4. export the actor to ONNX (policies registry),
5. launch a sim fine-tuning session: a MuJoCo driver process, a controller process running the exported policy
   (exploring, streaming transitions, hot-swapping new versions) and a learner process (phase 3 from the aligned
   checkpoint, publishing a new policy every few hundred updates), supervised like any `acalign launch` session;
6. print the session's table and where the report and its PNG are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from acalign_robot.config import FieldError

__all__ = ["DEMOS", "DemoConfig", "run_demo"]

# sim/ beside the package in a checkout (the sim tasks' YAML, like their MJCF, is repository data)
SIM_DIR = Path(__file__).resolve().parents[1] / "sim"


@dataclass(frozen=True)
class DemoConfig:
    env_id: str = "InvertedPendulum-v5"
    dataset: str = "demo-invertedpendulum-random-v0"
    random_episodes: int = 300
    offline_steps: int = 2_000
    eval_every: int = 1_000
    eval_episodes: int = 5
    batch_size: int = 128
    session_s: float = 150.0
    rate_hz: float = 40.0  # the sim runs unpaced: 40 ticks/s keeps the 1-thread learner near UTD 1
    publish_every: int = 250
    seed: int = 0
    robot: str = "pendulum-0"  # the robot's name in the session
    sim: str | None = None  # the session's sim/ file (None: `env_id` with default realism)
    watchdog_ms: float = 500.0
    driver_timeout_ms: float = 100.0
    max_delta_per_tick: float = 1.0
    max_policy_deviation: float = 0.5  # the swap gate's (ControllerConfig)
    rollback: bool = False

    def validate(self) -> None:
        for name in ("random_episodes", "offline_steps", "eval_every", "eval_episodes", "batch_size", "publish_every"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("session_s", "rate_hz"):
            if not getattr(self, name) > 0:
                raise FieldError(name, f"must be positive, got {getattr(self, name)}")


DEMOS = {
    "pendulum": DemoConfig(),
    # The controller ticks at the twin's 50 Hz; the limits are those of launch/fragments/panda_limits.yaml.
    "arm": DemoConfig(
        env_id="acalign/PandaReach-v0",
        dataset="demo-pandareach-random-v0",
        robot="panda-0",
        random_episodes=100,
        offline_steps=2_000,
        session_s=90.0,
        rate_hz=50.0,
        publish_every=250,
        sim=str(SIM_DIR / "panda_reach_twin.yaml"),
        watchdog_ms=60.0,
        driver_timeout_ms=40.0,
        max_delta_per_tick=0.1,
        max_policy_deviation=1.0,  # why: launch/fragments/panda_limits.yaml
        rollback=True,
    ),
}


def _step(title: str, done: bool) -> bool:
    print(f"==> {title}{' (exists, reused)' if done else ''}", flush=True)
    return done


def run_demo(out_dir: Path, config: DemoConfig = DemoConfig()) -> dict:
    from acalign_robot.algo.aca import load_preset
    from acalign_robot.algo.device import set_torch_threads
    from acalign_robot.algo.pipeline import EvalSchedule, align_checkpoint, pretrain
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

    _step(f"5/5 launch a fine-tuning session: driver + controller + learner, {config.session_s:g} s", False)
    report = _launch(config, aligned, artifact, out_dir)
    return {"report": report, "artifact": artifact}


def _launch(config: DemoConfig, aligned: Path, artifact: Path, out_dir: Path) -> dict:
    import time

    from acalign_robot import config as config_io
    from acalign_robot.controller.process import ControllerConfig
    from acalign_robot.controller.safety import RollbackConfig, SafetyConfig
    from acalign_robot.drivers.server import DriverConfig
    from acalign_robot.learner.config import LearnerConfig
    from acalign_robot.session.schema import LaunchConfig, Robot, check_session
    from acalign_robot.session.supervisor import Supervisor

    session = LaunchConfig(
        session="demo",
        output_dir=str(out_dir / "sessions"),
        duration_s=config.session_s,
        robots=(
            Robot(
                name=config.robot,
                driver=DriverConfig(
                    kind="mujoco",
                    sim=config.sim,
                    env_id=None if config.sim else config.env_id,
                    watchdog_ms=config.watchdog_ms,
                    seed=config.seed,
                ),
                controller=ControllerConfig(
                    policy=str(artifact),
                    explore=True,
                    rate_hz=config.rate_hz,
                    driver_timeout_ms=config.driver_timeout_ms,
                    max_policy_deviation=config.max_policy_deviation,
                    safety=SafetyConfig(max_delta_per_tick=config.max_delta_per_tick),
                    rollback=RollbackConfig(enabled=config.rollback),
                ),
            ),
        ),
        learner=LearnerConfig(checkpoint=str(aligned), publish_every=config.publish_every, seed=config.seed),
    )
    config_io.validate(session, "the demo's launch config")  # the checks a launch file gets when it is loaded
    problems = check_session(session)
    if problems:
        raise RuntimeError("the demo session does not validate: " + "; ".join(problems))
    session_dir = out_dir / "sessions" / "demo" / time.strftime("%Y%m%d-%H%M%S")
    return Supervisor(session, session_dir).run()


def _export(checkpoint: Path, policies_dir: Path) -> Path:
    from acalign_robot.export.onnx_export import write_artifact

    existing = sorted(policies_dir.glob("demo/*/manifest.json"))
    if _step("4/5 export the aligned actor to ONNX", bool(existing)):
        return existing[-1].parent
    return write_artifact(checkpoint, "demo", policies_dir)
