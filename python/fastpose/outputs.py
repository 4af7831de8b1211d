"""Output files of a segmentation, each written atomically (temp file in the same folder, then rename):

* ``*_masks.tif``      labels, zlib-compressed TIFF, uint16 (uint32 beyond 65535 masks)
* ``*_outlines.png``   the image with mask outlines drawn over it, for a quick look
* ``*_outlines.txt``   ImageJ outlines text (one polygon per line: x0,y0,x1,y1,...; Cellpose's format)
* ``*_rois.zip``       ImageJ ROI set (polygon ROIs, via ``roifile``)
* ``*_seg.npy``        Cellpose-GUI-compatible dictionary
* ``*_cells.csv``      per-cell table with scikit-image ``regionprops_table`` column names
* ``*.fastpose.json``  the completion record of one input, written last (:func:`write_record`): the
  requested kinds, each file written with its size, the input path and the fastpose version.  An input's
  outputs are complete exactly when :func:`record_status` says so; ``fastpose segment --skip-existing``
  skips only those.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .io import PathLike, atomic_write, write_tiff_atomic

log = logging.getLogger("fastpose")

#: each output kind and the end of its file name (``<stem><end>``)
OUTPUT_FILES: Dict[str, str] = {"masks": "_masks.tif", "outlines_png": "_outlines.png",
                                "outlines_txt": "_outlines.txt", "rois": "_rois.zip", "seg_npy": "_seg.npy",
                                "csv": "_cells.csv", "restored": "_restored.tif"}
OUTPUT_KINDS = tuple(OUTPUT_FILES)
#: kinds drawn from 2D masks only (not written for volumes)
KINDS_2D = ("outlines_png", "outlines_txt", "rois")
#: the end of a completion record's name (``<stem>.fastpose.json``)
RECORD_SUFFIX = ".fastpose.json"
RECORD_FORMAT = "fastpose-outputs"
RECORD_VERSION = 1


# ------------------------------------------------------------------------------------------------
# outlines
# ------------------------------------------------------------------------------------------------

def outline_mask(masks: np.ndarray) -> np.ndarray:
    """Boolean 2D map of mask pixels with a 4-neighbour of another label (or the image edge)."""
    m = masks
    edge = np.zeros(m.shape, bool)
    edge[:-1] |= m[:-1] != m[1:]
    edge[1:] |= m[1:] != m[:-1]
    edge[:, :-1] |= m[:, :-1] != m[:, 1:]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    edge[0] = edge[-1] = True
    edge[:, 0] = edge[:, -1] = True
    return edge & (m > 0)


_NB = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]


def trace_outline(mask: np.ndarray) -> np.ndarray:
    """Ordered boundary polygon (N, 2) as (x, y) of the largest 8-connected blob of a boolean mask
    (Moore-neighbour tracing)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return np.zeros((0, 2), np.int32)
    if ys.size == 1:
        return np.array([[xs[0], ys[0]]], np.int32)
    H, W = mask.shape
    start = (int(ys[0]), int(xs[0]))  # topmost-leftmost pixel
    pts = [start]
    cur, back = start, 6  # we arrived "from the left"
    for _ in range(4 * ys.size + 8):
        found = False
        for k in range(8):
            d = (back + 1 + k) % 8
            ny, nx = cur[0] + _NB[d][0], cur[1] + _NB[d][1]
            if 0 <= ny < H and 0 <= nx < W and mask[ny, nx]:
                back = (d + 4) % 8
                cur = (ny, nx)
                found = True
                break
        if not found or cur == start:
            break
        pts.append(cur)
    arr = np.array(pts, np.int32)
    return arr[:, ::-1].copy()


def outlines_list(masks: np.ndarray) -> List[np.ndarray]:
    """One (N, 2) (x, y) polygon per mask label 1..max (empty arrays for absent labels)."""
    from scipy import ndimage as ndi

    out: List[np.ndarray] = []
    for k, sl in enumerate(ndi.find_objects(masks.astype(np.int64))):
        if sl is None:
            out.append(np.zeros((0, 2), np.int32))
            continue
        sub = np.pad(masks[sl] == k + 1, 1)
        poly = trace_outline(sub)
        poly = poly - 1 + np.array([sl[1].start, sl[0].start], np.int32)
        out.append(poly)
    return out


def write_outlines_txt(path: Path, masks: np.ndarray) -> Path:
    """ImageJ outlines text, Cellpose's ``*_cp_outlines.txt`` format (x,y pairs per line)."""
    def w(f):
        for poly in outlines_list(masks):
            if len(poly):
                f.write(",".join(str(int(v)) for v in poly.ravel()) + "\n")
    return atomic_write(Path(path), w, text=True)


