"""Histogram-peak clustering of tracked end points into masks (Cellpose's ``get_masks``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .. import _core
from ._backend import any_nonfinite, device_guard, empty, finish, placement, prepare, ptr, shape_tuple
from .tracking import _mask_u8

log = logging.getLogger("fastpose.core")


def get_masks(positions: Any, mask: Any, max_size_fraction: float = 0.4) -> Any:
    """Cluster the end points of tracked pixels into instance masks.

    End points are binned on the image grid (``floor(position)``); bins with more than 10 counts that
    are the maximum of their 5^d window become seeds; each seed grows 5 times into neighbouring bins
    (3^d connectivity) with more than 2 counts; overlaps go to the seed with the larger count.  Each
    tracked pixel takes the label of its bin, masks larger than ``max_size_fraction`` of the image are
    dropped and labels are renumbered 1..N in raster order of first appearance.  Deterministic.

    Parameters
    ----------
    positions : array (ndim, Y, X) or (ndim, Z, Y, X), float
        End points from :func:`follow_flows`.  Must be finite.
    mask : array (Y, X) or (Z, Y, X), bool or integer
        Tracked pixels (non-zero); other pixels get label 0.
    max_size_fraction : float
        Masks with more than ``max_size_fraction * image size`` pixels are removed (>= 0).

    Returns
    -------
    labels
        For NumPy inputs a uint16 array (uint32 beyond 65535 masks); for torch inputs an int32 tensor on
        the input's device.
    """
    try:
        frac = float(max_size_fraction)
    except (TypeError, ValueError):
        raise ValueError(f"max_size_fraction must be a number, got {max_size_fraction!r}") from None
    if not frac >= 0.0:
        raise ValueError(f"max_size_fraction must be >= 0, got {max_size_fraction}")
    where = placement(positions, mask)
    m, spatial = _mask_u8(mask, where)
    pos = prepare(positions, "positions", np.float32, where)
    want = (len(spatial), *spatial)
    if tuple(pos.shape) != want:
        raise ValueError(f"positions must have shape {want} for a mask of shape {spatial}, got {tuple(pos.shape)}")
    if any_nonfinite(pos):
        raise ValueError("positions contain NaN or Inf")
    labels = empty(spatial, np.int32, where)
    with device_guard(where):
        n = _core.get_masks(ptr(pos), ptr(m), shape_tuple(spatial), ptr(labels), frac, *where.exec_args())
    if where.out_kind == "numpy":
        if n > np.iinfo(np.uint16).max:
            log.warning("%d masks in the image: labels returned as uint32", n)
        dt = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
        return finish(labels, where).astype(dt, copy=False)
    return finish(labels, where)
