"""OME-Zarr in and out: open multiscale images (OME-Zarr 0.4 / zarr v2 and 0.5 / zarr v3) and HCS plates, and
write label images beside them, resumably.

Reading
    :func:`open_image` opens one level of a multiscale image as a read-only ``zarr.Array`` (nothing is loaded)
    with its axes, scale and pyramid shapes; :func:`plate_fields` lists the field images of an HCS plate
    (plate -> row -> column (well) -> field) in plate order; :func:`is_ome_zarr` / :func:`is_plate` test a
    folder.

Writing labels
    A label image ``<image>/labels/<name>`` is written in two steps so that many workers can fill it and a crash
    never leaves a half-written label image under its final name:

    1. :func:`create_labels` makes (or reopens, to resume) the level-0 array in the hidden location
       ``<image>/labels/.<name>.partial/0`` -- same zarr format as the image, the image's level-0 shape without
       the channel axis ``c``, fill value 0. Workers write blocks into it (aligned to its chunks when several
       write at once). Chunks that are entirely 0 (background) are not stored by zarr, so the presence of a
       chunk file does not say that a block was done: a resuming writer keeps its own record of finished blocks.
    2. :func:`finish_labels` builds the lower levels by nearest-neighbour subsampling to exactly the parent
       image's level shapes, one output chunk at a time (bounded memory), writes the OME metadata
       (``multiscales`` and ``image-label`` with ``source: {"image": "../../"}``), renames the partial group to
       ``labels/<name>`` (a directory rename: the commit point) and adds ``<name>`` to ``labels/``'s list.

    :func:`write_labels` does both for an in-memory NumPy array. Only local folders are supported.

Per-object tables
    :func:`write_table` writes columns atomically as CSV (or Parquet with pandas + pyarrow). By convention
    (:func:`table_path`) the table of a label image lies *beside* the ``.zarr`` folder, never inside it:
    ``cells.zarr`` -> ``cells_<name>.csv``; a plate field ``plate.zarr/A/1/0`` -> ``plate_A1_0_<name>.csv``.

Metadata is written with ``ome_zarr.writer``'s helpers (``write_multiscales_metadata``, ``add_metadata``);
zarr and ome-zarr are imported when first needed, so importing this module never fails for their absence.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..io import PathLike, atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import zarr

__all__ = ["Field", "OmeImage", "create_labels", "finish_labels", "is_ome_zarr", "is_plate", "open_image",
           "partial_labels_path", "plate_fields", "table_path", "write_labels", "write_table"]

log = logging.getLogger("fastpose.distributed")

#: axis name of the channel axis, dropped from label images
CHANNEL_AXIS = "c"
#: default axis names of OME-Zarr 0.1 / 0.2 (no ``axes`` metadata: always 5D)
_DEFAULT_AXES = ("t", "c", "z", "y", "x")


# --------------------------------------------------------------------------------------------------- helpers

def _zarr() -> Any:
    try:
        import zarr
    except ImportError as e:  # pragma: no cover - zarr is installed with the distributed extra
        raise RuntimeError("OME-Zarr support needs zarr>=3 and ome-zarr: pip install 'zarr>=3' ome-zarr") from e
    if int(zarr.__version__.split(".")[0]) < 3:  # pragma: no cover
        raise RuntimeError(f"OME-Zarr support needs zarr>=3 (found {zarr.__version__}): pip install -U zarr")
    return zarr


def _ome_writer() -> Any:
    try:
        from ome_zarr import writer
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("writing OME-Zarr metadata needs ome-zarr: pip install ome-zarr") from e
    return writer


def _ome_format(version: str) -> Any:
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV05() if version == "0.5" else FormatV04()


def _reason(e: BaseException) -> str:
    return str(e).strip() or type(e).__name__


def _open_group(path: str, mode: str = "r") -> Tuple[Any, int, Dict[str, Any]]:
    """(zarr group, zarr format, OME attributes) of the folder ``path``; ValueError naming it otherwise.

    The OME attributes are the ``ome`` namespace of a zarr v3 group (OME-Zarr 0.5) and the plain attributes of a
    zarr v2 group (0.4 and older).
    """
    zarr = _zarr()
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise ValueError(f"{path} {what} (an OME-Zarr image or plate is a folder)")
    from zarr.errors import ContainsArrayError

    try:
        group = zarr.open_group(path, mode=mode, use_consolidated=False)
    except Exception as e:
        if isinstance(e, ContainsArrayError):
            raise ValueError(f"{path} is a plain zarr array, not an OME-Zarr group (open the image folder that "
                             f"holds it)") from e
        raise ValueError(f"{path} is not a zarr group: {_reason(e)}") from e
    zarr_format = int(group.metadata.zarr_format)
    attrs = group.attrs.asdict()
    if zarr_format >= 3:
        ome = attrs.get("ome")
        attrs = dict(ome) if isinstance(ome, dict) else {}
    return group, zarr_format, attrs


def _peek_attrs(path: str) -> Optional[Dict[str, Any]]:
    """The OME attributes of the zarr group ``path``, or None when it is none (never raises)."""
    try:
        return _open_group(path)[2]
    except Exception:
        return None


def _version(attrs: Mapping[str, Any], zarr_format: int) -> str:
    """The OME-Zarr version of a group's metadata ("0.5" for zarr v3 unless it says otherwise)."""
    v = attrs.get("version")
    if v is None:
        for key in ("multiscales", "plate", "well", "image-label"):
            obj = attrs.get(key)
            if isinstance(obj, list) and obj and isinstance(obj[0], dict):
                obj = obj[0]
            if isinstance(obj, dict) and obj.get("version") is not None:
                v = obj["version"]
                break
    if v is None:
        v = "0.5" if zarr_format >= 3 else "0.4"
    return str(v)


