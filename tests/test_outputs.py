"""Output writers: outlines, ImageJ files, per-cell table, _seg.npy, atomic writes, completion records,
temporary-file clean-up, and read_image's "cannot read" errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fastpose.io import atomic_write, is_temp_file, read_image, remove_temp_files, write_tiff_atomic
from fastpose.outputs import (OUTPUT_KINDS, cell_table, outline_mask, outlines_list, record_path, record_status,
                              remove_record, trace_outline, write_outputs, write_record)


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


# ---- completion records --------------------------------------------------------------------------

def _write_all(tmp_path: Path, kinds=("masks", "csv", "rois")):
    m = _square_masks()
    img = np.zeros((20, 30), np.float32)
    src = tmp_path / "x_img.tif"
    src.write_bytes(b"input")
    written = write_outputs(tmp_path, "x", list(kinds), img, m, str(src))
    write_record(tmp_path, "x", list(kinds), written, src)
    return src


def test_record_lists_kinds_files_sizes_input_and_version(tmp_path: Path):
    import json

    import fastpose
    src = _write_all(tmp_path)
    rec = json.loads(record_path(tmp_path, "x").read_text())
    assert rec["kinds"] == ["masks", "csv", "rois"] and rec["fastpose"] == fastpose.__version__
    assert rec["input"] == str(src.resolve())
    assert rec["files"] == {n: (tmp_path / n).stat().st_size for n in ["x_masks.tif", "x_cells.csv", "x_rois.zip"]}
    assert record_status(tmp_path, "x", ["masks", "csv", "rois"], src) == ("complete", "")
    assert record_status(tmp_path, "x", ["csv"], src)[0] == "complete"  # a subset of what was written


def test_record_status_finds_every_kind_of_incomplete(tmp_path: Path):
    src = _write_all(tmp_path)
    assert record_status(tmp_path, "x", ["masks", "seg_npy"], src) == ("incomplete", "the record lacks seg_npy")
    assert record_status(tmp_path, "x", ["masks"], tmp_path / "other.tif")[1].startswith("the record is for another")
    (tmp_path / "x_cells.csv").write_text("label\n")  # changed size
    assert "x_cells.csv has" in record_status(tmp_path, "x", ["masks"], src)[1]
    (tmp_path / "x_cells.csv").unlink()
    assert record_status(tmp_path, "x", ["masks"], src) == ("incomplete", "x_cells.csv is missing")
    record_path(tmp_path, "x").write_text("{not json")
    assert record_status(tmp_path, "x", ["masks"], src)[1].startswith("unreadable completion record")
    remove_record(tmp_path, "x")
    remove_record(tmp_path, "x")  # absent: no error
    # outputs from before records existed (masks, no record): incomplete, never complete
    assert record_status(tmp_path, "x", ["masks"], src) == ("incomplete",
                                                            "no completion record, but x_masks.tif, x_rois.zip exist")
    assert record_status(tmp_path, "y", ["masks"]) == ("new", "")


def test_output_kinds_are_the_documented_ones():
    assert OUTPUT_KINDS == ("masks", "outlines_png", "outlines_txt", "rois", "seg_npy", "csv", "restored")


# ---- temporary files -----------------------------------------------------------------------------

def test_temp_files_have_a_distinctive_name_and_only_those_are_removed(tmp_path: Path):
    seen = []

    def w(f):
        seen.append(Path(f.name).name)
        raise KeyboardInterrupt  # even an interrupt removes the temp file
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a_masks.tif", w)
    assert is_temp_file(seen[0]) and seen[0].startswith(".a_masks.tif.fastpose-") and seen[0].endswith(".tmp")
    assert not list(tmp_path.iterdir())
    leftovers = [tmp_path / ".a_masks.tif.fastpose-abc_12.tmp", tmp_path / ".probe.fastpose-x1.tmp"]
    keep = [tmp_path / ".a_masks.tif.other.tmp", tmp_path / "a_masks.tif.fastpose-1.tmp", tmp_path / "b.tmp",
            tmp_path / ".fastpose-1.tmp"]
    for q in leftovers + keep:
        q.write_bytes(b"x")
    assert sorted(remove_temp_files(tmp_path)) == sorted(leftovers)
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert remove_temp_files(tmp_path / "missing") == []


# ---- read_image: "cannot read <path>: <reason>" ------------------------------------------------------

def test_read_image_says_cannot_read(tmp_path: Path):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    data = good.read_bytes()
    cases = {"trunc.tif": data[: len(data) // 2], "trunc_header.tif": data[:20], "empty.tif": b"",
             "junk.tif": b"II*\x00 this is not a tiff", "text.tif": b"hello world", "empty.npy": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "strings.npy", np.array(["a", "b"]))
    np.save(tmp_path / "zero.npy", np.zeros((0, 4), np.float32))
    expect = {"trunc.tif": "truncated or corrupt", "empty.tif": "the file is empty", "junk.tif": "no image data",
              "text.tif": "not a TIFF", "empty.npy": "the file is empty", "pickled.npy": "pickle",
              "strings.npy": "not a numeric image type", "zero.npy": "no image data", "trunc_header.tif": ""}
    for name, why in expect.items():
        with pytest.raises(ValueError, match="cannot read") as e:
            read_image(tmp_path / name)
        assert str(e.value).startswith(f"cannot read {tmp_path / name}: ") and why in str(e.value), name
    with pytest.raises(FileNotFoundError, match="cannot read .*: no such file"):
        read_image(tmp_path / "missing.tif")
    with pytest.raises(OSError, match="not a file"):
        read_image(tmp_path)
    assert read_image(good).shape == (64, 64)
