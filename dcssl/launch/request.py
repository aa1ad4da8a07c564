"""A launcher's request on an existing run: the whole config, checked against finished work.

An override that would change what finished epochs (or the tile store) mean is refused with one
line; a key in ``dcssl.settings.MAY_CHANGE`` is accepted and announced with the step it applies to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dcssl.config import RunConfig, load_run_config
from dcssl.paths import RunPaths
from dcssl.pipeline.steps import Step, is_done
from dcssl.settings import MAY_CHANGE, recorded
from hpc.config import ConfigError, to_dict

__all__ = ["check_request", "load_request"]

ONE_OFF = ("eval", "embed", "curate")
"""Sections of commands whose results stand alone: a change there is neither refused nor announced."""


def _finished_steps(paths: RunPaths) -> list[Step]:
    """The loop's finished steps (always a prefix of the plan: steps run in order)."""
    steps, epoch = [], 0
    while True:
        done = [s for s in (Step("train", epoch), Step("cluster", epoch)) if is_done(paths, s)]
        if not done:
            return steps
        steps += done
        epoch += 1


def _finished_work(paths: RunPaths, steps: list[Step]) -> dict[str, str]:
    """Section → what finished work used it (a phrase for the refusal)."""
    work = {}
    if paths.shards.is_dir() and any(paths.shards.glob("*.h5")):
        work["tile"] = "tile store"
    for kind in ("train", "cluster"):
        mine = [s for s in steps if s.kind == kind]
        if mine:
            work[kind] = f"finished steps {mine[0].name} … {mine[-1].name}"
    return work


def _base(paths: RunPaths, steps: list[Step]) -> RunConfig | None:
    """What finished work ran with: the newest record that is not one-off, else config.yaml."""
    for step in reversed(steps):
        record = recorded(paths, step.name)
        if record is not None and not record[1]:
            return record[0]
    return load_run_config(paths.root) if paths.config.is_file() else None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def _applies_from(key: str, steps: list[Step]) -> str:
    if key == "loop.epochs":
        return f"applies from epoch {max((s.epoch for s in steps), default=-1) + 1}"
    return "applies from the next step"


def check_request(paths: RunPaths, cfg: RunConfig) -> list[str]:
    """Lines announcing the accepted changes; a ConfigError for one that finished work forbids."""
    steps = _finished_steps(paths)
    work = _finished_work(paths, steps)
    base = _base(paths, steps) if work else None
    if base is None:
        return []
    old, new = _flat(to_dict(base)), _flat(to_dict(cfg))
    notes = []
    for key in (k for k in new if new[k] != old.get(k)):
        section = key.split(".")[0]
        if section in ONE_OFF:
            continue
        if key.startswith(MAY_CHANGE):
            notes.append(f"{key}: {old.get(key)!r} → {new[key]!r} ({_applies_from(key, steps)})")
            continue
        if section not in work:
            continue
        redo = f", or re-cluster one epoch with `launch cluster {paths.root} --epoch E --redo {key}=…`"
        raise ConfigError(
            f"{key}={new[key]!r}: this run's {work[section]} used {key}={old.get(key)!r}, so the change "
            f"would alter what they mean; pass {key}={old.get(key)!r} to continue this run or use a new "
            f"run directory" + (redo if section == "cluster" else "")
        )
    return notes


def load_request(
    run_dir: Path, config_path: Path | None, overrides: list[str]
) -> tuple[RunConfig, list[str]]:
    """A launcher's request: the whole config, checked against the run's finished work."""
    cfg = load_run_config(run_dir, config_path, overrides)
    return cfg, check_request(RunPaths(Path(run_dir)), cfg)
