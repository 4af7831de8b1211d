"""Cellulus (fastpose.cellulus, the 'cellulus' family): the valid-convolution U-Net and its model files, the OCE loss
against a plain-loop reference, training, the noise-ensemble prediction over windows, the post-processing steps on
hand-made inputs, segmentation through fastpose.segment, and bad inputs.

Tiny on purpose (64 px images, f = 4-8 networks, a few steps): the whole file runs in well under a minute on one
thread.  Clustering needs the native mean-shift (fastpose.core.mean_shift): tests that need it are skipped with the
reason when this build lacks it; the plumbing around it is also checked with scikit-learn's MeanShift standing in.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

import fastpose
import fastpose.core as fc
from fastpose import cellulus
from fastpose.cellulus import (CellulusNet, cluster, connected_components, disc_offsets, grow_shrink, oce_loss,
                               otsu_threshold, pair_counts, predict, refine_nuclei, sample_pairs, save_cellulus,
                               size_filter)
from fastpose.cellulus.network import CONTEXT, valid_size
from fastpose.cellulus.training import load_images, make_batch
from fastpose.models import ModelSpec, load_model, save_model
from fastpose.synthetic import random_labels


def _native_mean_shift() -> str:
    """'' when fastpose.core.mean_shift runs in this build, else why not."""
    fn = getattr(fc, "mean_shift", None)
    if fn is None:
        return "fastpose.core has no mean_shift yet (the native mean-shift, csrc/meanshift, is not in this build)"
    try:
        fn(np.array([[0, 0], [0.1, 0], [5, 5]], np.float32), 1.0, seeds="bin", cluster_all=True)
    except Exception as e:  # noqa: BLE001 - a Python wrapper without its compiled binding, ...
        return f"fastpose.core.mean_shift does not run in this build ({type(e).__name__}: {e})"
    return ""


NATIVE_WHY = _native_mean_shift()
needs_native = pytest.mark.skipif(bool(NATIVE_WHY), reason=NATIVE_WHY or "native mean-shift available")


@pytest.fixture
def sklearn_mean_shift(monkeypatch):
    """scikit-learn's MeanShift standing in for fastpose.core.mean_shift (same call, same (labels, centres))."""
    sk = pytest.importorskip("sklearn.cluster")

    def stand_in(points, bandwidth, *, seeds="bin", fit_points=None, cluster_all=False, **_):
        fit = points if fit_points is None else points[np.asarray(fit_points)]
        ms = sk.MeanShift(bandwidth=bandwidth, bin_seeding=seeds == "bin", cluster_all=True).fit(fit)
        c = ms.cluster_centers_
        d = ((points[:, None, :] - c[None]) ** 2).sum(-1)
        lab = d.argmin(1).astype(np.int32)
        if not cluster_all:
            lab[d.min(1) > bandwidth ** 2] = -1
        return lab, c.astype(np.float32)

    monkeypatch.setattr(fc, "mean_shift", stand_in, raising=False)
    return stand_in


def _blobs(shape=(64, 64), n=8, diameter=14, seed=1):
    lab = random_labels(shape, n, diameter=diameter, seed=seed)
    img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.0)
    return lab, img + 0.05 * np.random.default_rng(seed).random(shape, dtype=np.float32)


# ---- network ----------------------------------------------------------------------------------------------------

