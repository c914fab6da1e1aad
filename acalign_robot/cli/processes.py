"""The runtime's processes, one command each (what a launch file starts: driver, controller, learner), `drivers`,
which lists the driver kinds this install can serve, and `doctor`, which checks that this machine's install can run
them."""

from __future__ import annotations

import argparse
import sys

from acalign_robot.cli.common import EXIT_FAILURE, EXIT_OK, Subcommands, add_actions, add_set, training_stopped


def _add_config_file(parser: argparse.ArgumentParser, help_text: str, metavar: str | None = None) -> None:
    parser.add_argument("--config", required=True, metavar=metavar, help=help_text)


def _add_ready_file(parser: argparse.ArgumentParser, when: str) -> None:
    parser.add_argument("--ready-file", help=f"write this file {when} (for supervisors)")


def add_driver_command(commands: Subcommands) -> None:
    p = commands.add_parser(
        "driver",
        help="serve a driver (MuJoCo, log replay, loopback, template, your own plugin) on the control channel",
        description="Run one driver process: the driver behind a ZeroMQ ROUTER, with a watchdog "
        "and an e-stop latch. Stops on SIGTERM/SIGINT after applying the safe action. "
        "`acalign drivers list` shows the kinds it can serve.",
    )
    _add_config_file(p, "YAML file of DriverConfig fields")
    add_set(p)
    _add_ready_file(p, "once the socket is bound")
    p.set_defaults(handler=_cmd_driver)


def _cmd_driver(args) -> int:
    from acalign_robot import config as config_io
    from acalign_robot.drivers.server import DriverConfig, serve

    config = config_io.load(DriverConfig, args.config, tuple(args.set or ()))
    serve(config, ready_file=args.ready_file, source=args.config)
    return EXIT_OK


def add_drivers_command(commands: Subcommands) -> None:
    p = commands.add_parser(
        "drivers",
        help="the driver kinds this install can serve: built-ins and installed plugins",
        description="Driver kinds a driver config's `kind:` can name (drivers/plugins.py): the built-ins, and the "
        "entry points that installed packages register in the `acalign.drivers` group. `kind: python` with "
        "`target: package.module:Class` serves any other Driver subclass.",
    )
    _add_drivers_list_action(add_actions(p, "drivers_command"))


def _add_drivers_list_action(actions: Subcommands) -> None:
    p = actions.add_parser(
        "list",
        help="list each kind, its class and where it comes from",
        description="List each driver kind, the class it names and where it comes from (built in, or the "
        "distribution that registers it). Nothing is imported: `acalign validate` checks that a plugin loads.",
    )
    p.set_defaults(handler=_cmd_drivers_list)


def _cmd_drivers_list(args) -> int:
    from acalign_robot.drivers.plugins import PYTHON, driver_sources

    rows = [("KIND", "CLASS", "FROM")]
    rows += [(source.kind, source.target, source.origin) for source in driver_sources()]
    rows.append((PYTHON, "the config's `target: package.module:Class`", "any importable Driver subclass"))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for kind, target, origin in rows:
        print(f"{kind:<{widths[0]}}  {target:<{widths[1]}}  {origin}")
    return EXIT_OK


def add_controller_command(commands: Subcommands) -> None:
    p = commands.add_parser(
        "controller",
        help="run the real-time controller against a driver",
        description="Run one controller process: an ONNX policy at a fixed rate against a driver, "
        "streaming transitions to a learner and hot-swapping its policies when "
        "endpoints are given. Prints its statistics as JSON at exit.",
    )
    _add_config_file(p, "YAML file of ControllerConfig fields")
    add_set(p)
    _add_ready_file(p, "once the driver handshake succeeded")
    p.set_defaults(handler=_cmd_controller)


def _cmd_controller(args) -> int:
    import json

    from acalign_robot import config as config_io
    from acalign_robot.controller.process import ControllerConfig, run_controller

    config = config_io.load(ControllerConfig, args.config, tuple(args.set or ()))
    stats = run_controller(config, ready_file=args.ready_file)
    summary = {k: v for k, v in stats.items() if k not in ("episode_returns", "episode_log", "swap_log")}
    print(json.dumps(summary, indent=1))
    if stats["session_lost"]:  # it ran to its end without a driver that would take its steps
        print(f"acalign controller: ended without a driver session: {stats['session_lost']}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def add_learner_command(commands: Subcommands) -> None:
    p = commands.add_parser(
        "learner",
        help="the learner process: ACA phase 3 on transitions streamed by controllers",
        description="Load an online checkpoint (from `acalign align`), pull transitions from controllers, fine-tune "
        "with ACA phase 3 at the configured update-to-data ratio, publish ONNX policies latest-only, checkpoint on a "
        "schedule and on SIGTERM/SIGINT (exit 0). Writes learner.pt, status.json and metrics.jsonl into "
        "checkpoint_dir.",
    )
    _add_config_file(p, "learner YAML (LearnerConfig fields)", metavar="FILE")
    p.add_argument(
        "--resume", action="store_true", help="continue from CHECKPOINT_DIR/learner.pt instead of `checkpoint`"
    )
    add_set(p)
    _add_ready_file(p, "once the channels are bound")
    p.set_defaults(handler=_cmd_learner)


def _cmd_learner(args) -> int:
    from acalign_robot import config as config_io
    from acalign_robot.algo.checkpoint import NonFiniteCheckpointError
    from acalign_robot.algo.divergence import DivergenceError
    from acalign_robot.learner.config import LearnerConfig
    from acalign_robot.learner.process import serve

    config = config_io.load(LearnerConfig, args.config, tuple(args.set or ()))
    try:
        checkpoint = serve(config, resume=args.resume, ready_file=args.ready_file)
    except (DivergenceError, NonFiniteCheckpointError) as exc:
        return training_stopped(args, exc)
    print(f"learner stopped; checkpoint: {checkpoint}")
    return EXIT_OK


def add_doctor_command(commands: Subcommands) -> None:
    p = commands.add_parser(
        "doctor",
        help="check this machine's install for a role: controller, learner, sim",
        description="Check the Python modules (present, version) and the platform (CURVE in libzmq, onnxruntime "
        "providers, torch CUDA, MUJOCO_GL) that a role needs: controller (a robot computer: driver and controller, "
        "no torch), learner (adds torch, onnx, minari), sim (adds MuJoCo). Exit 0 when every role asked about is "
        "complete, 1 when something is missing. docs/deploy.md says what to install.",
    )
    p.add_argument(
        "--role",
        action="append",
        choices=("controller", "learner", "sim"),
        help="role to check (repeatable; default: all three)",
    )
    p.set_defaults(handler=_cmd_doctor)


def _cmd_doctor(args) -> int:
    from acalign_robot.doctor import ROLES, format_report, run_checks

    roles = args.role or list(ROLES)
    text, complete = format_report(roles, run_checks(roles))
    print(text)
    return EXIT_OK if complete else EXIT_FAILURE
