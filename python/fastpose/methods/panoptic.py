"""The panoptic family: Cellpose masks plus a semantic class per mask (Cellpose-SAM's panoptic recipe).

A panoptic model's outputs are the three Cellpose maps then ``K + 1`` class maps (background first; see
:func:`fastpose.models.spec.panoptic_spec`).  At test time (Cellpose-SAM, Methods):

1. masks from the flows and the cell probability as usual (:func:`fastpose.methods.cellpose.postprocess`);
2. per pixel, the class with the largest map value;
3. each mask gets the class with the most pixels inside it (:func:`fastpose.labels.majority_class`);
4. a mask whose majority class is background is removed, and the rest are renumbered 1..N in order
   (:func:`fastpose.labels.relabel_sequential`).

The result's ``classes`` holds the class id of each mask (``classes[i]`` for mask ``i``; ``classes[0] = 0``);
with ``return_flows`` its ``outputs["class_maps"]`` holds the class maps (float32 [K + 1, *spatial], logits).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from ..labels import as_labels, majority_class, relabel_sequential
from . import Family, register_family
from .cellpose import OPTIONS, estimate_diameter
from .cellpose import postprocess as cellpose_postprocess

__all__ = ["postprocess", "assign_classes", "PANOPTIC"]

log = logging.getLogger("fastpose.methods")


def assign_classes(masks: np.ndarray, class_pixels: np.ndarray, n_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Steps 3-4 above: ``(masks, classes)`` with each mask's majority class of the per-pixel class image
    ``class_pixels`` (0 = background), masks whose majority is background removed and the rest renumbered.
    ``classes`` is int64 [N + 1], ``classes[0] = 0``."""
    cls = majority_class(masks, class_pixels, n_classes)
    keep = cls > 0
    keep[0] = False
    m = np.asarray(masks)
    if keep[1:].all():
        return as_labels(m), cls
    kept = np.where(keep[m], m, 0)
    compact, values = relabel_sequential(kept)
    return as_labels(compact), cls[np.asarray(values, np.int64)]


def postprocess(maps: Any, *, rescale: float = 1.0, options: Mapping[str, Any] = (),
                return_maps: bool = False) -> Dict[str, Any]:
    """Masks and a class per mask from one image's maps ``[flow (ndim), cellprob, class maps (K + 1)]`` (a
    tensor on the core's device); see the module docstring.  ``options`` as for the Cellpose family."""
    ndim = maps.ndim - 1
    n_classes = int(maps.shape[0]) - ndim - 1
    if n_classes < 2:
        raise ValueError(f"a panoptic model needs a background and at least one class map after the {ndim + 1} "
                         f"Cellpose maps, got {int(maps.shape[0])} maps in all")
    out = cellpose_postprocess(maps[:ndim + 1], rescale=rescale, options=options, return_maps=return_maps)
    class_maps = maps[ndim + 1:]
    pixels = class_maps.argmax(0).cpu().numpy()
    n_before = int(out["masks"].max()) if out["masks"].size else 0
    out["masks"], out["classes"] = assign_classes(out["masks"], pixels, n_classes)
    n_after = int(out["masks"].max()) if out["masks"].size else 0
    if n_after < n_before:
        log.debug("panoptic: removed %d of %d masks whose majority class is background", n_before - n_after,
                  n_before)
    if return_maps:
        out["outputs"] = {"class_maps": class_maps.float().cpu().numpy()}
    return out


PANOPTIC = register_family(Family("panoptic", postprocess, estimate_diameter, OPTIONS))
