"""masks_to_flows / flow_errors / remove_bad_flow_masks against a plain NumPy port of Cellpose 3
(``fastpose.core._reference``)."""

from __future__ import annotations

import numpy as np
import pytest

import fastpose.core as fc
from fastpose.core._reference import flow_errors as ref_flow_errors
from fastpose.core._reference import masks_to_flows as ref_masks_to_flows
from fastpose.synthetic import disc, random_labels


def source_of(mask: np.ndarray) -> np.ndarray:
    pts = np.argwhere(mask)
    return pts[((pts - pts.mean(0)) ** 2).sum(1).argmin()]


@pytest.fixture(scope="module")
def small2d() -> np.ndarray:
    return random_labels((72, 80), 12, diameter=20, seed=5)


@pytest.fixture(scope="module")
def small3d() -> np.ndarray:
    return random_labels((18, 24, 26), 5, diameter=12, seed=6)


# ------------------------------------------------------------------------------------------------
# Agreement with the reference
# ------------------------------------------------------------------------------------------------

def test_reference_2d(device, small2d):
    assert small2d.max() >= 8
    f = fc.masks_to_flows(small2d)
    assert isinstance(f, np.ndarray) and f.dtype == np.float32 and f.shape == (2, *small2d.shape)
    np.testing.assert_allclose(f, ref_masks_to_flows(small2d), rtol=0, atol=1e-5)


def test_reference_3d(device, small3d):
    assert small3d.max() >= 3
    f = fc.masks_to_flows(small3d)
    assert f.shape == (3, *small3d.shape)
    np.testing.assert_allclose(f, ref_masks_to_flows(small3d), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.uint8])
def test_non_sequential_labels(device, small2d, dtype):
    sparse = np.where(small2d > 0, small2d * 7 + 3, 0).astype(dtype)
    np.testing.assert_allclose(fc.masks_to_flows(sparse), ref_masks_to_flows(small2d), rtol=0, atol=1e-5)


def test_labels_above_pixel_count(device):
    lab = np.zeros((6, 7), np.int64)
    lab[1:4, 1:5] = 100_000
    lab[4:6, 5:7] = 7
    ref = ref_masks_to_flows(np.where(lab == 100_000, 1, np.where(lab == 7, 2, 0)))
    np.testing.assert_allclose(fc.masks_to_flows(lab), ref, rtol=0, atol=1e-5)
    err = fc.flow_errors(lab, 5 * ref)
    assert err.shape == (100_000,)
    assert err.max() < 1e-8 and np.count_nonzero(err) <= 2


@pytest.mark.parametrize("niter", [1, 7, 60])
def test_explicit_niter(device, small2d, niter):
    np.testing.assert_allclose(fc.masks_to_flows(small2d, niter=niter), ref_masks_to_flows(small2d, niter=niter),
                               rtol=0, atol=1e-5)


def test_border_and_tiny_images(device):
    lab = np.zeros((9, 11), np.int32)
    lab[:4, :3] = 1          # corner
    lab[5:, 8:] = 2          # opposite corner
    lab[:, 5] = 3            # full-height line touching two borders
    lab[8, 0] = 4            # single pixel on the border
    np.testing.assert_allclose(fc.masks_to_flows(lab), ref_masks_to_flows(lab), rtol=0, atol=1e-5)
    one = np.ones((1, 1), np.int32)
    assert np.array_equal(fc.masks_to_flows(one), np.zeros((2, 1, 1), np.float32))
    row = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 3]], np.int32)
    np.testing.assert_allclose(fc.masks_to_flows(row), ref_masks_to_flows(row), rtol=0, atol=1e-5)
    col3 = np.ones((5, 1, 1), np.int32)
    np.testing.assert_allclose(fc.masks_to_flows(col3), ref_masks_to_flows(col3), rtol=0, atol=1e-5)


def test_empty_images(device):
    assert np.array_equal(fc.masks_to_flows(np.zeros((13, 17), np.int32)), np.zeros((2, 13, 17), np.float32))
    assert np.array_equal(fc.masks_to_flows(np.zeros((3, 5, 4), np.uint16)), np.zeros((3, 3, 5, 4), np.float32))
    assert fc.masks_to_flows(np.zeros((0, 5), np.int32)).shape == (2, 0, 5)
    assert fc.flow_errors(np.zeros((4, 4), np.int32), np.zeros((2, 4, 4), np.float32)).shape == (0,)
    out = fc.remove_bad_flow_masks(np.zeros((4, 4), np.int32), np.ones((2, 4, 4), np.float32))
    assert np.array_equal(out, np.zeros((4, 4), np.int32))