def _axis_names(axes: Any, ndim: int, path: str) -> List[str]:
    if axes is None:
        if ndim > len(_DEFAULT_AXES):
            raise ValueError(f"{path}: {ndim}-dimensional arrays without 'axes' metadata")
        return list(_DEFAULT_AXES[len(_DEFAULT_AXES) - ndim:])
    names = []
    for a in axes:
        n = a.get("name") if isinstance(a, dict) else a
        if not isinstance(n, str):
            raise ValueError(f"{path}: invalid axis in the multiscales metadata: {a!r}")
        names.append(n)
    if len(names) != ndim:
        raise ValueError(f"{path}: the metadata names {len(names)} axes {names} but the arrays have {ndim} dimensions")
    return names


def _transform(transforms: Any, kind: str) -> Optional[List[float]]:
    """The values of the first ``kind`` ("scale" / "translation") transformation of a list, or None."""
    if not isinstance(transforms, list):
        return None
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == kind and isinstance(t.get(kind), list):
            return [float(v) for v in t[kind]]
    return None


def _check_name(name: str, what: str = "label name") -> str:
    if (not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name
            or name.strip() != name):
        raise ValueError(f"invalid {what} {name!r}: use a non-empty folder name without '/' that does not start "
                         f"with '.'")
    return name


def _drop(values: Sequence[Any], index: Optional[int]) -> List[Any]:
    return [v for i, v in enumerate(values) if i != index]


# --------------------------------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class OmeImage:
    """One level of an OME-Zarr multiscale image, opened read-only (no pixels are loaded).

    Attributes
    ----------
    path : str
        The image group's folder.
    array : zarr.Array
        The level's array, read-only; index it (or wrap it with ``dask.array.from_zarr``) to read pixels.
    axes : list of str
        Axis names from the metadata, e.g. ``["c", "z", "y", "x"]``.
    scale : list of float or None
        The level's per-axis scale (its ``scale`` coordinate transformation, times the multiscale-wide one when
        present), or None when the metadata has none (OME-Zarr < 0.4).
    version : str
        The OME-Zarr version of the metadata, e.g. ``"0.4"`` or ``"0.5"``.
    level : int
        The level opened (0 = full resolution).
    levels : int
        Number of levels of the pyramid.
    shapes : list of tuple of int
        The shape of every level, full resolution first.
    """

    path: str
    array: "zarr.Array"
    axes: List[str]
    scale: Optional[List[float]]
    version: str
    level: int
    levels: int
    shapes: List[Tuple[int, ...]]

    @property
    def channel_axis(self) -> Optional[int]:
        """Index of the channel axis ``c``, or None."""
        return self.axes.index(CHANNEL_AXIS) if CHANNEL_AXIS in self.axes else None

    @property
    def label_shape(self) -> Tuple[int, ...]:
        """Shape of a label image of this level: the level's shape without the channel axis."""
        return tuple(_drop(self.shapes[self.level], self.channel_axis))


