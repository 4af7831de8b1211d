"""mean_shift: flat-kernel mean shift against a brute-force NumPy reference (same centres, identical labels) and
scikit-learn's MeanShift when it is importable, orphans, fitted subsets, bad inputs, CPU/GPU parity."""

from __future__ import annotations

import numpy as np
import pytest

import fastpose.core as fc
from fastpose.core._reference import mean_shift as reference_mean_shift

F32 = np.float32


def blobs(n: int, d: int, k: int = 7, spread: float = 60.0, sigma: float = 2.5, seed: int = 0,
          outliers: int = 0) -> np.ndarray:
    """n points around k random centres in [0, spread)^d, plus `outliers` scattered points far outside."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, spread, (k, d))
    pts = centres[rng.integers(0, k, n)] + rng.normal(0, sigma, (n, d))
    if outliers:
        far = rng.uniform(spread + 40, spread + 400, (outliers, d)) * rng.choice([-1, 1], (outliers, 1))
        pts = np.concatenate([pts, far])
    return pts.astype(F32)


def given_seeds(pts: np.ndarray, n: int = 40, seed: int = 1) -> np.ndarray:
    """Half near random points, half anywhere over the blobs' box and beyond (mostly dropped: no point within the
    bandwidth)."""
    rng = np.random.default_rng(seed)
    near = pts[rng.choice(len(pts), n // 2)] + rng.normal(0, 3, (n // 2, pts.shape[1]))
    anywhere = rng.uniform(-30, 90, (n - n // 2, pts.shape[1]))
    return np.concatenate([near, anywhere]).astype(F32)


def seed_arg(seeding: str, pts: np.ndarray):
    return given_seeds(pts) if seeding == "given" else seeding


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("seeding", ["bin", "all", "given"])
def test_matches_reference(device, d, seeding):
    pts = blobs(500, d, seed=d)
    seeds = seed_arg(seeding, pts)
    labels, centres = fc.mean_shift(pts, 6.0, seeds=seeds)
    ref_labels, ref_centres = reference_mean_shift(pts, 6.0, seeds=seeds)
    assert labels.dtype == np.int32 and labels.shape == (len(pts),)
    assert centres.dtype == np.float32 and centres.shape == ref_centres.shape
    np.testing.assert_allclose(centres, ref_centres, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(labels, ref_labels)
    assert 3 <= len(centres) <= 12


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("cluster_all", [False, True])
def test_fitted_subset_and_orphans(device, d, cluster_all):
    """Fitted on a random 30% of the blob points (Cellulus fits on 10%), every point labelled; the outliers
    are never fitted, so they are orphans (-1) unless cluster_all."""
    pts = blobs(600, d, seed=10 + d, outliers=25)
    fit = np.sort(np.random.default_rng(3).choice(600, 180, replace=False))
    for seeding in ("bin", "all"):
        labels, centres = fc.mean_shift(pts, 5.0, seeds=seeding, fit_points=fit, cluster_all=cluster_all)
        ref_labels, ref_centres = reference_mean_shift(pts, 5.0, seeds=seeding, fit_points=fit,
                                                       cluster_all=cluster_all)
        np.testing.assert_allclose(centres, ref_centres, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(labels, ref_labels)
        if cluster_all:
            assert labels.min() >= 0
        else:
            assert (labels[600:] == -1).all() and (labels[:600] >= 0).mean() > 0.6
    # a boolean mask selects the same points as their indices
    mask = np.zeros(len(pts), bool)
    mask[fit] = True
    a = fc.mean_shift(pts, 5.0, seeds="bin", fit_points=fit, cluster_all=cluster_all)
    b = fc.mean_shift(pts, 5.0, seeds="bin", fit_points=mask, cluster_all=cluster_all)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_options_match_reference(device):
    pts = blobs(400, 2, k=5, seed=4, outliers=10)
    for kw in (dict(seeds="bin", min_bin_freq=6), dict(seeds="all", max_iter=0), dict(seeds="bin", max_iter=2),
               dict(seeds="all", cluster_all=True)):
        labels, centres = fc.mean_shift(pts, 4.0, **kw)
        ref_labels, ref_centres = reference_mean_shift(pts, 4.0, **kw)
        np.testing.assert_allclose(centres, ref_centres, rtol=0, atol=1e-4, err_msg=str(kw))
        np.testing.assert_array_equal(labels, ref_labels, err_msg=str(kw))


def test_analytic_two_clusters(device):
    """Two tight squares 20 apart: two centres at their means, the larger one first; None seeds = all points."""
    a = np.array([[x, y] for x in (0.0, 1.0) for y in (0.0, 1.0)] + [[0.5, 0.5]], F32)
    b = np.array([[x, y] for x in (20.0, 21.0) for y in (0.0, 1.0)], F32)
    pts = np.concatenate([b, a])
    labels, centres = fc.mean_shift(pts, 3.0)
    np.testing.assert_allclose(centres, [[0.5, 0.5], [20.5, 0.5]], atol=1e-6)
    np.testing.assert_array_equal(labels, [1, 1, 1, 1, 0, 0, 0, 0, 0])
    # a point 10 from both centres: an orphan, or the first (larger) centre with cluster_all
    far = np.concatenate([pts, [[10.5, 0.5]]]).astype(F32)
    lab, _ = fc.mean_shift(far, 3.0, fit_points=np.arange(9))
    assert lab[-1] == -1
    lab, _ = fc.mean_shift(far, 3.0, fit_points=np.arange(9), cluster_all=True)
    assert lab[-1] == 0
    # one point per bin: the points themselves are the seeds (scikit-learn's rule)
    one = np.array([[0.0, 0.0], [1.1, 0.0], [30.0, 30.0]], F32)
    lab, cen = fc.mean_shift(one, 1.0, seeds="bin")
    np.testing.assert_array_equal(lab, reference_mean_shift(one, 1.0, seeds="bin")[0])
    assert len(cen) == 3


def test_torch_inputs_give_tensors():
    torch = pytest.importorskip("torch")
    pts = blobs(300, 2, seed=6)
    with fc.use_backend("cpu"):
        labels, centres = fc.mean_shift(torch.from_numpy(pts), 6.0, seeds="bin",
                                        fit_points=torch.arange(0, 300, 2))
        ref = fc.mean_shift(pts, 6.0, seeds="bin", fit_points=np.arange(0, 300, 2))
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int32
    assert isinstance(centres, torch.Tensor) and centres.dtype == torch.float32
    np.testing.assert_array_equal(labels.numpy(), ref[0])
    np.testing.assert_array_equal(centres.numpy(), ref[1])


SKLEARN_CASES = [(d, seeding, cluster_all) for d in (2, 3) for seeding in ("bin", "all", "given")
                 for cluster_all in (False, True)]


@pytest.mark.parametrize("d,seeding,cluster_all", SKLEARN_CASES)
def test_matches_sklearn(d, seeding, cluster_all):
    cluster = pytest.importorskip("sklearn.cluster")
    pts = blobs(500, d, seed=20 + d, outliers=8)
    bw = 6.0
    seeds = seed_arg(seeding, pts)
    ms = cluster.MeanShift(bandwidth=bw, seeds=seeds if seeding == "given" else None,
                           bin_seeding=seeding == "bin", cluster_all=cluster_all).fit(pts)
    with fc.use_backend("cpu"):
        labels, centres = fc.mean_shift(pts, bw, seeds=seeds, cluster_all=cluster_all)
    # scikit-learn sums windows in float32, so a climb may stop one step apart: within the stopping shift
    np.testing.assert_allclose(centres, ms.cluster_centers_, rtol=0, atol=2e-3 * bw)
    np.testing.assert_array_equal(labels, ms.labels_)


@pytest.mark.parametrize("d", [2, 3])
def test_cellulus_fit_then_predict_matches_sklearn(d):
    """Cellulus: MeanShift(bandwidth, cluster_all=False).fit(X[10%]).predict(X) == mean_shift(X, bandwidth,
    fit_points=10%, cluster_all=True), with all fitted points as seeds and with bin seeds."""
    cluster = pytest.importorskip("sklearn.cluster")
    pts = blobs(2000, d, k=9, spread=80, seed=30 + d)
    fit = np.random.default_rng(0).choice(len(pts), 200, replace=False)
    for bin_seeding in (False, True):
        ms = cluster.MeanShift(bandwidth=7.5, bin_seeding=bin_seeding, cluster_all=False).fit(pts[fit])
        with fc.use_backend("cpu"):
            labels, centres = fc.mean_shift(pts, 7.5, seeds="bin" if bin_seeding else "all", fit_points=fit,
                                            cluster_all=True)
        np.testing.assert_allclose(centres, ms.cluster_centers_, rtol=0, atol=2e-3 * 7.5)
        np.testing.assert_array_equal(labels, ms.predict(pts))


def test_bad_inputs():
    pts = blobs(50, 2)
    nan = pts.copy()
    nan[3, 1] = np.nan
    cases = [
        (dict(points=nan), "points contain NaN or Inf"),
        (dict(points=np.where(pts > 30, np.inf, pts)), "NaN or Inf"),
        (dict(bandwidth=0.0), "bandwidth must be"),
        (dict(bandwidth=-1.0), "bandwidth must be"),
        (dict(bandwidth=float("nan")), "bandwidth must be"),
        (dict(bandwidth=1e-60), "bandwidth must be a finite number > 0"),  # 0 in float32
        (dict(points=pts[:, 0]), r"points must have shape \(S, D\)"),
        (dict(points=np.zeros((5, 4), F32)), "points must have shape"),
        (dict(points=np.zeros((5, 1), F32)), "points must have shape"),
        (dict(points=np.zeros((0, 2), F32)), "points is empty"),
        (dict(points=[["a", "b"]]), "numeric"),
        (dict(seeds="grid"), "seeds must be one of 'bin', 'all'"),
        (dict(seeds=np.zeros((3, 3), F32)), r"seeds must have shape \(S, 2\)"),
        (dict(seeds=np.zeros((0, 2), F32)), "seeds is empty"),
        (dict(seeds=np.full((2, 2), np.nan, F32)), "seeds contain NaN"),
        (dict(seeds=np.full((2, 2), 1e4, F32)), "no fitted point lies within the bandwidth"),
        (dict(min_bin_freq=0), "min_bin_freq must be"),
        (dict(seeds="bin", min_bin_freq=1000), "no bin holds min_bin_freq = 1000"),
        (dict(max_iter=-1), "max_iter must be"),
        (dict(max_iter=2.5), "max_iter must be"),
        (dict(cluster_all="yes"), "cluster_all must be True or False"),
        (dict(fit_points=np.array([0, 50])), r"fit_points must index the 50 points \(0 to 49\)"),
        (dict(fit_points=np.array([-1, 2])), "fit_points must index"),
        (dict(fit_points=np.array([], np.int64)), "fit_points selects no points"),
        (dict(fit_points=np.array([0.0, 1.0])), "fit_points must be integer indices or a boolean mask"),
        (dict(fit_points=np.ones(49, bool)), r"boolean mask must have shape \(50,\)"),
        (dict(fit_points=np.zeros(50, bool)), "fit_points selects no points"),
        (dict(fit_points=np.zeros((2, 2), np.int64)), "fit_points must be one-dimensional"),
    ]
    for kw, match in cases:
        args = dict(points=pts, bandwidth=5.0)
        args.update(kw)
        p, bw = args.pop("points"), args.pop("bandwidth")
        with pytest.raises(ValueError, match=match):
            fc.mean_shift(p, bw, **args)


@pytest.mark.cuda
@pytest.mark.parametrize("d", [2, 3])
def test_cpu_cuda_parity(d):
    torch = pytest.importorskip("torch")
    pts = blobs(20000, d, k=60, spread=400, sigma=3.0, seed=40 + d, outliers=50)
    fit = np.random.default_rng(1).choice(len(pts), 2000, replace=False)
    for kw in (dict(seeds="bin"), dict(seeds="all", fit_points=fit), dict(seeds="bin", fit_points=fit,
                                                                          cluster_all=True),
               dict(seeds=given_seeds(pts, 300))):
        with fc.use_backend("cpu"):
            a_lab, a_cen = fc.mean_shift(pts, 8.0, **kw)
        with fc.use_backend("cuda"):
            b_lab, b_cen = fc.mean_shift(pts, 8.0, **kw)
        np.testing.assert_array_equal(a_cen, b_cen, err_msg=str(kw))
        np.testing.assert_array_equal(a_lab, b_lab, err_msg=str(kw))
        # CUDA tensors in: CUDA tensors out, the same values
        gk = {k: torch.from_numpy(np.asarray(v)).cuda() if not isinstance(v, str) and k != "cluster_all" else v
              for k, v in kw.items()}
        c_lab, c_cen = fc.mean_shift(torch.from_numpy(pts).cuda(), 8.0, **gk)
        assert c_lab.is_cuda and c_cen.is_cuda
        np.testing.assert_array_equal(c_lab.cpu().numpy(), a_lab)
        np.testing.assert_array_equal(c_cen.cpu().numpy(), a_cen)
