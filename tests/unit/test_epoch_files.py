"""dcssl.epochs owns the epoch files: what its writers write is what its readers read (whole,
by row range, stats, centroids), a half-written epoch is invisible, damage is named — and no
other dcssl module spells an epoch path or an epoch file's name (RunPaths and dcssl.epochs do)."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from dcssl.epochs import features, labels, trained
from dcssl.epochs.labels import LabelFilesError, LabelsWriter
from dcssl.paths import RunPaths
from hpc.config import ConfigError
from hpc.integrity import DamagedFile

ROOT = Path(__file__).resolve().parents[2]
N, K, DIM = 70, 5, 3
OWNERS = ("dcssl/epochs/", "dcssl/paths.py")
ANYWHERE = ("epoch-", "labels.i32", "embeddings.f16", ".done.json")
"""Never in a string outside the owners (messages included: a path in a message is a path)."""
AS_PATH = ("COMPLETE", "stats.json", "centroids.npy")
"""Never as a path component outside the owners (a message may say the word)."""


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def epoch_path_strings(source: str) -> list[str]:
    """The string literals (f-string parts too, docstrings not) that spell an epoch path."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        text = node.value
        as_part = any(re.search(rf"(^|/){re.escape(name)}($|/)", text) for name in AS_PATH)
        if as_part or any(token in text for token in ANYWHERE):
            hits.append(text)
    return hits


def test_the_rule_sees_a_hand_built_epoch_path():
    built = 'folder = run / "labels" / f"epoch-{e:04d}"\nok = (folder / "COMPLETE").is_file()\n'
    built += 'x = np.fromfile(folder / "labels.i32")\ns = folder / "stats.json"\n'
    assert sorted(epoch_path_strings(built)) == ["COMPLETE", "epoch-", "labels.i32", "stats.json"]
    said = '"""Reads labels/epoch-NNNN/COMPLETE."""\nmsg = "no COMPLETE marker; see stats.json k"\n'
    assert epoch_path_strings(said) == []


