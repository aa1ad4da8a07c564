"""One slide → one shard: exact tile counts and coords on synthetic pyramids, real fixtures,
per-tile read errors, worker-count invariance."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dcssl.slides.synthetic import TISSUE, Rect, corrupt_tile, write_slide
from dcssl.tile.config import TileConfig
from dcssl.tile.worker import SlideFailure, tile_slide

DATA = Path(__file__).resolve().parents[1] / "data"
STEP = 448  # level-0 pixels of one 224 px tile at 0.5 µm/px on a 0.25 µm/px (40×) scan


def _grid_rect(i, j, ni, nj, step=STEP):
    return Rect(i * step, j * step, ni * step, nj * step)


def _cells(i, j, ni, nj):
    return {(a, b) for a in range(i, i + ni) for b in range(j, j + nj)}


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> Path:
    """40× scan, 10×8 tiles, levels 1/2/8; tissue in two grid-aligned rectangles (16 + 6 tiles)."""
    path = tmp_path_factory.mktemp("syn") / "pyramid.tif"
    return write_slide(
        path,
        10 * STEP,
        8 * STEP,
        [_grid_rect(2, 3, 4, 4), _grid_rect(7, 1, 2, 3)],
        mpp=0.25,
        downsamples=(1, 2, 8),
    )


def _read(shard: Path):
    with h5py.File(shard, "r") as f:
        return (
            f["coords"][:],
            f["tissue"][:],
            [bytes(t) for t in f["tiles"][:]] if f["tiles"].dtype.kind == "O" else f["tiles"][:],
            dict(f.attrs),
        )


def test_exact_tiles_and_coords_from_the_matching_level(pyramid, tmp_path):
    shard = tmp_path / "s.h5"
    result = tile_slide(pyramid, shard, "pyr", TileConfig(), source_md5="abc")
    coords, tissue, tiles, attrs = _read(shard)
    assert result.tiles == 22 and result.candidates == 22 and result.errors == 0
    assert result.level == 1  # the 2× level is 0.5 µm/px: read there, no resize
    assert {(x // STEP, y // STEP) for x, y in coords} == _cells(2, 3, 4, 4) | _cells(7, 1, 2, 3)
    assert (coords % STEP == 0).all() and len(set(map(tuple, coords))) == 22
    assert np.allclose(tissue, 1.0)
    pixel = np.asarray(Image.open(io.BytesIO(tiles[0])))
    assert pixel.shape == (224, 224, 3)
    assert np.abs(pixel.astype(int) - TISSUE).max() <= 3  # JPEG of a flat colour
    assert attrs["slide_id"] == "pyr" and attrs["source_md5"] == "abc"
    assert attrs["mpp"] == pytest.approx(0.25) and attrs["level"] == 1 and attrs["n_tiles"] == 22


def test_resize_from_a_finer_level_with_a_fractional_grid(tmp_path):
    """0.3 µm/px scan: a tile is round(224 × 0.5 / 0.3) = 373 level-0 px, read and resized."""
    step = 373
    path = write_slide(
        tmp_path / "odd.tif", 9 * step, 6 * step, [_grid_rect(1, 1, 3, 2, step)], mpp=0.3, downsamples=(1, 4)
    )
    cfg = replace(TileConfig(), encoding="raw")
    result = tile_slide(path, tmp_path / "odd.h5", "odd", cfg)
    coords, tissue, tiles, attrs = _read(tmp_path / "odd.h5")
    assert result.level == 0 and attrs["step0"] == step
    assert {(x // step, y // step) for x, y in coords} == _cells(1, 1, 3, 2)
    assert tiles.shape == (6, 224, 224, 3)
    assert (np.abs(tiles.astype(int) - TISSUE).max(axis=-1) <= 2).all()


def test_background_threshold_drops_half_empty_tiles(tmp_path):
    """A rectangle covering 60 % of a tile column: kept at max_background=0.5, dropped at 0.3."""
    rect = Rect(2 * STEP, 2 * STEP, 2 * STEP + int(0.6 * STEP), 2 * STEP)
    path = write_slide(tmp_path / "part.tif", 8 * STEP, 6 * STEP, [rect], mpp=0.25, downsamples=(1, 2, 8))
    keep = tile_slide(path, tmp_path / "a.h5", "a", TileConfig())
    strict_cfg = replace(TileConfig(), tissue=replace(TileConfig().tissue, max_background=0.3))
    strict = tile_slide(path, tmp_path / "b.h5", "b", strict_cfg)
    assert (keep.tiles, strict.tiles) == (6, 4)
    _, tissue, _, _ = _read(tmp_path / "a.h5")
    assert np.allclose(sorted(tissue), [0.6, 0.6, 1, 1, 1, 1], atol=0.01)


def test_unreadable_tiles_are_skipped_and_counted(pyramid, tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(pyramid.read_bytes())
    # level 1 (page 1) is 2240 px wide: 9 stored 256 px tiles per row. Stored tile (col 2, row 3)
    # covers level-1 x 512-768, y 768-1024: grid tiles i ∈ {2, 3}, j ∈ {3, 4}, all tissue.
    corrupt_tile(broken, page=1, tile_index=3 * 9 + 2)
    result = tile_slide(broken, tmp_path / "b.h5", "b", TileConfig())
    coords, _, _, _ = _read(tmp_path / "b.h5")
    assert (result.tiles, result.errors) == (18, 4)
    assert not {(x // STEP, y // STEP) for x, y in coords} & _cells(2, 3, 2, 2)
    with pytest.raises(SlideFailure) as err:
        tile_slide(broken, tmp_path / "c.h5", "c", replace(TileConfig(), max_error_fraction=0.1))
    assert err.value.stage == "read" and "4 of 22 tiles unreadable" in err.value.reason
    assert not (tmp_path / "c.h5").exists() and not list(tmp_path.glob(".c.h5*"))


def test_worker_count_does_not_change_the_shard(tmp_path):
    path = write_slide(
        tmp_path / "big.tif", 20 * STEP, 6 * STEP, [_grid_rect(0, 0, 20, 6)], mpp=0.25, downsamples=(1, 2, 8)
    )
    cfg = replace(TileConfig(), block_tiles=4)
    one = tile_slide(path, tmp_path / "one.h5", "x", cfg, workers=1)
    two = tile_slide(path, tmp_path / "two.h5", "x", cfg, workers=2)
    a, b = _read(tmp_path / "one.h5"), _read(tmp_path / "two.h5")
    assert one.tiles == two.tiles == 120
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]


def test_real_cmu1_svs(tmp_path):
    result = tile_slide(DATA / "cmu-1-small-region.svs", tmp_path / "cmu.h5", "cmu", TileConfig())
    coords, tissue, tiles, attrs = _read(tmp_path / "cmu.h5")
    assert result.level == 0 and result.mpp_source == "openslide.mpp-x"
    assert result.tiles == 44  # ≈ 45 tissue tiles of 117 (SOURCES.md); pins the defaults
    assert (tissue >= 0.5).all() and (coords % 224 == 0).all()
    assert Image.open(io.BytesIO(tiles[0])).size == (224, 224)


def test_tcga_slide_without_mpp_refused_then_assumed(tmp_path):
    slide = DATA / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(SlideFailure) as err:
        tile_slide(slide, tmp_path / "t.h5", "t", TileConfig())
    assert err.value.stage == "probe" and "tile.mpp_policy=assume" in err.value.reason
    result = tile_slide(slide, tmp_path / "t.h5", "t", replace(TileConfig(), mpp_policy="assume"))
    assert result.mpp_source == "assumed" and result.level == 1 and result.tiles > 20


@pytest.mark.parametrize(
    "name, stage, words",
    [
        ("openslide-unopenable.tiff", "open", "Unsupported TIFF compression"),
        ("histolab-broken.svs", "open", "not a slide format openslide can read"),
        ("kidney-48-5.tif", "open", "not a slide format openslide can read"),
        ("openslide-unreadable.svs", "tissue", "Bogus marker length"),
        ("no-such-file.svs", "open", "file not found"),
    ],
)
def test_bad_slides_fail_with_stage_and_reason(tmp_path, name, stage, words):
    with pytest.raises(SlideFailure) as err:
        tile_slide(DATA / name, tmp_path / "x.h5", "x", TileConfig())
    assert err.value.stage == stage and words in err.value.reason
    assert list(tmp_path.iterdir()) == []


def test_tiny_slide_gives_an_empty_shard_with_a_note(tmp_path):
    result = tile_slide(DATA / "openslide-small.svs", tmp_path / "s.h5", "s", TileConfig())
    assert (result.tiles, result.note) == (0, "slide is smaller than one tile")
    assert _read(tmp_path / "s.h5")[3]["n_tiles"] == 0
