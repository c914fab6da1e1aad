"""The fields of each process's config that the supervisor fills in, declared once.

A launch file describes the session; the supervisor decides, for every process it starts, the endpoints, the output
directory, the name and the security block. Those fields are the supervisor's: `SUPERVISOR_FIELDS` names each one,
the value the supervisor gives it and what a launch file sets instead. The one table both refuses a launch file that
sets such a field (`owned_field_refusal`, from `LaunchConfig.validate`) and fills the fields in (`fill_owned_fields`,
from `Supervisor.prepare`), so the fields refused and the fields filled in cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from acalign_robot.wire.security import SecurityConfig

__all__ = ["SUPERVISOR_FIELDS", "Owned", "Section", "Wiring", "fill_owned_fields", "owned_field_refusal"]

Section = Literal["driver", "controller", "learner"]
ConfigT = TypeVar("ConfigT")


@dataclass(frozen=True)
class Wiring:
    """What the supervisor chose for one process: the values of the fields it owns are taken from here."""

    session_dir: Path
    security: SecurityConfig  # the session's `security:` block
    transitions_endpoint: str | None  # the learner's, resolved; None: the session has no learner
    policy_endpoint: str | None
    robot: str | None = None  # the name of the robot whose driver or controller this is; None: the learner
    control_endpoint: str | None = None  # that robot's control endpoint, resolved (never `auto`)


@dataclass(frozen=True)
class Owned:
    """Fields of a process section that the supervisor fills in (each with its value), and what a launch file sets
    instead: the refusal when it sets one of them. `{robot}` in `instead` is the robot's place in the file
    (`robots[0]`). A refusal names its field, or the section when several fields share it."""

    values: Mapping[str, Callable[[Wiring], Any]]
    instead: str


_SECURITY = "set the session's `security:` block"
_LEARNER_ENDPOINTS = "learner endpoints come from `endpoints:`"
_SESSION_DIR = "the session directory is used"

SUPERVISOR_FIELDS: dict[Section, tuple[Owned, ...]] = {
    "driver": (
        Owned({"endpoint": lambda w: w.control_endpoint}, "set {robot}.control_endpoint"),
        Owned({"name": lambda w: f"{w.robot}-driver"}, "set {robot}.name instead"),
        Owned({"security": lambda w: w.security}, _SECURITY),
    ),
    "controller": (
        Owned({"driver_endpoint": lambda w: w.control_endpoint}, "set control_endpoint instead"),
        Owned(
            {"learner_endpoint": lambda w: w.transitions_endpoint, "policy_endpoint": lambda w: w.policy_endpoint},
            _LEARNER_ENDPOINTS,
        ),
        Owned({"output_dir": lambda w: str(w.session_dir / w.robot)}, _SESSION_DIR),
        Owned({"controller_id": lambda w: w.robot}, "set {robot}.name instead"),
        Owned({"security": lambda w: w.security}, _SECURITY),
    ),
    "learner": (
        Owned(
            {"transitions_endpoint": lambda w: w.transitions_endpoint, "policy_endpoint": lambda w: w.policy_endpoint},
            _LEARNER_ENDPOINTS,
        ),
        Owned({"checkpoint_dir": lambda w: str(w.session_dir / "learner")}, _SESSION_DIR),
        Owned({"security": lambda w: w.security}, _SECURITY),
    ),
}


def owned_field_refusal(config: Any, section: Section, robot: str | None = None) -> str | None:
    """Why a launch file's process section may not be as written: the first field the supervisor owns that it sets
    (to anything but the field's default), as `robots[0].controller.output_dir: the session directory is used`;
    None when it sets none. `robot` is the robot's place in the file (`robots[0]`); None for the learner."""
    where = section if robot is None else f"{robot}.{section}"
    for owned in SUPERVISOR_FIELDS[section]:
        if any(getattr(config, name) != _default(type(config), name) for name in owned.values):
            names = list(owned.values)
            place = f"{where}.{names[0]}" if len(names) == 1 else where
            return f"{place}: {owned.instead.format(robot=robot)}"
    return None


def fill_owned_fields(config: ConfigT, section: Section, wiring: Wiring) -> ConfigT:
    """`config` (a process section) with every field the supervisor owns set from `wiring`."""
    values = {name: value(wiring) for owned in SUPERVISOR_FIELDS[section] for name, value in owned.values.items()}
    return dataclasses.replace(config, **values)


def _default(cls: type, name: str) -> Any:
    (field,) = (field for field in dataclasses.fields(cls) if field.name == name)
    return field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
