"""Whole runs beyond one machine: OME-Zarr images and HCS plates block by block (:func:`segment_zarr`), folders of
files one task per file (:func:`segment_files`), and the Dask client both take (:func:`make_client`).

* :func:`segment_zarr`: an OME-Zarr image (0.4 or 0.5) or every field of an HCS plate, segmented by
  :func:`~.blocks.segment_blocks` straight into the image's ``labels/<name>`` group (level 0 written block by
  block into a partial label image, resumable; then the nearest-neighbour pyramid with the image's levels and the
  ``image-label`` metadata, :func:`~.omezarr.finish_labels`), the per-object table beside the ``.zarr`` folder.
  The full-resolution level is segmented (the image must be at about the model's cell size).  Axes come from
  the metadata: ``c`` is the channel axis, ``z`` (longer than 1) makes it a 3D volume, ``t``
  must have one point.
* :func:`segment_files`: many images, one task per file on a Dask client: each worker loads the model once and
  writes each image's outputs (what ``fastpose segment`` writes) atomically, with its completion record last, so
  a worker lost mid-run loses nothing already written and a rerun skips what is complete.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .blocks import segment_blocks

__all__ = ["segment_zarr", "segment_files", "make_client", "AxisView", "FileResult"]

log = logging.getLogger("fastpose.distributed")


class AxisView:
    """An array with some axes fixed at one index (``fixed``: axis -> index), read and written through like the
    smaller array: an OME-Zarr image's ``t = 0`` or a single ``z`` plane, a label array's singleton axes.  Keeps
    ``dtype``, ``chunks`` (of the free axes), ``attrs``, ``store`` and ``path`` of a zarr array."""

    def __init__(self, array: Any, fixed: Mapping[int, int]) -> None:
        self.array = array
        self.fixed = {int(k): int(v) for k, v in fixed.items()}
        self.free = [a for a in range(len(array.shape)) if a not in self.fixed]
        self.shape = tuple(int(array.shape[a]) for a in self.free)
        self.dtype = array.dtype
        chunks = getattr(array, "chunks", None)
        self.chunks = None if chunks is None else tuple(int(chunks[a]) for a in self.free)

    def __getattr__(self, name: str) -> Any:           # attrs, store, path of the wrapped zarr array
        if name in ("attrs", "store", "path"):
            return getattr(self.array, name)
        raise AttributeError(name)

    def _index(self, key: Any) -> Tuple[Any, ...]:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (len(self.free) - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (len(self.free) - len(key))
        full: List[Any] = [None] * len(self.array.shape)
        for a, v in self.fixed.items():
            full[a] = v
        for a, k in zip(self.free, key):
            full[a] = k
        return tuple(full)

    def __getitem__(self, key: Any) -> Any:
        return self.array[self._index(key)]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.array[self._index(key)] = value


def _image_axes(axes: Sequence[str], shape: Sequence[int], path: str) -> Tuple[Dict[int, int], Optional[int],
                                                                              Optional[int]]:
    """``(fixed axes, channel_axis, z_axis)`` of an OME-Zarr image for the view without fixed axes."""
    fixed: Dict[int, int] = {}
    for a, (name, n) in enumerate(zip(axes, shape)):
        if name == "t":
            if n != 1:
                raise ValueError(f"{path}: a time series ({n} time points): segment one time point at a time "
                                 "(this reads images with t of length 1)")
            fixed[a] = 0
        elif name == "z" and n == 1:
            fixed[a] = 0
        elif name not in ("c", "z", "y", "x"):
            raise ValueError(f"{path}: axis {name!r} of length {n} is not one fastpose can segment over")
    free = [name for a, name in enumerate(axes) if a not in fixed]
    ca = free.index("c") if "c" in free else None
    za = free.index("z") if "z" in free else None
    return fixed, ca, za


def segment_zarr(path: Any, model: Any = "nuclei", *, name: str = "cells", block: Any = None, halo: Any = None,
                 client: Any = None, overwrite: bool = False, table: Any = True, stats_level: Optional[int] = None,
                 **kwargs: Any) -> List[str]:
    """Segment an OME-Zarr image, or every field of an HCS plate, into its ``labels/<name>``.

    Parameters
    ----------
    path : str or os.PathLike
        An OME-Zarr multiscale image or HCS plate folder (0.4 or 0.5).
    model, block, halo, client, **kwargs
        As for :func:`~.blocks.segment_blocks` (``channels``, thresholds, ``augment``, ``device``...).
    name : str
        The label image's name under ``labels/``.
    overwrite : bool
        Replace an existing label image of that name (else a ValueError); an unfinished one is resumed.
    table : bool or folder
        Write the per-object table (CSV): True beside the ``.zarr`` folder (:func:`~.omezarr.table_path`), a
        folder: there, with the same file name; False: none.
    stats_level : int, optional
        Take the normalisation statistics from this coarser level (fast for huge images); default: from the
        segmented level itself (a regular subsample above :data:`~.blocks.STATS_PIXELS` pixels per channel).

    Returns
    -------
    list of str: the label images written (one per image or plate field).
    """
    from . import omezarr

    p = os.fspath(path)
    if omezarr.is_plate(p):
        images = [f.path for f in omezarr.plate_fields(p)]
        log.info("%s: HCS plate, %d field(s)", p, len(images))
    else:
        images = [p]
    written = []
    for k, ip in enumerate(images):
        img = omezarr.open_image(ip, 0)
        fixed, ca, za = _image_axes(img.axes, img.array.shape, ip)
        view = AxisView(img.array, fixed)
        sd = 3 if za is not None else 2
        blk = block if block is not None else [1024 if sd == 2 else 256] * sd
        blk = [int(blk)] * sd if isinstance(blk, (int, np.integer)) else [int(b) for b in blk]
        if len(blk) == 1:
            blk = blk * sd
        if len(blk) != sd:
            raise ValueError(f"{ip}: block needs one size or one per spatial axis ({sd}), got {blk}")
        stats = None
        if stats_level is not None:
            low = omezarr.open_image(ip, stats_level)
            stats = np.asarray(AxisView(low.array, fixed)[...])
            if ca is not None:
                stats = np.moveaxis(stats, ca, 0)
        # label axes: the image's without c; fixed (length-1) axes stay, at chunk 1
        lab_axes = [a for a in range(len(img.array.shape)) if img.axes[a] != "c"]
        chunks, it = [], iter(blk)
        for a in lab_axes:
            chunks.append(1 if a in fixed else next(it))
        arr = omezarr.create_labels(ip, name, dtype="uint64", chunks=chunks, overwrite=overwrite)
        lab_fixed = {i: 0 for i, a in enumerate(lab_axes) if a in fixed}
        out = AxisView(arr, lab_fixed)
        tpath = None
        if table is not False and table is not None:
            tpath = omezarr.table_path(ip, name)
            if table is not True:
                tpath = str(Path(table) / Path(tpath).name)
        log.info("%s: %s %s, blocks %s -> labels/%s", ip, "volume" if sd == 3 else "image", view.shape, blk, name)
        segment_blocks(view, model, block=blk, halo=halo, client=client, out=out, channel_axis=ca, z_axis=za,
                       stats=stats, table=tpath, overwrite=overwrite, **kwargs)
        written.append(omezarr.finish_labels(ip, name))
        log.info("%s: labels/%s written (%d of %d)", ip, name, k + 1, len(images))
    return written


def make_client(scheduler: str = "local", workers: Optional[int] = None, threads: Optional[int] = None,
                processes: bool = True) -> Any:
    """A ``dask.distributed`` client: ``scheduler="local"`` starts a LocalCluster of ``workers`` workers (default:
    one per 4 cores, at least 1) with ``threads`` threads each (default: its share of the cores); any other value
    is a scheduler address (``tcp://host:8786``) to connect to."""
    from distributed import Client, LocalCluster

    if scheduler != "local":
        return Client(scheduler)
    cores = os.cpu_count() or 1
    n = workers or max(1, cores // 4)
    t = threads or max(1, cores // n)
    cluster = LocalCluster(n_workers=n, threads_per_worker=t, processes=processes, dashboard_address=None)
    return Client(cluster)


@dataclass
class FileResult:
    """One file of :func:`segment_files`: its path, ``"done"``, ``"skipped"`` (complete already) or
    ``"failed"`` (with the reason), and the number of masks."""

    path: str
    status: str
    masks: int = 0
    error: str = ""


def _segment_file(path: str, out_dir: str, stem: str, kinds: Sequence[str], model: Any, seg_opts: Mapping[str, Any],
                  kw: Mapping[str, Any]) -> FileResult:
    """One task: read, segment (the worker's cached model), write the outputs and then the record."""
    from ..io import read_image
    from ..models.spec import class_names
    from ..outputs import remove_record, write_outputs, write_record
    from .blocks import cached_segmenter

    try:
        seg = cached_segmenter(model, **seg_opts)
        img = read_image(path)
        res = seg.segment(img, **kw)
        remove_record(out_dir, stem)
        written = write_outputs(Path(out_dir), stem, kinds, img, res.masks, path, res.flows, res.cellprob,
                                res.diameter, res.classes, class_names(seg.spec), res.outputs.get("restored"))
        write_record(out_dir, stem, kinds, written, path)
        return FileResult(path, "done", int(res.masks.max()))
    except (ValueError, OSError, RuntimeError, TypeError) as e:
        return FileResult(path, "failed", 0, str(e))


def segment_files(files: Sequence[Any], model: Any = "nuclei", *, out: Any, client: Any = None,
                  save: Sequence[str] = ("masks",), skip_existing: bool = True, device: str = "auto",
                  backend: str = "auto", batch_size: int = 8, progress: bool = True,
                  **kwargs: Any) -> List[FileResult]:
    """Segment many image files, one task per file on ``client`` (None: here, one after the other).

    Outputs (``save``: the kinds of ``fastpose segment --save``) go to ``out/<stem>...``, each written atomically
    and the completion record last; with ``skip_existing`` files whose record says complete are skipped, so a
    run cut short (a worker lost, the client killed) resumes where it stopped.  A file that cannot be read or
    segmented is reported in its :class:`FileResult` and the run goes on.  ``kwargs``: options of
    :meth:`fastpose.Segmenter.segment` (``diameter``, ``channel_axis``, thresholds...), checked here once."""
    from tqdm.auto import tqdm

    from ..inference import Segmenter
    from ..outputs import OUTPUT_KINDS, record_status

    kw = Segmenter.check_options(**kwargs)
    kw["return_flows"] = "seg_npy" in save
    for k in save:
        if k not in OUTPUT_KINDS:
            raise ValueError(f"unknown output kind {k!r}; choose from {', '.join(OUTPUT_KINDS)}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(f) for f in files]
    stems = [p.name[: -len(p.suffix)] if p.suffix else p.name for p in paths]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"several inputs would write the same outputs in {out_dir}: {dup[:5]}")
    results: List[FileResult] = []
    todo = []
    for p, s in zip(paths, stems):
        if skip_existing and record_status(out_dir, s, list(save), p)[0] == "complete":
            results.append(FileResult(str(p), "skipped"))
        else:
            todo.append((str(p), s))
    seg_opts = {"device": device, "backend": backend, "batch_size": int(batch_size)}
    bar = tqdm(total=len(todo), desc="segment", unit="img", disable=not progress or not todo, dynamic_ncols=True)
    try:
        if client is None:
            for p, s in todo:
                results.append(_segment_file(p, str(out_dir), s, list(save), model, seg_opts, kw))
                bar.update(1)
        else:
            from dask.distributed import as_completed

            import torch

            m = client.scatter(model, broadcast=True, hash=False) if isinstance(model, torch.nn.Module) else model
            futs = [client.submit(_segment_file, p, str(out_dir), s, list(save), m, seg_opts, kw, pure=False)
                    for p, s in todo]
            for f in as_completed(futs):
                results.append(f.result())
                bar.update(1)
    finally:
        bar.close()
    for r in results:
        if r.status == "failed":
            log.error("%s: %s", r.path, r.error)
    order = {str(p): i for i, p in enumerate(paths)}
    results.sort(key=lambda r: order[r.path])
    return results
