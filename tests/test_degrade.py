"""fastpose.degrade: each degradation against a plain NumPy/SciPy reference, the presets' rules, seeding, and bad
input; on the CPU and, where there is one, the GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from _helpers import cuda_ok
from fastpose.degrade import (BENCHMARK_CONDITIONS, ONECLICK, PRESETS, Degrade, degrade, downsample, gaussian_blur,
                              poisson_noise, renormalize)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _batch(b=3, c=1, y=48, x=56, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, y, x, generator=g).to(device)


@pytest.fixture(params=DEVICES)
def dev(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU for PyTorch")
    return request.param


@pytest.mark.parametrize("sy,sx", [(1.5, 1.5), (3.0, 0.3), (0.0, 2.0), (9.0, 9.0)])
def test_gaussian_blur_is_scipys_with_zero_padding(dev, sy, sx):
    x = _batch(2, 2, device=dev)
    y = gaussian_blur(x, sy, sx).cpu().numpy()
    half = max(8, int(2 * max(sy, sx)))   # Cellpose's kernel: 2 * half - 1 taps on both axes
    for i in range(2):
        for c in range(2):
            # per axis: radius half - 1, i.e. truncate = (half - 1) / sigma (a zero sigma: no blur on that axis)
            ref = x[i, c].double().cpu().numpy()
            for ax, s in ((0, sy), (1, sx)):
                if s > 0:
                    sig = [0.0, 0.0]
                    sig[ax] = s
                    ref = gaussian_filter(ref, sig, mode="constant", cval=0.0, truncate=(half - 1) / s)
            np.testing.assert_allclose(y[i, c], ref, atol=2e-6)


def test_gaussian_blur_per_image_sigmas():
    x = _batch(3)
    y = gaussian_blur(x, [0.0, 1.0, 4.0])
    assert torch.equal(y[0], x[0])                                  # sigma 0: a delta kernel
    assert torch.allclose(y[1], gaussian_blur(x[1:2], 1.0)[0], atol=1e-6)
    assert float(y[2].std()) < float(y[1].std()) < float(x[1].std())


def test_downsample_keeps_every_nth_pixel_and_interpolates_back(dev):
    x = _batch(2, 1, 40, 30, device=dev)
    y = downsample(x, [1, 4])
    assert torch.equal(y[0], x[0])
    ref = torch.nn.functional.interpolate(x[1:2, :, ::4, ::4], size=(40, 30), mode="bilinear", align_corners=False)
    assert torch.allclose(y[1:2], ref)
    rows = downsample(x, 3, rows_only=True)
    ref = torch.nn.functional.interpolate(x[:, :, ::3, :], size=(40, 30), mode="bilinear", align_corners=False)
    assert torch.allclose(rows, ref)
    with pytest.raises(ValueError, match="integers"):
        downsample(x, 2.5)


def test_poisson_noise_mean_variance_and_seed(dev):
    x = torch.full((1, 1, 200, 200), 0.5, device=dev)
    g1 = torch.Generator(device=dev).manual_seed(3)
    g2 = torch.Generator(device=dev).manual_seed(3)
    a = poisson_noise(x, 20.0, g1)
    b = poisson_noise(x, 20.0, g2)
    assert torch.equal(a, b)                                        # seeded: reproducible
    assert abs(float(a.mean()) - 10.0) < 0.1                        # E = scale * x
    assert abs(float(a.var()) - 10.0) < 0.5                         # Var = E (Poisson)
    assert torch.equal(a, a.round())                                # photon counts
    c = poisson_noise(x, 20.0, torch.Generator(device=dev).manual_seed(4))
    assert not torch.equal(a, c)


def test_renormalize_maps_percentiles_to_0_and_1():
    x = _batch(2, 2) * 7 + 3
    x[1, 1] = 5.0                                                    # a constant channel: left as it is
    y = renormalize(x)
    for i, c in ((0, 0), (0, 1), (1, 0)):
        v = y[i, c].numpy().ravel()
        lo, hi = np.percentile(v, [1, 99])
        assert abs(lo) < 1e-5 and abs(hi - 1) < 1e-5
    assert torch.equal(y[1, 1], x[1, 1])


def test_degrade_fixed_conditions_are_reproducible():
    x = _batch(2)
    for name, kw in BENCHMARK_CONDITIONS.items():
        a, b = degrade(x, seed=5, **kw), degrade(x, seed=5, **kw)
        assert torch.equal(a, b), name
        assert not torch.allclose(a, renormalize(x), atol=1e-3), name   # it did degrade
    assert not torch.equal(degrade(x, poisson=2.5, seed=5), degrade(x, poisson=2.5, seed=6))
    assert set(BENCHMARK_CONDITIONS) == {"poisson_5", "poisson_2.5", "poisson_0.5", "blur_2", "blur_4", "blur_8",
                                         "downsample_2", "downsample_5", "downsample_10"}


def test_more_photons_less_noise():
    x = _batch(1, 1, 128, 128)
    clean = renormalize(x)
    err = [float((degrade(x, poisson=s, seed=1) - clean).abs().mean()) for s in (0.5, 5.0, 120.0)]
    assert err[0] > err[1] > err[2]


def test_presets_rules_and_seeding():
    assert set(ONECLICK) == {"poisson", "blur", "downsample"} and set(PRESETS) >= set(ONECLICK) | {"aniso"}
    d = np.full(400, 17.0)
    p = Degrade("poisson", seed=1).draw(400, d)
    assert (p["sigma_y"] == 0).all() and (p["ds"] == 1).all()
    noisy = p["poisson"] > 0
    assert 0.7 < noisy.mean() < 0.9 and (p["poisson"][noisy] >= 1).all()
    q = Degrade("downsample", seed=1).draw(400, d)
    assert ((q["ds"] > 1) <= (q["sigma_y"] > 0)).all()              # blur forced when downsampled
    assert q["ds"].max() <= 7 and q["ds"][q["ds"] > 1].min() >= 2
    a = Degrade("aniso", seed=1).draw(400, d)
    assert np.allclose(a["sigma_x"], a["sigma_y"] / 10)
    x = _batch(4)
    m1, m2 = Degrade("blur", seed=9), Degrade("blur", seed=9)
    assert torch.equal(m1(x, 17.0), m2(x, 17.0)) and torch.equal(m1(x, 17.0), m2(x, 17.0))  # same sequence
    assert not torch.equal(Degrade("blur", seed=9)(x, 17.0), Degrade("blur", seed=10)(x, 17.0))


def test_bad_input_is_a_clear_error():
    x = _batch(1)
    with pytest.raises(ValueError, match="kind"):
        Degrade("fog")
    with pytest.raises(ValueError, match="NaN"):
        degrade(x * float("nan"), poisson=1.0)
    with pytest.raises(ValueError, match=r"\[B, C, Y, X\]"):
        degrade(x[0], poisson=1.0)
    with pytest.raises(ValueError, match="one per image"):
        gaussian_blur(x, [1.0, 2.0])
    with pytest.raises(ValueError, match=">= 0"):
        poisson_noise(x, -1.0)
    with pytest.raises(TypeError):
        degrade(x.numpy(), poisson=1.0)


@pytest.mark.cuda
def test_gpu_matches_cpu():
    if not cuda_ok() or not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    x = _batch(2)
    for kw in ({"sigma": 3.0}, {"ds": 3, "sigma": 1.5}):
        assert torch.allclose(degrade(x, **kw).cpu(), degrade(x.cuda(), **kw).cpu(), atol=1e-5)
