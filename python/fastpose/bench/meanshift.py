"""``fastpose-bench meanshift``: mean-shift clustering of Cellulus-like embeddings, fastpose's native
:func:`fastpose.core.mean_shift` beside scikit-learn's ``MeanShift`` in the same process.

The input is the foreground of a synthetic image (default 1024x1024 with ~400 objects of diameter 30): every
foreground pixel's embedding is its object's centre plus Gaussian noise (sigma 2 px), what a trained Cellulus
network predicts.  As in Cellulus' inference, the centres are fitted on a random 10% of the foreground pixels and
every foreground pixel is then assigned: scikit-learn ``MeanShift(bandwidth, bin_seeding=..., cluster_all=False)
.fit(X[fit]).predict(X)``, fastpose ``mean_shift(X, bandwidth, seeds=..., fit_points=fit, cluster_all=True)``
(``predict`` labels every point).  The two run in interleaved pairs (one fastpose run, then one scikit-learn run,
after a warm-up pair), so that other load on the machine hits both; the speed-up is the ratio of their medians.
The labels are compared exactly (fastpose orders its centres as scikit-learn does) and by the adjusted Rand index.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ._timing import Timing, report, speedups, time_call

__all__ = ["bench_meanshift", "cellulus_embeddings"]

log = logging.getLogger("fastpose.bench")


def cellulus_embeddings(size: int = 1024, objects: int = 400, diameter: float = 30.0, sigma: float = 2.0,
                        seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 (N, 2), object ids (N,)) of the foreground pixels of a ``size`` x ``size`` synthetic
    label image of ``objects`` objects: each pixel's embedding is its object's centre of mass plus N(0, sigma^2)
    noise per axis."""
    from scipy import ndimage as ndi

    from ..synthetic import random_labels
    labels = random_labels((size, size), objects, diameter=diameter, seed=seed)
    n = int(labels.max())
    centres = np.asarray(ndi.center_of_mass(np.ones(labels.shape), labels, np.arange(1, n + 1)), np.float64)
    ids = labels[labels > 0]
    rng = np.random.default_rng(seed)
    emb = centres.reshape(-1, 2)[ids - 1] + rng.normal(0.0, sigma, (ids.size, 2))
    return emb.astype(np.float32), ids


def _interleaved(pairs: List[Tuple[str, str, Callable[[], Any], Optional[Callable[[], None]]]],
                 repeats: int) -> Tuple[List[Timing], List[Any]]:
    """Run the callables of ``pairs`` (name, device, fn, sync) in turn, ``repeats + 1`` rounds, the first a
    warm-up: one Timing per entry (median, min, max of its timed runs) and the last result of each."""
    times: List[List[float]] = [[] for _ in pairs]
    last: List[Any] = [None] * len(pairs)
    for r in range(repeats + 1):
        for k, (_, _, fn, sync) in enumerate(pairs):
            t0 = time.perf_counter()
            last[k] = fn()
            if sync:
                sync()
            if r > 0:
                times[k].append(time.perf_counter() - t0)
    out = []
    for (name, dev, _, _), ts in zip(pairs, times):
        out.append(Timing(name, dev, float(np.median(ts)), min(ts), max(ts), None, {"runs": len(ts)}))
    return out, last


def _agreement(ours: np.ndarray, theirs: np.ndarray) -> Dict[str, Any]:
    """How two labelings of the same points agree: exactly, up to renumbering, and by the adjusted Rand index."""
    from sklearn.metrics import adjusted_rand_score

    ours, theirs = np.asarray(ours).astype(np.int64), np.asarray(theirs).astype(np.int64)
    pairs = np.unique(np.stack([ours, theirs]), axis=1)
    same_partition = len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
    return {"labels_identical": bool(np.array_equal(ours, theirs)), "same_partition": bool(same_partition),
            "points_differing": int((ours != theirs).sum()),
            "adjusted_rand_index": float(adjusted_rand_score(theirs, ours))}


