"""Sessions across machines, for real: Linux network namespaces as hosts, joined by a bridge, CURVE on the links.

Each "host" is a network namespace with its own address on 10.200.0.0/24 and its own working directory (its keys,
its session directory), so nothing passes between hosts but TCP over the bridge. The same launch file goes to every
host and each runs `acalign launch --host NAME FILE`, as on real machines (docs/deploy.md). Checked:

- two hosts: the robot (MuJoCo driver + exploring controller) and the workstation (learner) fine-tune over CURVE; the
  robot's controller ends on a policy version above 1 and the learner counts no gaps;
- a third namespace is refused: a raw DEALER finds no control port (the driver binds loopback), a SUB without CURVE
  and one with a key nobody allow-listed receive no policy, and their pushed transitions never reach the learner;
  the same attempts with the robot's allow-listed key succeed from there (so the refusals are the keys' doing);
- a fleet: two robot hosts feed one learner.

Namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2; elsewhere the tests skip and say why. Everything
is torn down even when a test fails: every process in a test's namespaces is killed, then the namespaces are deleted
(which removes their veth pairs and the bridge).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
import zmq

from tests.helpers import acalign_command

# One network-namespace test at a time: they share the subnet, the namespace names and the fixed ports.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180), pytest.mark.xdist_group("network-namespaces")]

SUBNET = "10.200.0"
WORKSTATION = f"{SUBNET}.2"
TRANSITIONS, POLICY = f"tcp://{WORKSTATION}:7000", f"tcp://{WORKSTATION}:7001"
CONTROL_PORT = 7100  # every robot's driver binds it on its own loopback
RUN_TIMEOUT_S = 100  # from the first start to every controller on version 2 or above


def _namespace_problem() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating network namespaces (ip netns add) needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    if not zmq.has("curve"):
        return "libzmq without CURVE"
    return None


if (_problem := _namespace_problem()) is not None:
    pytestmark.append(pytest.mark.skip(reason=_problem))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Network:
    """Namespaces PREFIX-HOST, each with `eth0` at its address and `lo` up, bridged in a switch namespace PREFIX-sw.

    `create` builds it, `start` runs a command inside a host (own process group, output to a log file); `close`
    kills every process left in the namespaces, then deletes them, also after a partial `create`.
    """

    def __init__(self):
        self.prefix = f"aca{os.getpid()}{secrets.token_hex(2)}"
        self.created: list[str] = []
        self.started: list[tuple[subprocess.Popen, object]] = []

    def create(self, addresses: dict[str, str]) -> None:
        switch = self._add("sw")
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for index, (host, address) in enumerate(addresses.items()):
            namespace = self._add(host)
            port = f"p{index}"
            _ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("-n", switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")  # down in a new namespace; the control link uses it

    def _add(self, name: str) -> str:
        namespace = f"{self.prefix}-{name}"
        _ip("netns", "add", namespace)
        self.created.append(namespace)
        return namespace

    def start(self, host: str, args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
        handle = open(log, "w")
        process = subprocess.Popen(
            ["ip", "netns", "exec", f"{self.prefix}-{host}", *args],
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process.log_path = log
        self.started.append((process, handle))
        return process

    def run(self, host: str, args: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
        command = ["ip", "netns", "exec", f"{self.prefix}-{host}", *args]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)

    def close(self) -> None:
        # The supervisors' children run in process groups of their own: find them by namespace, not by parent.
        for namespace in self.created:
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
            for pid in map(int, pids):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
        for process, handle in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            handle.close()
        for namespace in reversed(self.created):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@pytest.fixture
def network() -> Iterator[Callable[[dict[str, str]], Network]]:
    """Factory: `network({"robot": "10.200.0.1", ...})`; a platform that refuses namespaces or veths skips.

    A first namespace is made and deleted at once, before the test's other (slower) fixtures are set up.
    """
    probe = Network()
    try:
        probe.create({})
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: `{' '.join(exc.cmd)}`: {exc.stderr.strip()}")
    finally:
        probe.close()
    made: list[Network] = []

    def make(addresses: dict[str, str]) -> Network:
        net = Network()
        made.append(net)
        try:
            net.create(addresses)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create network namespaces here: `{' '.join(exc.cmd)}`: {exc.stderr.strip()}")
        return net

    try:
        yield make
    finally:
        for net in made:
            net.close()


# --- one host's working directory, as on its own machine -----------------------------------------------------------


def keys_generate(directory: Path, name: str) -> Path:
    result = subprocess.run(
        acalign_command("keys", "generate", name, "--dir", str(directory / "keys")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return directory / "keys" / f"{name}.key"


def make_hosts(tmp_path: Path, robots: list[str]) -> dict[str, Path]:
    """Working directories: the workstation's key pair and allow-list, each robot's own `robot` key pair."""
    workstation = tmp_path / "workstation"
    learner_public = keys_generate(workstation, "learner")
    (workstation / "keys" / "clients").mkdir()
    directories = {"workstation": workstation}
    for robot in robots:
        directory = tmp_path / robot
        robot_public = keys_generate(directory, "robot")  # every robot calls its pair `robot`: one launch file
        shutil.copy(robot_public, workstation / "keys" / "clients" / f"{robot}.key")
        shutil.copy(learner_public, directory / "keys" / "learner.key")
        directories[robot] = directory
    return directories


def write_launch(tmp_path: Path, robots: list[str], policy: Path, checkpoint: Path) -> Path:
    data = {
        "session": "across",
        "output_dir": "sessions",  # relative: each host's own working directory
        "robots": [
            {
                "name": f"hopper-{host}",
                "host": host,
                "control_endpoint": f"tcp://127.0.0.1:{CONTROL_PORT}",
                "driver": {"kind": "mujoco", "env_id": "Hopper-v5", "watchdog_ms": 500},
                # Generous timeouts: 5+ processes share 2 busy cores here; a driver timeout would latch SAFE, and a
                # learner that the load (and its ONNX exports) keeps from its socket for over resend_after_s (2 s by
                # default) is sent again what is still in its queue: refused as duplicates, which this test counts as
                # a fault of the fleet's wiring. Resends are tested in test_learner_process.py and test_delivery.py.
                "controller": {
                    "policy": str(policy),
                    "explore": True,
                    "driver_timeout_ms": 400,
                    "resend_after_s": 10.0,
                },
            }
            for host in robots
        ],
        "learner": {
            "checkpoint": str(checkpoint),
            "device": "cpu",
            "publish_every": 100,
            "republish_every_s": 1.0,
            "checkpoint_every_updates": 1_000_000,
        },
        "learner_host": "workstation",
        "endpoints": {"transitions": TRANSITIONS, "policy": POLICY},
        "security": {
            "curve": True,
            "keys_dir": "keys",
            "server_key": "learner",
            "client_key": "robot",
            "authorized_clients_dir": "keys/clients",
        },
        "ready_timeout_s": 90,
    }
    path = tmp_path / "across.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def part_dir(directory: Path, host: str) -> Path | None:
    found = sorted((directory / "sessions" / "across").glob(f"*-{host}"))
    return found[-1] if found else None


def logs_of(supervisors: dict[str, subprocess.Popen], directories: dict[str, Path]) -> str:
    """Each supervisor's output and the last lines of its processes' logs, for a failure message."""
    parts = []
    for host, process in supervisors.items():
        parts.append(
            f"--- {host} (exit {process.poll()}):\n{Path(process.log_path).read_text(errors='replace')[-3000:]}"
        )
        session = part_dir(directories[host], host)
        for log in sorted(session.glob("*.log")) if session else []:
            parts.append(f"--- {host}/{log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(parts)


def run_session(
    net: Network, launch: Path, directories: dict[str, Path], robots: list[str]
) -> tuple[dict[str, dict], dict[str, subprocess.Popen]]:
    """Start every host's part, wait for each controller to run version 2+, stop the robots.

    Returns the robots' controller stats and the supervisors. The workstation is still running (the caller stops
    it): the robots' last batches have been flushed and the learner can still be probed.
    """
    hosts = ["workstation", *robots]
    supervisors = {
        host: net.start(
            host,
            acalign_command("launch", "--host", host, str(launch)),
            directories[host],
            directories[host].parent / f"{host}.out",
        )
        for host in hosts
    }

    def controller_file(host: str, name: str) -> Path | None:
        session = part_dir(directories[host], host)
        return session / f"hopper-{host}" / name if session else None

    deadline = time.monotonic() + RUN_TIMEOUT_S
    waiting = set(robots)
    while waiting:
        for host, process in supervisors.items():
            assert process.poll() is None, f"{host} stopped early\n{logs_of(supervisors, directories)}"
        for host in list(waiting):
            status = read_json(controller_file(host, "status.json")) if controller_file(host, "status.json") else None
            if status and status.get("policy_version", 0) >= 2 and status.get("ticks", 0) >= 300:
                waiting.discard(host)
        assert time.monotonic() < deadline, (
            f"no policy above version 1 at {waiting}\n{logs_of(supervisors, directories)}"
        )
        time.sleep(0.5)
    for host in robots:  # SIGTERM: the safe stop; controllers flush their last batch and write stats.json
        supervisors[host].send_signal(signal.SIGTERM)
    for host in robots:
        assert supervisors[host].wait(timeout=60) == 0, logs_of(supervisors, directories)
    stats = {host: read_json(controller_file(host, "stats.json")) for host in robots}
    assert all(stats.values()), f"a controller wrote no stats.json\n{logs_of(supervisors, directories)}"
    return stats, supervisors


def robot_stream(learner: dict, host: str) -> dict | None:
    """The learner's record of a robot's controller (its stream id is `<controller_id>@<pid>`)."""
    streams = [s for cid, s in learner["controllers"].items() if cid.split("@")[0] == f"hopper-{host}"]
    assert len(streams) <= 1, learner["controllers"]
    return streams[0] if streams else None


def stop_workstation(
    supervisors: dict[str, subprocess.Popen], directories: dict[str, Path], stats: dict[str, dict]
) -> dict:
    """Once the learner has taken every batch the robots sent, SIGTERM the workstation's part; returns the learner's
    final status. (A stopping learner does not drain its socket: waiting first makes a lost batch a failure.)"""
    status_file = part_dir(directories["workstation"], "workstation") / "learner" / "status.json"

    def caught_up() -> bool:
        learner = read_json(status_file)
        streams = {host: learner and robot_stream(learner, host) for host in stats}
        return all(s and s["batches"] >= stats[host]["transition_batches_sent"] for host, s in streams.items())

    deadline = time.monotonic() + 30
    while not caught_up():
        assert time.monotonic() < deadline, f"the learner never took every batch: {read_json(status_file)}"
        time.sleep(0.5)
    supervisor = supervisors["workstation"]
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=90) == 0, logs_of(supervisors, directories)
    status = read_json(status_file)
    assert status is not None and status["state"] == "stopped", status
    return status


def check_streams(learner: dict, stats: dict[str, dict]) -> None:
    """Every robot's transitions arrived, in order and complete: no gaps, no duplicates, nothing dropped."""
    assert learner["gaps"] == learner["duplicates"] == learner["rejected"] == learner["protocol_errors"] == 0, learner
    for host, robot_stats in stats.items():
        assert robot_stats["policy_version"] >= 2 and robot_stats["swaps"] >= 1, robot_stats
        assert robot_stats["transition_batches_dropped"] == 0, robot_stats
        stream = robot_stream(learner, host)
        assert stream["batches"] == robot_stats["transition_batches_sent"] > 0, (stream, robot_stats)
        assert stream["transitions"] == robot_stats["ticks"], (stream, robot_stats)  # the last, partial batch too


