"""``python -m dcssl.bench <name> [args]`` runs ``dcssl/bench/<name>.py:main(args)``.

Every benchmark prints readable lines with its ratio to a baseline measured in the same process,
and ends with one JSON line for machines.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import dcssl.bench


def available() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(dcssl.bench.__file__).parent)])
        if not m.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m dcssl.bench {{{','.join(names)}}} [options]")
        return 0 if argv else 2
    if argv[0] not in names:
        print(f"error: unknown benchmark {argv[0]!r}; choose one of {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"dcssl.bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
