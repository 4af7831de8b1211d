"""Plain NumPy/SciPy references of the native ops, for tests and benchmarks (not for use in pipelines).

Each function states the documented semantics of the native op of the same name in :mod:`fastpose.core` in
the most direct form, with none of its speed: loops over masks and pixels, float32 where the native code's
bit pattern matters, scipy where Cellpose uses it.  The test suite compares every native op with its
reference (``tests/test_*.py``) and ``fastpose-bench`` may time them side by side; they are slow and meant for
small inputs (a few hundred pixels square).

* :func:`masks_to_flows`, :func:`flow_errors`, :func:`remove_bad_flow_masks`: Cellpose 3's
  ``masks_to_flows_cpu`` / ``_extend_centers`` in float32, and ``metrics.flow_error``;
* :func:`follow_flows`: the Euler stepping rule with bilinear interpolation;
* :func:`get_masks`: histogram-peak clustering of the tracked end points;
* :func:`fill_holes_and_remove_small_masks`: small-mask removal and per-plane hole filling with scipy;
* :func:`compute_masks`: the whole chain, composed of the above in the native order;
* :func:`mean_shift`: flat-kernel mean shift by brute force (every window over all fitted points), with the
  native op's float32 distances and double window sums;
* :func:`make_tiles`, :func:`unaugment_tiles`, :func:`taper_mask`, :func:`average_tiles`,
  :func:`blend_tiles`: a NumPy port of Cellpose 3's ``transforms`` tiling functions, with Cellpose's
  signatures and return values (not fastpose's :class:`~fastpose.core.TileGrid`).

NumPy arrays in and out; nothing here calls the compiled core.
"""

from __future__ import annotations

import itertools
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "masks_to_flows", "flow_errors", "remove_bad_flow_masks", "follow_flows", "get_masks",
    "fill_holes_and_remove_small_masks", "compute_masks", "mean_shift",
    "make_tiles", "unaugment_tiles", "taper_mask", "average_tiles", "blend_tiles",
]

F32 = np.float32


# ------------------------------------------------------------------------------------------------
# Flows: Cellpose 3 masks_to_flows_cpu / _extend_centers, in float32 with the summation order of the
# contract (neighbours in raster order), 2D and 3D.
# ------------------------------------------------------------------------------------------------

def masks_to_flows(masks: np.ndarray, niter: Optional[int] = None) -> np.ndarray:
    """Unit flows (ndim, *shape) float32: the gradient of heat diffused from each mask's central pixel.

    ``niter`` defaults to twice the sum of the mask's bounding-box extents (plus 2 per axis), per mask.
    """
    masks = np.asarray(masks)
    nd = masks.ndim
    mu = np.zeros((nd,) + masks.shape, F32)
    offsets = list(itertools.product((-1, 0, 1), repeat=nd))
    for i, si in enumerate(ndi.find_objects(masks)):
        if si is None:
            continue
        ext = [s.stop - s.start + 2 for s in si]
        coords = [c.astype(np.int64) + 1 for c in np.nonzero(masks[si] == i + 1)]
        med = [c.mean() for c in coords]
        imin = sum((c - m) ** 2 for c, m in zip(coords, med)).argmin()
        src = tuple(c[imin] for c in coords)
        n_iter = 2 * sum(ext) if not niter else niter
        T = np.zeros(ext, F32)
        inside = tuple(coords)
        for _ in range(n_iter):
            T[src] += F32(1)
            s = np.zeros(len(coords[0]), F32)
            for o in offsets:
                s = s + T[tuple(c + d for c, d in zip(coords, o))]
            T[inside] = s / F32(9 if nd == 2 else 27)
        grad = []
        for a in range(nd):
            up, dn = list(coords), list(coords)
            up[a] = coords[a] + 1
            dn[a] = coords[a] - 1
            grad.append(T[tuple(up)] - T[tuple(dn)])
        n2 = grad[0] * grad[0]
        for a in range(1, nd):
            n2 = n2 + grad[a] * grad[a]
        norm = np.sqrt(n2)
        pos = tuple(c - 1 + s.start for c, s in zip(coords, si))
        with np.errstate(invalid="ignore", divide="ignore"):
            for a in range(nd):
                mu[(a,) + pos] = np.where(norm > 0, grad[a] / norm, F32(0))
    return mu