# --- a host nobody allow-listed --------------------------------------------------------------------------------------

INTRUDER = """
import json, sys, time
import numpy as np, zmq, zmq.auth
from acalign_robot.wire import protocol as p

args = json.loads(sys.argv[1])
context = zmq.Context()
server_public, _ = zmq.auth.load_certificate(args["learner_public"])
listed = zmq.auth.load_certificate(args["listed_secret"])  # the robot's own pair: the positive control
keys = {"none": None, "unlisted": zmq.curve_keypair(), "listed": listed}

def connect(kind, endpoint, key_pair):
    socket = context.socket(kind)
    socket.linger = 0
    if key_pair is not None:
        socket.curve_publickey, socket.curve_secretkey = key_pair
        socket.curve_serverkey = server_public
    if kind == zmq.SUB:
        socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(endpoint)
    return socket

result = {}
# A raw DEALER without CURVE to the robot's control port: the driver binds it on the robot's loopback only.
dealer = connect(zmq.DEALER, args["control"], None)
dealer.sndtimeo = 1000
try:
    dealer.send_multipart([(1).to_bytes(8, "big"), p.encode(p.Hello(client_name="intruder", role="controller"))])
    result["control_reply"] = bool(dealer.poll(2000))
except zmq.Again:
    result["control_reply"] = False  # not even a connection to queue the request on

subscribers = {name: connect(zmq.SUB, args["policy"], pair) for name, pair in keys.items()}
pushers = {name: connect(zmq.DEALER, args["transitions"], pair) for name, pair in keys.items()}
rng = np.random.default_rng(0)
for name, pusher in pushers.items():
    batch = p.TransitionBatch(
        stream_id=f"intruder-{name}", seq=0, policy_version=np.ones(4, np.int64),
        obs=rng.normal(size=(4, 11)).astype(np.float32), action=np.zeros((4, 3), np.float32),
        reward=np.zeros(4, np.float32), next_obs=rng.normal(size=(4, 11)).astype(np.float32),
        terminated=np.zeros(4, bool), truncated=np.zeros(4, bool), extras={},
    )
    try:
        pusher.send(p.encode(batch), zmq.NOBLOCK)
    except zmq.Again:
        pass  # no completed handshake, nothing to queue on: refused too
received = {name: False for name in subscribers}
deadline = time.monotonic() + 4.0  # the learner re-publishes every second
while time.monotonic() < deadline:
    for name, socket in subscribers.items():
        if socket.poll(50):
            socket.recv()
            received[name] = True
result["policy_received"] = received
time.sleep(1.0)  # let an accepted push land before the sockets close
print(json.dumps(result))
"""


