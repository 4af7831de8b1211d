"""Restoration (Cellpose3): model files, restore() per channel and plane, restoration chained in front of
segmentation (one image, streams, volumes), the CLI, the trainer, and bad input.  Parity with Cellpose 3's own
``DenoiseModel.eval`` is in test_restore_compat.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

import fastpose
from _helpers import ap_at
from fastpose.io import sample_paths
from fastpose.models import UNet, load_model, save_model
from fastpose.restore import Restorer, restore
from fastpose.restore.training import (gram_matrices, one_channel_copy, perceptual_loss, seg_loss, train)

NBASE = [1, 8, 16, 32, 64]


@pytest.fixture(scope="module")
def rnet_path(tmp_path_factory):
    """A small random-weight restoration network (diam_mean 17) in fastpose's format."""
    torch.manual_seed(0)
    net = UNet(NBASE, nout=1, diam_mean=17.0)
    with torch.no_grad():  # BatchNorm statistics a loader must keep
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    p = tmp_path_factory.mktemp("restore") / "r.pth"
    save_model(p, net.eval())
    return p


@pytest.fixture(scope="module")
def sample():
    return tifffile.imread(sample_paths()[0])


def test_cellpose_restoration_state_dict_loads_as_a_restoration_model(tmp_path):
    torch.manual_seed(1)
    net = UNet([1, 32, 64, 128, 256], nout=1, diam_mean=17.0).eval()
    p = tmp_path / "denoise_cyto3"                                 # Cellpose's files: a bare state dict
    torch.save(net.state_dict(), p)
    m, meta = load_model(p)
    spec = meta["spec"]
    assert meta["format"] == "cellpose" and spec["family"] == "restore" and spec["outputs"] == ["restored"]
    assert spec["flow_channels"] == [] and spec["pad_border"] == 8 and spec["diam_mean"] == 17.0
    x = torch.randn(1, 1, 64, 48)
    with torch.no_grad():
        assert torch.equal(m(x)[0], net(x)[0])
    # a segmentation checkpoint stays a segmentation model
    seg = UNet([2, 32, 64, 128, 256], nout=3).eval()
    torch.save(seg.state_dict(), tmp_path / "cyto3")
    assert load_model(tmp_path / "cyto3")[1]["spec"]["family"] == "cellpose"


def test_restore_layouts(rnet_path, sample):
    r = Restorer(rnet_path, device="cpu", backend="torch")
    y = r.restore(sample, diameter=25.0)
    assert y.shape == sample.shape and y.dtype == np.float32 and float(y.std()) > 0
    rgb = np.stack([sample, sample[::-1], 255 - sample], -1)
    y3 = r.restore(rgb, channel_axis=-1, diameter=25.0)
    assert y3.shape == rgb.shape
    for c in range(3):  # each channel alone gives the same: channels never mix
        np.testing.assert_allclose(y3[..., c], r.restore(rgb[..., c], diameter=25.0), atol=1e-5)
    two = r.restore(rgb, channel_axis=-1, channels=[2, 0], diameter=25.0)
    assert two.shape == (*sample.shape, 2)
    np.testing.assert_allclose(two[..., 0], y3[..., 2], atol=1e-5)
    stack = np.stack([sample[:64, :80]] * 3)
    ys = r.restore(stack, z_axis=0)
    assert ys.shape == stack.shape
    np.testing.assert_allclose(ys[1], r.restore(stack[1]), atol=1e-5)
    up = r.restore(sample, diameter=8.5, scale="model")            # the network's scale: 2x
    assert up.shape == (2 * sample.shape[0], 2 * sample.shape[1])


