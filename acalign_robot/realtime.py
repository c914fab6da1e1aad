"""Real-time scheduling for the processes on the control path: the controller and the driver server.

Under Linux's normal scheduler a control loop that sleeps between ticks waits, at each wake-up, behind whatever else
is running: on a machine shared with a learner, a tick and the driver's reply queue for CPU time slices. What robot
stacks do (ros2_control's real-time threads, for one), this does on request: SCHED_FIFO at a fixed priority, which
runs a waking control thread ahead of every normal thread, and optionally pinned cores. Measured on the project's
2-core machine with two fine-tuning jobs running: 500 Hz deadline misses 6.6% under the normal scheduler, 0.3% with
SCHED_FIFO (docs/results.md, control loop).

Scheduling policy and affinity belong to each thread, and a new thread inherits its creator's. `apply` therefore
runs first in the process, before ZeroMQ's I/O thread starts, so that it inherits it (it carries every message of
a tick; onnxruntime, with one intra-op thread, runs inference on the calling thread). Threads that work off the
control path (the policy swapper, the transition-log writer) call `leave_realtime` as they start, so that they can
never hold a control core: SCHED_FIFO does not time-slice between threads of equal priority.

SCHED_FIFO is Linux only and needs root, CAP_SYS_NICE, or an rtprio limit at least the priority (`ulimit -r`,
/etc/security/limits.conf). The kernel's RT throttling (kernel.sched_rt_runtime_us, 95% of each second by default)
keeps a runaway real-time thread from starving the rest of the machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from acalign_robot.config import FieldError
from acalign_robot.errors import InputError

__all__ = ["RealtimeConfig", "apply", "check_cores", "leave_realtime", "max_fifo_priority", "pin_to_cores"]

_CAP_SYS_NICE = 23  # bit of the capability in /proc/<pid>/status's CapEff mask (linux/capability.h)


@dataclass(frozen=True)
class RealtimeConfig:
    """The `realtime:` section of a controller or driver configuration; the defaults change nothing."""

    priority: int | None = None  # SCHED_FIFO priority, 1 (lowest) to 99; null: the normal scheduler
    cpu_affinity: tuple[int, ...] | None = None  # cores for this process (os.sched_setaffinity); null: all

    def validate(self) -> None:
        if self.priority is not None and not 1 <= self.priority <= 99:
            raise FieldError("priority", f"must be a SCHED_FIFO priority in 1..99, got {self.priority}")
        check_cores(self.cpu_affinity)


def check_cores(cores: Sequence[int] | None) -> None:
    """A `cpu_affinity` value: null, or distinct core numbers >= 0 (FieldError otherwise)."""
    if cores is not None and (not cores or min(cores) < 0 or len(set(cores)) != len(cores)):
        raise FieldError("cpu_affinity", f"must be distinct core numbers >= 0, got {list(cores)}")


def pin_to_cores(cores: Sequence[int], where: str) -> None:
    """Pin the calling thread (and the threads it starts later) to `cores`; `where` names the field in errors."""
    if not hasattr(os, "sched_setaffinity"):
        raise InputError(f"{where}: this platform cannot pin a process to cores (os.sched_setaffinity)")
    try:
        os.sched_setaffinity(0, cores)
    except (OSError, ValueError) as exc:
        raise InputError(f"{where} {list(cores)}: {exc}") from None


def apply(config: RealtimeConfig, where: str = "realtime") -> None:
    """Put the calling thread, and every thread it starts from now on, under `config`.

    Raises InputError, naming the field as `where.priority` / `where.cpu_affinity`, when the platform or the user's
    permissions do not allow it: a process asked to run real-time must not run silently without it.
    """
    if config.cpu_affinity is not None:
        pin_to_cores(config.cpu_affinity, f"{where}.cpu_affinity")
    if config.priority is None:
        return
    if not hasattr(os, "SCHED_FIFO"):
        raise InputError(f"{where}.priority: this platform has no SCHED_FIFO scheduling (Linux only)")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(config.priority))
    except PermissionError:
        raise InputError(
            f"{where}.priority {config.priority}: this user may not use SCHED_FIFO; run as root, give the interpreter "
            f"CAP_SYS_NICE, or raise the rtprio limit to at least {config.priority} (ulimit -r, "
            "/etc/security/limits.conf)"
        ) from None


def leave_realtime() -> None:
    """Move the calling thread back to the normal scheduler, if it inherited a real-time policy."""
    if hasattr(os, "SCHED_FIFO") and os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def max_fifo_priority() -> int:
    """The highest SCHED_FIFO priority this process may take: 99 with CAP_SYS_NICE, else its rtprio limit (0: none)."""
    if not hasattr(os, "SCHED_FIFO"):
        return 0
    if _has_cap_sys_nice():
        return 99
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    return 99 if soft == resource.RLIM_INFINITY else min(int(soft), 99)


def _has_cap_sys_nice() -> bool:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except OSError:
        pass
    return False
