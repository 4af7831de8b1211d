"""fastpose.distributed.segment_blocks: blockwise labels equal to the whole image's, up to renumbering, on this
process and on dask.distributed LocalClusters (threads and processes)."""

import json

import numpy as np
import pytest

pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from fastpose.distributed import BlockGrid, HaloError, compact_ids, segment_blocks  # noqa: E402
from fastpose.distributed.oracle import blob_image, blob_model  # noqa: E402


def same_partition(a, b):
    """True when the label images ``a`` and ``b`` are equal up to renumbering (a bijection of the labels)."""
    a = np.asarray(a).astype(np.int64)
    b = np.asarray(b).astype(np.int64)
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_same_partition_can_fail():
    a = np.array([[1, 1, 2, 2]])
    assert same_partition(a, a * 7)
    assert not same_partition(a, np.array([[1, 1, 1, 1]]))   # merged
    assert not same_partition(a, np.array([[1, 2, 2, 3]]))   # cut differently


@pytest.fixture(scope="module")
def net():
    return blob_model()


@pytest.fixture(scope="module")
def img2d():
    return blob_image((230, 250), 90, seed=3)


@pytest.fixture(scope="module")
def whole2d(net, img2d):
    lab = segment_blocks(img2d, net, block=img2d.shape, halo=0, backend="torch", progress=False)
    assert lab.max() > 50
    return lab


KW = dict(backend="torch", progress=False)


@pytest.mark.parametrize("block", [(64, 64), (37, 53), (230, 100), (100, 250)])
def test_blocks_equal_whole_image_2d(net, img2d, whole2d, block):
    lab = segment_blocks(img2d, net, block=block, halo=48, **KW)
    assert same_partition(lab, whole2d)
    assert lab.max() == whole2d.max()                    # compact: 1..N
    assert set(np.unique(lab)) == set(range(int(lab.max()) + 1))


def test_objects_on_block_corners(net):
    """Blobs centred on the corners where 4 blocks meet are found whole, once."""
    img = np.zeros((192, 192), np.uint16)
    yy, xx = np.mgrid[:192, :192]
    for cy, cx in [(64, 64), (64, 128), (128, 64), (128, 128)]:
        img[(yy - cy + 0.5) ** 2 + (xx - cx + 0.5) ** 2 <= 36] = 1000
    whole = segment_blocks(img, net, block=(192, 192), halo=0, **KW)
    lab = segment_blocks(img, net, block=(64, 64), halo=40, **KW)
    assert whole.max() == 4
    assert same_partition(lab, whole)


def test_blocks_equal_whole_volume_3d(net):
    img = blob_image((24, 60, 56), 30, seed=4)
    whole = segment_blocks(img, net, z_axis=0, block=img.shape, halo=0, **KW)
    lab = segment_blocks(img, net, z_axis=0, block=(13, 32, 30), halo=36, **KW)
    assert whole.max() > 10
    assert same_partition(lab, whole)


def test_8_block_corner_3d(net):
    img = np.zeros((48, 48, 48), np.uint16)
    zz, yy, xx = np.mgrid[:48, :48, :48]
    img[(zz - 23.5) ** 2 + (yy - 23.5) ** 2 + (xx - 23.5) ** 2 <= 64] = 1000   # 4% of the voxels: p99 inside
    whole = segment_blocks(img, net, z_axis=0, block=img.shape, halo=0, **KW)
    lab = segment_blocks(img, net, z_axis=0, block=(24, 24, 24), halo=20, **KW)
    assert whole.max() == 1
    assert same_partition(lab, whole)
    assert len(np.unique(lab[lab > 0])) == 1


def test_halo_too_small_is_reported(net, img2d):
    with pytest.raises(HaloError, match="halo"):
        segment_blocks(img2d, net, block=(40, 40), halo=2, **KW)
    lab = segment_blocks(img2d, net, block=(40, 40), halo=2, on_edge="keep", compact=False, **KW)
    assert lab.max() > 0


