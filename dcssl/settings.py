"""A run's settings are a record: what each loop step ran with, and which keys may change.

``RUN/settings/<step>.yaml`` holds the whole config a step ran with, written before it runs (by
the launcher, or by the job itself when plain sbatch scripts drive the loop). Keys that may
differ between epochs (``MAY_CHANGE``) are the only ones a request may change on a run with
finished work (``dcssl.launch.request`` checks). A one-off record (``launch cluster --redo``)
describes its own epoch only and never becomes the run's settings.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dcssl.config import RunConfig, load_run_config
from dcssl.paths import RunPaths
from hpc.checkpoint import atomic_write_text
from hpc.config import ConfigError, read_yaml_mapping, to_dict

__all__ = ["MAY_CHANGE", "load_step_config", "write_records", "recorded"]

MAY_CHANGE = (
    "loop.",
    "executor_",
    "eval.",
    "embed.",
    "curate.",
    "tile.workers",
    "tile.block_tiles",
    "tile.direct_jpeg",
    "tile.hash_local",
    "tile.download.",
    "train.data.workers",
    "train.data.prefetch_factor",
    "train.data.pin_memory",
    "train.data.locking",
    "train.data.max_open_shards",
    "train.feature_source",
    "train.extract_batch_size",
    "train.max_steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.dist_timeout_s",
    "cluster.threads",
    "cluster.backend",
    "cluster.checkpoint",
    "cluster.keep_checkpoints",
)
"""Keys (or key prefixes) that change where or how fast work runs, or how many epochs there are,
but not what a finished epoch means: they may change on an existing run."""


def write_records(paths: RunPaths, step_names: list[str], cfg: RunConfig, one_off: bool = False) -> None:
    """Record the settings each of these (unfinished) steps is about to run with."""
    for name in step_names:
        document = {"step": name, "one_off": one_off, "settings": to_dict(cfg)}
        atomic_write_text(paths.settings(name), yaml.safe_dump(document, sort_keys=False))


def recorded(paths: RunPaths, step_name: str) -> tuple[RunConfig, bool] | None:
    """(settings, one_off) a step ran with, or None when it has no record (older runs)."""
    file = paths.settings(step_name)
    if not file.is_file():
        return None
    document = read_yaml_mapping(file)
    if not isinstance(document.get("settings"), dict):
        raise ConfigError(f"{file}: not a settings record (no 'settings' mapping); delete it to re-record")
    return load_run_config(base=document["settings"]), bool(document.get("one_off"))


def load_step_config(
    run_dir: str | Path, step_name: str, config_path: str | Path | None = None, overrides: list[str] = ()
) -> RunConfig:
    """What a job runs with: the step's record (else the run's config.yaml) ← --config ←
    overrides; recorded when the job adds to it or no launcher recorded it (plain sbatch)."""
    paths = RunPaths(Path(run_dir))
    record = recorded(paths, step_name)
    if record is None:
        cfg = load_run_config(paths.root, config_path, overrides)
    else:
        cfg = load_run_config(base=to_dict(record[0]), config_path=config_path, overrides=overrides)
    if record is None or record[0] != cfg:
        write_records(paths, [step_name], cfg, one_off=record[1] if record else False)
    return cfg
