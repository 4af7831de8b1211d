"""Mask clean-up: small-mask removal and hole filling (Cellpose's ``fill_holes_and_remove_small_masks``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core, checks
from ..labels import relabel_sequential
from ._backend import (call, check_spatial, finish_labels, is_torch, labels_max, labels_min, placement,
                       prepare_labels, ptr, shape_tuple, torch_module)

__all__ = ["fill_holes_and_remove_small_masks"]


def _relabel_sparse(masks: Any) -> Any:
    """Map labels to 0..K in increasing order (0 stays 0) when the largest label exceeds the pixel count (the
    native op sizes its statistics by the largest label); other inputs are returned as they are."""
    if is_torch(masks):
        if masks.dtype.is_floating_point or masks.dtype.is_complex or masks.dtype == torch_module().bool:
            return masks  # prepare_labels reports the dtype
        n = masks.numel()
    else:
        masks = np.asarray(masks)
        if masks.dtype.kind not in "iu":
            return masks  # prepare_labels reports the dtype
        n = masks.size
    if n == 0 or labels_min(masks) < 0 or labels_max(masks) <= n:
        return masks
    return relabel_sequential(masks)[0]


def fill_holes_and_remove_small_masks(masks: Any, min_size: int = 15) -> Any:
    """Remove masks smaller than ``min_size`` pixels, fill the holes of the others, renumber 1..N.

    A hole of a mask is a set of pixels outside the mask, inside its bounding box, that is not
    4-connected to the box border; in 3D holes are found per Z plane (as Cellpose does).  Only
    background pixels are filled (other masks are never overwritten; a pixel in holes of several
    masks goes to the lowest label).  Kept masks are renumbered 1..N in increasing order of their
    old labels; labels need not be sequential.

    Parameters
    ----------
    masks : array (Y, X) or (Z, Y, X), integer
        Label image, 0 = background, labels >= 0.  Not modified.
    min_size : int
        Minimum mask size in pixels (voxels), counted before filling; <= 0 keeps every mask.

    Returns
    -------
    masks
        New label array: for NumPy inputs uint16 (uint32 beyond 65535 masks); for torch inputs an
        int32 tensor on the input's device.
    """
    min_size = checks.integer(min_size, "min_size", none_ok=True) or 0
    where = placement(masks)
    raw = masks if (is_torch(masks) or hasattr(masks, "__cuda_array_interface__")) else np.asarray(masks)
    check_spatial(raw, "masks")
    raw = _relabel_sparse(raw)
    lab = prepare_labels(raw, "masks", where)
    # prepare_labels may hand back the caller's own buffer: work on a copy.
    lab = lab.copy() if isinstance(lab, np.ndarray) else lab.clone()
    spatial = tuple(int(s) for s in lab.shape)
    n = call(where, _core.fill_holes_and_remove_small_masks, ptr(lab), shape_tuple(spatial), min_size)
    return finish_labels(lab, n, where)