def test_only_the_owner_and_run_paths_spell_epoch_paths():
    offenders = {}
    for path in sorted((ROOT / "dcssl").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if not name.startswith(OWNERS) and (hits := epoch_path_strings(path.read_text())):
            offenders[name] = hits
    assert offenders == {}, "build epoch paths with RunPaths and read/write them with dcssl.epochs"


def _labels(seed: int = 0) -> np.ndarray:
    out = np.random.default_rng(seed).integers(0, K, N).astype(np.int32)
    out[[4, 9]] = -1  # unassigned (RCC noise)
    return out


def _publish(run_dir: Path, epoch: int, values: np.ndarray, split: int = 30) -> dict:
    stats = {"k": K, "n": N, "sizes": np.bincount(values[values >= 0], minlength=K).tolist(), "epoch": epoch}
    writer = LabelsWriter(run_dir, epoch, N)
    writer.begin()
    writer.write_rows(split, values[split:])  # ranks write their ranges in any order
    writer.write_rows(0, values[:split])
    writer.publish(np.arange(K * DIM, dtype=np.float32).reshape(K, DIM), stats)
    return stats


def test_labels_read_back_whole_by_range_stats_and_centroids(tmp_path):
    values = _labels()
    stats = _publish(tmp_path, 2, values)
    folder = RunPaths(tmp_path).labels(2)
    assert sorted(os.listdir(folder)) == ["COMPLETE", "centroids.npy", "labels.i32", "stats.json"]
    assert (folder / "labels.i32").read_bytes() == values.astype("<i4").tobytes()  # the format
    assert json.loads((folder / "COMPLETE").read_text())["n"] == N
    np.testing.assert_array_equal(labels.read_labels(tmp_path, 2, N), values)
    np.testing.assert_array_equal(labels.read_labels(tmp_path, 2), values)
    np.testing.assert_array_equal(labels.read_labels_range(tmp_path, 2, N, 25, 61), values[25:61])
    assert labels.read_labels_range(tmp_path, 2, N, 5, 5).size == 0
    np.testing.assert_array_equal(labels.sealed_labels(tmp_path, 2, N), values)
    assert labels.read_stats(tmp_path, 2) == stats
    np.testing.assert_array_equal(labels.read_centroids(tmp_path, 2), np.arange(K * DIM).reshape(K, DIM))
    assert labels.complete_epochs(tmp_path) == [2] and labels.verify(tmp_path, 2)["n"] == N
    assert labels.read_labels(tmp_path, 2, N + 1) is None  # another store's labels
    assert labels.read_labels_range(tmp_path, 2, N + 1, 0, 3) is None


def test_a_half_written_epoch_is_invisible_until_published(tmp_path):
    _publish(tmp_path, 0, _labels(1))
    writer = LabelsWriter(tmp_path, 1, N)
    writer.begin()
    writer.write_rows(0, _labels(2))  # killed here: nothing published
    assert writer.tmp.is_dir() and writer.tmp.name.startswith(".")
    assert labels.complete_epochs(tmp_path) == [0] and not labels.is_complete(tmp_path, 1)
    assert (
        labels.read_labels(tmp_path, 1, N) is None and labels.read_labels_range(tmp_path, 1, N, 0, 9) is None
    )
    assert labels.read_stats(tmp_path, 1) == {}
    with pytest.raises(LabelFilesError, match="pseudo-labels of epoch 1 are not complete"):
        labels.sealed_labels(tmp_path, 1, N)
    writer.tmp.rename(RunPaths(tmp_path).labels(1))  # killed between the rename and COMPLETE
    assert labels.complete_epochs(tmp_path) == [0] and labels.read_labels(tmp_path, 1, N) is None
    values = _labels(3)
    _publish(tmp_path, 1, values)  # the re-run replaces it whole
    assert labels.complete_epochs(tmp_path) == [0, 1]
    np.testing.assert_array_equal(labels.read_labels(tmp_path, 1, N), values)


def test_damaged_labels_and_bank_are_named(tmp_path):
    _publish(tmp_path, 0, _labels())
    path = labels.labels_file(tmp_path, 0)
    data = bytearray(path.read_bytes())
    data[8] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFile, match=r"labels\.i32: checksum mismatch"):
        labels.verify(tmp_path, 0)
    with pytest.raises(LabelFilesError, match=r"labels\.i32: checksum mismatch.*--epoch 0 --redo"):
        labels.sealed_labels(tmp_path, 0, N)
    with pytest.raises(LabelFilesError, match="holds 70 labels, the store has 71 tiles"):
        labels.sealed_labels(tmp_path, 0, N + 1)
    features.write_bank(tmp_path, 0, np.ones((N, DIM), dtype=np.float16))
    features.verify(tmp_path, 0)
    with open(features.embeddings_path(tmp_path, 0), "r+b") as handle:
        handle.write(b"\x00\x00")
    with pytest.raises(DamagedFile, match=r"embeddings\.f16: checksum mismatch"):
        features.verify(tmp_path, 0)


def test_bank_readers_agree_and_a_missing_bank_is_none(tmp_path):
    rows = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float16)
    features.write_bank(tmp_path, 3, rows)
    np.testing.assert_array_equal(features.open_bank(tmp_path, 3), rows)
    np.testing.assert_array_equal(features.bank_if_complete(tmp_path, 3), rows)
    bank = features.open_features(tmp_path, 3)
    assert (bank.n, bank.dim) == (N, DIM)
    np.testing.assert_array_equal(bank.rows(11, 40), rows[11:40])
    assert features.complete_epochs(tmp_path) == [3] and features.bank_if_complete(tmp_path, 2) is None
    with pytest.raises(ValueError, match="no COMPLETE marker"):
        features.open_features(tmp_path, 2)
    assert features.bank_rows(tmp_path, 3) == N and features.bank_rows(tmp_path, 2, missing_ok=True) is None
    (features.bank_dir(tmp_path, 3) / "meta.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ConfigError, match=r"meta\.json: "):
        features.bank_rows(tmp_path, 3)
    _publish(tmp_path, 3, _labels())
    _publish(tmp_path, 4, _labels())  # its bank is pruned
    assert labels.newest_with_features(tmp_path) == 3


def test_done_markers_round_trip(tmp_path):
    assert trained.finished_epochs(tmp_path) == [] and trained.read_done(tmp_path, 0) is None
    for epoch in (1, 0, 12):
        trained.write_done(tmp_path, epoch, {"epoch": epoch})
    (RunPaths(tmp_path).train_markers / "epoch-0002.done.json.tmp").write_text("{}")  # a leftover
    assert trained.finished_epochs(tmp_path) == [0, 1, 12]
    assert trained.read_done(tmp_path, 12) == {"epoch": 12}
    assert trained.done_path(tmp_path, 1) == tmp_path / "train" / "epoch-0001.done.json"
