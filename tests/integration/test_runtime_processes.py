"""Driver and controller as real processes on 127.0.0.1: MuJoCo, onnxruntime and ZeroMQ, no mocks."""

from __future__ import annotations

import json
import os
import random
import signal

import gymnasium as gym
import numpy as np
import pytest
import yaml
import zmq

from acalign_robot.robot_log.reader import read_log
from acalign_robot.wire import protocol as p
from acalign_robot.wire.channels import free_tcp_endpoint
from acalign_robot.wire.transport import ZmqControlClient
from tests.helpers import acalign_command, wait_for

pytestmark = pytest.mark.integration


def _write(path, data: dict):
    path.write_text(yaml.safe_dump(data))
    return path


def start_driver(processes, tmp_path, endpoint: str, **fields):
    config = _write(tmp_path / "driver.yaml", {"kind": "mujoco", "env_id": "Hopper-v5", "endpoint": endpoint, **fields})
    ready = tmp_path / "driver.ready"
    process = processes.start(
        acalign_command("driver", "--config", str(config), "--ready-file", str(ready)), tmp_path / "driver.log"
    )
    wait_for(lambda: ready.exists() or process.poll() is not None, 60, "the driver to bind")
    assert process.poll() is None, (tmp_path / "driver.log").read_text()
    return process


def driver_stats(endpoint: str) -> dict:
    with ZmqControlClient(endpoint) as client:
        reply = client.request(p.Stats(source="test", values={}), 5.0)
    assert isinstance(reply, p.Stats)
    return reply.values


def test_controller_drives_mujoco_driver_with_episode_resets(processes, tmp_path, hopper_policy):
    endpoint = free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint)
    config = _write(
        tmp_path / "controller.yaml",
        {
            "driver_endpoint": endpoint,
            "policy": str(hopper_policy),
            "ticks": 400,
            "output_dir": str(tmp_path / "ctl"),
        },
    )
    controller = processes.start(acalign_command("controller", "--config", str(config)), tmp_path / "controller.log")
    assert controller.wait(timeout=120) == 0, (tmp_path / "controller.log").read_text()
    stats = json.loads((tmp_path / "ctl" / "stats.json").read_text())
    assert stats["ticks"] == 400 and stats["episodes"] >= 2
    assert stats["driver_timeouts"] == 0 and not stats["safe"]
    assert stats["tick_p50_s"] > 0 and stats["target_rate_hz"] == pytest.approx(125.0)
    assert driver_stats(endpoint)["steps"] >= 400


def test_remote_env_passes_gymnasium_check_env(processes, tmp_path):
    from gymnasium.utils.env_checker import check_env

    from acalign_robot.drivers.remote_env import RemoteEnv

    endpoint = free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint)
    env = RemoteEnv(endpoint)
    try:
        check_env(env, skip_render_check=True)
        obs, _ = env.reset(seed=3)
        reference, _ = gym.make("Hopper-v5").reset(seed=3)
        np.testing.assert_allclose(obs, reference, atol=1e-6)
    finally:
        env.close()


def test_driver_survives_random_oversized_and_wrong_version_frames(processes, tmp_path):
    endpoint = free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint)
    rng = random.Random(0)
    context = zmq.Context()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(endpoint)
    try:
        frames = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))) for _ in range(200)]
        import msgpack

        frames.append(msgpack.packb({"v": 99, "t": "hello", "client_name": "x", "role": "y"}))
        frames.append(msgpack.packb({"v": p.PROTOCOL_VERSION, "t": "no-such-type"}))
        for index, frame in enumerate(frames):
            raw.send_multipart([index.to_bytes(8, "little"), frame])
        replies = 0
        while raw.poll(2000):
            request_id, reply = raw.recv_multipart()
            assert isinstance(p.decode(reply), p.Error)
            replies += 1
            if replies == len(frames):
                break
        assert replies == len(frames)
        raw.send_multipart([b"x", b"y" * (2 * 1024 * 1024)])  # over the control channel's 1 MiB: connection dropped
    finally:
        raw.close()
        context.term()
    stats = driver_stats(endpoint)
    assert stats["bad_requests"] == len(frames)
    with ZmqControlClient(endpoint) as client:
        assert isinstance(client.request(p.Hello(client_name="after", role="test"), 5.0), p.HelloReply)


