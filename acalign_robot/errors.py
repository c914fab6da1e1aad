"""Exception types shared by every layer.

`InputError` marks a problem with something the user gave us (a file, a YAML key, a CLI flag, a policy artifact,
a message). The CLI turns it into a one-line message and exit code 2; every other exception is a failure (exit 1).
"""

__all__ = ["InputError"]


class InputError(Exception):
    """Bad user input: the message names what is wrong and where."""