def test_network_shrinks_by_16_and_checks_its_input():
    torch.manual_seed(0)
    net = CellulusNet(in_channels=2, f=4)
    assert net(torch.zeros(1, 2, 252, 252)).shape == (1, 2, 236, 236)        # the authors' 252 -> 236
    assert net(torch.zeros(3, 2, 40, 64)).shape == (3, 2, 24, 48)
    assert net(torch.zeros(1, 2, 18, 18)).shape == (1, 2, 2, 2)               # the smallest input
    net3 = CellulusNet(in_channels=1, f=2, ndim=3)
    assert net3(torch.zeros(1, 1, 20, 24, 22)).shape == (1, 3, 4, 8, 6)        # D = 3 offsets in 3D
    assert isinstance(net3.down[0], torch.nn.Conv3d)
    kinds = [(m.kernel_size, m.in_channels, m.out_channels) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert kinds == [((3, 3), 2, 4), ((1, 1), 4, 4), ((1, 1), 4, 4), ((3, 3), 4, 4),        # down: f
                     ((3, 3), 4, 12), ((1, 1), 12, 12), ((1, 1), 12, 12), ((3, 3), 12, 12),  # bottom: 3f
                     ((3, 3), 16, 64), ((1, 1), 64, 64), ((1, 1), 64, 64), ((3, 3), 64, 64),  # up: [skip, up]
                     ((1, 1), 64, 64), ((1, 1), 64, 2)]                                       # head
    assert CellulusNet().f == 24 and valid_size(1) == 18 and valid_size(81) == 82
    for bad in ((1, 2, 63, 64), (1, 2, 16, 16), (1, 1, 64, 64), (2, 64, 64)):
        with pytest.raises(ValueError, match="Cellulus network takes"):
            net(torch.zeros(bad))


def test_network_is_translation_equivariant_on_even_shifts():
    """Valid convolutions: a window's output is the matching part of the whole image's output (even shifts keep the
    max-pool grid), which is what the tiled prediction relies on."""
    torch.manual_seed(0)
    net = CellulusNet(1, f=4).eval()
    x = torch.rand(1, 1, 80, 80)
    with torch.no_grad():
        whole, part = net(x), net(x[:, :, 10:60, 24:74])
    torch.testing.assert_close(part, whole[:, :, 10:44, 24:58], rtol=1e-5, atol=1e-5)


def test_model_file_round_trip(tmp_path):
    torch.manual_seed(0)
    net = CellulusNet(in_channels=2, f=4).eval()
    x = torch.rand(1, 2, 40, 40)
    p = save_model(tmp_path / "plain.pth", net)                            # the generic writer knows the arch
    m, meta = load_model(p)
    assert isinstance(m, CellulusNet) and meta["arch"]["type"] == "cellulus" and meta["nchan"] == 2
    assert meta["spec"]["family"] == "cellulus" and meta["spec"]["outputs"] == ["offset_y", "offset_x", "std", "image"]
    with torch.no_grad():
        torch.testing.assert_close(m(x), net(x))
    p2 = save_cellulus(tmp_path / "c.pth", net, {"object_size": 20, "post_processing": "nucleus"})
    m2, meta2 = load_model(p2)
    spec = ModelSpec.from_dict(meta2["spec"])
    assert spec.diam_mean == 20.0 and spec.normalize["upper"] == 99.8 and spec.tile == 252
    assert spec.settings["object_size"] == 20.0 and spec.settings["post_processing"] == "nucleus"
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert "settings" not in ModelSpec().to_dict()                           # other families' files unchanged
    with torch.no_grad():
        torch.testing.assert_close(m2(x), net(x))
    # a fresh process loads the file without importing fastpose.cellulus first (the built-in architecture)
    code = ("import sys; from fastpose.models import load_model; m, meta = load_model(sys.argv[1]); "
            "print(type(m).__name__, meta['spec']['family'])")
    out = subprocess.run([sys.executable, "-c", code, str(p2)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["CellulusNet", "cellulus"]


# ---- the OCE loss -----------------------------------------------------------------------------------------------

def _loop_oce(offsets, anchors, refs, tau, lam):
    """The loss pair by pair, in Python floats (the plain reference)."""
    o = offsets.detach().double().numpy()
    total = 0.0
    for b in range(anchors.shape[0]):
        for (ay, ax), (ry, rx) in zip(anchors[b].tolist(), refs[b].tolist()):
            ea = (o[b, 0, ay, ax] + ay, o[b, 1, ay, ax] + ax)
            er = (o[b, 0, ry, rx] + ry, o[b, 1, ry, rx] + rx)
            d2 = (ea[0] - er[0]) ** 2 + (ea[1] - er[1]) ** 2
            total += 1.0 - math.exp(-d2 / tau) + lam * math.sqrt(ea[0] ** 2 + ea[1] ** 2)
    return total


def test_pairs_follow_the_authors_sampling():
    assert pair_counts((236, 236)) == (4665, 31)                            # a 252 crop: 4665 x 31 pairs
    disc = disc_offsets(10.0)
    assert len(disc) == 304 and not (disc == 0).all(1).any() and ((disc ** 2).sum(1) < 100).all()
    a, r = sample_pairs((48, 40), np.random.default_rng(0), density=0.1, kappa=10)
    n_a, n_r = pair_counts((48, 40))
    assert (n_a, n_r) == (int(0.1 * 28 * 20), 31) and a.shape == r.shape == (n_a * n_r, 2)
    assert (a.reshape(n_a, n_r, 2) == a[::n_r, None]).all()                  # each anchor repeated n_r times
    assert a.min(0).tolist() >= [10, 10] and (a.max(0) <= [38, 30]).all()
    d = r - a
    assert ((d ** 2).sum(1) < 100).all() and (np.abs(d).sum(1) > 0).all()
    big = sample_pairs((236, 236), np.random.default_rng(1))[1] - sample_pairs((236, 236), np.random.default_rng(1))[0]
    assert len(np.unique(big, axis=0)) == 304                               # every disc offset drawn
    a2, r2 = sample_pairs((48, 40), np.random.default_rng(0))
    assert (a2 == a).all() and (r2 == r).all()                               # seeded
    with pytest.raises(ValueError, match="too small for kappa"):
        sample_pairs((20, 40), np.random.default_rng(0))


def test_oce_loss_equals_the_plain_loop():
    rng = np.random.default_rng(3)
    offsets = torch.from_numpy(rng.normal(0, 3, (2, 2, 30, 26)).astype(np.float32))
    pairs = [sample_pairs((30, 26), rng, density=0.1, kappa=6.0) for _ in range(2)]
    a = torch.from_numpy(np.stack([p[0] for p in pairs]))
    r = torch.from_numpy(np.stack([p[1] for p in pairs]))
    for tau, lam in ((10.0, 1e-5), (3.0, 0.1)):
        loss, oce, reg = oce_loss(offsets, a, r, tau, lam)
        ref = _loop_oce(offsets, a, r, tau, lam)
        assert float(loss) == pytest.approx(ref, rel=1e-5)
        assert float(oce + reg) == pytest.approx(float(loss), rel=1e-6)
    # stop-gradient on the references: a pixel that is only ever a reference gets no gradient
    x = offsets.clone().requires_grad_(True)
    oce_loss(x, a, r)[0].backward()
    g = x.grad.abs().sum(1)
    anchor_px = np.zeros((2, 30, 26), bool)
    for b in range(2):
        anchor_px[b][tuple(a[b].numpy().T)] = True
    assert (g.numpy()[~anchor_px] == 0).all() and (g.numpy()[anchor_px] > 0).all()


def test_loss_decreases_on_a_tiny_synthetic_image():
    torch.manual_seed(0)
    _, img = _blobs()
    data = load_images([img])
    x, a, r = map(torch.from_numpy, make_batch(data, 2, 64, np.random.default_rng(1)))
    net = CellulusNet(1, f=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss, oce, _ = oce_loss(net(x), a, r)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(oce.detach()))
    assert np.mean(losses[-5:]) < 0.95 * losses[0], losses


def test_train_writes_files_and_resumes(tmp_path):
    _, img = _blobs()
    res = cellulus.train([img, img[:, ::-1]], f=4, crop=64, batch_size=2, lr=1e-3, steps=4, best_every=2,
                         progress=False, object_size=14, save_dir=tmp_path, seed=0)
    assert res.info["steps_done"] == 4 and [h["step"] for h in res.history] == [2, 4]
    assert res.best_loss == min(h["loss"] for h in res.history) and res.best_model is not None
    for p in (res.last_path, res.best_path, res.state_path):
        assert p is not None and p.is_file()
    m, meta = load_model(res.best_path)
    assert isinstance(m, CellulusNet) and meta["spec"]["settings"]["object_size"] == 14.0
    assert meta["extra"]["cellulus"]["augment"] == "flips + rot90"
    again = cellulus.train([img, img[:, ::-1]], f=4, crop=64, batch_size=2, lr=1e-3, steps=6, best_every=2,
                           progress=False, object_size=14, save_dir=tmp_path, resume=res.state_path, seed=0)
    assert again.info["steps_done"] == 6 and [h["step"] for h in again.history] == [2, 4, 6]


# ---- prediction -------------------------------------------------------------------------------------------------

def test_tiled_prediction_equals_one_pass_over_the_padded_image():
    torch.manual_seed(0)
    net = CellulusNet(1, f=4).eval()
    x = torch.rand(1, 75, 90)
    mean, std = predict(net, x, crop=40, n_noise=0)                         # 24 px output windows, overlapping
    assert mean.shape == (2, 75, 90) and std.shape == (75, 90) and float(std.abs().max()) == 0.0
    padded = np.pad(x.numpy(), ((0, 0), (CONTEXT, CONTEXT + 1), (CONTEXT, CONTEXT)), mode="reflect")
    with torch.no_grad():
        whole = net(torch.from_numpy(padded)[None])[0, :, :75, :90]
    torch.testing.assert_close(mean, whole, rtol=1e-5, atol=1e-5)
    small, _ = predict(net, x[:, :30, :33], crop=252, n_noise=0)          # one window smaller than crop
    assert small.shape == (2, 30, 33)
    # each side in as few windows as ``crop`` allows, of equal size: a 256 px side in two 144 px windows
    sides = []
    hook = net.register_forward_pre_hook(lambda m, inp: sides.append(tuple(inp[0].shape[2:])))
    big = torch.rand(1, 256, 300)
    mean, _ = predict(net, big, crop=252, n_noise=0)
    hook.remove()
    assert sides == [(144, 166)] * 4
    padded = np.pad(big.numpy(), ((0, 0), (CONTEXT, CONTEXT), (CONTEXT, CONTEXT)), mode="reflect")
    with torch.no_grad():
        whole = net(torch.from_numpy(padded)[None])[0]
    torch.testing.assert_close(mean, whole, rtol=1e-5, atol=1e-5)


def test_noise_ensemble_is_seeded_and_spread():
    torch.manual_seed(0)
    net = CellulusNet(1, f=4).eval()
    _, img = _blobs()
    x = torch.from_numpy(img)[None]
    m1, s1 = predict(net, x, n_noise=3, seed=5)
    m2, s2 = predict(net, x, n_noise=3, seed=5)
    m3, s3 = predict(net, x, n_noise=3, seed=6)
    assert torch.equal(m1, m2) and torch.equal(s1, s2) and not torch.equal(s1, s3)
    assert float(s1.min()) >= 0 and float(s1.mean()) > 0


# ---- detection and post-processing on hand-made inputs ---------------------------------------------------------

def _between_class_variances(v, nbins=256):
    """(bin centres, between-class variance of thresholding at each centre), by direct sums per split."""
    counts, edges = np.histogram(v, nbins, range=(v.min(), v.max()))
    centres = (edges[:-1] + edges[1:]) / 2
    var = np.full(nbins - 1, -1.0)
    for k in range(nbins - 1):
        w1, w2 = counts[:k + 1].sum(), counts[k + 1:].sum()
        if w1 and w2:
            m1 = (counts[:k + 1] * centres[:k + 1]).sum() / w1
            m2 = (counts[k + 1:] * centres[k + 1:]).sum() / w2
            var[k] = w1 * w2 * (m1 - m2) ** 2
    return centres[:-1], var


def test_otsu_foreground_on_a_bimodal_std_map():
    rng = np.random.default_rng(0)
    std = np.where(np.arange(64)[None, :] < 40, rng.normal(0.2, 0.03, (64, 64)), rng.normal(2.0, 0.2, (64, 64)))
    fg, thr = cellulus.foreground(std.astype(np.float32))
    left = np.broadcast_to(np.arange(64)[None, :] < 40, fg.shape)
    # Otsu's threshold is the centre of the highest bin of the lower class (scikit-image's rule): the few
    # lower-class values above that centre count as background
    assert 0.2 < thr < 2.0 and (fg <= left).all() and fg[left].mean() > 0.99
    for v in (std.ravel(), rng.gamma(2.0, 1.0, 5000), rng.random(777)):
        centres, var = _between_class_variances(np.asarray(v, np.float64))
        k = int(np.argmin(np.abs(centres - otsu_threshold(v))))
        assert centres[k] == pytest.approx(otsu_threshold(v), abs=1e-12)       # a bin centre ...
        assert var[k] == pytest.approx(var.max(), rel=1e-9)                     # ... of the largest variance
    assert otsu_threshold(np.full(10, 3.5)) == 3.5
    fg2, thr2 = cellulus.foreground(std, threshold=5.0)
    assert thr2 == 5.0 and fg2.all()


def test_grow_shrink_removes_the_halo_facing_background_only():
    seg = np.zeros((60, 70), np.int32)
    seg[20:40, 5:25] = 1          # isolated square
    seg[20:40, 35:50] = 2         # two squares touching along a column
    seg[20:40, 50:65] = 3
    out = grow_shrink(seg, 3, 6)
    assert ((out == 0) | (out == seg)).all()                                # labels never grow or change
    ys, xs = np.nonzero(out == 1)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (23, 36, 8, 21)     # shrink - grow = 3 px off each edge
    assert out[30, 49] == 2 and out[30, 50] == 3                            # the shared edge is kept
    assert out[30, 37] == 0 and out[30, 62] == 0                            # edges facing background are not
    assert (grow_shrink(np.zeros((5, 5), np.int32)) == 0).all()
    assert (grow_shrink(np.ones((5, 5), np.int32)) == 1).all()              # nothing faces background


def test_size_filter_components_and_min_size():
    seg = np.zeros((40, 40), np.int32)
    seg[2:12, 2:12] = 5            # 100 px
    seg[20:23, 20:23] = 7          # 9 px: dropped at min_size 50
    seg[30:38, 2:8] = 9            # label 9 in two parts: two components
    seg[30:38, 12:18] = 9
    seg[14, 30] = seg[15, 31] = 4  # diagonal neighbours: one component (full connectivity)
    cc = connected_components(seg)
    assert cc.max() == 5 and len(np.unique(cc[seg == 9])) == 2 and cc[14, 30] == cc[15, 31]
    out = size_filter(seg, 40)
    assert out.max() == 3 and sorted(np.bincount(out.ravel())[1:].tolist()) == [48, 48, 100]
    assert set(np.unique(out)) == {0, 1, 2, 3}                             # renumbered 1..N
    assert size_filter(seg, 0).max() == 5
    assert cellulus.min_object_size(30) == 70 and cellulus.min_object_size(30, 3) == 1413


def test_refine_nuclei_keeps_the_bright_part_with_holes_filled():
    img = np.full((40, 40), 0.2, np.float32)
    yy, xx = np.mgrid[:40, :40]
    img[(yy - 20) ** 2 + (xx - 20) ** 2 <= 64] = 1.0                       # a bright disc of radius 8
    img[20, 20] = 0.0                                                       # a dark hole inside it
    seg = np.zeros((40, 40), np.int32)
    seg[8:33, 8:33] = 3                                                     # the object: disc + dim surroundings
    out = refine_nuclei(seg, img)
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 64
    assert (out[disc] == 3).all() and (out[~disc] == 0).all()


def test_cluster_plumbing_with_a_stand_in(sklearn_mean_shift):
    """Two tight groups of embeddings -> two labels; background stays 0 (scikit-learn standing in for the native
    mean-shift: this checks the call and the label shift, not the clustering)."""
    mask = np.zeros((20, 20), bool)
    mask[2:8, 2:8] = mask[12:18, 12:18] = True
    emb = np.zeros((2, 20, 20), np.float32)
    emb[:, 2:8, 2:8] = 5.0
    emb[:, 12:18, 12:18] = 15.0
    lab = cluster(emb, mask, bandwidth=2.0, fit_fraction=0.5, seed=0)
    assert lab.dtype == np.int32 and (lab[~mask] == 0).all()
    assert len(np.unique(lab[2:8, 2:8])) == 1 and len(np.unique(lab[12:18, 12:18])) == 1
    assert {int(lab[4, 4]), int(lab[14, 14])} == {1, 2}


# ---- segmentation ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    net = CellulusNet(1, f=4).eval()
    return save_cellulus(tmp_path_factory.mktemp("cellulus") / "tiny.pth", net, {"object_size": 14, "n_noise": 2})


def _check_result(r, shape):
    assert r.masks.shape == shape and r.masks.dtype == np.uint16
    n = int(r.masks.max())
    assert set(np.unique(r.masks)) <= set(range(n + 1)) and r.info["min_size"] == 15
    if n:
        assert np.bincount(r.masks.ravel())[1:].min() >= 15


def test_segment_through_the_common_path(tiny_model, sklearn_mean_shift):
    _, img = _blobs()
    r = fastpose.segment(img, model=str(tiny_model), device="cpu", return_flows=True)
    _check_result(r, img.shape)
    assert set(r.outputs) == {"offsets", "std", "foreground"} and r.outputs["offsets"].shape == (2, 64, 64)
    own = cellulus.segment(img, str(tiny_model), device="cpu")             # the family's own entry point
    assert np.array_equal(own.masks, r.masks)
    seg = fastpose.Segmenter(str(tiny_model), device="cpu")
    many = list(seg.segment_many([img, img[:50, :40]]))                     # streams too
    assert np.array_equal(many[0].masks, r.masks) and many[1].masks.shape == (50, 40)
    half = fastpose.segment(img, model=str(tiny_model), device="cpu", diameter=28)   # resized by 14 / 28
    assert half.masks.shape == img.shape and half.info["bandwidth"] == 14.0
    three = cellulus.segment(np.stack([img, img]), str(tiny_model), channel_axis=0, device="cpu")
    assert three.masks.shape == img.shape


@needs_native
def test_segment_with_the_native_mean_shift(tiny_model):
    _, img = _blobs()
    r = fastpose.segment(img, model=str(tiny_model), device="cpu")
    _check_result(r, img.shape)
    assert r.info["clusters"] >= 1


def test_3d_network_on_a_volume(sklearn_mean_shift):
    torch.manual_seed(0)
    net = CellulusNet(1, f=2, ndim=3).eval()
    lab = random_labels((16, 24, 24), 3, diameter=10, seed=2)
    vol = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.0)
    r = cellulus.segment(vol, net, z_axis=0, device="cpu", n_noise=1, object_size=10, min_size=0)
    assert r.masks.shape == vol.shape and r.masks.dtype == np.uint16
    with pytest.raises(ValueError, match="3D Cellulus network"):
        cellulus.segment(vol[0], net, device="cpu")


def test_bad_inputs_give_clear_errors(tiny_model, tmp_path):
    _, img = _blobs()
    bad = img.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastpose.segment(bad, model=str(tiny_model), device="cpu")
    with pytest.raises(ValueError, match="NaN or Inf"):
        cellulus.segment(bad, str(tiny_model), device="cpu")
    with pytest.raises(ValueError, match="NaN or Inf"):
        cellulus.train([bad], f=4, crop=64, steps=1, progress=False)
    with pytest.raises(ValueError, match="cannot tell the axes apart"):
        fastpose.segment(np.zeros((3, 32, 32, 2), np.float32), model=str(tiny_model), device="cpu")
    with pytest.raises(ValueError, match="2 to 4 dimensions"):
        cellulus.segment(np.zeros(32, np.float32), str(tiny_model), device="cpu")
    with pytest.raises(ValueError, match="2D Cellulus network"):
        cellulus.segment(np.zeros((4, 32, 32), np.float32), str(tiny_model), z_axis=0, device="cpu")
    with pytest.raises(ValueError, match="takes images"):
        predict(CellulusNet(2, f=4), torch.zeros(1, 30, 30))
    with pytest.raises(ValueError, match="unknown Cellulus setting"):
        cellulus.segment(img, str(tiny_model), device="cpu", bandwith=3)
    with pytest.raises(ValueError, match="post_processing must be one of"):
        cellulus.segment(img, str(tiny_model), device="cpu", post_processing="cells")
    with pytest.raises(ValueError, match="crop must be even"):
        cellulus.train([img], crop=63, steps=1, progress=False)
    with pytest.raises(ValueError, match="too small for kappa"):
        cellulus.train([img], crop=36, steps=1, progress=False)
    with pytest.raises(ValueError, match="lr must be"):
        cellulus.train([img], lr=float("nan"), steps=1, progress=False)
    with pytest.raises(ValueError, match="not a Cellulus model|must be a Cellulus"):
        cellulus.segment(img, torch.nn.Conv2d(1, 1, 1), device="cpu")