def _load_image(path: PathLike, level: int = 0) -> Tuple[OmeImage, Dict[str, Any], int]:
    """(image, its multiscales[0] metadata, zarr format); see :func:`open_image`."""
    spath = os.fspath(path)
    group, zarr_format, attrs = _open_group(spath)
    ms_list = attrs.get("multiscales")
    if not ms_list:
        if "plate" in attrs:
            raise ValueError(f"{spath} is an HCS plate, not a multiscale image: use plate_fields to list its field "
                             f"images")
        if "well" in attrs:
            raise ValueError(f"{spath} is an HCS well, not a multiscale image: open one of its field images "
                             f"(plate_fields lists them)")
        raise ValueError(f"{spath} is a zarr group but not an OME-Zarr multiscale image (no 'multiscales' metadata)")
    ms = ms_list[0] if isinstance(ms_list, list) else None
    datasets = ms.get("datasets") if isinstance(ms, dict) else None
    if not isinstance(datasets, list) or not datasets or not all(
            isinstance(d, dict) and isinstance(d.get("path"), str) for d in datasets):
        raise ValueError(f"{spath}: invalid 'multiscales' metadata (no list of datasets with paths)")
    levels = len(datasets)
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= int(level) < levels:
        raise ValueError(f"{spath}: level {level!r} is out of range: the image has {levels} level(s), "
                         f"0 to {levels - 1}")
    level = int(level)
    arrays = []
    for d in datasets:
        try:
            node = group[d["path"]]
        except KeyError as e:
            raise ValueError(f"{spath}: the level {d['path']!r} named in the metadata is missing") from e
        if not hasattr(node, "shape"):
            raise ValueError(f"{spath}: the level {d['path']!r} named in the metadata is a group, not an array")
        arrays.append(node)
    shapes = [tuple(int(s) for s in a.shape) for a in arrays]
    ndim = len(shapes[0])
    if any(len(s) != ndim for s in shapes):
        raise ValueError(f"{spath}: the levels have different numbers of dimensions: {shapes}")
    axes = _axis_names(ms.get("axes"), ndim, spath)
    scale = _transform(datasets[level].get("coordinateTransformations"), "scale")
    overall = _transform(ms.get("coordinateTransformations"), "scale")
    if scale is not None and overall is not None and len(overall) == len(scale):
        scale = [a * b for a, b in zip(scale, overall)]
    if scale is not None and len(scale) != ndim:
        raise ValueError(f"{spath}: the scale {scale} of level {level} does not have {ndim} values")
    image = OmeImage(path=spath, array=arrays[level], axes=axes, scale=scale, version=_version(attrs, zarr_format),
                     level=level, levels=levels, shapes=shapes)
    return image, ms, zarr_format


def open_image(path: PathLike, level: int = 0) -> OmeImage:
    """Open one level of an OME-Zarr multiscale image (0.4 or 0.5), read-only, without loading it.

    Parameters
    ----------
    path : str or os.PathLike
        The image group's folder (e.g. ``cells.zarr`` or a plate field ``plate.zarr/A/1/0``).
    level : int
        Pyramid level, 0 = full resolution.

    Returns
    -------
    OmeImage

    Raises
    ------
    ValueError
        Naming ``path``: not a directory, not a zarr group, not an OME-Zarr multiscale image (an HCS plate or
        well says so), invalid metadata, or ``level`` out of range.
    """
    return _load_image(path, level)[0]


def is_ome_zarr(path: PathLike) -> bool:
    """True when ``path`` is a folder holding an OME-Zarr multiscale image or HCS plate (0.4 or 0.5)."""
    attrs = _peek_attrs(os.fspath(path))
    return bool(attrs) and ("multiscales" in attrs or "plate" in attrs)


def is_plate(path: PathLike) -> bool:
    """True when ``path`` is a folder holding an OME-Zarr HCS plate."""
    attrs = _peek_attrs(os.fspath(path))
    return bool(attrs) and isinstance(attrs.get("plate"), dict)


@dataclass(frozen=True)
class Field:
    """One field (image) of an HCS plate.

    Attributes
    ----------
    row, column : str
        The well's row and column names, e.g. ``"A"`` and ``"1"``.
    field : str
        The field image's path inside the well, e.g. ``"0"``.
    path : str
        The field image group's folder, ``<plate>/<well path>/<field>``.
    """

    row: str
    column: str
    field: str
    path: str


