"""Real-time scheduling (realtime.py) on real driver and controller processes: with `realtime.priority` set,
the control path (the main thread, ZeroMQ's threads) runs SCHED_FIFO and the threads off it do not; where this user
may not use SCHED_FIFO, the process refuses to start with exit code 2 and says how to allow it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from acalign_robot.wire.channels import free_tcp_endpoint
from tests.helpers import acalign_command, wait_for

pytestmark = pytest.mark.integration


def fifo_allowed() -> bool:
    """Whether this user may use SCHED_FIFO (tried in a throwaway child: the test process keeps its scheduling)."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def threads_by_policy(pid: int) -> dict[str, set[str]]:
    """'fifo' / 'other': the threads of `pid` under each policy, as 'main' or their kernel name (comm)."""
    found: dict[str, set[str]] = {"fifo": set(), "other": set()}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            policy = os.sched_getscheduler(int(tid))
            name = "main" if int(tid) == pid else open(f"/proc/{pid}/task/{tid}/comm").read().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        found["fifo" if policy == os.SCHED_FIFO else "other"].add(name)
    return found


def write_config(path, fields: dict):
    path.write_text(yaml.safe_dump(fields))
    return str(path)


def without_sched_fifo_permission() -> list[str]:
    """A command prefix that runs a child without the right to use SCHED_FIFO (skips the test where none can)."""
    if not fifo_allowed():
        return []
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice"]  # root without CAP_SYS_NICE
    pytest.skip("this user may use SCHED_FIFO (an rtprio limit) and cannot drop the right")


def driver_config(tmp_path, endpoint: str) -> str:
    fields = {"kind": "mujoco", "env_id": "Hopper-v5", "endpoint": endpoint, "realtime": {"priority": 1}}
    return write_config(tmp_path / "driver.yaml", fields)


def test_the_permitted_priority_agrees_with_what_the_kernel_allows():
    """What `acalign doctor` reports (max_fifo_priority) against an actual attempt, with the right and without it."""
    probe = "from acalign_robot.realtime import max_fifo_priority; print(max_fifo_priority())"
    reported = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert (reported >= 1) == fifo_allowed()
    if reported:
        dropped = subprocess.run(
            [*without_sched_fifo_permission(), sys.executable, "-c", probe], capture_output=True, text=True, check=True
        )
        assert int(dropped.stdout) == 0


@pytest.mark.skipif(not hasattr(os, "SCHED_FIFO"), reason="SCHED_FIFO is Linux only")
def test_without_the_right_to_sched_fifo_the_driver_refuses_to_start(processes, tmp_path):
    command = [
        *without_sched_fifo_permission(),
        *acalign_command("driver", "--config", driver_config(tmp_path, free_tcp_endpoint())),
    ]
    driver = processes.start(command, tmp_path / "driver.log")
    assert driver.wait(timeout=60) == 2
    message = (tmp_path / "driver.log").read_text()
    assert "driver.realtime.priority 1" in message and "CAP_SYS_NICE" in message


@pytest.mark.skipif(not hasattr(os, "SCHED_FIFO") or not fifo_allowed(), reason="SCHED_FIFO is not permitted here")
def test_control_path_runs_sched_fifo_and_the_helper_threads_do_not(processes, tmp_path, hopper_policy):
    endpoint = free_tcp_endpoint()
    driver_ready = tmp_path / "driver.ready"
    driver = processes.start(
        acalign_command("driver", "--config", driver_config(tmp_path, endpoint), "--ready-file", str(driver_ready)),
        tmp_path / "driver.log",
    )
    wait_for(lambda: driver_ready.exists() or driver.poll() is not None, 60, "the driver to bind")
    assert driver.poll() is None, (tmp_path / "driver.log").read_text()
    driver_threads = threads_by_policy(driver.pid)
    assert {"main", "ZMQbg/IO/0"} <= driver_threads["fifo"], driver_threads

    controller_config = {
        "driver_endpoint": endpoint,
        "policy": str(hopper_policy),
        "duration_s": 30.0,
        "output_dir": str(tmp_path / "ctl"),  # the durable log's writer thread
        "policy_endpoint": free_tcp_endpoint(),  # the policy swapper thread (nothing is ever published)
        "realtime": {"priority": 1},
    }
    controller_ready = tmp_path / "controller.ready"
    controller = processes.start(
        acalign_command(
            "controller",
            "--config",
            write_config(tmp_path / "controller.yaml", controller_config),
            "--ready-file",
            str(controller_ready),
        ),
        tmp_path / "controller.log",
    )
    wait_for(lambda: controller_ready.exists() or controller.poll() is not None, 60, "the controller's handshake")
    assert controller.poll() is None, (tmp_path / "controller.log").read_text()
    threads = wait_for(lambda: threads_by_policy(controller.pid), 5, "the controller's threads")
    # The control thread and ZeroMQ's threads: real-time. Everything else real-time would be a thread that inherited
    # the policy without needing it (the swapper and the log writer step down as they start).
    assert {"main", "ZMQbg/IO/0"} <= threads["fifo"], threads
    assert all(name == "main" or name.startswith("ZMQbg/") for name in threads["fifo"]), threads
    assert threads["other"], "the swapper and the log writer should run under the normal scheduler"
