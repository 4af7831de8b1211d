"""get_masks: histogram-peak clustering against a plain NumPy/SciPy reference, analytic cases, bad inputs,
CPU/GPU parity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

import fastpose.core as fc
from fastpose.core._reference import get_masks as reference_get_masks
from fastpose.synthetic import random_labels

F32 = np.float32


def centroid_flows(labels: np.ndarray) -> np.ndarray:
    """Flows pointing from each pixel to its mask's centroid (5x unit vectors)."""
    nd = labels.ndim
    grid = np.indices(labels.shape).astype(F32)
    ids = np.arange(1, labels.max() + 1)
    cents = np.array(ndi.center_of_mass(np.ones(labels.shape), labels, ids), F32).reshape(-1, nd)
    c = np.zeros((nd,) + labels.shape, F32)
    for a in range(nd):
        lut = np.concatenate([[0], cents[:, a]]).astype(F32)
        c[a] = lut[labels]
    d = c - grid
    r = np.sqrt((d ** 2).sum(0))
    return np.where(labels[None] > 0, 5 * d / np.maximum(r, 1e-3), 0).astype(F32)


def disc_case(shape, centres, radius):
    grid = np.indices(shape).astype(F32)
    labels = np.zeros(shape, np.int32)
    for k, c in enumerate(centres):
        r = np.sqrt(sum((grid[a] - c[a]) ** 2 for a in range(len(shape))))
        labels[r < radius] = k + 1
    return labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images describe the same masks (up to label permutation)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("shape,n,diam", [((96, 96), 14, 20), ((32, 40, 40), 8, 14)])
def test_synthetic_end_points_match_reference(device, shape, n, diam):
    labels = random_labels(shape, n, diameter=diam, seed=5)
    mask = labels > 0
    pos = fc.follow_flows(centroid_flows(labels), mask, niter=200)
    got = fc.get_masks(pos, mask)
    ref = reference_get_masks(pos, mask)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, ref)
    assert got.max() >= 0.8 * labels.max()


