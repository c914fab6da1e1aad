"""Sim logs through the offline tools: Minari conversion, open-loop replay, video, policy evaluation, pre-training."""

from __future__ import annotations

import numpy as np
import pytest

from acalign_robot.data.log_analysis import ReplayError, evaluate_on_log, open_loop, render_log
from acalign_robot.drivers.mujoco import RealismConfig
from acalign_robot.robot_log.reader import read_log
from tests.log_helpers import record_sim_log

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim_log(tmp_path_factory):
    """Hopper-v5 at its default realism, random actions: 3 episodes of at most 40 steps."""
    return record_sim_log(tmp_path_factory.mktemp("sim") / "log", episodes=3, max_steps=40)


def test_open_loop_replay_matches_the_same_sim_and_diverges_from_a_realistic_one(sim_log, tmp_path):
    same = open_loop(read_log(sim_log), out_dir=tmp_path / "same")
    assert same["episodes"] == 3 and same["env_id"] == "Hopper-v5"
    assert same["start_divergence_max"] < 1e-6
    assert same["divergence_max"] < 1e-4  # float32 rounding of the logged observations only
    assert (tmp_path / "same" / "divergence.png").stat().st_size > 1000
    assert len(same["per_step_mean"]) == max(len(e) for e in read_log(sim_log).episodes)

    # One tick of command latency and sensor noise (sim/hopper_realistic.yaml without real-time pacing).
    realistic = record_sim_log(
        tmp_path / "realistic",
        realism=RealismConfig(action_delay_ticks=1, observation_noise_std=0.01),
        episodes=2,
        max_steps=40,
    )
    different = open_loop(read_log(realistic))
    assert different["divergence_mean"] > 100 * same["divergence_max"] and different["divergence_mean"] > 0.02


def test_open_loop_refuses_an_env_whose_state_cannot_be_rebuilt(sim_log):
    with pytest.raises(ReplayError, match="Humanoid-v5: its 11-dim observation is not"):
        open_loop(read_log(sim_log), env_id="Humanoid-v5")


