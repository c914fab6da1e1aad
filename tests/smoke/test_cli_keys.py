"""`acalign keys generate | show` as subprocesses in a temporary directory."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from acalign_robot.wire.security import load_public_key

pytestmark = [pytest.mark.smoke, pytest.mark.timeout(120)]


def acalign(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "acalign_robot.cli", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_generate_show_and_refuse_to_overwrite(tmp_path):
    generated = acalign("keys", "generate", "robot1", cwd=tmp_path)  # default --dir keys
    assert generated.returncode == 0, generated.stderr
    public_file, secret_file = tmp_path / "keys" / "robot1.key", tmp_path / "keys" / "robot1.key_secret"
    assert str(public_file.relative_to(tmp_path)) in generated.stdout
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600

    shown = acalign("keys", "show", "robot1", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == load_public_key(public_file).decode() + "\n"

    again = acalign("keys", "generate", "robot1", cwd=tmp_path)
    assert again.returncode == 2 and "already exists (use --force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr

    replaced = acalign("keys", "generate", "robot1", "--force", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert acalign("keys", "show", "robot1", cwd=tmp_path).stdout != shown.stdout


def test_bad_names_and_missing_keys_are_exit_2(tmp_path):
    missing = acalign("keys", "show", "nobody", "--dir", "elsewhere", cwd=tmp_path)
    assert missing.returncode == 2 and "elsewhere/nobody.key: key file not found" in missing.stderr
    escaping = acalign("keys", "generate", "../outside", cwd=tmp_path)
    assert escaping.returncode == 2 and "not a key name" in escaping.stderr
    assert not (tmp_path / "outside.key").exists()


def test_the_robot_template_validates_with_generated_keys(tmp_path):
    """What launch/robot_template.yaml's header tells an operator to do, on one machine, for the robot's side."""
    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "launch", tmp_path / "launch")
    shutil.copytree(repo / "policies" / "template-arm", tmp_path / "policies" / "template-arm")
    before = acalign("validate", "--host", "robot", "launch/robot_template.yaml", cwd=tmp_path)
    missing = "keys/robot.key_secret: secret key file not found"
    assert before.returncode != 0 and missing in before.stdout + before.stderr
    for name in ("learner", "robot"):
        assert acalign("keys", "generate", name, cwd=tmp_path).returncode == 0
    (tmp_path / "keys" / "clients").mkdir()
    shutil.copy(tmp_path / "keys" / "robot.key", tmp_path / "keys" / "clients" / "robot.key")
    after = acalign("validate", "--host", "robot", "launch/robot_template.yaml", cwd=tmp_path)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "ok (1 robot(s), learner: yes)" in after.stdout


def test_directories_others_may_write_are_refused_with_the_fix(tmp_path):
    """As ssh refuses a ~/.ssh others may write: whoever can write there can put their own key in."""
    (tmp_path / "keys").mkdir(mode=0o700)
    (tmp_path / "keys").chmod(0o777)
    generated = acalign("keys", "generate", "robot1", cwd=tmp_path)
    assert generated.returncode == 2 and len(generated.stderr.strip().splitlines()) == 1, generated.stderr
    assert "keys is writable by group or others (mode 0777)" in generated.stderr
    assert "run `chmod go-w keys`" in generated.stderr and not (tmp_path / "keys" / "robot1.key").exists()

    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "launch", tmp_path / "launch")
    shutil.copytree(repo / "policies" / "template-arm", tmp_path / "policies" / "template-arm")
    (tmp_path / "keys").chmod(0o700)
    for name in ("learner", "robot"):
        assert acalign("keys", "generate", name, cwd=tmp_path).returncode == 0
    (tmp_path / "keys" / "clients").mkdir()
    shutil.copy(tmp_path / "keys" / "robot.key", tmp_path / "keys" / "clients" / "robot.key")
    (tmp_path / "keys").chmod(0o775)
    robot = acalign("validate", "--host", "robot", "launch/robot_template.yaml", cwd=tmp_path)
    assert robot.returncode == 2, robot.stdout + robot.stderr
    assert "security.keys_dir: keys is writable by group or others (mode 0775)" in robot.stderr, robot.stderr
    (tmp_path / "keys").chmod(0o700)
    (tmp_path / "keys" / "clients").chmod(0o777)
    learner = acalign("validate", "--host", "workstation", "launch/robot_template.yaml", cwd=tmp_path)
    assert learner.returncode == 2, learner.stdout + learner.stderr
    assert "security.authorized_clients_dir: keys/clients is writable by group or others" in learner.stderr
    assert "chmod go-w keys/clients" in learner.stderr
