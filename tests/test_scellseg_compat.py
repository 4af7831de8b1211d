"""fastpose's sCSnet against the authors' code and published weights (Scellseg 0.1.8, cellimnet/scellseg-publish).

The reference is Scellseg's own network code (``scellseg/net_desc.py`` + ``net_utils.py``) imported by path from
its sdist, which ``scripts/test.sh`` unpacks into ``build-refs/`` (``FASTPOSE_SCELLSEG_SRC``); the package's other
modules (GUI, OpenCV, numba) are stubbed, since the network code only needs PyTorch.  Without the sdist these
tests skip (fail under ``FASTPOSE_REQUIRE_COMPAT=1``, as in ``scripts/test.sh``).
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch

from _helpers import REPO, missing_reference
from fastpose.models import UNet, load_model
from fastpose.scellseg import SCSNet, from_cellpose_state_dict

SRC = Path(os.environ.get("FASTPOSE_SCELLSEG_SRC", REPO / "build-refs" / "scellseg-0.1.8"))
PKG = SRC / "scellseg"


@pytest.fixture(scope="module")
def ref():
    """The authors' ``scellseg.net_desc`` module (their sCSnet)."""
    if not (PKG / "net_desc.py").is_file():
        missing_reference(f"Scellseg 0.1.8's source ({PKG}/net_desc.py)")
    saved = {k: v for k, v in sys.modules.items() if k == "scellseg" or k.startswith("scellseg.") or k == "cv2"}
    pkg = types.ModuleType("scellseg")
    pkg.__path__ = [str(PKG)]
    sys.modules["scellseg"] = pkg
    for m in ("transforms", "io", "dynamics", "utils", "metrics", "dataset", "core"):
        sys.modules[f"scellseg.{m}"] = types.ModuleType(f"scellseg.{m}")
        setattr(pkg, m, sys.modules[f"scellseg.{m}"])
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))
    import importlib

    with pytest.warns(UserWarning):  # their LossFn passes the deprecated size_average
        nd = importlib.import_module("scellseg.net_desc")
        nd.sCSnet([2, 32, 64, 128, 256], 3, 3)
    yield nd
    for k in [k for k in sys.modules if k == "scellseg" or k.startswith("scellseg.") or k == "cv2"]:
        del sys.modules[k]
    sys.modules.update(saved)


def _theirs(nd, **switches):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nd.sCSnet([2, 32, 64, 128, 256], 3, 3, **switches).eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_published_scellseg_weights_give_the_authors_outputs(ref):
    path = PKG / "assets" / "pretrained_models" / "scellseg"
    theirs = _theirs(ref, attn_on=True, dense_on=True, style_scale_on=True)
    assert not theirs.load_state_dict(torch.load(path, map_location="cpu"), strict=True).missing_keys
    mine, meta = load_model(path, device="cpu")
    assert isinstance(mine, SCSNet) and meta["format"] == "scellseg"
    assert meta["arch"] == {"type": "scellseg", "nbase": [2, 32, 64, 128, 256], "nout": 3, "sz": 3,
                            "attention": True, "dense": True, "hierarchical_style": True}
    x = torch.randn(2, 2, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y_ref, s_ref = theirs(x)
        y, s = mine.eval()(x)
    _close(y, y_ref)
    _close(s, s_ref)


@pytest.mark.parametrize("switches", [dict(attn_on=True), dict(dense_on=True), dict(style_scale_on=True),
                                      dict(attn_on=True, style_scale_on=True)])
def test_each_switch_matches_the_authors_network(ref, switches):
    """Random weights of the authors' network (each switch alone and a pair) load into fastpose's, same outputs."""
    full = {"attn_on": False, "dense_on": False, "style_scale_on": False, **switches}
    torch.manual_seed(1)
    theirs = _theirs(ref, **full)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    mine, _ = load_model_from(theirs.state_dict())
    assert (mine.attention, mine.dense, mine.hierarchical_style) == \
        (full["attn_on"], full["dense_on"], full["style_scale_on"])
    x = torch.randn(1, 2, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y_ref, s_ref = theirs(x)
        y, s = mine.eval()(x)
    _close(y, y_ref)
    _close(s, s_ref)


def load_model_from(sd):
    from fastpose.models import model_from_state_dict

    return model_from_state_dict(sd, "the authors' state dict")


def test_cellpose_weights_load_into_the_switchless_network_as_scellseg_does(ref, tmp_path):
    """Scellseg's bundled Cellpose model (stored in the sCSnet layout, switches off) loads into fastpose as an
    SCSNet; written back in Cellpose's own CPnet layout it loads into fastpose's U-Net, into the authors' sCSnet
    through their ``load_model`` mapping and into fastpose's SCSNet through :func:`from_cellpose_state_dict`: all
    four give the authors' outputs."""
    path = PKG / "assets" / "pretrained_models" / "cellpose"
    scs, meta = load_model(path, device="cpu")
    assert isinstance(scs, SCSNet) and not (scs.attention or scs.dense or scs.hierarchical_style)
    cp = {}
    for k, v in scs.state_dict().items():
        if k.startswith("tasker.base_bn."):
            cp["output.0." + k[len("tasker.base_bn."):]] = v
        elif k.startswith("tasker.base_conv."):
            cp["output.2." + k[len("tasker.base_conv."):]] = v
        elif k.startswith("extractor."):
            cp[k[len("extractor."):]] = v
        else:
            cp[k] = v
    cp_file = tmp_path / "cellpose_layout.pth"
    torch.save(cp, cp_file)
    unet, _ = load_model(cp_file, device="cpu")
    assert isinstance(unet, UNet)
    theirs = _theirs(ref, attn_on=False, dense_on=False, style_scale_on=False)
    theirs.load_model(str(cp_file), cpu=True)
    mine = SCSNet(attention=False, dense=False, hierarchical_style=False)
    assert not mine.load_state_dict(from_cellpose_state_dict(unet.state_dict()), strict=True).missing_keys
    x = torch.randn(1, 2, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y_ref, _ = theirs(x)
        outs = [net.eval()(x)[0] for net in (scs, unet, mine)]
    for y in outs:
        _close(y, y_ref)
