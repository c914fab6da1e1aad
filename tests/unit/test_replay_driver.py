"""ReplayDriver serves a log as a driver: logged observations whatever the action, deviation counted; its config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acalign_robot import config as config_io
from acalign_robot.config import ConfigError
from acalign_robot.drivers.log_playback import ReplayDriver
from acalign_robot.drivers.server import DriverConfig, make_driver
from acalign_robot.robot_log.format import LogError
from acalign_robot.robot_log.reader import read_log
from acalign_robot.robot_log.transition_log import TransitionLog
from acalign_robot.spaces import BoxSpace
from tests.log_helpers import synthetic_batch

REPO = Path(__file__).resolve().parents[2]


def _log(directory: Path, transitions: int = 60, **meta) -> Path:
    with TransitionLog(directory, "test-0", chunk_transitions=32, **meta) as log:
        for k in range(transitions // 20):
            log.write(synthetic_batch(k, 20, 20 * k))
    return directory


SPACES = {
    "observation_space": BoxSpace(np.full(11, -np.inf), np.full(11, np.inf), ("m",) * 11),
    "action_space": BoxSpace(-np.ones(3), np.ones(3), ("N*m",) * 3),
    "control_period_s": 0.008,
}


def test_serves_logged_episodes_whatever_the_action(tmp_path):
    data = read_log(_log(tmp_path / "log", **SPACES))
    driver = ReplayDriver(tmp_path / "log")
    assert driver.spec.control_period_s == 0.008 and driver.spec.action.units == ("N*m",) * 3
    np.testing.assert_array_equal(driver.spec.action.high, np.ones(3))

    # Episode 0: transitions 0..24, terminated at its end.
    np.testing.assert_array_equal(driver.reset(seed=123), data.obs[0])
    for i in range(25):
        result = driver.step(data.action[i] + 0.25)
        np.testing.assert_array_equal(result.obs, data.next_obs[i])
        assert result.reward == data.reward[i]
        assert (result.terminated, result.truncated) == (i == 24, False)
    idle = driver.step(np.zeros(3))  # no episode open: the last observation, uncounted
    assert idle.truncated and idle.reward == 0.0
    np.testing.assert_array_equal(idle.obs, data.next_obs[24])

    stats = driver.deviation_stats()
    assert stats["steps"] == 25 and stats["idle_steps"] == 1
    np.testing.assert_allclose(stats["mean_abs_per_dim"], 0.25, atol=1e-6)
    np.testing.assert_allclose(stats["max_abs"], 0.25, atol=1e-6)

    driver.reset()  # episode 1: 25..49, truncated
    for i in range(25, 50):
        result = driver.step(data.action[i])
    assert result.truncated and not result.terminated
    driver.reset()  # episode 2: 50..59, cut by the end of the log: ends truncated
    for i in range(50, 60):
        result = driver.step(data.action[i])
    assert result.truncated and not result.terminated
    np.testing.assert_array_equal(driver.reset(), data.obs[0])  # and round again
    driver.step(np.zeros(3))  # an episode left unfinished does not count
    stats = driver.deviation_stats()
    assert (stats["episodes_started"], stats["episodes_completed"], stats["steps"]) == (4, 3, 60)
    assert stats["unfinished_episode_steps"] == 1 and stats["max_abs"] == pytest.approx(0.25)


def test_spaces_from_the_env_when_the_log_lacks_them(tmp_path):
    _log(tmp_path / "log")
    with pytest.raises(LogError, match="give the driver an env_id"):
        ReplayDriver(tmp_path / "log")
    driver = make_driver(DriverConfig(kind="replay", log=str(tmp_path / "log"), env_id="Hopper-v5"))
    assert isinstance(driver, ReplayDriver)
    assert driver.spec.control_period_s == pytest.approx(0.008) and driver.spec.action.shape == (3,)


def test_replay_config_needs_a_log_and_launch_files_load():
    with pytest.raises(ConfigError, match="log"):
        config_io.load_text(DriverConfig, "kind: replay\n", "driver.yaml")
    with pytest.raises(ConfigError, match="log"):
        config_io.load_text(DriverConfig, "kind: loopback\nlog: somewhere\n", "driver.yaml")
    from acalign_robot.session.schema import load_launch

    session = load_launch(REPO / "launch" / "replay.yaml")
    (robot,) = session.robots
    assert robot.driver.kind == "replay" and robot.driver.log and session.learner is None