def test_empty_blocks_skipped_and_zero(net):
    img = np.zeros((128, 256), np.uint16)
    img[:, 128:] = blob_image((128, 128), 20, seed=5)
    fg = np.zeros((4, 8), bool)
    fg[:, 4:] = True
    whole = segment_blocks(img, net, block=img.shape, halo=0, stats=img[:, 128:], **KW)
    lab = segment_blocks(img, net, block=(64, 64), halo=40, foreground=fg, stats=img[:, 128:], **KW)
    assert not lab[:, :64].any()
    assert same_partition(lab, whole)


def test_compact_ids_rank_by_owner():
    grid = BlockGrid((10, 10), (5, 5), (2, 2))
    # anchors: (0,0) in block 0, (0,7) in block 1, (6,1) and (9,9) in blocks 2 and 3
    ids = np.array([0, 1, 8, 61, 100], np.uint64)
    owned = {0: np.array([1], np.uint64), 1: np.array([8], np.uint64), 2: np.array([61], np.uint64),
             3: np.array([100], np.uint64)}
    offsets = np.array([0, 1, 2, 3])
    assert compact_ids(ids, grid, offsets, owned).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="missing"):
        compact_ids(np.array([2], np.uint64), grid, offsets, owned)


def test_zarr_out_resumes_after_a_crash(net, img2d, whole2d, tmp_path, monkeypatch):
    import fastpose.distributed.blocks as blocks

    out = tmp_path / "labels.zarr"
    real = blocks.run_block
    calls = []
    crash = [True]

    def crashing(idx, *a, **k):
        calls.append(tuple(idx))
        if crash[0] and len(calls) == 5:
            raise RuntimeError("worker lost")
        return real(idx, *a, **k)

    monkeypatch.setattr(blocks, "run_block", crashing)
    with pytest.raises(RuntimeError, match="worker lost"):
        segment_blocks(img2d, net, block=(64, 64), halo=48, out=out, **KW)
    assert len(list((out / blocks.DONE_DIR).glob("*.json"))) == 4    # the blocks written before the crash
    calls.clear()
    crash[0] = False
    z = segment_blocks(img2d, net, block=(64, 64), halo=48, out=out, **KW)
    assert len(calls) == 16 - 4                                       # only the rest recomputed
    assert same_partition(z[...], whole2d)
    assert z.attrs["fastpose"]["complete"] and not (out / blocks.DONE_DIR).exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        segment_blocks(img2d, net, block=(64, 64), halo=48, out=out, **KW)


def test_table(net, img2d, whole2d, tmp_path):
    segment_blocks(img2d, net, block=(64, 64), halo=48, table=tmp_path / "objects.csv", **KW)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "objects.csv")))
    assert len(rows) == whole2d.max()
    areas = np.bincount(whole2d.ravel())[1:]
    assert sorted(int(r["area"]) for r in rows) == sorted(areas.tolist())
    assert sorted(int(r["label"]) for r in rows) == list(range(1, len(rows) + 1))


def test_ids_beyond_2_32(net, tmp_path):
    """Anchor ids of objects far into a 66000 x 66000 zarr image exceed 2**32 and survive as uint64."""
    from fastpose.inference.anchored import stride_of

    n = 66000
    src = zarr.create_array(str(tmp_path / "big.zarr"), shape=(n, n), chunks=(2048, 2048), dtype="uint16",
                            fill_value=0)
    patch = blob_image((300, 300), 30, seed=6)
    src[n - 400:n - 100, n - 400:n - 100] = patch
    fg = np.zeros((66, 66), bool)
    fg[65, 65] = True
    z = segment_blocks(src, net, block=(2048, 2048), halo=48, foreground=fg, stats=patch, compact=False,
                       out=tmp_path / "labels.zarr", **KW)
    c0 = (n - 500) - (n - 500) % stride_of(64, False, 0.1)      # a crop on the same tile grid
    part = z[c0:, c0:]
    assert part.dtype == np.uint64 and part.max() > 2 ** 32
    ref = segment_blocks(src[c0:, c0:], net, block=(n - c0, n - c0), halo=0, stats=patch, **KW)
    assert ref.max() > 10
    assert same_partition(part, ref)


@pytest.fixture(scope="module")
def threads_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


@pytest.mark.parametrize("block", [(64, 64), (50, 90)])
def test_local_cluster_threads(net, img2d, whole2d, threads_client, block):
    lab = segment_blocks(img2d, net, block=block, halo=48, client=threads_client, **KW)
    assert same_partition(lab, whole2d)


