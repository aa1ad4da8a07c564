"""Settings checked against the data before any work: a store of 44 tiles cannot hold k = 1,000
clusters nor a batch of 256 per rank, and saying so up front beats a traceback after the bootstrap."""

from __future__ import annotations

from pathlib import Path

from dcssl.runconfig import RunConfig
from hpc.config import ConfigError, read_text_file

__all__ = ["store_tiles", "check_fits"]


def store_tiles(store: Path) -> int:
    """Tiles in a store, from its manifest (one line, exit 2, when the manifest is unreadable)."""
    import json

    manifest = Path(store) / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(f"{manifest}: no tile store in this run; run `launch tile` (or ingest) first")
    text = read_text_file(manifest)
    try:
        return int(json.loads(text)["n_tiles"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{manifest}: not a tile store manifest; tile or ingest again") from None


def _limits(cfg: RunConfig, n_tiles: int) -> dict[str, int]:
    """key → the largest value this data allows."""
    world = cfg.executor_train.nodes * cfg.executor_train.tasks_per_node
    per_rank = (cfg.train.data.samples_per_epoch or n_tiles) // world
    limits = {"cluster.k": n_tiles} if cfg.cluster.method == "kmeans" else {"cluster.rcc.knn": n_tiles - 1}
    limits["train.data.batch_size"] = per_rank
    return limits


def _value(cfg: RunConfig, key: str) -> int:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def check_fits(cfg: RunConfig, n_tiles: int, where: str, section: str = "") -> None:
    """Raise a one-line ConfigError naming the first key (of ``section``, default any) the data
    cannot hold, and the values that fit."""
    limits = {k: v for k, v in _limits(cfg, n_tiles).items() if k.startswith(section)}
    for key, limit in limits.items():
        if _value(cfg, key) > limit:
            fit = " ".join(f"{k}≤{max(v, 1)}" for k, v in limits.items())
            raise ConfigError(
                f"{key}={_value(cfg, key)} exceeds what {where} holds ({n_tiles} tiles"
                f"{', per rank ' + str(limit) if key.startswith('train') else ''}"
                f"); for this store use {fit}, e.g. {key}={max(limit, 1)}"
            )