# ------------------------------------------------------------------------------------------------
# Analytic properties
# ------------------------------------------------------------------------------------------------

def test_disc_points_inward(device):
    shape, centre = (64, 70), (31.3, 36.6)
    lab = disc(shape, centre, 17).astype(np.int32)
    f = fc.masks_to_flows(lab)
    inside = lab > 0
    assert np.all(f[:, ~inside] == 0)
    norm = np.sqrt((f ** 2).sum(0))[inside]
    assert np.mean(np.abs(norm - 1) < 1e-5) > 0.995
    assert np.all((np.abs(norm - 1) < 1e-5) | (norm == 0))
    src = source_of(inside)
    pts = np.argwhere(inside)
    to_src = src[None, :] - pts
    far = np.hypot(*to_src.T) > 1.5
    dots = (f[:, inside].T * to_src).sum(1)[far]
    assert np.mean(dots > 0) > 0.99


def test_ball_points_inward(device):
    shape, centre = (20, 22, 24), (9.6, 10.8, 11.2)
    lab = disc(shape, centre, 7.5).astype(np.int32)
    f = fc.masks_to_flows(lab)
    inside = lab > 0
    assert f.shape == (3, *shape)
    assert np.all(f[:, ~inside] == 0)
    norm = np.sqrt((f ** 2).sum(0))[inside]
    assert np.mean(np.abs(norm - 1) < 1e-5) > 0.99
    src = source_of(inside)
    pts = np.argwhere(inside)
    to_src = src[None, :] - pts
    far = np.sqrt((to_src ** 2).sum(1)) > 1.5
    assert np.mean((f[:, inside].T * to_src).sum(1)[far] > 0) > 0.99


def follow(f: np.ndarray, mask: np.ndarray, steps: int = 400, h: float = 0.5):
    """Euler steps along the flow with nearest-pixel lookup from every mask pixel.

    Returns (left_mask: bool per start, end points).
    """
    p = np.argwhere(mask).astype(np.float64)
    left = np.zeros(len(p), bool)
    hi = np.array(mask.shape) - 1
    for _ in range(steps):
        q = np.clip(np.rint(p).astype(int), 0, hi)
        left |= ~mask[tuple(q.T)]
        p = p + h * f[(slice(None),) + tuple(q.T)].T
    q = np.clip(np.rint(p).astype(int), 0, hi)
    left |= ~mask[tuple(q.T)]
    return left, p


def ellipse(shape, centre, ry, rx):
    yy, xx = np.indices(shape)
    return ((yy - centre[0]) / ry) ** 2 + ((xx - centre[1]) / rx) ** 2 <= 1


def c_shape(shape=(80, 80)):
    yy, xx = np.indices(shape)
    r = np.hypot(yy - 40, xx - 40)
    return (r >= 12) & (r <= 22) & ~((xx > 40) & (np.abs(yy - 40) < 5))


@pytest.mark.parametrize("name", ["ellipse", "c_shape"])
def test_trajectories_stay_inside_and_converge(device, name):
    mask = ellipse((50, 90), (24.3, 44.8), 14, 38) if name == "ellipse" else c_shape()
    lab = mask.astype(np.int32)
    f = fc.masks_to_flows(lab)
    left, end = follow(f, mask)
    assert left.mean() < 0.01
    src = source_of(mask)
    dist = np.sqrt(((end - src) ** 2).sum(1))
    assert np.mean(dist < 3) > 0.97
    if name == "c_shape":  # the source is on the ring, not at the (outside) centre of mass
        assert mask[tuple(src)] and np.hypot(*(src - 40)) >= 11.5


# ------------------------------------------------------------------------------------------------
# Flow errors and QC
# ------------------------------------------------------------------------------------------------

