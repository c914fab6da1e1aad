"""The policy store on disk: `<policies_dir>/<name>/<version>/{policy.onnx, manifest.json}` (torch-free).

Versions are positive integers, written once and never overwritten (the exporter builds a version in a hidden
temporary directory and renames it into place), so a version number names exactly one set of weights forever.
Everything here reads; writing is the exporter's job (acalign_robot/export/onnx_export.py).
"""

from __future__ import annotations

from pathlib import Path

from acalign_robot.policy.manifest import PolicyError, PolicyManifest, load_manifest, validate_name

__all__ = [
    "MANIFEST_FILE",
    "POLICY_FILE",
    "list_policies",
    "read_artifact",
    "resolve_artifact",
    "resolve_ref",
    "versions",
]

POLICY_FILE = "policy.onnx"
MANIFEST_FILE = "manifest.json"


def versions(name_dir: str | Path) -> list[int]:
    """Sorted version numbers under a policy's directory (every integer-named directory, complete or not)."""
    name_dir = Path(name_dir)
    if not name_dir.is_dir():
        return []
    return sorted(int(p.name) for p in name_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)


def list_policies(policies_dir: str | Path) -> dict[str, list[int]]:
    """{name: versions} for every policy in the store (an absent store is an empty one)."""
    policies_dir = Path(policies_dir)
    if not policies_dir.is_dir():
        return {}
    found = {p.name: versions(p) for p in sorted(policies_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    return {name: numbers for name, numbers in found.items() if numbers}


def resolve_ref(policies_dir: str | Path, ref: str) -> Path:
    """`NAME` (its latest version) or `NAME/VERSION` -> that version's directory."""
    name, _, version_text = ref.partition("/")
    validate_name(name)
    name_dir = Path(policies_dir) / name
    if not version_text:
        return resolve_artifact(name_dir)
    if not version_text.isdigit() or int(version_text) < 1:
        raise PolicyError(f"{ref!r}: the version must be a positive integer, as in {name}/3")
    directory = name_dir / str(int(version_text))
    if not directory.is_dir():
        raise PolicyError(f"no policy {name}/{int(version_text)} in {policies_dir} (versions: {versions(name_dir)})")
    return directory


def resolve_artifact(path: str | Path) -> Path:
    """A version directory as given, or a policy's directory -> its latest version."""
    path = Path(path)
    if (path / MANIFEST_FILE).exists():
        return path
    if not path.is_dir():
        raise PolicyError(f"{path}: no such policy directory")
    numbers = versions(path)
    if not numbers:
        raise PolicyError(f"{path}: neither a policy version (no {MANIFEST_FILE}) nor a policy with versions")
    return path / str(numbers[-1])


def read_artifact(directory: str | Path) -> tuple[bytes, PolicyManifest]:
    """The ONNX bytes and the validated manifest of one version; the sha256 is checked by PolicyRunner."""
    directory = Path(directory)
    manifest = load_manifest(directory / MANIFEST_FILE)
    try:
        onnx_bytes = (directory / POLICY_FILE).read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{directory}: no {POLICY_FILE}") from None
    except OSError as exc:
        raise PolicyError(f"{directory / POLICY_FILE}: unreadable ({exc.strerror})") from None
    return onnx_bytes, manifest
