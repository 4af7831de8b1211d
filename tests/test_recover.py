"""compute_masks end to end: round trips from exact flow targets, analytic shapes, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

import fastpose.core as fc
from _helpers import ap_at, cellprob_from_labels
from fastpose.core._reference import compute_masks as reference_compute_masks
from fastpose.synthetic import disc, random_labels


def roundtrip(labels: np.ndarray, **kw) -> np.ndarray:
    dP = 5.0 * fc.masks_to_flows(labels)
    return fc.compute_masks(dP, cellprob_from_labels(labels), **kw)


def test_roundtrip_2d_many_cells(device):
    labels = random_labels((384, 384), 200, diameter=24, seed=3)
    assert labels.max() > 150
    out = roundtrip(labels)
    assert out.dtype == np.uint16
    assert ap_at(labels, out, 0.9) >= 0.98


def test_roundtrip_3d(device, labels3d):
    out = roundtrip(labels3d, niter=200)
    assert ap_at(labels3d, out, 0.9) >= 0.98


@pytest.mark.parametrize("shape", [(64, 64), (20, 48, 40)])
def test_single_disc_and_ball(device, shape):
    centre = [s / 2 for s in shape]
    lab = disc(shape, centre, 9).astype(np.int32)
    out = roundtrip(lab)
    assert out.max() == 1
    assert (out > 0).sum() == lab.sum()


def test_c_shaped_cell(device):
    yy, xx = np.indices((80, 80))
    r = np.hypot(yy - 40, xx - 40)
    ring = (r >= 12) & (r <= 22) & ~((xx > 40) & (np.abs(yy - 40) < 5))
    lab = ring.astype(np.int32)
    out = roundtrip(lab, min_size=0)
    assert out.max() == 1
    assert ap_at(lab, out, 0.9) == 1.0


def test_empty_and_background_only(device):
    for shape in [(1, 1), (1, 37), (30, 30), (5, 6, 7)]:
        dP = np.zeros((len(shape), *shape), np.float32)
        out = fc.compute_masks(dP, np.full(shape, -3.0, np.float32))
        assert out.shape == shape and out.max() == 0 and out.dtype == np.uint16


def test_zero_size_image(device):
    out = fc.compute_masks(np.zeros((2, 0, 5), np.float32), np.zeros((0, 5), np.float32))
    assert out.shape == (0, 5)


def test_return_positions(device, labels2d):
    dP = 5.0 * fc.masks_to_flows(labels2d)
    out, pos = fc.compute_masks(dP, cellprob_from_labels(labels2d), return_positions=True)
    assert pos.shape == (2, *labels2d.shape) and pos.dtype == np.float32
    assert out.max() > 0


def test_flow_qc_removes_inconsistent_mask(device):
    # four discs with exact flows + one square whose flows all point at its top-left corner: tracking
    # still forms a mask there, but its recomputed flows point at the square's centre -> QC drops it
    labels = np.zeros((120, 120), np.int32)
    for k, c in enumerate([(25, 25), (25, 90), (90, 25)]):
        labels[disc(labels.shape, c, 10)] = k + 1
    dP = 5.0 * fc.masks_to_flows(labels)
    sq = (slice(75, 100), slice(75, 100))
    yy, xx = np.indices((25, 25)).astype(np.float32)
    norm = np.maximum(np.hypot(yy, xx), 1e-6)
    dP[0][sq] = -5.0 * yy / norm
    dP[1][sq] = -5.0 * xx / norm
    prob = cellprob_from_labels(labels)
    prob[sq] = 5.0
    square = np.zeros(labels.shape, bool)
    square[sq] = True
    kept = fc.compute_masks(dP, prob, flow_threshold=0.0)  # QC off
    assert kept.max() == 4 and (kept[square] > 0).mean() > 0.9
    qc = fc.compute_masks(dP, prob, flow_threshold=0.4)
    assert qc.max() == 3 and (qc[square] == 0).all()
    errors = fc.flow_errors(kept, dP)
    assert errors.shape == (4,) and errors.max() > 0.4 and np.sort(errors)[-2] < 0.1


def test_more_than_65535_masks_gives_uint32():
    # 5x5 square cells on a 6-pixel grid: 264 x 264 = 69696 cells, all recovered from exact flows.
    n = 264
    yy, xx = np.indices((6 * n, 6 * n))
    inside = (yy % 6 < 5) & (xx % 6 < 5)
    labels = np.where(inside, (yy // 6) * n + (xx // 6) + 1, 0).astype(np.int32)
    out = roundtrip(labels, min_size=0)
    assert out.dtype == np.uint32
    assert int(out.max()) == n * n
    assert ap_at(labels, out, 0.9) == 1.0


@pytest.mark.parametrize("bad", [
    dict(dP=np.zeros((2, 8, 8), np.float32), cellprob=np.zeros((8, 9), np.float32)),
    dict(dP=np.zeros((3, 8, 8), np.float32), cellprob=np.zeros((8, 8), np.float32)),
    dict(dP=np.zeros((8,), np.float32), cellprob=np.zeros((8,), np.float32)),
    dict(dP=np.zeros((4, 2, 2, 2, 2), np.float32), cellprob=np.zeros((2, 2, 2, 2), np.float32)),
    dict(dP=np.full((2, 8, 8), np.nan, np.float32), cellprob=np.zeros((8, 8), np.float32)),
    dict(dP=np.zeros((2, 8, 8), np.float32), cellprob=np.full((8, 8), np.inf, np.float32)),
    dict(dP=np.zeros((2, 8, 8), np.float32), cellprob=np.zeros((8, 8), np.float32), niter=-1),
    dict(dP=np.zeros((2, 8, 8), np.float32), cellprob=np.zeros((8, 8), np.float32), flow_threshold=float("nan")),
    dict(dP="not an array", cellprob=np.zeros((8, 8), np.float32)),
])
def test_bad_inputs_raise_value_error(bad):
    with pytest.raises(ValueError):
        fc.compute_masks(**bad)


@pytest.mark.cuda
def test_cpu_gpu_parity(labels2d, labels3d):
    for lab in (labels2d, labels3d):
        dP = 5.0 * fc.masks_to_flows(lab)
        rng = np.random.default_rng(0)
        dP = dP + rng.normal(0, 0.3, dP.shape).astype(np.float32)
        prob = cellprob_from_labels(lab)
        with fc.use_backend("cpu"):
            a, pa = fc.compute_masks(dP, prob, return_positions=True)
        with fc.use_backend("cuda"):
            b, pb = fc.compute_masks(dP, prob, return_positions=True)
        np.testing.assert_allclose(pa, pb, atol=1e-5)
        np.testing.assert_array_equal(a, b)


@pytest.mark.cuda
def test_torch_cuda_tensors_stay_on_device(labels2d):
    import torch
    dP = torch.from_numpy(5.0 * fc.masks_to_flows(labels2d)).cuda()
    prob = torch.from_numpy(cellprob_from_labels(labels2d)).cuda()
    out = fc.compute_masks(dP, prob)
    assert isinstance(out, torch.Tensor) and out.is_cuda
    ref = fc.compute_masks(dP.cpu().numpy(), prob.cpu().numpy())
    np.testing.assert_array_equal(out.cpu().numpy(), ref.astype(np.int32))


@pytest.mark.parametrize("shape,n,diam,kw", [((72, 80), 12, 20, {}), ((72, 80), 12, 20, {"min_size": 250}),
                                             ((16, 40, 40), 6, 14, {"flow_qc_3d": True})])
def test_vs_reference_chain(device, shape, n, diam, kw):
    """compute_masks vs the reference ops composed in the documented order (fastpose.core._reference), on noisy
    flows with two masks' flows scrambled (dropped by the flow QC) and noisy probabilities."""
    labels = random_labels(shape, n, diameter=diam, seed=5)
    rng = np.random.default_rng(8)
    dP = (5.0 * fc.masks_to_flows(labels) + rng.normal(0, 1.0, (len(shape), *shape))).astype(np.float32)
    for k in (2, 5):
        m = labels == k
        dP[:, m] = rng.normal(0, 3, (len(shape), int(m.sum())))
    prob = (cellprob_from_labels(labels) + rng.normal(0, 2.0, shape)).astype(np.float32)
    ref = reference_compute_masks(dP, prob, **kw)
    assert 3 <= ref.max() < labels.max()  # the QC or the size limit removed masks
    np.testing.assert_array_equal(fc.compute_masks(dP, prob, **kw), ref)