def write_rois_zip(path: Path, masks: np.ndarray, mask_names: Optional[Sequence[str]] = None) -> Path:
    """ImageJ ROI set: one polygon ROI per mask, named by label (``00007``), or with its class
    (``00007-lymphocyte``) when ``mask_names`` gives a class name per mask id (panoptic models)."""
    import roifile

    rois = []
    for k, poly in enumerate(outlines_list(masks)):
        if len(poly) >= 1:
            r = roifile.ImagejRoi.frompoints(poly.astype(np.float32))
            r.name = f"{k + 1:05d}" + (f"-{mask_names[k + 1]}" if mask_names is not None else "")
            rois.append(r)

    def w(f):
        import zipfile
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for r in rois:
                z.writestr(f"{r.name}.roi", r.tobytes())
    return atomic_write(Path(path), w)


def _png_bytes(rgb: np.ndarray) -> bytes:
    """Minimal PNG encoder for an (H, W, 3) uint8 image (stdlib zlib only)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


#: outline colours of classes 1, 2, ... in class-coloured outline PNGs (cycled beyond)
CLASS_COLOURS = ((255, 40, 40), (40, 200, 255), (255, 220, 0), (80, 255, 80), (255, 80, 255), (255, 140, 0))


def overlay_rgb(image: np.ndarray, masks: np.ndarray, classes: Optional[np.ndarray] = None) -> np.ndarray:
    """Image (first channel, percentile-scaled to grey) with outlines in red, or coloured by class
    (:data:`CLASS_COLOURS`) when ``classes`` gives a class id per mask id (panoptic models)."""
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        img = img[..., 0] if img.shape[-1] <= 4 else img[0]
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 1)
    g = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = (np.stack([g, g, g], -1) * 255).astype(np.uint8)
    edge = outline_mask(masks)
    if classes is None:
        rgb[edge] = (255, 40, 40)
    else:
        palette = np.array([(255, 255, 255)] + [CLASS_COLOURS[i % len(CLASS_COLOURS)]
                                                for i in range(int(np.max(classes, initial=0)))], np.uint8)
        rgb[edge] = palette[np.asarray(classes, np.int64)[masks[edge].astype(np.int64)]]
    return rgb


def write_outlines_png(path: Path, image: np.ndarray, masks: np.ndarray,
                       classes: Optional[np.ndarray] = None) -> Path:
    data = _png_bytes(overlay_rgb(image, masks, classes))
    return atomic_write(Path(path), lambda f: f.write(data))


# ------------------------------------------------------------------------------------------------
# tables and Cellpose GUI files
# ------------------------------------------------------------------------------------------------

def cell_table(masks: np.ndarray, image: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Per-cell properties with ``skimage.measure.regionprops_table`` names: label, area, centroid-i,
    bbox-i (min per axis, then max+1 per axis), intensity_mean-c per channel (channel last)."""
    m = masks.astype(np.int64)
    n = int(m.max()) if m.size else 0
    flat = m.ravel()
    area = np.bincount(flat, minlength=n + 1)
    present = np.nonzero(area[1:])[0] + 1
    cols: Dict[str, np.ndarray] = {"label": present, "area": area[present].astype(np.int64)}
    idx = np.indices(m.shape).reshape(m.ndim, -1)
    for a in range(m.ndim):
        s = np.bincount(flat, weights=idx[a], minlength=n + 1)
        cols[f"centroid-{a}"] = s[present] / area[present]
    fg = flat > 0
    for a in range(m.ndim):
        lo = np.full(n + 1, np.iinfo(np.int64).max)
        np.minimum.at(lo, flat[fg], idx[a][fg])
        cols[f"bbox-{a}"] = lo[present]
    for a in range(m.ndim):
        hi = np.full(n + 1, -1)
        np.maximum.at(hi, flat[fg], idx[a][fg])
        cols[f"bbox-{m.ndim + a}"] = hi[present] + 1
    if image is not None:
        img = np.asarray(image, np.float64)
        if img.shape == m.shape:
            img = img[..., None]
        if img.shape[:m.ndim] != m.shape:
            raise ValueError(f"image shape {image.shape} does not match masks {m.shape} (channels must be last)")
        for c in range(img.shape[-1]):
            s = np.bincount(flat, weights=img[..., c].ravel(), minlength=n + 1)
            cols[f"intensity_mean-{c}"] = s[present] / area[present]
    return cols


