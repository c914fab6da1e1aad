"""Sessions: check and run launch files, the CURVE keys their channels use across machines, and e-stop / clear of a
running session."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from acalign_robot.cli.common import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, Subcommands, add_actions, add_set
from acalign_robot.errors import InputError


def _add_launch_file_arguments(parser: argparse.ArgumentParser) -> None:
    """What `validate` and `launch` share: the launch file, overrides of its fields and the host to act for."""
    parser.add_argument("file", help="launch file (YAML)")
    add_set(
        parser,
        "override a field, e.g. controller.rate_hz=250 (applies to every robot) or "
        "robots.0.driver.watchdog_ms=50 (repeatable)",
    )
    parser.add_argument("--host", help="only this host's processes (multi-host launch files)")


def add_validate_command(commands: Subcommands) -> None:
    summary = "check a launch file without starting anything"
    p = commands.add_parser("validate", help=summary, description=summary + ". See launch/ for examples.")
    _add_launch_file_arguments(p)
    p.set_defaults(handler=_cmd_validate)


def _cmd_validate(args) -> int:
    from acalign_robot.session.schema import check_session, load_launch

    config = load_launch(args.file, tuple(args.set or ()))
    problems = check_session(config, host=args.host)
    if problems:
        print(f"{args.file}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{args.file}: ok ({len(config.robots)} robot(s), learner: {'yes' if config.learner else 'no'})")
    return EXIT_OK


def add_launch_command(commands: Subcommands) -> None:
    summary = "run a session from a launch file (supervised processes, live status, report)"
    p = commands.add_parser("launch", help=summary, description=summary + ". See launch/ for examples.")
    _add_launch_file_arguments(p)
    p.set_defaults(handler=_cmd_launch)


def _cmd_launch(args) -> int:
    import time as time_module

    from acalign_robot.session.schema import check_session, load_launch
    from acalign_robot.session.supervisor import SessionFailed, Supervisor

    config = load_launch(args.file, tuple(args.set or ()))
    problems = check_session(config, host=args.host)
    if problems:
        raise InputError(f"{args.file} does not validate: " + "; ".join(problems))
    stamp = time_module.strftime("%Y%m%d-%H%M%S")
    session_dir = Path(config.output_dir) / config.session / (f"{stamp}-{args.host}" if args.host else stamp)
    try:
        Supervisor(config, session_dir, host=args.host).run()
    except SessionFailed as exc:
        print(f"acalign launch: session failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def add_keys_command(commands: Subcommands) -> None:
    p = commands.add_parser(
        "keys",
        help="generate or show CURVE key pairs for channels that cross machines",
        description="CURVE key pairs for the runtime's channels (docs/security.md): NAME.key is the public half "
        "(give it to peers), NAME.key_secret the pair (mode 0600, stays on its machine).",
    )
    actions = add_actions(p, "keys_command")
    _add_keys_generate_action(actions)
    _add_keys_show_action(actions)


def _add_keys_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default="keys", help="keys directory (default keys/)")


def _add_keys_generate_action(actions: Subcommands) -> None:
    p = actions.add_parser(
        "generate",
        help="write a new key pair NAME.key + NAME.key_secret",
        description="Write a new CURVE key pair into DIR (created 0700 if missing); refuses to replace an existing "
        "pair unless --force (peers that trust the old public key are then locked out).",
    )
    p.add_argument("name", help="key pair name: letters, digits, '_', '.', '-' (e.g. learner, robot1)")
    _add_keys_dir(p)
    p.add_argument("--force", action="store_true", help="replace an existing key pair of that name")
    p.set_defaults(handler=_cmd_keys_generate)


def _cmd_keys_generate(args) -> int:
    from acalign_robot.wire.security import generate_keys

    public_file, secret_file = generate_keys(args.dir, args.name, force=args.force)
    print(f"public key: {public_file} (give it to the peers that must trust this key)")
    print(f"secret key: {secret_file} (mode 0600; never leaves this machine)")
    return EXIT_OK


def _add_keys_show_action(actions: Subcommands) -> None:
    p = actions.add_parser(
        "show", help="print a key pair's public key", description="Print the public key (Z85) in DIR/NAME.key."
    )
    p.add_argument("name", help="key pair name")
    _add_keys_dir(p)
    p.set_defaults(handler=_cmd_keys_show)


def _cmd_keys_show(args) -> int:
    from acalign_robot.wire.security import key_files, load_public_key

    public_file, _ = key_files(args.dir, args.name)
    print(load_public_key(public_file).decode("ascii"))
    return EXIT_OK


def add_estop_and_clear_commands(commands: Subcommands) -> None:
    for name, summary in (
        ("estop", "latch every driver of a session into its safe action (e-stop)"),
        ("clear", "release an e-stop and the controllers' SAFE latches of a session"),
    ):
        p = commands.add_parser(
            name,
            help=summary,
            description=summary + ". SESSION is a session directory "
            "(sessions/NAME/STAMP) or a session name (its latest run under sessions/).",
        )
        p.add_argument("session", help="session directory or name")
        p.add_argument("--reason", default="operator", help="recorded with the e-stop (default: operator)")
        p.set_defaults(handler=_cmd_estop)


def _cmd_estop(args) -> int:
    from acalign_robot.session.operator import send_to_drivers

    return send_to_drivers(args.session, "estop" if args.command == "estop" else "clear", args.reason)