def test_flow_errors_match_reference(device, small2d):
    rng = np.random.default_rng(0)
    dP = (5 * ref_masks_to_flows(small2d) + rng.normal(0, 2, (2, *small2d.shape))).astype(np.float32)
    err = fc.flow_errors(small2d, dP)
    assert err.dtype == np.float32 and err.shape == (small2d.max(),)
    np.testing.assert_allclose(err, ref_flow_errors(small2d, dP), rtol=1e-5, atol=1e-7)


def test_flow_errors_exact_and_random(device, small2d, small3d):
    for lab in (small2d, small3d):
        f = fc.masks_to_flows(lab)
        assert fc.flow_errors(lab, 5 * f).max() < 1e-10
        rng = np.random.default_rng(1)
        err = fc.flow_errors(lab, rng.normal(0, 5, f.shape).astype(np.float32))
        assert err.min() > 0.5


def test_flow_errors_absent_labels(device):
    lab = np.zeros((20, 20), np.int32)
    lab[2:8, 2:9] = 1
    lab[10:18, 11:19] = 3
    dP = np.ones((2, 20, 20), np.float32)
    err = fc.flow_errors(lab, dP)
    assert err.shape == (3,) and err[1] == 0 and err[0] > 0 and err[2] > 0


def test_remove_bad_flow_masks(device, small2d):
    lab = small2d.astype(np.uint16)
    dP = 5 * fc.masks_to_flows(lab)
    rng = np.random.default_rng(2)
    bad = [2, 5, int(lab.max())]
    for k in bad:
        m = lab == k
        dP[:, m] = rng.normal(0, 5, (2, int(m.sum()))).astype(np.float32)
    before = lab.copy()
    out = fc.remove_bad_flow_masks(lab, dP, threshold=0.4)
    assert np.array_equal(lab, before), "input must not be modified"
    assert out.dtype == np.uint16 and out.shape == lab.shape
    expect = np.where(np.isin(lab, bad), 0, lab)
    assert np.array_equal(out, expect)
    # a huge threshold keeps everything, a negative one removes everything
    assert np.array_equal(fc.remove_bad_flow_masks(lab, dP, threshold=1e9), lab)
    assert not fc.remove_bad_flow_masks(lab, dP, threshold=-1.0).any()
    # int32 input is copied too
    lab32 = small2d.astype(np.int32)
    out32 = fc.remove_bad_flow_masks(lab32, dP)
    assert out32.dtype == np.int32 and np.array_equal(lab32, small2d) and np.array_equal(out32, expect)


def test_torch_cpu_tensors_in_and_out(small2d):
    torch = pytest.importorskip("torch")
    with fc.use_backend("cpu"):
        f = fc.masks_to_flows(torch.from_numpy(small2d))
        assert isinstance(f, torch.Tensor)
        np.testing.assert_array_equal(f.numpy(), fc.masks_to_flows(small2d))
        out = fc.remove_bad_flow_masks(torch.from_numpy(small2d.astype(np.int16)), 5 * f)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.int16


# ------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["masks_to_flows", "flow_errors", "remove_bad_flow_masks"])
def test_bad_labels(device, fn):
    call = {
        "masks_to_flows": lambda m: fc.masks_to_flows(m),
        "flow_errors": lambda m: fc.flow_errors(m, np.zeros((np.ndim(m), *np.shape(m)), np.float32)),
        "remove_bad_flow_masks": lambda m: fc.remove_bad_flow_masks(m, np.zeros((np.ndim(m), *np.shape(m)), np.float32)),
    }[fn]
    with pytest.raises(ValueError, match="integer"):
        call(np.ones((8, 8), np.float32))
    with pytest.raises(ValueError, match="negative"):
        call(-np.ones((8, 8), np.int32))
    with pytest.raises(ValueError, match="2D or 3D"):
        call(np.ones(8, np.int32))
    with pytest.raises(ValueError, match="2D or 3D"):
        call(np.ones((2, 3, 4, 5), np.int32))
    with pytest.raises(ValueError):
        call("not an array")


