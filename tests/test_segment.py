"""The segmentation pipeline: an oracle network checks the data path exactly; a tiny random U-Net checks
shapes, dtypes, odd inputs, 3D, augmentation, ensembles and Cellpose checkpoints end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fastpose.core as fc
from _helpers import ap_at, cellprob_from_labels
from fastpose.models import UNet, save_model
from fastpose.inference import Segmenter, segment, stitch3D
from fastpose.transforms import to_channels_first
from fastpose.synthetic import random_labels

DATA = Path(__file__).resolve().parent / "data" / "models"


class Oracle(torch.nn.Module):
    """'Network' whose input channels are already (dY, dX, cellprob): returns them unchanged."""

    fastpose_meta = {"nchan": 3, "arch": {"type": "unet"}, "diam_mean": 30.0}

    def forward(self, x):
        return x, torch.ones((x.shape[0], 4), device=x.device)


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = UNet(nbase=(2, 8, 16, 32, 64))
    p = tmp_path_factory.mktemp("m") / "tiny.pth"
    save_model(p, net, {"diam_mean": 17.0})
    return p


def _oracle_image(labels):
    dP = 5.0 * fc.masks_to_flows(labels)
    return np.concatenate([dP, cellprob_from_labels(labels)[None]]).astype(np.float32), dP


@pytest.mark.parametrize("shape", [(200, 300), (500, 470)])
def test_oracle_pipeline_reproduces_compute_masks(shape):
    labels = random_labels(shape, int(np.prod(shape) / 900), diameter=22, seed=4)
    img, dP = _oracle_image(labels)
    ref = fc.compute_masks(dP, cellprob_from_labels(labels))
    res = segment(img, Oracle(), device="cpu", channel_axis=0, normalize=False, return_flows=True)
    np.testing.assert_allclose(res.flows, dP, atol=1e-4)
    np.testing.assert_array_equal(res.masks, ref)
    assert ap_at(labels, res.masks, 0.9) >= 0.98


def test_oracle_pipeline_with_resizing():
    labels = random_labels((240, 240), 50, diameter=24, seed=5)
    img, _ = _oracle_image(labels)
    # diameter 15 with diam_mean 30: the image is upsampled 2x for the network and the outputs resized back
    res = segment(img, Oracle(), device="cpu", channel_axis=0, normalize=False, diameter=15.0)
    assert ap_at(labels, res.masks, 0.5) >= 0.9


def test_tiny_unet_shapes_and_dtypes(tiny_model_file):
    seg = Segmenter(str(tiny_model_file), device="cpu")
    assert seg.diam_mean == 17.0 and seg.nchan == 2
    rng = np.random.default_rng(0)
    for img, kw in [
        (rng.integers(0, 65535, (300, 260), dtype=np.uint16), {}),                 # 16-bit, > 1 tile
        (rng.random((37, 50)).astype(np.float64), {}),                             # smaller than a tile
        (rng.integers(0, 255, (1, 64), dtype=np.uint8), {}),                        # 1 x N
        (rng.integers(0, 255, (90, 80, 3), dtype=np.uint8), {"channel_axis": -1}), # RGB
        (rng.random((120, 130)).astype(np.float32), {"augment": True}),
        (rng.random((120, 130)).astype(np.float32), {"diameter": 34.0}),
    ]:
        r = seg.segment(img, return_flows=True, **kw)
        spatial = img.shape[:2]
        assert r.masks.shape == spatial and r.masks.dtype == np.uint16
        assert r.flows.shape == (2, *spatial) and r.cellprob.shape == spatial
        assert r.styles.ndim == 1


def test_3d_and_stitching(tiny_model_file):
    seg = Segmenter(str(tiny_model_file), device="cpu")
    vol = np.random.default_rng(1).random((12, 40, 48)).astype(np.float32)
    r = seg.segment(vol, z_axis=0, do_3D=True, return_flows=True)
    assert r.masks.shape == vol.shape and r.flows.shape == (3, *vol.shape)
    r = seg.segment(vol, z_axis=0, stitch_threshold=0.3)
    assert r.masks.shape == vol.shape


def test_stitch3d_links_overlapping_planes():
    m = np.zeros((3, 10, 10), np.uint16)
    m[0, 2:6, 2:6] = 1
    m[1, 2:6, 3:7] = 5   # overlaps plane 0's mask with IoU 12/20
    m[2, 7:9, 7:9] = 2   # new object
    s = stitch3D(m, 0.5)
    assert s[0, 3, 3] == s[1, 3, 4] and s[2, 8, 8] not in (0, s[0, 3, 3])
    assert len(np.unique(s)) == 3


def test_ensemble_and_list_input(tiny_model_file):
    imgs = [np.random.default_rng(i).random((64, 64)).astype(np.float32) for i in range(3)]
    out = segment(imgs, [str(tiny_model_file), str(tiny_model_file)], device="cpu")
    assert len(out) == 3 and all(o.masks.shape == (64, 64) for o in out)


def test_cellpose_checkpoint_segments():
    seg = Segmenter(str(DATA / "cpnet_tiny.pth"), device="cpu")
    r = seg.segment(np.random.default_rng(0).random((100, 100)).astype(np.float32))
    assert r.masks.shape == (100, 100)


def test_axes_must_be_explicit():
    with pytest.raises(ValueError, match="channel_axis"):
        to_channels_first(np.zeros((5, 6, 7)), None, None, None, 2, False)
    with pytest.raises(ValueError, match="do_3D"):
        to_channels_first(np.zeros((5, 6, 7)), None, 0, None, 2, False)
    with pytest.raises(ValueError, match="only 1 channel"):
        to_channels_first(np.zeros((6, 7)), None, None, [0, 3], 2, False)
    x = to_channels_first(np.arange(2 * 3 * 4).reshape(3, 4, 2), -1, None, [1], 2, False)
    assert x.shape == (2, 3, 4) and (x[1] == 0).all() and x[0, 0, 0] == 1


def test_bad_model_and_inputs(tiny_model_file, tmp_path):
    with pytest.raises(ValueError, match="available"):
        Segmenter("no-such-model", device="cpu")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError):
        Segmenter(str(bad), device="cpu")
    seg = Segmenter(str(tiny_model_file), device="cpu")
    for img in [np.zeros((0, 5)), np.full((20, 20), np.nan), np.array(["a"]), np.zeros((2, 3, 4, 5, 6))]:
        with pytest.raises(ValueError):
            seg.segment(img)


@pytest.mark.cuda
def test_gpu_matches_cpu_with_oracle():
    labels = random_labels((300, 300), 80, diameter=22, seed=6)
    img, _ = _oracle_image(labels)
    a = segment(img, Oracle(), device="cpu", channel_axis=0, normalize=False).masks
    b = segment(img, Oracle(), device="cuda", precision="fp32", channel_axis=0, normalize=False).masks
    assert ap_at(a, b, 0.9) >= 0.99


def test_segment_many_pools_and_matches_one_by_one(tiny_model_file):
    seg = Segmenter(str(tiny_model_file), device="cpu", batch_size=8)
    rng = np.random.default_rng(3)
    imgs = [rng.random((100, 120)).astype(np.float32) for _ in range(5)] + [rng.random((70, 90)).astype(np.float32)]
    assert seg.group_size((2, 100, 120)) == 8  # one tile each: 8 images per network call
    streamed = list(seg.segment_many(iter(imgs), return_flows=True))
    assert len(streamed) == 6
    for img, r in zip(imgs, streamed):
        one = seg.segment(img, return_flows=True)
        np.testing.assert_allclose(r.flows, one.flows, atol=1e-4)
        np.testing.assert_array_equal(r.masks, one.masks)


def test_vit_small_images_are_padded_to_the_tile():
    from fastpose.models import ViT
    torch.manual_seed(0)
    net = ViT.from_preset("vit_t")
    net.fastpose_meta = {"arch": {"type": "vit"}, "nchan": 3}
    r = Segmenter(net, device="cpu").segment(np.random.default_rng(0).random((90, 300)).astype(np.float32),
                                            return_flows=True)
    assert r.masks.shape == (90, 300) and r.flows.shape == (2, 90, 300)


def test_tile_normalisation_flattens_uneven_illumination():
    from fastpose.transforms import normalize_percentile, normalize_tiles
    yy, xx = np.indices((256, 256))
    spots = ((yy % 32 < 6) & (xx % 32 < 6)).astype(np.float32)
    img = (spots * 100 + 10) * (1 + 9 * xx / 255.0)  # left side 10x dimmer than the right
    g = normalize_percentile(img[None])[0]
    t = normalize_tiles(img[None], blocksize=64)[0]
    left, right = spots[:, :64] > 0, spots[:, -64:] > 0
    # global normalisation leaves left spots much dimmer than right ones; tile-wise brings them close
    assert g[:, :64][left].mean() < 0.3 * g[:, -64:][right].mean()
    assert t[:, :64][left].mean() > 0.7 * t[:, -64:][right].mean()
    with pytest.raises(ValueError):
        normalize_tiles(img[None], blocksize=2)


def test_segment_many_matches_segment_with_real_masks(device):
    """Pooled segment_many (on a GPU: the next group's network queued before this group's masks are recovered
    on a second stream) gives segment()'s masks, with cells big enough for every shared-memory path of the
    flow kernels."""
    imgs = [_oracle_image(random_labels((256, 256), n, diameter=d, seed=s))[0]
            for n, d, s in ((40, 22, 1), (6, 80, 2), (20, 40, 3), (3, 90, 4))]
    seg = Segmenter(Oracle(), device=device, precision="fp32", batch_size=4)
    many = list(seg.segment_many(iter(imgs), channel_axis=0, normalize=False))
    assert len(many) == len(imgs)
    for img, r in zip(imgs, many):
        one = seg.segment(img, channel_axis=0, normalize=False)
        assert r.masks.max() > 0
        np.testing.assert_array_equal(r.masks, one.masks)


@pytest.mark.parametrize("kind", ["uint8", "uint16", "constant", "fractional", "negative", "one pixel", "huge"])
def test_percentiles_equal_numpy_exactly(kind):
    """The histogram path for integer-valued channels returns exactly np.percentile's values (and the
    general path is np.percentile itself); normalisation is therefore unchanged bit for bit."""
    from fastpose.transforms import normalize_percentile, percentiles
    rng = np.random.default_rng(7)
    a = {"uint8": rng.integers(0, 256, (97, 131)), "uint16": rng.integers(0, 65536, (211, 89)) // rng.integers(1, 9),
         "constant": np.full((40, 40), 17), "fractional": rng.random((50, 60)) * 1000,
         "negative": rng.integers(-300, 300, (64, 64)), "one pixel": np.array([[42]]),
         "huge": rng.integers(0, 2**24, (30, 30))}[kind].astype(np.float32)
    qs = [0.0, 1.0, 37.3, 99.0, 99.99, 100.0]
    assert np.array_equal(np.array(percentiles(a, qs)), np.percentile(a, qs))
    x = a[None]
    lo, hi = np.percentile(a, [1, 99])
    ref = ((a - lo) / (hi - lo))[None] if hi - lo > 1e-3 * max(abs(hi), 1e-12) and hi > lo else np.zeros_like(x)
    np.testing.assert_allclose(normalize_percentile(x), ref, rtol=1e-6, atol=1e-7)


def test_default_niter_is_bounded_by_the_image():
    """The Euler steps for a huge diameter do not grow with it: at most the image diagonal (>= 200) and
    LIMITS["niter"]; unchanged (200 / rescale) where that is smaller."""
    from fastpose.checks import LIMITS
    from fastpose.methods.cellpose import default_niter

    assert default_niter(1.0) == 200 and default_niter(2.0) == 200 and default_niter(0.5) == 400
    assert default_niter(0.5, (512, 512)) == 400
    assert default_niter(17 / 10_000, (512, 512)) == 725  # ceil(512 * sqrt 2)
    assert default_niter(17 / 10_000, (8, 8)) == 200
    assert default_niter(1e-9) == LIMITS["niter"]
    with pytest.raises(ValueError, match="rescale"):
        default_niter(float("nan"))
