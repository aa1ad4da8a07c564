"""Ctrl-C in a job: one line naming the command that resumes it, exit status 130, no traceback.

A launcher exports ``DCSSL_RESUME`` (its own command line) to the jobs it starts, so a local
step's log names the launcher command to re-run; a job started by hand names itself.
"""

from __future__ import annotations

import _thread
import os
import shlex
import sys
import threading
from collections.abc import Callable

__all__ = ["RESUME_ENV", "run_interruptible", "resume_line"]

RESUME_ENV = "DCSSL_RESUME"


def resume_line(own_command: list[str]) -> str:
    """``interrupted; resume with: …`` for this process (its launcher's command if it has one)."""
    command = os.environ.get(RESUME_ENV) or shlex.join(own_command)
    return f"interrupted; resume with: {command}"


def run_interruptible(main: Callable[[], int], module: str) -> int:
    """``main()``, with Ctrl-C (SIGINT) turned into the one line and exit status 130."""
    previous = sys.unraisablehook

    def redeliver(unraisable) -> None:
        # Ctrl-C landing inside a finaliser or weakref callback is swallowed there ("Exception
        # ignored in …" and a traceback in the log, the job running on): deliver it again from
        # a helper thread, once this hook has returned, so that it surfaces in the main code
        # (a signal raised here would land in this hook and be swallowed again).
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            threading.Timer(0.01, _thread.interrupt_main).start()
        else:
            previous(unraisable)

    sys.unraisablehook = redeliver
    try:
        return main()
    except KeyboardInterrupt:
        print(resume_line(["python", "-m", module, *sys.argv[1:]]), file=sys.stderr, flush=True)
        return 130
    finally:
        sys.unraisablehook = previous
