"""OME-Zarr in and out (fastpose.distributed.omezarr): opening 0.4 / 0.5 images and HCS plates, writing label
images resumably (checked with ome-zarr's own Reader), per-object tables."""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")

from ome_zarr.format import FormatV04  # noqa: E402
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Reader  # noqa: E402
from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata  # noqa: E402

from fastpose.distributed import omezarr as oz  # noqa: E402

VERSIONS = ["0.4", "0.5"]


def _image(path, data, axes, version="0.5", factors=(2, 4), chunks=None) -> str:
    """Write an OME-Zarr image with ome-zarr itself; returns its path."""
    path = str(path)
    fmt = FormatV04() if version == "0.4" else None
    opts = {"chunks": chunks} if chunks is not None else None
    kw = {"fmt": fmt} if fmt is not None else {}
    write_image(data, path, axes=axes, scale_factors=factors, storage_options=opts, **kw)
    return path


def _zyx(tmp_path, version="0.5", name="img.zarr") -> str:
    """3D (z, y, x) image of odd size 5 x 37 x 50 with a 3-level pyramid (y, x halved, then quartered)."""
    rng = np.random.default_rng(0)
    return _image(tmp_path / name, rng.integers(0, 255, (5, 37, 50), dtype=np.uint8), "zyx", version,
                  chunks=(5, 16, 16))


