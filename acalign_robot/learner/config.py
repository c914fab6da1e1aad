"""The learner process's configuration: a frozen dataclass whose saved form is YAML (`acalign learner --config`).

Kept apart from `process` and free of torch so that launch files, which embed a `learner:` section, load and validate
(`acalign validate`) on a machine without the learner's stack. The supervisor fills in the endpoints and
`checkpoint_dir` of a launched learner; the defaults serve a learner started by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from acalign_robot.config import FieldError
from acalign_robot.policy.manifest import PolicyError, validate_name
from acalign_robot.realtime import check_cores
from acalign_robot.wire.security import SecurityConfig

__all__ = ["LearnerConfig"]

_ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")


@dataclass(frozen=True)
class LearnerConfig:
    checkpoint: str  # 'online' checkpoint: `acalign align` output or a learner.pt (paths relative to the cwd)
    checkpoint_dir: str = "runs/learner"  # learner.pt, status.json, metrics.jsonl; `resume` reads learner.pt here
    transitions_endpoint: str = "tcp://127.0.0.1:5556"  # ROUTER, bind (batches in, acks out)
    policy_endpoint: str = "tcp://127.0.0.1:5557"  # PUB, bind
    utd: float = 1.0  # gradient updates per env step received
    # When transitions arrive faster than updates run (a CPU learner behind a fast robot): `catch_up` keeps the ratio
    # and works the backlog off later (the published policy lags the robot by the backlog, and a stop on
    # max_env_steps waits for it); `skip` forgives updates owed beyond `max_owed_updates` (the policy stays current,
    # the achieved UTD falls below `utd`; status: `utd_achieved`, `updates_skipped`).
    when_behind: Literal["catch_up", "skip"] = "catch_up"
    max_owed_updates: int = 1000  # with when_behind: skip
    publish_every: int = 500  # updates between two published policies
    republish_every_s: float = 2.0  # re-send the latest policy for subscribers that joined after it was sent
    checkpoint_every_updates: int = 10_000
    metrics_every_s: float = 2.0
    torch_threads: int = 1  # 1: a controller on the same cores keeps its latency (ENVIRONMENT.md)
    # auto: CUDA when torch sees a GPU (pick one with CUDA_VISIBLE_DEVICES), else the CPU; cuda without a GPU runs on
    # the CPU with a logged warning (algo.device.resolve_device). Fixed seed + cpu: bit-identical runs.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_affinity: tuple[int, ...] | None = None  # cores for this process (os.sched_setaffinity); null: all
    max_updates: int | None = None  # stop after this many updates
    max_env_steps: int | None = None  # stop after receiving this many transitions (owed updates finished first)
    metrics: str | None = None  # JSON-lines metrics path; null: <checkpoint_dir>/metrics.jsonl
    seed: int = 0
    policy_name: str | None = None  # name in the manifests; null: the checkpoint's env id
    security: SecurityConfig = field(default_factory=SecurityConfig)  # CURVE server side of both channels

    def validate(self) -> None:
        for name in ("transitions_endpoint", "policy_endpoint"):
            endpoint = getattr(self, name)
            if not endpoint.startswith(_ENDPOINT_SCHEMES):
                raise FieldError(name, f"expected {', '.join(_ENDPOINT_SCHEMES)}..., got {endpoint!r}")
        if self.transitions_endpoint == self.policy_endpoint:
            raise FieldError("policy_endpoint", "must differ from transitions_endpoint")
        if not (self.utd > 0 and math.isfinite(self.utd)):
            raise FieldError("utd", f"must be positive, got {self.utd}")
        for name in ("publish_every", "checkpoint_every_updates", "torch_threads", "max_owed_updates"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("republish_every_s", "metrics_every_s"):
            if not getattr(self, name) > 0:
                raise FieldError(name, f"must be positive, got {getattr(self, name)}")
        for name in ("max_updates", "max_env_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1 or null, got {getattr(self, name)}")
        check_cores(self.cpu_affinity)
        if self.policy_name is not None:
            try:
                validate_name(self.policy_name)
            except PolicyError as exc:
                raise FieldError("policy_name", str(exc)) from None