def probe_as_intruder(net: Network, directories: dict[str, Path]) -> dict:
    args = {
        "control": f"tcp://{SUBNET}.1:{CONTROL_PORT}",
        "policy": POLICY,
        "transitions": TRANSITIONS,
        "learner_public": str(directories["workstation"] / "keys" / "learner.key"),
        "listed_secret": str(directories["robot"] / "keys" / "robot.key_secret"),
    }
    result = net.run(
        "intruder", [sys.executable, "-c", INTRUDER, json.dumps(args)], directories["robot"].parent, timeout_s=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_robot_and_workstation_fine_tune_over_curve_and_strangers_are_refused(
    tmp_path, network, hopper_policy, aligned_hopper_checkpoint
):
    net = network({"robot": f"{SUBNET}.1", "workstation": WORKSTATION, "intruder": f"{SUBNET}.3"})
    directories = make_hosts(tmp_path, ["robot"])
    launch = write_launch(tmp_path, ["robot"], hopper_policy, aligned_hopper_checkpoint)
    for host in ("robot", "workstation"):
        result = net.run(host, acalign_command("validate", "--host", host, str(launch)), directories[host], 120)
        assert result.returncode == 0, result.stdout + result.stderr

    stats, supervisors = run_session(net, launch, directories, ["robot"])
    intruder = probe_as_intruder(net, directories)
    learner = stop_workstation(supervisors, directories, stats)

    check_streams(learner, stats)
    assert learner["published_version"] >= stats["robot"]["policy_version"]
    assert intruder["control_reply"] is False
    assert intruder["policy_received"] == {"none": False, "unlisted": False, "listed": True}
    intruders = sorted(cid for cid in learner["controllers"] if cid.startswith("intruder-"))
    assert intruders == ["intruder-listed"]


def test_a_fleet_of_two_robot_hosts_feeds_one_learner(tmp_path, network, hopper_policy, aligned_hopper_checkpoint):
    net = network({"robot1": f"{SUBNET}.11", "robot2": f"{SUBNET}.12", "workstation": WORKSTATION})
    directories = make_hosts(tmp_path, ["robot1", "robot2"])
    launch = write_launch(tmp_path, ["robot1", "robot2"], hopper_policy, aligned_hopper_checkpoint)

    stats, supervisors = run_session(net, launch, directories, ["robot1", "robot2"])
    learner = stop_workstation(supervisors, directories, stats)

    check_streams(learner, stats)
    assert len(learner["controllers"]) == 2
