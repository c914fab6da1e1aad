"""Each CLI entry point as a subprocess on a tiny budget."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.smoke


def acalign(*args: str, env: dict | None = None, cwd=None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "acalign_robot.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def _subcommands() -> list[str]:
    from acalign_robot.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_version_and_help():
    result = acalign("--version")
    assert result.returncode == 0 and "acalign-robot" in result.stdout
    for command in _subcommands():
        result = acalign(command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "usage: acalign" in result.stdout


def test_bad_flag_is_exit_2_with_one_line():
    result = acalign("collect", "--env", "Hopper-v5", "--name", "x", "--episodes", "-3")
    assert result.returncode == 2
    assert "expected a positive integer" in result.stderr and "Traceback" not in result.stderr


def test_typo_in_preset_yaml_reports_file_and_line(tmp_path, minari_store):
    preset = tmp_path / "preset.yaml"
    preset.write_text("beta: 7\nw_mni: 0.5\n")
    result = acalign("pretrain", "missing-v0", "--out", str(tmp_path / "run"), "--preset", str(preset))
    assert result.returncode == 2
    assert f"{preset}:2: unknown key 'w_mni' (did you mean 'w_min'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_checkpoint_is_exit_2(tmp_path):
    result = acalign("align", str(tmp_path / "nope.pt"))
    assert result.returncode == 2 and "no such checkpoint" in result.stderr


def test_collect_random_writes_a_loadable_dataset_and_refuses_overwrite(minari_store, tmp_path):
    args = ("collect", "--env", "Hopper-v5", "--policy", "random", "--episodes", "3", "--name", "hopper-random-test")
    result = acalign(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import minari

    dataset = minari.load_dataset("hopper-random-test-v0")
    assert dataset.total_episodes == 3
    again = acalign(*args, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert minari.load_dataset("hopper-random-test-v0").total_episodes == 3


def test_collect_medium_scores_its_own_data_and_repeats_it_from_the_stored_behaviour_run(minari_store, tmp_path):
    """The medium snapshot is chosen by how its sampled-action episodes score (as its data will), the dataset records
    its own mean score, and collecting again from the stored behaviour run writes the same data."""
    import minari
    import numpy as np

    args = (
        *("collect", "--env", "InvertedPendulum-v5", "--policy", "sac", "--kind", "medium", "--name", "ip-medium"),
        *("--behaviour-steps", "1000", "--warmup", "500", "--eval-every", "500", "--transitions", "300"),
        *("--runs-dir", str(tmp_path / "runs")),
    )
    first = acalign(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "mean normalised score of its episodes:" in first.stdout

    def written() -> tuple[dict, np.ndarray]:
        dataset = minari.load_dataset("ip-medium-v0")
        actions = np.concatenate([episode.actions for episode in dataset.iterate_episodes()])
        ours = {k.removeprefix("acalign_"): v for k, v in dataset.storage.metadata.items() if k.startswith("acalign_")}
        return ours, actions

    metadata, actions = written()
    assert metadata["medium_snapshot_step"] in (500, 1000)
    assert np.isfinite(metadata["medium_snapshot_score"]) and np.isfinite(metadata["dataset_mean_score"])
    third = 100 / 3
    assert metadata["medium_within_tolerance"] == (abs(metadata["dataset_mean_score"] - third) <= 0.1 * third)
    shipped = tmp_path / "shipped"
    again = acalign(*args, "--force", "--export-behaviour", str(shipped), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "behaviour SAC" not in again.stderr  # the stored run was reused, not trained again
    metadata_again, actions_again = written()
    assert np.array_equal(actions, actions_again)
    assert metadata_again["medium_snapshot_step"] == metadata["medium_snapshot_step"]

    # The exported snapshots alone remake the same data, and refuse medium-replay with the reason.
    exported = sorted(p.name for p in (shipped / "behaviour" / "InvertedPendulum-v5-seed0" / "snapshots").iterdir())
    used = {metadata["medium_snapshot_step"], metadata["expert_snapshot_step"]}
    assert exported == sorted(f"actor_{step:08d}.pt" for step in used)
    from_shipped = acalign(*args, "--force", "--runs-dir", str(shipped), cwd=tmp_path)
    assert from_shipped.returncode == 0, from_shipped.stderr
    metadata_shipped, actions_shipped = written()
    assert np.array_equal(actions, actions_shipped)
    assert metadata_shipped["medium_snapshot_step"] == metadata["medium_snapshot_step"]
    assert metadata_shipped["expert_return"] == metadata["expert_return"]
    replay = acalign(
        *args[:6],
        "medium-replay",
        "--name",
        "ip-replay",
        "--behaviour-steps",
        "1000",
        "--runs-dir",
        str(shipped),
        cwd=tmp_path,
    )
    assert replay.returncode == 2 and "exported snapshots only" in replay.stderr, replay.stderr

    # An expert dataset exports no medium snapshot: medium data from that export is refused, not made from the expert.
    expert_only = tmp_path / "expert-only"
    common = ("--behaviour-steps", "1000", "--transitions", "300", "--force")
    expert = acalign(*args[:6], "expert", "--name", "ip-expert", *common, "--runs-dir", str(tmp_path / "runs"),
                     "--export-behaviour", str(expert_only), cwd=tmp_path)  # fmt: skip
    assert expert.returncode == 0, expert.stderr
    medium = acalign(*args[:6], "medium", "--name", "ip-medium", *common, "--runs-dir", str(expert_only), cwd=tmp_path)
    assert medium.returncode == 2 and "without a medium one" in medium.stderr, medium.stderr


def _returns(run_dir) -> list[float]:
    with open(run_dir / "eval.csv") as handle:
        return [float(row["return_mean"]) for row in csv.DictReader(handle)]


def test_offline_to_online_pipeline_improves_on_inverted_pendulum(minari_store, tmp_path):
    """collect -> pretrain -> align -> finetune -> eval -> plot, through the CLI; ACA must improve online."""
    steps = [
        ("collect", "--env", "InvertedPendulum-v5", "--episodes", "200", "--name", "ip-random"),
        (
            "pretrain",
            "ip-random",
            "--out",
            str(tmp_path / "offline"),
            "--steps",
            "500",
            "--eval-every",
            "500",
            "--preset",
            "random",
            "--set",
            "sac.batch_size=64",
        ),
        ("align", str(tmp_path / "offline" / "offline.pt")),
        (
            "finetune",
            str(tmp_path / "offline" / "aligned-aca.pt"),
            "--out",
            str(tmp_path / "online"),
            "--steps",
            "2500",
            "--eval-every",
            "500",
        ),
        ("eval", str(tmp_path / "online" / "finetuned.pt"), "--episodes", "3"),
        ("plot", str(tmp_path / "offline"), str(tmp_path / "online"), "--out", str(tmp_path / "curves.png")),
    ]
    for args in steps:
        result = acalign(*args, cwd=tmp_path)
        assert result.returncode == 0, (args[0], result.stderr[-2000:])
    returns = _returns(tmp_path / "online")
    assert max(returns[1:]) > returns[0] + 40, returns
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_finetune_several_seeds_need_one_run_directory_and_seed_each(aligned_hopper_checkpoint, tmp_path):
    outs = (str(tmp_path / "seed0"), str(tmp_path / "seed1"))
    result = acalign("finetune", str(aligned_hopper_checkpoint), "--out", *outs, "--seed", "0")
    assert result.returncode == 2, result.stderr
    assert "2 run directories need 2 seeds (got 1)" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "seed0").exists()
