"""Children of a supervisor stop safely when the supervisor dies, even by SIGKILL.

The supervisor puts its pid in `ACALIGN_SUPERVISOR_PID`. A child started with it runs a daemon thread that
checks its parent every 200 ms; once the parent is gone (the child was re-parented), it sends itself SIGTERM,
which every role handles as its safe stop (controller: safe action, then exit; driver: safe action, close;
learner: checkpoint). If the process is still alive 30 s later, the thread ends it.
Polling the parent pid is portable and needs no privileges (prctl's PDEATHSIG is Linux-only and is reset by exec).
"""

from __future__ import annotations

import os
import signal
import threading
import time

__all__ = ["SUPERVISOR_ENV", "start_lifeline"]

SUPERVISOR_ENV = "ACALIGN_SUPERVISOR_PID"
_POLL_S = 0.2
_HARD_EXIT_AFTER_S = 30.0


def start_lifeline() -> bool:
    """Start watching the supervisor named in the environment; False when there is none."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor or not supervisor.isdigit():
        return False
    supervisor_pid = int(supervisor)
    if os.getppid() != supervisor_pid:  # already orphaned before we looked
        os.kill(os.getpid(), signal.SIGTERM)
        return True

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(_HARD_EXIT_AFTER_S)
        os._exit(1)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
    return True