def write_csv(path: Path, masks: np.ndarray, image: Optional[np.ndarray] = None,
              mask_names: Optional[Sequence[str]] = None) -> Path:
    """The per-cell table (:func:`cell_table`); with ``mask_names`` (a class name per mask id, panoptic
    models) a ``class`` column after ``label``."""
    cols: Dict[str, Any] = dict(cell_table(masks, image))
    if mask_names is not None:
        lab = cols.pop("label")
        cols = {"label": lab, "class": np.asarray(mask_names, object)[lab], **cols}
    names = list(cols)

    def w(f):
        wr = csv.writer(f)
        wr.writerow(names)
        for row in zip(*(cols[k] for k in names)):
            wr.writerow([v if isinstance(v, str) else f"{v:.4f}" if isinstance(v, (float, np.floating))
                         else int(v) for v in row])
    return atomic_write(Path(path), w, text=True)


def write_seg_npy(path: Path, image_path: str, masks: np.ndarray, flows: Optional[np.ndarray] = None,
                  cellprob: Optional[np.ndarray] = None, diameter: Optional[float] = None,
                  classes: Optional[np.ndarray] = None, class_names: Optional[Sequence[str]] = None,
                  cellpose_flows: Optional[List[Any]] = None) -> Path:
    """Cellpose GUI ``_seg.npy``: a pickled dict with masks, outlines, flows, filename, diameter; panoptic
    models add ``classes`` (class id per mask id, index 0 unused) and ``class_names`` (background first).
    ``cellpose_flows``: stored as ``flows`` instead of ``[flows, cellprob]`` (Cellpose 4's own layout, from
    :func:`fastpose.cellpose_cli.cellpose_flows`, as ``fastpose cellpose`` writes it)."""
    outl = outline_mask(masks) * masks if masks.ndim == 2 else np.stack([outline_mask(p) * p for p in masks])
    d = {"masks": masks, "outlines": outl.astype(masks.dtype), "filename": str(image_path),
         "ismanual": np.zeros(int(masks.max()), bool), "chan_choose": [0, 0],
         "flows": (cellpose_flows if cellpose_flows is not None else [flows, cellprob] if flows is not None
                   else []),
         "diameter": float(diameter) if diameter else 0.0}
    if classes is not None:
        d["classes"] = np.asarray(classes, np.int64)
        d["class_names"] = list(class_names or [])
    buf = io.BytesIO()
    np.save(buf, np.array(d, dtype=object), allow_pickle=True)
    data = buf.getvalue()
    return atomic_write(Path(path), lambda f: f.write(data))


def write_outputs(out_dir: Path, stem: str, kinds: Sequence[str], image: np.ndarray, masks: np.ndarray,
                  image_path: str = "", flows: Optional[np.ndarray] = None, cellprob: Optional[np.ndarray] = None,
                  diameter: Optional[float] = None, classes: Optional[np.ndarray] = None,
                  class_names: Optional[Sequence[str]] = None, restored: Optional[np.ndarray] = None) -> List[Path]:
    """Write the requested output kinds (see OUTPUT_KINDS) for one image; returns the paths written.

    ``restored``: the restored image (segmentation with a restoration model), written as float32 TIFF for the
    kind ``"restored"`` (a ValueError when it is asked for without one).

    Panoptic models: ``classes`` (class id per mask id, :attr:`SegmentResult.classes`) and ``class_names``
    (background first) add the class to the CSV (a ``class`` column), the ROI names, ``_seg.npy`` and colour
    the outline PNG by class; without them the files are as for any model.

    The kinds of :data:`KINDS_2D` are skipped for volumes.  The completion record is not written here:
    call :func:`write_record` once every output is written."""
    out_dir = Path(out_dir)
    written: List[Path] = []
    for k in kinds:
        if k not in OUTPUT_KINDS:
            raise ValueError(f"unknown output kind {k!r}; choose from {', '.join(OUTPUT_KINDS)}")

    def dest(kind: str) -> Path:
        return out_dir / f"{stem}{OUTPUT_FILES[kind]}"
    names: Optional[List[str]] = None
    if classes is not None:
        cn = list(class_names or [])
        names = [cn[c] if 0 <= c < len(cn) else str(int(c)) for c in np.asarray(classes, np.int64).tolist()]
    if "masks" in kinds:
        written.append(write_tiff_atomic(dest("masks"), masks))
    if masks.ndim == 2:
        if "outlines_png" in kinds:
            written.append(write_outlines_png(dest("outlines_png"), image, masks, classes))
        if "outlines_txt" in kinds:
            written.append(write_outlines_txt(dest("outlines_txt"), masks))
        if "rois" in kinds:
            written.append(write_rois_zip(dest("rois"), masks, names))
    if "seg_npy" in kinds:
        written.append(write_seg_npy(dest("seg_npy"), image_path, masks, flows, cellprob, diameter, classes,
                                     class_names))
    if "restored" in kinds:
        if restored is None:
            raise ValueError("the restored image was asked for (--save restored) but no restoration model ran "
                             "(--restore MODEL)")
        written.append(write_tiff_atomic(dest("restored"), np.asarray(restored, np.float32)))
    if "csv" in kinds:
        img = np.asarray(image)
        written.append(write_csv(dest("csv"), masks, img if img.shape[:masks.ndim] == masks.shape else None,
                                 names))
    return written


