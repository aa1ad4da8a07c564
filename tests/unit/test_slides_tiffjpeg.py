"""Direct level-0 JPEG decoding: bit-identical to openslide, refuses what it cannot reproduce."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest

from dcssl.slides.synthetic import write_slide
from dcssl.slides.tiffjpeg import TiffJpegLevel0
from dcssl.slides.tissue import region_to_rgb
from dcssl.tile.config import TileConfig
from dcssl.tile.worker import tile_slide

DATA = Path(__file__).resolve().parents[1] / "data"
CMU = DATA / "cmu-1-small-region.svs"


def test_regions_are_bit_identical_to_openslide_inside_and_across_the_edges():
    with openslide.OpenSlide(str(CMU)) as slide:
        reader = TiffJpegLevel0.open(str(CMU), slide)
        assert reader is not None
        width, height = slide.dimensions
        rng = np.random.default_rng(0)
        for _ in range(30):
            x, y = int(rng.integers(-300, width)), int(rng.integers(-300, height))
            w, h = int(rng.integers(1, 1800)), int(rng.integers(1, 500))
            theirs = region_to_rgb(slide.read_region((x, y), 0, (w, h)))
            assert np.array_equal(reader.read(x, y, w, h), theirs), (x, y, w, h)
        reader.close()


@pytest.mark.parametrize("name", ["tcga-cr-7395-01a-01-ts1.svs"])  # JPEG 2000 tiles
def test_slides_it_cannot_reproduce_stay_with_openslide(name, tmp_path):
    with openslide.OpenSlide(str(DATA / name)) as slide:
        assert TiffJpegLevel0.open(str(DATA / name), slide) is None
    synthetic = write_slide(tmp_path / "zlib.tif", 900, 700, mpp=0.5)  # deflate-compressed
    with openslide.OpenSlide(str(synthetic)) as slide:
        assert TiffJpegLevel0.open(str(synthetic), slide) is None


def _shard(path: Path):
    with h5py.File(path, "r") as f:
        return f["coords"][:], f["tissue"][:], [bytes(t) for t in f["tiles"][:]]


def test_shard_is_identical_with_and_without_direct_decoding(tmp_path, monkeypatch):
    direct = tile_slide(CMU, tmp_path / "direct.h5", "cmu", TileConfig())
    plain = tile_slide(CMU, tmp_path / "plain.h5", "cmu", replace(TileConfig(), direct_jpeg=False))

    def refuse(self, *args):
        raise OSError("broken JPEG tile")

    monkeypatch.setattr(TiffJpegLevel0, "read", refuse)  # every read falls back to openslide
    fallback = tile_slide(CMU, tmp_path / "fallback.h5", "cmu", TileConfig())
    assert direct.tiles == plain.tiles == fallback.tiles > 0
    a, b, c = (_shard(tmp_path / f"{n}.h5") for n in ("direct", "plain", "fallback"))
    for one, other in ((a, b), (a, c)):
        assert np.array_equal(one[0], other[0]) and np.array_equal(one[1], other[1])
        assert one[2] == other[2]
