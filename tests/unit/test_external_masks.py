"""``tile.tissue.external_masks`` on the real shipped slide (CMU-1 region, 2220×2967 at level 0):
a mask covering half of it keeps exactly the tiles whose centre lies in that half, as GeoJSON and
as a coarse PNG; a missing folder is refused up front, a missing or broken mask fails its slide."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dcssl.launch.__main__ import main as launch
from dcssl.slides.external import ExternalMaskError, load_external_mask
from dcssl.store import latest_attempts

SLIDE = Path(__file__).resolve().parents[2] / "dcssl" / "data" / "cmu-1-small-region.svs"
WIDTH, HEIGHT = 2220, 2967
SETTINGS = ["tile.tile_size=96", "tile.workers=1", "--executor", "local"]


def _tile(run: Path, slides: Path, *extra: str) -> int:
    return launch(["tile", str(run), "--slides", str(slides), *SETTINGS, *extra])


def _coords(run: Path) -> tuple[np.ndarray, int]:
    with h5py.File(run / "store" / "shards" / "cmu-1-small-region.h5", "r") as f:
        return f["coords"][:], int(f.attrs["step0"])


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    shutil.copy(SLIDE, folder / SLIDE.name)
    return folder


@pytest.fixture(scope="module")
def unmasked(slides, tmp_path_factory) -> tuple[np.ndarray, int]:
    run = tmp_path_factory.mktemp("unmasked") / "run"
    assert _tile(run, slides) == 0
    return _coords(run)


def _rectangle(x0: float, x1: float) -> dict:
    ring = [[x0, 0], [x1, 0], [x1, HEIGHT], [x0, HEIGHT], [x0, 0]]
    return {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}}],
    }


def test_geojson_half_keeps_exactly_the_tiles_centred_in_it(slides, unmasked, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "cmu-1-small-region.geojson").write_text(json.dumps(_rectangle(0, WIDTH / 2)))
    run = tmp_path / "run"
    assert _tile(run, slides, f"tile.tissue.external_masks={masks}") == 0
    coords, step0 = _coords(run)
    all_coords, _ = unmasked
    expected = all_coords[all_coords[:, 0] + step0 / 2 < WIDTH / 2]
    assert 0 < len(expected) < len(all_coords)  # the half really splits the slide's tissue
    assert sorted(map(tuple, coords)) == sorted(map(tuple, expected))


def test_png_at_a_coarse_downsample_keeps_the_other_half(slides, unmasked, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    small = np.zeros((HEIGHT // 37, WIDTH // 37), dtype=np.uint8)  # 60×80 px: a 37× downsample
    small[:, small.shape[1] // 2 :] = 255  # the right half (column 30 of 60 starts at x = 1110)
    Image.fromarray(small).save(masks / "cmu-1-small-region.png")
    run = tmp_path / "run"
    assert _tile(run, slides, f"tile.tissue.external_masks={masks}") == 0
    coords, step0 = _coords(run)
    all_coords, _ = unmasked
    expected = all_coords[all_coords[:, 0] + step0 / 2 >= WIDTH / 2]
    assert sorted(map(tuple, coords)) == sorted(map(tuple, expected))


def test_a_missing_folder_is_one_line_exit_2_and_nothing_written(slides, tmp_path, capsys):
    run = tmp_path / "run"
    assert _tile(run, slides, f"tile.tissue.external_masks={tmp_path / 'nope'}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tile.tissue.external_masks" in err[0] and "not a readable folder" in err[0]
    assert not run.exists()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        (None, None, "no external mask for cmu-1-small-region.svs"),
        ("cmu-1-small-region.geojson", "{not json", "unusable"),
        ("cmu-1-small-region.geojson", json.dumps({"type": "Point", "coordinates": [1, 2]}), "only Polygon"),
    ],
)
def test_a_missing_or_broken_mask_fails_the_slide_with_its_reason(slides, tmp_path, name, content, reason):
    masks = tmp_path / "masks"
    masks.mkdir()
    if name:
        (masks / name).write_text(content)
    run = tmp_path / "run"
    assert _tile(run, slides, f"tile.tissue.external_masks={masks}") == 1
    attempt = latest_attempts(run / "store")["cmu-1-small-region"]
    assert attempt["status"] == "failed" and attempt["stage"] == "mask" and reason in attempt["reason"]


def test_polygon_holes_and_qupath_lists_are_honoured(tmp_path):
    outer = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    hole = [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [outer, hole]}}
    (tmp_path / "s.geojson").write_text(json.dumps([feature]))  # QuPath: a bare list of features
    mask = load_external_mask(tmp_path, "s.svs", 200, 100)
    inside = mask.contains(np.array([10, 50, 150]), np.array([10, 50, 50]))
    assert inside.tolist() == [True, False, False]
    grid = mask.raster((10, 20), 10.0)  # 10 level-0 px a cell
    assert grid[1, 1] and not grid[5, 5] and not grid[5, 15]


@pytest.mark.parametrize("mode", ["RGBA-transparent", "RGBA-opaque", "L"])
def test_png_masks_read_transparency_or_brightness(tmp_path, mode):
    keep = np.zeros((10, 20), dtype=bool)
    keep[:, :5] = True
    grey = keep.astype(np.uint8) * 255
    if mode == "L":
        image = Image.fromarray(grey)
    else:
        alpha = grey if mode == "RGBA-transparent" else np.full_like(grey, 255)
        colour = np.full_like(grey, 128) if mode == "RGBA-transparent" else grey
        image = Image.fromarray(np.dstack([colour, colour, colour, alpha]), "RGBA")
    image.save(tmp_path / "s.png")
    mask = load_external_mask(tmp_path, "s.svs", 2000, 1000)
    assert mask.contains(np.array([100, 1900]), np.array([500, 500])).tolist() == [True, False]


def test_a_png_of_another_shape_is_refused(tmp_path):
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(tmp_path / "s.png")
    with pytest.raises(ExternalMaskError, match="aspect ratio"):
        load_external_mask(tmp_path, "s.svs", 2000, 1000)