def test_bad_flows_and_params(device):
    lab = np.ones((8, 9), np.int32)
    good = np.zeros((2, 8, 9), np.float32)
    for fn in (fc.flow_errors, fc.remove_bad_flow_masks):
        with pytest.raises(ValueError, match="dP must have shape"):
            fn(lab, np.zeros((2, 9, 8), np.float32))
        with pytest.raises(ValueError, match="dP must have shape"):
            fn(lab, np.zeros((3, 8, 9), np.float32))
        bad = good.copy()
        bad[1, 3, 3] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            fn(lab, bad)
        bad[1, 3, 3] = np.inf
        with pytest.raises(ValueError, match="NaN or Inf"):
            fn(lab, bad)
    with pytest.raises(ValueError, match="threshold"):
        fc.remove_bad_flow_masks(lab, good, threshold=float("nan"))
    with pytest.raises(ValueError, match="niter"):
        fc.masks_to_flows(lab, niter=-1)
    with pytest.raises(ValueError, match="niter"):
        fc.masks_to_flows(lab, niter=2.5)


def test_native_layer_rejects_bad_values():
    """The C++ wrappers check what the Python layer would normally catch first."""
    from fastpose import _core
    lab = np.array([[0, 1], [2, 5]], np.int32)
    flows = np.zeros((2, 2, 2), np.float32)
    err = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="exceeds nlabels"):
        _core.flow_errors(lab.ctypes.data, (2, 1, 2, 2), flows.ctypes.data, 2, err.ctypes.data, 0, 0, 0)
    with pytest.raises(ValueError, match="number of pixels"):
        _core.masks_to_flows(lab.ctypes.data, (2, 1, 2, 2), flows.ctypes.data, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="null pointer"):
        _core.masks_to_flows(0, (2, 1, 2, 2), flows.ctypes.data, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="ndim"):
        _core.masks_to_flows(lab.ctypes.data, (4, 1, 2, 2), flows.ctypes.data, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="threshold"):
        _core.remove_bad_flow_masks(lab.ctypes.data, (2, 1, 2, 2), flows.ctypes.data, 5, float("nan"), 0, 0, 0)


# ------------------------------------------------------------------------------------------------
# CPU / GPU parity (runs on a GPU machine)
# ------------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_cpu_cuda_parity(labels2d, labels3d):
    rng = np.random.default_rng(3)
    for lab in (labels2d, labels3d):
        with fc.use_backend("cpu"):
            f_cpu = fc.masks_to_flows(lab)
        with fc.use_backend("cuda"):
            f_gpu = fc.masks_to_flows(lab)
        np.testing.assert_allclose(f_gpu, f_cpu, rtol=0, atol=1e-5)
        assert np.array_equal(f_gpu, f_cpu), "flows should be bitwise identical"
        dP = (5 * f_cpu + rng.normal(0, 2, f_cpu.shape)).astype(np.float32)
        with fc.use_backend("cpu"):
            e_cpu = fc.flow_errors(lab, dP)
            r_cpu = fc.remove_bad_flow_masks(lab, dP, 0.4)
        with fc.use_backend("cuda"):
            e_gpu = fc.flow_errors(lab, dP)
            r_gpu = fc.remove_bad_flow_masks(lab, dP, 0.4)
        assert np.array_equal(e_cpu, e_gpu)
        assert np.array_equal(r_cpu, r_gpu)


@pytest.mark.cuda
def test_cuda_big_mask_and_tensors():
    torch = pytest.importorskip("torch")
    lab = disc((520, 530), (259.5, 262.3), 250).astype(np.int32)
    lab[:5, :5] = 2
    with fc.use_backend("cpu"):
        f_cpu = fc.masks_to_flows(lab, niter=300)
    t = torch.from_numpy(lab).cuda()
    f_gpu = fc.masks_to_flows(t, niter=300)
    assert f_gpu.is_cuda
    assert np.array_equal(f_gpu.cpu().numpy(), f_cpu)