def plate_fields(path: PathLike) -> List[Field]:
    """The field images of an OME-Zarr HCS plate, in plate order.

    Wells are ordered by row then column as listed in the plate metadata, fields in the order of the well's
    ``images`` list. A well listed in the plate but missing on disk is skipped with a warning.

    Raises
    ------
    ValueError
        Naming the path, when it is not an OME-Zarr plate or its metadata is invalid.
    """
    spath = os.fspath(path)
    _, _, attrs = _open_group(spath)
    plate = attrs.get("plate")
    if not isinstance(plate, dict):
        hint = ": it is a multiscale image, use open_image" if "multiscales" in attrs else ""
        raise ValueError(f"{spath} is not an OME-Zarr HCS plate (no 'plate' metadata){hint}")
    try:
        rows = [str(r["name"]) for r in plate.get("rows", [])]
        columns = [str(c["name"]) for c in plate.get("columns", [])]
        wells = list(plate.get("wells", []))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{spath}: invalid plate metadata (rows / columns / wells): {_reason(e)}") from e

    def place(w: Any) -> Tuple[int, int, str, str, str]:
        if not isinstance(w, dict) or not isinstance(w.get("path"), str):
            raise ValueError(f"{spath}: invalid well entry in the plate metadata: {w!r}")
        parts = w["path"].strip("/").split("/")
        if len(parts) != 2:
            raise ValueError(f"{spath}: invalid well path {w['path']!r} (expected '<row>/<column>')")
        ri, ci = w.get("rowIndex"), w.get("columnIndex")
        if not isinstance(ri, int):
            ri = rows.index(parts[0]) if parts[0] in rows else len(rows)
        if not isinstance(ci, int):
            ci = columns.index(parts[1]) if parts[1] in columns else len(columns)
        row = rows[ri] if 0 <= ri < len(rows) else parts[0]
        col = columns[ci] if 0 <= ci < len(columns) else parts[1]
        return ri, ci, row, col, w["path"].strip("/")

    out: List[Field] = []
    for _, _, row, col, wpath in sorted((place(w) for w in wells), key=lambda t: (t[0], t[1])):
        wdir = os.path.join(spath, *wpath.split("/"))
        wattrs = _peek_attrs(wdir)
        if wattrs is None:
            log.warning("%s: well %s listed in the plate is missing; skipped", spath, wpath)
            continue
        well = wattrs.get("well")
        images = well.get("images") if isinstance(well, dict) else None
        if not isinstance(images, list):
            raise ValueError(f"{wdir}: invalid well metadata (no 'well' with a list of images)")
        for im in images:
            if not isinstance(im, dict) or not isinstance(im.get("path"), str):
                raise ValueError(f"{wdir}: invalid image entry in the well metadata: {im!r}")
            out.append(Field(row=row, column=col, field=im["path"], path=os.path.join(wdir, im["path"])))
    return out


# --------------------------------------------------------------------------------------------------- labels

def _writable(image: OmeImage, zarr_format: int) -> str:
    """The OME-Zarr version labels are written in for ``image`` ("0.4" or "0.5"); ValueError otherwise."""
    if zarr_format >= 3 and image.version == "0.5":
        return "0.5"
    if zarr_format == 2 and image.version == "0.4":
        return "0.4"
    raise ValueError(f"{image.path}: labels can be written only into OME-Zarr 0.4 (zarr v2) or 0.5 (zarr v3) "
                     f"images; this one is OME-Zarr {image.version} in zarr v{zarr_format}")


def _label_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"invalid label dtype {dtype!r}: {_reason(e)}") from e
    if dt.kind not in "iu":
        raise ValueError(f"label dtype must be an integer type (e.g. uint32, uint64), not {dt}")
    return dt.newbyteorder("=")


def _label_chunks(chunks: Any, image: OmeImage, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    if chunks is None:
        arr = image.array
        shards = getattr(arr, "shards", None)
        base = tuple(shards) if shards else tuple(arr.chunks)  # one label chunk per image shard: safe to write
        return tuple(min(int(c), max(int(s), 1)) for c, s in zip(_drop(base, image.channel_axis), shape))
    if isinstance(chunks, (int, np.integer)) and not isinstance(chunks, bool):
        chunks = (int(chunks),) * len(shape)
    try:
        out = tuple(int(c) for c in chunks)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid label chunks {chunks!r}: give one positive integer per axis") from e
    if len(out) != len(shape) or any(c < 1 for c in out):
        raise ValueError(f"invalid label chunks {chunks!r}: give {len(shape)} positive integers, one per axis of the "
                         f"label shape {shape}")
    return out


def partial_labels_path(image_path: PathLike, name: str = "cells") -> str:
    """The folder of the unfinished level-0 label array that :func:`create_labels` makes for ``name``.

    Workers that cannot be handed the ``zarr.Array`` open it with ``zarr.open_array(path, mode="r+")``.
    """
    return os.path.join(os.fspath(image_path), "labels", f".{_check_name(name)}.partial", "0")


def _create_level(group: Any, key: str, shape: Sequence[int], dtype: np.dtype, chunks: Sequence[int],
                  axes: Sequence[str], zarr_format: int, overwrite: bool = False) -> Any:
    kwargs: Dict[str, Any] = {}
    if zarr_format >= 3:
        kwargs["dimension_names"] = list(axes)
    else:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}  # as ome-zarr writes 0.4
    return group.create_array(key, shape=tuple(int(s) for s in shape), dtype=dtype,
                              chunks=tuple(int(c) for c in chunks), fill_value=0, overwrite=overwrite, **kwargs)


