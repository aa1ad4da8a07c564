"""Tiling memory that does not grow with the slide: banded coverage sums, the capped mask, and
the TCGA-like synthetic pyramid the tiling bench measures it on (the memory bound itself is
asserted by ``python -m dcssl.bench tiling``, not here)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import openslide
import pytest

from dcssl.slides.grid import make_grid
from dcssl.slides.probe import choose_level, probe_slide
from dcssl.slides.synthetic_svs import write_tcga_like_slide
from dcssl.slides.tifftiles import TiffTilesLevel0
from dcssl.slides.tissue import TissueMask, capped_mask_mpp, saturation, tissue_mask
from dcssl.tile.config import TileConfig

DATA = Path(__file__).resolve().parents[1] / "data"
REAL = ["cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs"]


def _whole_mask_coverage(mask: TissueMask, x0: np.ndarray, y0: np.ndarray, size0: float) -> np.ndarray:
    """The one whole-mask integral image the tiler used before coverage was banded."""
    integral = np.zeros((mask.mask.shape[0] + 1, mask.mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = mask.mask.astype(np.int64).cumsum(0).cumsum(1)
    h, w = mask.mask.shape

    def clip(v, hi):
        return np.clip(np.round(v / mask.scale).astype(np.int64), 0, hi)

    c0, c1, r0, r1 = clip(x0, w), clip(x0 + size0, w), clip(y0, h), clip(y0 + size0, h)
    inside = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    return inside / np.maximum((c1 - c0) * (r1 - r0), 1)


def _mask_and_grid(path: Path, cfg: TileConfig):
    with openslide.OpenSlide(str(path)) as slide:
        probe = probe_slide(slide, "assume", 0.25)
        grid = make_grid(probe, choose_level(probe, cfg.target_mpp), cfg.tile_size, cfg.target_mpp)
        return tissue_mask(slide, probe, cfg.tissue), grid, probe


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("band_rows", [1, 3, 7, 512])
def test_banded_coverage_equals_the_whole_mask_integral_on_real_slides(name, band_rows):
    cfg = TileConfig()
    mask, grid, _ = _mask_and_grid(DATA / name, cfg)
    xy = grid.coords(grid.all_tiles())
    theirs = _whole_mask_coverage(mask, xy[:, 0], xy[:, 1], grid.step0)
    ours = mask.coverage(xy[:, 0], xy[:, 1], grid.step0, band_rows=band_rows)
    assert mask.mask.any() and np.array_equal(ours, theirs)
    # shifted, overhanging squares too (tiles are not the only caller's shape)
    rng = np.random.default_rng(0)
    x0, y0 = rng.integers(-500, 5000, 300), rng.integers(-500, 4000, 300)
    assert np.array_equal(
        mask.coverage(x0, y0, 333.0, band_rows=band_rows), _whole_mask_coverage(mask, x0, y0, 333.0)
    )


@pytest.mark.parametrize("name", REAL)
def test_the_mask_cap_leaves_the_shipped_slides_masks_unchanged(name):
    cfg = TileConfig()
    capped, _, probe = _mask_and_grid(DATA / name, cfg)
    uncapped, _, _ = _mask_and_grid(
        DATA / name, replace(cfg, tissue=replace(cfg.tissue, max_mask_megapixels=1e9))
    )
    assert capped_mask_mpp(probe, cfg.tissue) == cfg.tissue.mask_mpp
    assert capped.scale == uncapped.scale and np.array_equal(capped.mask, uncapped.mask)


def test_a_slide_larger_than_the_cap_gets_a_coarser_mask_that_fits(tmp_path):
    pytest.importorskip("imagecodecs")  # tifffile asks for its JPEG codec even for encoded tiles
    path = write_tcga_like_slide(tmp_path / "s.svs", 6000, 5000)
    cfg = TileConfig()
    cfg = replace(cfg, tissue=replace(cfg.tissue, mask_mpp=0.5, max_mask_megapixels=0.05))
    mask, grid, probe = _mask_and_grid(path, cfg)
    assert capped_mask_mpp(probe, cfg.tissue) > 0.5
    assert mask.mask.size <= 0.05e6 * 1.01
    xy = grid.coords(grid.all_tiles())
    covered = mask.coverage(xy[:, 0], xy[:, 1], grid.step0) >= cfg.tissue.min_mask_coverage
    assert 0.35 < covered.mean() < 0.6  # the ellipses: ≈ 42 % of the slide, plus the edge tiles


def test_saturation_is_the_integer_hsv_formula():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    rgb[0, :3] = 0  # black: max 0
    lo, hi = rgb.min(axis=-1).astype(np.int32), rgb.max(axis=-1).astype(np.int32)
    expected = np.where(hi > 0, (hi - lo) * 255 // np.maximum(hi, 1), 0).astype(np.uint8)
    assert np.array_equal(saturation(rgb), expected)


def test_tcga_like_slide_opens_as_a_40x_aperio_pyramid_the_direct_reader_serves(tmp_path):
    pytest.importorskip("imagecodecs")
    path = write_tcga_like_slide(tmp_path / "s.svs", 3000, 2600)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == 0.25
        assert slide.properties["openslide.objective-power"] == "40"
        assert slide.level_dimensions[:2] == ((3000, 2600), (750, 650))
        reader = TiffTilesLevel0.open(str(path), slide)
        assert reader is not None
        region = np.asarray(slide.read_region((500, 400), 0, (1200, 900)))
        assert np.array_equal(reader.read(500, 400, 1200, 900), region[..., :3])
        reader.close()


@pytest.mark.parametrize("name", REAL)
def test_opaque_blocks_shrink_to_the_pixels_compositing_first_gave(name):
    """The low-resolution view's blocks are box-filtered as openslide returns them (RGBA, alpha
    255): the same RGB as compositing on white and then box-filtering, without the copies."""
    from PIL import Image

    from dcssl.slides.tissue import _shrunk, region_to_rgb

    with openslide.OpenSlide(str(DATA / name)) as slide:
        region = slide.read_region((100, 200), 0, (1999, 1501))
    for size in [(1000, 750), (333, 251), (17, 9)]:
        composited = Image.fromarray(np.ascontiguousarray(region_to_rgb(region))).resize(size, Image.BOX)
        assert np.array_equal(_shrunk(region, size), np.asarray(composited))