def test_local_cluster_threads_zarr(net, img2d, whole2d, threads_client, tmp_path):
    z = segment_blocks(img2d, net, block=(64, 64), halo=48, client=threads_client, out=tmp_path / "l.zarr", **KW)
    assert same_partition(z[...], whole2d)
    again = segment_blocks(img2d, net, block=(64, 64), halo=48, client=threads_client, **KW)
    assert np.array_equal(again, segment_blocks(img2d, net, block=(64, 64), halo=48, **KW))   # reruns agree


def test_local_cluster_processes(net, tmp_path):
    """Processes: the source and the model are pickled to the workers, each loads the model once."""
    from distributed import Client, LocalCluster

    img = blob_image((150, 170), 40, seed=7)
    src = zarr.create_array(str(tmp_path / "img.zarr"), shape=img.shape, chunks=(64, 64), dtype=img.dtype)
    src[...] = img
    whole = segment_blocks(img, net, block=img.shape, halo=0, **KW)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        z = segment_blocks(src, net, block=(64, 64), halo=48, client=client, out=tmp_path / "l.zarr", **KW)
    assert same_partition(z[...], whole)


def test_dask_array_input(net, img2d, whole2d):
    import dask.array as da

    lab = segment_blocks(da.from_array(img2d, chunks=(100, 100)), net, block=(64, 64), halo=48, **KW)
    assert same_partition(lab, whole2d)


def test_bad_input_is_a_clear_error(net, img2d):
    with pytest.raises(ValueError, match="z_axis"):
        segment_blocks(np.zeros((4, 30, 30)), net, **KW)
    with pytest.raises(ValueError, match="block"):
        segment_blocks(img2d, net, block=(0, 10), **KW)
    with pytest.raises(ValueError, match="on_edge"):
        segment_blocks(img2d, net, on_edge="merge", **KW)
    with pytest.raises(FileNotFoundError):
        segment_blocks("/nonexistent/x.zarr", net, **KW)
    with pytest.raises(TypeError):
        segment_blocks([[1, 2]], net, **KW)


def test_real_nuclei_model_blocks_equal_whole(tmp_path):
    """The bundled nuclei U-Net on a 2 x 2 mosaic of DSB images: blocks equal the whole image (anchored grid)
    exactly (4 blocks), and agree with the ordinary in-memory path object for object at IoU 0.5."""
    from fastpose.inference import Segmenter
    from fastpose.io import read_image, sample_paths
    from fastpose.metrics import average_precision

    img = read_image(sample_paths()[0])
    img = img if img.ndim == 2 else img.mean(-1)
    tile = img[:160, :160]
    mosaic = np.block([[tile, tile[:, ::-1]], [tile[::-1], tile[::-1, ::-1]]]).astype(np.float32)
    seg = Segmenter("nuclei")
    whole = segment_blocks(mosaic, seg, block=mosaic.shape, halo=0, progress=False)
    lab = segment_blocks(mosaic, seg, block=(160, 160), progress=False)
    assert whole.max() > 20
    assert same_partition(lab, whole)
    ref = seg.segment(mosaic, diameter=0).masks
    ap, *_ = average_precision([ref.astype(np.int64)], [lab.astype(np.int64)], [0.5])
    assert ap[0, 0] > 0.9


# ---- OME-Zarr images and plates, many files ------------------------------------------------------------------

