"""fastpose: fast Cellpose-family cell segmentation with a compiled C++/CUDA core.

>>> import fastpose
>>> res = fastpose.segment(image, model="nuclei")   # res.masks: uint16 labels

``fastpose.core`` holds the native operations (flows, tracking, clustering, QC, tiles);
``fastpose.models`` the networks and model files; ``fastpose.train`` training; ``fastpose.metrics``
the scores.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _core

__version__: str = _core.version()

logging.getLogger("fastpose").addHandler(logging.NullHandler())

if TYPE_CHECKING:  # pragma: no cover
    from .inference import SegmentResult, Segmenter, segment
    from .scellseg.finetune import finetune


def __getattr__(name: str) -> Any:
    # inference imports PyTorch: load it on first use, so `import fastpose` stays light
    if name in ("segment", "Segmenter", "SegmentResult"):
        from . import inference
        return getattr(inference, name)
    if name == "finetune":  # few-shot fine-tuning (Scellseg's contrastive, or classic)
        from .scellseg.finetune import finetune
        return finetune
    raise AttributeError(f"module 'fastpose' has no attribute {name!r}")


def cmake_dir() -> str:
    """Folder holding ``fastposeConfig.cmake``: pass it as ``-Dfastpose_DIR=...`` to CMake."""
    return str(Path(__file__).resolve().parent / "lib" / "cmake" / "fastpose")


def include_dir() -> str:
    """Folder holding the public C++ headers (``fastpose/*.hpp``)."""
    return str(Path(__file__).resolve().parent / "include")


__all__ = ["__version__", "cmake_dir", "include_dir", "segment", "Segmenter", "SegmentResult", "finetune"]
