"""fastpose: fast Cellpose-family cell segmentation with a compiled C++/CUDA core."""

from __future__ import annotations

import logging
from pathlib import Path

from . import _core

__version__: str = _core.version()

logging.getLogger("fastpose").addHandler(logging.NullHandler())


def cmake_dir() -> str:
    """Folder holding ``fastposeConfig.cmake``: pass it as ``-Dfastpose_DIR=...`` to CMake."""
    return str(Path(__file__).resolve().parent / "lib" / "cmake" / "fastpose")


def include_dir() -> str:
    """Folder holding the public C++ headers (``fastpose/*.hpp``)."""
    return str(Path(__file__).resolve().parent / "include")


__all__ = ["__version__", "cmake_dir", "include_dir"]
