"""Controller transition logs: convert them to a Minari dataset, or replay one (open loop, video, policy evaluation)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from acalign_robot.cli.common import EXIT_OK, Subcommands, add_actions, add_data_dir, positive_int, set_threads


def add_logs_command(commands: Subcommands) -> None:
    p = commands.add_parser(
        "logs",
        help="controller transition logs: convert to a Minari dataset",
        description="Work with the durable transition logs controllers write (OUTPUT_DIR/log/).",
    )
    actions = add_actions(p, "logs_command")
    _add_logs_convert_action(actions)


def _add_logs_convert_action(actions: Subcommands) -> None:
    p = actions.add_parser(
        "convert",
        help="a log, or every controller log of a session, as one Minari dataset",
        description="Convert a transition log (a log directory, a controller directory holding log/, or a session "
        "directory: every */log/) into a Minari dataset in the local store: one episode per logged episode, the "
        "executed action as the action, and policy_action, policy_version, safety_flags, timestamp_s and seq as "
        "step infos. Feed it to `acalign pretrain` with other datasets.",
    )
    p.add_argument("source", metavar="SESSION_OR_LOG_DIR", help="log, controller or session directory")
    p.add_argument("--name", required=True, help="dataset name; '-v0' is appended when it has no version")
    p.add_argument("--env", help="gymnasium env id of the logged system (default: the one log_meta.json records)")
    p.add_argument("--force", action="store_true", help="replace an existing dataset of that name")
    p.add_argument(
        "--allow-gaps",
        action="store_true",
        help="convert what is intact when chunks are missing or damaged or transitions are non-finite (each is "
        "named on stderr); without it such logs are refused with exit 2 and nothing is written",
    )
    add_data_dir(p)
    p.set_defaults(handler=_cmd_logs_convert)


def _cmd_logs_convert(args) -> int:
    from acalign_robot.robot_log.to_minari import convert_logs

    dataset, summary = convert_logs(args.source, args.name, args.env, force=args.force, allow_gaps=args.allow_gaps)
    for line in summary["skipped"]:
        print(f"acalign logs convert: skipped: {line}", file=sys.stderr)
    for line in summary["notes"]:
        print(f"acalign logs convert: note: {line}", file=sys.stderr)
    dropped = f", {summary['dropped_batches']} batches dropped by the controller" if summary["dropped_batches"] else ""
    print(
        f"wrote {summary['dataset_id']}: {summary['episodes']} episodes ({summary['partial_episodes']} partial), "
        f"{summary['transitions']} steps from {len(summary['logs'])} log(s){dropped} -> "
        f"{Path(dataset.storage.data_path).parent}"
    )
    return EXIT_OK


def add_replay_command(commands: Subcommands) -> None:
    p = commands.add_parser(
        "replay",
        help="replay a controller log: open-loop divergence, video, policy evaluation",
        description="Offline tools on one transition log (a log directory or a controller directory holding log/).",
    )
    actions = add_actions(p, "replay_command")
    _add_replay_open_loop_action(actions)
    _add_replay_render_action(actions)
    _add_replay_eval_action(actions)


def _add_replayed_log(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", metavar="LOG", help="log directory (or a controller directory holding log/)")


def _add_replay_env(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", help="gymnasium MuJoCo env id (default: the one the log records)")


def _add_replay_open_loop_action(actions: Subcommands) -> None:
    p = actions.add_parser(
        "open-loop",
        help="replay the logged actions in the MuJoCo sim and measure observation divergence",
        description="Start each logged episode in the sim at the logged start state (rebuilt from the observation) "
        "and apply the logged executed actions open loop. Prints the divergence summary; writes open_loop.json "
        "(mean/max ||obs_replay - obs_logged|| per step index) and divergence.png.",
    )
    _add_replayed_log(p)
    _add_replay_env(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default: open-loop/ beside the log)")
    p.set_defaults(handler=_cmd_replay_open_loop)


def _cmd_replay_open_loop(args) -> int:
    import json

    from acalign_robot.data.log_analysis import open_loop, read_single_log

    log = read_single_log(args.log)
    result = open_loop(log, args.env, Path(args.out) if args.out else log.directory.parent / "open-loop")
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("per_step")}, indent=1))
    return EXIT_OK


def _add_replay_render_action(actions: Subcommands) -> None:
    p = actions.add_parser(
        "render",
        help="headless mp4 video of logged episodes",
        description="Render the logged observations as sim states (MUJOCO_GL=egl unless set) into an H.264 mp4 "
        "at about 30 frames per second.",
    )
    _add_replayed_log(p)
    _add_replay_env(p)
    p.add_argument("--out", required=True, metavar="FILE.mp4", help="video file to write")
    p.add_argument("--episodes", type=positive_int, default=1, help="first N logged episodes (default 1)")
    p.add_argument("--width", type=positive_int, default=320, help="frame width, a multiple of 16 (default 320)")
    p.add_argument("--height", type=positive_int, default=240, help="frame height, a multiple of 16 (default 240)")
    p.set_defaults(handler=_cmd_replay_render)


def _cmd_replay_render(args) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless; must be set before mujoco is imported
    from acalign_robot.data.log_analysis import read_single_log, render_log

    log = read_single_log(args.log)
    result = render_log(log, args.out, args.env, episodes=args.episodes, width=args.width, height=args.height)
    print(f"wrote {result['video']}: {result['frames']} frames, {result['episodes']} episode(s) of {result['env_id']}")
    return EXIT_OK


def _add_replay_eval_action(actions: Subcommands) -> None:
    p = actions.add_parser(
        "eval",
        help="a policy's actions (and a checkpoint's critic values) on logged observations",
        description="Deterministic actions of a policy artifact on the logged observations against the logged "
        "executed and policy actions (mean/max absolute deviation per dimension and overall); with --checkpoint, "
        "the critic's min-over-ensemble values on the logged (observation, action) pairs. Prints JSON.",
    )
    _add_replayed_log(p)
    p.add_argument("--policy", required=True, metavar="ARTIFACT", help="policy directory: NAME or NAME/VERSION")
    p.add_argument("--checkpoint", metavar="CKPT", help="checkpoint (.pt) whose critic to evaluate")
    p.add_argument("--out", metavar="FILE.json", help="also write the result here")
    p.set_defaults(handler=_cmd_replay_eval)


def _cmd_replay_eval(args) -> int:
    import json

    from acalign_robot.data.log_analysis import evaluate_on_log, read_single_log

    if args.checkpoint:
        set_threads(1)
    result = evaluate_on_log(read_single_log(args.log), args.policy, args.checkpoint)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return EXIT_OK
