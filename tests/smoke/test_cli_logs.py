"""`acalign logs convert` and `acalign replay open-loop|render|eval` as a user runs them, on a tiny sim log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from acalign_robot.cli import main
from tests.log_helpers import record_sim_log
from tests.smoke.test_cli import acalign

pytestmark = pytest.mark.smoke


@pytest.fixture
def session(tmp_path):
    """A session directory with one controller's log (Hopper-v5, 2 short episodes)."""
    record_sim_log(tmp_path / "session" / "controller-0" / "log", episodes=2, max_steps=20)
    return tmp_path / "session"


def test_convert_and_replay_commands(session, minari_store, tmp_path):
    result = acalign("logs", "convert", str(session), "--name", "robot-log")
    assert result.returncode == 0, result.stderr
    assert "wrote robot-log-v0: 2 episodes (0 partial)" in result.stdout
    assert (minari_store / "robot-log-v0").is_dir()
    again = acalign("logs", "convert", str(session), "--name", "robot-log")
    assert again.returncode == 2 and "already exists" in again.stderr

    result = acalign("replay", "open-loop", str(session / "controller-0"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["episodes"] == 2 and summary["divergence_max"] < 1e-4
    assert (session / "controller-0" / "open-loop" / "divergence.png").is_file()

    video = tmp_path / "video.mp4"
    result = acalign("replay", "render", str(session / "controller-0" / "log"), "--out", str(video), "--width", "64")
    assert result.returncode == 0, result.stderr
    assert video.stat().st_size > 0 and "frames" in result.stdout


def test_eval_command(session, hopper_policy, make_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(
        [
            "replay",
            "eval",
            str(session),
            "--policy",
            str(hopper_policy),
            "--checkpoint",
            str(make_checkpoint("Hopper-v5")),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert result["critic"]["finite"] and len(result["vs_executed_action"]["max_abs_per_dim"]) == 3


def test_bad_input_is_exit_2_with_one_line(tmp_path, session, minari_store):
    result = acalign("replay", "open-loop", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "no transition log here" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = acalign("logs", "convert", str(session), "--name", "x", "--env", "Walker2d-v5")
    assert result.returncode == 2 and "obs/action dims 11/3, but Walker2d-v5 has 17/6" in result.stderr


def _digests(directory) -> dict:
    import hashlib

    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def _chunked(tmp_path, **faults):
    """A session with one Hopper-v5 log of several chunks (3 episodes of at most 20 steps, chunks of >= 8)."""
    log_dir = tmp_path / "session" / "controller-0" / "log"
    record_sim_log(log_dir, episodes=3, max_steps=20, batch_size=8, chunk_transitions=8, **faults)
    assert len(list(log_dir.glob("chunk-*.npz"))) >= 4
    return tmp_path / "session", log_dir


def test_convert_refuses_a_damaged_chunk_unless_allow_gaps_and_never_touches_a_good_one(tmp_path, minari_store):
    import minari

    from acalign_robot.robot_log.reader import read_log

    session, log_dir = _chunked(tmp_path)
    whole = read_log(log_dir)
    damaged = log_dir / "chunk-0000-000001.npz"
    damaged_transitions = int(np.sum(whole.chunk_index == 1))
    damaged.write_bytes(damaged.read_bytes()[:200])  # truncated
    before = _digests(log_dir)

    refused = acalign("logs", "convert", str(session), "--name", "robot-log")

    assert refused.returncode == 2, refused.stderr
    assert "1 part(s) of the logs cannot be converted; nothing was written" in refused.stderr
    assert f"{damaged}: damaged chunk" in refused.stderr and "--allow-gaps" in refused.stderr
    assert "Traceback" not in refused.stderr and not (minari_store / "robot-log-v0").exists()

    result = acalign("logs", "convert", str(session), "--name", "robot-log", "--allow-gaps")

    assert result.returncode == 0, result.stderr
    (skipped,) = [line for line in result.stderr.splitlines() if "skipped:" in line]
    assert f"skipped: {damaged}: damaged chunk (BadZipFile" in skipped
    assert minari.load_dataset("robot-log-v0").total_steps == len(whole) - damaged_transitions
    assert _digests(log_dir) == before  # conversion only reads


def test_convert_names_a_deleted_chunk_nan_rewards_and_reads_an_orphaned_whole_temp_chunk(tmp_path, minari_store):
    import minari

    from acalign_robot.robot_log.reader import read_log

    session, log_dir = _chunked(tmp_path, nan_reward_ticks=frozenset({3, 50}))
    last = sorted(log_dir.glob("chunk-*.npz"))[-1]
    last.rename(log_dir / f".{last.name}.tmp")  # a writer killed between fsync and rename
    (log_dir / "chunk-0000-000001.npz").unlink()  # a deleted middle chunk
    log = read_log(log_dir)
    nonfinite = int(log.nonfinite().sum())  # tick 3, and tick 50 unless the episodes ended before it
    kept = len(log) - nonfinite

    refused = acalign("logs", "convert", str(session), "--name", "robot-log")

    assert refused.returncode == 2 and "2 part(s) of the logs cannot be converted" in refused.stderr
    assert f"{log_dir}: chunk 000001 missing (deleted?)" in refused.stderr
    assert f"{nonfinite} of {len(log)} transitions hold NaN or inf (reward {nonfinite}; the first in " in refused.stderr
    assert "chunk-0000-000000.npz, seq 0)" in refused.stderr

    result = acalign("logs", "convert", str(session), "--name", "robot-log", "--allow-gaps")

    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert sum("skipped:" in line for line in lines) == 2
    assert any(f"note: {log_dir / f'.{last.name}.tmp'}: whole temp chunk" in line for line in lines)
    dataset = minari.load_dataset("robot-log-v0")
    assert dataset.total_steps == kept and f"{kept} steps" in result.stdout
    rewards = np.concatenate([episode.rewards for episode in dataset.iterate_episodes()])
    assert np.isfinite(rewards).all()
    assert dataset.storage.metadata["acalign_nonfinite_transitions"] == nonfinite


def test_nan_observations_from_a_sensor_never_reach_an_offline_checkpoint(tmp_path, minari_store):
    """Issue 16 item 6: durable log -> logs convert -> pretrain with a failed sensor's NaN observations."""
    from acalign_robot.algo.checkpoint import load_checkpoint, nonfinite_entries
    from acalign_robot.robot_log.reader import read_log

    session, log_dir = _chunked(tmp_path, nan_obs_ticks=frozenset({7, 30}))
    log = read_log(log_dir)
    obs, next_obs = (int((~np.isfinite(values).all(axis=1)).sum()) for values in (log.obs, log.next_obs))
    assert next_obs >= 1 and obs >= 1  # the observation after tick 7 is one step's next_obs and the next one's obs
    refused = acalign("logs", "convert", str(session), "--name", "sensor-log")
    assert refused.returncode == 2
    assert f"transitions hold NaN or inf (obs {obs}, next_obs {next_obs};" in refused.stderr

    assert acalign("logs", "convert", str(session), "--name", "sensor-log", "--allow-gaps").returncode == 0
    result = acalign(
        *("pretrain", "sensor-log", "--out", str(tmp_path / "run"), "--steps", "4", "--eval-every", "4"),
        *("--eval-episodes", "1", "--set", "sac.hidden_sizes=[16, 16]", "--set", "sac.batch_size=32"),
    )
    assert result.returncode == 0, result.stderr
    payload = load_checkpoint(tmp_path / "run" / "offline.pt")
    assert nonfinite_entries(payload["agent"]) == [] and payload["meta"]["dataset_nonfinite_dropped"] == 0


def test_pretrain_drops_and_reports_nonfinite_transitions_of_a_dataset(tmp_path, minari_store):
    from acalign_robot.algo.checkpoint import load_checkpoint, nonfinite_entries
    from acalign_robot.data.datasets import write_dataset
    from tests.helpers import make_episodes

    episodes = make_episodes(4)
    episodes[1].observations[3] = np.nan
    write_dataset("nan-obs-v0", episodes, "Hopper-v5", algorithm="test", description="a failed sensor")

    result = acalign(
        *("pretrain", "nan-obs", "--out", str(tmp_path / "run"), "--steps", "4", "--eval-every", "4"),
        *("--eval-episodes", "1", "--set", "sac.hidden_sizes=[16, 16]", "--set", "sac.batch_size=32"),
    )

    assert result.returncode == 0, result.stderr
    assert "dataset nan-obs: 2 of 86 transitions hold NaN or inf (observation, action or reward): dropped" in (
        result.stderr
    )
    payload = load_checkpoint(tmp_path / "run" / "offline.pt")
    assert nonfinite_entries(payload["agent"]) == [] and payload["meta"]["dataset_nonfinite_dropped"] == 2
    assert payload["meta"]["dataset_transitions"] == 84


def test_diverging_runs_stop_with_exit_1_naming_the_quantity_and_keep_the_last_good_checkpoint(
    tiny_hopper_dataset, tmp_path
):
    """Issue 15 item 0: an absurd learning rate makes every phase diverge within two updates."""
    import csv

    tiny = ("--eval-episodes", "1", "--set", "sac.hidden_sizes=[16, 16]", "--set", "sac.batch_size=32")
    run = tmp_path / "run"
    healthy = acalign("pretrain", tiny_hopper_dataset, "--out", str(run), "--steps", "4", "--eval-every", "2", *tiny)
    assert healthy.returncode == 0, healthy.stderr
    with open(run / "eval.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows] == ["2", "4"]
    assert all(float(row["alpha"]) > 0 and abs(float(row["q_mean"])) < 1e3 for row in rows)  # seen coming
    good = _digests(run)["offline.pt"]

    diverged = acalign(
        *("pretrain", tiny_hopper_dataset, "--out", str(run), "--steps", "5", "--eval-every", "1", "--force"),
        *(*tiny, "--set", "sac.lr=1000"),
    )
    assert diverged.returncode == 1
    (line,) = diverged.stderr.strip().splitlines()[-1:]
    assert line.startswith("acalign pretrain: error: pretrain diverged at update 2: ") and "beyond its bound" in line
    assert "no checkpoint of this run was written" in line and "Traceback" not in diverged.stderr
    assert _digests(run)["offline.pt"] == good  # update 1's state was never vouched for, so never written

    aligned = run / "aligned-aca.pt"
    assert acalign("align", str(run / "offline.pt"), "--set", "sac.lr=1000").returncode == 0
    diverged = acalign("finetune", str(aligned), "--out", str(tmp_path / "ft"), "--steps", "60", "--eval-every", "30")
    assert diverged.returncode == 1
    line = diverged.stderr.strip().splitlines()[-1]
    assert line.startswith("acalign finetune: error: finetune (aca) diverged at env step 3")  # updates start at 33
    assert f"the last good checkpoint is {aligned} (env step 0)" in line
    assert not (tmp_path / "ft" / "finetuned.pt").exists()


def test_align_refuses_an_offline_checkpoint_whose_run_diverged(make_checkpoint, tmp_path):
    import math

    import torch

    from acalign_robot.algo.checkpoint import load_checkpoint, save_checkpoint

    path = make_checkpoint("Hopper-v5")
    payload = load_checkpoint(path)
    payload["agent"]["sac"]["log_alpha"] = torch.tensor(math.log(2e4))
    payload["meta"] = {**payload["meta"], "offline_steps": 7000}
    save_checkpoint(path, "offline", payload["agent"], payload["config"], payload["meta"])

    result = acalign("align", str(path))

    assert result.returncode == 1 and not (path.parent / "aligned-aca.pt").exists()
    assert f"acalign align: error: align: {path} holds a diverged offline run (update 7000): alpha = 2e+04" in (
        result.stderr
    )