@pytest.mark.cuda
def test_cuda_shared_memory_paths_and_host_threads():
    """Masks whose padded boxes need < 44 KiB, 44-48 KiB (over the default 48 KiB with the kernel's 4 KiB of
    static arrays: the window that once failed to launch), 48-64 KiB, and > 64 KiB (global scratch) of the
    diffusion kernel, in 2D and 3D, from one host thread and from several at once: all bitwise equal to the CPU."""
    import concurrent.futures as cf

    torch = pytest.importorskip("torch")
    lab = np.zeros((300, 300), np.int32)
    for k, (y, x, s) in enumerate([(2, 2, 20), (30, 2, 76), (110, 2, 80), (200, 2, 90), (2, 100, 130),
                                   (140, 100, 70)]):
        lab[y:y + s, x:x + s] = k + 1
    vol = np.zeros((24, 40, 40), np.int32)
    vol[2:18, 3:18, 3:18] = 1  # padded box 18x17x17 = 5202 voxels x 9 bytes: 45.7 KiB, in the window
    vol[2:10, 22:30, 22:30] = 2
    with fc.use_backend("cpu"):
        fv = fc.masks_to_flows(vol)
    assert np.array_equal(fc.masks_to_flows(torch.from_numpy(vol).cuda()).cpu().numpy(), fv)
    with fc.use_backend("cpu"):
        f_cpu = fc.masks_to_flows(lab)
        e_cpu = fc.flow_errors(lab, 5 * f_cpu + 0.5)
    t = torch.from_numpy(lab).cuda()

    def run(_):
        f = fc.masks_to_flows(t)
        e = fc.flow_errors(t, 5 * f + 0.5)
        torch.cuda.synchronize()
        return f.cpu().numpy(), e.cpu().numpy()

    with cf.ThreadPoolExecutor(4) as pool:
        results = [run(0)] + list(pool.map(run, range(8)))
    for f, e in results:
        assert np.array_equal(f, f_cpu)
        assert np.array_equal(e, e_cpu)


# ------------------------------------------------------------------------------------------------
# The flow QC's per-mask (box-local) flows are those of masks_to_flows, bit for bit
# ------------------------------------------------------------------------------------------------

def lane_errors(labels: np.ndarray, flows: np.ndarray, dP: np.ndarray) -> np.ndarray:
    """flow_errors' documented arithmetic on whole-image flows: per mask, the pixel terms sum_c (f - dP / 5)^2
    (float64) go to lane j % 256 (j: raster index in the mask's bounding box), each lane summed in raster order,
    the lanes combined by the fixed halving tree, the sum divided by the count, rounded to float32."""
    nl = int(labels.max())
    out = np.zeros(nl, np.float32)
    for lab in range(1, nl + 1):
        m = labels == lab
        if not m.any():
            continue
        idx = np.argwhere(m)
        lo, hi = idx.min(0), idx.max(0)
        box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
        mb = m[box].ravel()
        j = np.flatnonzero(mb)
        t = np.zeros(j.size)
        for c in range(flows.shape[0]):
            d = flows[c][box].ravel()[mb].astype(np.float64) - dP[c][box].ravel()[mb].astype(np.float64) / 5.0
            t = t + d * d
        lanes = np.zeros(256)
        np.add.at(lanes, j % 256, t)  # unbuffered: each lane in raster order
        s = 128
        while s:
            lanes[:s] = lanes[:s] + lanes[s:2 * s]
            s //= 2
        out[lab - 1] = np.float32(lanes[0] / j.size)
    return out


def awkward_labels_2d() -> np.ndarray:
    """Touching masks, masks on every image border, a label in two far-apart parts (its box covers others), a
    ring around another mask, one-pixel masks."""
    lab = random_labels((90, 110), 30, diameter=16, seed=11, min_distance=0.3)
    lab[lab == 3] = 0
    lab[2:6, 3:9] = 3
    lab[80:88, 95:104] = 3
    n = int(lab.max())
    lab[40:60, 0:25] = 0
    lab[40:60, 0:25][np.hypot(*np.mgrid[-10:10, -12:13]) < 10] = n + 1
    lab[44:56, 0:8] = n + 2
    lab[0, 50] = n + 3
    lab[89, 109] = n + 4
    return lab


def test_flow_errors_bitwise_equal_whole_image_flows(device, small3d):
    rng = np.random.default_rng(4)
    for lab in (awkward_labels_2d(), small3d, random_labels((70, 75), 200, diameter=8, seed=2, min_distance=0.2)):
        lab = lab.astype(np.int32)
        f = np.asarray(fc.masks_to_flows(lab))
        dP = (5 * f + rng.normal(0, 1.5, f.shape)).astype(np.float32)
        err = np.asarray(fc.flow_errors(lab, dP))
        np.testing.assert_array_equal(err, lane_errors(lab, f, dP))
