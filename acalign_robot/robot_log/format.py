"""The transition log on disk: one directory per controller, written by transition_log.py, read by reader.py.

Directory layout:
    log_meta.json                 written at creation (acalign_robot.atomic): format, controller_id, env_id, obs_dim,
                                  action_dim, observation/action spaces and control period when the caller knows
                                  them (bounds as lists, null = unbounded), created (ISO 8601) and created_unix_s
    chunk-SSSS-NNNNNN.npz         closed chunks; SSSS = segment, NNNNNN = chunk number (zero-padded: names sort
                                  in writing order)
    .chunk-SSSS-NNNNNN.npz.tmp    the chunk being written (ignored by readers; left behind by a kill)

A segment is one writer's lifetime: a restarted controller that reopens its log directory appends a new segment, and
episodes never span two segments. Chunk numbers run on across segments.

Chunk format: an uncompressed `.npz` (numpy's zip of `.npy` files, written with `np.savez`, read with
`np.load(allow_pickle=False)`: no pickle, no object arrays) with these named arrays, n = transitions in the chunk:
    format           ()            int64, CHUNK_FORMAT
    controller_id    ()            unicode string
    segment          ()            int64
    dropped_batches  ()            int64, batches this writer had dropped when the chunk closed (cumulative)
    seq              (n,)          int64, TransitionBatch.seq of each transition's batch (a gap = dropped batches)
    policy_version   (n,)          int64, the policy version that chose each action
    obs              (n, obs_dim)  as sent (float32 from the controller)
    action           (n, act_dim)  the executed action, after the safety filter
    reward           (n,)
    next_obs         (n, obs_dim)
    terminated       (n,)          bool
    truncated        (n,)          bool
    timestamp_s      (n,)          float64, wall-clock seconds since the epoch (time.time())
    extra.<name>     (n, ...)      each TransitionBatch.extras entry: policy_action (the raw policy output),
                                   safety_flags (controller/safety.py FilterFlags bits), and the driver's step info
                                   (StepReply.info), one entry per key (controller/streaming.py fixes them at the
                                   first step):
    extra.info.<key>       (n, ...)  a number (float64), bool or array key; NaN / 0 / False where a step lacked it
    extra.info_text.<key>  (n, 64)   a string key: UTF-8 bytes padded with zeros (`info_columns` decodes it)
A log without driver info (written before protocol 4, or by a driver that reports none) has no `info` extras, and
reads the same.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from acalign_robot.errors import InputError

__all__ = [
    "BASE_FIELDS",
    "CHUNK_FIELDS",
    "CHUNK_FORMAT",
    "CHUNK_NAME",
    "EXTRA_PREFIX",
    "INFO_PREFIX",
    "INFO_TEXT_PREFIX",
    "META_FILE",
    "TEMP_NAME",
    "LogError",
    "chunk_file_name",
    "info_columns",
    "read_meta",
    "temp_file_name",
]

CHUNK_FORMAT = 1
META_FILE = "log_meta.json"
CHUNK_NAME = re.compile(r"^chunk-(\d{4})-(\d{6})\.npz$")  # groups: segment, chunk number
TEMP_NAME = re.compile(r"^\.(chunk-\d{4}-\d{6}\.npz)\.tmp$")  # group: the closed chunk's name
EXTRA_PREFIX = "extra."
# Extras names of the driver's step info. Strings travel and are stored as fixed-width UTF-8 bytes in uint8 arrays,
# because neither the wire (protocol.WIRE_DTYPES) nor a pickle-free npz takes object arrays.
INFO_PREFIX = "info."
INFO_TEXT_PREFIX = "info_text."
BASE_FIELDS = ("seq", "policy_version", "obs", "action", "reward", "next_obs", "terminated", "truncated")
CHUNK_FIELDS = ("format", "controller_id", "segment", "dropped_batches", *BASE_FIELDS, "timestamp_s")


class LogError(InputError):
    """A transition log that cannot be opened or read: the message names the directory or chunk file."""


def chunk_file_name(segment: int, number: int) -> str:
    return f"chunk-{segment:04d}-{number:06d}.npz"


def temp_file_name(chunk_name: str) -> str:
    """The name a chunk has while it is written (a reader tells it apart from a closed one)."""
    return f".{chunk_name}.tmp"


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise LogError(f"{directory}: not a transition log (no {META_FILE})") from None
    except (OSError, ValueError) as exc:
        raise LogError(f"{path}: unreadable log metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise LogError(f"{path}: log metadata must be a JSON object")
    return meta


def info_columns(extras: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The driver info in a log's (or a batch's) extras: info key -> (n, ...) column; a string key as (n,) bytes."""
    columns = {}
    for name, values in extras.items():
        if name.startswith(INFO_PREFIX):
            columns[name[len(INFO_PREFIX) :]] = values
        elif name.startswith(INFO_TEXT_PREFIX):
            text = np.ascontiguousarray(values, dtype=np.uint8)
            columns[name[len(INFO_TEXT_PREFIX) :]] = text.view(f"S{text.shape[1]}").reshape(len(text))
    return columns
