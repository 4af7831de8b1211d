"""Blockwise segmentation of images too large for one machine's memory, exact across block seams.

How a block agrees with the whole image, with no communication between blocks:

1. **The same maps.** The image is normalised with statistics computed once for the whole image (every pixel
   when it has at most :data:`STATS_PIXELS` per channel, else a regular subsample, or an array you give, e.g. a
   low-resolution pyramid level) and handed to every block; the network's tiles sit on a grid anchored to the
   image's coordinates (:mod:`fastpose.inference.anchored`), so the maps of a block's pixels are bitwise those
   of a whole-image run on that grid.  No resizing: the image is taken at the network's scale.
2. **The same objects.** Each block recovers masks on its core plus a halo (``halo`` pixels on every side, the
   image's edges excepted) with the family's post-processing; rules that depend on the image size (the largest
   mask fraction) use the whole image's size.  An object that touches the core and is no larger than the halo
   lies whole inside the block, and every block that sees it computes the same pixels, provided what the
   block cannot see does not reach it: a neighbouring object cut by the halo's outer edge has fewer tracked
   pixels in its histogram peak, which can change which seed claims a contested pixel within a few pixels of
   it.  A halo of twice the largest object keeps cut neighbours out of reach; with less, rare pixels can differ
   (``bench/RESULTS.md`` has a 4096 px mosaic at halo 128 whose labels agree at AP@0.9 = 1.0000 but are not
   pixel-identical).
3. **The same ids, by ownership.** Each object's id is ``1 +`` the global linear index (C order) of its first
   pixel (its *anchor*), uint64; a block writes only its core, so blocks never write the same pixel.  An object
   that touches the core and reaches the outer edge of the halo may be cut: :class:`HaloError` (``on_edge=
   "raise"``, the default) or, with ``on_edge="keep"``, kept as the block computed it (logged; the fallback).
4. **Compact ids** (``compact=True``): each object is owned by the block whose core holds its anchor; ids become
   ``offset(owner) + rank of the anchor among the owner's anchors``, offsets from the per-block counts, so a
   block needs the anchor lists of its neighbours only, never a global table.

The fallback for models whose blocks cannot agree exactly, ``stitch="match"``: provisional ids per block,
objects of neighbouring blocks joined when they are each other's best IoU match in the overlap of their regions
(all 3^d - 1 neighbours), union-find, renumbered 1..N.

Blocks run in this process (``client=None``) or as tasks on a ``dask.distributed`` client (threads or
processes; each worker loads the model once).  With ``out`` a zarr array (or a path), each block writes its
core to it (chunks aligned with the blocks) and records itself done; a rerun after a crash skips the blocks
already written.  Blocks whose region holds no foreground in a low-resolution ``foreground`` mask are skipped.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import checks

__all__ = ["segment_blocks", "run_block", "compact_ids", "cached_segmenter", "mutual_matches", "BlockGrid", "BlockSource",
           "HaloError", "BlockResult", "STATS_PIXELS", "default_halo"]

log = logging.getLogger("fastpose.distributed")

#: channels with at most this many pixels get exact normalisation statistics (every pixel); larger ones a
#: regular subsample of about this many
STATS_PIXELS = 1 << 24
#: the folder, inside a zarr output array's directory, that records the blocks already written
DONE_DIR = ".fastpose_blocks"


class HaloError(ValueError):
    """An object touching a block's core reaches the outer edge of its halo: it may be larger than the halo."""


