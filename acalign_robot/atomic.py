"""Atomic, durable file writes (torch-free: every process and package may use them).

`write_atomic(path, write)` and `write_text_atomic(path, text)` replace `path` so that a reader sees the previous
file or the new one, never half of one, and the new one survives a crash or power loss once they return:
1. write to a temp file in the same directory (a rename is atomic only within one file system), named
   `.NAME.PID.tmp`: two processes writing the same file never share a temp file, and a dead writer's temp file can
   be told from a live one's (`remove_stale_temp_files`);
2. flush and fsync it: its bytes are on the disk before its name is;
3. os.replace it over `path`;
4. fsync the directory: the rename itself is on the disk.
A failure at any step (a full disk, an exception from `write`) removes the temp file and leaves `path` as it was.

`durable=False` skips both fsyncs (the file is still replaced atomically) for a writer that must not wait for the
disk: an fsync may block for tens of milliseconds on a busy disk.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

__all__ = ["remove_stale_temp_files", "replace_durably", "temp_path", "write_atomic", "write_text_atomic"]


def temp_path(path: Path) -> Path:
    """Where this process writes `path` before the rename: `.NAME.PID.tmp` beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: Path, temp: Path, write: Callable[[BinaryIO], object], *, durable: bool = True) -> None:
    """Steps 1-4 with a temp file the caller names, which a failure leaves behind.

    For a caller whose readers recover a whole temp file (robot_log's chunks); others use `write_atomic`.
    """
    with open(temp, "wb") as handle:
        write(handle)
        handle.flush()
        if durable:
            os.fsync(handle.fileno())
    os.replace(temp, path)
    if durable:
        _fsync_directory(path.parent)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, durable: bool = True) -> Path:
    """Replace `path` with what `write(handle)` writes to a binary file handle; returns `path` as a Path."""
    path = Path(path)
    temp = temp_path(path)
    try:
        replace_durably(path, temp, write, durable=durable)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    """Replace `path` with `text` (UTF-8); returns `path` as a Path."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda handle: handle.write(data), durable=durable)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(directory: Path, names: Iterable[str]) -> list[Path]:
    """Remove the temp files of `names` (file names in `directory`) whose writers died mid-write (SIGKILL), and this
    process's own; returns what was removed. A file of a live process other than this one is kept: it may be
    writing it now."""
    pattern = re.compile(rf"^\.(?:{'|'.join(re.escape(name) for name in names)})\.(\d+)\.tmp$")
    removed = []
    for path in directory.glob(".*.tmp"):
        match = pattern.match(path.name)
        if match and (int(match[1]) == os.getpid() or not _pid_alive(int(match[1]))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
