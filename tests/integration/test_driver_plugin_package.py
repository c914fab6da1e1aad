"""deploy/example_driver as a user installs it: `pip install` into a directory of its own, then every command that
meets a driver (drivers list, validate, driver, launch) in subprocesses that have it on their PYTHONPATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from acalign_robot.drivers.remote_env import RemoteEnv
from acalign_robot.robot_log.format import info_columns
from acalign_robot.robot_log.reader import read_log
from acalign_robot.robot_log.to_minari import convert_logs
from acalign_robot.wire import protocol as p
from acalign_robot.wire.channels import free_tcp_endpoint
from acalign_robot.wire.transport import ZmqControlClient
from tests.helpers import acalign_command, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "example_driver"
TARGET = "example_arm_driver:ExampleArmDriver"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package installed with pip into a fresh directory (built from a copy: the build leaves files in
    its source directory), next to a distribution whose entry point names a module that does not exist."""
    work = tmp_path_factory.mktemp("plugin")
    shutil.copytree(EXAMPLE, work / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = work / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"]
    result = subprocess.run(
        [*pip, "--target", str(site), str(work / "src")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = site / "broken_arm-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-arm\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[acalign.drivers]\nbroken_arm = broken_arm_sdk:BrokenArm\n")
    return site


def run(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(acalign_command(*args), capture_output=True, text=True, timeout=180, cwd=cwd, env=env(site))


def env(site: Path) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(site), str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def session_dir(tmp_path: Path) -> Path:
    """A working directory with the example's launch file and the placeholder policy it names."""
    shutil.copytree(REPO / "policies" / "template-arm", tmp_path / "policies" / "template-arm")
    shutil.copy(EXAMPLE / "launch.yaml", tmp_path / "launch.yaml")
    return tmp_path


def test_drivers_list_shows_the_installed_plugin_and_where_it_comes_from(site):
    result = run(site, "drivers", "list")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert {"mujoco", "replay", "loopback", "template", "python", "example_arm"} <= set(rows)
    assert TARGET in rows["example_arm"] and "entry point of acalign-example-driver 0.1.0" in rows["example_arm"]
    assert "built-in" in rows["mujoco"]


@pytest.mark.parametrize(
    "overrides", [(), ("driver.kind=python", f"driver.target={TARGET}")], ids=["entry-point", "python-target"]
)
def test_validate_creates_the_plugin_driver_of_the_example_launch_file(site, tmp_path, overrides):
    work = session_dir(tmp_path)
    result = run(site, "validate", "launch.yaml", *(f"--set={o}" for o in overrides), cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "launch.yaml: ok (1 robot(s)" in result.stdout
    # It did create the driver: a goal outside the joint limits is the plugin's own Config.validate() refusing.
    bad = run(site, "validate", "launch.yaml", "--set", "driver.args.goal_rad=[2.0, 0.0, 0.5]", cwd=work)
    assert bad.returncode == 2
    assert "robots[0] (arm-0).driver: args: goal_rad: one target per joint" in bad.stderr


@pytest.mark.parametrize(
    "driver", [{"kind": "example_arm"}, {"kind": "python", "target": TARGET}], ids=["entry-point", "python-target"]
)
def test_a_driver_process_serves_the_plugin_with_its_args(site, tmp_path, processes, driver):
    endpoint = free_tcp_endpoint()
    args = {"goal_rad": [0.25, -0.25], "control_period_s": 0.02, "episode_steps": 5}
    config = tmp_path / "driver.yaml"
    config.write_text(yaml.safe_dump({**driver, "args": args, "endpoint": endpoint, "watchdog_ms": 200}))
    ready = tmp_path / "driver.ready"
    process = processes.start(
        acalign_command("driver", "--config", str(config), "--ready-file", str(ready)),
        tmp_path / "driver.log",
        env={"PYTHONPATH": env(site)["PYTHONPATH"]},
    )
    wait_for(lambda: ready.exists() or process.poll() is not None, 60, "the driver to bind")
    assert process.poll() is None, (tmp_path / "driver.log").read_text()
    with ZmqControlClient(endpoint) as client:
        hello = client.request(p.Hello(client_name="test", role="controller"), 5.0)
        reset = client.request(p.Reset(seed=0), 5.0)
        steps = [client.request(p.Step(tick=tick, action=np.full(2, 0.25, np.float32)), 5.0) for tick in range(5)]
        assert isinstance(client.request(p.Release(reason="done"), 5.0), p.Heartbeat)  # the driver is free again
    assert isinstance(hello, p.HelloReply) and hello.control_period_s == 0.02  # the args reached the driver
    assert isinstance(reset, p.ResetReply) and reset.obs.tolist() == [0.0, 0.0, 0.25, -0.25]
    assert all(isinstance(step, p.StepReply) for step in steps)
    # The servos move 2 rad/s * 0.02 s = 0.04 rad per tick toward 0.25; the episode ends after episode_steps.
    assert steps[0].obs[0] == pytest.approx(0.04) and steps[-1].truncated and not steps[-2].truncated
    assert steps[0].info["tracking_error_rad"] == pytest.approx([0.21, 0.21]) and steps[0].info["speed_limited"]
    # The same driver as a gymnasium env: its info reaches RemoteEnv's (a robot-like driver cannot pause: pause_s 0).
    remote = RemoteEnv(endpoint, pause_s=0.0)
    try:
        remote.reset(seed=0)
        _, _, _, _, info = remote.step(np.full(2, 0.01, np.float32))  # within one period's travel
    finally:
        remote.close()
    assert not info["speed_limited"] and info["tracking_error_rad"] == pytest.approx([0.0, 0.0])
    assert not info["rejected_action"]


BAD_DRIVERS = [
    (
        {"kind": "python", "target": "no_such_arm_sdk:Arm"},
        "target: no_such_arm_sdk:Arm: cannot import 'no_such_arm_sdk'",
    ),
    ({"kind": "python", "target": "example_arm_driver:ExampleArmDrivr"}, "did you mean 'ExampleArmDriver'?"),
    (
        {"kind": "python", "target": "example_arm_driver:SimulatedServoBus"},
        "target: example_arm_driver:SimulatedServoBus is a class, not a subclass of acalign_robot.drivers.base.Driver",
    ),
    ({"kind": "python", "target": "example_arm_driver"}, "target: expected package.module:Class"),
    ({"kind": "example_arm", "args": {"goal_rads": [0.1]}}, "args: unknown key 'goal_rads' (did you mean 'goal_rad'?)"),
    (
        {"kind": "example_arm", "args": {"episode_steps": "many"}},
        "args: episode_steps: expected an integer, got 'many'",
    ),
    ({"kind": "exampel_arm"}, "kind: 'exampel_arm' is neither a built-in driver"),
    ({"kind": "broken_arm"}, "kind: broken_arm_sdk:BrokenArm: cannot import 'broken_arm_sdk'"),
]


@pytest.mark.parametrize(
    ("driver", "message"), BAD_DRIVERS, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD_DRIVERS)]
)
def test_bad_plugin_input_is_one_line_and_exit_2(site, tmp_path, driver, message):
    config = tmp_path / "driver.yaml"
    config.write_text(yaml.safe_dump({**driver, "endpoint": free_tcp_endpoint()}))
    result = run(site, "driver", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr and str(config) in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_names_the_robot_of_a_plugin_that_is_not_installed(site, tmp_path):
    work = session_dir(tmp_path)
    result = run(site, "validate", "launch.yaml", "--set", "driver.kind=no_such_arm", cwd=work)
    assert result.returncode == 2
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert problems == [
        "  - robots[0] (arm-0).driver: kind: 'no_such_arm' is neither a built-in driver, `python` nor an installed "
        "plugin (known: mujoco, replay, loopback, template, python, broken_arm, example_arm; `acalign drivers list`)"
    ]


def test_the_example_launch_file_runs_unchanged(site, tmp_path, minari_store):
    import minari

    work = session_dir(tmp_path)
    result = run(site, "launch", "launch.yaml", "--set", "controller.episodes=1", cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    (report_file,) = (work / "sessions" / "example_arm").glob("*/report.json")
    report = json.loads(report_file.read_text())
    assert report["failure"] is None and report["controllers"][0]["episodes"] == 1
    # The plugin's info, the same keys every step, in the controller's log and in a Minari dataset made from it.
    (log_dir,) = (work / "sessions" / "example_arm").glob("*/arm-0/log")
    log = read_log(log_dir)
    # The driver ends the episode after the args' 200 steps; its watchdog may take some of them while the
    # controller starts (30 ms), so the controller logs at most 200.
    (episode,) = log.episodes
    assert 150 <= len(episode) <= 200 and log.truncated[episode.stop - 1]
    info = info_columns(log.extras)
    assert info["tracking_error_rad"].shape == log.action.shape and not info["rejected_action"].any()
    convert_logs(log_dir, "example-arm-info")
    (episode,) = minari.load_dataset("example-arm-info-v0").iterate_episodes()
    np.testing.assert_array_equal(episode.infos["info.tracking_error_rad"][1:], info["tracking_error_rad"])
