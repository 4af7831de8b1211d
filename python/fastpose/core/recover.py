"""Mask recovery from network outputs, the whole chain in one native call: threshold -> Euler tracking ->
clustering -> flow QC -> clean-up (``compute_masks``)."""

from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np

from .. import _core, checks
from ._backend import (any_nonfinite, call, check_spatial, empty, finish, finish_labels, placement, prepare,
                       prepare_field, ptr, shape_tuple)

__all__ = ["compute_masks"]


def compute_masks(dP: Any, cellprob: Any, niter: int = 200, cellprob_threshold: float = 0.0,
                  flow_threshold: float = 0.4, min_size: int = 15, max_size_fraction: float = 0.4,
                  flow_qc_3d: bool = False, return_positions: bool = False) -> Union[Any, Tuple[Any, Any]]:
    """Recover instance masks from network flows and cell probabilities.

    Pixels with ``cellprob > cellprob_threshold`` are tracked for ``niter`` Euler steps along
    ``dP / 5``, their end points clustered at histogram peaks, masks whose recomputed flows disagree
    with ``dP`` by more than ``flow_threshold`` dropped (2D; 3D only with ``flow_qc_3d=True``, as in
    Cellpose), holes filled, masks under ``min_size`` pixels and over ``max_size_fraction`` of the
    image removed, labels renumbered 1..N.

    Parameters
    ----------
    dP : array (ndim, Y, X) or (ndim, Z, Y, X), float
        Flows at network scale (5x unit vectors): (dY, dX) in 2D, (dZ, dY, dX) in 3D.  Must be finite (NaN or
        Inf is a ValueError, never tracked into garbage).
    cellprob : array (Y, X) or (Z, Y, X), float
        Cell-probability logits.  Must be finite (ValueError otherwise).
    niter : int
        Euler steps, 0 to ``fastpose.checks.LIMITS["niter"]``.
    cellprob_threshold, flow_threshold : float
        Foreground threshold on the logits (finite); flow-error QC threshold (>= 0; 0 or None disables QC).
    min_size : int
        Minimum mask size in pixels (voxels); <= 0 keeps all.
    max_size_fraction : float
        Masks covering more than this fraction of the image are dropped (>= 0).
    flow_qc_3d : bool
        Apply flow QC to 3D images too.
    return_positions : bool
        Also return the tracked end points, float32 (ndim, *shape).

    Returns
    -------
    labels
        uint16 (uint32 beyond 65535 masks) NumPy array for host inputs; an int32 tensor on the input's
        device for torch inputs.  With ``return_positions``: ``(labels, positions)``.
    """
    niter = checks.integer(niter, "niter", lo=0, hi=checks.LIMITS["niter"])
    cellprob_threshold = checks.number(cellprob_threshold, "cellprob_threshold")
    flow_threshold = checks.number(flow_threshold, "flow_threshold", lo=0.0, none_ok=True) or 0.0
    max_size_fraction = checks.number(max_size_fraction, "max_size_fraction", lo=0.0)
    min_size = checks.integer(min_size, "min_size")
    flow_qc_3d = checks.boolean(flow_qc_3d, "flow_qc_3d")
    return_positions = checks.boolean(return_positions, "return_positions")
    where = placement(dP, cellprob)
    prob = prepare(cellprob, "cellprob", np.float32, where)
    spatial = check_spatial(prob, "cellprob")
    flows = prepare_field(dP, "dP", spatial, where, of="cellprob")
    if any_nonfinite(prob):
        raise ValueError("cellprob contains NaN or Inf: mask recovery needs finite logits (a NaN is neither "
                         "cell nor background); replace them first, e.g. np.nan_to_num(cellprob, nan=-10)")
    labels = empty(spatial, np.int32, where, zero=True)
    positions = empty(flows.shape, np.float32, where) if return_positions else None
    n = call(where, _core.compute_masks, ptr(flows), ptr(prob), shape_tuple(spatial), ptr(labels), int(niter),
             float(cellprob_threshold), float(flow_threshold), bool(flow_qc_3d), int(min_size),
             float(max_size_fraction), ptr(positions) if positions is not None else 0)
    out = finish_labels(labels, n, where)
    if return_positions:
        return out, finish(positions, where)
    return out
