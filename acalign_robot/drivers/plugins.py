"""Which driver class a driver config's `kind` names, and building it from the config's `args:`.

A `kind` is
- a built-in: `mujoco`, `replay` and `loopback` are set up by DriverConfig's own fields (`sim`, `env_id`, `log`,
  `seed`); `template` follows the plugin convention (its `args:` are `TemplateArmConfig`);
- `python`: the class named by the config's `target: package.module:Class`, importable from this interpreter;
- the name of an entry point in the `acalign.drivers` group: an installed package that declares
  `[project.entry-points."acalign.drivers"] my_arm = "my_arm_driver:MyArmDriver"` is served by `kind: my_arm`.

A plugin class follows the convention of drivers/base.py (a `Driver` subclass; its settings dataclass as `Config`,
the one argument of `__init__`), and `args:` is loaded into `Config` by config.from_dict: unknown keys, wrong types
and `Config.validate()` are refused as in any config file. A built-in name wins over an entry point of that name, so
an installed package cannot replace `mujoco`.

Nothing of a plugin is imported before a driver of its kind is made: a launch file also names the drivers of other
hosts, whose packages need not be installed here. Every problem is a ConfigError (exit 2 from the CLI): one line that
names the field (`kind`, `target`, `args`), the class and what is wrong, after `source` (the config's file) if given.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from acalign_robot import config as config_io
from acalign_robot.config import ConfigError
from acalign_robot.drivers.base import Driver

__all__ = [
    "BUILTIN_DRIVERS",
    "ENTRY_POINT_GROUP",
    "FIELD_CONFIGURED",
    "PYTHON",
    "DriverSource",
    "driver_sources",
    "make_plugin_driver",
]

ENTRY_POINT_GROUP = "acalign.drivers"
PYTHON = "python"  # the kind whose class is the config's `target`
BUILTIN_DRIVERS = {
    "mujoco": "acalign_robot.drivers.mujoco:MujocoDriver",
    "replay": "acalign_robot.drivers.log_playback:ReplayDriver",
    "loopback": "acalign_robot.drivers.loopback:LoopbackDriver",
    "template": "acalign_robot.drivers.template:TemplateDriver",
}
FIELD_CONFIGURED = ("mujoco", "replay", "loopback")  # set up by DriverConfig's fields: they take no `args:`


@dataclass(frozen=True)
class DriverSource:
    """One kind a driver config can name, for `acalign drivers list`."""

    kind: str
    target: str  # package.module:Class
    origin: str  # where it comes from: built-in, or the distribution that registers the entry point


def driver_sources() -> list[DriverSource]:
    """The built-ins, then every installed entry point by name (nothing is imported)."""
    sources = [DriverSource(kind, target, "built-in") for kind, target in BUILTIN_DRIVERS.items()]
    for entry_point in sorted(_entry_points(), key=lambda entry: entry.name):
        origin = f"entry point of {_distribution(entry_point)}"
        if entry_point.name in BUILTIN_DRIVERS or entry_point.name == PYTHON:
            origin += f" (unused: `{entry_point.name}` is built in)"
        sources.append(DriverSource(entry_point.name, entry_point.value, origin))
    return sources


def make_plugin_driver(kind: str, target: str | None, args: dict[str, Any], source: str = "") -> Driver:
    """The driver of a plugin kind (not one of FIELD_CONFIGURED), its `Config` built from `args`."""
    cls, where = _driver_class(kind, target, source)
    name = f"{cls.__module__}:{cls.__qualname__}"
    if cls.Config is None:
        if args:
            raise _error(source, "args", f"{name} takes no args (it declares no Config)")
        return cls()
    if not (isinstance(cls.Config, type) and dataclasses.is_dataclass(cls.Config)):
        raise _error(source, where, f"{name}.Config must be a dataclass, got {cls.Config!r}")
    return cls(config_io.from_dict(cls.Config, args, source=f"{source}: args" if source else "args"))


def _error(source: str, field: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {field}: {message}" if source else f"{field}: {message}")


def _driver_class(kind: str, target: str | None, source: str) -> tuple[type[Driver], str]:
    """The class `kind` names and the field that named it (`kind` or `target`), checked to be a Driver."""
    if kind == PYTHON:
        assert target is not None, "DriverConfig.validate refuses kind python without a target"
        where, value = "target", target
    elif kind in BUILTIN_DRIVERS:
        where, value = "kind", BUILTIN_DRIVERS[kind]
    else:
        where, value = "kind", _entry_point(kind, source).value
    loaded = _load(value, source, where)
    if not (isinstance(loaded, type) and issubclass(loaded, Driver)):
        kind_of = "class" if isinstance(loaded, type) else type(loaded).__name__
        raise _error(source, where, f"{value} is a {kind_of}, not a subclass of acalign_robot.drivers.base.Driver")
    return loaded, where


def _entry_point(kind: str, source: str) -> metadata.EntryPoint:
    found = [entry_point for entry_point in _entry_points() if entry_point.name == kind]
    if not found:
        known = [*BUILTIN_DRIVERS, PYTHON, *sorted(entry_point.name for entry_point in _entry_points())]
        match = difflib.get_close_matches(kind, known, n=1, cutoff=0.5)
        hint = f" (did you mean '{match[0]}'?)" if match else ""
        raise _error(
            source,
            "kind",
            f"{kind!r} is neither a built-in driver, `python` nor an installed plugin "
            f"(known: {', '.join(known)}; `acalign drivers list`){hint}",
        )
    if len(found) > 1:
        registered = ", ".join(f"{_distribution(e)} ({e.value})" for e in found)
        raise _error(source, "kind", f"{kind!r} is registered by more than one package: {registered}")
    return found[0]


def _load(value: str, source: str, field: str) -> Any:
    """The object `package.module:Attribute[.Inner]` names (the value of `field`)."""
    module_name, _, attributes = value.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        # Only an import that fails is bad input (a package not installed, a name misspelt). Any other error raised
        # while the module runs is a fault in it, left to the CLI's traceback.
        raise _error(
            source, field, f"{value}: cannot import {module_name!r} ({exc}); is its package installed?"
        ) from None
    for attribute in attributes.split("."):
        if not hasattr(obj, attribute):
            match = difflib.get_close_matches(attribute, [n for n in dir(obj) if not n.startswith("_")], n=1)
            hint = f" (did you mean '{match[0]}'?)" if match else ""
            raise _error(source, field, f"{value}: {obj.__name__!r} has no attribute {attribute!r}{hint}")
        obj = getattr(obj, attribute)
    return obj


def _entry_points() -> metadata.EntryPoints:
    return metadata.entry_points(group=ENTRY_POINT_GROUP)


def _distribution(entry_point: metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return "an unknown package" if dist is None else f"{dist.name} {dist.version}"
