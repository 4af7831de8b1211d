"""Compatibility with the real Cellpose packages, compared number by number.

* Cellpose 3 (``resnet_torch.CPnet``, ``models.CellposeModel``) runs in its own environment ``build-cp3``
  (``scripts/test.sh`` makes it), driven by ``tests/compat/cellpose3_reference.py``: it writes checkpoints with
  its own ``save_model`` and evaluates them, and fastpose loads and runs the same files here.
* Cellpose 4 (``cellpose.vit.CPSAM``) is installed beside fastpose (``cellpose`` and ``segment_anything``
  without their dependencies: see :func:`_helpers.cellpose4_vit`).

Without the reference packages these tests skip; ``scripts/test.sh`` sets ``FASTPOSE_REQUIRE_COMPAT=1``, so in
the test command they must run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastpose.core as fc
from _helpers import ap_at, cellpose4_vit, run_cellpose3
from fastpose.inference import segment
from fastpose.io import read_image, sample_paths
from fastpose.models import UNet, ViT, load_model

DIAM_MEAN = 17.0  # of the bundled nuclei model


# --------------------------------------------------------------------------------------------------
# Cellpose 3, in its own environment
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cp3(tmp_path_factory) -> dict:
    """Cellpose 3's outputs: fresh CPnet files and CellposeModel.eval of the bundled sample with the bundled
    nuclei weights written as a Cellpose file (a bare float32 state dict, as Cellpose saves it)."""
    d = tmp_path_factory.mktemp("cellpose3")
    net, meta = load_model("nuclei")
    assert meta["diam_mean"] == DIAM_MEAN
    model = d / "nuclei_cellpose.pth"
    torch.save({k: v.float() for k, v in net.state_dict().items()}, model)
    img_path = sample_paths()[0]
    info = run_cellpose3("cellpose3_reference.py", [d / "out", model, img_path])
    assert info["cellpose"].startswith("3."), info
    return {"dir": d / "out", "model": model, "image": read_image(img_path), "info": info}


@pytest.mark.parametrize("name", ["default", "narrow"])
def test_cellpose3_cpnet_files_load_and_match(cp3, name):
    """A CPnet checkpoint written by Cellpose 3 loads as a fastpose UNet giving Cellpose's outputs."""
    ref = np.load(cp3["dir"] / f"cpnet_{name}.npz")
    model, meta = load_model(cp3["dir"] / f"cpnet_{name}.pth")
    assert isinstance(model, UNet) and meta["format"] == "cellpose"
    assert model.nbase == ref["nbase"].tolist() and meta["nchan"] == int(ref["nbase"][0])
    assert meta["diam_mean"] == pytest.approx(21.0) and meta["diam_labels"] == pytest.approx(19.5)
    with torch.no_grad():
        out, style = model(torch.from_numpy(ref["x"]))
    scale = max(1.0, float(np.abs(ref["out"]).max()))
    assert float(np.abs(out.numpy() - ref["out"]).max()) <= 1e-5 * scale
    np.testing.assert_allclose(style.numpy(), ref["style"], atol=1e-6, rtol=0)
    assert np.abs(ref["out"]).max() > 0.1  # not a degenerate reference


