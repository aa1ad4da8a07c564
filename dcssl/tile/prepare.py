"""Before the array: resolve the slides into ``tile/slides.json`` and pin the run's settings.

When ``RUN_DIR/config.yaml`` does not exist yet, the whole resolved config is written there
(atomically), so every array element — wherever and whenever it runs — reads the same settings,
and a later ``train`` starts from what ``tile`` was given.
"""

from __future__ import annotations

from pathlib import Path

from dcssl.config import RunConfig, save_run_config
from dcssl.paths import RunPaths
from dcssl.slides.gdc import DownloadError, read_token
from dcssl.slides.sources import SlideRef, SourceError, load_slide_list, resolve_slides, save_slide_list

__all__ = ["prepare_run"]


def prepare_run(run_dir: str | Path, slides: str | None, cfg: RunConfig) -> list[SlideRef]:
    """Resolve ``slides`` (or reuse the saved list when None), save it, pin the config.

    Raises SourceError / ConfigError with one line naming the problem and the fix, before
    anything is written.
    """
    run_dir = Path(run_dir)
    paths = RunPaths(run_dir)
    if slides is None:
        if not paths.slide_list.is_file():
            raise SourceError(f"{run_dir}: no slide list yet; pass --slides FOLDER|GLOB|MANIFEST.tsv")
        refs = load_slide_list(paths.slide_list)
    else:
        refs = resolve_slides(slides)
    if any(r.remote for r in refs):
        try:  # fail now, not in 11,000 array elements
            read_token(cfg.tile.download.token_file)
        except DownloadError as err:
            raise SourceError(str(err)) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    paths.shards.mkdir(parents=True, exist_ok=True)
    save_slide_list(paths.slide_list, refs)
    if not paths.config.exists():  # every section: a --config given to tile also holds for train
        save_run_config(run_dir, cfg)
    return refs
