"""Ctrl-C in a job: one line naming the command that resumes it, exit status 130, no traceback.

A launcher exports ``DCSSL_RESUME`` (its own command line) to the jobs it starts, so a local
step's log names the launcher command to re-run; a job started by hand names itself.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable

__all__ = ["RESUME_ENV", "run_interruptible", "resume_line"]

RESUME_ENV = "DCSSL_RESUME"


def resume_line(own_command: list[str]) -> str:
    """``interrupted; resume with: …`` for this process (its launcher's command if it has one)."""
    command = os.environ.get(RESUME_ENV) or shlex.join(own_command)
    return f"interrupted; resume with: {command}"


def run_interruptible(main: Callable[[], int], module: str) -> int:
    """``main()``, with Ctrl-C (SIGINT) turned into the one line and exit status 130."""
    try:
        return main()
    except KeyboardInterrupt:
        print(resume_line(["python", "-m", module, *sys.argv[1:]]), file=sys.stderr, flush=True)
        return 130
