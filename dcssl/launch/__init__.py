"""``python -m dcssl.launch <subcommand> RUN_DIR [options] [section.key=value …]``.

Each subcommand is a module here exposing ``add_arguments(parser)`` and ``run(args) -> int``.
"""