def _ome_image(path, data, axes, chunks, fmt=None):
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    kw = {} if fmt is None else {"fmt": fmt}
    store = parse_url(str(path), mode="w", **kw).store
    root = zarr.group(store=store, **({} if fmt is None else {"zarr_format": 2}))
    write_image(data, root, axes=axes, storage_options={"chunks": chunks}, **kw)
    return str(path)


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_segment_zarr_writes_ome_labels(net, img2d, whole2d, tmp_path, version):
    """A (t, c, z, y, x) image with t = z = 1: labels under labels/cells with the image's levels, readable by
    ome-zarr's reader, equal to the whole-image labels; the table beside the .zarr folder."""
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from fastpose.distributed import segment_zarr
    from fastpose.distributed.omezarr import open_image, table_path

    data = img2d[None, None, None]
    p = _ome_image(tmp_path / "img.zarr", data, "tczyx", (1, 1, 1, 64, 64), FormatV04() if version == "0.4" else None)
    (lab_path,) = segment_zarr(p, net, block=64, halo=48, **KW)
    nodes = list(Reader(parse_url(lab_path))())
    assert nodes and nodes[0].metadata.get("name") is not None or nodes
    lab = open_image(lab_path)
    assert lab.levels == open_image(p).levels and lab.version == version
    assert same_partition(np.asarray(lab.array[0, 0]), whole2d)
    rows = open(table_path(p)).read().splitlines()
    assert len(rows) == 1 + whole2d.max()
    with pytest.raises(ValueError, match="exists|overwrite"):
        segment_zarr(p, net, block=64, halo=48, **KW)


