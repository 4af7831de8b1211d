"""``fastpose-bench distributed``: blockwise segmentation on a Dask LocalCluster against the in-memory path.

For each image size: a mosaic of DSB 2018 fluorescence images (one-channel files, tiled 256 px apart, mirrored
so no two neighbours repeat) written to a zarr array chunked like the blocks, then

* **blocks**: :func:`fastpose.distributed.segment_blocks` from the zarr array into a zarr array, on a
  ``LocalCluster`` of ``workers`` worker processes (``threads`` threads each): wall time, and the peak resident
  memory of each worker (``VmHWM``, reset before the run);
* **in memory**: :meth:`fastpose.Segmenter.segment` of the whole mosaic in this process (its ordinary tile grid):
  wall time and the growth of this process's peak resident memory;
* **agreement** of the two label images, object by object (:func:`fastpose.metrics.average_precision` at IoU
  0.5 and 0.9, the in-memory masks as the truth).  The two runs tile the image differently (the blocks use a grid
  anchored to image coordinates, the in-memory path spreads its tiles over the image), and a U-Net's output
  near a tile's edge depends on where the tile lies, so these differ by a few objects;
* **exactness**: the whole mosaic as one block in memory (the anchored grid, no halo): equal to the blocks up to
  renumbering (``equal_to_anchored_in_memory``), with its time and peak memory.

The nuclei model runs at its own scale (``diameter=0``).  Everything is reported with the machine.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ._timing import machine_header

__all__ = ["bench_distributed", "mosaic", "print_distributed_table", "same_partition"]

log = logging.getLogger("fastpose.bench")


def mosaic(data: Any, size: int, cell: int = 256, seed: int = 0) -> np.ndarray:
    """uint8 ``size x size`` mosaic of the one-channel images of ``data`` (``*_img.tif``), each cropped or
    zero-padded to ``cell`` px, drawn in a seeded order and flipped by their grid position."""
    from ..io import read_image
    from ..train.data import folder_ids

    imgs = []
    for p, _, _ in folder_ids(data):
        a = read_image(p)
        if a.ndim == 2:
            imgs.append(a)
    if not imgs:
        raise ValueError(f"{data}: no one-channel *_img.tif images for the mosaic")
    rng = np.random.default_rng(seed)
    n = -(-size // cell)
    out = np.zeros((n * cell, n * cell), np.uint8)
    for j in range(n):
        for i in range(n):
            a = imgs[int(rng.integers(len(imgs)))]
            a = a[:cell, :cell]
            if (i + j) % 2:
                a = a[:, ::-1]
            if j % 2:
                a = a[::-1]
            v = a.astype(np.float32)
            v = 255 * (v - v.min()) / max(1e-6, float(v.max() - v.min()))
            out[j * cell:j * cell + a.shape[0], i * cell:i * cell + a.shape[1]] = v.astype(np.uint8)
    return out[:size, :size]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images are equal up to renumbering (a bijection between their labels)."""
    a = np.asarray(a).astype(np.int64).ravel()
    b = np.asarray(b).astype(np.int64).ravel()
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _worker_reset() -> bool:
    from .rss import reset_peak

    return reset_peak()


def _worker_peak() -> int:
    from .rss import peak_bytes, reset_peak

    return peak_bytes(reset_peak())


