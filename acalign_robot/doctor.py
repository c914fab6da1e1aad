"""`acalign doctor`: is this machine ready for its role (robot controller, learner workstation, simulation)?

A robot computer installs only the controller's dependencies (deploy/requirements-controller.txt: no torch, no
MuJoCo), a learner workstation adds the torch stack, a simulation machine adds MuJoCo. Each role is checked for:
its Python modules (importable, at least the version pyproject.toml asks for), the role's own entry module (which
catches a dependency missing further down the import chain), and what the role needs from the platform: CURVE in
libzmq for links across machines, the onnxruntime execution providers, whether real-time scheduling is permitted,
torch's view of CUDA, MUJOCO_GL for headless rendering.

Nothing heavy is imported at module level: a module is imported only to probe it (importing torch takes seconds),
and only for the roles asked about. Every check yields a row: `ok`, `warn` (works, with a caveat worth reading) or
`FAIL` (the role cannot run: exit code 1).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["ROLES", "Check", "Module", "run_checks", "format_report"]

ROLES = ("controller", "learner", "sim")
OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Module:
    """A dependency: the import name, the distributions that provide it, and pyproject.toml's bounds."""

    name: str
    distributions: tuple[str, ...]  # pip names, in the order to look for a version (onnxruntime or -gpu)
    minimum: str
    below: str | None = None  # exclusive upper bound


@dataclass(frozen=True)
class Check:
    role: str  # the first role that needs it
    name: str
    status: str  # ok | warn | FAIL
    detail: str


# The lower bounds are pyproject.toml's (and deploy/requirements-controller.txt's).
_MODULES: dict[str, tuple[Module, ...]] = {
    "controller": (
        Module("numpy", ("numpy",), "1.24"),
        Module("zmq", ("pyzmq",), "25"),
        Module("msgpack", ("msgpack",), "1.0"),
        Module("onnxruntime", ("onnxruntime", "onnxruntime-gpu"), "1.17"),
        Module("yaml", ("PyYAML",), "6.0"),
        Module("aiohttp", ("aiohttp",), "3.9"),  # the operator page of `acalign launch --host ROBOT`
    ),
    # The learner process also imports gymnasium and tqdm (through algo/), so they are part of its role.
    "learner": (
        Module("torch", ("torch",), "2.3", below="2.14"),
        Module("onnx", ("onnx",), "1.16"),
        Module("onnxscript", ("onnxscript",), "0.1"),
        Module("minari", ("minari",), "0.5"),
        Module("gymnasium", ("gymnasium",), "1.0"),
        Module("tqdm", ("tqdm",), "4.60"),
    ),
    "sim": (
        Module("mujoco", ("mujoco",), "3.1"),
        Module("gymnasium", ("gymnasium",), "1.0"),
    ),
}
# What a role's processes import: the real test that everything below them is installed. (The MuJoCo driver imports
# gymnasium lazily, so the sim's probe is gymnasium's MuJoCo envs themselves.)
_ENTRY_MODULES = {
    "controller": ("acalign_robot.controller.process", "acalign_robot.drivers.server"),
    "learner": ("acalign_robot.learner.process",),
    "sim": ("gymnasium.envs.mujoco.hopper_v5",),
}
# The learner and the sim build on the controller's runtime (the learner's protocol and transport are the same).
_INCLUDES = {"controller": (), "learner": ("controller",), "sim": ("controller",)}
_INSTALL_HINT = {
    "controller": "pip install -r deploy/requirements-controller.txt && pip install --no-deps -e .",
    "learner": "pip install torch==2.13.0 (or a CUDA build, deploy/learner.Containerfile) && pip install -e .",
    "sim": "pip install 'gymnasium[mujoco]>=1.0' 'mujoco>=3.1'",
}
_MUJOCO_GL = ("egl", "osmesa", "glfw")


def _version_tuple(text: str) -> tuple[int, ...]:
    """(2, 13, 0) for '2.13.0+cpu' or '2.13.0rc1': the leading numeric parts, enough for lower bounds."""
    parts = []
    for part in text.split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def _installed_version(module: Module, imported: object) -> str:
    for distribution in module.distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return str(getattr(imported, "__version__", "unknown"))


def _check_module(role: str, module: Module) -> tuple[Check, object | None]:
    try:
        imported = importlib.import_module(module.name)
    except ImportError as exc:
        return Check(role, module.name, FAIL, f"missing ({exc.msg}); needs >= {module.minimum}"), None
    except Exception as exc:  # installed but broken: a shared library that does not load, an ABI mismatch
        return Check(role, module.name, FAIL, f"installed but fails to import: {type(exc).__name__}: {exc}"), None
    version = _installed_version(module, imported)
    found = _version_tuple(version)
    if found and found < _version_tuple(module.minimum):
        return Check(role, module.name, FAIL, f"{version} is too old: needs >= {module.minimum}"), imported
    if module.below and found and found >= _version_tuple(module.below):
        bounds = f">= {module.minimum}, < {module.below}"
        return Check(role, module.name, FAIL, f"{version} is outside the supported range {bounds}"), imported
    bounds = f">= {module.minimum}" + (f", < {module.below}" if module.below else "")
    return Check(role, module.name, OK, f"{version} ({bounds})"), imported


def _check_entry_module(role: str, name: str) -> Check:
    try:
        importlib.import_module(name)
    except Exception as exc:  # an ImportError down the chain, or a module failing at import time
        return Check(role, name, FAIL, f"does not import: {type(exc).__name__}: {exc}")
    return Check(role, name, OK, "imports")


