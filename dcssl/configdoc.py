"""The config reference, generated from the dataclasses' field docstrings (never out of date)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import yaml

from hpc.config import field_docs, to_dict, type_name

__all__ = ["commented_yaml", "markdown_reference"]


def _sections(cls: type, prefix: str = ""):
    """(dotted key, type name, default, doc) for every leaf field, depth first."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            yield from _sections(type(value), f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, type_name(hints[f.name]), value, docs.get(f.name, "")


def _scalar(value: Any) -> str:
    return yaml.safe_dump(to_dict(value), default_flow_style=True).strip().removesuffix("...").strip()


def markdown_reference(cls: type) -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, type_text, value, doc in _sections(cls):
        rows.append(f"| `{key}` | {type_text.replace('|', '/')} | `{_scalar(value)}` | {doc} |")
    return "\n".join(rows)


def commented_yaml(cls: type) -> str:
    """Every key with its default, each preceded by its docstring as a comment."""
    lines: list[str] = []
    section = None
    for key, _type, value, doc in _sections(cls):
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            head = ".".join(parts[: depth + 1])
            if section is None or not (section + ".").startswith(head + "."):
                lines.append(("  " * depth) + f"{part}:")
        section = ".".join(parts[:-1])
        indent = "  " * (len(parts) - 1)
        if doc:
            lines.append(f"{indent}# {doc}")
        lines.append(f"{indent}{parts[-1]}: {_scalar(value)}")
    return "\n".join(lines) + "\n"
