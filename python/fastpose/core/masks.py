"""Mask clean-up: small-mask removal and hole filling (Cellpose's ``fill_holes_and_remove_small_masks``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .. import _core
from ._backend import (_is_torch, _torch, check_spatial, device_guard, finish, placement, prepare_labels, ptr,
                       shape_tuple)

log = logging.getLogger("fastpose.core")


def _labels_dtype(n: int) -> np.dtype:
    """uint16 for up to 65535 masks, else uint32 (Cellpose's convention)."""
    return np.dtype(np.uint16) if n <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def _relabel_sparse(masks: Any) -> Any:
    """Map labels to 0..K in increasing order (0 stays 0) when the largest label exceeds the pixel count."""
    if _is_torch(masks):
        if masks.dtype.is_floating_point or masks.dtype.is_complex or masks.dtype == _torch().bool:
            return masks  # prepare_labels reports the dtype
        n = masks.numel()
        if n == 0 or int(masks.min().item()) < 0 or int(masks.max().item()) <= n:
            return masks
        uniq, inv = _torch().unique(masks, sorted=True, return_inverse=True)
        if int(uniq[0].item()) != 0:
            inv = inv + 1
        return inv.reshape(masks.shape).to(_torch().int32)
    a = np.asarray(masks)
    if a.dtype.kind not in "iu" or a.size == 0 or int(a.min()) < 0 or int(a.max()) <= a.size:
        return masks
    uniq, inv = np.unique(a, return_inverse=True)
    if uniq[0] != 0:
        inv = inv + 1
    return inv.reshape(a.shape).astype(np.int32)


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
    if min_size is None:
        min_size = 0
    try:
        min_size = int(min_size)
    except (TypeError, ValueError):
        raise ValueError(f"min_size must be an integer, got {min_size!r}") from None
    where = placement(masks)
    raw = masks if (_is_torch(masks) or hasattr(masks, "__cuda_array_interface__")) else np.asarray(masks)
    check_spatial(raw, "masks")
    raw = _relabel_sparse(raw)
    lab = prepare_labels(raw, "masks", where)
    # prepare_labels may hand back the caller's own buffer: work on a copy.
    lab = lab.copy() if isinstance(lab, np.ndarray) else lab.clone()
    spatial = tuple(int(s) for s in lab.shape)
    with device_guard(where):
        n = _core.fill_holes_and_remove_small_masks(ptr(lab), shape_tuple(spatial), min_size, *where.exec_args())
    if where.out_kind == "numpy":
        if n > np.iinfo(np.uint16).max:
            log.warning("%d masks in the image: labels returned as uint32", n)
        return finish(lab, where).astype(_labels_dtype(n), copy=False)
    return finish(lab, where)
