"""Every controller-side module imports in a process where torch (and the learner-only onnx) cannot be imported."""

import pkgutil
import subprocess
import sys

import acalign_robot.drivers
import acalign_robot.runtime

SCRIPT = """
import importlib, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "onnx", "onnxscript"}:
            raise ImportError(f"{name} is blocked")
        return None

sys.meta_path.insert(0, Blocked())
for module in sys.argv[1:]:
    importlib.import_module(module)
print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
"""


def test_runtime_and_drivers_import_without_torch():
    modules = [f"acalign_robot.runtime.{m.name}" for m in pkgutil.iter_modules(acalign_robot.runtime.__path__)]
    modules += [f"acalign_robot.drivers.{m.name}" for m in pkgutil.iter_modules(acalign_robot.drivers.__path__)]
    assert "acalign_robot.runtime.controller" in modules and "acalign_robot.drivers.template" in modules
    result = subprocess.run([sys.executable, "-c", SCRIPT, *modules], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