# ------------------------------------------------------------------------------------------------
# completion records: an input's outputs as a unit
# ------------------------------------------------------------------------------------------------

def output_paths(out_dir: PathLike, stem: str, kinds: Optional[Sequence[str]] = None) -> List[Path]:
    """The files ``stem``'s outputs of ``kinds`` (default: every kind) would have, plus its record."""
    d = Path(out_dir)
    return [d / f"{stem}{OUTPUT_FILES[k]}" for k in (kinds or OUTPUT_KINDS)] + [record_path(d, stem)]


def record_path(out_dir: PathLike, stem: str) -> Path:
    """Where ``stem``'s completion record lives: ``<out_dir>/<stem>.fastpose.json``."""
    return Path(out_dir) / f"{stem}{RECORD_SUFFIX}"


def remove_record(out_dir: PathLike, stem: str) -> None:
    """Remove ``stem``'s completion record (before its outputs are rewritten: until the new record is
    written, the input counts as incomplete)."""
    try:
        record_path(out_dir, stem).unlink()
    except FileNotFoundError:
        pass


def write_record(out_dir: PathLike, stem: str, kinds: Sequence[str], written: Sequence[PathLike],
                 image_path: PathLike) -> Path:
    """Write ``stem``'s completion record atomically, last: ``kinds`` requested, each written file (name
    relative to ``out_dir``) with its size, the input's absolute path and the fastpose version."""
    from . import __version__

    d = Path(out_dir)
    files = {Path(w).name: Path(w).stat().st_size for w in written}
    rec = {"format": RECORD_FORMAT, "version": RECORD_VERSION, "fastpose": __version__,
           "input": str(Path(image_path).resolve()), "kinds": list(kinds), "files": files}
    return atomic_write(record_path(d, stem), lambda f: json.dump(rec, f, indent=1), text=True)


def record_status(out_dir: PathLike, stem: str, kinds: Sequence[str],
                  image_path: Optional[PathLike] = None) -> Tuple[str, str]:
    """Whether ``stem``'s outputs in ``out_dir`` are complete for ``kinds``: ``(status, reason)`` with
    status ``"complete"`` (record present and readable, its kinds a superset of ``kinds``, every recorded
    file present with its recorded size, and, with ``image_path``, recorded for that input), ``"incomplete"``
    (a record that fails one of those, or output files without a record: a killed run, or a run of fastpose
    before records existed) or ``"new"`` (nothing of ``stem`` there)."""
    d = Path(out_dir)
    rp = record_path(d, stem)
    if not rp.is_file():
        present = [q.name for q in output_paths(d, stem)[:-1] if q.exists()]
        if present:
            return "incomplete", f"no completion record, but {', '.join(present)} exist"
        return "new", ""
    try:
        rec = json.loads(rp.read_text())
        if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT:
            return "incomplete", f"{rp.name} is not a fastpose completion record"
        have = set(rec["kinds"])
        files = dict(rec["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return "incomplete", f"unreadable completion record {rp.name} ({e})"
    missing = [k for k in kinds if k not in have]
    if missing:
        return "incomplete", f"the record lacks {', '.join(missing)}"
    if image_path is not None and rec.get("input") != str(Path(image_path).resolve()):
        return "incomplete", f"the record is for another input, {rec.get('input')}"
    for name, size in files.items():
        q = d / str(name)
        try:
            got = q.stat().st_size
        except OSError:
            return "incomplete", f"{name} is missing"
        if got != size:
            return "incomplete", f"{name} has {got} bytes, the record says {size}"
    expected = {f"{stem}{OUTPUT_FILES[k]}" for k in kinds if k in OUTPUT_FILES and k not in KINDS_2D}
    if not expected <= set(files):
        return "incomplete", f"the record lacks {', '.join(sorted(expected - set(files)))}"
    return "complete", ""