def create_labels(image_path: PathLike, name: str = "cells", *, dtype: Any = "uint32",
                  chunks: Optional[Sequence[int]] = None, overwrite: bool = False,
                  resume: bool = True) -> "zarr.Array":
    """Create, or reopen to resume, the level-0 array of the label image ``name`` of an OME-Zarr image.

    The array lies in ``<image>/labels/.<name>.partial/0`` (see :func:`partial_labels_path`) until
    :func:`finish_labels` completes it; it has the image's level-0 shape without the channel axis ``c``, the
    image's zarr format (v3 for OME-Zarr 0.5, v2 for 0.4) and fill value 0.

    Parameters
    ----------
    image_path : str or os.PathLike
        The image group's folder.
    name : str
        Name of the label image (a folder name).
    dtype : numpy dtype-like
        Integer dtype of the labels (any, e.g. ``"uint32"`` or ``"uint64"``).
    chunks : sequence of int, optional
        Chunk shape, one value per label axis. Default: the image's chunks (its shards when sharded) without
        the channel axis. Concurrent writers must write whole chunks.
    overwrite : bool
        Allow replacing an existing finished label image ``name`` (it stays in place until
        :func:`finish_labels` swaps in the new one), and discarding an unfinished array whose shape, dtype or
        chunks differ from those asked for.
    resume : bool
        When an unfinished array with the same shape, dtype and chunks exists, reopen it without erasing
        what was written (default); False discards any unfinished array and starts over.

    Call it once, from one process (the driver); workers get the returned array (it pickles) or open
    :func:`partial_labels_path` with ``zarr.open_array(path, mode="r+")``.

    Returns
    -------
    zarr.Array
        The level-0 label array, writable.

    Raises
    ------
    ValueError
        Naming the path: not an OME-Zarr 0.4 / 0.5 image, the finished label ``name`` exists and ``overwrite``
        is False, a mismatching unfinished array exists and ``overwrite`` is False, invalid ``dtype`` /
        ``chunks`` / ``name``.
    """
    image, ms, zarr_format = _load_image(image_path)
    _writable(image, zarr_format)
    name = _check_name(name)
    dt = _label_dtype(dtype)
    shape = image.label_shape
    chunk_shape = _label_chunks(chunks, image, shape)
    axes = _drop(image.axes, image.channel_axis)
    labels_dir = os.path.join(image.path, "labels")
    final = os.path.join(labels_dir, name)
    partial = os.path.join(labels_dir, f".{name}.partial")
    if os.path.exists(final) and not overwrite:
        raise ValueError(f"{final}: the label image {name!r} exists already: pass overwrite=True to replace it (the "
                         f"old one stays until finish_labels completes the new one)")
    zarr = _zarr()
    if os.path.isdir(partial):
        try:
            old = zarr.open_array(os.path.join(partial, "0"), mode="r+")
        except Exception:  # a group without its array (a crashed call): the array is made below
            old = None
        if old is not None:
            same = (tuple(old.shape) == shape and np.dtype(old.dtype) == dt and tuple(old.chunks) == chunk_shape
                    and int(old.metadata.zarr_format) == zarr_format)
            if same and resume:
                log.info("%s: resuming the unfinished label image %r", image.path, name)
                return old
            if resume and not same and not overwrite:
                raise ValueError(f"{partial}: an unfinished label image {name!r} with shape {tuple(old.shape)}, "
                                 f"dtype {old.dtype}, chunks {tuple(old.chunks)} exists (asked: {shape}, {dt}, "
                                 f"{chunk_shape}): pass overwrite=True to discard it")
            log.info("%s: discarding the unfinished label image %r", image.path, name)
            shutil.rmtree(partial)
    try:
        root = zarr.open_group(image.path, mode="r+", use_consolidated=False)
        labels = root.require_group("labels")
        group = labels.require_group(f".{name}.partial")
        arr = _create_level(group, "0", shape, dt, chunk_shape, axes, zarr_format, overwrite=True)
    except Exception as e:
        raise ValueError(f"{partial}: cannot create the label array: {_reason(e)}") from e
    log.info("%s: created label image %r level 0: shape %s, %s, chunks %s", image.path, name, shape, dt, chunk_shape)
    return arr


def _index_map(n_src: int, n_dst: int) -> Tuple[np.ndarray, float]:
    """Source index of every output index along one axis, and the step (output pixel size in source pixels).

    For the usual integer factor ``f`` (``n_dst`` is ``n_src / f`` rounded down or up) every ``f``-th pixel is
    taken; otherwise nearest neighbour ``floor(i * n_src / n_dst)``.
    """
    f = max(1, int(round(n_src / max(n_dst, 1))))
    if n_src // f <= n_dst <= -(-n_src // f):
        return np.arange(n_dst, dtype=np.int64) * f, float(f)
    idx = np.minimum((np.arange(n_dst, dtype=np.float64) * (n_src / n_dst)).astype(np.int64), n_src - 1)
    return idx, n_src / n_dst


