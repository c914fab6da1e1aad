"""`acalign keys generate | show` as subprocesses in a temporary directory."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from acalign_robot.runtime.security import load_public_key

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
