"""The wheel carries what the package's code needs at run time: the Panda reach scene compiles from the wheel's copy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke

REPO = Path(__file__).resolve().parents[2]


def test_the_panda_scene_compiles_from_the_wheel(tmp_path):
    import mujoco

    source = tmp_path / "source"  # a copy: the build writes build/ and egg-info beside the sources
    shutil.copytree(REPO / "acalign_robot", source / "acalign_robot", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source)]
        + ["-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("acalign_robot-*.whl")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    scene = unpacked / "acalign_robot" / "sim_tasks" / "assets" / "panda" / "panda_reach.xml"
    model = mujoco.MjModel.from_xml_path(str(scene))  # fails if a mesh it names is missing
    assert (model.njnt, model.nmesh) == (7, 9)  # the arm's joints, its links' and hand's meshes
    assert (scene.parent / "LICENSE").is_file() and (scene.parent / "ATTRIBUTION.md").is_file()
