"""Image restoration (:mod:`fastpose.restore`) vs Cellpose 3.1's ``denoise.DenoiseModel.eval``, number by number.

Cellpose 3 runs in its own environment ``build-cp3`` (``scripts/test.sh`` makes it), driven by
``tests/compat/cellpose3_restore_reference.py``: it builds random restoration networks with Cellpose's own code
(``CPnet([1, 32, 64, 128, 256], nout=1)``, randomised BatchNorm statistics, output scaled to about 0.5 +- 0.25),
saves them with ``CPnet.save_model`` under Cellpose-style names (``denoise_test_nuclei``, diam_mean 17;
``upsample_test_cyto``, diam_mean 30) and restores the bundled sample with them.  fastpose loads the same files
and restores the same images here.

The diameters are chosen where Cellpose's truncated sizes (``int(n * diam_mean / diameter)``) equal fastpose's
rounded ones; elsewhere the two differ by a pixel of size on purpose (see :mod:`fastpose.restore`).

Without the reference environment these tests skip; ``scripts/test.sh`` sets ``FASTPOSE_REQUIRE_COMPAT=1``, so in
the test command they must run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers import run_cellpose3
from fastpose.io import sample_paths
from fastpose.models import load_model, spec_of
from fastpose.restore import Restorer, restore
from fastpose.transforms import scaled_size

TOL = 1e-4  # max abs difference of the restored images (about 0-1) from Cellpose's
DIAM = {"denoise_test_nuclei": 17.0, "upsample_test_cyto": 30.0}


@pytest.fixture(scope="module")
def cp3r(tmp_path_factory) -> dict:
    """Cellpose 3's restoration outputs: the two network files and one npz per case (see the script)."""
    d = tmp_path_factory.mktemp("cellpose3_restore") / "out"
    info = run_cellpose3("cellpose3_restore_reference.py", [d, sample_paths()[0]])
    assert info["cellpose"].startswith("3."), info
    return {"dir": d, "info": info}


def _case(cp3r: dict, case: str) -> dict:
    return dict(np.load(cp3r["dir"] / f"{case}.npz"))


def _restore(cp3r: dict, image: np.ndarray, net: str, **kw) -> np.ndarray:
    return restore(image, str(cp3r["dir"] / net), device="cpu", backend="torch", **kw)


def _same_size_as_cellpose(shape, ratio: float) -> None:
    """The case is one where fastpose's rounded resized size is Cellpose's truncated one."""
    assert scaled_size(shape, (ratio, ratio)) == tuple(int(n * ratio) for n in shape), (shape, ratio)


@pytest.mark.parametrize("case,net", [
    ("denoise_d17", "denoise_test_nuclei"),      # diameter == diam_mean: not resized
    ("denoise_d25.5", "denoise_test_nuclei"),    # resized 260x347 -> 173x231 and back (eval channels=[0, 0])
    ("upsample_d30", "upsample_test_cyto"),      # an upsample model at diameter == diam_mean: not interpolated
])
def test_restore_matches_cellpose3(cp3r, case, net):
    """``restore`` of a Cellpose restoration file = ``DenoiseModel.eval``: the same percentile normalisation,
    bilinear resizing, padding (a multiple of 16 plus 8 px per side: the spec's ``pad_border``), 224 px tiles
    and blending (measured: < 1e-5)."""
    ref = _case(cp3r, case)
    img, diameter = ref["img"], float(ref["diameter"])
    _same_size_as_cellpose(img.shape, DIAM[net] / diameter)
    assert ref["out"].shape == img.shape + (1,)
    cp = ref["out"][..., 0]
    assert cp.std() > 0.01 and np.isfinite(cp).all()  # not a degenerate reference
    out = _restore(cp3r, img, net, diameter=diameter)
    assert out.shape == img.shape and out.dtype == np.float32
    assert float(np.abs(out - cp).max()) <= TOL


def test_two_channel_restore_vs_cellpose3(cp3r):
    """A 2-channel image [Y, X, 2] (``eval(channels=None, channel_axis=2)``): both restore channel by channel
    with the one network, each channel normalised to its own percentiles; channel 0 is the same.

    Channel 1 is not, at the same diameter: ``DenoiseModel.eval`` resizes channel 1 by ``rescale * 30 / 17``
    (``rescale0``, meant for the nuclear network of ``chan2=True``, whose objects are 17 px where the main
    network's are 30) even when no second network is loaded, so its network sees channel 1's objects 30/17
    times larger than channel 0's -- whatever the model's diam_mean (here 17).  fastpose restores every channel
    at ``diam_mean / diameter``; restoring channel 1 at ``diameter * 17 / 30`` reproduces Cellpose's."""
    ref = _case(cp3r, "denoise2ch_d25.5")
    img, diameter, net = ref["img"], float(ref["diameter"]), "denoise_test_nuclei"
    assert img.shape[-1] == 2 and ref["out"].shape == img.shape
    assert ref["out"].std(axis=(0, 1)).min() > 0.01
    r = DIAM[net] / diameter
    _same_size_as_cellpose(img.shape[:2], r)
    _same_size_as_cellpose(img.shape[:2], r * 30.0 / 17.0)

    out = _restore(cp3r, img, net, diameter=diameter, channel_axis=-1)
    assert out.shape == img.shape
    assert float(np.abs(out[..., 0] - ref["out"][..., 0]).max()) <= TOL
    assert float(np.abs(out[..., 1] - ref["out"][..., 1]).max()) > 100 * TOL  # Cellpose's 30/17 (measured ~0.38)

    ch1 = _restore(cp3r, img, net, diameter=diameter * 17.0 / 30.0, channel_axis=-1, channels=[1])
    assert ch1.shape == img.shape[:2] + (1,)
    assert float(np.abs(ch1[..., 0] - ref["out"][..., 1]).max()) <= TOL