def _subsample(src: Any, dst: Any) -> List[float]:
    """Fill ``dst`` with the nearest-neighbour subsampling of ``src``, one ``dst`` chunk at a time.

    Each step reads only the selected source pixels of one output chunk (zarr orthogonal indexing), so memory
    stays at about two output chunks whatever the array sizes. Returns the per-axis steps.
    """
    maps = [_index_map(int(a), int(b)) for a, b in zip(src.shape, dst.shape)]
    grids = [range(0, int(n), int(c)) for n, c in zip(dst.shape, dst.chunks)]
    for starts in itertools.product(*grids):
        region = tuple(slice(s, min(s + int(c), int(n))) for s, c, n in zip(starts, dst.chunks, dst.shape))
        sel = tuple(m[0][r] for m, r in zip(maps, region))
        block = src.get_orthogonal_selection(sel)
        dst[region] = block
    return [m[1] for m in maps]


def _list_label(labels_dir: str, name: str, version: str) -> None:
    """Add ``name`` to the ``labels`` list of the labels group (creating its metadata, keeping other names)."""
    zarr = _zarr()
    writer = _ome_writer()
    fmt = _ome_format(version)
    group = zarr.open_group(labels_dir, mode="r+", use_consolidated=False)
    meta = writer.get_metadata(group)
    listed = meta.get("labels")
    names = [n for n in listed if isinstance(n, str)] if isinstance(listed, list) else []
    if name not in names:
        names.append(name)
    update: Dict[str, Any] = {"labels": names}
    if version == "0.5":
        update["version"] = version
    writer.add_metadata(group, update, fmt=fmt)


def _warn_consolidated(image_path: str) -> None:
    """Warn when the image or a zarr group above it has consolidated metadata, which no longer lists the labels."""
    p = Path(os.path.abspath(image_path))
    for d in [p, *list(p.parents)[:4]]:
        if (d / ".zmetadata").is_file() or _has_v3_consolidated(d):
            log.warning("%s has consolidated metadata, which does not list the new labels: readers that rely on it "
                        "will not see them; run zarr.consolidate_metadata(%r) once all labels are written", d, str(d))
            return


def _has_v3_consolidated(d: Path) -> bool:
    f = d / "zarr.json"
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text()).get("consolidated_metadata") is not None
    except (OSError, ValueError):
        return False