def test_driver_watchdog_applies_safe_action_when_controller_is_killed(processes, tmp_path, hopper_policy):
    endpoint = free_tcp_endpoint()
    watchdog_ms = 100
    start_driver(processes, tmp_path, endpoint, watchdog_ms=watchdog_ms)
    config = _write(
        tmp_path / "controller.yaml",
        {
            "driver_endpoint": endpoint,
            "policy": str(hopper_policy),
            "duration_s": 60,
        },
    )
    controller = processes.start(acalign_command("controller", "--config", str(config)), tmp_path / "controller.log")
    wait_for(lambda: driver_stats(endpoint)["steps"] > 50, 60, "the controller to step the driver")
    os.kill(controller.pid, signal.SIGKILL)
    controller.wait(timeout=10)
    stats = wait_for(lambda: (s := driver_stats(endpoint))["watchdog_events"] >= 1 and s, 5, "the watchdog")
    assert stats["watchdog_safe_steps"] >= 1
    # the safe action is applied within the watchdog period plus the scheduling slack of a loaded 2-core machine
    assert stats["last_watchdog_latency_s"] < watchdog_ms / 1000 + 0.1


def test_controller_survives_garbage_on_its_policy_channel(processes, tmp_path, hopper_policy):
    endpoint, policy_endpoint = free_tcp_endpoint(), free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint)
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.bind(policy_endpoint)
    config = _write(
        tmp_path / "controller.yaml",
        {
            "driver_endpoint": endpoint,
            "policy": str(hopper_policy),
            "policy_endpoint": policy_endpoint,
            "duration_s": 4,
            "output_dir": str(tmp_path / "ctl"),
        },
    )
    try:
        controller = processes.start(
            acalign_command("controller", "--config", str(config)), tmp_path / "controller.log"
        )
        wait_for(lambda: (tmp_path / "ctl" / "status.json").exists(), 60, "the controller to run")
        import msgpack

        rng = np.random.default_rng(0)
        for frame in [rng.bytes(64), msgpack.packb({"v": 7, "t": "policy"}), rng.bytes(3)] * 5:
            publisher.send(frame)
        assert controller.wait(timeout=60) == 0, (tmp_path / "controller.log").read_text()
    finally:
        publisher.close()
        context.term()
    stats = json.loads((tmp_path / "ctl" / "stats.json").read_text())
    assert stats["swap_rejections"].get("protocol", 0) >= 1
    assert stats["policy_version"] == 1 and stats["ticks"] > 100


def _variant(policy_dir, version: int, fill: float | None):
    """A new version of an artifact: its ONNX weights perturbed slightly, or all set to `fill` (e.g. NaN)."""
    import onnx
    from onnx import numpy_helper

    from acalign_robot.policy.manifest import sha256_hex

    model = onnx.load_from_string((policy_dir / "policy.onnx").read_bytes())
    manifest = json.loads((policy_dir / "manifest.json").read_text())
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32 and values.ndim == 2:
            changed = np.full_like(values, fill) if fill is not None else values * np.float32(1.001)
            tensor.CopyFrom(numpy_helper.from_array(changed, tensor.name))
    data = model.SerializeToString()
    manifest = {**manifest, "version": version, "onnx": {**manifest["onnx"], "sha256": sha256_hex(data)}}
    return p.Policy(version=version, onnx=data, manifest=manifest)


