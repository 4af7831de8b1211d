"""Histogram-peak clustering of tracked end points into masks (Cellpose's ``get_masks``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core, checks
from ._backend import (call, empty, finish_labels, placement, prepare_field, prepare_mask, ptr,
                       shape_tuple)

__all__ = ["get_masks"]


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
    frac = checks.number(max_size_fraction, "max_size_fraction", lo=0.0)
    where = placement(positions, mask)
    m, spatial = prepare_mask(mask, where)
    pos = prepare_field(positions, "positions", spatial, where, of="a mask", plural=True)
    labels = empty(spatial, np.int32, where)
    n = call(where, _core.get_masks, ptr(pos), ptr(m), shape_tuple(spatial), ptr(labels), frac)
    return finish_labels(labels, n, where)
