"""fill_holes_and_remove_small_masks: scipy reference, analytic cases, renumbering, bad inputs, parity."""

from __future__ import annotations

import numpy as np
import pytest

import fastpose.core as fc
from fastpose import _core
from fastpose.core._reference import fill_holes_and_remove_small_masks as reference
from fastpose.synthetic import disc


def holey(labels: np.ndarray, seed: int) -> np.ndarray:
    """Punch holes (single pixels and small squares) into masks and add tiny masks."""
    rng = np.random.default_rng(seed)
    lab = labels.copy()
    fg = np.argwhere(lab > 0)
    for p in fg[rng.choice(len(fg), size=max(1, len(fg) // 60), replace=False)]:
        sl = tuple(slice(max(0, c - rng.integers(0, 2)), c + rng.integers(1, 3)) for c in p)
        lab[sl] = 0
    nxt = lab.max() + 1
    for p in np.argwhere(lab == 0)[rng.choice(int((lab == 0).sum()), size=20, replace=False)]:
        lab[tuple(p)] = nxt  # one-pixel masks, some inside holes
        nxt += 1
    return lab


@pytest.mark.parametrize("min_size", [0, 15, 200])
def test_vs_reference_2d(device, labels2d, min_size):
    lab = holey(labels2d, 0)
    out = fc.fill_holes_and_remove_small_masks(lab, min_size=min_size)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, reference(lab, min_size))


def test_vs_reference_3d(device, labels3d):
    lab = holey(labels3d, 1)
    out = fc.fill_holes_and_remove_small_masks(lab, min_size=15)
    np.testing.assert_array_equal(out, reference(lab, 15))


def test_non_sequential_labels_vs_reference(device, labels2d):
    lab = holey(labels2d, 2)
    rng = np.random.default_rng(3)
    perm = np.concatenate([[0], rng.permutation(np.arange(1, lab.max() + 1)) * 7 + 3])
    sparse = perm[lab].astype(np.int32)
    out = fc.fill_holes_and_remove_small_masks(sparse, min_size=15)
    np.testing.assert_array_equal(out, reference(sparse, 15))


def test_ring_becomes_disc(device):
    yy, xx = np.indices((64, 64))
    r = np.hypot(yy - 30, xx - 33)
    ring = ((r >= 8) & (r <= 16)).astype(np.int32) * 4
    out = fc.fill_holes_and_remove_small_masks(ring)
    np.testing.assert_array_equal(out, (r <= 16).astype(np.uint16))


def test_open_ring_not_filled(device):
    yy, xx = np.indices((64, 64))
    r = np.hypot(yy - 32, xx - 32)
    c = (r >= 8) & (r <= 16) & ~((xx > 32) & (np.abs(yy - 32) < 3))  # a gap connects the inside to outside
    out = fc.fill_holes_and_remove_small_masks(c.astype(np.int32))
    np.testing.assert_array_equal(out, c.astype(np.uint16))


def test_small_masks_removed_and_renumbered(device):
    lab = np.zeros((40, 60), np.int32)
    lab[2:12, 2:12] = 9    # 100 px
    lab[20:23, 20:23] = 2  # 9 px: removed
    lab[25:35, 40:50] = 5  # 100 px
    lab[0, 59] = 1         # 1 px: removed
    out = fc.fill_holes_and_remove_small_masks(lab, min_size=15)
    exp = np.zeros_like(lab)
    exp[lab == 5] = 1
    exp[lab == 9] = 2
    np.testing.assert_array_equal(out, exp)
    keep_all = fc.fill_holes_and_remove_small_masks(lab, min_size=0)
    np.testing.assert_array_equal(keep_all, np.searchsorted([0, 1, 2, 5, 9], lab))


def test_nested_masks(device):
    yy, xx = np.indices((80, 80))
    r = np.hypot(yy - 40, xx - 40)
    lab = np.zeros((80, 80), np.int32)
    lab[(r >= 25) & (r <= 32)] = 5   # outer ring
    lab[(r >= 10) & (r <= 16)] = 3   # inner ring inside the outer ring's hole
    lab[38:41, 20:23] = 8            # small mask (9 px) inside the gap: removed, then filled by 5
    out = fc.fill_holes_and_remove_small_masks(lab, min_size=15)
    # kept: 3 -> 1, 5 -> 2; the centre is in both holes: lowest label (3) wins; the gap goes to 5.
    exp = np.where(r <= 16, 1, np.where(r <= 32, 2, 0))
    np.testing.assert_array_equal(out, exp)
    np.testing.assert_array_equal(out, reference(lab, 15))


def test_nested_kept_mask_preserved(device):
    lab = (disc((50, 50), (25, 25), 20) & ~disc((50, 50), (25, 25), 12)).astype(np.int32) * 2
    lab[disc((50, 50), (25, 25), 6)] = 7
    out = fc.fill_holes_and_remove_small_masks(lab, min_size=15)
    assert set(np.unique(out[disc((50, 50), (25, 25), 6)])) == {2}
    assert (out == 1).sum() == disc((50, 50), (25, 25), 20).sum() - disc((50, 50), (25, 25), 6).sum()


def test_3d_holes_are_per_plane(device):
    # A closed hollow box: its cavity is a 3D hole, but per plane only the middle planes are rings.
    lab = np.zeros((9, 12, 12), np.int32)
    lab[1:8, 2:10, 2:10] = 1
    lab[3:6, 4:8, 4:8] = 0          # cavity
    lab[4, 6, 0:6] = 0              # tunnel from the side in plane 4: connects the cavity to the box border
    out = fc.fill_holes_and_remove_small_masks(lab, min_size=0)
    assert (out[3] == 1)[2:10, 2:10].all() and (out[5] == 1)[2:10, 2:10].all()
    assert out[4, 5, 5] == 0 and out[4, 6, 6] == 0  # plane 4: reached from the side
    np.testing.assert_array_equal(out, reference(lab, 0))


def test_empty_and_background(device):
    assert fc.fill_holes_and_remove_small_masks(np.zeros((0, 5), np.int32)).shape == (0, 5)
    z = fc.fill_holes_and_remove_small_masks(np.zeros((7, 9), np.uint8))
    assert z.shape == (7, 9) and not z.any()
    one = fc.fill_holes_and_remove_small_masks(np.ones((1, 1), np.int32), min_size=0)
    assert one.tolist() == [[1]]
    assert not fc.fill_holes_and_remove_small_masks(np.ones((1, 1), np.int32)).any()


def test_input_untouched_and_huge_labels(device):
    lab = np.zeros((20, 20), np.int64)
    lab[2:10, 2:10] = 10**12
    lab[12:18, 12:18] = 10**9
    lab[5, 5] = 0
    before = lab.copy()
    out = fc.fill_holes_and_remove_small_masks(lab)
    np.testing.assert_array_equal(lab, before)
    assert out[5, 5] == 2 and out[15, 15] == 1 and out.max() == 2


def test_uint32_beyond_65535_masks(device):
    lab = np.arange(1, 70001, dtype=np.int32).reshape(1, 70000)
    out = fc.fill_holes_and_remove_small_masks(lab, min_size=0)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, lab)


def test_thread_count_independent(labels2d):
    lab = holey(labels2d, 4)
    outs = []
    for nt in (1, 2, 3):
        a = np.ascontiguousarray(lab, np.int32).copy()
        n = _core.fill_holes_and_remove_small_masks(a.ctypes.data, (2, 1, *a.shape), 15, 0, 0, nt)
        outs.append((n, a))
    for n, a in outs[1:]:
        assert n == outs[0][0]
        np.testing.assert_array_equal(a, outs[0][1])


def test_torch_input(device, labels2d):
    torch = pytest.importorskip("torch")
    lab = holey(labels2d, 5)
    out = fc.fill_holes_and_remove_small_masks(torch.from_numpy(lab))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), reference(lab, 15))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((5, 5), np.float32), "integer"),
    (np.full((5, 5), -1, np.int32), "negative"),
    (np.zeros(5, np.int32), "2D or 3D"),
    (np.zeros((2, 2, 2, 2), np.int32), "2D or 3D"),
    ("abc", "2D or 3D|numeric|integer"),
])
def test_bad_inputs(device, bad, match):
    with pytest.raises(ValueError, match=match):
        fc.fill_holes_and_remove_small_masks(bad)


