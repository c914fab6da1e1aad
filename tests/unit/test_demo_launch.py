"""`acalign demo` builds its launch config in code: it is validated like a loaded launch file before anything runs."""

from __future__ import annotations

import pytest

from acalign_robot import demo
from acalign_robot.config import ConfigError
from acalign_robot.session import schema, supervisor


def test_the_demo_session_is_validated_before_it_runs(tmp_path, monkeypatch):
    started = []

    class RecordingSupervisor:
        def __init__(self, config, session_dir):
            started.append(config)

        def run(self) -> dict:
            return {}

    monkeypatch.setattr(schema, "check_session", lambda config: [])  # no checkpoint or artifact here
    monkeypatch.setattr(supervisor, "Supervisor", RecordingSupervisor)
    demo._launch(demo.DemoConfig(), tmp_path / "aligned.pt", tmp_path / "policy", tmp_path)
    assert len(started) == 1 and started[0].session == "demo"
    with pytest.raises(ConfigError, match=r"^the demo's launch config: duration_s: must be positive, got 0\.0$"):
        demo._launch(demo.DemoConfig(session_s=0.0), tmp_path / "aligned.pt", tmp_path / "policy", tmp_path)
    assert len(started) == 1
