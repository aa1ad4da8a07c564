"""``launch config``: print every config key with its default and meaning (YAML or Markdown)."""

from __future__ import annotations

import argparse

from dcssl.configdoc import commented_yaml, markdown_reference
from dcssl.runconfig import RunConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true", help="a Markdown table instead of YAML")


def run(args: argparse.Namespace) -> int:
    print(markdown_reference(RunConfig) if args.markdown else commented_yaml(RunConfig), end="")
    return 0