def flow_errors(masks: np.ndarray, dP: np.ndarray) -> np.ndarray:
    """Cellpose ``metrics.flow_error`` with the reference flows: per label 1..max, the mean over the mask of
    the squared difference between its flows and ``dP / 5`` (float64; 0 for absent labels)."""
    masks = np.asarray(masks)
    mu = masks_to_flows(masks).astype(np.float64)
    n = int(masks.max()) if masks.size else 0
    err = np.zeros(n)
    for c in range(mu.shape[0]):
        err += np.nan_to_num(ndi.mean((mu[c] - np.asarray(dP)[c] / 5.0) ** 2, masks, index=np.arange(1, n + 1)))
    return err


def remove_bad_flow_masks(masks: np.ndarray, dP: np.ndarray, threshold: float = 0.4) -> np.ndarray:
    """``masks`` with every mask whose flow error exceeds ``threshold`` set to 0 (not renumbered)."""
    masks = np.asarray(masks)
    bad = np.nonzero(flow_errors(masks, dP) > threshold)[0] + 1
    return np.where(np.isin(masks, bad), 0, masks).astype(masks.dtype)


# ------------------------------------------------------------------------------------------------
# Tracking
# ------------------------------------------------------------------------------------------------

def follow_flows(dP: np.ndarray, mask: np.ndarray, niter: int = 200) -> np.ndarray:
    """Tracked positions (ndim, *shape) float32 after ``niter`` Euler steps of ``dP / 5`` from every pixel of
    ``mask`` (others keep their own coordinates).

    A straightforward float32 port of the stepping rule, with the native code's operation order: flows
    outside the mask read as 0, bilinear (trilinear) interpolation with the innermost axis first, positions
    clamped to the image, and a pixel whose interpolated flow is exactly 0 stays where it is.
    """
    mask = np.asarray(mask)
    shape = mask.shape
    nd = len(shape)
    ext = np.array(shape, np.int64)[:, None]
    grid = np.indices(shape).astype(F32)
    out = grid.copy()
    sel = np.nonzero(mask)
    p = np.stack([grid[a][sel] for a in range(nd)])  # (nd, K)
    flows = np.where(mask[None] != 0, dP, F32(0)).astype(F32)
    one = F32(1)

    def lerp(a, b, w):
        return (one - w) * a + w * b

    for _ in range(niter):
        i0 = np.floor(p).astype(np.int64)
        i1 = np.minimum(i0 + 1, ext - 1)
        w = (p - i0.astype(F32)).astype(F32)
        corner = {}
        for bits in itertools.product((0, 1), repeat=nd):
            idx = tuple(np.where(bits[a], i1[a], i0[a]) for a in range(nd))
            corner[bits] = flows[(slice(None),) + idx]  # (nd, K)
        # innermost axis first (x), then y, then z
        vals = corner
        for a in reversed(range(nd)):
            vals = {k[:-1]: lerp(vals[k[:-1] + (0,)], vals[k[:-1] + (1,)], w[a])
                    for k in vals if k[-1] == 0}
        v = vals[()]
        moving = np.any(v != 0, axis=0)
        newp = np.clip(p + v / F32(5), F32(0), (ext - 1).astype(F32)).astype(F32)
        p = np.where(moving[None], newp, p)
    for a in range(nd):
        out[a][sel] = p[a]
    return out


# ------------------------------------------------------------------------------------------------
# Clustering
# ------------------------------------------------------------------------------------------------

