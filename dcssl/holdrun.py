"""``python -m dcssl.holdrun RUN_DIR [--what TEXT] -- COMMAND …``: run COMMAND under the run lock.

For scripts that submit work on a run (``slurm/pipeline.sh``): the lock is taken first (a run in
use → one line naming its holder, exit 2, COMMAND not run), COMMAND runs with the locked
descriptor and the holder's id (so what it starts runs under this hold, as a launcher's jobs do),
and every SLURM job id COMMAND appends to the file named by ``$DCSSL_RUN_JOBS`` joins the lease:
once COMMAND ends, those jobs keep the run while any is queued or running. Exit status: COMMAND's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dcssl.paths import RunPaths
from dcssl.runlock import JOBS_ENV, RunInUse, child_env, hold_run, record_jobs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dcssl.holdrun", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="the run directory (must exist)")
    p.add_argument("--what", default="a script", help="what holds the run, as a refusal names it")
    return p


def _job_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, command = _parser().parse_args(argv[:cut]), argv[cut + 1 :]
    if not command or not args.run_dir.is_dir():
        print(
            "error: usage: python -m dcssl.holdrun RUN_DIR (an existing folder) -- COMMAND …", file=sys.stderr
        )
        return 2
    paths = RunPaths(args.run_dir)
    try:
        with hold_run(paths, args.what) as lock, tempfile.NamedTemporaryFile("r") as jobs:
            env = dict(os.environ, **child_env(paths, lock), **{JOBS_ENV: jobs.name})
            fds = (lock.fd,) if lock is not None and lock.fd is not None else ()
            code = subprocess.run(command, env=env, pass_fds=fds).returncode
            record_jobs(lock, _job_ids(Path(jobs.name)))
    except RunInUse as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    from dcssl.interrupt import run_interruptible

    sys.exit(run_interruptible(main, "dcssl.holdrun"))
