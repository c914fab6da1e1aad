"""The opt-in sinks of a session's live state: TensorBoard scalars read back with TensorBoard's own reader, a rerun
recording read back with rerun's own CLI, and the launch file's `sinks:` fields."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from acalign_robot.config import ConfigError
from acalign_robot.session.schema import load_launch
from acalign_robot.session.sinks import missing_sink_packages


def state(elapsed_s: float, episodes: list, critic_loss: float | None = 2.0) -> dict:
    """A live state as session/live.py builds it, with the fields the sinks read."""
    robot = {
        "name": "arm",
        "episodes": episodes,
        "tick_p50_ms": 1.0,
        "tick_p99_ms": 3.5,
        "deadline_misses": 2,
        "policy_version": 4,
        "swaps": 3,
        "rollbacks": 0,
        "safe": True,
        "driver": {"estops": 1, "watchdog_events": 0},
    }
    learner = {
        "updates_per_s": 80.0,
        "owed_updates": 10,
        "critic_loss": critic_loss,
        "alpha": 0.5,
        "w": None,
        "buffer_size": 1000,
        "published_version": 4,
    }
    return {"session": "s", "elapsed_s": elapsed_s, "robots": [robot], "learner": learner, "events": []}


def test_tensorboard_gets_each_episode_once_and_the_numbers_each_second(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from acalign_robot.session.sinks import TensorBoardSink

    sink = TensorBoardSink(tmp_path / "tb")
    sink.write({"session": "s", "elapsed_s": 0.0, "robots": [], "learner": None, "events": []})  # before any process
    sink.write(state(1.0, [[1, 10.0, 1], [2, 12.0, 1]]))
    sink.write(state(2.0, [[1, 10.0, 1], [2, 12.0, 1], [3, 20.0, 2]], critic_loss=None))
    sink.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    returns = [(e.step, e.value) for e in events.Scalars("arm/episode_return")]
    assert returns == [(1, 10.0), (2, 12.0), (3, 20.0)]
    assert [(e.step, e.value) for e in events.Scalars("arm/tick_p99_ms")] == [(1, 3.5), (2, 3.5)]
    assert [e.step for e in events.Scalars("learner/critic_loss")] == [1]  # no value: no point
    assert events.Scalars("arm/safe")[0].value == 1.0
    assert "learner/w" not in events.Tags()["scalars"]


def test_rerun_gets_the_numbers_and_the_logged_transitions(tmp_path):
    pytest.importorskip("rerun", reason="the rerun extra is not installed")
    from acalign_robot.session.sinks import RerunSink
    from tests.log_helpers import record_sim_log

    log_dir = tmp_path / "arm" / "log"
    record_sim_log(log_dir, episodes=1, max_steps=40, chunk_transitions=16)
    path = tmp_path / "session.rrd"
    sink = RerunSink("s", {"arm": log_dir}, save_to=path, connect_url=None)
    sink.write(state(1.0, [[1, 10.0, 1]]))
    sink.write(state(2.0, [[1, 10.0, 1]]))  # no chunk twice
    sink.close()
    printed = subprocess.run(
        [sys.executable, "-m", "rerun", "rrd", "print", str(path)], capture_output=True, text=True, timeout=120
    )
    assert printed.returncode == 0, printed.stderr
    for entity in (
        "/arm/observation",
        "/arm/action/executed",
        "/arm/action/policy",
        "/arm/reward",
        "/arm/episode_return",
        "/arm/tick_p99_ms",
        "/learner/critic_loss",
    ):
        assert f" - {entity} - " in printed.stdout, (entity, printed.stdout[-3000:])
    rows = sum(
        int(line.split(" with ")[1].split(" rows")[0])
        for line in printed.stdout.splitlines()
        if line.startswith("Chunk(") and " - /arm/observation - " in line
    )
    logged = sum(len(np.load(chunk)["reward"]) for chunk in log_dir.glob("chunk-*.npz"))
    assert len(list(log_dir.glob("chunk-*.npz"))) > 1 and rows == logged  # every logged transition, each once


def test_sink_fields_are_checked(tmp_path):
    path = tmp_path / "launch.yaml"
    base = "session: s\nrobots:\n  - name: r\n    driver: {kind: loopback}\n    controller: {policy: p}\n"
    path.write_text(base + "sinks: {rerun: connect, rerun_url: 'http://x:1'}\n")
    with pytest.raises(ConfigError, match="sinks.rerun_url: expected rerun"):
        load_launch(path)
    path.write_text(base + "sinks: {rerun: always}\n")
    with pytest.raises(ConfigError, match="sinks.rerun"):
        load_launch(path)
    path.write_text(base + "sinks: {tensorboard: true, rerun: save}\n")
    sinks = load_launch(path).sinks
    assert sinks.tensorboard and sinks.rerun == "save"


def test_a_sink_whose_package_is_missing_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "rerun" else real(name))
    assert missing_sink_packages(tensorboard=False, rerun=True) == [
        "sinks.rerun: needs the rerun-sdk package (pip install 'acalign-robot[rerun]')"
    ]
    assert missing_sink_packages(tensorboard=False, rerun=False) == []
