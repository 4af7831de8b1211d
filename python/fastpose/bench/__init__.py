"""``fastpose-bench``: timings of fastpose's native core, its end-to-end segmentation and its network step, each
side by side with Cellpose's when importable.

Modules: :mod:`.cli` (the command line: ``main``), :mod:`.core` (``core``: the native operations),
:mod:`.segment` (``segment``: end to end, stage by stage), :mod:`.net` (``net``: the network step per backend and
precision; ``sam``: Cellpose-SAM-style ViT segmentation), :mod:`.meanshift` (``meanshift``: mean-shift clustering
beside scikit-learn's); :mod:`._timing` holds what they share.  Importing
the package does not load PyTorch; running a benchmark does.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