@pytest.mark.parametrize("shape", [(60, 70), (14, 18, 20)])
def test_random_clusters_match_reference(device, shape):
    """Noisy, overlapping clusters of end points: exercises ties, overlaps and region growth."""
    rng = np.random.default_rng(8)
    nd = len(shape)
    mask = rng.random(shape) < 0.8
    k = int(mask.sum())
    centres = rng.uniform(0, np.array(shape) - 1, size=(max(4, k // 100), nd))
    which = rng.integers(0, len(centres), size=k)
    pts = centres[which] + rng.normal(scale=rng.choice([0.3, 0.6, 1.5], size=(k, 1)), size=(k, nd))
    pos = np.indices(shape).astype(F32)
    for a in range(nd):
        pos[a][mask] = np.clip(pts[:, a], 0, shape[a] - 1)
    got = fc.get_masks(pos, mask, max_size_fraction=0.4)
    ref = reference_get_masks(pos, mask, 0.4)
    np.testing.assert_array_equal(got, ref)
    assert got.max() > 3


def test_two_discs(device):
    shape = (64, 80)
    labels = disc_case(shape, [(20.3, 22.6), (40.5, 55.2)], 11)
    mask = labels > 0
    pos = fc.follow_flows(centroid_flows(labels), mask, 200)
    got = fc.get_masks(pos, mask)
    assert got.max() == 2
    assert same_partition(got, labels)
    assert got[20, 22] == 1 and got[40, 55] == 2  # first appearance order


def test_two_balls_3d(device):
    shape = (24, 30, 34)
    labels = disc_case(shape, [(8.2, 9.7, 10.1), (15.5, 19.4, 22.8)], 6.5)
    mask = labels > 0
    pos = fc.follow_flows(centroid_flows(labels), mask, 200)
    got = fc.get_masks(pos, mask)
    assert got.max() == 2 and same_partition(got, labels)
    np.testing.assert_array_equal(got, reference_get_masks(pos, mask))


def test_max_size_fraction_drops_huge_mask(device):
    shape = (50, 50)
    labels = disc_case(shape, [(22.0, 22.0), (45.0, 45.0)], 17)
    labels[labels == 2] = 0
    labels[disc_case(shape, [(45.2, 45.3)], 3.5) > 0] = 2
    mask = labels > 0
    pos = fc.follow_flows(centroid_flows(labels), mask, 200)
    assert (labels == 1).sum() > 0.3 * labels.size
    kept = fc.get_masks(pos, mask, max_size_fraction=0.4)
    assert kept.max() == 2
    dropped = fc.get_masks(pos, mask, max_size_fraction=0.3)
    assert dropped.max() == 1
    np.testing.assert_array_equal(dropped > 0, labels == 2)
    assert fc.get_masks(pos, mask, max_size_fraction=0.0).max() == 0


def test_empty_and_untracked(device):
    shape = (30, 30)
    pos = np.indices(shape).astype(F32)
    out = fc.get_masks(pos, np.zeros(shape, bool))
    assert out.dtype == np.uint16 and not out.any()
    # all points in one bin, but only the tracked pixels are labelled
    mask = np.zeros(shape, bool)
    mask[:5, :5] = True
    pos[:, mask] = 10.5
    out = fc.get_masks(pos, mask)
    assert out.max() == 1
    np.testing.assert_array_equal(out > 0, mask)
    empty = fc.get_masks(np.zeros((2, 0, 4), F32), np.zeros((0, 4), bool))
    assert empty.shape == (0, 4)


def test_more_than_65535_masks_is_uint32(device):
    shape = (1100, 1100)
    k = 65600
    j = np.arange(k * 11)
    g = j // 11
    pos = np.indices(shape).astype(F32).reshape(2, -1)
    pos[0, j] = 3 * (g // 366) + 0.5
    pos[1, j] = 3 * (g % 366) + 0.5
    mask = np.zeros(shape[0] * shape[1], bool)
    mask[j] = True
    out = fc.get_masks(pos.reshape(2, *shape), mask.reshape(shape))
    assert out.dtype == np.uint32
    assert int(out.max()) == k
    np.testing.assert_array_equal(out.ravel()[j], g + 1)
    assert not out.ravel()[k * 11:].any()


def test_torch_input_gives_int32_tensor():
    torch = pytest.importorskip("torch")
    shape = (40, 40)
    labels = disc_case(shape, [(12.3, 12.6), (28.5, 27.2)], 8)
    mask = labels > 0
    with fc.use_backend("cpu"):
        pos = fc.follow_flows(centroid_flows(labels), mask, 200)
        out = fc.get_masks(torch.from_numpy(pos), torch.from_numpy(mask))
        ref = fc.get_masks(pos, mask)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int32
    np.testing.assert_array_equal(out.numpy(), ref)


def test_bad_inputs():
    shape = (10, 12)
    pos = np.indices(shape).astype(F32)
    mask = np.ones(shape, bool)
    with pytest.raises(ValueError, match="positions must have shape"):
        fc.get_masks(pos[:, :, :-1], mask)
    with pytest.raises(ValueError, match="positions must have shape"):
        fc.get_masks(np.zeros((3, *shape), F32), mask)
    with pytest.raises(ValueError, match="positions must have shape"):
        fc.get_masks(pos, np.ones((11, 12), bool))
    with pytest.raises(ValueError, match="mask must be"):
        fc.get_masks(pos, np.ones((2, 3, 4, 5), bool))
    with pytest.raises(ValueError, match="mask must be a bool or integer"):
        fc.get_masks(pos, mask.astype(np.float64))
    bad = pos.copy()
    bad[0, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        fc.get_masks(bad, mask)
    with pytest.raises(ValueError, match="max_size_fraction"):
        fc.get_masks(pos, mask, max_size_fraction=-0.1)
    with pytest.raises(ValueError, match="max_size_fraction"):
        fc.get_masks(pos, mask, max_size_fraction=float("nan"))


@pytest.mark.cuda
@pytest.mark.parametrize("shape,n,diam", [((256, 256), 70, 24), ((48, 64, 64), 30, 16)])
def test_cpu_cuda_parity(shape, n, diam):
    labels = random_labels(shape, n, diameter=diam, seed=9)
    mask = labels > 0
    with fc.use_backend("cpu"):
        pos = fc.follow_flows(centroid_flows(labels), mask, 200)
        a = fc.get_masks(pos, mask)
    with fc.use_backend("cuda"):
        b = fc.get_masks(pos, mask)
    np.testing.assert_array_equal(a, b)
    # noisy clusters (many seeds, overlaps, ties)
    rng = np.random.default_rng(10)
    pts = pos.copy()
    pts[:, mask] += rng.normal(scale=1.5, size=(len(shape), int(mask.sum()))).astype(F32)
    for ax in range(len(shape)):
        np.clip(pts[ax], 0, shape[ax] - 1, out=pts[ax])
    with fc.use_backend("cpu"):
        a = fc.get_masks(pts, mask)
    with fc.use_backend("cuda"):
        b = fc.get_masks(pts, mask)
    np.testing.assert_array_equal(a, b)
