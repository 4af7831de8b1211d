"""The Cellpose family: flows + cell probability -> masks (Euler tracking, clustering, flow QC in the core),
and Cellpose's two-step size estimate (style -> diameter regression, then the median diameter of a first
segmentation at that size)."""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from .. import checks
from ..labels import as_labels, median_diameter
from . import Family, register_family

__all__ = ["postprocess", "estimate_diameter", "default_niter", "CELLPOSE"]

log = logging.getLogger("fastpose.methods")

#: options of :func:`postprocess` (see :func:`fastpose.core.compute_masks`)
OPTIONS = ("flow_threshold", "cellprob_threshold", "min_size", "niter", "max_size_fraction")


def default_niter(rescale: float, shape: Optional[Sequence[int]] = None) -> int:
    """Euler steps when none are given: 200 at the model's scale, so ``200 / rescale`` for images the network
    saw downsampled (``rescale < 1``), bounded so the work does not grow with the diameter: never more than the
    diagonal of the image of ``shape`` (a step moves a pixel by about one pixel, and positions are clamped to
    the image, so a pixel cannot usefully travel further; at least 200) nor ``LIMITS["niter"]``."""
    r = checks.number(rescale, "rescale", lo=0.0, lo_open=True)
    n = 200.0 / min(r, 1.0)
    if shape is not None:
        diagonal = math.ceil(math.sqrt(sum(float(s) ** 2 for s in shape)))
        n = min(n, max(200.0, diagonal))
    return int(min(round(n), checks.LIMITS["niter"]))


def postprocess(maps: Any, *, rescale: float = 1.0, options: Mapping[str, Any] = (),
                return_maps: bool = False) -> Dict[str, Any]:
    """Masks of one image from its maps ``[flow (ndim), cellprob, ...]`` (a tensor on the core's device).

    ``options``: ``flow_threshold``, ``cellprob_threshold``, ``min_size``, ``niter`` (None: :func:`default_niter`,
    bounded by the image's diagonal), checked by the caller (``Segmenter.check_options``).
    Returns ``masks`` (uint16/uint32 NumPy) and, with ``return_maps``, ``flows`` (float32 [ndim, *spatial], 5x
    unit vectors) and ``cellprob`` (float32 logits).
    """
    import fastpose.core as fc

    ndim = maps.ndim - 1
    dP, prob = maps[:ndim].contiguous(), maps[ndim].contiguous()
    kw = dict(options or {})
    if kw.get("niter") is None:
        kw["niter"] = default_niter(rescale, tuple(maps.shape[1:]))
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
