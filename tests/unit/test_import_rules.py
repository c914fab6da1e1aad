"""The layout's two import rules: which package may import which, and which packages run without torch.

docs/architecture.md draws the same map. A package is `acalign_robot.<name>`; the top-level modules (`atomic`,
`config`, `errors`, `realtime`, `spaces`) are the base every package may use.
"""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import acalign_robot

PACKAGE_ROOT = Path(acalign_robot.__file__).parent

# What each package may import besides itself and the base. The shared libraries import no process package; no
# process imports another's package (they meet only on the wire); only the launcher and the CLI see everything.
ALLOWED_IMPORTS = {
    "wire": set(),
    # The sim tasks register gymnasium env ids: every package that makes an env by id imports them first.
    "sim_tasks": set(),
    "policy": {"wire", "data.scores", "sim_tasks"},
    "robot_log": {"wire", "data.datasets", "sim_tasks"},
    "drivers": {"wire", "robot_log", "sim_tasks"},
    "controller": {"wire", "policy", "robot_log"},
    "algo": {"data", "sim_tasks"},
    "data": {"algo", "policy", "robot_log", "sim_tasks"},
    "export": {"algo", "policy", "sim_tasks"},
    "learner": {"wire", "policy", "algo", "data", "export"},
    # robot_log: the rerun sink reads the controllers' log chunks as they close (session/sinks.py).
    "session": {"wire", "policy", "drivers", "controller", "learner", "robot_log"},
    # The command line runs every step and process (each handler imports what it runs) and prints the version.
    "cli": {
        "wire",
        "policy",
        "robot_log",
        "drivers",
        "controller",
        "algo",
        "data",
        "export",
        "learner",
        "session",
        "sim_tasks",
        "demo",
        "doctor",
        "__version__",
    },
}
BASE_MODULES = {"atomic", "config", "errors", "realtime", "spaces"}
# The robot computer installs these without torch (deploy/requirements-controller.txt).
TORCH_FREE_PACKAGES = ("wire", "policy", "robot_log", "drivers", "controller")

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


def imported_project_modules(path: Path) -> set[str]:
    """Every `acalign_robot.X[.Y]` a file imports, anywhere in it (deferred imports included), without the prefix."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("acalign_robot"):
            base = node.module.removeprefix("acalign_robot").lstrip(".")
            found |= {f"{base}.{alias.name}".lstrip(".") for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("acalign_robot.") for a in node.names if a.name.startswith("acalign_robot.")}
    return found


def allowed(package: str, target: str) -> bool:
    top = target.split(".")[0]
    if top in BASE_MODULES or top == package:
        return True
    return any(target == rule or target.startswith(rule + ".") for rule in ALLOWED_IMPORTS[package])


def test_every_package_has_an_import_rule():
    packages = {m.name for m in pkgutil.iter_modules([str(PACKAGE_ROOT)]) if m.ispkg}
    assert packages == set(ALLOWED_IMPORTS)


def test_packages_import_only_in_the_allowed_direction():
    wrong = []
    for package in ALLOWED_IMPORTS:
        for path in sorted((PACKAGE_ROOT / package).rglob("*.py")):
            wrong += [
                f"{path.relative_to(PACKAGE_ROOT)} imports acalign_robot.{target}"
                for target in sorted(imported_project_modules(path))
                if not allowed(package, target)
            ]
    assert wrong == []


def test_the_import_rule_sees_a_wrong_import(tmp_path):
    offending = tmp_path / "bad.py"
    offending.write_text("def f():\n    from acalign_robot.learner.process import Learner\n")
    targets = imported_project_modules(offending)
    assert targets == {"learner.process.Learner"}
    assert not allowed("controller", "learner.process.Learner") and allowed("session", "learner.process.Learner")


def test_robot_side_packages_import_without_torch():
    modules = [
        f"acalign_robot.{package}.{m.name}"
        for package in TORCH_FREE_PACKAGES
        for m in pkgutil.iter_modules([str(PACKAGE_ROOT / package)])
    ]
    modules += [f"acalign_robot.{name}" for name in BASE_MODULES]
    assert "acalign_robot.controller.process" in modules and "acalign_robot.drivers.template" in modules
    result = subprocess.run([sys.executable, "-c", SCRIPT, *modules], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
