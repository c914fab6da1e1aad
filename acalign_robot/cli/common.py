"""What the command modules share: exit codes, the parser class, argument types, the options that commands in
several modules take (each declared once here) and the handlers' helpers for torch threads and stopped training."""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

Subcommands = argparse._SubParsersAction  # what `add_subparsers` returns; each `add_parser` on it adds one command


class Parser(argparse.ArgumentParser):
    """argparse, with bad flags reported as one line and exit code 2 (argparse's own convention)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def add_actions(parser: argparse.ArgumentParser, dest: str) -> Subcommands:
    """The required ACTION of a command that has several (`acalign policies list`, `acalign keys show`, ...)."""
    actions = parser.add_subparsers(dest=dest, metavar="ACTION", parser_class=Parser)
    actions.required = True
    return actions


def add_set(parser: argparse.ArgumentParser, help_text: str = "override a config field (repeatable)") -> None:
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help=help_text)


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="Minari dataset store to use (sets MINARI_DATASETS_PATH; default: the environment's or ~/.minari)",
    )


def set_threads(threads: int) -> None:
    from acalign_robot.algo.device import set_torch_threads

    set_torch_threads(threads)


def training_stopped(args, exc: Exception) -> int:
    """A training step stopped on diverged statistics or a non-finite checkpoint: one line, exit 1."""
    print(f"acalign {args.command}: error: {exc}", file=sys.stderr)
    return EXIT_FAILURE