def bench_meanshift(size: int = 1024, objects: int = 400, diameter: float = 30.0, sigma: float = 2.0,
                    bandwidth: float = 15.0, fraction: float = 0.1, seeds: str = "bin", repeats: int = 3,
                    devices: Optional[List[str]] = None, sklearn: bool = True, seed: int = 0) -> Dict[str, Any]:
    """Time :func:`fastpose.core.mean_shift` (and scikit-learn's ``MeanShift`` when importable and ``sklearn``) on
    Cellulus-like embeddings; see the module docstring."""
    import fastpose.core as fc

    if devices is None:
        devices = ["cpu"] + (["cuda"] if fc.cuda_available() else [])
    emb, ids = cellulus_embeddings(size, objects, diameter, sigma, seed)
    n = len(emb)
    if n == 0:
        raise ValueError(f"the synthetic {size}x{size} image has no foreground; use more --objects")
    fit = np.sort(np.random.default_rng(seed + 1).choice(n, max(1, int(round(fraction * n))), replace=False))
    case = f"{size}x{size}, {seeds} seeds"
    inputs = {"meanshift": {"image": [size, size], "objects": int(ids.max()), "foreground_pixels": n,
                            "fitted_pixels": int(len(fit)), "bandwidth": bandwidth, "seeds": seeds,
                            "noise_sigma": sigma, "diameter": diameter}}
    log.info("meanshift: %d foreground pixels of %d objects, fitted on %d", n, int(ids.max()), len(fit))

    def ours(x: Any, f: Any) -> Callable[[], Any]:
        return lambda: fc.mean_shift(x, bandwidth, seeds=seeds, fit_points=f, cluster_all=True)

    timings: List[Timing] = []
    pairs: List[Tuple[str, str, Callable[[], Any], Optional[Callable[[], None]]]] = []
    fp_cpu = f"fastpose mean_shift[{case}]"
    sk_name = f"sklearn MeanShift[{case}]"
    if "cpu" in devices:
        def run_cpu() -> Any:
            with fc.use_backend("cpu"):
                return ours(emb, fit)()
        pairs.append((fp_cpu, "cpu", run_cpu, None))
    have_sklearn = False
    if sklearn:
        try:
            from sklearn.cluster import MeanShift
            have_sklearn = True
        except ImportError:
            log.info("scikit-learn not importable: timing fastpose alone")
    if have_sklearn:
        def run_sklearn() -> Any:
            ms = MeanShift(bandwidth=bandwidth, bin_seeding=seeds == "bin", cluster_all=False).fit(emb[fit])
            return ms.predict(emb), ms.cluster_centers_
        pairs.append((sk_name, "cpu", run_sklearn, None))
    if pairs:
        t, last = _interleaved(pairs, repeats)
        timings += t
        results = {p[0]: r for p, r in zip(pairs, last)}
        rows = {x.name: x for x in timings}
        if fp_cpu in results:
            rows[fp_cpu].extra["centres"] = int(len(results[fp_cpu][1]))
        if have_sklearn:
            sk_labels, sk_centres = results[sk_name]
            row = rows[sk_name]
            row.extra["centres"] = int(len(sk_centres))
            if fp_cpu in results:
                labels, centres = results[fp_cpu]
                agree = _agreement(labels, sk_labels)
                if len(centres) == len(sk_centres):
                    agree["max_centre_difference"] = float(np.abs(centres - sk_centres).max())
                row.extra.update(agree)
                inputs["meanshift"]["agreement_with_sklearn"] = agree
    if "cuda" in devices:
        import torch
        x, f = torch.from_numpy(emb).cuda(), torch.from_numpy(fit).cuda()
        fp_gpu = f"fastpose mean_shift[{case}, cuda]"
        timings.append(time_call(fp_gpu, "cuda", ours(x, f), repeats, torch.cuda.synchronize))
        if fp_cpu in [p[0] for p in pairs]:
            g_labels, _ = ours(x, f)()
            same = bool(np.array_equal(g_labels.cpu().numpy(), results[fp_cpu][0]))
            timings[-1].extra["labels_identical_to_cpu"] = same
    ratios = speedups(timings, [("fastpose cpu vs scikit-learn", fp_cpu, sk_name),
                                ("fastpose cuda vs scikit-learn", f"fastpose mean_shift[{case}, cuda]", sk_name)])
    return report(inputs, timings, ratios)
