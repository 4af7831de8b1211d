"""fastpose.models: the CPnet-compatible U-Net, the Cellpose-SAM style ViT and model files.

Reference values come from the real Cellpose code:
* ``tests/data/models/cpnet_tiny.pth`` / ``cpnet_tiny_io.npz`` were written by Cellpose 3.1.1.3's CPnet
  (``tests/data/models/make_cpnet_fixture.py``, run with the Cellpose 3 venv);
* the comparisons with the Cellpose packages themselves (Cellpose 3 writing and evaluating checkpoints,
  Cellpose 4's CPSAM) are in ``test_compat_cellpose.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fastpose.models import (BUILTIN_MODELS, DEFAULT_NORMALIZE, FORMAT, VIT_PRESETS, UNet, ViT, build_model,
                             load_model, save_model, to_three_channels)
from fastpose.models.files import _infer_vit

from compat.randomize import randomize_bn

DATA = Path(__file__).resolve().parent / "data" / "models"

# sum(p.numel() for p in cellpose.resnet_torch.CPnet([2, 32, 64, 128, 256], 3, 3).parameters()) with
# Cellpose 3.1.1.3 (/tmp/cpvenv/bin/python); includes the two 1-element diam_mean / diam_labels parameters.
CPNET_DEFAULT_PARAMS = 6_600_845
# sum(v.numel() for v in cellpose.vit.CPSAM().state_dict().values()) with Cellpose 4.2.1.1 (includes W2)
CPSAM_STATE_NUMEL = 304_628_930


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make BatchNorm stats/affine non-trivial so that loaders that drop them fail the tests."""
    return randomize_bn(model, torch.Generator().manual_seed(seed)).eval()