def _zmq_checks(zmq) -> list[Check]:
    detail = f"libzmq {zmq.zmq_version()}"
    if zmq.has("curve"):
        return [Check("controller", "zmq.curve", OK, f"{detail} with CURVE (encrypted, authenticated links)")]
    return [
        Check(
            "controller",
            "zmq.curve",
            FAIL,
            f"{detail} built without CURVE: links across machines cannot be secured; install the pyzmq wheel "
            "(it bundles a libzmq with CURVE)",
        )
    ]


def _onnxruntime_checks(onnxruntime) -> list[Check]:
    providers = onnxruntime.get_available_providers()
    checks = [
        Check(
            "controller",
            "onnxruntime.providers",
            OK,
            ", ".join(providers) + " (ControllerConfig.provider: cpu, or cuda when CUDAExecutionProvider is listed)",
        )
    ]
    if "CUDAExecutionProvider" in providers:
        # onnxruntime-gpu lists CUDA on a machine without a GPU too; a session then falls back to the CPU.
        checks.append(
            Check(
                "controller",
                "onnxruntime.cuda",
                WARN,
                "listed, which is not proof it works: with provider: cuda the controller logs the provider its "
                "session really uses (PolicyRunner.provider)",
            )
        )
    installed = []
    for distribution in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.version(distribution)
            installed.append(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    if len(installed) == 2:
        checks.append(
            Check(
                "controller",
                "onnxruntime.install",
                FAIL,
                "onnxruntime and onnxruntime-gpu are both installed and overwrite each other's files: uninstall both, "
                "then install one",
            )
        )
    return checks


def _torch_checks(torch) -> list[Check]:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        detail = f"{torch.cuda.device_count()} GPU(s), {name}, CUDA {torch.version.cuda}: learner device auto -> cuda"
        return [Check("learner", "torch.cuda", OK, detail)]
    build = "a CPU-only build of torch" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
    return [Check("learner", "torch.cuda", WARN, f"{build}: the learner runs on the CPU (device auto -> cpu)")]


def _mujoco_gl_checks() -> list[Check]:
    value = os.environ.get("MUJOCO_GL")
    if value is None:
        detail = (
            "unset: headless rendering (acalign replay render) needs MUJOCO_GL=egl (or osmesa); simulation does not"
        )
        return [Check("sim", "MUJOCO_GL", WARN, detail)]
    if value not in _MUJOCO_GL:
        return [Check("sim", "MUJOCO_GL", FAIL, f"{value!r} is not one of {', '.join(_MUJOCO_GL)}")]
    return [Check("sim", "MUJOCO_GL", OK, f"{value} (set before mujoco is imported)")]


def _realtime_checks() -> list[Check]:
    from acalign_robot.realtime import max_fifo_priority

    highest = max_fifo_priority()
    if highest:
        return [Check("controller", "SCHED_FIFO", OK, f"permitted up to priority {highest} (`realtime.priority`)")]
    detail = (
        "not permitted for this user: a controller or driver with `realtime.priority` will refuse to start (root, "
        "CAP_SYS_NICE or an rtprio limit allows it; the systemd units set LimitRTPRIO)"
    )
    return [Check("controller", "SCHED_FIFO", WARN, detail)]


# Platform checks, run once a role's module imported: (role, module name, check).
_PLATFORM_CHECKS: tuple[tuple[str, str, Callable[[object], list[Check]]], ...] = (
    ("controller", "zmq", _zmq_checks),
    ("controller", "onnxruntime", _onnxruntime_checks),
    ("learner", "torch", _torch_checks),
)


def _expand(roles: Iterable[str]) -> list[str]:
    """The roles with the roles they build on, in ROLES order."""
    wanted = set()
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
        wanted |= {role, *_INCLUDES[role]}
    return [role for role in ROLES if role in wanted]


def run_checks(roles: Iterable[str]) -> list[Check]:
    """Every check for `roles` (and the roles they build on), in order; imports what it probes."""
    checks = []
    version = ".".join(map(str, sys.version_info[:3]))
    python_ok = sys.version_info >= (3, 10)
    checks.append(
        Check("controller", "python", OK if python_ok else FAIL, f"{version} ({sys.executable}); needs >= 3.10")
    )
    imported: dict[str, object] = {}
    for role in _expand(roles):
        for module in _MODULES[role]:  # gymnasium is listed (and counted) for the learner and for the sim
            check, handle = _check_module(role, module)
            checks.append(check)
            if handle is not None:
                imported[module.name] = handle
        for check_role, name, platform_check in _PLATFORM_CHECKS:
            if check_role == role and name in imported:
                checks += platform_check(imported[name])
        if role == "controller":
            checks += _realtime_checks()
        if role == "sim":
            checks += _mujoco_gl_checks()
        checks += [_check_entry_module(role, name) for name in _ENTRY_MODULES[role]]
    return checks


def format_report(roles: Iterable[str], checks: list[Check]) -> tuple[str, bool]:
    """The table and one verdict line per role asked about; (text, every role complete)."""
    rows = [("ROLE", "CHECK", "STATUS", "DETAIL")] + [(c.role, c.name, c.status, c.detail) for c in checks]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3] for row in rows]
    complete = True
    lines.append("")
    for role in roles:
        covered = set(_expand([role]))
        failed = [c.name for c in checks if c.role in covered and c.status == FAIL]
        warned = [c.name for c in checks if c.role in covered and c.status == WARN]
        if failed:
            complete = False
            lines.append(f"{role}: NOT READY ({', '.join(failed)}); install: {_INSTALL_HINT[role]}")
        else:
            note = f" (read the warnings: {', '.join(warned)})" if warned else ""
            lines.append(f"{role}: ready{note}")
    return "\n".join(lines), complete