def test_restore_bad_input(rnet_path, sample):
    r = Restorer(rnet_path, device="cpu", backend="torch")
    bad = sample.astype(np.float32)
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        r.restore(bad)
    with pytest.raises(ValueError, match="channel_axis"):
        r.restore(np.zeros((3, 40, 40)))                          # 3D without naming the axes: never a guess
    with pytest.raises(ValueError, match="out of range"):
        r.restore(np.zeros((40, 40, 3)), channel_axis=-1, channels=[3])
    with pytest.raises(ValueError, match="diameter"):
        r.restore(sample, diameter=-1)
    flat = r.restore(np.full((40, 50), 7, np.uint16))               # documented: nothing to restore -> zeros
    assert flat.shape == (40, 50) and not flat.any()
    with pytest.raises(ValueError, match="not a restoration model"):
        Restorer("nuclei", device="cpu")
    with pytest.raises(ValueError, match="restore= needs a restoration model"):
        fastpose.segment(sample, "nuclei", restore="nuclei", device="cpu")
    with pytest.raises(ValueError, match="model= is a restoration model"):
        fastpose.segment(sample, str(rnet_path), restore=str(rnet_path), device="cpu")
    with pytest.raises(FileNotFoundError, match="cellpose.org/models/denoise_cyto3"):
        Restorer("denoise_cyto3", device="cpu")                     # not bundled, not in ~/.cellpose: no download


def test_segment_with_restore_equals_restore_then_segment(rnet_path, sample):
    """The chained path (restored and re-normalised on the device) gives what restoring first and segmenting
    the restored image gives: the same restored image, the same masks."""
    chained = fastpose.segment(sample, "nuclei", restore=str(rnet_path), diameter=20.0, device="cpu",
                               backend="torch")
    restored = restore(sample, rnet_path, diameter=20.0, device="cpu", backend="torch")
    np.testing.assert_allclose(chained.outputs["restored"][0], restored, atol=1e-4)
    assert not chained.outputs["restored"][1].any()                  # the absent second channel stays zero
    two_step = fastpose.segment(restored, "nuclei", diameter=20.0, device="cpu", backend="torch")
    assert chained.masks.max() > 10
    assert ap_at(two_step.masks, chained.masks, 0.5) >= 0.95
    plain = fastpose.segment(sample, "nuclei", diameter=20.0, device="cpu", backend="torch")
    assert "restored" not in plain.outputs


def test_restore_in_streams_and_volumes(rnet_path, sample):
    seg = fastpose.Segmenter("nuclei", device="cpu", backend="torch",
                             restore=Restorer(rnet_path, device="cpu", backend="torch"))  # a Restorer works too
    one = seg.segment(sample, diameter=20.0)
    many = list(seg.segment_many([sample, sample[:100, :120], sample], diameter=20.0))
    assert np.array_equal(many[0].masks, one.masks) and np.array_equal(many[2].masks, one.masks)
    np.testing.assert_allclose(many[0].outputs["restored"], one.outputs["restored"], atol=1e-5)
    assert many[1].outputs["restored"].shape == (2, 100, 120)
    est = seg.segment(sample)                                        # diameter estimated on the restored image
    assert est.diameter > 0 and "restored" in est.outputs
    stack = np.stack([sample[:96, :96]] * 3)
    vol = seg.segment(stack, z_axis=0, stitch_threshold=0.5, diameter=20.0)
    assert vol.masks.shape == stack.shape and vol.outputs["restored"].shape == (2, 3, 96, 96)