def test_segment_zarr_plate_fields(net, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    from fastpose.distributed import segment_zarr
    from fastpose.distributed.omezarr import open_image

    store = parse_url(str(tmp_path / "plate.zarr"), mode="w").store
    root = zarr.group(store=store)
    write_plate_metadata(root, ["A"], ["1", "2"], ["A/1", "A/2"])
    imgs = {}
    for w, col in enumerate(["1", "2"]):
        well = root.require_group("A").require_group(col)
        write_well_metadata(well, [{"path": "0"}])
        im = blob_image((96, 110), 15, seed=20 + w)
        imgs[col] = im
        write_image(im, well.require_group("0"), axes="yx", storage_options={"chunks": (64, 64)})
    paths = segment_zarr(str(tmp_path / "plate.zarr"), net, block=64, halo=40, **KW)
    assert len(paths) == 2
    for col, lp in zip(["1", "2"], paths):
        whole = segment_blocks(imgs[col], net, block=imgs[col].shape, halo=0, **KW)
        assert same_partition(np.asarray(open_image(lp).array), whole)


def test_segment_files_on_a_cluster_resumes_and_survives_a_bad_file(net, threads_client, tmp_path):
    import tifffile

    from fastpose.distributed import segment_files

    files = []
    for k in range(3):
        f = tmp_path / f"im{k}.tif"
        tifffile.imwrite(f, blob_image((80, 90), 10, seed=30 + k))
        files.append(f)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    out = tmp_path / "out"
    res = segment_files(files + [bad], net, out=out, client=threads_client, save=["masks", "csv"], diameter=0,
                        backend="torch", progress=False)
    assert [r.status for r in res] == ["done", "done", "done", "failed"] and "bad.tif" in res[3].path
    assert all((out / f"im{k}_masks.tif").is_file() for k in range(3))
    m0 = tifffile.imread(out / "im0_masks.tif")
    (out / "im1_masks.tif").unlink()                # as if its worker died before the record was checked
    again = segment_files(files, net, out=out, client=threads_client, save=["masks", "csv"], diameter=0,
                          backend="torch", progress=False)
    assert [r.status for r in again] == ["skipped", "done", "skipped"]
    assert np.array_equal(tifffile.imread(out / "im0_masks.tif"), m0)


def test_cli_segments_an_ome_zarr_and_files_on_a_local_cluster(tmp_path):
    """``fastpose segment X.zarr --out DIR`` writes labels/cells and the CSV; TIFFs with ``--scheduler local``
    write what they write without it."""
    import tifffile

    from fastpose.cli import main
    from fastpose.distributed.omezarr import open_image
    from fastpose.io import read_image, sample_paths

    img = read_image(sample_paths()[0])
    img = (img if img.ndim == 2 else img.mean(-1))[:200, :180].astype(np.uint16)
    p = _ome_image(tmp_path / "s.zarr", img, "yx", (100, 100))
    out = tmp_path / "out"
    assert main(["segment", p, "--out", str(out), "--block", "100", "-q"]) == 0
    lab = open_image(tmp_path / "s.zarr" / "labels" / "cells")
    assert lab.array.shape == img.shape and np.asarray(lab.array).max() > 5
    assert (out / "s_cells.csv").is_file()
    assert main(["segment", p, "--out", str(out), "--diameter", "30", "-q"]) == 2      # not for .zarr inputs
    assert main(["segment", p, "--out", str(out), "-q"]) == 1                           # exists: reported
    tifffile.imwrite(tmp_path / "a.tif", img)
    tifffile.imwrite(tmp_path / "b.tif", img[::-1])
    assert main(["segment", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--out", str(tmp_path / "o2"),
                 "--scheduler", "local", "--workers", "1", "-q", "--diameter", "0"]) == 0
    a = tifffile.imread(tmp_path / "o2" / "a_masks.tif")
    assert main(["segment", str(tmp_path / "a.tif"), "--out", str(tmp_path / "o3"), "-q", "--diameter", "0"]) == 0
    assert np.array_equal(a, tifffile.imread(tmp_path / "o3" / "a_masks.tif"))


# ---- the fallback: IoU matching in the overlaps ------------------------------------------------------------

def test_mutual_matches():
    from fastpose.distributed import blocks

    a = np.array([[1, 1, 2, 2, 0, 3]])
    b = np.array([[5, 5, 5, 6, 0, 0]])
    # IoU: (1, 5) 2/3, (2, 5) 1/4, (2, 6) 1/2: 2's best is 6
    assert blocks.mutual_matches(a, b, 0.5) == [(1, 5), (2, 6)]
    assert blocks.mutual_matches(a, b, 0.6) == [(1, 5)]
    assert blocks.mutual_matches(a, b, 0.9) == []


@pytest.mark.parametrize("use_zarr", [False, True])
def test_match_stitching_equals_whole_when_blocks_agree(net, img2d, whole2d, tmp_path, use_zarr):
    out = tmp_path / "m.zarr" if use_zarr else None
    lab = segment_blocks(img2d, net, block=(64, 64), halo=24, stitch="match", out=out, **KW)
    lab = np.asarray(lab[...])
    assert same_partition(lab, whole2d)
    with pytest.raises(ValueError, match="halo"):
        segment_blocks(img2d, net, block=(64, 64), halo=0, stitch="match", **KW)


def test_match_stitching_joins_blocks_that_disagree(net, img2d, whole2d, monkeypatch, threads_client):
    """Blocks whose maps differ (a block-dependent perturbation of the flows, as a model without fixed tiles
    would give): ownership no longer guarantees whole objects, matching joins the pieces across the seams."""
    import fastpose.inference.anchored as anchored

    real = anchored.region_maps

    def perturbed(runners, spec, read, shape, box, **kw):
        m = real(runners, spec, read, shape, box, **kw)
        rng = np.random.default_rng(box[0][0] * 1000 + box[1][0])
        m[:2] += rng.normal(0, 0.3, m[:2].shape).astype(np.float32)
        return m

    monkeypatch.setattr(anchored, "region_maps", perturbed)
    lab = segment_blocks(img2d, net, block=(64, 64), halo=24, stitch="match", **KW)
    with pytest.raises(RuntimeError, match="disagree"):                 # ownership notices, compacting
        segment_blocks(img2d, net, block=(64, 64), halo=24, on_edge="keep", **KW)
    own = segment_blocks(img2d, net, block=(64, 64), halo=24, on_edge="keep", compact=False, **KW)

    def whole_fraction(x):
        pieces = [len(np.unique(x[(whole2d == k) & (x > 0)])) for k in range(1, int(whole2d.max()) + 1)]
        return float(np.mean(np.array(pieces) == 1))
    print("whole objects: match", whole_fraction(lab), "ownership", whole_fraction(own))
    assert whole_fraction(lab) > 0.95 and whole_fraction(lab) > whole_fraction(own)


def test_labels_open_in_napari_ome_zarr_where_installed(net, img2d, tmp_path):
    napari_ome_zarr = pytest.importorskip("napari_ome_zarr")
    from fastpose.distributed import segment_zarr

    p = _ome_image(tmp_path / "n.zarr", img2d, "yx", (64, 64))
    segment_zarr(p, net, block=64, halo=48, **KW)
    reader = napari_ome_zarr.napari_get_reader(p)
    layers = reader(p)
    assert any(kind == "labels" for _, _, kind in layers)
