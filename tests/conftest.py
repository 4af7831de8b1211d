"""Shared fixtures: device parametrisation and synthetic label images (helpers that are not fixtures:
``_helpers.py``).

GPU cases are skipped when no CUDA GPU is usable, unless FASTPOSE_REQUIRE_CUDA=1, in which case they
must run (and fail if the GPU path is missing).

The suite never writes into the user's cache: ``FASTPOSE_CACHE`` (the ONNX exports of the default CPU backend)
points at a folder of this session, removed at the end, unless the caller set it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

import fastpose.core as fc
from _helpers import REQUIRE_CUDA, cuda_ok
from fastpose.synthetic import random_labels

_SESSION_CACHE = None


def pytest_configure(config):
    global _SESSION_CACHE
    if "FASTPOSE_CACHE" not in os.environ:  # inherited by the CLI subprocesses too
        _SESSION_CACHE = tempfile.mkdtemp(prefix="fastpose-test-cache-")
        os.environ["FASTPOSE_CACHE"] = _SESSION_CACHE
    if REQUIRE_CUDA and not cuda_ok():
        raise pytest.UsageError("FASTPOSE_REQUIRE_CUDA=1 but no usable CUDA GPU / CUDA build of fastpose")


def pytest_unconfigure(config):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if cuda_ok():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU (set FASTPOSE_REQUIRE_CUDA=1 to make this an error)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    """'cpu' or 'cuda': run the enclosed operations on that backend."""
    with fc.use_backend(request.param):
        yield request.param


@pytest.fixture(scope="session")
def labels2d() -> np.ndarray:
    """256x256 label image with ~60 touching and isolated cells of diameter ~24."""
    return random_labels((256, 256), 70, diameter=24, seed=1)


@pytest.fixture(scope="session")
def labels3d() -> np.ndarray:
    """48x64x64 label volume with ~25 cells of diameter ~16."""
    return random_labels((48, 64, 64), 30, diameter=16, seed=2)
