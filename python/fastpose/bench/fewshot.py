"""``fastpose-bench fewshot``: Scellseg's shot-scale experiment for any base model and fine-tuning strategy.

Protocol (the Scellseg paper's; cellimnet/scellseg-publish ``run_net/scellseg_finetune.py``):

1. A target set: a folder of ``*_img.tif`` + ``*_masks.tif``.
2. For each shot level k (default 1, 2, 4, 8) and draw d (``draws``, default 3; the paper 10): k images drawn at
   random (seeded by level and draw; the same draws for every strategy), the shots.
3. Each strategy (``contrastive``, ``classic``) fine-tunes the base model on them (:func:`fastpose.finetune`); the
   images not drawn are the query images of the contrastive strategy (their masks unread) and the test images.
4. Each fine-tuned model segments the test images at the shots' diameter with Scellseg's inference settings
   (cell-probability threshold 0.5, tile overlap 0.5); the base model runs at the same diameter, as level 0.
5. Scores per test image, averaged: AP at IoU 0.5 and 0.75 (the paper's figures), mAP over IoU 0.50:0.05:0.95 (:func:`fastpose.metrics.mean_ap`; the authors'
   script also counts IoU 1.0) and AJI (:func:`fastpose.metrics.aggregated_jaccard_index`).  Per strategy the
   hyperbola ``Bmax X / (Kd + X)`` is fitted to the mean mAP against the shot count (SciPy's ``curve_fit``).

Output: a table, JSON, and with ``png`` a plot (mAP against shots, the draws as points, the fits as curves;
matplotlib, the ``bench`` extra).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ._timing import machine_header

__all__ = ["bench_fewshot", "fit_hyperbola", "print_fewshot_table", "plot_fewshot", "draw_shots"]

log = logging.getLogger("fastpose.bench")

#: Scellseg's inference settings after fine-tuning
INFERENCE = {"cellprob_threshold": 0.5, "tile_overlap": 0.5}


def fit_hyperbola(x: Sequence[float], y: Sequence[float]) -> Optional[Dict[str, float]]:
    """``{"bmax", "kd"}`` of ``y = bmax * x / (kd + x)`` fitted by least squares (None when it does not converge or
    there are fewer than two distinct x)."""
    from scipy.optimize import curve_fit

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if len(np.unique(x)) < 2:
        return None
    try:
        (bmax, kd), _ = curve_fit(lambda t, b, k: b * t / (k + t), x, y, p0=(max(float(y.max()), 1e-3), 1.0),
                                  bounds=([0.0, 0.0], [10.0, 1e4]), maxfev=10000)
    except (RuntimeError, ValueError):
        return None
    return {"bmax": float(bmax), "kd": float(kd)}


def draw_shots(n_images: int, k: int, draw: int, seed: int = 0) -> List[int]:
    """The indices (sorted) of the ``k`` shots of draw ``draw`` among ``n_images`` images: seeded by
    ``(seed, k, draw)``, so every strategy and every rerun gets the same shots."""
    rng = np.random.default_rng([seed, k, draw])
    return sorted(int(j) for j in rng.choice(n_images, k, replace=False))


def _scores(truth: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> Dict[str, float]:
    from ..metrics import aggregated_jaccard_index, average_precision, mean_ap

    ap = average_precision([np.asarray(t).astype(np.int64) for t in truth],
                           [np.asarray(p).astype(np.int64) for p in preds], [0.5, 0.75])[0]
    return {"map": float(np.mean(mean_ap(list(truth), list(preds)))),
            "aji": float(np.mean([aggregated_jaccard_index(t, p) for t, p in zip(truth, preds)])),
            "ap50": float(np.mean(ap[:, 0])), "ap75": float(np.mean(ap[:, 1]))}


def bench_fewshot(data: Any, model: Any = "nuclei", *, test: Any = None, shots: Sequence[int] = (1, 2, 4, 8),
                  draws: int = 3, strategies: Sequence[str] = ("contrastive", "classic"), steps: int = 100,
                  batch_size: int = 8, tile: int = 224, channel_axis: Optional[int] = None,
                  max_test: Optional[int] = None, contrast: Any = None, contrast_styles: Optional[Sequence[str]] = None,
                  halve_every: Optional[int] = None, seed: int = 0, device: str = "auto") -> Dict[str, Any]:
    """Run the protocol of the module docstring; plain JSON types.

    ``test``: a second folder of annotated images to score on instead of the images not drawn (the shots are then
    drawn from ``data``; the query images are the test images).  ``max_test`` caps the test images per draw (the
    first of them).  ``contrast`` as for :func:`fastpose.finetune`; ``contrast_styles`` keeps only the named styles
    of it (for example the styles other than the target's).  ``halve_every``: steps per halving of the rate
    (default a quarter of ``steps``, as the recipe's 25 of 100).  Colour images are averaged to grey for one-channel
    networks (:func:`fastpose.scellseg.network_input`), for fine-tuning and segmentation alike."""
    from .. import checks
    from ..inference import Segmenter
    from ..io import read_image
    from ..scellseg.finetune import STRATEGIES, default_contrast, finetune, load_styles, network_input
    from ..train.data import folder_ids

    shots = [checks.integer(k, "shots", lo=1) for k in shots]
    draws = checks.integer(draws, "draws", lo=1)
    steps = checks.integer(steps, "steps", lo=1)
    halve_every = max(1, steps // 4) if halve_every is None else checks.integer(halve_every, "halve_every", lo=1)
    for s in strategies:
        checks.choice(s, "strategy", STRATEGIES)
    base = Segmenter(model, device=device)

    def load(folder: Any) -> Any:
        pairs = folder_ids(folder)
        return ([network_input(read_image(p), base.nchan, channel_axis, p.name) for p, _, _ in pairs],
                [read_image(m) for _, m, _ in pairs], [i for _, _, i in pairs])

    images, masks, names = load(data)
    n = len(images)
    if test is None and max(shots) >= n:
        raise ValueError(f"{data}: {n} images, too few for {max(shots)} shots and at least one test image")
    if test is not None and max(shots) > n:
        raise ValueError(f"{data}: {n} images, too few for {max(shots)} shots")
    t_images, t_masks, t_names = load(test) if test is not None else (None, None, None)
    if contrast_styles is not None:
        pool = default_contrast() if contrast is None else (contrast if isinstance(contrast, dict)
                                                            else load_styles(contrast))
        missing = sorted(set(contrast_styles) - set(pool))
        if missing:
            raise ValueError(f"contrast_styles: no style {missing}; the styles are {sorted(pool)}")
        contrast = {k: pool[k] for k in contrast_styles}
    t_all = time.perf_counter()
    rows: List[Dict[str, Any]] = []
    for k in shots:
        for d in range(draws):
            pick = draw_shots(n, k, d, seed)
            if t_images is None:
                rest = [j for j in range(n) if j not in pick]
                query = [images[j] for j in rest]
                pool_img, pool_mask = images, masks
            else:
                rest = list(range(len(t_images)))
                query = list(t_images)
                pool_img, pool_mask = t_images, t_masks
            test_ids = rest[:max_test] if max_test else rest
            shot_pairs = [(images[j], masks[j]) for j in pick]
            truth = [pool_mask[j] for j in test_ids]
            entry: Dict[str, Any] = {"shots": k, "draw": d, "shot_ids": [names[j] for j in pick],
                                     "n_test": len(test_ids)}
            diameter = None
            for strat in strategies:
                res = finetune(model, shot_pairs,
                               query=query if strat == "contrastive" else None, contrast=contrast, strategy=strat,
                               steps=steps, halve_every=halve_every, batch_size=batch_size, tile=tile,
                               channel_axis=0, seed=seed,
                               device=device, progress=False)
                diameter = res.diameter
                seg = Segmenter(res.model, device=device)
                preds = [seg.segment(pool_img[j], channel_axis=0, diameter=res.diameter, **INFERENCE).masks
                         for j in test_ids]
                entry[strat] = {**_scores(truth, preds), "seconds_per_step": round(res.seconds_per_step, 3)}
                log.info("%d shot(s), draw %d, %s: mAP %.3f, AJI %.3f", k, d, strat, entry[strat]["map"],
                         entry[strat]["aji"])
            preds = [base.segment(pool_img[j], channel_axis=0, diameter=diameter, **INFERENCE).masks
                     for j in test_ids]
            entry["base"] = _scores(truth, preds)
            entry["diameter"] = diameter
            log.info("%d shot(s), draw %d, base: mAP %.3f, AJI %.3f", k, d, entry["base"]["map"],
                     entry["base"]["aji"])
            rows.append(entry)
    summary: Dict[str, Any] = {}
    for strat in list(strategies) + ["base"]:
        per = {k: [r[strat]["map"] for r in rows if r["shots"] == k] for k in shots}
        summary[strat] = {"map": {str(k): float(np.mean(v)) for k, v in per.items()}}
        for key in ("aji", "ap50", "ap75"):
            summary[strat][key] = {str(k): float(np.mean([r[strat][key] for r in rows if r["shots"] == k]))
                                   for k in shots}
        if strat != "base":
            xs = [k for k in shots for _ in per[k]]
            ys = [v for k in shots for v in per[k]]
            summary[strat]["fit"] = fit_hyperbola(xs, ys)
    return {"benchmark": "fewshot", "machine": machine_header(), "data": str(data),
            "test": None if test is None else str(test), "n_images": n,
            "n_test_images": None if t_images is None else len(t_images),
            "model": model if isinstance(model, str) else type(model).__name__,
            "protocol": {"shots": list(shots), "draws": draws, "strategies": list(strategies), "steps": steps,
                         "halve_every": halve_every,
                         "batch_size": batch_size, "tile": tile, "max_test": max_test, "seed": seed,
                         "contrast_styles": None if contrast_styles is None else list(contrast_styles),
                         "inference": dict(INFERENCE)},
            "rows": rows, "summary": summary, "seconds": round(time.perf_counter() - t_all, 1)}


def print_fewshot_table(res: Mapping[str, Any]) -> None:
    """mAP / AJI per strategy and shot level (means over the draws), the fits, the machine."""
    m = res["machine"]
    print("# " + ", ".join(f"{k}={v}" for k, v in m.items()))
    p = res["protocol"]
    print(f"# {res['data']}: {res['n_images']} images; base {res['model']}; {p['draws']} draws per level, "
          f"{p['steps']} steps of batch {p['batch_size']}, tile {p['tile']}")
    levels = [str(k) for k in p["shots"]]
    print("strategy     " + "".join(f"{k + ' shot(s)':>18}" for k in levels) + "   fit Bmax / Kd")
    for strat, s in res["summary"].items():
        fit = s.get("fit")
        cells = "".join(f"{s['map'][k]:>9.3f}/{s['aji'][k]:<8.3f}" for k in levels)
        ft = f"{fit['bmax']:.3f} / {fit['kd']:.2f}" if fit else "-"
        print(f"{strat:<13}{cells}   {ft}")
    if all("ap50" in s for s in res["summary"].values()):
        print("AP@0.5 / AP@0.75 (the paper's figures):")
        for strat, s in res["summary"].items():
            print(f"{strat:<13}" + "".join(f"{s['ap50'][k]:>9.3f}/{s['ap75'][k]:<8.3f}" for k in levels))
    where = f"on {res['test']}" if res.get("test") else "on the images not drawn"
    print(f"# cells: mAP (IoU 0.50:0.05:0.95) / AJI, mean over draws, {where}; base: no fine-tuning")
    print(f"# {res['seconds']:.0f} s in all")


def plot_fewshot(res: Mapping[str, Any], path: Any) -> None:
    """A PNG of mAP against the number of shots: each draw a point, each strategy's hyperbola a curve."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the plot needs matplotlib: pip install 'fastpose[bench]'") from None
    from ..io import atomic_write

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    shots = res["protocol"]["shots"]
    xs = np.linspace(0, max(shots) * 1.05, 100)
    for strat in list(res["protocol"]["strategies"]) + ["base"]:
        pts = [(r["shots"], r[strat]["map"]) for r in res["rows"]]
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", alpha=0.5, label=strat)[0]
        fit = res["summary"][strat].get("fit")
        if fit:
            ax.plot(xs, fit["bmax"] * xs / (fit["kd"] + xs), "-", color=line.get_color())
    ax.set_xlabel("shots (annotated images)")
    ax.set_ylabel("mAP (IoU 0.50:0.95)")
    ax.set_title(f"few-shot fine-tuning of {res['model']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