def _reference(lab: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour subsampling of ``lab`` to ``shape``: every f-th pixel, f the rounded size ratio."""
    sl = tuple(slice(None, None, max(1, round(m / n))) for m, n in zip(lab.shape, shape))
    out = lab[sl]
    return out[tuple(slice(0, n) for n in shape)]


def _label_node(image_path: str, name: str = "cells"):
    nodes = list(Reader(parse_url(image_path))())
    found = [n for n in nodes if n.load(Label) is not None and n.zarr.basename() == name]
    assert len(found) == 1, [str(n) for n in nodes]
    return found[0]


def _labels_list(image_path: str) -> list:
    g = zarr.open_group(os.path.join(image_path, "labels"), mode="r")
    attrs = g.attrs.asdict()
    return (attrs["ome"] if g.metadata.zarr_format == 3 else attrs)["labels"]


# ------------------------------------------------------------------------------------------------ reading

@pytest.mark.parametrize("version", VERSIONS)
def test_open_image_metadata_and_levels(tmp_path, version):
    p = _zyx(tmp_path, version)
    im = oz.open_image(p)
    assert im.version == version and im.path == p
    assert im.axes == ["z", "y", "x"]
    assert im.levels == 3 and im.level == 0
    assert im.shapes == [(5, 37, 50), (5, 18, 25), (5, 9, 12)]
    assert isinstance(im.array, zarr.Array) and im.array.read_only
    assert im.array.shape == (5, 37, 50) and im.scale == [1.0, 1.0, 1.0]
    assert im.channel_axis is None and im.label_shape == (5, 37, 50)
    low = oz.open_image(p, level=2)
    assert low.array.shape == (5, 9, 12) and low.level == 2
    assert low.scale[0] == 1.0 and low.scale[1] == pytest.approx(37 / 9) and low.scale[2] == pytest.approx(50 / 12)
    assert oz.is_ome_zarr(p) and not oz.is_plate(p)

    rng = np.random.default_rng(1)
    c = _image(tmp_path / "cyx.zarr", rng.integers(0, 9, (3, 40, 30), dtype=np.uint16), "cyx", version, factors=(2,))
    ci = oz.open_image(c)
    assert ci.axes == ["c", "y", "x"] and ci.channel_axis == 0 and ci.label_shape == (40, 30)
    assert ci.levels == 2 and ci.shapes[1] == (3, 20, 15)
    yx = _image(tmp_path / "yx.zarr", rng.integers(0, 9, (24, 32), dtype=np.uint16), "yx", version, factors=(2,))
    assert oz.open_image(yx).axes == ["y", "x"] and oz.open_image(yx).label_shape == (24, 32)


def test_open_image_errors_name_the_path(tmp_path):
    p = _zyx(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ValueError, match="not a zarr group") as e:
        oz.open_image(plain)
    assert str(plain) in str(e.value)
    missing = tmp_path / "missing.zarr"
    with pytest.raises(ValueError, match="does not exist") as e:
        oz.open_image(missing)
    assert str(missing) in str(e.value)
    arr_path = str(tmp_path / "arr.zarr")
    zarr.create_array(arr_path, shape=(4, 4), dtype="uint8")
    with pytest.raises(ValueError, match="plain zarr array") as e:
        oz.open_image(arr_path)
    assert arr_path in str(e.value)
    grp = str(tmp_path / "grp.zarr")
    zarr.open_group(grp, mode="w")
    with pytest.raises(ValueError, match="not an OME-Zarr multiscale image"):
        oz.open_image(grp)
    for level in (3, -1):
        with pytest.raises(ValueError, match="out of range") as e:
            oz.open_image(p, level=level)
        assert p in str(e.value)
    assert not oz.is_ome_zarr(plain) and not oz.is_ome_zarr(arr_path) and not oz.is_ome_zarr(missing)
    assert not oz.is_ome_zarr(grp) and not oz.is_plate(grp)


# ------------------------------------------------------------------------------------------------ labels

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
def test_write_labels_read_back_with_ome_zarr(tmp_path, version, dtype):
    p = _zyx(tmp_path, version)
    rng = np.random.default_rng(2)
    lab = rng.integers(0, 1000, (5, 37, 50)).astype(dtype)
    if dtype == "uint64":
        lab[2, 30, 40] = 2 ** 40 + 7
    colors = [{"label-value": 1, "rgba": [255, 0, 0, 255]}]
    out = oz.write_labels(p, lab, colors=colors, properties=[{"label-value": 1, "class": "cell"}])
    assert out == os.path.join(p, "labels", "cells")
    assert not os.path.exists(os.path.join(p, "labels", ".cells.partial"))

    node = _label_node(p)
    shapes = oz.open_image(p).shapes
    assert len(node.data) == len(shapes) == 3
    for k, d in enumerate(node.data):
        assert d.shape == shapes[k]
        assert d.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(np.asarray(d), _reference(lab, shapes[k]))
    if dtype == "uint64":
        assert int(np.asarray(node.data[0])[2, 30, 40]) == 2 ** 40 + 7
    meta = node.zarr.root_attrs
    assert meta["image-label"]["source"] == {"image": "../../"}
    assert meta["image-label"]["colors"] == colors
    assert meta["multiscales"][0]["axes"] == [{"name": a, "type": "space"} for a in "zyx"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in meta["multiscales"][0]["datasets"]]
    assert scales == [[1.0, 1.0, 1.0], [1.0, 2.0, 2.0], [1.0, 4.0, 4.0]]
    assert _labels_list(p) == ["cells"]
    assert node.metadata["properties"] == {1: {"class": "cell"}}
    # same zarr format as the image
    fmt = zarr.open_array(os.path.join(out, "1"), mode="r").metadata.zarr_format
    assert fmt == (3 if version == "0.5" else 2)
    # and the label image opens like any image
    li = oz.open_image(out, level=1)
    assert li.shapes == shapes and li.version == version


@pytest.mark.parametrize("version", VERSIONS)
def test_labels_validate_with_ome_zarr_models(tmp_path, version):
    models = pytest.importorskip("ome_zarr_models")
    del models
    if version == "0.5":
        from ome_zarr_models.v05.image import Image
    else:
        from ome_zarr_models.v04.image import Image
    rng = np.random.default_rng(3)
    c = _image(tmp_path / "cyx.zarr", rng.integers(0, 9, (2, 40, 30), dtype=np.uint16), "cyx", version, factors=(2,))
    oz.write_labels(c, rng.integers(0, 5, (40, 30)).astype(np.uint32))
    img = Image.from_zarr(zarr.open_group(c, mode="r"))
    assert img.labels is not None
    listed = img.labels.label_paths if version == "0.5" else img.labels.attributes.labels
    assert listed == ["cells"]


def test_channel_axis_dropped_and_shape_checked(tmp_path):
    rng = np.random.default_rng(4)
    c = _image(tmp_path / "cyx.zarr", rng.integers(0, 9, (3, 41, 30), dtype=np.uint16), "cyx", "0.4", factors=(2,))
    lab = rng.integers(0, 5, (41, 30)).astype(np.int32)
    out = oz.write_labels(c, lab)
    node = _label_node(c)
    assert [d.shape for d in node.data] == [(41, 30), (20, 15)]
    np.testing.assert_array_equal(np.asarray(node.data[1]), lab[::2, ::2][:20, :15])
    assert [a["name"] for a in node.zarr.root_attrs["multiscales"][0]["axes"]] == ["y", "x"]
    assert out.endswith(os.path.join("labels", "cells"))
    with pytest.raises(ValueError, match="do not fit"):
        oz.write_labels(c, lab[:40], name="other")
    with pytest.raises(ValueError, match="integer"):
        oz.write_labels(c, lab.astype(np.float32), name="other")
    with pytest.raises(ValueError, match="integer"):
        oz.create_labels(c, "other", dtype="float32")
    with pytest.raises(ValueError, match="invalid label name"):
        oz.create_labels(c, "../x")
    with pytest.raises(ValueError, match="chunks"):
        oz.create_labels(c, "other", chunks=(16, 16, 16))


@pytest.mark.parametrize("version", VERSIONS)
def test_create_labels_resumes_and_refuses_to_overwrite(tmp_path, version):
    p = _zyx(tmp_path, version)
    a = oz.create_labels(p, dtype="uint64", chunks=(5, 16, 16))
    assert a.shape == (5, 37, 50) and a.dtype == np.uint64 and a.chunks == (5, 16, 16) and a.fill_value == 0
    assert a.metadata.zarr_format == (3 if version == "0.5" else 2)
    assert os.path.realpath(a.store_path.store.root / a.path) == os.path.realpath(oz.partial_labels_path(p))
    a[:, :16, :16] = 7
    a[:, 16:32, 32:48] = 2 ** 33
    assert not os.path.exists(os.path.join(p, "labels", "cells"))  # not visible before finish

    b = oz.create_labels(p, dtype="uint64", chunks=(5, 16, 16))  # a crashed run restarts: chunks kept
    assert int(b[0, 0, 0]) == 7 and int(b[4, 20, 40]) == 2 ** 33 and int(b[0, 36, 49]) == 0
    with pytest.raises(ValueError, match="overwrite=True"):  # different chunks: refuse to discard work
        oz.create_labels(p, dtype="uint64", chunks=(5, 8, 8))
    c = oz.create_labels(p, dtype="uint64", chunks=(5, 16, 16))
    assert int(c[0, 0, 0]) == 7
    out = oz.finish_labels(p)
    assert oz.finish_labels(p) == out  # again: nothing to do
    node = _label_node(p)
    assert int(np.asarray(node.data[0])[4, 20, 40]) == 2 ** 33 and int(np.asarray(node.data[2])[0, 0, 0]) == 7

    with pytest.raises(ValueError, match="exists already") as e:
        oz.create_labels(p)
    assert "cells" in str(e.value)
    with pytest.raises(ValueError, match="create_labels first"):
        oz.finish_labels(p, "nuclei")

    n = oz.create_labels(p, "nuclei", dtype="uint32")
    n[...] = 3
    oz.finish_labels(p, "nuclei")
    assert _labels_list(p) == ["cells", "nuclei"]

    # overwrite: the old label image stays until the new one is finished, then is replaced
    r = oz.create_labels(p, dtype="uint32", overwrite=True)
    assert int(r[0, 0, 0]) == 0  # dtype differs: a fresh array
    assert int(np.asarray(_label_node(p).data[0])[0, 0, 0]) == 7
    r[...] = 5
    oz.finish_labels(p)
    node = _label_node(p)
    assert node.data[0].dtype == np.uint32 and int(np.asarray(node.data[2]).min()) == 5
    assert _labels_list(p) == ["cells", "nuclei"]
    assert sorted(os.listdir(os.path.join(p, "labels"))) == sorted(
        ["cells", "nuclei", "zarr.json" if version == "0.5" else ".zattrs"]
        + ([".zgroup"] if version == "0.4" else []))


def test_crash_in_finish_leaves_no_half_written_label(tmp_path, monkeypatch):
    p = _zyx(tmp_path)
    oz.write_labels(p, np.full((5, 37, 50), 4, np.uint32))
    a = oz.create_labels(p, overwrite=True)
    a[...] = 9
    real_rename = os.rename

    def failing_rename(src, dst):
        if os.path.basename(src) == ".cells.partial":
            raise OSError("disk gone")
        return real_rename(src, dst)

    monkeypatch.setattr(oz.os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk gone"):
        oz.finish_labels(p)
    monkeypatch.setattr(oz.os, "rename", real_rename)
    # the old label image is intact under its name, the new one is still unfinished, nothing else is left
    assert int(np.asarray(_label_node(p).data[0]).max()) == 4
    assert sorted(n for n in os.listdir(os.path.join(p, "labels")) if n != "zarr.json") == [".cells.partial", "cells"]
    assert int(oz.create_labels(p, overwrite=True)[0, 0, 0]) == 9  # resumable
    oz.finish_labels(p)
    assert int(np.asarray(_label_node(p).data[2]).min()) == 9
    assert int(oz.create_labels(p, overwrite=True, resume=False)[0, 0, 0]) == 0  # resume=False starts over


@pytest.mark.parametrize("shape,factor,chunks", [
    ((70, 45), {"y": 2, "x": 2}, (16, 16)),
    ((70, 45), {"y": 3, "x": 3}, (16, 16)),
    ((9, 70, 45), {"z": 2, "y": 2, "x": 2}, (4, 16, 16)),
])
def test_finish_labels_blockwise_small_chunks(tmp_path, shape, factor, chunks):
    rng = np.random.default_rng(5)
    axes = "".join(factor)
    p = _image(tmp_path / "img.zarr", rng.integers(0, 9, shape, dtype=np.uint8), axes, "0.5", factors=[factor])
    f = [factor[a] for a in axes]
    shapes = oz.open_image(p).shapes
    assert shapes[1] == tuple(n // k for n, k in zip(shape, f))
    lab = rng.integers(0, 2 ** 31, shape).astype(np.uint32)
    a = oz.create_labels(p, chunks=chunks)
    for start in itertools.product(*(range(0, n, c) for n, c in zip(shape, chunks))):
        block = tuple(slice(s, s + c) for s, c in zip(start, chunks))  # block by block, as a distributed writer
        a[block] = lab[block]
    oz.finish_labels(p)
    lvl1 = zarr.open_array(os.path.join(p, "labels", "cells", "1"), mode="r")
    assert lvl1.chunks == tuple(min(c, n) for c, n in zip(chunks, shapes[1])) and lvl1.shape == shapes[1]
    ref = lab[tuple(slice(None, None, k) for k in f)][tuple(slice(0, n) for n in shapes[1])]
    np.testing.assert_array_equal(lvl1[...], ref)


def test_index_map_odd_and_irregular_sizes():
    idx, step = oz._index_map(37, 18)
    assert step == 2 and idx.tolist() == list(range(0, 36, 2))
    idx, step = oz._index_map(37, 19)  # rounded up: the last pixel is 36
    assert step == 2 and idx[-1] == 36
    idx, step = oz._index_map(10, 4)  # not an integer factor: nearest neighbour, within bounds
    assert idx.tolist() == [0, 2, 5, 7] and step == 2.5


# ------------------------------------------------------------------------------------------------ plates

@pytest.mark.parametrize("version", VERSIONS)
def test_plate_fields_and_labels_in_a_field(tmp_path, version):
    fmt = FormatV04() if version == "0.4" else None
    kw = {"fmt": fmt} if fmt is not None else {}
    plate_path = str(tmp_path / "plate.zarr")
    root = zarr.open_group(plate_path, mode="w", zarr_format=2 if version == "0.4" else 3)
    rows, cols = ["A", "B"], ["1", "2"]
    wells = ["B/2", "A/1", "B/1", "A/2"]  # listed out of order on purpose
    write_plate_metadata(root, rows, cols, wells, field_count=2, **kw)
    rng = np.random.default_rng(6)
    for w in wells:
        wg = root.require_group(w)
        write_well_metadata(wg, [{"path": "0"}, {"path": "1"}], **kw)
        for f in ("0", "1"):
            write_image(rng.integers(0, 9, (2, 20, 24), dtype=np.uint8), wg.require_group(f), axes="cyx",
                        scale_factors=(2,), **kw)
    assert oz.is_plate(plate_path) and oz.is_ome_zarr(plate_path)
    fields = oz.plate_fields(plate_path)
    assert [(f.row, f.column, f.field) for f in fields] == [
        (r, c, f) for r in rows for c in cols for f in ("0", "1")]
    assert fields[5].path == os.path.join(plate_path, "B", "1", "1")
    with pytest.raises(ValueError, match="plate_fields") as e:
        oz.open_image(plate_path)
    assert plate_path in str(e.value)
    with pytest.raises(ValueError, match="not an OME-Zarr HCS plate"):
        oz.plate_fields(fields[0].path)

    field = fields[5].path
    im = oz.open_image(field)
    assert im.shapes == [(2, 20, 24), (2, 10, 12)] and im.version == version
    lab = rng.integers(0, 50, (20, 24)).astype(np.uint32)
    oz.write_labels(field, lab)
    node = _label_node(field)
    assert [d.shape for d in node.data] == [(20, 24), (10, 12)]
    np.testing.assert_array_equal(np.asarray(node.data[1]), lab[::2, ::2])
    assert _labels_list(field) == ["cells"]
    assert oz.plate_fields(plate_path) == fields  # the plate still reads the same
    assert oz.table_path(field) == str(tmp_path / "plate_B1_1_cells.csv")


# ------------------------------------------------------------------------------------------------ tables

def test_table_path(tmp_path):
    p = _zyx(tmp_path, name="cells.ome.zarr")
    assert oz.table_path(p) == str(tmp_path / "cells_cells.csv")
    assert oz.table_path(p, "nuclei", fmt="parquet") == str(tmp_path / "cells_nuclei.parquet")
    q = _zyx(tmp_path, name="img.zarr")
    assert oz.table_path(q) == str(tmp_path / "img_cells.csv")


def test_write_table_csv_roundtrip_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out" / "t.csv"
    cols = {"label": np.array([1, 2, 2 ** 40], dtype=np.uint64), "area": [10, 20, 30],
            "mean": np.array([0.5, 1.25, 3.0]), "name": ["a", "b,c", "d"]}
    assert oz.write_table(target, cols) == str(target)
    assert os.listdir(target.parent) == ["t.csv"]  # no temp file left behind
    with open(target, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["label", "area", "mean", "name"]
    assert rows[1:] == [["1", "10", "0.5", "a"], ["2", "20", "1.25", "b,c"], [str(2 ** 40), "30", "3.0", "d"]]
    oz.write_table(target, {"label": []})  # no objects: a header only
    assert target.read_text().strip() == "label"
    with pytest.raises(ValueError, match="different lengths") as e:
        oz.write_table(target, {"a": [1, 2], "b": [1]})
    assert str(target) in str(e.value)
    assert target.read_text().strip() == "label"  # untouched
    with pytest.raises(ValueError, match="no columns"):
        oz.write_table(target, {})
    with pytest.raises(ValueError, match="format"):
        oz.write_table(target, {"a": [1]}, fmt="xlsx")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    with pytest.raises(RuntimeError, match="pyarrow"):
        oz.write_table(tmp_path / "t.parquet", {"a": [1]}, fmt="parquet")
    assert sorted(os.listdir(tmp_path / "out")) == ["t.csv"]


def test_import_fastpose_does_not_import_omezarr():
    code = "import sys, fastpose; print('fastpose.distributed.omezarr' in sys.modules, 'zarr' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
