"""`acalign doctor`: per-role tables, exit codes, and a controller check that never needs torch.

A robot computer without torch is simulated by a process whose imports of torch, onnx and onnxscript fail (as in
test_controller_side_imports.py).
"""

from __future__ import annotations

import subprocess
import sys

from acalign_robot.doctor import FAIL, OK, format_report, run_checks

BLOCKED_CLI = """
import sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "onnx", "onnxscript"}:
            raise ImportError(f"No module named {name!r} (blocked)")
        return None

sys.meta_path.insert(0, Blocked())
from acalign_robot.cli import main
code = main(sys.argv[1:])
print("torch imported:", any(m.split(".")[0] == "torch" for m in sys.modules))
sys.exit(code)
"""


def doctor_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_CLI, "doctor", *args], capture_output=True, text=True, timeout=120
    )


def test_the_controller_role_is_complete_without_torch():
    result = doctor_without_torch("--role", "controller")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[1]: line.split()[2] for line in result.stdout.splitlines()[1:] if len(line.split()) > 2}
    for name in ("numpy", "zmq", "msgpack", "onnxruntime", "yaml", "zmq.curve", "onnxruntime.providers"):
        assert rows[name] == OK, name
    assert "CPUExecutionProvider" in result.stdout and "controller: ready" in result.stdout
    assert "torch imported: False" in result.stdout


def test_a_learner_without_torch_is_reported_missing_with_exit_1():
    result = doctor_without_torch("--role", "learner")
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {line.split()[1]: line.split()[2] for line in result.stdout.splitlines()[1:] if len(line.split()) > 2}
    assert rows["torch"] == rows["onnx"] == rows["onnxscript"] == rows["acalign_robot.learner.process"] == FAIL
    assert rows["numpy"] == rows["zmq"] == OK  # the controller's modules are part of the learner's role
    assert "learner: NOT READY (torch, onnx, onnxscript, acalign_robot.learner.process)" in result.stdout


def test_sim_reports_mujoco_gl(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "egl")
    checks = run_checks(["sim"])
    by_name = {check.name: check for check in checks}
    assert by_name["mujoco"].status == by_name["MUJOCO_GL"].status == OK and by_name["mujoco"].role == "sim"
    assert {check.role for check in checks} == {"controller", "sim"}  # the sim builds on the controller's runtime
    text, complete = format_report(["sim"], checks)
    assert complete and text.rstrip().endswith("sim: ready")
    monkeypatch.setenv("MUJOCO_GL", "opengl")
    text, complete = format_report(["sim"], run_checks(["sim"]))
    assert not complete and "sim: NOT READY (MUJOCO_GL)" in text
