"""Flat-kernel mean-shift clustering (scikit-learn's ``MeanShift``; Cellulus clusters its embeddings with it)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .. import _core, checks
from ._backend import (Placement, any_nonfinite, call, empty, finish, is_torch, labels_max, labels_min, placement,
                       prepare, ptr, torch_module)

__all__ = ["mean_shift"]

_SEED_MODES = {"bin": 0, "all": 1}  # the native SeedMode; 2: given seeds


def _dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def _points(x: Any, name: str, where: Placement, d: Optional[int] = None) -> Any:
    """``x`` as a contiguous float32 array of shape (count, D) on ``where``, with D = 2 or 3 (``d`` when given),
    at least one row, finite."""
    a = prepare(x, name, np.float32, where)
    shp = tuple(int(s) for s in a.shape)
    want = "(S, D) with D = 2 or 3" if d is None else f"(S, {d}) like the points"
    if len(shp) != 2 or shp[1] not in ((2, 3) if d is None else (d,)):
        raise ValueError(f"{name} must have shape {want}, got {shp}")
    if shp[0] == 0:
        raise ValueError(f"{name} is empty: mean_shift needs at least one")
    if any_nonfinite(a):
        raise ValueError(f"{name} contain NaN or Inf")
    return a


def _fit_indices(fit_points: Any, n: int, where: Placement) -> Any:
    """The fitted points as contiguous int64 indices in [0, n) on ``where``: from integer indices (repeats allowed)
    or a boolean mask of length n."""
    torch = torch_module()
    if is_torch(fit_points) or hasattr(fit_points, "__cuda_array_interface__"):
        f = fit_points if is_torch(fit_points) else torch.as_tensor(fit_points, device=where.torch_device)
        if f.dtype == torch.bool:
            if f.ndim != 1 or f.shape[0] != n:
                raise ValueError(f"fit_points as a boolean mask must have shape ({n},), got {tuple(f.shape)}")
            f = torch.nonzero(f).flatten()
        elif f.dtype.is_floating_point or f.dtype.is_complex:
            raise ValueError(f"fit_points must be integer indices or a boolean mask, got dtype {_dtype_name(f)}")
    else:
        try:
            f = np.asarray(fit_points)
        except Exception as e:  # noqa: BLE001 - anything NumPy cannot read is a user error here
            raise ValueError(f"fit_points could not be read as an array: {e}") from None
        if f.dtype == np.bool_:
            if f.ndim != 1 or f.shape[0] != n:
                raise ValueError(f"fit_points as a boolean mask must have shape ({n},), got {f.shape}")
            f = np.flatnonzero(f)
        elif f.dtype.kind not in "iu":
            raise ValueError(f"fit_points must be integer indices or a boolean mask, got dtype {f.dtype}")
    if f.ndim != 1:
        raise ValueError(f"fit_points must be one-dimensional, got shape {tuple(f.shape)}")
    if f.shape[0] == 0:
        raise ValueError("fit_points selects no points")
    lo, hi = labels_min(f), labels_max(f)
    if lo < 0 or hi >= n:
        raise ValueError(f"fit_points must index the {n} points (0 to {n - 1}), got values from {lo} to {hi}")
    return prepare(f, "fit_points", np.int64, where, integer=True)


def mean_shift(points: Any, bandwidth: float, *, seeds: Any = None, min_bin_freq: int = 1, max_iter: int = 300,
               cluster_all: bool = False, fit_points: Any = None) -> Tuple[Any, Any]:
    """Mean-shift clustering with a flat kernel: scikit-learn's ``MeanShift``, in the native core.

    Every seed climbs to a mode: its window is the fitted points within ``bandwidth`` of its mean (squared
    float32 distance <= bandwidth^2), the mean moves to the window's mean, until it moves by at most
    ``1e-3 * bandwidth`` or after ``max_iter + 1`` moves; a seed whose window empties is dropped.  Modes are
    ranked by the size of their last window (then their coordinates, descending) and a mode within
    ``bandwidth`` of a higher-ranked kept one is dropped: the rest are the centres.  Every point takes its
    nearest centre.  Neighbours are found in a grid of cell size ``bandwidth`` (CPU: OpenMP over seeds and
    points; CUDA: one thread per seed / point), not among all points.

    scikit-learn equivalents (same centres, in the same order, and the same labels up to rounding at the
    boundaries): ``MeanShift(bandwidth, seeds=, bin_seeding=, min_bin_freq=, cluster_all=, max_iter=)``:

    * ``fit_points=None``: ``.fit(points)``, ``labels`` = ``labels_``, ``centres`` = ``cluster_centers_``;
    * ``fit_points=idx, cluster_all=True``: ``.fit(points[idx])``, ``labels`` = ``.predict(points)``: Cellulus's
      clustering of the foreground embeddings (fitted on a random 10%, ``MeanShift(bandwidth, cluster_all=False)``
      whose ``predict`` assigns every point, i.e. ``seeds="all", cluster_all=True`` here);
    * ``fit_points=idx, cluster_all=False``: as above, but points farther than ``bandwidth`` from every centre
      get -1 (the fitted points then have ``labels_``).

    Parameters
    ----------
    points : array (N, D), float, D = 2 or 3
        The points (N >= 1, finite).
    bandwidth : float
        Radius of the flat kernel (> 0), also the bin size of ``seeds="bin"``; used as float32.
    seeds : None, "bin", "all" or array (S, D), float
        Where the climbs start.  ``"all"`` (and None, scikit-learn's default): every fitted point.  ``"bin"``
        (scikit-learn's ``bin_seeding=True``, much faster): one seed per bin ``round(p / bandwidth)`` holding at
        least ``min_bin_freq`` fitted points, at ``bin * bandwidth`` (when every fitted point has a bin of its
        own, the points themselves).  An array: these seeds.
    min_bin_freq : int
        ``seeds="bin"``: bins with fewer fitted points seed nothing (>= 1).
    max_iter : int
        Moves per seed after the first (>= 0).
    cluster_all : bool
        False (default, as Cellulus): points farther than ``bandwidth`` from every centre get label -1.  True:
        every point takes its nearest centre.
    fit_points : None, integer array (M,) or boolean array (N,)
        The points the centres are fitted on (indices, repeats allowed, or a mask); None: all.  Labels are
        always given to all N points.

    Returns
    -------
    labels : int32 array (N,)
        Index of each point's centre, -1 for orphans (``cluster_all=False``).
    centres : float32 array (K, D)
        The centres, the largest window first.
        NumPy in, NumPy out; torch tensors in, tensors out on the input's device.

    Raises
    ------
    ValueError
        Bad shapes or values (NaN or Inf, ``bandwidth <= 0``, no points), or no fitted point within
        ``bandwidth`` of any seed.
    """
    bw = checks.number(bandwidth, "bandwidth", lo=0.0, lo_open=True)
    freq = checks.integer(min_bin_freq, "min_bin_freq", lo=1)
    iters = checks.integer(max_iter, "max_iter", lo=0, hi=np.iinfo(np.int32).max)
    every = checks.boolean(cluster_all, "cluster_all")
    given = seeds is not None and not isinstance(seeds, str)
    mode = 2 if given else _SEED_MODES[checks.choice("all" if seeds is None else seeds, "seeds", ["bin", "all"])]
    where = placement(points, seeds if given else None, fit_points)
    pts = _points(points, "points", where)
    n, d = int(pts.shape[0]), int(pts.shape[1])
    if n > np.iinfo(np.int32).max:
        raise ValueError(f"mean_shift supports at most 2**31 - 1 points (int32 labels), got {n}")
    sd = _points(seeds, "seeds", where, d) if given else None
    s = int(sd.shape[0]) if given else 0
    fit = None if fit_points is None else _fit_indices(fit_points, n, where)
    m = 0 if fit is None else int(fit.shape[0])
    cap = s if given else (m if fit is not None else n)
    labels = empty((n,), np.int32, where)
    centres = empty((cap, d), np.float32, where)
    k = call(where, _core.mean_shift, ptr(pts), n, d, 0 if fit is None else ptr(fit), m,
             0 if sd is None else ptr(sd), s, bw, mode, freq, iters, every, ptr(labels), ptr(centres))
    centres = centres[:k].copy() if isinstance(centres, np.ndarray) else centres[:k].clone()
    return finish(labels, where), finish(centres, where)
