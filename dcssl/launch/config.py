"""``launch config``: print every config key with its default and meaning (YAML or Markdown)."""

from __future__ import annotations

import argparse

from dcssl.config import run_config_class
from dcssl.configdoc import commented_yaml, markdown_reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="a Markdown table instead of YAML")


def run(args: argparse.Namespace) -> int:
    cls = run_config_class()
    print(markdown_reference(cls) if args.markdown else commented_yaml(cls), end="")
    return 0
