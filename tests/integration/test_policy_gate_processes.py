"""The hot-swap gate against real driver and controller processes, ZeroMQ and onnxruntime (issue 16, items 4 and 11):
odd graphs, a slow one, a saturating one and a mismatched wire version are each refused once, counted by reason,
and the next good version still gets in."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from acalign_robot.robot_log.reader import read_log
from acalign_robot.wire.channels import free_tcp_endpoint
from acalign_robot.wire.transport import ZmqPolicyPublisher
from tests.helpers import acalign_command, wait_for
from tests.integration.test_runtime_processes import _write, start_driver
from tests.policy_graphs import graph_policy

pytestmark = pytest.mark.integration


def test_the_gate_refuses_each_bad_version_by_reason_and_swaps_the_good_one_once(processes, tmp_path, hopper_policy):
    endpoint, policy_endpoint = free_tcp_endpoint(), free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint)
    manifest = json.loads((hopper_policy / "manifest.json").read_text())
    config = _write(
        tmp_path / "controller.yaml",
        {
            "driver_endpoint": endpoint,
            "policy": str(hopper_policy),
            "policy_endpoint": policy_endpoint,
            "duration_s": 60,
            "stats_every_s": 0.2,
            "output_dir": str(tmp_path / "ctl"),
        },
    )
    status = tmp_path / "ctl" / "status.json"
    bad = [
        ("artifact", graph_policy(manifest, 2, batch=None)),  # rank-0 input: killed the swapper before
        ("artifact", graph_policy(manifest, 3, batch=1)),  # fixed batch of 1: onnxruntime's own error before
        ("latency", graph_policy(manifest, 4, matmuls=3)),  # ~10-20 ms per call at 125 Hz (budget 2 ms)
        ("saturated", graph_policy(manifest, 5, mean_offset=1e30)),  # every action at its bound
        ("version", graph_policy(manifest, 7, wire_version=6)),  # wire 6, manifest 7
    ]
    with ZmqPolicyPublisher(policy_endpoint) as publisher:
        controller = processes.start(
            acalign_command("controller", "--config", str(config)), tmp_path / "controller.log"
        )
        wait_for(lambda: status.exists(), 60, "the controller to run")
        expected: dict[str, int] = {}
        for reason, message in bad:
            expected[reason] = expected.get(reason, 0) + 1

            def refused(message=message, reason=reason) -> bool:
                publisher.send(message)
                return json.loads(status.read_text())["swap_rejections"].get(reason, 0) >= expected[reason]

            wait_for(refused, 20, f"version {message.version} to be refused ({reason})", interval_s=0.1)
        good = graph_policy(manifest, 8)
        wait_for(
            lambda: publisher.send(good) and json.loads(status.read_text())["policy_version"] == 8,
            20,
            "the good version to be swapped in",
            interval_s=0.1,
        )
        for _ in range(10):  # re-published, as a learner does: nothing is judged or swapped again
            publisher.send(good)
            publisher.send(bad[-1][1])
            time.sleep(0.05)
        controller.terminate()
        assert controller.wait(timeout=60) == 0, (tmp_path / "controller.log").read_text()
    stats = json.loads((tmp_path / "ctl" / "stats.json").read_text())
    assert stats["swap_rejections"] == expected, stats["last_rejection"]
    assert stats["swaps"] == 1 and [entry[0] for entry in stats["swap_log"]] == [8]
    assert stats["swapper_alive"] and stats["swapper_error"] == "" and not stats["safe"]
    log = read_log(tmp_path / "ctl" / "log")
    assert set(np.unique(log.policy_version)) == {1, 8}