def finish_labels(image_path: PathLike, name: str = "cells", *, colors: Optional[Sequence[Mapping[str, Any]]] = None,
                  properties: Optional[Sequence[Mapping[str, Any]]] = None) -> str:
    """Complete the label image ``name`` started by :func:`create_labels`: pyramid, metadata, rename.

    Level ``k + 1`` is made from level ``k`` by nearest-neighbour subsampling (every ``f``-th pixel for the
    parent image's integer factor ``f`` per axis) to exactly the parent's level shapes, one output chunk at a
    time, so the whole of level 0 is never in memory. The multiscales metadata copies the parent's axes (without
    ``c``); each level's scale is the parent's level-0 scale times the subsampling step (the parent's level-0
    translation, when present, is kept). Then the partial group is renamed to ``labels/<name>`` (replacing an
    older label image of that name) and ``name`` is added to the ``labels`` list. Calling it again after it
    completed only makes sure that the name is listed.

    Parameters
    ----------
    image_path : str or os.PathLike
        The image group's folder.
    name : str
        Name of the label image.
    colors, properties : list of dict, optional
        ``image-label`` colors (``{"label-value": v, "rgba": [r, g, b, a]}``) and properties
        (``{"label-value": v, ...}``).

    Returns
    -------
    str
        The label image's folder, ``<image>/labels/<name>``.

    Raises
    ------
    ValueError
        Naming the path: no unfinished label image ``name`` (call :func:`create_labels` first), its level 0 does
        not match the image, invalid colors / properties.
    """
    image, ms, zarr_format = _load_image(image_path)
    version = _writable(image, zarr_format)
    name = _check_name(name)
    for what, items in (("colors", colors), ("properties", properties)):
        if items is not None and (isinstance(items, (str, bytes, Mapping)) or not all(
                isinstance(it, Mapping) and "label-value" in it for it in items)):
            raise ValueError(f"{image.path}: {what} must be a list of dicts, each with a 'label-value'")
    labels_dir = os.path.join(image.path, "labels")
    final = os.path.join(labels_dir, name)
    partial = os.path.join(labels_dir, f".{name}.partial")
    if not os.path.isdir(partial):
        if os.path.isdir(final):
            _list_label(labels_dir, name, version)
            return final
        raise ValueError(f"{partial}: no unfinished label image {name!r} for {image.path}: call create_labels first")
    zarr = _zarr()
    writer = _ome_writer()
    fmt = _ome_format(version)
    group = zarr.open_group(partial, mode="r+", use_consolidated=False)
    try:
        level0 = group["0"]
    except KeyError as e:
        raise ValueError(f"{partial}: the unfinished label image has no level 0: call create_labels again") from e
    c = image.channel_axis
    shapes = [tuple(_drop(s, c)) for s in image.shapes]
    if tuple(level0.shape) != shapes[0]:
        raise ValueError(f"{partial}: level 0 has shape {tuple(level0.shape)}, the image needs {shapes[0]}")
    axes = _drop(image.axes, c)
    chunks = tuple(int(x) for x in level0.chunks)
    steps = [[1.0] * len(axes)]
    src = level0
    for k in range(1, len(shapes)):
        dst = _create_level(group, str(k), shapes[k], np.dtype(level0.dtype),
                            [min(ch, max(s, 1)) for ch, s in zip(chunks, shapes[k])], axes, zarr_format,
                            overwrite=True)
        step = _subsample(src, dst)
        steps.append([a * b for a, b in zip(steps[-1], step)])
        src = dst
    log.info("%s: built %d level(s) of label image %r", image.path, len(shapes), name)

    datasets0 = ms["datasets"][0].get("coordinateTransformations")
    scale0 = _transform(datasets0, "scale")
    scale0 = _drop(scale0, c) if scale0 is not None and len(scale0) == len(image.axes) else [1.0] * len(axes)
    trans0 = _transform(datasets0, "translation")
    trans0 = _drop(trans0, c) if trans0 is not None and len(trans0) == len(image.axes) else None
    datasets = []
    for k, step in enumerate(steps):
        ct: List[Dict[str, Any]] = [{"type": "scale", "scale": [float(s * f) for s, f in zip(scale0, step)]}]
        if trans0 is not None:
            ct.append({"type": "translation", "translation": list(trans0)})
        datasets.append({"path": str(k), "coordinateTransformations": ct})
    raw_axes = ms.get("axes")
    axes_meta = _drop(raw_axes, c) if isinstance(raw_axes, list) and len(raw_axes) == len(image.axes) else axes
    writer.write_multiscales_metadata(group, datasets, fmt=fmt, axes=axes_meta, name=name)
    overall = ms.get("coordinateTransformations")
    if isinstance(overall, list) and overall:
        kept = []
        for t in overall:
            t = dict(t)
            for key in ("scale", "translation"):
                if isinstance(t.get(key), list) and len(t[key]) == len(image.axes):
                    t[key] = _drop(t[key], c)
            kept.append(t)
        multiscales = writer.get_metadata(group)["multiscales"]
        multiscales[0]["coordinateTransformations"] = kept
        writer.add_metadata(group, {"multiscales": multiscales}, fmt=fmt)
    image_label: Dict[str, Any] = {"version": version, "source": {"image": "../../"}}
    if colors is not None:
        image_label["colors"] = [dict(x) for x in colors]
    if properties is not None:
        image_label["properties"] = [dict(x) for x in properties]
    writer.add_metadata(group, {"image-label": image_label}, fmt=fmt)

    # commit: one directory rename; an older label image of that name is moved aside first (and put back if the
    # rename fails), then removed together with any left by a process killed between the two renames
    old = None
    if os.path.exists(final):
        old = os.path.join(labels_dir, f".{name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    try:
        os.rename(partial, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    for leftover in os.listdir(labels_dir):
        if leftover.startswith(f".{name}.old-"):
            shutil.rmtree(os.path.join(labels_dir, leftover), ignore_errors=True)
    _list_label(labels_dir, name, version)
    _warn_consolidated(image.path)
    log.info("%s: label image %r finished", image.path, name)
    return final


def write_labels(image_path: PathLike, labels: np.ndarray, name: str = "cells", *,
                 chunks: Optional[Sequence[int]] = None, overwrite: bool = False,
                 colors: Optional[Sequence[Mapping[str, Any]]] = None,
                 properties: Optional[Sequence[Mapping[str, Any]]] = None) -> str:
    """Write an in-memory label array as the label image ``name`` of an OME-Zarr image.

    :func:`create_labels` (starting over), write, :func:`finish_labels`. ``labels`` must be an integer array
    of the image's level-0 shape without the channel axis; its dtype is kept (e.g. uint64 values above 2**32).

    Returns
    -------
    str
        The label image's folder, ``<image>/labels/<name>``.
    """
    arr = np.asarray(labels)
    spath = os.fspath(image_path)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{spath}: labels must be an integer array, not {arr.dtype}")
    image = open_image(spath)
    if arr.shape != image.label_shape:
        raise ValueError(f"{spath}: labels of shape {arr.shape} do not fit the image: axes "
                         f"{_drop(image.axes, image.channel_axis)} need shape {image.label_shape}")
    target = create_labels(spath, name, dtype=arr.dtype, chunks=chunks, overwrite=overwrite, resume=False)
    target[...] = arr
    return finish_labels(spath, name, colors=colors, properties=properties)


# --------------------------------------------------------------------------------------------------- tables

def _zarr_stem(name: str) -> str:
    low = name.lower()
    for suffix in (".ome.zarr", ".zarr"):
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _is_group_dir(d: Path) -> bool:
    return (d / ".zgroup").is_file() or ((d / "zarr.json").is_file() and not _is_array_dir(d))


def _is_array_dir(d: Path) -> bool:
    try:
        return json.loads((d / "zarr.json").read_text()).get("node_type") == "array"
    except (OSError, ValueError):
        return False


def table_path(image_path: PathLike, name: str = "cells", *, fmt: str = "csv") -> str:
    """The conventional file of the per-object table of label image ``name``: beside the ``.zarr`` folder.

    - an image at the top of its zarr folder, ``data/cells.zarr`` -> ``data/cells_<name>.csv``;
    - a plate field ``data/plate.zarr/A/1/0`` -> ``data/plate_A1_0_<name>.csv``;
    - any other image nested in a zarr folder, ``data/x.zarr/a/b`` -> ``data/x_a_b_<name>.csv``.

    ``.zarr`` / ``.ome.zarr`` is dropped from the folder name; ``fmt="parquet"`` gives ``.parquet``. Nothing is
    created.
    """
    name = _check_name(name, "table name")
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown table format {fmt!r}: use 'csv' or 'parquet'")
    p = Path(os.path.abspath(os.fspath(image_path)))
    rel: List[str] = []
    root = p
    while root.parent != root and _is_group_dir(root.parent):
        rel.insert(0, root.name)
        root = root.parent
    stem = _zarr_stem(root.name)
    if len(rel) == 3 and is_plate(root):
        middle = f"{rel[0]}{rel[1]}_{rel[2]}_"
    else:
        middle = "".join(f"{r}_" for r in rel)
    return str(root.parent / f"{stem}_{middle}{name}.{fmt}")


def write_table(path: PathLike, columns: Mapping[str, Sequence[Any]], *, fmt: str = "csv") -> str:
    """Write a per-object table atomically (a temporary file in the same folder, then renamed).

    Parameters
    ----------
    path : str or os.PathLike
        The table file (see :func:`table_path` for the conventional place).
    columns : mapping of str to sequence
        Column name -> one-dimensional values (lists or NumPy arrays), all of the same length.
    fmt : {"csv", "parquet"}
        CSV (always available; a header row, then one row per object) or Parquet (needs pandas and pyarrow).

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    ValueError
        Naming ``path``: no columns, a column that is not one-dimensional, columns of different lengths, an
        unknown ``fmt``.
    RuntimeError
        For ``fmt="parquet"`` without pandas / pyarrow.
    """
    spath = os.fspath(path)
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"{spath}: unknown table format {fmt!r}: use 'csv' or 'parquet'")
    if not isinstance(columns, Mapping) or not columns:
        raise ValueError(f"{spath}: no columns to write (give a mapping of column name -> values)")
    names = [str(k) for k in columns]
    values: List[List[Any]] = []
    for key, col in columns.items():
        a = np.asarray(col)
        if a.ndim != 1:
            raise ValueError(f"{spath}: column {key!r} is not one-dimensional (shape {a.shape})")
        values.append(a.tolist())
    lengths = {n: len(v) for n, v in zip(names, values)}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{spath}: columns of different lengths: {lengths}")
    if fmt == "parquet":
        try:
            import pandas as pd
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise RuntimeError("writing Parquet tables needs pandas and pyarrow: pip install pandas pyarrow "
                               "(or use fmt='csv')") from e
        frame = pd.DataFrame({n: np.asarray(columns[k]) for n, k in zip(names, columns)})
        atomic_write(spath, lambda tmp: frame.to_parquet(tmp, index=False), to_path=True)
        return spath

    def write_csv(f: Any) -> None:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(zip(*values))

    atomic_write(spath, write_csv, text=True)
    return spath
