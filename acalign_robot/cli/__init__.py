"""The `acalign` command line.

Exit codes: 0 success; 2 bad input (a one-line message naming what is wrong and where, no traceback); 1 failure.
Heavy modules (torch, mujoco, minari) are imported inside the handlers so that `--help` is instant and the
controller-side commands never import torch.

One module per group of commands: training (datasets, training, evaluation, the demo), policies (artifacts),
processes (driver, drivers, controller, learner, doctor), sessions (launch files, keys, e-stop) and logs (conversion and
replay). In each, a command's `add_<command>_command` declares its arguments directly above the `_cmd_<command>`
handler that runs it; options that commands in several modules take are declared once, in common.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from acalign_robot import __version__
from acalign_robot.cli import logs, policies, processes, sessions, training
from acalign_robot.cli.common import EXIT_BAD_INPUT, EXIT_FAILURE, Parser
from acalign_robot.errors import input_error_from

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="acalign", description=__doc__.split("\n")[0].strip("`. ") + ": ACA offline-to-online RL.")
    parser.add_argument("--version", action="version", version=f"acalign-robot {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    # in the order `acalign --help` lists them
    training.add_collect_command(commands)
    training.add_pretrain_command(commands)
    training.add_align_command(commands)
    training.add_finetune_command(commands)
    training.add_eval_command(commands)
    training.add_plot_command(commands)
    policies.add_export_command(commands)
    policies.add_policies_command(commands)
    training.add_demo_command(commands)
    processes.add_driver_command(commands)
    processes.add_drivers_command(commands)
    processes.add_controller_command(commands)
    processes.add_learner_command(commands)
    sessions.add_validate_command(commands)
    sessions.add_launch_command(commands)
    sessions.add_keys_command(commands)
    logs.add_logs_command(commands)
    logs.add_replay_command(commands)
    sessions.add_estop_and_clear_commands(commands)
    processes.add_doctor_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None):
        os.environ["MINARI_DATASETS_PATH"] = str(Path(args.data_dir).resolve())
    if args.command in ("driver", "controller", "learner"):
        from acalign_robot.session.lifeline import start_lifeline

        start_lifeline()  # under a supervisor: stop safely if it dies
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"acalign {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # The one place where errors become exit codes: bad input (ours, or a library's about a value the user gave,
        # such as an unknown env id) is one line and exit 2, anything else a traceback and exit 1.
        bad_input = input_error_from(exc)
        if bad_input is not None:
            print(f"acalign {args.command}: error: {bad_input}", file=sys.stderr)
            return EXIT_BAD_INPUT
        traceback.print_exc()
        print(f"acalign {args.command}: failed (see the traceback above)", file=sys.stderr)
        return EXIT_FAILURE
