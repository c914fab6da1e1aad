"""Policy artifacts: export a checkpoint's actor, and list or show what the policy store holds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from acalign_robot.cli.common import EXIT_OK, Subcommands, add_actions


def _add_policies_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policies-dir", default="policies", metavar="DIR", help="policy store (default policies/)")


def add_export_command(commands: Subcommands) -> None:
    p = commands.add_parser(
        "export",
        help="export a checkpoint's actor as a policy artifact (ONNX + manifest)",
        description="Export the actor of a checkpoint (any phase) as one self-contained ONNX model with the "
        "observation normalisation and action scaling inside, plus manifest.json, into "
        "POLICIES_DIR/NAME/VERSION/ (VERSION: the next integer; existing versions are never overwritten).",
    )
    p.add_argument("checkpoint", help="checkpoint (.pt): behaviour snapshot, offline.pt or an online checkpoint")
    p.add_argument("--name", required=True, help="policy name: letters, digits, '_', '.', '-' (e.g. hopper)")
    _add_policies_dir(p)
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args) -> int:
    from acalign_robot.export.onnx_export import write_artifact

    directory = write_artifact(args.checkpoint, args.name, args.policies_dir)
    size_kb = (directory / "policy.onnx").stat().st_size / 1024
    print(f"policy {args.name}/{directory.name}: {directory} (policy.onnx {size_kb:.0f} KB + manifest.json)")
    return EXIT_OK


def add_policies_command(commands: Subcommands) -> None:
    p = commands.add_parser(
        "policies",
        help="list or show exported policy artifacts",
        description="Inspect the policy store (POLICIES_DIR/NAME/VERSION/).",
    )
    actions = add_actions(p, "policies_command")
    _add_policies_list_action(actions)
    _add_policies_show_action(actions)


def _add_policies_list_action(actions: Subcommands) -> None:
    p = actions.add_parser(
        "list", help="every policy with its latest version", description="One line per policy: latest version."
    )
    _add_policies_dir(p)
    p.set_defaults(handler=_cmd_policies_list)


def _cmd_policies_list(args) -> int:
    from acalign_robot.policy.manifest import PolicyError, load_manifest
    from acalign_robot.policy.store import MANIFEST_FILE, list_policies

    policies = list_policies(args.policies_dir)
    if not policies:
        print(f"no policies in {args.policies_dir}")
        return EXIT_OK
    rows = [("NAME", "LATEST", "VERSIONS", "ENV", "ALGORITHM", "STEP", "CREATED")]
    for name, numbers in policies.items():
        try:
            manifest = load_manifest(Path(args.policies_dir) / name / str(numbers[-1]) / MANIFEST_FILE)
            details = (manifest.env_id, manifest.algorithm, str(manifest.training_step), manifest.created)
        except PolicyError as exc:  # one broken version must not hide the others
            details = ("?", f"unreadable manifest: {exc}", "", "")
        rows.append((name, str(numbers[-1]), str(len(numbers)), *details))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return EXIT_OK


def _add_policies_show_action(actions: Subcommands) -> None:
    p = actions.add_parser(
        "show",
        help="one version's manifest, with its sha256 checked",
        description="Print a version's manifest.json and verify the sha256 of its policy.onnx (exit 2 if wrong).",
    )
    p.add_argument("ref", metavar="NAME[/VERSION]", help="policy name (its latest version) or name/version")
    _add_policies_dir(p)
    p.set_defaults(handler=_cmd_policies_show)


def _cmd_policies_show(args) -> int:
    from acalign_robot.policy.manifest import PolicyError, sha256_hex
    from acalign_robot.policy.store import POLICY_FILE, read_artifact, resolve_ref

    directory = resolve_ref(args.policies_dir, args.ref)
    onnx_bytes, manifest = read_artifact(directory)
    if sha256_hex(onnx_bytes) != manifest.onnx.sha256:
        raise PolicyError(f"{directory / POLICY_FILE}: sha256 does not match the manifest (corrupt or tampered with)")
    print(manifest.to_json(), end="")  # stdout stays pure JSON (for jq); the check's verdict goes to stderr
    print(f"{directory}: {POLICY_FILE} {len(onnx_bytes)} bytes, sha256 verified", file=sys.stderr)
    return EXIT_OK
