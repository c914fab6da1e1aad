"""Helpers shared by tests (importable as tests.helpers)."""

from __future__ import annotations

import numpy as np


def make_episodes(count: int, obs_dim: int = 11, action_dim: int = 3, seed: int = 0, length: int = 20):
    """Synthetic episodes with known returns; episode i ends terminated when i is even, truncated when odd."""
    from acalign_robot.data.datasets import EpisodeRecord

    rng = np.random.default_rng(seed)
    episodes = []
    for index in range(count):
        steps = length + index
        terminations = np.zeros(steps, dtype=bool)
        truncations = np.zeros(steps, dtype=bool)
        (terminations if index % 2 == 0 else truncations)[-1] = True
        episodes.append(
            EpisodeRecord(
                observations=rng.normal(size=(steps + 1, obs_dim)).astype(np.float32),
                actions=rng.uniform(-1, 1, size=(steps, action_dim)).astype(np.float32),
                rewards=np.full(steps, float(index), dtype=np.float32),
                terminations=terminations,
                truncations=truncations,
                seed=index,
            )
        )
    return episodes


class Processes:
    """Child processes started in their own sessions, all killed (whole process groups) by `close()`.

    Use as a context manager or through the `processes` fixture so that nothing survives a failing test.
    """

    def __init__(self):
        import subprocess

        self._subprocess = subprocess
        self.started: list = []

    def start(self, args: list[str], log_path, env: dict | None = None):
        import os

        handle = open(log_path, "w")
        process = self._subprocess.Popen(
            args,
            stdout=handle,
            stderr=self._subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        process.log_path = log_path
        self.started.append((process, handle))
        return process

    def close(self) -> None:
        import contextlib
        import os
        import signal

        for process, handle in self.started:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def acalign_command(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "acalign_robot.cli", *args]


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