def bench_distributed(data: Any, sizes: Sequence[int] = (4096, 8192), model: str = "nuclei", block: int = 1024,
                      workers: int = 2, threads: int = 1, in_memory: bool = True,
                      workdir: Optional[str] = None, volume: Optional[Sequence[int]] = None,
                      block3d: int = 128, halo: Optional[int] = None) -> Dict[str, Any]:
    """Run the module docstring's comparison for each size (and, with ``volume`` (Z, Y, X), for a 3D volume of
    synthetic nuclei, :func:`fastpose.distributed.oracle.blob_image` at the model's diameter, in blocks of
    ``block3d``, against ``do_3D`` in memory); plain JSON types."""
    import zarr

    from ..distributed import make_client, segment_blocks
    from ..inference import Segmenter
    from ..metrics import average_precision
    from .rss import peak_bytes, reset_peak

    rows: List[Dict[str, Any]] = []
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    client = make_client("local", workers=workers, threads=threads, processes=True)
    try:
        for size in sizes:
            img = mosaic(data, int(size))
            src = zarr.create_array(str(Path(tmp.name) / f"img{size}.zarr"), shape=img.shape,
                                    chunks=(block, block), dtype=img.dtype)
            src[...] = img
            client.run(_worker_reset)
            t0 = time.perf_counter()
            z = segment_blocks(src, model, block=block, halo=halo, client=client,
                               out=str(Path(tmp.name) / f"lab{size}.zarr"), progress=False)
            t_blocks = time.perf_counter() - t0
            peaks = client.run(_worker_peak)
            lab = np.asarray(z[...])
            row: Dict[str, Any] = {"size": int(size), "pixels": int(img.size), "block": block,
                                   "blocks_seconds": round(t_blocks, 1),
                                   "blocks_mpx_per_s": round(img.size / t_blocks / 1e6, 3),
                                   "worker_peak_mb": sorted(round(v / 2 ** 20) for v in peaks.values()),
                                   "objects_blocks": int(lab.max())}
            log.info("%d px: blocks %.1f s, worker peaks %s MB, %d objects", size, t_blocks,
                     row["worker_peak_mb"], row["objects_blocks"])
            if in_memory:
                seg = Segmenter(model)
                ok = reset_peak()
                base = peak_bytes(ok)
                t0 = time.perf_counter()
                ref = seg.segment(img, diameter=0).masks
                row["memory_seconds"] = round(time.perf_counter() - t0, 1)
                row["memory_peak_growth_mb"] = round((peak_bytes(ok) - base) / 2 ** 20)
                row["memory_mpx_per_s"] = round(img.size / row["memory_seconds"] / 1e6, 3)
                row["objects_memory"] = int(ref.max())
                ap, tp, fp, fn = average_precision([ref.astype(np.int64)], [lab.astype(np.int64)], [0.5, 0.9])
                row["ap50"], row["ap90"] = round(float(ap[0, 0]), 5), round(float(ap[0, 1]), 5)
                row["throughput_ratio"] = round(row["memory_seconds"] / t_blocks, 3)
                # the same anchored tile grid in memory, as one block: the labels must be equal up to renumbering
                ok = reset_peak()
                base = peak_bytes(ok)
                t0 = time.perf_counter()
                one = segment_blocks(img, seg, block=img.shape, halo=0, progress=False)
                row["anchored_seconds"] = round(time.perf_counter() - t0, 1)
                row["anchored_peak_growth_mb"] = round((peak_bytes(ok) - base) / 2 ** 20)
                row["equal_to_anchored_in_memory"] = bool(same_partition(one, lab))
                ap1 = average_precision([one.astype(np.int64)], [lab.astype(np.int64)], [0.5, 0.9])[0]
                row["anchored_ap50"], row["anchored_ap90"] = round(float(ap1[0, 0]), 5), round(float(ap1[0, 1]), 5)
                log.info("%d px: in memory %.1f s (peak +%d MB); AP@0.5 %.4f, AP@0.9 %.4f", size,
                         row["memory_seconds"], row["memory_peak_growth_mb"], row["ap50"], row["ap90"])
            rows.append(row)
        if volume is not None:
            rows.append(_volume_row(client, tuple(int(v) for v in volume), model, block3d, in_memory, tmp.name))
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()
        tmp.cleanup()
    return {"benchmark": "distributed", "machine": machine_header(), "model": model, "block": block, "halo": halo,
            "workers": workers, "threads_per_worker": threads, "rows": rows,
            "goals": {"ap50": 1.0, "ap90": 0.999, "worker_peak": "set by the block size, not the image size"}}


