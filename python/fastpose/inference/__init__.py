"""Inference for every model family, top to bottom by module:

* :mod:`.segmenter` -- :class:`Segmenter` / :func:`segment`: load, prepare (``fastpose.transforms``), resize by
  diameter, then 2D, 3D or stitched planes, then the family's post-processing (``fastpose.methods``)
* :mod:`.tiled` -- pad -> tiles -> network batches -> blend, generic over the model spec
* :mod:`.volume` -- 3D from XY/ZY/ZX slices; ``stitch3D``
* :mod:`.streaming` -- the screen scheduler behind ``Segmenter.segment_many``
* :mod:`.result` -- :class:`SegmentResult`

Names are loaded on first use, so importing this package does not import PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"Segmenter": ".segmenter", "segment": ".segmenter", "SegmentResult": ".result",
          "stitch3D": ".volume", "volume_maps": ".volume", "run_tiled": ".tiled"}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module 'fastpose.inference' has no attribute {name!r}")