def test_a_nan_policy_is_rejected_and_a_good_one_swapped_in(processes, tmp_path, hopper_policy):
    from acalign_robot.wire.transport import ZmqPolicyPublisher

    endpoint, policy_endpoint = free_tcp_endpoint(), free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint)
    config = _write(
        tmp_path / "controller.yaml",
        {
            "driver_endpoint": endpoint,
            "policy": str(hopper_policy),
            "policy_endpoint": policy_endpoint,
            "duration_s": 8,
            "output_dir": str(tmp_path / "ctl"),
        },
    )
    with ZmqPolicyPublisher(policy_endpoint) as publisher:
        controller = processes.start(
            acalign_command("controller", "--config", str(config)), tmp_path / "controller.log"
        )
        status = tmp_path / "ctl" / "status.json"
        wait_for(lambda: status.exists(), 60, "the controller to run")
        bad = _variant(hopper_policy, 2, float("nan"))
        wait_for(
            lambda: publisher.send(bad) and json.loads(status.read_text()).get("swap_rejections"),
            10,
            "the NaN policy to be rejected",
            interval_s=0.3,
        )
        assert json.loads(status.read_text())["policy_version"] == 1
        good = _variant(hopper_policy, 3, None)
        wait_for(
            lambda: publisher.send(good) and json.loads(status.read_text())["policy_version"] == 3,
            10,
            "the good policy to be swapped in",
            interval_s=0.3,
        )
        assert controller.wait(timeout=60) == 0, (tmp_path / "controller.log").read_text()
    stats = json.loads((tmp_path / "ctl" / "stats.json").read_text())
    assert stats["swap_rejections"].get("artifact", 0) + stats["swap_rejections"].get("nonfinite", 0) >= 1
    assert stats["swaps"] == 1 and stats["policy_version"] == 3 and not stats["safe"]
    log = read_log(tmp_path / "ctl" / "log")
    assert set(np.unique(log.policy_version)) <= {1, 3} and 3 in log.policy_version


def test_a_frozen_driver_latches_the_controller_safe_within_its_timeout(processes, tmp_path, hopper_policy):
    endpoint = free_tcp_endpoint()
    driver = start_driver(processes, tmp_path, endpoint)
    config = _write(
        tmp_path / "controller.yaml",
        {
            "driver_endpoint": endpoint,
            "policy": str(hopper_policy),
            "duration_s": 6,
            "driver_timeout_ms": 50,
            "output_dir": str(tmp_path / "ctl"),
        },
    )
    controller = processes.start(acalign_command("controller", "--config", str(config)), tmp_path / "controller.log")
    wait_for(lambda: (tmp_path / "ctl" / "status.json").exists(), 60, "the controller to run")
    os.kill(driver.pid, signal.SIGSTOP)
    try:
        assert controller.wait(timeout=60) == 0, (tmp_path / "controller.log").read_text()
    finally:
        os.kill(driver.pid, signal.SIGCONT)
    stats = json.loads((tmp_path / "ctl" / "stats.json").read_text())
    assert stats["safe"] and stats["safe_reason"].startswith("no reply from the driver")
    assert stats["driver_timeouts"] >= 1
    assert 0.05 <= stats["safe_reaction_s"] < 0.05 + 0.1  # the timeout, plus one tick's slack on a loaded machine


def test_nan_observations_latch_safe_and_every_transition_is_logged(processes, tmp_path, hopper_policy):
    sim = _write(tmp_path / "sim.yaml", {"env_id": "Hopper-v5", "realism": {"nan_observation_probability": 0.02}})
    endpoint = free_tcp_endpoint()
    start_driver(processes, tmp_path, endpoint, env_id=None, sim=str(sim))
    config = _write(
        tmp_path / "controller.yaml",
        {
            "driver_endpoint": endpoint,
            "policy": str(hopper_policy),
            "ticks": 500,
            "output_dir": str(tmp_path / "ctl"),
        },
    )
    controller = processes.start(acalign_command("controller", "--config", str(config)), tmp_path / "controller.log")
    assert controller.wait(timeout=120) == 0, (tmp_path / "controller.log").read_text()
    stats = json.loads((tmp_path / "ctl" / "stats.json").read_text())
    assert stats["safe"] and stats["safe_reason"] == "policy produced a non-finite action"
    assert stats["filter_nonfinite"] >= 1 and stats["filter_safe_ticks"] > 0
    log = read_log(tmp_path / "ctl" / "log")
    assert len(log.reward) == stats["ticks"]  # no executed transition missing from the durable log
    assert np.all(np.isfinite(log.action))  # what was executed was always finite (the safe action after the fault)
