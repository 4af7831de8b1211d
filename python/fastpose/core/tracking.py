"""Euler tracking of pixels along the flows (Cellpose's ``follow_flows``)."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from .. import _core
from ._backend import (_is_torch, _torch, any_nonfinite, check_spatial, device_guard, empty, finish, placement, prepare, ptr,
                       shape_tuple)


def _mask_u8(mask: Any, where: Any) -> Tuple[Any, Tuple[int, ...]]:
    """Validate a bool/integer tracking mask and return it as contiguous uint8 (0/1) on ``where``."""
    if mask is None:
        raise ValueError("mask is required")
    if _is_torch(mask) or hasattr(mask, "__cuda_array_interface__"):
        m = mask if _is_torch(mask) else _torch().as_tensor(mask, device=where.torch_device)
        if m.dtype.is_floating_point or m.dtype.is_complex:
            raise ValueError(f"mask must be a bool or integer array, got dtype {str(m.dtype).replace('torch.', '')}")
        spatial = check_spatial(m, "mask")
        return prepare(m != 0, "mask", np.uint8, where), spatial
    try:
        m = np.asarray(mask)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"mask could not be read as an array: {e}") from None
    if m.dtype.kind not in "biu":
        raise ValueError(f"mask must be a bool or integer array, got dtype {m.dtype}")
    spatial = check_spatial(m, "mask")
    return prepare(m != 0, "mask", np.uint8, where), spatial


def follow_flows(dP: Any, mask: Any, niter: int = 200) -> Any:
    """Track every foreground pixel along the flows with ``niter`` Euler steps.

    Each pixel with ``mask != 0`` starts at its integer coordinates and repeats
    ``pos += interp(dP, pos) / 5`` followed by clamping every coordinate to ``[0, extent - 1]``;
    ``interp`` is bilinear (trilinear in 3D) in pixel coordinates and flows of pixels outside ``mask``
    count as 0.  Other pixels keep their own coordinates.

    Parameters
    ----------
    dP : array (2, Y, X) or (3, Z, Y, X), float
        Flows at network scale (5x unit vectors): (dY, dX) in 2D, (dZ, dY, dX) in 3D.  Must be finite.
    mask : array (Y, X) or (Z, Y, X), bool or integer
        Pixels to track (non-zero).
    niter : int
        Number of Euler steps (>= 0).

    Returns
    -------
    positions : array (ndim, Y, X) or (ndim, Z, Y, X), float32
        Final coordinates (NumPy for NumPy inputs, a torch tensor on the input's device for torch inputs).
    """
    try:
        niter_i = int(niter)
    except (TypeError, ValueError):
        raise ValueError(f"niter must be an integer, got {niter!r}") from None
    if niter_i < 0 or niter_i > np.iinfo(np.int32).max:
        raise ValueError(f"niter must be >= 0, got {niter}")
    where = placement(dP, mask)
    m, spatial = _mask_u8(mask, where)
    flows = prepare(dP, "dP", np.float32, where)
    want = (len(spatial), *spatial)
    if tuple(flows.shape) != want:
        raise ValueError(f"dP must have shape {want} for a mask of shape {spatial}, got {tuple(flows.shape)}")
    if any_nonfinite(flows):
        raise ValueError("dP contains NaN or Inf")
    positions = empty(want, np.float32, where)
    with device_guard(where):
        _core.follow_flows(ptr(flows), ptr(m), shape_tuple(spatial), niter_i, ptr(positions), *where.exec_args())
    return finish(positions, where)
