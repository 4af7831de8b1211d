"""The bundled models load and segment with accuracy above floors measured when they were trained
(regression guards: a broken loader, pipeline or weight file drops far below them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastpose.io import read_image, sample_paths
from fastpose.metrics import average_precision
from fastpose.models import BUILTIN_MODELS, load_model
from fastpose.pipeline import Segmenter


@pytest.mark.parametrize("name", ["nuclei", "cyto"])
def test_bundled_model_files_and_cards(name):
    path = Path(BUILTIN_MODELS[name])
    assert path.is_file() and path.stat().st_size < 15e6
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["model"] == name and "validation" in card and "training" in card
    net, meta = load_model(name)
    assert meta["size_model"] is not None and meta["diam_mean"] in (17.0, 30.0)


def test_nuclei_on_bundled_sample():
    img, gt = (read_image(p) for p in sample_paths())
    seg = Segmenter("nuclei", device="cpu")
    r = seg.segment(img)  # diameter estimated by the size model
    ap = average_precision(gt, r.masks, [0.5, 0.75])[0][0]
    # measured with the bundled weights: AP@0.5 0.74, AP@0.75 0.53 (estimated diameter 14.0 px)
    assert ap[0] >= 0.70 and ap[1] >= 0.45
    assert 10 < r.diameter < 25


def test_cyto_on_synthetic_cells():
    from fastpose.synthetic_cells import make_cyto_dataset
    (img, gt), = make_cyto_dataset(1, (256, 256), seed=123)
    r = Segmenter("cyto", device="cpu").segment(img, channel_axis=0)
    # measured: AP@0.5 1.0 on this image (0.93-1.0 over seeds 123..125)
    assert average_precision(gt, r.masks, [0.5])[0][0, 0] >= 0.9
