"""What segmentation returns for one image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["SegmentResult"]


@dataclass
class SegmentResult:
    """What :func:`fastpose.segment` returns for one image."""

    masks: Optional[np.ndarray]             #: labels, uint16 (uint32 beyond 65535 masks), image shape
    flows: Optional[np.ndarray] = None      #: (ndim, *shape) float32 flows at network scale (5x unit)
    cellprob: Optional[np.ndarray] = None   #: (*shape) float32 cell-probability logits
    styles: Optional[np.ndarray] = None     #: style vector of the image
    diameter: Optional[float] = None        #: diameter used (given or estimated), pixels
    info: Dict[str, Any] = field(default_factory=dict)
    #: other named outputs of a model family (e.g. a restored image), NumPy arrays at the image's size
    outputs: Dict[str, np.ndarray] = field(default_factory=dict)
    #: panoptic models: the class of each mask, int64 [n_masks + 1] indexed by mask id (``classes[0] = 0``,
    #: background); class ids index the model's class names (``fastpose.models.class_names(seg.spec)``,
    #: background first).  None for models without classes.
    classes: Optional[np.ndarray] = None
