"""follow_flows: Euler tracking against a plain NumPy reference, analytic cases, bad inputs, CPU/GPU parity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

import fastpose.core as fc
from fastpose.core._reference import follow_flows as reference_follow_flows

F32 = np.float32


def smooth_flows(shape, seed, scale=5.0):
    rng = np.random.default_rng(seed)
    f = np.stack([ndi.gaussian_filter(rng.normal(size=shape), 3.0) for _ in shape])
    f *= scale / (np.abs(f).max() + 1e-9)
    return f.astype(F32)


def centre_flows(shape, centre):
    grid = np.indices(shape).astype(F32)
    d = np.asarray(centre, F32).reshape((-1,) + (1,) * len(shape)) - grid
    r = np.sqrt((d ** 2).sum(0))
    return (5 * d / np.maximum(r, 1e-6)).astype(F32), r


@pytest.mark.parametrize("shape", [(40, 50), (12, 20, 24)])
def test_matches_reference_smooth(device, shape):
    dP = smooth_flows(shape, 3)
    rng = np.random.default_rng(4)
    mask = ndi.gaussian_filter(rng.normal(size=shape), 2.0) > -0.05
    got = fc.follow_flows(dP, mask, niter=60)
    ref = reference_follow_flows(dP, mask, 60)
    assert got.dtype == np.float32 and got.shape == (len(shape), *shape)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape,centre", [((48, 40), (20.3, 17.6)), ((20, 24, 22), (9.6, 11.2, 10.7))])
def test_converges_to_centre(device, shape, centre):
    dP, r = centre_flows(shape, centre)
    mask = r < 9
    pos = fc.follow_flows(dP, mask, niter=200)
    pts = pos[:, mask]
    dist = np.sqrt(((pts - np.asarray(centre, F32)[:, None]) ** 2).sum(0))
    assert dist.max() < 1.5
    np.testing.assert_allclose(pos, reference_follow_flows(dP, mask, 200), atol=1e-4, rtol=0)
    # untracked pixels keep their own coordinates
    grid = np.indices(shape).astype(F32)
    np.testing.assert_array_equal(pos[:, ~mask], grid[:, ~mask])


def test_flows_outside_mask_are_ignored(device):
    shape = (30, 30)
    dP, r = centre_flows(shape, (14.5, 15.5))
    mask = r < 8
    noisy = dP.copy()
    noisy[:, ~mask] = 1000.0
    np.testing.assert_array_equal(fc.follow_flows(noisy, mask, 100), fc.follow_flows(dP, mask, 100))


def test_niter_zero_and_empty_mask(device):
    shape = (17, 23)
    dP = smooth_flows(shape, 5)
    grid = np.indices(shape).astype(F32)
    np.testing.assert_array_equal(fc.follow_flows(dP, np.ones(shape, bool), niter=0), grid)
    np.testing.assert_array_equal(fc.follow_flows(dP, np.zeros(shape, np.uint8), niter=50), grid)


@pytest.mark.parametrize("shape", [(25, 31), (7, 9, 11)])
def test_positions_stay_inside(device, shape):
    rng = np.random.default_rng(7)
    dP = (rng.normal(size=(len(shape), *shape)) * 200).astype(F32)
    pos = fc.follow_flows(dP, np.ones(shape, bool), niter=30)
    for a, n in enumerate(shape):
        assert pos[a].min() >= 0 and pos[a].max() <= n - 1
    np.testing.assert_allclose(pos, reference_follow_flows(dP, np.ones(shape, bool), 30), atol=1e-4, rtol=0)


def test_tiny_and_empty_images(device):
    one = fc.follow_flows(np.full((2, 1, 1), 3.0, F32), np.ones((1, 1), bool), 10)
    np.testing.assert_array_equal(one, np.zeros((2, 1, 1), F32))
    empty = fc.follow_flows(np.zeros((2, 0, 5), F32), np.zeros((0, 5), bool), 10)
    assert empty.shape == (2, 0, 5)


def test_torch_input_gives_tensor():
    torch = pytest.importorskip("torch")
    shape = (20, 20)
    dP, r = centre_flows(shape, (9.5, 10.5))
    mask = r < 6
    with fc.use_backend("cpu"):
        out = fc.follow_flows(torch.from_numpy(dP), torch.from_numpy(mask), 50)
        ref = fc.follow_flows(dP, mask, 50)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), ref)


def test_bad_inputs():
    shape = (10, 12)
    dP = np.zeros((2, *shape), F32)
    mask = np.ones(shape, bool)
    with pytest.raises(ValueError, match="dP must have shape"):
        fc.follow_flows(dP[:, :, :-1], mask)
    with pytest.raises(ValueError, match="dP must have shape"):
        fc.follow_flows(np.zeros((3, *shape), F32), mask)
    with pytest.raises(ValueError, match="dP must have shape"):
        fc.follow_flows(dP, np.ones((10, 13), bool))
    with pytest.raises(ValueError, match="mask must be"):
        fc.follow_flows(dP[0, 0], mask[0])
    with pytest.raises(ValueError, match="mask must be a bool or integer"):
        fc.follow_flows(dP, mask.astype(F32))
    bad = dP.copy()
    bad[1, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        fc.follow_flows(bad, mask)
    bad[1, 3, 4] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        fc.follow_flows(bad, mask)
    with pytest.raises(ValueError, match="niter"):
        fc.follow_flows(dP, mask, niter=-1)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(96, 80), (20, 32, 28)])
def test_cpu_cuda_parity(shape):
    dP = smooth_flows(shape, 11)
    rng = np.random.default_rng(12)
    mask = ndi.gaussian_filter(rng.normal(size=shape), 2.0) > -0.1
    with fc.use_backend("cpu"):
        a = fc.follow_flows(dP, mask, 200)
    with fc.use_backend("cuda"):
        b = fc.follow_flows(dP, mask, 200)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert np.array_equal(a, b), "positions differ bitwise between CPU and CUDA"


def _cpu_has_avx2() -> bool:
    """What the CPU says about itself (Linux /proc/cpuinfo), independent of the core's own detection."""
    import platform
    import re
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    return (platform.machine() in ("x86_64", "AMD64") and info.exists()
            and re.search(r"^flags\s*:.*\bavx2\b", info.read_text(), re.M) is not None)


