"""Direct level-0 JPEG decoding: bit-identical to openslide, refuses what it cannot reproduce."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import tifffile

from dcssl.slides.synthetic import write_slide
from dcssl.slides.tifftiles import TiffTilesLevel0
from dcssl.slides.tissue import region_to_rgb
from dcssl.tile.config import TileConfig
from dcssl.tile.worker import tile_slide

DATA = Path(__file__).resolve().parents[1] / "data"
CMU = DATA / "cmu-1-small-region.svs"
TCGA = DATA / "tcga-cr-7395-01a-01-ts1.svs"  # Aperio JPEG 2000 (RGB, 33005), no mpp


def test_regions_are_bit_identical_to_openslide_inside_and_across_the_edges():
    with openslide.OpenSlide(str(CMU)) as slide:
        reader = TiffTilesLevel0.open(str(CMU), slide)
        assert reader is not None
        width, height = slide.dimensions
        rng = np.random.default_rng(0)
        for _ in range(30):
            x, y = int(rng.integers(-300, width)), int(rng.integers(-300, height))
            w, h = int(rng.integers(1, 1800)), int(rng.integers(1, 500))
            theirs = region_to_rgb(slide.read_region((x, y), 0, (w, h)))
            assert np.array_equal(reader.read(x, y, w, h), theirs), (x, y, w, h)
        reader.close()


def test_jpeg2000_regions_are_bit_identical_to_openslide():
    """The TCGA fixture's Aperio JPEG 2000 tiles (compression 33005), decoded by OpenJPEG through
    imagecodecs: every region equals openslide's, inside and across the image edges."""
    pytest.importorskip("imagecodecs")
    with openslide.OpenSlide(str(TCGA)) as slide:
        reader = TiffTilesLevel0.open(str(TCGA), slide)
        assert reader is not None
        width, height = slide.dimensions
        assert np.array_equal(
            reader.read(0, 0, width, height), region_to_rgb(slide.read_region((0, 0), 0, (width, height)))
        )
        rng = np.random.default_rng(1)
        for _ in range(12):
            x, y = int(rng.integers(-300, width)), int(rng.integers(-300, height))
            w, h = int(rng.integers(1, 1500)), int(rng.integers(1, 500))
            assert np.array_equal(
                reader.read(x, y, w, h), region_to_rgb(slide.read_region((x, y), 0, (w, h)))
            )
        reader.close()


def test_jpeg2000_shard_is_identical_with_and_without_direct_decoding(tmp_path):
    """Tiled from level 0 (assumed 0.5 µm/px, the target): the same tiles, bytes and coords."""
    pytest.importorskip("imagecodecs")
    cfg = TileConfig(mpp_policy="assume", assumed_mpp=0.5)
    direct = tile_slide(TCGA, tmp_path / "direct.h5", "tcga", cfg)
    plain = tile_slide(TCGA, tmp_path / "plain.h5", "tcga", replace(cfg, direct_jpeg=False))
    assert direct.level == 0 and direct.tiles == plain.tiles > 0 and direct.errors == plain.errors == 0
    a, b = _shard(tmp_path / "direct.h5"), _shard(tmp_path / "plain.h5")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_slides_it_cannot_reproduce_stay_with_openslide(tmp_path):
    synthetic = write_slide(tmp_path / "zlib.tif", 900, 700, mpp=0.5)  # deflate-compressed
    with openslide.OpenSlide(str(synthetic)) as slide:
        assert TiffTilesLevel0.open(str(synthetic), slide) is None


def _shard(path: Path):
    with h5py.File(path, "r") as f:
        return f["coords"][:], f["tissue"][:], [bytes(t) for t in f["tiles"][:]]


def test_shard_is_identical_with_and_without_direct_decoding(tmp_path):
    direct = tile_slide(CMU, tmp_path / "direct.h5", "cmu", TileConfig())
    plain = tile_slide(CMU, tmp_path / "plain.h5", "cmu", replace(TileConfig(), direct_jpeg=False))
    assert direct.tiles == plain.tiles > 0 and direct.errors == plain.errors == 0
    a, b = _shard(tmp_path / "direct.h5"), _shard(tmp_path / "plain.h5")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _damage_mid_stream(path: Path, tile_index: int) -> None:
    """Zero 64 bytes inside one level-0 tile's entropy-coded data: libjpeg decodes it with only a
    warning ("Corrupt JPEG data"), which openslide treats as an error."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = int(page.dataoffsets[tile_index]), int(page.databytecounts[tile_index])
    with open(path, "r+b") as handle:
        handle.seek(offset + count // 2)
        handle.write(bytes(64))


def test_a_damaged_tile_is_lost_exactly_as_with_openslide(tmp_path):
    damaged = tmp_path / "damaged.svs"
    shutil.copyfile(CMU, damaged)
    _damage_mid_stream(damaged, 5 * 10 + 4)  # a tissue tile (240 px tiles, 10 across)
    with openslide.OpenSlide(str(damaged)) as slide:
        with pytest.raises(openslide.OpenSlideError):
            slide.read_region((4 * 240, 5 * 240), 0, (240, 240))
    direct = tile_slide(damaged, tmp_path / "direct.h5", "d", TileConfig())
    plain = tile_slide(damaged, tmp_path / "plain.h5", "d", replace(TileConfig(), direct_jpeg=False))
    assert direct.errors == plain.errors > 0 and direct.tiles == plain.tiles
    a, b = _shard(tmp_path / "direct.h5"), _shard(tmp_path / "plain.h5")
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
