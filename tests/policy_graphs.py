"""Hand-built ONNX policies for the hot-swap gate's tests: the artifact contract (obs -> action, mean, log_std with
the manifest's scaling), plus what a gate must refuse: a slow graph, a fixed batch, a rank-0 input, a saturating
mean offset, a wire version that is not the manifest's."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from acalign_robot.policy.manifest import OUTPUT_NAMES as OUTPUTS
from acalign_robot.policy.manifest import sha256_hex
from acalign_robot.wire import protocol as p


def graph_policy(
    manifest: dict,
    version: int,
    *,
    batch: str | int | None = "batch",
    matmuls: int = 0,
    mean_offset: float | tuple[float, ...] = 0.0,
    wire_version: int | None = None,
) -> p.Policy:
    """A constant policy: mean = `mean_offset` on every action (or one per action), log_std = -1, action =
    tanh(mean) scaled into the manifest's bounds. `batch`: the input's batch dimension ("batch": dynamic, an int:
    fixed, None: a rank-0 input). `matmuls` > 0 adds that many 512x512 MatMuls that depend on the input and add 0
    to the mean (a slow graph)."""
    obs_dim, action_dim = manifest["observation_space"]["dim"], manifest["action_space"]["dim"]
    low = np.asarray(manifest["action_space"]["low"], np.float32)
    high = np.asarray(manifest["action_space"]["high"], np.float32)
    constants = {
        "scale": (high - low) / 2,
        "offset": (high + low) / 2,
        "mean_bias": np.broadcast_to(np.asarray(mean_offset, np.float32), (action_dim,)).copy(),
        "log_std_bias": np.full(action_dim, -1.0, np.float32),
    }
    nodes = []
    if batch is None:  # obs is a scalar: broadcast against a (1, action_dim) row of zeros
        constants["zeros"] = np.zeros((1, action_dim), np.float32)
        nodes.append(helper.make_node("Mul", ["obs", "zeros"], ["linear"]))
        shape = []
    else:
        constants["zeros"] = np.zeros((obs_dim, action_dim), np.float32)
        nodes.append(helper.make_node("MatMul", ["obs", "zeros"], ["linear"]))
        shape = [batch, obs_dim]
    nodes.append(helper.make_node("Add", ["linear", "mean_bias"], ["mean_fast"]))
    if matmuls:
        constants["eye"] = np.eye(512, dtype=np.float32)
        constants["nothing"] = np.zeros((), np.float32)
        nodes += [
            helper.make_node("ReduceSum", ["obs"], ["total"], keepdims=0),
            helper.make_node("Mul", ["eye", "total"], ["x0"]),
            *[helper.make_node("MatMul", [f"x{i}", "eye"], [f"x{i + 1}"]) for i in range(matmuls)],
            helper.make_node("ReduceSum", [f"x{matmuls}"], ["y"], keepdims=0),
            helper.make_node("Mul", ["y", "nothing"], ["zero"]),
            helper.make_node("Add", ["mean_fast", "zero"], ["mean"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["mean_fast"], ["mean"]))
    nodes += [
        helper.make_node("Tanh", ["mean"], ["squashed"]),
        helper.make_node("Mul", ["squashed", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offset"], ["action"]),
        helper.make_node("Add", ["linear", "log_std_bias"], ["log_std"]),
    ]
    out_batch = 1 if batch is None else batch
    graph = helper.make_graph(
        nodes,
        "policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [out_batch, action_dim]) for n in OUTPUTS],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    manifest = {**manifest, "version": version, "onnx": {**manifest["onnx"], "sha256": sha256_hex(data)}}
    return p.Policy(version=version if wire_version is None else wire_version, onnx=data, manifest=manifest)
