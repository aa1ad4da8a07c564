"""RunPaths is the one place a run-level path is spelled: no other dcssl module joins a run's
file or folder name onto a path by hand (``run_dir / "store"``), so the layout can move in one place."""

from __future__ import annotations

import ast
from pathlib import Path

from dcssl.paths import RunPaths

ROOT = Path(__file__).resolve().parents[2]
OWNER = "dcssl/paths.py"
RUN_NAMES = {
    "store", "config.yaml", "state.json", "metrics.jsonl", "excluded.npy", "curated",
    "selection.npz", "report", "logs", "charts", "tb", "run.lock", "checkpoints", "settings", "export",
    "encoder.pt", "embed", "eval", "eval.json", "slides.json",
}  # fmt: skip
"""Names of a run's files and folders (README, "On-disk layout of a run"); what is inside the store
(manifest.json, shards/) is dcssl.store's to spell."""


def _joined(node: ast.AST) -> str | None:
    """The name ``node`` joins onto a path when it is ``path / "name"`` with a literal name."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        right = node.right
        if isinstance(right, ast.Constant) and isinstance(right.value, str):
            return right.value
    return None


def hand_built_run_paths(source: str) -> list[str]:
    """The literal names joined by ``/`` in ``source`` whose first component is a run-level name."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if (name := _joined(node)) is not None and name.split("/")[0] in RUN_NAMES:
            hits.append(name)
    return hits


def test_the_rule_sees_a_hand_built_run_path():
    built = 'a = run_dir / "store"\nb = Path(r) / "metrics.jsonl"\nc = f"{run / \'curated\'}"\n'
    built += 'd = root / "store/shards"\n'
    assert sorted(hand_built_run_paths(built)) == ["curated", "metrics.jsonl", "store", "store/shards"]
    fine = 'x = {"store": "store"}\ny = out / "img"\n"""Reads RUN/config.yaml."""\nz = RunPaths(r).store\n'
    assert hand_built_run_paths(fine) == []


def test_only_run_paths_spells_run_level_paths():
    offenders = {}
    for path in sorted((ROOT / "dcssl").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name != OWNER and (hits := hand_built_run_paths(path.read_text())):
            offenders[name] = hits
    assert offenders == {}, "build run paths with dcssl.paths.RunPaths"


def test_run_paths_follow_the_layout(tmp_path):
    paths = RunPaths(tmp_path)
    assert paths.store == tmp_path / "store" and paths.manifest == tmp_path / "store" / "manifest.json"
    assert paths.config == tmp_path / "config.yaml" and paths.state == tmp_path / "state.json"
    assert paths.metrics == tmp_path / "metrics.jsonl" and paths.excluded == tmp_path / "excluded.npy"
    assert paths.curated_store == tmp_path / "curated" / "store"
    assert paths.curated_manifest.parent == paths.curated_selection.parent == paths.curated
    assert paths.shard("slide-0001") == tmp_path / "store" / "shards" / "slide-0001.h5"
    assert paths.report == tmp_path / "report" and paths.export == tmp_path / "export" / "encoder.pt"
    assert paths.embeddings.parent.name == "embed" and paths.evaluation == tmp_path / "eval" / "eval.json"