def test_upsample_model_scale_model_has_cellposes_output_shape(cp3r):
    """An ``upsample_*`` model at diameter < diam_mean: Cellpose returns the image upsampled by
    ``ratio = diam_mean / diameter``; fastpose's ``scale="model"`` output has that shape.  The values differ on
    purpose (the next test): fastpose's network sees objects at diam_mean px, Cellpose's at ``ratio`` times that."""
    ref = _case(cp3r, "upsample_d24.2")
    img, diameter, net = ref["img"], float(ref["diameter"]), "upsample_test_cyto"
    ratio = DIAM[net] / diameter
    _same_size_as_cellpose(img.shape, ratio)
    assert ref["out"].shape == tuple(int(n * ratio) for n in img.shape) + (1,)
    out = _restore(cp3r, img, net, diameter=diameter, scale="model")
    assert out.shape == ref["out"].shape[:2]
    assert float(np.abs(out - ref["out"][..., 0]).max()) > 100 * TOL  # measured ~0.31 (median ~0.01)


def test_upsample_model_cellpose_rescales_twice(cp3r):
    """Cellpose 3.1 rescales an ``upsample_*`` model's input twice, shown numerically.

    ``DenoiseModel.eval`` first interpolates the image by ``ratio = diam_mean / diameter`` (cv2 INTER_LINEAR,
    for "upsample" in the file's path and 3 <= diameter < diam_mean) and then, in ``_eval``, resizes that
    image by ``diam_mean / diameter`` *again* for the network and back to the interpolated size.  So
    ``restore`` of the already-interpolated image at the same ``diameter`` (which applies the second rescale)
    reproduces Cellpose's output to < 1e-4: Cellpose's network sees objects at ``ratio ** 2`` times their size,
    ``diam_mean * ratio`` px (here 30 * 1.24 = 37 px) instead of the ``diam_mean`` px the model is trained at.
    fastpose rescales once (:mod:`fastpose.restore`).

    The interpolation is Cellpose's own (saved by the script) and, again, torch's bilinear resize
    (``align_corners=False``, what fastpose resizes with), which agrees with cv2's to float32 rounding."""
    ref = _case(cp3r, "upsample_d24.2")
    img, interp, diameter, net = ref["img"], ref["interp"], float(ref["diameter"]), "upsample_test_cyto"
    ratio = DIAM[net] / diameter
    assert interp.shape == ref["out"].shape[:2]
    _same_size_as_cellpose(interp.shape, ratio)  # the second rescale: 322x430 -> 399x533 for the network
    cp = ref["out"][..., 0]
    assert cp.std() > 0.01

    twice = _restore(cp3r, interp, net, diameter=diameter)
    assert twice.shape == cp.shape
    assert float(np.abs(twice - cp).max()) <= TOL

    t = F.interpolate(torch.from_numpy(img.astype(np.float32))[None, None], size=interp.shape, mode="bilinear",
                      align_corners=False)[0, 0].numpy()
    assert float(np.abs(t - interp).max()) <= 1e-2  # 0-255 intensities; measured ~1.5e-3
    twice_torch = _restore(cp3r, t, net, diameter=diameter)
    assert float(np.abs(twice_torch - cp).max()) <= TOL


@pytest.mark.parametrize("net", sorted(DIAM))
def test_cellpose3_restore_files_load(cp3r, net):
    """A Cellpose restoration file (a bare CPnet state dict, one input and one output map) loads as a
    "restore" model with the diam_mean stored in it and Cellpose's extra 8 px border."""
    path = cp3r["dir"] / net
    model, meta = load_model(path)
    assert meta["format"] == "cellpose" and meta["nchan"] == 1
    assert meta["diam_mean"] == pytest.approx(DIAM[net])
    spec = spec_of(model, meta)
    assert spec.family == "restore" and spec.outputs == ("restored",) and spec.pad_border == 8
    assert spec.diam_mean == pytest.approx(DIAM[net])
    r = Restorer(str(path), device="cpu", backend="torch")
    assert r.diam_mean == pytest.approx(DIAM[net]) and r.spec.family == "restore"
