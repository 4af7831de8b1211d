"""Heat-diffusion flow targets of label images and the flow-error quality check (Cellpose 3).

``masks_to_flows`` computes, for every mask, the unit-length gradient of a heat map diffused from the
mask pixel closest to its centre of mass (Cellpose's ``masks_to_flows_cpu``).  ``flow_errors`` and
``remove_bad_flow_masks`` compare those flows with network flows ``dP`` (``metrics.flow_error``).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .. import _core, checks
from ..labels import relabel_sequential
from ._backend import (call, check_spatial, empty, finish, is_torch, labels_max, placement, prepare_field,
                       prepare_labels, ptr, shape_tuple)

__all__ = ["masks_to_flows", "flow_errors", "remove_bad_flow_masks"]


def _numel(spatial: Tuple[int, ...]) -> int:
    return int(np.prod(spatial, dtype=np.int64))


def _labels_and_flows(masks: Any, dP: Any) -> Tuple[Any, Any, Any, Tuple[int, ...]]:
    where = placement(masks, dP)
    lab = prepare_labels(masks, "masks", where)
    spatial = check_spatial(lab, "masks")
    flows = prepare_field(dP, "dP", spatial, where, of="masks")
    return where, lab, flows, spatial


def masks_to_flows(masks: Any, niter: Optional[int] = None) -> Any:
    """Heat-diffusion flow targets of a label image.

    For every mask, heat is released ``niter`` times at the mask pixel closest to its centre of mass and
    diffused by 3x3 (3x3x3) averaging inside the mask (its bounding box padded by 1); the flows are the
    normalised central-difference gradients of the final heat map.

    Parameters
    ----------
    masks : array (Y, X) or (Z, Y, X), integer
        Label image, 0 = background; labels need not be sequential.
    niter : int, optional
        Diffusion iterations per mask, at most ``fastpose.checks.LIMITS["niter"]``; ``None`` or 0 uses
        Cellpose's default of twice the sum of the padded bounding-box extents of each mask.

    Returns
    -------
    flows : float32 array (ndim, Y, X) or (ndim, Z, Y, X)
        Unit vectors (dY, dX) in 2D, (dZ, dY, dX) in 3D; 0 outside masks.  Same kind (NumPy/torch) as
        ``masks``.
    """
    niter = checks.integer(niter, "niter", lo=0, hi=checks.LIMITS["niter"], none_ok=True) or 0
    where = placement(masks)
    lab = prepare_labels(masks, "masks", where)
    spatial = check_spatial(lab, "masks")
    out = empty((len(spatial), *spatial), np.float32, where, zero=True)
    if _numel(spatial) == 0:
        return finish(out, where)
    if labels_max(lab) > _numel(spatial):
        lab, _ = relabel_sequential(lab)  # flows depend only on the partition, not on the label values
    call(where, _core.masks_to_flows, ptr(lab), shape_tuple(spatial), ptr(out), int(niter))
    return finish(out, where)


def flow_errors(masks: Any, dP: Any) -> Any:
    """Mean squared error between the flows of each mask and network flows.

    ``errors[k - 1] = sum_c mean_{p in mask k} (masks_to_flows(masks)[c, p] - dP[c, p] / 5)^2``
    (Cellpose's ``metrics.flow_error``).

    Parameters
    ----------
    masks : array (Y, X) or (Z, Y, X), integer
        Label image, 0 = background.
    dP : array (ndim, Y, X) or (ndim, Z, Y, X), float
        Network flows at network scale (5x unit vectors).

    Returns
    -------
    errors : float32 array (max_label,)
        Error of label k at index k - 1; 0 for labels absent from the image.
    """
    where, lab, flows, spatial = _labels_and_flows(masks, dP)
    nmax = labels_max(lab)
    sparse = nmax > _numel(spatial)  # the native op needs labels <= numel: compact sparse ones first
    if sparse:
        lab, uniq = relabel_sequential(lab)
    n = int(uniq.shape[0]) - 1 if sparse else nmax
    err = empty((n,), np.float32, where, zero=True)
    call(where, _core.flow_errors, ptr(lab), shape_tuple(spatial), ptr(flows), n, ptr(err))
    if not sparse:
        return finish(err, where)
    out = empty((nmax,), np.float32, where, zero=True)
    idx = uniq[1:] - 1
    out[idx if isinstance(idx, np.ndarray) else idx.long()] = err
    return finish(out, where)


def remove_bad_flow_masks(masks: Any, dP: Any, threshold: float = 0.4) -> Any:
    """Remove masks whose flows disagree with the network flows.

    Parameters
    ----------
    masks, dP
        As for :func:`flow_errors`.
    threshold : float
        Masks with :func:`flow_errors` above this are set to 0.

    Returns
    -------
    masks : array like ``masks`` (same dtype, a copy)
        Bad masks set to 0; the remaining labels are not renumbered.
    """
    thr = checks.number(threshold, "threshold")
    orig_dtype = masks.dtype if is_torch(masks) else np.asarray(masks).dtype
    where, lab, flows, spatial = _labels_and_flows(masks, dP)
    lab = lab.copy() if isinstance(lab, np.ndarray) else lab.clone()  # never modify the caller's array
    nmax = labels_max(lab)
    if nmax > 0:
        if nmax > _numel(spatial):
            compact, uniq = relabel_sequential(lab)
            call(where, _core.remove_bad_flow_masks, ptr(compact), shape_tuple(spatial), ptr(flows),
                 int(uniq.shape[0]) - 1, thr)
            lab[compact == 0] = 0
        else:
            call(where, _core.remove_bad_flow_masks, ptr(lab), shape_tuple(spatial), ptr(flows), nmax, thr)
    out = finish(lab, where)
    if isinstance(out, np.ndarray):
        return out.astype(orig_dtype, copy=False)
    return out.to(orig_dtype)
