"""The package's shape: hpc/ never imports dcssl/, no import cycle among dcssl modules (deferred
imports inside functions count too), and every --help example is a real key of the one loader."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
from pathlib import Path

import pytest

from dcssl.config import load_run_config
from dcssl.launch.__main__ import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file, resolved to full names."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _graph(package: str) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def test_hpc_never_imports_dcssl():
    offenders = {
        name: sorted(m for m in _imports(p) if m.split(".")[0] == "dcssl")
        for name, p in {_module_name(p): p for p in (ROOT / "hpc").rglob("*.py")}.items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_among_dcssl_modules():
    graph = _graph("dcssl")
    # a package's __init__ importing its own submodules is not a cycle through the package
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _help_texts() -> list[str]:
    texts = []
    for name in SUBCOMMANDS:
        parser = argparse.ArgumentParser(prog=name)
        importlib.import_module(f"dcssl.launch.{name}").add_arguments(parser)
        texts.append(parser.format_help())
    return texts


EXAMPLE = re.compile(r"\b(?!section\.key=)([a-z_]+(?:\.[a-z_]+)+=[^\s,;)]+)")  # not the metavar


@pytest.mark.parametrize("text", _help_texts(), ids=list(SUBCOMMANDS))
def test_every_help_example_goes_through_the_loader(text):
    for example in EXAMPLE.findall(text):
        load_run_config(overrides=[example])


def test_help_shows_real_examples():
    examples = {e for text in _help_texts() for e in EXAMPLE.findall(text)}
    assert "train.optim.lr=0.05" in examples and "loop.epochs=5" in examples
