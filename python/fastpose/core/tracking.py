"""Euler tracking of pixels along the flows (Cellpose's ``follow_flows``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core, checks
from ._backend import call, empty, finish, placement, prepare_field, prepare_mask, ptr, shape_tuple

__all__ = ["follow_flows", "tracking_path"]


def tracking_path() -> str:
    """The code path :func:`follow_flows` takes on the CPU now: ``"avx2"`` or ``"scalar"``.

    ``"avx2"`` on x86-64 CPUs with AVX2 unless the environment variable ``FASTPOSE_NO_SIMD`` is set to anything
    but ``""`` or ``"0"`` (read at every call).  2D and 3D take the AVX2 path; ``niter=0`` and images whose
    table would exceed int32 offsets (16 bytes/voxel in 3D, 8 bytes/pixel in 2D) take the scalar path.  Both
    paths give bitwise the same positions.
    """
    return str(_core.tracking_simd_path())


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
        Number of Euler steps, 0 to ``fastpose.checks.LIMITS["niter"]`` (the work is ``niter`` x pixels).

    Returns
    -------
    positions : array (ndim, Y, X) or (ndim, Z, Y, X), float32
        Final coordinates (NumPy for NumPy inputs, a torch tensor on the input's device for torch inputs).
    """
    niter_i = checks.integer(niter, "niter", lo=0, hi=checks.LIMITS["niter"])
    where = placement(dP, mask)
    m, spatial = prepare_mask(mask, where)
    flows = prepare_field(dP, "dP", spatial, where, of="a mask")
    positions = empty(flows.shape, np.float32, where)
    call(where, _core.follow_flows, ptr(flows), ptr(m), shape_tuple(spatial), niter_i, ptr(positions))
    return finish(positions, where)
