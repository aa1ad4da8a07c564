"""Before the array: resolve the slides into ``tile/slides.json`` and pin the run's settings.

When ``RUN_DIR/config.yaml`` does not exist yet, the resolved ``tile`` and ``executor_tile``
sections are written there (atomically), so every array element — wherever and whenever it runs —
reads the same settings.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dcssl.config import load_section
from dcssl.paths import RunPaths
from dcssl.slides.gdc import DownloadError, read_token
from dcssl.slides.sources import SlideRef, SourceError, resolve_slides, save_slide_list
from dcssl.tile.config import TileConfig
from hpc.checkpoint import atomic_write_text
from hpc.config import to_dict
from hpc.submit import ExecutorConfig

__all__ = ["prepare_run", "load_tile_settings"]


def load_tile_settings(
    run_dir: Path, config_path: Path | None, overrides: list[str]
) -> tuple[TileConfig, ExecutorConfig]:
    tile = load_section(TileConfig, "tile", run_dir, config_path, overrides)
    executor = load_section(ExecutorConfig, "executor_tile", run_dir, config_path, overrides)
    return tile, executor


def _pin_config(run_dir: Path, tile: TileConfig, executor: ExecutorConfig) -> None:
    path = run_dir / "config.yaml"
    if path.exists():
        return
    document = {"tile": to_dict(tile), "executor_tile": to_dict(executor)}
    atomic_write_text(path, yaml.safe_dump(document, sort_keys=False))


def prepare_run(
    run_dir: str | Path,
    slides: str | None,
    config_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    executor: ExecutorConfig | None = None,
) -> list[SlideRef]:
    """Resolve ``slides`` (or reuse the saved list when None), save it, pin the config.

    Raises SourceError / ConfigError with one line naming the problem and the fix.
    """
    run_dir = Path(run_dir)
    paths = RunPaths(run_dir)
    config_path = Path(config_path) if config_path is not None else None
    tile, executor_cfg = load_tile_settings(run_dir, config_path, list(overrides))
    if slides is None:
        if not paths.slide_list.is_file():
            raise SourceError(f"{run_dir}: no slide list yet; pass --slides FOLDER|GLOB|MANIFEST.tsv")
        from dcssl.slides.sources import load_slide_list

        refs = load_slide_list(paths.slide_list)
    else:
        refs = resolve_slides(slides)
    if any(r.remote for r in refs):
        try:  # fail now, not in 11,000 array elements
            read_token(tile.download.token_file)
        except DownloadError as err:
            raise SourceError(str(err)) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    paths.shards.mkdir(parents=True, exist_ok=True)
    save_slide_list(paths.slide_list, refs)
    _pin_config(run_dir, tile, executor or executor_cfg)
    return refs
