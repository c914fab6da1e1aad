"""Exception types shared by every layer.

`InputError` marks a problem with something the user gave us (a file, a YAML key, a CLI flag, a policy artifact,
a message). The CLI turns it into a one-line message and exit code 2; every other exception is a failure (exit 1).
`input_error_from` names the errors of other libraries that are bad input too, so that the CLI can treat them alike
in its one place that catches errors.
"""

from __future__ import annotations

import sys

__all__ = ["EnvError", "InputError", "input_error_from"]


class InputError(Exception):
    """Bad user input: the message names what is wrong and where."""


class EnvError(InputError):
    """An env the stack cannot use: an id gymnasium does not know, or an env whose spaces it cannot drive."""


def input_error_from(exc: BaseException) -> InputError | None:
    """`exc` as an InputError when it is one, or when another library raised it about something the user named:
    gymnasium's unknown, deprecated or malformed env ids (whose messages carry gymnasium's own "did you mean").
    None for every other exception (a failure)."""
    if isinstance(exc, InputError):
        return exc
    # Only a gymnasium already imported can have raised one of its errors; the robot side runs without gymnasium.
    gym_error = sys.modules.get("gymnasium.error")
    if gym_error is None:
        return None
    message = " ".join(str(exc).split())  # gymnasium's messages may span lines: the CLI prints one
    if isinstance(exc, (gym_error.UnregisteredEnv, gym_error.DeprecatedEnv)):
        return EnvError(message)
    # A malformed id is raised as gymnasium's base error, which it also raises for its own faults: told by its text.
    if type(exc) is gym_error.Error and message.startswith("Malformed environment ID"):
        return EnvError(message)
    return None