def test_tracking_path_follows_cpu_and_environment(monkeypatch):
    monkeypatch.setenv("FASTPOSE_NO_SIMD", "1")
    assert fc.tracking_path() == "scalar"
    monkeypatch.setenv("FASTPOSE_NO_SIMD", "0")  # "0" and "" do not disable the SIMD path
    default = fc.tracking_path()
    monkeypatch.setenv("FASTPOSE_NO_SIMD", "")
    assert fc.tracking_path() == default
    monkeypatch.delenv("FASTPOSE_NO_SIMD")
    assert fc.tracking_path() == default
    assert default in ("avx2", "scalar")
    if _cpu_has_avx2():
        assert default == "avx2", "the CPU has AVX2 but follow_flows would take the scalar path"


def _simd_vs_scalar(monkeypatch, dP, mask, niter):
    """follow_flows on the CPU with the AVX2 path and with the scalar path (FASTPOSE_NO_SIMD=1), each checked
    to be the path that runs.  Skips where the AVX2 path cannot run: both calls would be the scalar path."""
    monkeypatch.delenv("FASTPOSE_NO_SIMD", raising=False)
    if fc.tracking_path() != "avx2":
        pytest.skip("no AVX2 path on this CPU (no AVX2, or not x86-64): only the scalar path runs, so there is "
                    "no SIMD result to compare with it")
    with fc.use_backend("cpu"):
        fast = fc.follow_flows(dP, mask, niter)
        monkeypatch.setenv("FASTPOSE_NO_SIMD", "1")
        assert fc.tracking_path() == "scalar"
        scalar = fc.follow_flows(dP, mask, niter)
    return fast, scalar


@pytest.mark.parametrize("shape", [(300, 300), (37, 301)])
def test_simd_path_bitwise_equals_scalar_noisy(monkeypatch, shape):
    # Noisy flows, strong enough to push pixels against every border (clamping, x1/y1 = last row/column).
    rng = np.random.default_rng(21)
    dP = (smooth_flows(shape, 22, scale=8.0) + rng.normal(0, 1.5, (2, *shape))).astype(F32)
    dP[:, :3] *= 40  # drives pixels near the top and left edges out of the image (clamped at 0)
    dP[:, -3:] *= 40
    dP[:, :, :3] *= 40
    dP[:, :, -3:] *= 40
    mask = rng.random(shape) < 0.8
    mask[5:9, 5:9] = True
    dP[:, 5:9, 5:9] = 0  # exact fixed points: the early-stop rule
    fast, scalar = _simd_vs_scalar(monkeypatch, dP, mask, 200)
    assert fast.dtype == scalar.dtype == np.float32
    assert np.array_equal(fast, scalar), f"{(fast != scalar).sum()} coordinates differ between SIMD and scalar"


