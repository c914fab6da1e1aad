"""kill -9 of a process writing a transition log leaves every closed chunk whole and readable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from acalign_robot.robot_log.reader import read_log
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

# Writes 16-transition batches as fast as it can (4 batches per chunk) until it is killed.
WRITER = """
import sys
from acalign_robot.robot_log.transition_log import TransitionLog
from tests.log_helpers import synthetic_batch

log = TransitionLog(sys.argv[1], "test-0", chunk_transitions=64)
seq = 0
while True:
    log.write(synthetic_batch(seq, 16, 16 * seq))
    seq += 1
    if seq % 8 == 0:
        import time; time.sleep(0.001)  # let the writer thread keep up: this test is about kills, not drops
"""


def test_kill_9_while_writing_leaves_every_closed_chunk_readable(tmp_path):
    directory = tmp_path / "log"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)],
        cwd=REPO_ROOT,  # the script imports tests.log_helpers
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: process.poll() is not None or len(list(directory.glob("chunk-*.npz"))) >= 5,
            timeout_s=30,
            what="five closed chunks",
        )
        assert process.poll() is None, process.stderr.read().decode()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        process.stderr.close()

    data = read_log(directory)
    chunks = len(data.chunks)
    assert chunks >= 5
    # Closed chunks hold whole 64-transition chunks, in order, with nothing missing or repeated.
    assert len(data) == 64 * chunks
    np.testing.assert_array_equal(data.seq, np.repeat(np.arange(4 * chunks), 16))
    np.testing.assert_array_equal(data.obs[:, 0], np.arange(64 * chunks, dtype=np.float32))
    np.testing.assert_array_equal(data.extras["safety_flags"], np.arange(64 * chunks) % 16)