def _cellpose_padded(img: np.ndarray) -> tuple:
    """Cellpose 3's network input for a 2D image at diameter == diam_mean: 1/99 percentile normalisation, then
    zero padding to a multiple of 16 plus 8 pixels on every side (``transforms.get_pad_yx``, extra=1)."""
    x = img.astype(np.float32)
    lo, hi = np.percentile(x, 1), np.percentile(x, 99)
    x = (x - lo) / (hi - lo)
    pads = []
    for n in x.shape:
        p = int(16 * np.ceil(n / 16) - n)
        pads.append((8 + p // 2, 8 + p - p // 2))
    return np.pad(x, pads), [slice(a, a + n) for (a, _), n in zip(pads, x.shape)]


def test_tiled_network_matches_cellpose3_on_its_padded_input(cp3):
    """Trained weights through fastpose's tiling, network and blending vs Cellpose 3's ``run_net``, on the
    input Cellpose builds (its extra 8-pixel border included): the same flows, probabilities and style."""
    ref = np.load(cp3["dir"] / f"eval_d{DIAM_MEAN:g}.npz")
    x, (sy, sx) = _cellpose_padded(cp3["image"])
    r = segment(x, str(cp3["model"]), device="cpu", diameter=DIAM_MEAN, normalize=False, return_flows=True)
    np.testing.assert_allclose(r.flows[:, sy, sx], ref["dP"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(r.cellprob[sy, sx], ref["cellprob"], atol=2e-4, rtol=0)
    np.testing.assert_allclose(r.styles, ref["styles"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("diameter", [DIAM_MEAN, 25.0])
def test_compute_masks_on_cellpose3_outputs(cp3, diameter):
    """fastpose's mask recovery on Cellpose 3's own flows and probabilities gives Cellpose 3's masks."""
    ref = np.load(cp3["dir"] / f"eval_d{diameter:g}.npz")
    assert ref["masks"].max() >= 60
    masks = fc.compute_masks(ref["dP"], ref["cellprob"], flow_threshold=0.4, cellprob_threshold=0.0)
    assert abs(int(masks.max()) - int(ref["masks"].max())) <= 2
    assert ap_at(ref["masks"], masks, 0.5) >= 0.97
    assert ap_at(ref["masks"], masks, 0.9) >= 0.95


@pytest.mark.parametrize("diameter", [DIAM_MEAN, 25.0])
def test_segment_end_to_end_vs_cellpose3(cp3, diameter):
    """``segment`` with the Cellpose file vs ``CellposeModel.eval``: nearly the same masks.

    Not identical: Cellpose 3 pads every side by 8 more pixels than fastpose before tiling (see the test
    above), which changes the tiles, the style vector and so every output slightly (up to ~1.6 in flows and
    ~3.5 in logits at the image border on this sample)."""
    ref = np.load(cp3["dir"] / f"eval_d{diameter:g}.npz")
    r = segment(cp3["image"], str(cp3["model"]), device="cpu", diameter=diameter, return_flows=True,
                flow_threshold=0.4, cellprob_threshold=0.0)
    assert r.masks.shape == ref["masks"].shape
    assert abs(int(r.masks.max()) - int(ref["masks"].max())) <= 5
    assert ap_at(ref["masks"], r.masks, 0.5) >= 0.93
    assert float(np.median(np.abs(r.cellprob - ref["cellprob"]))) < 0.2
    assert float(np.median(np.abs(r.flows - ref["dP"]))) < 0.1


# --------------------------------------------------------------------------------------------------
# Cellpose 4 (Cellpose-SAM), in this environment
# --------------------------------------------------------------------------------------------------

def _cpsam_two_blocks(vit) -> torch.nn.Module:
    """Cellpose-SAM truncated to encoder blocks 0 (windowed-size position tables) and 5 (global), with random
    weights of sensible scale, a non-trivial readout W2 and non-default diameters."""
    with torch.device("meta"):
        ref = vit.CPSAM()
    ref.encoder.blocks = torch.nn.ModuleList([ref.encoder.blocks[0], ref.encoder.blocks[5]])
    ref = ref.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for k, p in ref.named_parameters():
            if k == "W2":
                p.copy_(torch.eye(192).reshape(192, 3, 8, 8))
            elif k.endswith("bias") or "pos" in k:
                p.copy_(0.1 * torch.randn_like(p))
            elif "norm" in k or k.startswith("encoder.neck.1") or k.startswith("encoder.neck.3"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / max(1, p[0].numel()) ** 0.5)
        ref.diam_mean.fill_(30.0)
        ref.diam_labels.fill_(27.5)
    return ref.eval()


def test_vit_l_names_and_shapes_are_cpsam():
    vit = cellpose4_vit()
    with torch.device("meta"):
        ref = vit.CPSAM()
        net = ViT.from_preset("vit_l")
    assert [(k, v.shape) for k, v in ref.state_dict().items()] == \
           [(k, v.shape) for k, v in net.state_dict().items()]


def test_vit_against_cellpose_sam_and_its_files(tmp_path):
    """Numerical check against Cellpose-SAM's forward, and a file written by Cellpose 4's ``save_model``
    loaded by fastpose's ``load_model`` (architecture inferred) gives the same outputs."""
    ref = _cpsam_two_blocks(cellpose4_vit())
    net = ViT.from_preset("vit_l", depth=2, rel_pos_len=[27, 127])
    net.load_state_dict(ref.state_dict())
    net.eval()
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        o_ref, s_ref = ref(x)
        o, s = net(x)
    scale = max(1.0, float(o_ref.abs().max()))
    assert float((o - o_ref).abs().max()) <= 1e-4 * scale
    assert float(o_ref.abs().max()) > 0.1

    path = tmp_path / "cpsam_2blocks.pth"
    ref.save_model(str(path))
    m, meta = load_model(path)
    assert isinstance(m, ViT) and meta["format"] == "cellpose-sam" and meta["nchan"] == 3
    assert meta["arch"] == net.arch()
    assert meta["diam_mean"] == pytest.approx(30.0) and meta["diam_labels"] == pytest.approx(27.5)
    with torch.no_grad():
        o2, _ = m(x)
    assert torch.equal(o2, o)