def test_bad_min_size():
    with pytest.raises(ValueError, match="min_size"):
        fc.fill_holes_and_remove_small_masks(np.zeros((4, 4), np.int32), min_size="big")


def test_core_rejects_bad_labels():
    a = np.array([[0, 1], [2, 99]], np.int32)  # max label > number of pixels
    with pytest.raises(ValueError, match="relabel"):
        _core.fill_holes_and_remove_small_masks(a.ctypes.data, (2, 1, 2, 2), 0, 0, 0, 0)
    a = np.array([[0, -1], [2, 1]], np.int32)
    with pytest.raises(ValueError, match="negative"):
        _core.fill_holes_and_remove_small_masks(a.ctypes.data, (2, 1, 2, 2), 0, 0, 0, 0)


@pytest.mark.cuda
@pytest.mark.parametrize("which", ["2d", "3d"])
def test_cpu_cuda_parity(labels2d, labels3d, which):
    lab = holey(labels2d if which == "2d" else labels3d, 6)
    with fc.use_backend("cpu"):
        a = fc.fill_holes_and_remove_small_masks(lab, min_size=15)
    with fc.use_backend("cuda"):
        b = fc.fill_holes_and_remove_small_masks(lab, min_size=15)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, reference(lab, 15))


@pytest.mark.cuda
def test_cuda_tensor_in_place_on_device(labels2d):
    torch = pytest.importorskip("torch")
    lab = holey(labels2d, 7)
    out = fc.fill_holes_and_remove_small_masks(torch.from_numpy(lab).cuda())
    assert out.is_cuda
    np.testing.assert_array_equal(out.cpu().numpy(), reference(lab, 15))
