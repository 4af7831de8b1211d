"""The Cellpose family: flows + cell probability -> masks (Euler tracking, clustering, flow QC in the core),
and Cellpose's two-step size estimate (style -> diameter regression, then the median diameter of a first
segmentation at that size)."""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping

import numpy as np

from ..labels import as_labels, median_diameter
from . import Family, register_family

__all__ = ["postprocess", "estimate_diameter", "default_niter", "CELLPOSE"]

log = logging.getLogger("fastpose.methods")

#: options of :func:`postprocess` (see :func:`fastpose.core.compute_masks`)
OPTIONS = ("flow_threshold", "cellprob_threshold", "min_size", "niter")


def default_niter(rescale: float) -> int:
    """Euler steps when none are given: 200 at the model's scale (more for images upsampled less than 1:1)."""
    return int(round(200 / min(rescale, 1.0)))


def postprocess(maps: Any, *, rescale: float = 1.0, options: Mapping[str, Any] = (),
                return_maps: bool = False) -> Dict[str, Any]:
    """Masks of one image from its maps ``[flow (ndim), cellprob, ...]`` (a tensor on the core's device).

    ``options``: ``flow_threshold``, ``cellprob_threshold``, ``min_size``, ``niter`` (None: :func:`default_niter`).
    Returns ``masks`` (uint16/uint32 NumPy) and, with ``return_maps``, ``flows`` (float32 [ndim, *spatial], 5x
    unit vectors) and ``cellprob`` (float32 logits).
    """
    import fastpose.core as fc

    ndim = maps.ndim - 1
    dP, prob = maps[:ndim].contiguous(), maps[ndim].contiguous()
    kw = dict(options or {})
    if kw.get("niter") is None:
        kw["niter"] = default_niter(rescale)
    out: Dict[str, Any] = {"masks": as_labels(fc.compute_masks(dP, prob, **kw))}
    if return_maps:
        out["flows"] = dP.float().cpu().numpy()
        out["cellprob"] = prob.float().cpu().numpy()
    return out


def estimate_diameter(seg: Any, x: np.ndarray, augment: bool = False, tile_overlap: float = 0.1) -> float:
    """Cellpose's size estimate for a prepared image ``x`` [C, Y, X]: the size model maps the style vector to a
    first diameter d0; the median diameter of the masks found at d0 is the estimate (d0 if there are none)."""
    sm = seg.size_model
    if not sm:
        raise ValueError("this model has no size model: pass diameter= (or 0 for no resizing)")
    _, st = seg.maps(x, 1.0, augment, tile_overlap)
    s = st.detach().float().cpu().numpy()
    A = np.asarray(sm["A"], np.float64)
    smean = np.asarray(sm["smean"], np.float64)
    d0 = float(np.exp(A @ (s - smean) + np.log(seg.diam_mean) + float(sm["ymean"])))
    d0 = float(np.clip(d0, 5.0, 500.0))
    masks = seg.segment_prepared(x, d0, augment, tile_overlap, {}, False).masks
    d1 = median_diameter(masks)
    return d1 if d1 > 0 else d0


CELLPOSE = register_family(Family("cellpose", postprocess, estimate_diameter, OPTIONS))