def test_render_writes_a_playable_video(sim_log, tmp_path):
    import imageio.v2 as imageio

    log = read_log(sim_log)
    result = render_log(log, tmp_path / "replay.mp4", episodes=2, width=64, height=48)
    # Hopper's 125 Hz control rate is shown at ~31 fps: every 4th logged observation is a frame.
    expected = sum(-(-(len(e) + 1) // 4) for e in log.episodes[:2])
    assert result["frames"] == expected
    frames = imageio.mimread(tmp_path / "replay.mp4", memtest=False)
    assert len(frames) == expected and frames[0].shape == (48, 64, 3)
    assert np.ptp(frames[0]) > 0  # not a blank frame
    with pytest.raises(ReplayError, match="multiples of 16"):
        render_log(log, tmp_path / "bad.mp4", width=50, height=48)


def test_log_to_minari_keeps_every_field_and_feeds_pretraining(sim_log, tiny_hopper_dataset, tmp_path):
    import minari

    from acalign_robot.algo.aca import load_preset
    from acalign_robot.algo.checkpoint import load_checkpoint
    from acalign_robot.algo.pipeline import EvalSchedule, pretrain
    from acalign_robot.robot_log.to_minari import convert_logs

    log = read_log(sim_log)
    _, summary = convert_logs(sim_log.parent, "hopper-log")  # the controller directory holding log/
    assert summary["episodes"] == len(log.episodes) == 3 and summary["transitions"] == len(log)

    dataset = minari.load_dataset("hopper-log-v0")
    assert dataset.total_steps == len(log) and dataset.storage.metadata["acalign_kind"] == "robot-log"
    for episode, span in zip(dataset.iterate_episodes(), log.episodes):
        steps = span.slice
        np.testing.assert_array_equal(episode.observations, log.episode_observations(span))
        np.testing.assert_array_equal(episode.actions, log.action[steps])  # the executed action
        np.testing.assert_array_equal(episode.rewards, log.reward[steps])
        np.testing.assert_array_equal(episode.terminations, log.terminated[steps])
        np.testing.assert_array_equal(episode.truncations, log.truncated[steps])
        infos = episode.infos  # T + 1 entries: [0] is the reset's, [t + 1] step t's
        np.testing.assert_array_equal(infos["policy_action"][1:], log.policy_action[steps])
        np.testing.assert_array_equal(infos["policy_version"][1:], log.policy_version[steps])
        np.testing.assert_array_equal(infos["safety_flags"][1:], log.safety_flags[steps])
        np.testing.assert_array_equal(infos["timestamp_s"][1:], log.timestamp_s[steps])
        np.testing.assert_array_equal(infos["seq"][1:], log.seq[steps])
        assert np.isnan(infos["policy_action"][0]).all() and infos["policy_version"][0] == 0
    assert (log.safety_flags > 0).any() and not np.array_equal(log.policy_action, log.action)

    out = pretrain(
        ["hopper-log-v0", tiny_hopper_dataset],
        load_preset("medium", ("sac.hidden_sizes=[16, 16]", "sac.batch_size=32")),
        5,
        tmp_path / "run" / "offline.pt",
        seed=0,
        schedule=EvalSchedule(every=5, episodes=1),
    )
    meta = load_checkpoint(out)["meta"]
    assert meta["datasets"] == ["hopper-log-v0", tiny_hopper_dataset]
    assert meta["dataset_transitions"] == len(log) + sum(20 + i for i in range(6))


def test_policy_evaluation_on_its_own_log(hopper_policy, make_checkpoint, tmp_path):
    from acalign_robot.policy.runner import PolicyRunner

    runner = PolicyRunner.from_dir(hopper_policy)
    log = read_log(record_sim_log(tmp_path / "log", episodes=1, max_steps=30, runner=runner))

    result = evaluate_on_log(log, hopper_policy, make_checkpoint("Hopper-v5", filename="critic.pt"))

    assert result["transitions"] == len(log)
    assert result["vs_logged_policy_action"]["max_abs"] < 1e-5  # the same policy, deterministic
    assert len(result["vs_executed_action"]["mean_abs_per_dim"]) == 3
    critic = result["critic"]
    assert critic["finite"] and critic["phase"] == "offline"
    assert critic["q_min_over_ensemble"]["min"] <= critic["q_min_over_ensemble"]["max"]


def test_replay_launch_file_serves_a_log_to_a_controller(hopper_policy, tmp_path):
    """launch/replay.yaml through `acalign launch`: the policy that made the log sees the logged observations and
    commands the logged actions again."""
    import json
    import re
    import subprocess
    from pathlib import Path

    from acalign_robot.policy.runner import PolicyRunner
    from tests.helpers import acalign_command

    launch_file = Path(__file__).resolve().parents[2] / "launch" / "replay.yaml"
    runner = PolicyRunner.from_dir(hopper_policy)
    log = read_log(record_sim_log(tmp_path / "log", episodes=2, max_steps=20, runner=runner))
    overrides = [
        f"driver.log={tmp_path / 'log'}",
        f"controller.policy={hopper_policy}",
        "controller.episodes=2",
        f"output_dir={tmp_path / 'sessions'}",
    ]
    result = subprocess.run(
        acalign_command("launch", str(launch_file), *sum((["--set", o] for o in overrides), [])),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (session_dir,) = (tmp_path / "sessions" / "replay").glob("*")
    stats = json.loads((session_dir / "replay-0" / "stats.json").read_text())
    assert stats["episodes"] == 2 and stats["ticks"] == len(log)
    np.testing.assert_allclose(stats["episode_returns"], [log.reward[e.slice].sum() for e in log.episodes], rtol=1e-5)
    line = re.search(r"action deviation (\{.*\})", (session_dir / "replay-0-driver.log").read_text())
    deviation = json.loads(line[1])
    assert deviation["steps"] == len(log) and deviation["episodes_completed"] == 2 and deviation["max_abs"] < 1e-5