def _volume_row(client: Any, shape: Sequence[int], model: str, block: int, in_memory: bool, tmp: str) -> Dict[str, Any]:
    import zarr

    from ..distributed import segment_blocks
    from ..distributed.oracle import blob_image
    from ..inference import Segmenter
    from ..metrics import average_precision
    from .rss import peak_bytes, reset_peak

    seg = Segmenter(model)
    n = int(np.prod(shape) / (seg.diam_mean ** 3) * 0.25)
    vol = blob_image(shape, n, diameter=seg.diam_mean, seed=0)
    src = zarr.create_array(str(Path(tmp) / "vol.zarr"), shape=vol.shape, chunks=(block,) * 3, dtype=vol.dtype)
    src[...] = vol
    client.run(_worker_reset)
    t0 = time.perf_counter()
    z = segment_blocks(src, model, z_axis=0, block=block, client=client, out=str(Path(tmp) / "vlab.zarr"),
                       progress=False)
    t_blocks = time.perf_counter() - t0
    peaks = client.run(_worker_peak)
    lab = np.asarray(z[...])
    row: Dict[str, Any] = {"size": "x".join(map(str, shape)), "pixels": int(vol.size), "block": block,
                           "blocks_seconds": round(t_blocks, 1), "blocks_mpx_per_s": round(vol.size / t_blocks / 1e6, 3),
                           "worker_peak_mb": sorted(round(v / 2 ** 20) for v in peaks.values()),
                           "objects_blocks": int(lab.max())}
    if in_memory:
        ok = reset_peak()
        base = peak_bytes(ok)
        t0 = time.perf_counter()
        ref = seg.segment(vol, z_axis=0, do_3D=True, diameter=0).masks
        row["memory_seconds"] = round(time.perf_counter() - t0, 1)
        row["memory_peak_growth_mb"] = round((peak_bytes(ok) - base) / 2 ** 20)
        row["memory_mpx_per_s"] = round(vol.size / row["memory_seconds"] / 1e6, 3)
        row["objects_memory"] = int(ref.max())
        ap = average_precision([ref.astype(np.int64)], [lab.astype(np.int64)], [0.5, 0.9])[0]
        row["ap50"], row["ap90"] = round(float(ap[0, 0]), 5), round(float(ap[0, 1]), 5)
        row["throughput_ratio"] = round(row["memory_seconds"] / t_blocks, 3)
        t0 = time.perf_counter()
        one = segment_blocks(vol, seg, z_axis=0, block=vol.shape, halo=0, progress=False)
        row["anchored_seconds"] = round(time.perf_counter() - t0, 1)
        row["anchored_peak_growth_mb"] = None
        row["equal_to_anchored_in_memory"] = bool(same_partition(one, lab))
        ap1 = average_precision([one.astype(np.int64)], [lab.astype(np.int64)], [0.5, 0.9])[0]
        row["anchored_ap50"], row["anchored_ap90"] = round(float(ap1[0, 0]), 5), round(float(ap1[0, 1]), 5)
    log.info("volume %s: blocks %.1f s, %s", row["size"], t_blocks, row)
    return row


def print_distributed_table(res: Dict[str, Any]) -> None:
    m = res["machine"]
    print("# " + ", ".join(f"{k}={v}" for k, v in m.items()))
    print(f"# model {res['model']}, blocks {res['block']} px, {res['workers']} worker process(es) x "
          f"{res['threads_per_worker']} thread(s)")
    print(f"{'size':>7} {'blocks s':>9} {'Mpx/s':>7} {'worker peak MB':>16} {'memory s':>9} {'Mpx/s':>7} "
          f"{'mem peak +MB':>13} {'AP@0.5':>7} {'AP@0.9':>7} {'objects':>9}")
    for r in res["rows"]:
        print(f"{str(r['size']):>7} {r['blocks_seconds']:>9.1f} {r['blocks_mpx_per_s']:>7.3f} "
              f"{'/'.join(map(str, r['worker_peak_mb'])):>16} {r.get('memory_seconds', float('nan')):>9.1f} "
              f"{r.get('memory_mpx_per_s', float('nan')):>7.3f} {r.get('memory_peak_growth_mb', '-'):>13} "
              f"{r.get('ap50', float('nan')):>7.4f} {r.get('ap90', float('nan')):>7.4f} {r['objects_blocks']:>9}")
    print("# AP: blocks against the in-memory path (its own tile grid) as truth; blocks against the whole image as "
          "one block (the same anchored grid):")
    for r in res["rows"]:
        if "equal_to_anchored_in_memory" in r:
            print(f"#   {r['size']} px: equal up to renumbering: {r['equal_to_anchored_in_memory']} (AP@0.5 "
                  f"{r['anchored_ap50']:.4f}, AP@0.9 {r['anchored_ap90']:.4f}; {r['anchored_seconds']:.1f} s, "
                  f"peak +{r['anchored_peak_growth_mb'] if r['anchored_peak_growth_mb'] is not None else '-'} MB)")