@pytest.mark.parametrize("shape,n,diam,kw", [((120, 130), 60, 14, {}), ((120, 130), 60, 14, {"min_size": 60}),
                                             ((20, 40, 44), 10, 12, {"flow_qc_3d": True})])
def test_equals_the_public_ops_composed(device, shape, n, diam, kw):
    """compute_masks (which frees the mask and positions before the QC and works the QC per mask) gives bitwise
    the labels of follow_flows -> get_masks -> remove_bad_flow_masks -> fill_holes_and_remove_small_masks."""
    labels = random_labels(shape, n, diameter=diam, seed=9)
    rng = np.random.default_rng(3)
    dP = (5.0 * fc.masks_to_flows(labels) + rng.normal(0, 1.2, (len(shape), *shape))).astype(np.float32)
    prob = (cellprob_from_labels(labels) + rng.normal(0, 1.0, shape)).astype(np.float32)
    mask = prob > 0.0
    pos = fc.follow_flows(dP, mask, 200)
    lab = np.asarray(fc.get_masks(pos, mask, 0.4)).astype(np.int32)
    if len(shape) == 2 or kw.get("flow_qc_3d"):
        lab = np.asarray(fc.remove_bad_flow_masks(lab, dP, 0.4)).astype(np.int32)
    want = fc.fill_holes_and_remove_small_masks(lab, kw.get("min_size", 15))
    got = fc.compute_masks(dP, prob, **kw)
    assert want.max() > 3
    np.testing.assert_array_equal(np.asarray(got).astype(np.int64), np.asarray(want).astype(np.int64))
