"""An env the stack cannot use, given to every entry point that takes one: one line naming it, exit 2, no traceback.

gymnasium's own messages carry its "did you mean"; spaces the stack cannot drive are the project's EnvError.
"""

from __future__ import annotations

import pytest
import yaml

from tests.smoke.test_cli import acalign

pytestmark = pytest.mark.smoke

# (env id, what the one line must say)
BAD_ENVS = [
    ("NoSuchEnv-v9", "Environment `NoSuchEnv` doesn't exist."),
    ("Hoper-v5", "Environment `Hoper` doesn't exist. Did you mean: `Hopper`?"),
    ("Hopper-v9", "Environment version `v9` for environment `Hopper` doesn't exist."),
    ("nosuchns/Hopper-v5", "Namespace nosuchns not found."),
    ("no env id", "Malformed environment ID: no env id."),
]
NOT_BOX = ("CartPole-v1", "only Box action spaces are supported, got Discrete(2)")
NOT_MUJOCO = ("CartPole-v1", "env 'CartPole-v1' is not a gymnasium MuJoCo env")


def assert_one_line(result, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize(("env_id", "message"), [*BAD_ENVS, NOT_BOX], ids=lambda value: value[:20])
def test_collect(minari_store, tmp_path, env_id, message):
    result = acalign("collect", "--env", env_id, "--policy", "random", "--episodes", "1", "--name", "x", cwd=tmp_path)
    assert_one_line(result, message)


def test_collect_with_a_deprecated_env_id(minari_store, tmp_path):
    """gymnasium warns on a line of its own before it raises: the error is still the one line acalign prints."""
    result = acalign(
        "collect", "--env", "Hopper-v1", "--policy", "random", "--episodes", "1", "--name", "x", cwd=tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "acalign collect: error: Environment version v1 for `Hopper` is deprecated. Please use `Hopper-v5` instead."
    )


@pytest.mark.parametrize(("env_id", "message"), [BAD_ENVS[1], NOT_MUJOCO], ids=lambda value: value[:20])
def test_driver(tmp_path, env_id, message):
    config = tmp_path / "driver.yaml"
    config.write_text(yaml.safe_dump({"kind": "mujoco", "env_id": env_id}))
    assert_one_line(acalign("driver", "--config", str(config)), message)


@pytest.mark.parametrize(("env_id", "message"), [BAD_ENVS[1], NOT_MUJOCO], ids=lambda value: value[:20])
def test_validate(tmp_path, env_id, message):
    launch = tmp_path / "session.yaml"
    robot = {"name": "r", "driver": {"kind": "mujoco", "env_id": env_id}, "controller": {"policy": "p"}}
    launch.write_text(yaml.safe_dump({"session": "s", "robots": [robot]}))
    result = acalign("validate", str(launch))
    assert result.returncode == 2
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == 1 and problems[0].startswith(f"  - robots[0] (r).driver: {message}"), result.stderr


def test_pretrain(tiny_hopper_dataset, tmp_path):
    result = acalign("pretrain", tiny_hopper_dataset, "--env", "Hoper-v5", "--out", str(tmp_path / "run"))
    assert_one_line(result, BAD_ENVS[1][1])


@pytest.mark.parametrize(("env_id", "message"), [BAD_ENVS[1], NOT_BOX], ids=lambda value: value[:20])
def test_eval_of_a_checkpoint(make_checkpoint, env_id, message):
    assert_one_line(acalign("eval", str(make_checkpoint()), "--env", env_id, "--episodes", "1"), message)


def test_finetune(aligned_hopper_checkpoint, tmp_path):
    args = ("finetune", str(aligned_hopper_checkpoint), "--env", "Hoper-v5", "--out", str(tmp_path / "run"))
    assert_one_line(acalign(*args, "--steps", "10"), BAD_ENVS[1][1])
