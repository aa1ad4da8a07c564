"""Slide sources, MPP resolution, level choice, tissue mask pieces, grid blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dcssl.slides.config import TissueConfig
from dcssl.slides.grid import TileGrid, group_blocks
from dcssl.slides.probe import ProbeError, SlideProbe, choose_level, resolve_mpp
from dcssl.slides.sources import SourceError, load_slide_list, resolve_slides, save_slide_list
from dcssl.slides.tissue import background_fraction, mask_from_rgb, otsu_threshold, saturation

DATA = Path(__file__).resolve().parents[1] / "data"


# ---------------------------------------------------------------- sources
def test_folder_keeps_slides_only_with_subfolder_ids(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for rel in ("a/x.svs", "b/x.svs", "top.tiff", "notes.txt", ".hidden/y.svs"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    refs = resolve_slides(tmp_path)
    assert [r.slide_id for r in refs] == ["a/x", "b/x", "top"]
    assert all(Path(r.path).is_absolute() and not r.remote for r in refs)


def test_glob_takes_every_match_and_rejects_duplicate_ids(tmp_path):
    for name in ("s1.svs", "s2.svs", "odd one';x.svs", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    refs = resolve_slides(str(tmp_path / "*"))
    assert sorted(r.slide_id for r in refs) == ["odd one';x", "readme", "s1", "s2"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "s1.svs").write_bytes(b"")
    with pytest.raises(SourceError, match="two slides share the id 's1'"):
        resolve_slides(str(tmp_path / "**" / "*.svs"))


def test_gdc_manifest_and_round_trip(tmp_path):
    manifest = tmp_path / "gdc_manifest.txt"
    manifest.write_text(
        "id\tfilename\tmd5\tsize\tstate\n"
        "uuid-1\tTCGA-AA-0001-01Z-00-DX1.ABC.svs\tD41D8CD98F00B204E9800998ECF8427E\t10\treleased\n"
        "uuid-2\tTCGA-AA-0002.svs\t\t\treleased\n"
    )
    refs = resolve_slides(manifest)
    assert [(r.slide_id, r.gdc_id, r.md5, r.size) for r in refs] == [
        ("TCGA-AA-0001-01Z-00-DX1.ABC", "uuid-1", "d41d8cd98f00b204e9800998ecf8427e", 10),
        ("TCGA-AA-0002", "uuid-2", None, None),
    ]
    save_slide_list(tmp_path / "slides.json", refs)
    assert load_slide_list(tmp_path / "slides.json") == refs


@pytest.mark.parametrize(
    "spec, message",
    [
        ("/nonexistent/folder", "no such folder, file or glob"),
        ("/nonexistent/*.svs", "the glob matches no files"),
    ],
)
def test_bad_sources_name_the_thing(spec, message):
    with pytest.raises(SourceError, match=message):
        resolve_slides(spec)


def test_manifest_with_bad_size(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("id\tfilename\tmd5\tsize\tstate\nu\tx.svs\tabc\tbig\treleased\n")
    with pytest.raises(SourceError, match=r"m.tsv:2: size 'big' is not a number"):
        resolve_slides(manifest)


# ---------------------------------------------------------------- probe
@pytest.mark.parametrize(
    "props, policy, expected",
    [
        (
            {"openslide.mpp-x": "0.2527", "openslide.objective-power": "20"},
            "refuse",
            (0.2527, "openslide.mpp-x"),
        ),
        ({"openslide.objective-power": "40"}, "refuse", (0.25, "objective-power")),
        ({"openslide.objective-power": "20"}, "refuse", (0.5, "objective-power")),
        (
            {"openslide.mpp-x": "garbage", "openslide.objective-power": "10"},
            "refuse",
            (1.0, "objective-power"),
        ),
        ({}, "assume", (0.3, "assumed")),
    ],
)
def test_resolve_mpp(props, policy, expected):
    assert resolve_mpp(props, policy, 0.3) == pytest.approx(expected)


def test_resolve_mpp_refuses_without_metadata():
    with pytest.raises(ProbeError, match="tile.mpp_policy=assume"):
        resolve_mpp({"openslide.objective-power": "0"}, "refuse", 0.25)


def _probe(mpp, downsamples):
    return SlideProbe(
        width=10000,
        height=8000,
        mpp=mpp,
        mpp_source="openslide.mpp-x",
        level_downsamples=tuple(downsamples),
        level_dimensions=tuple((int(10000 / d), int(8000 / d)) for d in downsamples),
        vendor="test",
    )


@pytest.mark.parametrize(
    "mpp, downsamples, target, level",
    [
        (0.25, (1, 4, 16), 0.5, 0),  # 40×: level 1 is 1.0 µm/px, too coarse → level 0, resized
        (0.25, (1, 2.0005, 8), 0.5, 1),  # a 2× level matches 0.5 µm/px (within 2 %)
        (0.5, (1, 4), 0.5, 0),
        (0.125, (1, 2, 4, 16), 0.5, 2),  # 80×: read the 4× level, not level 0 (16× fewer pixels)
    ],
)
def test_choose_level(mpp, downsamples, target, level):
    assert choose_level(_probe(mpp, downsamples), target) == level


def test_coarser_scan_than_target_refused_unless_allowed():
    probe = _probe(1.0, (1, 4))
    with pytest.raises(ProbeError, match="tile.allow_upsample=true"):
        choose_level(probe, 0.5)
    assert choose_level(probe, 0.5, allow_upsample=True) == 0


# ---------------------------------------------------------------- tissue
def test_saturation_and_otsu():
    rgb = np.array([[[255, 0, 0], [100, 100, 100], [0, 0, 0], [200, 100, 100]]], np.uint8)
    assert saturation(rgb).tolist() == [[255, 0, 0, 127]]
    values = np.r_[np.full(500, 10), np.full(500, 200)].astype(np.uint8)
    assert 10 <= otsu_threshold(values) < 200


def test_mask_fills_holes_and_drops_specks():
    rgb = np.full((200, 200, 3), 240, np.uint8)
    rgb[20:120, 20:120] = (180, 60, 140)  # tissue, 100×100 px
    rgb[50:90, 50:90] = (245, 245, 245)  # a hole (lumen) inside it
    rgb[160:164, 160:164] = (180, 60, 140)  # a 4×4 px speck
    cfg = TissueConfig(min_component_mm2=0.01, median_px=1)
    mask = mask_from_rgb(rgb, cfg, pixel_um=8.0)  # 0.01 mm² = 156 px at 8 µm/px
    assert mask[20:120, 20:120].all()  # hole filled
    assert mask.sum() == 100 * 100  # speck gone, nothing else
    blank = np.full((100, 100, 3), 235, np.uint8)
    blank += np.random.default_rng(0).integers(0, 6, blank.shape, dtype=np.uint8)
    assert not mask_from_rgb(blank, cfg, 8.0).any()  # noise on glass is not tissue


def test_background_fraction_counts_white_and_black():
    tiles = np.full((3, 8, 8, 3), 150, np.uint8)
    tiles[1, :4] = 250  # half near-white
    tiles[2, :, :2] = 5  # a quarter near-black
    got = background_fraction(tiles, white_level=220, black_level=15, stride=1)
    assert got.tolist() == [0.0, 0.5, 0.25]


# ---------------------------------------------------------------- grid
def test_blocks_group_neighbours_and_trim():
    grid = TileGrid(tile_size=224, step0=448, level=1, downsample=2.0, nx=20, ny=10)
    cand = np.array([[0, 0], [1, 0], [9, 9], [8, 9], [17, 2]])
    blocks = group_blocks(grid, cand, block=8)
    assert [(b.i0, b.j0, b.ni, b.nj) for b in blocks] == [(0, 0, 2, 1), (17, 2, 1, 1), (8, 9, 2, 1)]
    assert sum(len(b.tiles) for b in blocks) == len(cand)
    assert group_blocks(grid, np.zeros((0, 2)), 8) == []
