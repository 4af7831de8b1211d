"""Output writers: outlines, ImageJ files, per-cell table, _seg.npy, atomic writes."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fastpose.io import write_tiff_atomic
from fastpose.outputs import (cell_table, outline_mask, outlines_list, trace_outline, write_outputs)


def _square_masks():
    m = np.zeros((20, 30), np.uint16)
    m[2:7, 3:9] = 1      # 5 x 6 rectangle
    m[10:15, 20:25] = 3  # label 2 absent
    return m


def test_outline_of_rectangle_is_its_border():
    m = _square_masks()
    o = outline_mask(m)
    assert o[2, 3:9].all() and o[6, 3:9].all() and o[2:7, 3].all() and o[2:7, 8].all()
    assert not o[3:6, 4:8].any()
    assert not o[m == 0].any()


def test_trace_outline_visits_the_boundary_in_order():
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:6] = True
    poly = trace_outline(mask)
    # 3x4 rectangle: perimeter pixels = 2*3 + 2*4 - 4 = 10, each visited once
    assert len(poly) == 10 and len({tuple(p) for p in poly}) == 10
    steps = np.abs(np.diff(np.vstack([poly, poly[:1]]), axis=0)).max(1)
    assert (steps == 1).all()  # consecutive points are 8-neighbours, closed polygon


def test_outlines_list_one_polygon_per_label():
    polys = outlines_list(_square_masks())
    assert len(polys) == 3 and len(polys[1]) == 0
    assert polys[0][:, 0].min() == 3 and polys[0][:, 1].min() == 2  # (x, y) in image coordinates


def test_cell_table_matches_hand_computed_values():
    m = _square_masks()
    img = np.zeros((20, 30, 2), np.float32)
    img[..., 0] = 1.0
    img[10:15, 20:25, 1] = 4.0
    t = cell_table(m, img)
    assert list(t["label"]) == [1, 3]
    assert list(t["area"]) == [30, 25]
    np.testing.assert_allclose(t["centroid-0"], [4.0, 12.0])
    np.testing.assert_allclose(t["centroid-1"], [5.5, 22.0])
    assert list(t["bbox-0"]) == [2, 10] and list(t["bbox-1"]) == [3, 20]
    assert list(t["bbox-2"]) == [7, 15] and list(t["bbox-3"]) == [9, 25]
    np.testing.assert_allclose(t["intensity_mean-1"], [0.0, 4.0])


def test_write_outputs_all_kinds(tmp_path: Path):
    m = _square_masks()
    img = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    paths = write_outputs(tmp_path, "x", ["masks", "outlines_png", "outlines_txt", "rois", "seg_npy", "csv"],
                          img, m, "x_img.tif")
    names = sorted(p.name for p in paths)
    assert names == ["x_cells.csv", "x_masks.tif", "x_outlines.png", "x_outlines.txt", "x_rois.zip", "x_seg.npy"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "x_masks.tif"), m)
    assert (tmp_path / "x_outlines.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "x_outlines.txt").read_text().strip().splitlines()) == 2
    with zipfile.ZipFile(tmp_path / "x_rois.zip") as z:
        assert len(z.namelist()) == 2
    seg = np.load(tmp_path / "x_seg.npy", allow_pickle=True).item()
    np.testing.assert_array_equal(seg["masks"], m)
    assert (tmp_path / "x_cells.csv").read_text().splitlines()[0].startswith("label,area,centroid-0")
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path):
    p = tmp_path / "a_masks.tif"
    write_tiff_atomic(p, np.ones((4, 4), np.uint16))
    with pytest.raises(Exception):
        write_tiff_atomic(p, np.ones((4, 4), dtype=object))  # tifffile refuses object arrays
    np.testing.assert_array_equal(tifffile.imread(p), np.ones((4, 4), np.uint16))
    assert not list(tmp_path.glob(".*tmp"))


def test_unknown_output_kind(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown output kind"):
        write_outputs(tmp_path, "x", ["jpeg"], np.zeros((4, 4)), np.zeros((4, 4), np.uint16))


def test_outputs_get_normal_permissions(tmp_path: Path):
    import os
    mask = os.umask(0o022)
    try:
        p = write_tiff_atomic(tmp_path / "m.tif", np.ones((3, 3), np.uint16))
        assert (p.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(mask)