def test_cli_restore_and_segment_restore(rnet_path, sample, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a_img.tif", sample)
    tifffile.imwrite(src / "b_img.tif", sample[:120, :150])
    (src / "c_img.tif").write_bytes(b"not a tiff")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fastpose.cli", "restore", str(src), "--out", str(out), "--model", str(rnet_path),
           "--diameter", "20", "--device", "cpu", "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 1, p.stderr                              # one bad file: reported, the rest done
    assert "c_img.tif" in p.stderr
    a = tifffile.imread(out / "a_restored.tif")
    assert a.dtype == np.float32 and a.shape == sample.shape
    np.testing.assert_allclose(a, restore(sample, rnet_path, diameter=20.0, device="cpu"), atol=1e-4)
    assert tifffile.imread(out / "b_restored.tif").shape == (120, 150)
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]
    seg_out = tmp_path / "seg"
    cmd = [sys.executable, "-m", "fastpose.cli", "segment", str(src / "a_img.tif"), "--out", str(seg_out),
           "--restore", str(rnet_path), "--diameter", "20", "--device", "cpu", "--save", "masks,restored", "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert tifffile.imread(seg_out / "a_masks.tif").max() > 10
    assert tifffile.imread(seg_out / "a_restored.tif").shape == (2, *sample.shape)
    cmd = [sys.executable, "-m", "fastpose.cli", "segment", str(src / "a_img.tif"), "--out", str(seg_out),
           "--save", "restored"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 2 and "--restore" in p.stderr


# ---- training ------------------------------------------------------------------------------------------------

def test_one_channel_copy_slices_channel_0():
    torch.manual_seed(2)
    seg = UNet([2, 8, 16, 32, 64], nout=3, diam_mean=17.0).eval()
    one = one_channel_copy(seg)
    src, dst = seg.state_dict(), one.state_dict()
    assert one.nchan == 1 and not any(p.requires_grad for p in one.parameters()) and not one.training
    for k, v in dst.items():
        if src[k].shape != v.shape:
            assert "res_down_0" in k
            assert torch.equal(v, src[k][:1] if v.ndim == 1 else src[k][:, :1])
        else:
            assert torch.equal(v, src[k])
    with pytest.raises(ValueError, match="flows"):
        one_channel_copy(UNet(NBASE, nout=1))


def test_losses():
    torch.manual_seed(3)
    y = torch.randn(2, 3, 16, 16)
    flows = torch.randn(2, 2, 16, 16)
    masks = (torch.rand(2, 16, 16) > 0.5).float()
    ref = ((y[:, :2] - 5 * flows) ** 2).mean() / 2 + torch.nn.functional.binary_cross_entropy_with_logits(
        y[:, 2], masks)
    assert torch.allclose(seg_loss(y, flows, masks), ref)
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    assert float(perceptual_loss(feats, feats)) == 0.0
    g = gram_matrices(feats)[0]
    assert g.shape == (2, 4, 4) and torch.allclose(g, g.transpose(1, 2))
    assert torch.allclose(torch.diagonal(g, dim1=1, dim2=2), torch.full((2, 4), 63 / 64), atol=1e-3)  # z-scored
    other = [f + torch.randn_like(f) for f in feats]
    assert float(perceptual_loss(other, feats)) > 0


def _synthetic_data(n, seed):
    from fastpose.train.data import from_arrays
    from fastpose.synthetic import random_labels

    imgs, labs = [], []
    for i in range(n):
        lab = random_labels((96, 96), 12, diameter=17.0, seed=seed + i)
        rng = np.random.default_rng(seed + i)
        imgs.append((lab > 0).astype(np.float32) * 0.8 + 0.1 + 0.02 * rng.standard_normal(lab.shape))
        labs.append(lab)
    return from_arrays(imgs, labs, nchan=1, channel_axis=None)


def test_training_runs_resumes_and_writes_a_restoration_model(tmp_path):
    """A tiny run end to end: finite losses, validation, checkpoints, resume continuing the step count, and a
    model file that loads as a restoration model and restores."""
    torch.manual_seed(4)
    seg = UNet([2, 8, 16, 32, 64], nout=3, diam_mean=17.0).eval()
    tr, va = _synthetic_data(4, 0), _synthetic_data(2, 100)
    kw = dict(seg_model=seg, nbase=NBASE, tile=64, batch_size=2, val_every=3, n_val=2, device="cpu",
              progress=False, save_dir=tmp_path / "run")
    res = train(tr, va, steps=6, **kw)
    assert res.info["steps_done"] == 6 and np.isfinite(res.info["final_loss"])
    assert res.history and all(np.isfinite(h["val_loss"]) for h in res.history)
    assert res.last_path.is_file() and res.best_path.is_file() and res.state_path.is_file()
    m, meta = load_model(res.last_path)
    assert meta["spec"]["family"] == "restore" and meta["extra"]["restore"]["kind"] == "oneclick"
    again = train(tr, va, steps=9, resume=res.state_path, **kw)
    assert again.info["steps_done"] == 9
    y = restore(np.random.default_rng(0).random((70, 90)), res.last_path, device="cpu")
    assert y.shape == (70, 90) and np.isfinite(y).all()
    with pytest.raises(ValueError, match="kind"):
        train(tr, kind="snow", **kw)
    with pytest.raises(ValueError, match="flows"):
        train(tr, seg_model=UNet(NBASE, nout=1), steps=1, nbase=NBASE, tile=64, device="cpu", progress=False)


def test_training_learns_to_denoise(tmp_path):
    """With the reconstruction loss alone, a short run must bring noisy crops closer to the clean ones than the
    noisy input is (fails for a network that does not learn, or a loss wired to the wrong target)."""
    from fastpose.degrade import Degrade
    from fastpose.restore.training import make_crops

    torch.manual_seed(5)
    seg = UNet([2, 8, 16, 32, 64], nout=3, diam_mean=17.0).eval()
    tr = _synthetic_data(6, 200)
    res = train(tr, None, seg_model=seg, kind="poisson", nbase=NBASE, lam=(0.0, 0.0, 1.0), lr=3e-3, tile=64,
                batch_size=4, steps=60, device="cpu", progress=False)
    rng = np.random.default_rng(9)
    noisy, clean, _, _ = make_crops(tr, [0, 1, 2, 3], rng, Degrade("poisson", seed=3), diam_mean=17.0, tile=64)
    with torch.no_grad():
        out = res.model(noisy)[0]
    err_in = float(((noisy - clean) ** 2).mean())
    err_out = float(((out - clean) ** 2).mean())
    assert err_out < 0.7 * err_in, (err_out, err_in)


def test_cli_train_restore_writes_model_and_card(tmp_path):
    import json

    from fastpose.synthetic import random_labels

    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        lab = random_labels((96, 96), 10, diameter=17.0, seed=i)
        tifffile.imwrite(data / f"s{i}_img.tif", ((lab > 0) * 200 + 20).astype(np.uint8))
        tifffile.imwrite(data / f"s{i}_masks.tif", lab.astype(np.uint16))
    torch.manual_seed(6)
    save_model(tmp_path / "seg.pth", UNet([2, 8, 16, 32, 64], nout=3, diam_mean=17.0))
    out = tmp_path / "r.pth"
    cmd = [sys.executable, "-m", "fastpose.cli", "train-restore", "--data", str(data), "--seg-model",
           str(tmp_path / "seg.pth"), "--nbase", "1", "8", "16", "32", "64", "--tile", "64", "--batch-size", "2",
           "--steps", "3", "--holdout-every", "2", "--val-every", "3", "--n-val", "2", "--kind", "blur",
           "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--card", "--out", str(out), "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    m, meta = load_model(out)
    assert meta["spec"]["family"] == "restore" and meta["arch"]["nbase"] == [1, 8, 16, 32, 64]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["kind"] == "restoration" and card["training"]["kind"] == "blur"
    assert card["training"]["steps_done"] == 3 and card["reproduce"].startswith("fastpose train-restore --data")
    assert card["recipe"]["tile"] == 64 and card["validation"] == {}
    bad = subprocess.run(cmd[:-4] + ["--kind", "fog", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--kind" in bad.stderr


def test_cli_segment_refuses_a_restoration_model_as_the_model(rnet_path, tmp_path):
    p = subprocess.run([sys.executable, "-m", "fastpose.cli", "segment", str(sample_paths()[0]), "--out",
                        str(tmp_path / "o"), "--model", str(rnet_path), "--device", "cpu", "-q"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "is a restoration model" in p.stderr and "--restore" in p.stderr, p.stderr