def get_masks(pos: np.ndarray, mask: np.ndarray, max_size_fraction: float = 0.4) -> np.ndarray:
    """Labels (int64, 1..N in raster order of first pixel) from end points ``pos`` of the pixels of ``mask``.

    A direct port of the documented semantics: a histogram of the floored end points; seeds where the count
    exceeds 10 and equals the 5-wide maximum; each seed grown 5 times into its 3^nd neighbours with count > 2,
    in ascending order of count (the highest-count seed wins overlaps); pixels take the label of their end
    point's bin; masks over ``max_size_fraction`` of the image are dropped.
    """
    mask = np.asarray(mask)
    shape = mask.shape
    nd = len(shape)
    sel = np.nonzero(mask)
    bins = tuple(np.clip(np.floor(np.nan_to_num(pos[a][sel], nan=0.0)), 0, shape[a] - 1).astype(np.int64)
                 for a in range(nd))
    h = np.zeros(shape, np.int64)
    np.add.at(h, bins, 1)
    hmax = ndi.maximum_filter(h, size=5, mode="constant", cval=0)
    seeds = np.argwhere((h > 10) & (h >= hmax))  # raster order
    flat = np.ravel_multi_index(tuple(seeds.T), shape) if len(seeds) else np.zeros(0, np.int64)
    order = np.lexsort((flat, h[tuple(seeds.T)])) if len(seeds) else []
    M = np.zeros(shape, np.int64)
    offsets = [np.array(o) for o in itertools.product((-1, 0, 1), repeat=nd)]
    for r, k in enumerate(order):
        region = {tuple(seeds[k])}
        for _ in range(5):
            grown = set(region)
            for c in region:
                for o in offsets:
                    q = tuple(np.asarray(c) + o)
                    if all(0 <= q[a] < shape[a] for a in range(nd)) and h[q] > 2:
                        grown.add(q)
            region = grown
        for q in region:
            M[q] = r + 1  # ascending rank: the highest-count seed wins overlaps
    lab = np.zeros(shape, np.int64)
    lab[sel] = M[bins]
    ids, counts = np.unique(lab, return_counts=True)
    for i, c in zip(ids, counts):
        if i != 0 and c > max_size_fraction * lab.size:
            lab[lab == i] = 0
    flat_lab = lab.ravel()
    ids, first = np.unique(flat_lab, return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    out = np.zeros_like(flat_lab)
    for new, i in enumerate(ids[np.argsort(first)]):
        out[flat_lab == i] = new + 1
    return out.reshape(shape)


# ------------------------------------------------------------------------------------------------
# Clean-up
# ------------------------------------------------------------------------------------------------

def fill_holes_and_remove_small_masks(masks: np.ndarray, min_size: int = 15) -> np.ndarray:
    """Masks under ``min_size`` pixels removed, holes filled (per Z plane in 3D, the lowest label claiming a
    pixel first), labels renumbered 1..N in increasing order; int64."""
    m = np.asarray(masks).astype(np.int64)
    counts = np.bincount(m.ravel()) if m.size else np.zeros(1, np.int64)
    present = [lab for lab in range(1, len(counts)) if counts[lab] > 0]
    kept = [lab for lab in present if counts[lab] >= min_size]
    out = np.where(np.isin(m, kept), m, 0)
    claim = np.zeros_like(m)
    for lab in kept:  # ascending: the lowest label claims a pixel first
        sl = ndi.find_objects((m == lab).astype(np.int32))[0]
        msk = m[sl] == lab
        if msk.ndim == 3:
            filled = np.stack([ndi.binary_fill_holes(p) for p in msk])
        else:
            filled = ndi.binary_fill_holes(msk)
        sel = filled & ~msk & (out[sl] == 0) & (claim[sl] == 0)
        claim[sl][sel] = lab
    out = np.where((out == 0) & (claim > 0), claim, out)
    lut = np.zeros(max(len(counts), 1), np.int64)
    lut[kept] = np.arange(1, len(kept) + 1)
    return lut[out]


def compute_masks(dP: np.ndarray, cellprob: np.ndarray, niter: int = 200, cellprob_threshold: float = 0.0,
                  flow_threshold: float = 0.4, min_size: int = 15, max_size_fraction: float = 0.4,
                  flow_qc_3d: bool = False) -> np.ndarray:
    """The mask-recovery chain of :func:`fastpose.core.compute_masks`, composed of the references above:
    threshold -> :func:`follow_flows` -> :func:`get_masks` -> :func:`remove_bad_flow_masks` (2D, or 3D with
    ``flow_qc_3d``; skipped for ``flow_threshold <= 0``) -> :func:`fill_holes_and_remove_small_masks`."""
    cellprob = np.asarray(cellprob, F32)
    mask = cellprob > F32(cellprob_threshold)
    dP = np.asarray(dP, F32)
    lab = get_masks(follow_flows(dP, mask, niter), mask, max_size_fraction)
    if lab.max(initial=0) == 0:
        return lab
    if flow_threshold is not None and flow_threshold > 0 and (lab.ndim == 2 or flow_qc_3d):
        lab = remove_bad_flow_masks(lab, dP, flow_threshold)
    return fill_holes_and_remove_small_masks(lab, min_size)


# ------------------------------------------------------------------------------------------------
# Mean shift (scikit-learn's MeanShift with the native op's arithmetic), by brute force
# ------------------------------------------------------------------------------------------------

def _dist2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances of the rows of ``a`` to ``b`` (broadcast) in float32, summed in axis order."""
    t = (a - b).astype(F32)
    s = t[..., 0] * t[..., 0]
    for k in range(1, t.shape[-1]):
        s = s + t[..., k] * t[..., k]
    return s


def mean_shift(points: np.ndarray, bandwidth: float, seeds=None, min_bin_freq: int = 1, max_iter: int = 300,
               cluster_all: bool = False, fit_points: Optional[np.ndarray] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
    """(labels int64 (N,), centres float32 (K, D)) of :func:`fastpose.core.mean_shift`, by brute force.

    Fitted points ``X = points[fit_points]`` (all without it); seeds: ``"all"``/None every row of ``X``, ``"bin"``
    the bins ``round(X / bw)`` (float32) with at least ``min_bin_freq`` points at ``bin * bw`` (``X`` itself when
    every point has a bin of its own), or an array.  Each seed: window = rows of ``X`` with float32 squared
    distance <= bw^2, mean summed in float64 and rounded to float32, until the squared shift <= (1e-3 bw)^2 or
    ``max_iter + 1`` moves; a seed with an empty window is dropped.  Modes (identical ones once, with the largest
    window) sorted by (last window size, coordinates) descending; one within bw of a kept mode is dropped.
    Labels: the nearest centre (first on ties); -1 beyond bw unless ``cluster_all``.
    """
    pts = np.asarray(points, F32)
    X = pts if fit_points is None else pts[np.asarray(fit_points)]
    bw = F32(bandwidth)
    bw2 = F32(np.float64(bw) * np.float64(bw))
    stop2 = F32((1e-3 * np.float64(bw)) ** 2)
    if seeds is None or (isinstance(seeds, str) and seeds == "all"):
        S = X
    elif isinstance(seeds, str) and seeds == "bin":
        bins, counts = np.unique(np.rint(X / bw).astype(np.int64), axis=0, return_counts=True)
        bins = bins[counts >= min_bin_freq]
        S = X if len(bins) == len(X) else bins.astype(F32) * bw
    else:
        S = np.asarray(seeds, F32)
    modes, sizes = [], []
    for seed in S:
        m = np.array(seed, F32)
        size = 0
        it = 0
        while True:
            within = _dist2(X, m) <= bw2
            size = int(within.sum())
            if size == 0:
                break
            new = (X[within].astype(np.float64).sum(0) / size).astype(F32)
            shift2 = _dist2(new, m)
            m = new
            if shift2 <= stop2 or it >= max_iter:
                break
            it += 1
        if size:
            modes.append(m)
            sizes.append(size)
    best = {}
    for m, size in zip(modes, sizes):
        key = tuple(float(v) for v in m)
        best[key] = max(best.get(key, 0), size)
    order = sorted(best.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    kept: List[np.ndarray] = []
    for key, _ in order:
        c = np.array(key, F32)
        if not any(_dist2(c, k) <= bw2 for k in kept):
            kept.append(c)
    if not kept:
        raise ValueError("no fitted point lies within the bandwidth of any seed")
    centres = np.stack(kept).astype(F32)
    d2 = _dist2(pts[:, None, :], centres[None, :, :])
    labels = d2.argmin(1).astype(np.int64)
    if not cluster_all:
        labels[d2.min(1) > bw2] = -1
    return labels, centres


# ------------------------------------------------------------------------------------------------
# Tiling: NumPy port of cellpose.transforms (v3) make_tiles, unaugment_tiles, _taper_mask, average_tiles
# ------------------------------------------------------------------------------------------------

def make_tiles(imgi: np.ndarray, bsize: int = 224, augment: bool = False, tile_overlap: float = 0.1
               ) -> Tuple[np.ndarray, List[List[int]], List[List[int]], int, int]:
    """Cellpose 3's ``transforms.make_tiles`` on a (nchan, Ly, Lx) image.

    Returns ``(IMG [ny, nx, nchan, by, bx] float32, ysub, xsub, Ly, Lx)``; with ``augment`` the image is
    zero-padded to at least ``bsize`` and tiles overlap by half, flipped in a checkerboard of Y/X/both.
    """
    nchan, Ly, Lx = imgi.shape
    if augment:
        bsize = np.int32(bsize)
        if Ly < bsize:
            imgi = np.concatenate((imgi, np.zeros((nchan, bsize - Ly, Lx))), axis=1)
            Ly = bsize
        if Lx < bsize:
            imgi = np.concatenate((imgi, np.zeros((nchan, Ly, bsize - Lx))), axis=2)
        Ly, Lx = imgi.shape[-2:]
        ny = max(2, int(np.ceil(2. * Ly / bsize)))
        nx = max(2, int(np.ceil(2. * Lx / bsize)))
        ystart = np.linspace(0, Ly - bsize, ny).astype(int)
        xstart = np.linspace(0, Lx - bsize, nx).astype(int)
        ysub, xsub = [], []
        IMG = np.zeros((len(ystart), len(xstart), nchan, bsize, bsize), F32)
        for j in range(len(ystart)):
            for i in range(len(xstart)):
                ysub.append([ystart[j], ystart[j] + bsize])
                xsub.append([xstart[i], xstart[i] + bsize])
                IMG[j, i] = imgi[:, ysub[-1][0]:ysub[-1][1], xsub[-1][0]:xsub[-1][1]]
                if j % 2 == 0 and i % 2 == 1:
                    IMG[j, i] = IMG[j, i, :, ::-1, :]
                elif j % 2 == 1 and i % 2 == 0:
                    IMG[j, i] = IMG[j, i, :, :, ::-1]
                elif j % 2 == 1 and i % 2 == 1:
                    IMG[j, i] = IMG[j, i, :, ::-1, ::-1]
    else:
        tile_overlap = min(0.5, max(0.05, tile_overlap))
        bsizeY, bsizeX = np.int32(min(bsize, Ly)), np.int32(min(bsize, Lx))
        ny = 1 if Ly <= bsize else int(np.ceil((1. + 2 * tile_overlap) * Ly / bsize))
        nx = 1 if Lx <= bsize else int(np.ceil((1. + 2 * tile_overlap) * Lx / bsize))
        ystart = np.linspace(0, Ly - bsizeY, ny).astype(int)
        xstart = np.linspace(0, Lx - bsizeX, nx).astype(int)
        ysub, xsub = [], []
        IMG = np.zeros((len(ystart), len(xstart), nchan, bsizeY, bsizeX), F32)
        for j in range(len(ystart)):
            for i in range(len(xstart)):
                ysub.append([ystart[j], ystart[j] + bsizeY])
                xsub.append([xstart[i], xstart[i] + bsizeX])
                IMG[j, i] = imgi[:, ysub[-1][0]:ysub[-1][1], xsub[-1][0]:xsub[-1][1]]
    return IMG, ysub, xsub, Ly, Lx


def unaugment_tiles(y: np.ndarray) -> np.ndarray:
    """Cellpose 3's ``transforms.unaugment_tiles`` on [ny, nx, nchan, by, bx] network outputs (in place):
    undo the checkerboard flips and negate the flipped flow components (channel 0 for Y, 1 for X)."""
    for j in range(y.shape[0]):
        for i in range(y.shape[1]):
            if j % 2 == 0 and i % 2 == 1:
                y[j, i] = y[j, i, :, ::-1, :]
                y[j, i, 0] *= -1
            elif j % 2 == 1 and i % 2 == 0:
                y[j, i] = y[j, i, :, :, ::-1]
                y[j, i, 1] *= -1
            elif j % 2 == 1 and i % 2 == 1:
                y[j, i] = y[j, i, :, ::-1, ::-1]
                y[j, i, 0] *= -1
                y[j, i, 1] *= -1
    return y


def taper_mask(ly: int = 224, lx: int = 224, sig: float = 7.5) -> np.ndarray:
    """Cellpose 3's ``transforms._taper_mask``: a separable logistic window, float64 (ly, lx)."""
    bsize = max(224, max(ly, lx))
    xm = np.arange(bsize)
    xm = np.abs(xm - xm.mean())
    mask = 1 / (1 + np.exp((xm - (bsize / 2 - 20)) / sig))
    mask = mask * mask[:, np.newaxis]
    mask = mask[bsize // 2 - ly // 2:bsize // 2 + ly // 2 + ly % 2,
                bsize // 2 - lx // 2:bsize // 2 + lx // 2 + lx % 2]
    return mask


def average_tiles(y: np.ndarray, ysub: List[List[int]], xsub: List[List[int]], Ly: int, Lx: int) -> np.ndarray:
    """Cellpose 3's ``transforms.average_tiles``: taper-weighted average of [ntiles, nchan, by, bx] tiles."""
    Navg = np.zeros((Ly, Lx))
    yf = np.zeros((y.shape[1], Ly, Lx), F32)
    mask = taper_mask(ly=y.shape[-2], lx=y.shape[-1])
    for j in range(len(ysub)):
        yf[:, ysub[j][0]:ysub[j][1], xsub[j][0]:xsub[j][1]] += y[j] * mask
        Navg[ysub[j][0]:ysub[j][1], xsub[j][0]:xsub[j][1]] += mask
    yf /= Navg
    return yf


def blend_tiles(tiles: np.ndarray, ny: int, nx: int, augment: bool, ysub: List[List[int]], xsub: List[List[int]],
                Lyp: int, Lxp: int, Ly: int, Lx: int) -> np.ndarray:
    """Cellpose's path from [ny * nx, nchan, by, bx] tiles to an image: unaugment (flow channels 0/1), average
    over the padded (Lyp, Lxp) image, crop to (Ly, Lx)."""
    y = tiles.astype(F32).reshape(ny, nx, *tiles.shape[1:]).copy()
    if augment:
        y = unaugment_tiles(y)
    y = y.reshape(ny * nx, *tiles.shape[1:])
    return average_tiles(y, ysub, xsub, Lyp, Lxp)[:, :Ly, :Lx]