@dataclass(frozen=True)
class BlockGrid:
    """Cores of ``block`` pixels tiling an image of spatial ``shape`` (the last ones smaller), each with a halo
    of ``halo`` pixels per side (clipped to the image)."""

    shape: Tuple[int, ...]
    block: Tuple[int, ...]
    halo: Tuple[int, ...]

    @property
    def counts(self) -> Tuple[int, ...]:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block))

    def indices(self) -> List[Tuple[int, ...]]:
        """Every block index, in C order."""
        return list(itertools.product(*(range(n) for n in self.counts)))

    def core(self, idx: Sequence[int]) -> List[Tuple[int, int]]:
        return [(i * b, min(s, (i + 1) * b)) for i, b, s in zip(idx, self.block, self.shape)]

    def region(self, idx: Sequence[int]) -> List[Tuple[int, int]]:
        return [(max(0, a - h), min(s, b + h)) for (a, b), h, s in zip(self.core(idx), self.halo, self.shape)]

    def flat(self, idx: Sequence[int]) -> int:
        return int(np.ravel_multi_index(tuple(int(i) for i in idx), self.counts))

    def owner(self, coords: np.ndarray) -> np.ndarray:
        """Flat block index of the cores holding the points ``coords`` [ndim, n]."""
        blk = tuple(np.asarray(c, np.int64) // b for c, b in zip(coords, self.block))
        return np.ravel_multi_index(blk, self.counts)


def default_halo(diameter: float) -> int:
    """Halo for objects of about ``diameter`` px: 4 diameters (objects up to twice the typical size, plus the
    room for the seeds of a neighbouring cut object not to reach them), at least 32 px."""
    return max(32, int(math.ceil(4 * float(diameter))))


class BlockSource:
    """The image to segment, read box by box and normalised with whole-image statistics.

    ``array``: anything with ``shape`` and NumPy slicing (NumPy, zarr, dask: a dask slice is computed in the
    calling thread).  Axes: ``channel_axis`` (optional), ``z_axis`` (3D), and the last two others are Y, X.
    ``ranges``: per network channel ``(lo, hi, ok)`` (:func:`fastpose.transforms.channel_range`), or None for
    no normalisation."""

    def __init__(self, array: Any, channel_axis: Optional[int], z_axis: Optional[int],
                 picks: Sequence[Optional[int]], ranges: Optional[Sequence[Tuple[Any, Any, bool]]],
                 invert: bool = False) -> None:
        self.array = array
        nd = len(array.shape)
        self.ca = None if channel_axis is None else channel_axis % nd
        self.za = None if z_axis is None else z_axis % nd
        rest = [a for a in range(nd) if a not in (self.ca, self.za)]
        self.spatial_axes = ([self.za] if self.za is not None else []) + rest
        self.shape = tuple(int(array.shape[a]) for a in self.spatial_axes)
        self.picks = list(picks)
        self.ranges = None if ranges is None else list(ranges)
        self.invert = bool(invert)

    def raw(self, box: Sequence[Tuple[int, int]]) -> np.ndarray:
        """Input channels of a box inside the image, [C_in, *box sizes] in the array's dtype."""
        idx: List[Any] = [slice(None)] * len(self.array.shape)
        for a, (lo, hi) in zip(self.spatial_axes, box):
            idx[a] = slice(int(lo), int(hi))
        v = self.array[tuple(idx)]
        if hasattr(v, "compute"):
            v = v.compute(scheduler="synchronous")
        v = np.asarray(v)
        order = ([self.ca] if self.ca is not None else []) + self.spatial_axes
        kept = [a for a in range(len(self.array.shape))]
        v = np.transpose(v, [kept.index(a) for a in order])
        return v if self.ca is not None else v[None]

    def read(self, box: Sequence[Tuple[int, int]]) -> np.ndarray:
        """The prepared float32 [nchan, *box sizes] of any box: zeros outside the image."""
        sizes = [b - a for a, b in box]
        out = np.zeros((len(self.picks), *sizes), np.float32)
        inner = [(max(0, a), min(s, b)) for (a, b), s in zip(box, self.shape)]
        if any(b <= a for a, b in inner):
            return out
        v = self.raw(inner)
        dst = (slice(None),) + tuple(slice(a - o, b - o) for (a, b), (o, _) in zip(inner, box))
        for i, c in enumerate(self.picks):
            if c is None:
                continue
            ch = v[c].astype(np.float32)
            if self.ranges is not None:
                from ..transforms import scale_channel
                scale_channel(ch, *self.ranges[i], invert=self.invert)
            out[(i,) + dst[1:]] = ch
        return out

    def channel_sample(self, c: int, max_pixels: int = STATS_PIXELS) -> np.ndarray:
        """Input channel ``c`` whole (at most ``max_pixels`` pixels) or a regular subsample of about that many,
        read in slabs along the first spatial axis."""
        n = int(np.prod(self.shape))
        step = 1 if n <= max_pixels else int(math.ceil((n / max_pixels) ** (1.0 / len(self.shape))))
        slab = max(step, (max(1, (1 << 22) // max(1, int(np.prod(self.shape[1:]))))) // step * step)
        parts = []
        for a in range(0, self.shape[0], slab):
            box = [(a, min(self.shape[0], a + slab))] + [(0, s) for s in self.shape[1:]]
            v = self.raw(box)[c]
            parts.append(v[(slice(None, None, step),) * v.ndim] if step > 1 else v)
        return np.concatenate(parts, 0)


def _picks(n_in: int, channels: Optional[Sequence[int]], nchan: int) -> List[Optional[int]]:
    picks = list(range(min(nchan, n_in))) if channels is None else [int(c) for c in channels]
    if len(picks) > nchan:
        raise ValueError(f"channels={list(channels or [])} selects {len(picks)} channels; the model takes {nchan}")
    for c in picks:
        if not 0 <= c < n_in:
            raise ValueError(f"channels={list(channels or [])}: the image has only {n_in} channel(s)")
    return picks + [None] * (nchan - len(picks))


def _ranges(src: BlockSource, lower: float, upper: float, stats: Any = None) -> List[Tuple[Any, Any, bool]]:
    from ..transforms import channel_range

    zero = (np.float64(0.0), np.float64(0.0), False)
    out: List[Tuple[Any, Any, bool]] = []
    for c in src.picks:
        if c is None:
            out.append(zero)
            continue
        if stats is not None:
            s = np.asarray(stats)
            ch = s[c] if (s.ndim == len(src.shape) + 1 and src.ca is not None) else s
        else:
            ch = src.channel_sample(c)
        out.append(channel_range(np.ascontiguousarray(ch), lower, upper, np.float32))
    return out


@dataclass
class BlockResult:
    """What one block reports: its index, whether it ran, the objects it owns (anchor in its core: ids,
    areas, centroids, bounding boxes) and the ids of every object on its core."""

    index: Tuple[int, ...]
    skipped: bool = False
    owned: Dict[str, list] = field(default_factory=dict)
    seconds: float = 0.0
    labels: Optional[np.ndarray] = None     #: the core's uint64 ids (only when there is no output array)
    kept_cut: int = 0                        #: objects reaching the halo's edge kept (``on_edge="keep"``)
    region: Optional[np.ndarray] = None      #: ``stitch="match"``: the region's provisional ids (no output array)

    def to_json(self) -> Dict[str, Any]:
        return {"index": list(self.index), "skipped": self.skipped, "owned": self.owned,
                "seconds": round(self.seconds, 3), "kept_cut": self.kept_cut}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "BlockResult":
        return cls(index=tuple(d["index"]), skipped=bool(d["skipped"]), owned=dict(d["owned"]),
                   seconds=float(d.get("seconds", 0.0)), kept_cut=int(d.get("kept_cut", 0)))


# ---- one block ---------------------------------------------------------------------------------------------

_SEGMENTERS: Dict[Any, Any] = {}


def cached_segmenter(model: Any, device: str = "auto", backend: str = "auto", batch_size: int = 8) -> Any:
    """The Segmenter of ``model``, loaded once per process (a worker keeps it for all its blocks)."""
    from ..inference import Segmenter

    if isinstance(model, Segmenter):
        return model
    key = (id(model) if isinstance(model, torch.nn.Module) else str(model), device, backend, batch_size)
    seg = _SEGMENTERS.get(key)
    if seg is None:
        if device == "auto" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
            torch.cuda.set_device(os.getpid() % torch.cuda.device_count())  # one GPU per worker process
        seg = Segmenter(model, device=device, backend=backend, batch_size=batch_size)
        _SEGMENTERS[key] = seg
    return seg


def _owned_stats(lab: np.ndarray, region: Sequence[Tuple[int, int]], core: Sequence[Tuple[int, int]],
                 ids: np.ndarray, first: np.ndarray) -> Dict[str, list]:
    """Per object whose anchor is in the core: id, area, centroid and bounding box (global coordinates)."""
    sizes = [b - a for a, b in region]
    anchor = np.stack(np.unravel_index(first, sizes)) + np.array([a for a, _ in region])[:, None]
    inside = np.all([(anchor[d] >= core[d][0]) & (anchor[d] < core[d][1]) for d in range(len(core))], axis=0)
    keep = np.nonzero(inside)[0] + 1               # region labels 1..n owned here
    out: Dict[str, list] = {"id": [int(v) for v in ids[keep]]}
    if keep.size == 0:
        out.update(area=[], centroid=[], bbox=[])
        return out
    flat = lab.ravel()
    n = int(lab.max())
    area = np.bincount(flat, minlength=n + 1)
    coords = np.indices(lab.shape, dtype=np.int64).reshape(len(sizes), -1)
    cents, lo, hi = [], [], []
    fg = flat > 0
    for d in range(len(sizes)):
        g = coords[d] + region[d][0]
        cents.append(np.bincount(flat, weights=g.astype(np.float64), minlength=n + 1))
        mn = np.full(n + 1, np.iinfo(np.int64).max)
        mx = np.full(n + 1, -1)
        np.minimum.at(mn, flat[fg], g[fg])
        np.maximum.at(mx, flat[fg], g[fg])
        lo.append(mn)
        hi.append(mx)
    out["area"] = [int(area[k]) for k in keep]
    out["centroid"] = [[float(cents[d][k] / area[k]) for d in range(len(sizes))] for k in keep]
    out["bbox"] = [[int(lo[d][k]) for d in range(len(sizes))] + [int(hi[d][k]) + 1 for d in range(len(sizes))]
                   for k in keep]
    return out


def run_block(idx: Tuple[int, ...], source: BlockSource, grid: BlockGrid, model: Any, opts: Mapping[str, Any],
              out: Any = None, done: Optional[str] = None, foreground: Any = None) -> BlockResult:
    """Segment block ``idx`` (module docstring): maps of its core + halo on the anchored grid, the family's
    masks, ids by anchor, the core written to ``out`` (or returned), recorded done in ``done``."""
    t0 = time.perf_counter()
    core = grid.core(idx)
    region = grid.region(idx)
    res = BlockResult(index=tuple(int(i) for i in idx))
    if foreground is not None and not _has_foreground(foreground, grid.shape, region):
        res.skipped = True
        res.owned = {"id": [], "area": [], "centroid": [], "bbox": []}
        if out is None:
            res.labels = np.zeros([b - a for a, b in core], np.uint64)
    else:
        from ..inference.anchored import region_maps

        seg = cached_segmenter(model, opts["device"], opts["backend"], opts["batch_size"])
        maps = region_maps(seg.runners, seg.spec, source.read, grid.shape, region, net_device=seg.device,
                           batch_size=seg.batch_size, precision=seg.precision, augment=opts["augment"],
                           tile_overlap=opts["tile_overlap"])
        npx = float(np.prod([b - a for a, b in region]))
        post = dict(opts["post"])
        post["max_size_fraction"] = float(opts["max_size_fraction"]) * float(np.prod(grid.shape)) / npx
        r = seg.recover(torch.from_numpy(maps).to(torch.device(seg.core_device)), None, 1.0, None, post, False)
        lab = np.asarray(r.masks)
        labels, first = np.unique(lab.ravel(), return_index=True)
        if labels.size and labels[0] == 0:
            labels, first = labels[1:], first[1:]
        if labels.size and not np.array_equal(labels, np.arange(1, labels.size + 1)):
            raise RuntimeError("post-processing returned labels that are not 1..N")  # relabel rule broken
        inner = tuple(slice(a - ra, b - ra) for (a, b), (ra, _) in zip(core, region))
        if opts.get("stitch") == "match":
            _provisional(res, lab, inner, grid.flat(idx), out, core, done)
            res.seconds = time.perf_counter() - t0
            if done is not None:
                from ..io import atomic_write

                atomic_write(Path(done) / f"{grid.flat(idx)}.json", lambda f: json.dump(res.to_json(), f), text=True)
            return res
        sizes = [b - a for a, b in region]
        anchor = np.stack(np.unravel_index(first, sizes)) + np.array([a for a, _ in region])[:, None]
        ids = np.zeros(labels.size + 1, np.uint64)
        ids[1:] = np.ravel_multi_index(tuple(anchor), grid.shape).astype(np.uint64) + np.uint64(1)
        on_core = np.unique(lab[inner])
        on_core = on_core[on_core > 0]
        cut = _cut_objects(lab, region, grid.shape, on_core)
        if cut.size:
            where = [int(v) for v in np.unravel_index(int(ids[cut[0]] - 1), grid.shape)]
            msg = (f"block {list(idx)}: {cut.size} object(s) touching the core reach the outer edge of the "
                   f"{list(grid.halo)} px halo (the first at {where}): larger than the halo allows")
            if opts["on_edge"] == "raise":
                raise HaloError(msg + "; pass a larger halo= (or on_edge='keep' to keep them as this block "
                                      "computed them)")
            log.warning("%s; kept as computed (on_edge='keep')", msg)
            res.kept_cut = int(cut.size)
        core_ids = ids[lab[inner]]
        res.owned = _owned_stats(lab, region, core, ids, first)
        if out is None:
            res.labels = core_ids
        else:
            out[tuple(slice(a, b) for a, b in core)] = core_ids
    res.seconds = time.perf_counter() - t0
    if done is not None and not res.skipped:  # a skipped block is cheap to skip again
        from ..io import atomic_write

        atomic_write(Path(done) / f"{grid.flat(idx)}.json", lambda f: json.dump(res.to_json(), f), text=True)
    return res


def _provisional(res: BlockResult, lab: np.ndarray, inner: Tuple[slice, ...], flat: int, out: Any,
                 core: Sequence[Tuple[int, int]], done: Optional[str]) -> None:
    """``stitch="match"``: ids ``block << 32 | label`` (unique with no communication) on the whole region; the core
    written (or returned), the region kept for matching with the neighbours (returned, or saved in ``done``)."""
    n = int(lab.max())
    if n >= 1 << 32:
        raise ValueError(f"a block holds {n} objects, more than 2**32: use smaller blocks")
    pid = np.zeros(n + 1, np.uint64)
    pid[1:] = (np.uint64(flat) << np.uint64(32)) | np.arange(1, n + 1, dtype=np.uint64)
    reg = pid[lab]
    core_ids = reg[inner]
    u = np.unique(core_ids)
    res.owned = {"id": [int(v) for v in u[u > 0]]}
    if out is None:
        res.labels = core_ids
        res.region = reg
    else:
        out[tuple(slice(a, b) for a, b in core)] = core_ids
        from ..io import atomic_write

        atomic_write(Path(done) / f"{flat}.region.npy", lambda f: np.save(f, reg))


def mutual_matches(a: np.ndarray, b: np.ndarray, iou: float) -> List[Tuple[int, int]]:
    """Pairs ``(label of a, label of b)`` of two label images of the same box that are each other's best match by
    IoU (over the box) with IoU >= ``iou``."""
    fa, fb = a.ravel(), b.ravel()
    both = (fa > 0) & (fb > 0)
    if not both.any():
        return []
    ua, ca = np.unique(fa[fa > 0], return_counts=True)
    ub, cb = np.unique(fb[fb > 0], return_counts=True)
    pairs, inter = np.unique(np.stack([fa[both], fb[both]]), axis=1, return_counts=True)
    sa = ca[np.searchsorted(ua, pairs[0])]
    sb = cb[np.searchsorted(ub, pairs[1])]
    score = inter / (sa + sb - inter)
    order = np.argsort(-score, kind="stable")
    best_a: Dict[int, int] = {}
    best_b: Dict[int, int] = {}
    for k in order:
        best_a.setdefault(int(pairs[0, k]), int(k))
        best_b.setdefault(int(pairs[1, k]), int(k))
    return [(int(pairs[0, k]), int(pairs[1, k])) for k in best_a.values()
            if best_b.get(int(pairs[1, k])) == k and score[k] >= iou]


def _match_mapping(grid: BlockGrid, results: Mapping[int, BlockResult], region_of: Any,
                   iou: float) -> Tuple[np.ndarray, np.ndarray]:
    """``(keys, values)``: every provisional id on a core (sorted) and its final id 1..N, after union-find over the
    mutual IoU matches of every pair of neighbouring blocks (all 3^d - 1 neighbours) in the overlap of their
    regions."""
    parent: Dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for idx in grid.indices():
        k = grid.flat(idx)
        ra = grid.region(idx)
        for d in itertools.product(*([-1, 0, 1],) * len(idx)):
            nb = tuple(i + e for i, e in zip(idx, d))
            if not all(0 <= a < n for a, n in zip(nb, grid.counts)) or grid.flat(nb) <= k:
                continue
            rb = grid.region(nb)
            box = [(max(a0, b0), min(a1, b1)) for (a0, a1), (b0, b1) in zip(ra, rb)]
            if any(hi <= lo for lo, hi in box):
                continue
            A, B = region_of(k), region_of(grid.flat(nb))
            if A is None or B is None:
                continue
            sa = tuple(slice(lo - r0, hi - r0) for (lo, hi), (r0, _) in zip(box, ra))
            sb = tuple(slice(lo - r0, hi - r0) for (lo, hi), (r0, _) in zip(box, rb))
            for x, y in mutual_matches(A[sa], B[sb], iou):
                rx, ry = find(x), find(y)
                if rx != ry:
                    parent[max(rx, ry)] = min(rx, ry)
    keys = np.unique(np.concatenate([np.asarray(r.owned.get("id", []), np.uint64) for r in results.values()]
                                    + [np.zeros(0, np.uint64)]))
    roots = np.array([find(int(v)) for v in keys], np.uint64)
    _, final = np.unique(roots, return_inverse=True)
    return keys, final.astype(np.uint64) + np.uint64(1)


def _map_ids(ids: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(ids.shape, np.uint64)
    nz = ids > 0
    if nz.any():
        out[nz] = values[np.searchsorted(keys, ids[nz])]
    return out


def _map_block(idx: Tuple[int, ...], grid: BlockGrid, out: Any, keys: np.ndarray, values: np.ndarray,
               done: Optional[str]) -> None:
    if done is not None and (Path(done) / f"{grid.flat(idx)}.compact").exists():
        return
    sl = tuple(slice(a, b) for a, b in grid.core(idx))
    out[sl] = _map_ids(np.asarray(out[sl]), keys, values)
    if done is not None:
        (Path(done) / f"{grid.flat(idx)}.compact").touch()


def _cut_objects(lab: np.ndarray, region: Sequence[Tuple[int, int]], shape: Sequence[int],
                 on_core: np.ndarray) -> np.ndarray:
    """Labels of ``on_core`` on an outer face of the region that is not an edge of the image."""
    faces = []
    for d, ((a, b), s) in enumerate(zip(region, shape)):
        if a > 0:
            faces.append(np.take(lab, 0, axis=d).ravel())
        if b < s:
            faces.append(np.take(lab, lab.shape[d] - 1, axis=d).ravel())
    if not faces or on_core.size == 0:
        return np.zeros(0, np.int64)
    return np.intersect1d(np.concatenate(faces), on_core)


def _has_foreground(fg: Any, shape: Sequence[int], region: Sequence[Tuple[int, int]]) -> bool:
    """Whether the low-resolution mask ``fg`` (any shape, same number of axes) has a True pixel over ``region``
    of the full-resolution image of ``shape``."""
    f = np.asarray(fg)
    sl = []
    for (a, b), s, n in zip(region, shape, f.shape):
        sl.append(slice(int(a * n // s), max(int(a * n // s) + 1, int(-(-b * n // s)))))
    return bool(f[tuple(sl)].any())


# ---- compaction --------------------------------------------------------------------------------------------

def _compact_table(grid: BlockGrid, results: Mapping[int, BlockResult]) -> Tuple[np.ndarray, Dict[int, np.ndarray]]:
    """``(offsets, owned)``: per flat block index the number of objects owned by the blocks before it (C order)
    and its sorted owned ids."""
    n = int(np.prod(grid.counts))
    counts = np.zeros(n, np.int64)
    owned: Dict[int, np.ndarray] = {}
    for k, r in results.items():
        ids = np.sort(np.asarray(r.owned.get("id", []), np.uint64))
        owned[k] = ids
        counts[k] = ids.size
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return offsets, owned


def compact_ids(ids: np.ndarray, grid: BlockGrid, offsets: np.ndarray, owned: Mapping[int, np.ndarray]) -> np.ndarray:
    """Compact ids (1..N) of anchor ids ``ids`` (any shape, uint64, 0 = background): ``offsets[owner] + rank + 1``
    with the owner the block whose core holds the anchor."""
    u, inv = np.unique(ids, return_inverse=True)
    new = np.zeros(u.size, np.uint64)
    nz = u > 0
    if nz.any():
        anchors = np.stack(np.unravel_index((u[nz] - np.uint64(1)).astype(np.int64), grid.shape))
        own = grid.owner(anchors)
        vals = np.zeros(int(nz.sum()), np.uint64)
        for k in np.unique(own):
            sel = own == k
            lst = owned.get(int(k))
            if lst is None or lst.size == 0:
                raise RuntimeError(f"block {int(k)} owns no objects but its ids appear in a neighbour")
            rank = np.searchsorted(lst, u[nz][sel])
            if np.any(rank >= lst.size) or np.any(lst[np.minimum(rank, lst.size - 1)] != u[nz][sel]):
                raise RuntimeError(f"an object id is missing from its owner block {int(k)}'s list "
                                   "(blocks disagree: was the halo too small with on_edge='keep'?)")
            vals[sel] = np.uint64(offsets[int(k)]) + rank.astype(np.uint64) + np.uint64(1)
        new[nz] = vals
    return new[inv].reshape(ids.shape)


def _compact_block(idx: Tuple[int, ...], grid: BlockGrid, out: Any, offsets: np.ndarray,
                   owned: Mapping[int, np.ndarray], done: Optional[str]) -> None:
    if done is not None and (Path(done) / f"{grid.flat(idx)}.compact").exists():
        return
    sl = tuple(slice(a, b) for a, b in grid.core(idx))
    out[sl] = compact_ids(np.asarray(out[sl]), grid, offsets, owned)
    if done is not None:
        (Path(done) / f"{grid.flat(idx)}.compact").touch()


# ---- the public entry ------------------------------------------------------------------------------------


def _as_array(image: Any) -> Any:
    if isinstance(image, (str, os.PathLike)):
        import zarr

        p = Path(image)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        try:
            return zarr.open_array(str(p), mode="r")
        except Exception as e:  # noqa: BLE001 - zarr raises several kinds
            raise ValueError(f"{p}: not a zarr array ({e}); for an OME-Zarr image use "
                             "fastpose.distributed.segment_zarr") from None
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        raise TypeError(f"image must be an array (NumPy, dask, zarr) or a zarr path, got {type(image).__name__}")
    return image


def _open_out(out: Any, shape: Tuple[int, ...], chunks: Tuple[int, ...], overwrite: bool, token: str) -> Tuple[Any, str]:
    """The output array (created, or reopened to resume) and its done folder."""
    import zarr

    if isinstance(out, (str, os.PathLike)):
        p = Path(out)
        if p.exists():
            arr = zarr.open_array(str(p), mode="r+")
        else:
            arr = zarr.create_array(str(p), shape=shape, chunks=chunks, dtype="uint64", fill_value=0)
    else:
        arr = out
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(arr.shape)}, the image's spatial shape is {shape}")
    if np.dtype(arr.dtype) != np.uint64:
        raise ValueError(f"out must be a uint64 array (object ids), got {arr.dtype}")
    if tuple(arr.chunks) != tuple(chunks):
        raise ValueError(f"out has chunks {tuple(arr.chunks)}; they must equal the blocks {chunks} (one writer per "
                         "chunk)")
    root = getattr(arr.store, "root", None)
    if root is None:
        raise ValueError("out must be a zarr array on a local folder (its blocks are recorded beside the chunks)")
    here = Path(str(root)) / str(arr.path)
    done = here / DONE_DIR
    attrs = dict(arr.attrs.get("fastpose", {}) or {})
    if attrs.get("complete"):
        if not overwrite:
            raise FileExistsError(f"{here}: already holds a finished segmentation; pass overwrite=True to redo it")
        shutil.rmtree(done, ignore_errors=True)
        attrs = {}
        arr[...] = 0
    if done.is_dir() and attrs.get("token") not in (None, token):
        if not overwrite:
            raise ValueError(f"{here}: an unfinished run with other settings wrote here; pass overwrite=True to "
                             "start again")
        shutil.rmtree(done)
    done.mkdir(parents=True, exist_ok=True)
    arr.attrs["fastpose"] = {"token": token, "complete": False}
    return arr, str(done)


def segment_blocks(image: Any, model: Any = "nuclei", *, block: Union[int, Sequence[int], None] = None,
                   halo: Union[int, Sequence[int], None] = None, client: Any = None, out: Any = None,
                   channel_axis: Optional[int] = None, z_axis: Optional[int] = None,
                   channels: Optional[Sequence[int]] = None, augment: bool = False, tile_overlap: float = 0.1,
                   normalize: bool = True, stats: Any = None, invert: bool = False, flow_threshold: float = 0.4,
                   cellprob_threshold: float = 0.0, min_size: int = 15, niter: Optional[int] = None,
                   max_size_fraction: float = 0.4, foreground: Any = None, on_edge: str = "raise",
                   compact: bool = True, stitch: str = "exact", match_iou: float = 0.5, overwrite: bool = False,
                   table: Any = None, device: str = "auto",
                   backend: str = "auto", batch_size: int = 8, progress: bool = True) -> Any:
    """Segment a large 2D image or 3D volume block by block, the labels equal to a whole-image run (see the
    module docstring for how).

    Parameters
    ----------
    image : NumPy, dask or zarr array, or the path of a zarr array
        Spatial axes Y, X (2D) or, with ``z_axis``, Z, Y, X (3D, Cellpose's ``do_3D`` from 2D slices); an
        optional ``channel_axis``.
    model : str, path, torch.nn.Module or Segmenter
        A bundled name, model file or network (with its spec); any family that runs through the generic tiles
        (Cellpose, panoptic; not Cellulus).  A Segmenter only without a client (workers load the model
        themselves, once each).  The image is taken at the network's scale (no diameter): resize
        it first (or pick an OME-Zarr level) so cells are about the model's ``diam_mean``.
    block : int or per-axis ints
        Core size per axis (default 1024 in 2D, 256 in 3D): each block writes exactly its core.
    halo : int or per-axis ints
        Pixels of context per side (default :func:`default_halo` of the model's diameter): at least the
        largest object, and more for crowded images (see the module docstring).
    client : dask.distributed.Client, optional
        Run the blocks as tasks on it (threads or processes); None: one after the other here.
    out : zarr array or path, optional
        uint64 array with chunks equal to ``block`` to write into (a path is created when absent): resumable,
        and the result; None: a NumPy array is returned (compact ids in the smallest label dtype).
    channel_axis, z_axis, channels, augment, tile_overlap, invert
        As for :func:`fastpose.segment` (``tile_overlap``: of the anchored tile grid).
    normalize, stats
        Percentile normalisation with the model's percentiles (True), from every pixel of images up to
        :data:`STATS_PIXELS` per channel, else a regular subsample; ``stats``: an array to take them from instead
        (a low-resolution level with the same axes).  False: no normalisation.
    flow_threshold, cellprob_threshold, min_size, niter, max_size_fraction
        Mask recovery settings (:func:`fastpose.core.compute_masks`); ``max_size_fraction`` of the whole image.
    foreground : array, optional
        Low-resolution boolean mask (same spatial axes, any size): blocks whose region has no True pixel are
        skipped (left 0).
    on_edge : "raise" or "keep"
        An object touching a core that reaches its halo's outer edge: :class:`HaloError`, or kept as the block
        computed it (logged; its pieces in neighbouring blocks may then disagree).
    compact : bool
        Renumber the anchor ids to 1..N (a second, local pass).
    stitch, match_iou : "exact" or "match", float
        ``"exact"`` (default): ownership, as above.  ``"match"``: the fallback for models whose blocks cannot
        agree exactly (any resizing, a network without fixed tiles): each block labels its region with ids
        ``block << 32 | label`` and writes its core; objects of neighbouring blocks (all 3^d - 1 of them) that are
        each other's best match by IoU >= ``match_iou`` in the overlap of their regions are joined (union-find),
        and the ids are renumbered 1..N (``compact`` implied; no table).  Needs a halo.
    overwrite : bool
        Redo a finished ``out`` (or one left by a run with other settings).
    table : path, optional
        Write the per-object table (id, area, centroid, bounding box) there as CSV.
    device, backend, batch_size, progress
        Where the network runs; its backend; tiles per network call; a progress bar.

    Returns
    -------
    NumPy array of labels (``out=None``) or the zarr array ``out``.
    """
    from ..inference import Segmenter
    from ..methods.cellpose import default_niter

    arr = _as_array(image)
    nd = len(arr.shape)
    augment = checks.boolean(augment, "augment")
    tile_overlap = checks.number(tile_overlap, "tile_overlap", lo=0.0, hi=0.5)
    flow_threshold = checks.number(flow_threshold, "flow_threshold", lo=0.0, none_ok=True)
    cellprob_threshold = checks.number(cellprob_threshold, "cellprob_threshold")
    min_size = checks.integer(min_size, "min_size", lo=0)
    max_size_fraction = checks.number(max_size_fraction, "max_size_fraction", lo=0.0)
    on_edge = checks.choice(on_edge, "on_edge", ("raise", "keep"))
    stitch = checks.choice(stitch, "stitch", ("exact", "match"))
    match_iou = checks.number(match_iou, "match_iou", lo=0.0, lo_open=True, hi=1.0)
    compact = checks.boolean(compact, "compact")
    channel_axis = checks.axis(channel_axis, "channel_axis")
    z_axis = checks.axis(z_axis, "z_axis")
    for name, a in (("channel_axis", channel_axis), ("z_axis", z_axis)):
        if a is not None and not -nd <= a < nd:
            raise ValueError(f"{name}={a} is out of range for an array of {nd} axes")
    if channel_axis is not None and z_axis is not None and channel_axis % nd == z_axis % nd:
        raise ValueError("channel_axis and z_axis must differ")
    spatial_nd = nd - (channel_axis is not None)
    if spatial_nd != (3 if z_axis is not None else 2):
        raise ValueError(f"image of shape {tuple(arr.shape)}: expected Y, X (2D) or Z, Y, X (with z_axis) spatial "
                         f"axes plus an optional channel_axis")

    if client is not None and isinstance(model, Segmenter):
        raise ValueError("with a client, pass the model as a bundled name, a file or a network (each worker loads "
                         "it once), not a Segmenter")
    seg = model if isinstance(model, Segmenter) else cached_segmenter(model, device, backend, batch_size)
    if seg.family.run_net is not None:
        raise ValueError(f"a {seg.family.name} model runs its network itself, not through the generic tiles: "
                         "blockwise segmentation needs a model that does (Cellpose or panoptic)")
    n_in = int(arr.shape[channel_axis]) if channel_axis is not None else 1
    picks = _picks(n_in, channels, seg.nchan)
    src = BlockSource(arr, channel_axis, z_axis, picks, None, False)
    shape = src.shape
    if min(shape) < 1:
        raise ValueError(f"image of spatial shape {shape} is empty")
    sd = len(shape)
    blk = checks.integers([block] * sd if isinstance(block, int) else (block or [1024 if sd == 2 else 256] * sd),
                          "block", lo=1, min_len=sd)
    if len(blk) != sd:
        raise ValueError(f"block must have one size per spatial axis ({sd}), got {blk}")
    h = default_halo(seg.diam_mean) if halo is None else halo
    hal = checks.integers([h] * sd if isinstance(h, int) else h, "halo", lo=0, min_len=sd)
    if len(hal) != sd:
        raise ValueError(f"halo must have one size per spatial axis ({sd}), got {hal}")
    grid = BlockGrid(tuple(shape), tuple(blk), tuple(hal))
    norm = seg.spec.normalize
    if checks.boolean(normalize, "normalize"):
        t0 = time.perf_counter()
        src.ranges = _ranges(src, float(norm["lower"]), float(norm["upper"]), stats)
        src.invert = bool(invert or norm.get("invert", False))
        log.info("normalisation statistics in %.1f s: %s", time.perf_counter() - t0,
                 [(float(a), float(b)) for a, b, _ in src.ranges])
    if niter is None:
        niter = default_niter(1.0, shape)
    niter = checks.integer(niter, "niter", lo=1, hi=checks.LIMITS["niter"])
    if foreground is not None and np.ndim(foreground) != sd:
        raise ValueError(f"foreground must have the image's {sd} spatial axes, got shape {np.shape(foreground)}")
    if stitch == "match" and (min(hal) == 0 or table is not None):
        raise ValueError("stitch='match' needs a halo > 0 (the overlaps it matches in) and writes no table")
    opts = {"stitch": stitch, "device": device, "backend": backend, "batch_size": int(batch_size), "augment": augment,
            "tile_overlap": float(tile_overlap), "max_size_fraction": float(max_size_fraction), "on_edge": on_edge,
            "post": {"flow_threshold": flow_threshold, "cellprob_threshold": cellprob_threshold,
                     "min_size": min_size, "niter": niter}}
    token = json.dumps({"shape": shape, "block": blk, "halo": hal, "opts": opts,
                        "ranges": None if src.ranges is None else [[float(a), float(b)] for a, b, _ in src.ranges],
                        "model": str(model) if not isinstance(model, torch.nn.Module) else type(model).__name__},
                       sort_keys=True, default=str)
    zout, done = (None, None) if out is None else _open_out(out, shape, tuple(blk), overwrite, token)
    results: Dict[int, BlockResult] = {}
    todo = []
    for idx in grid.indices():
        f = None if done is None else Path(done) / f"{grid.flat(idx)}.json"
        if f is not None and f.is_file():
            results[grid.flat(idx)] = BlockResult.from_json(json.loads(f.read_text()))
        else:
            todo.append(idx)
    if results:
        log.info("resuming: %d of %d blocks already written", len(results), len(results) + len(todo))
    model_ref = seg if client is None else model
    t_all = time.perf_counter()
    for r in _run_all(todo, src, grid, model_ref, opts, zout, done, foreground, client, progress):
        results[grid.flat(r.index)] = r
    if stitch == "match":
        return _finish_match(grid, results, zout, done, client, match_iou, token)
    n_cut = sum(r.kept_cut for r in results.values())
    offsets, owned = _compact_table(grid, results)
    n_obj = int(sum(v.size for v in owned.values()))
    log.info("%d block(s), %d object(s) in %.1f s%s", len(results), n_obj, time.perf_counter() - t_all,
             f"; {n_cut} kept although they reach a halo's edge" if n_cut else "")
    if table is not None:
        _write_table(table, grid, results, offsets, owned, compact)
    if zout is None:
        lab = np.zeros(shape, np.uint64)
        for k, r in results.items():
            idx = np.unravel_index(k, grid.counts)
            lab[tuple(slice(a, b) for a, b in grid.core(idx))] = r.labels
        if not compact:
            return lab
        from ..labels import labels_dtype

        return compact_ids(lab, grid, offsets, owned).astype(labels_dtype(n_obj))
    if compact:
        _run_compaction(grid, zout, offsets, owned, done, client)
    zout.attrs["fastpose"] = {"token": token, "complete": True, "objects": n_obj, "compact": compact}
    shutil.rmtree(done, ignore_errors=True)
    return zout


def _finish_match(grid: BlockGrid, results: Mapping[int, BlockResult], zout: Any, done: Optional[str], client: Any,
                  iou: float, token: str) -> Any:
    """``stitch="match"``: join the objects of neighbouring blocks, renumber, write (or return) the labels."""
    from ..labels import labels_dtype

    def region_of(k: int) -> Optional[np.ndarray]:
        if zout is None:
            return results[k].region
        f = Path(done) / f"{k}.region.npy"
        return np.load(f) if f.is_file() else None

    t0 = time.perf_counter()
    keys, values = _match_mapping(grid, results, region_of, iou)
    n = int(values.max()) if values.size else 0
    log.info("matched the blocks' overlaps in %.1f s: %d piece(s) -> %d object(s)", time.perf_counter() - t0,
             keys.size, n)
    if zout is None:
        lab = np.zeros(grid.shape, np.uint64)
        for k, r in results.items():
            idx = np.unravel_index(k, grid.counts)
            lab[tuple(slice(a, b) for a, b in grid.core(idx))] = r.labels
        return _map_ids(lab, keys, values).astype(labels_dtype(n))
    if client is None:
        for idx in grid.indices():
            _map_block(idx, grid, zout, keys, values, done)
    else:
        kf = client.scatter(keys, broadcast=True, hash=False)
        vf = client.scatter(values, broadcast=True, hash=False)
        client.gather([client.submit(_map_block, idx, grid, zout, kf, vf, done, pure=False,
                                     key=f"fastpose-map-{grid.flat(idx)}-{time.time_ns()}") for idx in grid.indices()])
    zout.attrs["fastpose"] = {"token": token, "complete": True, "objects": n, "compact": True, "stitch": "match"}
    shutil.rmtree(done, ignore_errors=True)
    return zout


def _run_all(todo: Sequence[Tuple[int, ...]], src: BlockSource, grid: BlockGrid, model: Any,
             opts: Mapping[str, Any], zout: Any, done: Optional[str], foreground: Any, client: Any,
             progress: bool) -> Iterable[BlockResult]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="blocks", unit="block", disable=not progress or not todo, dynamic_ncols=True)
    try:
        if client is None:
            for idx in todo:
                yield run_block(idx, src, grid, model, opts, zout, done, foreground)
                bar.update(1)
            return
        from dask.distributed import as_completed

        src_f = client.scatter(src, broadcast=True, hash=False)
        model_f = client.scatter(model, broadcast=True, hash=False) if isinstance(model, torch.nn.Module) else model
        fg_f = None if foreground is None else client.scatter(np.asarray(foreground), broadcast=True, hash=False)
        futs = [client.submit(run_block, idx, src_f, grid, model_f, dict(opts), zout, done, fg_f, pure=False,
                              key=f"fastpose-block-{'-'.join(map(str, idx))}-{time.time_ns()}") for idx in todo]
        try:
            for fut in as_completed(futs):
                yield fut.result()
                bar.update(1)
        except BaseException:
            for f in futs:
                f.cancel()
            raise
    finally:
        bar.close()


def _run_compaction(grid: BlockGrid, zout: Any, offsets: np.ndarray, owned: Mapping[int, np.ndarray],
                    done: Optional[str], client: Any) -> None:
    idxs = grid.indices()
    if client is None:
        for idx in idxs:
            _compact_block(idx, grid, zout, offsets, owned, done)
        return
    off_f = client.scatter(offsets, broadcast=True, hash=False)
    futs = []
    for idx in idxs:
        k = grid.flat(idx)
        near = {}
        for d in itertools.product(*([-1, 0, 1],) * len(idx)):
            j = tuple(i + e for i, e in zip(idx, d))
            if all(0 <= a < n for a, n in zip(j, grid.counts)):
                near[grid.flat(j)] = owned.get(grid.flat(j), np.zeros(0, np.uint64))
        futs.append(client.submit(_compact_block, idx, grid, zout, off_f, near, done, pure=False,
                                  key=f"fastpose-compact-{k}-{time.time_ns()}"))
    client.gather(futs)


def _write_table(path: Any, grid: BlockGrid, results: Mapping[int, BlockResult], offsets: np.ndarray,
                 owned: Mapping[int, np.ndarray], compact: bool) -> None:
    import csv
    import io as _io

    from ..io import atomic_write

    axes = "zyx"[-len(grid.shape):]
    rows = []
    for k in sorted(results):
        o = results[k].owned
        ids = np.asarray(o.get("id", []), np.uint64)
        lab = compact_ids(ids, grid, offsets, owned) if compact and ids.size else ids
        for j in range(ids.size):
            rows.append([int(lab[j]), int(ids[j]), o["area"][j], *[round(c, 3) for c in o["centroid"][j]],
                         *o["bbox"][j]])
    rows.sort(key=lambda r: r[0])
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(["label", "anchor_id", "area", *[f"centroid_{a}" for a in axes], *[f"bbox_min_{a}" for a in axes],
                *[f"bbox_max_{a}" for a in axes]])
    w.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue()), text=True)
