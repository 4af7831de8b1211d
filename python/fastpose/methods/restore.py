"""The restoration family (Cellpose3): the network's one output map is the restored image; there are no masks.

A restoration model run through :class:`~fastpose.inference.Segmenter` gives ``SegmentResult.outputs["restored"]``
(float32 at the image's size, in the network's output range: about 0-1 for 1st/99th-percentile-normalised
input) and ``masks`` None.  :mod:`fastpose.restore` is the API built on it: per-channel restoration, and
restoration chained in front of a segmentation model (``segment(image, restore=...)``).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from . import Family, register_family

__all__ = ["postprocess", "RESTORE"]


def postprocess(maps: Any, *, rescale: float = 1.0, options: Mapping[str, Any] = (),
                return_maps: bool = False) -> Dict[str, Any]:
    """``{"masks": None, "outputs": {"restored": float32 [*spatial]}}`` of one image's maps ``[1, *spatial]``."""
    return {"masks": None, "outputs": {"restored": maps[0].float().cpu().numpy()}}


RESTORE = register_family(Family("restore", postprocess))