def _randomize_vit(model: ViT, seed: int = 0) -> ViT:
    """Non-zero position tables (zero-initialised by default) and perturbed norms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in model.named_parameters():
            if "rel_pos" in k or "pos_embed" in k:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "norm" in k or k.startswith("encoder.neck.1") or k.startswith("encoder.neck.3"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


# --------------------------------------------------------------------------------------------------
# U-Net
# --------------------------------------------------------------------------------------------------

def test_unet_forward_shapes_and_style_norm():
    torch.manual_seed(0)
    net = _randomize_bn(UNet())
    x = torch.randn(2, 2, 64, 48)
    with torch.no_grad():
        out, style = net(x)
    assert out.shape == (2, 3, 64, 48)
    assert style.shape == (2, 256)
    assert torch.allclose(torch.linalg.vector_norm(style, dim=1), torch.ones(2), atol=1e-5)
    # configurable widths / depth / outputs
    small = UNet([1, 4, 8], nout=4).eval()
    with torch.no_grad():
        o, s = small(torch.randn(1, 1, 34, 18))
    assert o.shape == (1, 4, 34, 18) and s.shape == (1, 8)


def test_unet_bad_inputs():
    net = UNet([2, 4, 8, 16, 32]).eval()
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 2, 60, 64))
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 2, 64, 36))
    with pytest.raises(ValueError, match="input channels"):
        net(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError):
        net(torch.zeros(2, 64, 64))
    with pytest.raises(ValueError):
        UNet([2])


def test_unet_param_count_and_names_match_cpnet():
    net = UNet()
    assert sum(p.numel() for p in net.parameters()) == CPNET_DEFAULT_PARAMS
    sd = net.state_dict()
    expect = {
        "diam_mean": (1,), "diam_labels": (1,),
        "downsample.down.res_down_0.conv.conv_0.0.weight": (2,),
        "downsample.down.res_down_0.conv.conv_0.2.weight": (32, 2, 3, 3),
        "downsample.down.res_down_0.proj.1.weight": (32, 2, 1, 1),
        "downsample.down.res_down_3.conv.conv_3.0.running_var": (256,),
        "upsample.up.res_up_3.conv.conv_0.2.weight": (256, 256, 3, 3),
        "upsample.up.res_up_3.conv.conv_1.full.weight": (256, 256),
        "upsample.up.res_up_0.conv.conv_3.full.weight": (32, 256),
        "upsample.up.res_up_0.proj.1.weight": (32, 64, 1, 1),
        "output.0.weight": (32,), "output.2.weight": (3, 32, 1, 1),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert len(sd) == 313  # CPnet([2, 32, 64, 128, 256], 3, 3).state_dict() has 340 entries


# --------------------------------------------------------------------------------------------------
# Cellpose checkpoints
# --------------------------------------------------------------------------------------------------

def test_load_cellpose_cpnet_fixture():
    path = DATA / "cpnet_tiny.pth"
    ref_sd = torch.load(path, map_location="cpu", weights_only=True)
    model, meta = load_model(path)
    assert isinstance(model, UNet) and not model.training
    assert model.nbase == [2, 4, 8, 16, 32] and model.nout == 3
    assert meta["format"] == "cellpose" and meta["arch"]["type"] == "unet" and meta["nchan"] == 2
    assert meta["diam_mean"] == pytest.approx(17.0) and meta["diam_labels"] == pytest.approx(15.5)
    assert model.fastpose_meta is meta
    sd = model.state_dict()
    assert list(sd) == list(ref_sd)
    for k, v in ref_sd.items():
        assert torch.equal(sd[k], v), k
    # plain load_state_dict into a fresh UNet also works (strict)
    UNet([2, 4, 8, 16, 32]).load_state_dict(ref_sd)

    io = np.load(DATA / "cpnet_tiny_io.npz")
    with torch.no_grad():
        out, style = model(torch.from_numpy(io["x"]))
    np.testing.assert_allclose(out.numpy(), io["out"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(style.numpy(), io["style"], atol=1e-5, rtol=0)
    assert np.abs(io["out"]).max() > 0.5  # fixture is not degenerate


def test_cellpose_state_dict_variants(tmp_path):
    torch.manual_seed(1)
    net = _randomize_bn(UNet([2, 4, 8, 16], diam_mean=21.0))
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        ref_out, _ = net(x)
    # DataParallel prefix
    p = tmp_path / "dp.pth"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, p)
    m, meta = load_model(p)
    assert meta["diam_mean"] == pytest.approx(21.0)
    with torch.no_grad():
        assert torch.equal(m(x)[0], ref_out)
    # Cellpose 1 style: no diam_mean / diam_labels parameters -> defaults
    p = tmp_path / "cp1.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("diam_")}, p)
    m, meta = load_model(p)
    assert meta["diam_mean"] == pytest.approx(30.0)
    with torch.no_grad():
        assert torch.equal(m(x)[0], ref_out)


# --------------------------------------------------------------------------------------------------
# ViT
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["vit_t", "vit_s"])
def test_vit_forward_shapes(preset):
    torch.manual_seed(0)
    net = _randomize_vit(ViT.from_preset(preset))
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        out, style = net(x)
    assert out.shape == (1, 3, 256, 256) and style.shape == (1, 256)
    assert torch.isfinite(out).all()
    assert torch.allclose(torch.linalg.vector_norm(style, dim=1), torch.ones(1), atol=1e-5)
    if preset == "vit_t":
        with torch.no_grad():
            out2, _ = net(x[:, :2])  # fewer channels: leading kernel slices, as in Cellpose-SAM
            out3, _ = net(to_three_channels(x[:, :2]))
        assert out2.shape == (1, 3, 256, 256)
        assert torch.allclose(out2, out3, atol=1e-5)  # zero-padded channel == fewer kernel slices
    with pytest.raises(ValueError, match="256x256"):
        net(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="at most 3"):
        net(torch.zeros(1, 4, 256, 256))


def test_vit_readout_is_pixel_shuffle():
    net = ViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2).eval()
    feat = torch.randn(1, 3 * 64, 4, 4)
    y = torch.nn.functional.conv_transpose2d(feat, net.W2, stride=8)
    assert torch.equal(y, torch.nn.functional.pixel_shuffle(feat, 8))


def test_to_three_channels():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    y = to_three_channels(x)
    assert y.shape == (3, 4, 4) and torch.equal(y[:2], x) and not y[2].any()
    y = to_three_channels(x[None], order=[1, 0])
    assert torch.equal(y[0, 0], x[1]) and torch.equal(y[0, 1], x[0])
    z = to_three_channels(torch.randn(1, 5, 4, 4))
    assert z.shape == (1, 3, 4, 4)
    with pytest.raises(ValueError):
        to_three_channels(x, order=[2])


# Cellpose 4.2.1.1 CPSAM state dict: a few (name, shape) entries, taken from CPSAM().state_dict()
CPSAM_KEYS = {
    "diam_labels": (1,), "diam_mean": (1,), "W2": (192, 3, 8, 8),
    "encoder.pos_embed": (1, 32, 32, 1024),
    "encoder.patch_embed.proj.weight": (1024, 3, 8, 8),
    "encoder.blocks.0.attn.rel_pos_h": (27, 64),
    "encoder.blocks.5.attn.rel_pos_w": (127, 64),
    "encoder.blocks.0.attn.qkv.weight": (3072, 1024),
    "encoder.blocks.23.mlp.lin1.weight": (4096, 1024),
    "encoder.blocks.23.mlp.lin2.bias": (1024,),
    "encoder.neck.0.weight": (256, 1024, 1, 1),
    "encoder.neck.1.bias": (256,),
    "encoder.neck.2.weight": (256, 256, 3, 3),
    "out.weight": (192, 256, 1, 1), "out.bias": (192,),
}


def test_vit_l_matches_cpsam_names_and_shapes():
    with torch.device("meta"):
        net = ViT.from_preset("vit_l")
    sd = net.state_dict()
    assert len(sd) == 350
    assert sum(v.numel() for v in sd.values()) == CPSAM_STATE_NUMEL
    for k, shape in CPSAM_KEYS.items():
        assert tuple(sd[k].shape) == shape, k
    assert list(sd)[:4] == ["diam_labels", "diam_mean", "W2", "encoder.pos_embed"]
    # the loader recognises such a state dict as vit_l
    arch = _infer_vit(sd)
    assert arch == net.arch()
    assert arch["embed_dim"] == VIT_PRESETS["vit_l"]["embed_dim"] and arch["depth"] == 24
    # against Cellpose 4's own CPSAM: test_compat_cellpose.py


def test_load_cellpose_sam_style_file(tmp_path):
    torch.manual_seed(0)
    net = _randomize_vit(ViT.from_preset("vit_t", rel_pos_len=[27, 63, 27, 127]))
    p = tmp_path / "cpsam_like.pth"
    torch.save(net.state_dict(), p)  # bare state dict, as Cellpose-SAM saves
    m, meta = load_model(p)
    assert isinstance(m, ViT) and meta["format"] == "cellpose-sam" and meta["nchan"] == 3
    assert meta["arch"] == net.arch()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(m(x)[0], net(x)[0])


# --------------------------------------------------------------------------------------------------
# model files
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("half", [False, True])
def test_unet_file_round_trip(tmp_path, half):
    torch.manual_seed(2)
    net = _randomize_bn(UNet([2, 4, 8, 16, 32], diam_mean=17.0))
    size_model = {"A": np.linspace(0, 1, 32), "smean": np.zeros(32, np.float32), "ymean": np.float64(0.25)}
    meta_in = {"diam_labels": 14.0, "size_model": size_model, "normalize": {"lower": 2.0, "upper": 98.0,
                                                                              "invert": True},
               "extra": {"trained_on": "tests", "epochs": 3}}
    path = save_model(tmp_path / "m.pth", net, meta_in, half=half)
    assert sorted(os.listdir(tmp_path)) == ["m.pth"]  # atomic: no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["version"] == 1 and raw["arch"]["type"] == "unet"
    assert raw["state_dict"]["downsample.down.res_down_0.proj.1.weight"].dtype == \
           (torch.float16 if half else torch.float32)
    model, meta = load_model(path)
    assert isinstance(model, UNet) and model.nbase == [2, 4, 8, 16, 32]
    assert next(model.parameters()).dtype == torch.float32
    assert meta["diam_mean"] == 17.0 and meta["diam_labels"] == 14.0 and meta["nchan"] == 2
    assert meta["normalize"] == meta_in["normalize"] and meta["extra"] == meta_in["extra"]
    np.testing.assert_allclose(meta["size_model"]["A"], size_model["A"])
    assert meta["size_model"]["ymean"] == 0.25
    x = torch.randn(2, 2, 64, 64)
    with torch.no_grad():
        ref_out, ref_style = net(x)
        out, style = model(x)
    if half:
        scale = float(ref_out.abs().max())
        assert float((out - ref_out).abs().max()) <= 2e-2 * scale
        assert float((style - ref_style).abs().max()) <= 1e-2
    else:
        assert torch.equal(out, ref_out) and torch.equal(style, ref_style)


def test_vit_file_round_trip_half(tmp_path):
    torch.manual_seed(0)
    net = _randomize_vit(ViT.from_preset("vit_t"))
    p32 = save_model(tmp_path / "v32.pth", net)
    p16 = save_model(tmp_path / "v16.pth", net, half=True)
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    m, meta = load_model(p16)
    assert isinstance(m, ViT) and meta["arch"] == net.arch() and meta["normalize"] == DEFAULT_NORMALIZE
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ref, _ = net(x)
        out, _ = m(x)
    assert float((out - ref).abs().max()) <= 2e-2 * float(ref.abs().max())
    # a preset-only arch dict also builds
    assert isinstance(build_model({"type": "vit", "preset": "vit_t"}), ViT)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    net = UNet([2, 4, 8])
    path = save_model(tmp_path / "m.pth", net)
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(path, UNet([2, 8, 16]))
    assert sorted(os.listdir(tmp_path)) == ["m.pth"] and path.read_bytes() == before
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown meta keys"):
        save_model(path, net, {"bogus": 1})
    with pytest.raises(ValueError, match="unsupported type"):
        save_model(path, net, {"extra": {"obj": object()}})
    assert sorted(os.listdir(tmp_path)) == ["m.pth"]


def test_bad_files(tmp_path):
    rnd = tmp_path / "random.pth"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    txt = tmp_path / "notes.txt"
    txt.write_text("this is not a model\n")
    nofmt = tmp_path / "nofmt.pth"
    torch.save({"weights": torch.zeros(3), "epoch": 3}, nofmt)
    other = tmp_path / "other.pth"
    torch.save({"format": "something-else", "version": 1}, other)
    newer = tmp_path / "newer.pth"
    torch.save({"format": FORMAT, "version": 99, "arch": {"type": "unet"}, "state_dict": {}}, newer)
    alist = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], alist)
    unk_sd = tmp_path / "unknown_sd.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, unk_sd)
    for p, pat in [(rnd, "cannot load model .*not a PyTorch file"), (txt, "cannot load model .*text file"), (nofmt, "without 'format'"),
                   (other, "unknown model format"), (newer, "version 99"), (alist, "not a model"),
                   (unk_sd, "unrecognised state dict")]:
        with pytest.raises(ValueError, match=pat) as ei:
            load_model(p)
        if pat != "version 99":
            assert "expected" in str(ei.value)
    with pytest.raises(ValueError, match="not a file"):
        load_model(tmp_path)


def test_unknown_name_and_builtin_registry(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="available built-in models"):
        load_model("no_such_model_xyz")
    p = save_model(tmp_path / "tiny.pth", UNet([2, 4, 8]), {"diam_mean": 12.0})
    monkeypatch.setitem(BUILTIN_MODELS, "tiny", str(p))
    monkeypatch.setitem(BUILTIN_MODELS, "lazy", lambda: p)
    with pytest.raises(ValueError, match="cyto, lazy, nuclei, oneclick_nuclei, tiny"):
        load_model("no_such_model_xyz")
    for name in ("tiny", "lazy"):
        m, meta = load_model(name, device="cpu")
        assert isinstance(m, UNet) and meta["diam_mean"] == 12.0