def test_simd_path_bitwise_equals_scalar_labels(monkeypatch, labels2d):
    dP = 5.0 * fc.masks_to_flows(labels2d)
    rng = np.random.default_rng(23)
    dP = (dP + rng.normal(0, 0.2, dP.shape)).astype(F32)
    mask = labels2d > 0
    fast, scalar = _simd_vs_scalar(monkeypatch, dP, mask, 200)
    assert np.array_equal(fast, scalar), f"{(fast != scalar).sum()} coordinates differ between SIMD and scalar"
    # and both are the reference stepping rule
    np.testing.assert_allclose(fast, reference_follow_flows(dP, mask, 200), atol=1e-4, rtol=0)


def _adversarial_flows(shape, kind, seed):
    """Flows (finite, NaN-free) that stress the stepping rule where a second writing of it could differ."""
    rng = np.random.default_rng(seed)
    nd = len(shape)
    if kind == "half":
        # +-2.5 and +-7.5 move a pixel by exactly 0.5 / 1.5: positions at exact .5 (weights 0.5, cell edges)
        dP = rng.choice(np.array([-7.5, -2.5, 0.0, 2.5, 7.5], F32), size=(nd, *shape))
    elif kind == "extreme":
        # magnitudes from the largest float to the smallest subnormal, signed zeros: overflow to Inf in the
        # interpolation (then Inf - Inf = NaN inside the step, clamped to 0), underflow, -0 flows
        vals = np.array([3.4e38, -3.4e38, 1e30, -1e30, 1e-38, -1e-38, 1.4e-45, -1.4e-45, 0.0, -0.0, 1e-7, 5.0,
                         -5.0, 2.5, 123.456], F32)
        dP = rng.choice(vals, size=(nd, *shape))
    elif kind == "edges":
        # everything pushed out of the volume through every face and corner: clamped positions, cells at the
        # last row / column / plane (the padded table entries)
        dP = (rng.choice(np.array([-1.0, 1.0], F32), size=(nd, *shape)) * 1e6).astype(F32)
    else:  # "noisy": smooth flows plus noise, exact fixed points in a patch
        dP = (smooth_flows(shape, seed, scale=8.0) + rng.normal(0, 1.5, (nd, *shape))).astype(F32)
        dP[(slice(None),) + tuple(slice(0, 3) for _ in shape)] = 0.0
    return np.ascontiguousarray(dP, dtype=F32)


@pytest.mark.parametrize("shape", [(19, 23, 29), (1, 9, 13), (5, 1, 7), (4, 6, 1), (1, 1, 1), (2, 2, 2),
                                   (33, 37), (1, 17), (9, 1)])
@pytest.mark.parametrize("kind", ["half", "extreme", "edges", "noisy"])
def test_simd_step_bitwise_equals_scalar_adversarial(monkeypatch, shape, kind):
    """The SIMD lane type through the same step template gives the scalar step's bits on adversarial inputs:
    exact .5 positions, extreme and subnormal flows, positions pushed out of the image (clamped), cells on the
    last row / column / plane, 1-pixel-thin images, groups with padding lanes, exact fixed points."""
    dP = _adversarial_flows(shape, kind, seed=31 + len(shape))
    rng = np.random.default_rng(32)
    mask = rng.random(shape) < 0.85  # masked-out corners count as 0; odd pixel counts leave padding lanes
    for niter in (1, 2, 7, 60):
        fast, scalar = _simd_vs_scalar(monkeypatch, dP, mask, niter)
        assert np.array_equal(fast.view(np.uint32), scalar.view(np.uint32)), \
            f"{kind} {shape} niter={niter}: {(fast != scalar).sum()} coordinates differ between SIMD and scalar"
        for a, n in enumerate(shape):
            assert fast[a].min() >= 0 and fast[a].max() <= n - 1
    if kind in ("half", "noisy"):  # and both are the reference stepping rule (extremes: overflow differs)
        np.testing.assert_allclose(fast, reference_follow_flows(dP, mask, 60), atol=1e-4, rtol=0)


def test_simd_path_bitwise_equals_scalar_labels_3d(monkeypatch):
    from fastpose.synthetic import random_labels
    labels = random_labels((24, 48, 40), 12, diameter=12, seed=3)
    dP = 5.0 * fc.masks_to_flows(labels)
    rng = np.random.default_rng(24)
    dP = (dP + rng.normal(0, 0.2, dP.shape)).astype(F32)
    mask = labels > 0
    fast, scalar = _simd_vs_scalar(monkeypatch, dP, mask, 200)
    assert np.array_equal(fast.view(np.uint32), scalar.view(np.uint32)), \
        f"{(fast != scalar).sum()} coordinates differ between SIMD and scalar"
    np.testing.assert_allclose(fast, reference_follow_flows(dP, mask, 200), atol=1e-4, rtol=0)
