"""``fastpose-bench restore``: does image restoration win back the segmentation accuracy that degradation costs?

Cellpose-SAM's degradation benchmark (:data:`fastpose.degrade.BENCHMARK_CONDITIONS`: Poisson noise at scales 5,
2.5, 0.5; blur sigma 2, 4, 8 with Poisson x120; downsampling by 2, 5, 10 with blur sigma ds / 2) on the held-out
images of the nuclei recipe, with a restoration model chained in front of the segmentation model.

Protocol (:func:`bench_restore`):

1. Images: the held-out split of the nuclei recipe (:mod:`fastpose.train.recipes`): the ids of ``data`` whose
   SHA-1 is 0 mod ``holdout_every`` (:func:`~fastpose.train.data.heldout_by_hash`), the bundled sample
   (:data:`~fastpose.train.recipes.SAMPLE_ID`) excluded, images without masks skipped; colour averaged to grey
   (``prepare_image(..., grey=True)``, as the recipe trains).
2. Each image is rescaled so its median object diameter (from its true masks,
   :func:`fastpose.labels.median_diameter`) equals the segmentation model's ``diam_mean`` (image bilinear, masks
   nearest) and normalised to its 1st/99th percentiles, clamped at >= 0.
3. Per condition it is degraded with :func:`fastpose.degrade.degrade` (which renormalises), on the CPU, with a
   seed fixed per image and condition (from ``seed``, the image id and the condition name: the same image gets
   the same noise whatever else is run).
4. The segmentation model runs at ``diameter = diam_mean`` (no further resizing) on (a) the clean images, (b) the
   degraded ones and (c) the degraded ones restored then segmented: ``Segmenter(model, restore=...)`` at the same
   diameter, the chained on-device path ``fastpose segment --restore`` uses.  The clean images are also
   restored then segmented (does restoration hurt a clean image?).
5. AP@0.5 (:func:`fastpose.metrics.average_precision`) against the rescaled true masks: the mean over images and
   pooled over images (TP / (TP + FP + FN) of the summed counts).  Per condition, the fraction of the AP lost to
   degradation that restoration wins back, ``(AP_restored - AP_degraded) / (AP_clean - AP_degraded)`` (None
   where degradation cost nothing), and its average over conditions; the goal is >= 0.5 on average.

Throughput: restoration megapixels/s on a ``size`` x ``size`` image at the restoration model's own diameter (no
resizing), the median of ``repeats`` runs after a warm-up, on the CPU and, when there is one, the GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ._timing import Timing, bench_images, machine_header, time_call

__all__ = ["bench_restore", "check_conditions", "load_heldout", "to_model_scale", "condition_seed",
           "degrade_image", "ap50", "won_back", "throughput", "print_restore_table", "merge_into_card", "GOAL"]

log = logging.getLogger("fastpose.bench")

#: the issue's goal: restoration wins back at least this fraction of the lost AP@0.5, on average over conditions
GOAL = 0.5

#: the key under the card's ``validation`` that :func:`merge_into_card` writes
CARD_KEY = "degradation_benchmark"


def check_conditions(conditions: Optional[Sequence[str]]) -> List[str]:
    """The benchmark condition names to run (None or empty: all of :data:`~fastpose.degrade.BENCHMARK_CONDITIONS`,
    in its order); ValueError naming the unknown ones and the valid names."""
    from ..degrade import BENCHMARK_CONDITIONS

    if not conditions:
        return list(BENCHMARK_CONDITIONS)
    names = [str(c) for c in conditions]
    bad = [c for c in names if c not in BENCHMARK_CONDITIONS]
    if bad:
        raise ValueError(f"unknown degradation condition(s) {', '.join(bad)}; choose from "
                         f"{', '.join(BENCHMARK_CONDITIONS)}")
    return list(dict.fromkeys(names))  # duplicates dropped, order kept


def load_heldout(data: Any, holdout_every: int = 10, limit: Optional[int] = None,
                 exclude: Sequence[str] = ()) -> Any:
    """The held-out images of folder ``data`` (``*_img.tif`` with ``*_masks.tif``): ids whose SHA-1 is 0 mod
    ``holdout_every``, less ``exclude``, the first ``limit``; grey (colour averaged), not normalised, without flow
    targets (nothing is written next to the data).  A :class:`~fastpose.train.data.TrainData`."""
    from ..train.data import heldout_by_hash, load_folder

    skip = set(exclude)
    return load_folder(data, nchan=1, channel_axis=-1, grey=True, normalize=False, flows=False, limit=limit,
                       select=lambda i: i not in skip and heldout_by_hash(i, holdout_every))


def to_model_scale(img: np.ndarray, masks: np.ndarray, diam_mean: float) -> Tuple[np.ndarray, np.ndarray, float]:
    """``(image float32 [Y', X'], masks int32 [Y', X'], factor)``: a grey image ([Y, X] or [1, Y, X]) and its
    masks resized by ``factor = diam_mean / median diameter of masks`` (image bilinear, ``align_corners=False``
    as :func:`fastpose.transforms.resize`; masks nearest), the image then normalised to its 1st/99th percentiles
    and clamped at >= 0."""
    from ..labels import median_diameter
    from ..transforms import normalize_percentile, resize, scaled_size

    x = np.asarray(img, np.float32)
    x = x[0] if x.ndim == 3 else x
    d = median_diameter(masks)
    if d <= 0:
        raise ValueError("an image without masks cannot be rescaled to the model's object size")
    f = float(diam_mean) / d
    size = scaled_size(x.shape, (f, f))
    xt = resize(torch.from_numpy(np.ascontiguousarray(x))[None, None], size)[0, 0].numpy()
    m = torch.from_numpy(np.asarray(masks, np.float64))[None, None]
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=size, mode="nearest")
    xn = np.maximum(normalize_percentile(xt[None])[0], 0.0).astype(np.float32)
    return xn, m[0, 0].numpy().astype(np.int32), f


def condition_seed(seed: int, image_id: str, condition: str) -> int:
    """The noise seed of one image under one condition: a hash of (``seed``, id, condition), so it does not
    depend on which other images or conditions are run."""
    h = hashlib.sha1(f"{int(seed)}:{image_id}:{condition}".encode()).hexdigest()
    return int(h[:15], 16)


def degrade_image(x: np.ndarray, condition: str, seed: int) -> np.ndarray:
    """``x`` (float32 [Y, X], normalised) under a :data:`~fastpose.degrade.BENCHMARK_CONDITIONS` condition, on
    the CPU, renormalised to its 1st/99th percentiles."""
    from ..degrade import BENCHMARK_CONDITIONS, degrade

    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None]
    return degrade(t, **BENCHMARK_CONDITIONS[condition], seed=seed)[0, 0].numpy()


def ap50(true: Sequence[np.ndarray], pred: Sequence[np.ndarray]) -> Dict[str, Any]:
    """AP@0.5 of a set of images: ``mean`` over images, ``pooled`` (summed TP / (TP + FP + FN)), the counts and
    the per-image values (:func:`fastpose.metrics.average_precision`)."""
    from ..metrics import average_precision

    ap, tp, fp, fn = average_precision(list(true), list(pred), [0.5])
    TP, FP, FN = int(tp.sum()), int(fp.sum()), int(fn.sum())
    return {"mean": float(ap[:, 0].mean()), "pooled": TP / (TP + FP + FN) if TP + FP + FN else 1.0,
            "tp": TP, "fp": FP, "fn": FN, "per_image": [float(v) for v in ap[:, 0]]}


def won_back(ap_clean: float, ap_degraded: float, ap_restored: float) -> Optional[float]:
    """The fraction of the AP lost to degradation that restoration wins back,
    ``(ap_restored - ap_degraded) / (ap_clean - ap_degraded)``: 1 = all of it, 0 = none, < 0 restoration made it
    worse; None when degradation lost nothing (``ap_clean <= ap_degraded``: there is nothing to win back)."""
    lost = float(ap_clean) - float(ap_degraded)
    if not lost > 0:
        return None
    return (float(ap_restored) - float(ap_degraded)) / lost


def _mean_defined(values: Sequence[Optional[float]]) -> Optional[float]:
    v = [x for x in values if x is not None]
    return float(statistics.fmean(v)) if v else None


def _segment(seg: Any, images: Sequence[np.ndarray], diameter: float) -> List[np.ndarray]:
    return [np.asarray(r.masks) for r in seg.segment_many(list(images), diameter=diameter)]


def _sync_for(device: str) -> Optional[Callable[[], None]]:
    return torch.cuda.synchronize if device == "cuda" else None


def throughput(restore: Any, devices: Sequence[str], size: int = 1024, repeats: int = 3, backend: str = "auto",
               batch_size: int = 8) -> List[Timing]:
    """Restoration throughput: one :class:`~fastpose.bench._timing.Timing` per device, ``restore[<size>x<size>,
    <backend>]``, restoring one grey ``size`` x ``size`` image (the nuclear channel of
    :func:`~fastpose.bench._timing.bench_images`) at the model's own diameter, the median of ``repeats`` after a
    warm-up; ``extra`` holds ``megapixels_per_s`` and the resolved backend."""
    from ..restore import Restorer

    img = bench_images(1, size)[0][..., 1]
    out: List[Timing] = []
    for dev in devices:
        r = Restorer(restore, device=dev, batch_size=batch_size, backend=backend)
        be = r.segmenter.backend
        t = time_call(f"restore[{size}x{size}, {be}]", dev, lambda: r.restore(img, diameter=r.diam_mean), repeats,
                      _sync_for(dev))
        t.extra.update({"megapixels_per_s": size * size / 1e6 / t.median_s, "backend": be,
                        "precision": r.segmenter.precision})
        out.append(t)
    return out


def _devices(device: str) -> List[str]:
    if device == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [device]


def bench_restore(data: Any, restore: Any = "oneclick_nuclei", model: Any = "nuclei", *, holdout_every: int = 10,
                  limit: Optional[int] = None, conditions: Optional[Sequence[str]] = None, seed: int = 0,
                  device: str = "auto", backend: str = "auto", repeats: int = 3, throughput_size: int = 1024,
                  batch_size: int = 8, exclude: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the degradation benchmark (see the module docstring) and return its results as plain JSON types.

    Parameters
    ----------
    data : path
        Folder of ``*_img.tif`` / ``*_masks.tif`` pairs (DSB 2018 stage-1 train for the nuclei recipe's split).
    restore, model : str, path or torch.nn.Module
        The restoration model and the segmentation model (bundled names or files).
    holdout_every, limit, exclude
        The held-out split: ids whose SHA-1 is 0 mod ``holdout_every``, less ``exclude`` (default the bundled
        sample, as the nuclei recipe), the first ``limit`` of them (smoke runs).
    conditions : names of :data:`~fastpose.degrade.BENCHMARK_CONDITIONS` (default all; ValueError for others).
    seed : int
        Base of the per-image, per-condition noise seeds (:func:`condition_seed`).
    device, backend, batch_size
        Of the segmentation and restoration runs (:class:`~fastpose.inference.Segmenter`).  The throughput is
        timed on ``device``; "auto": the CPU and, when present, the GPU.
    repeats, throughput_size
        Timed restorations per device (after a warm-up) and the image side; ``repeats=0`` skips the throughput.

    Returns a dict: ``machine``, ``inputs`` (what ran on what), ``accuracy`` (``clean``: AP@0.5 of the clean
    images, segmented and restored-then-segmented; ``conditions``: per condition AP@0.5 of clean, degraded and
    restored, ``won_back`` from the means and ``won_back_pooled`` from the pooled APs; ``won_back_mean`` over the
    conditions where it is defined, ``won_back_overall`` (summed gains over summed losses), ``goal``,
    ``goal_met``), ``throughput`` (timings) and ``seconds``.
    """
    from ..degrade import BENCHMARK_CONDITIONS
    from ..inference import Segmenter
    from ..train.recipes import SAMPLE_ID

    t_start = time.perf_counter()
    names = check_conditions(conditions)
    exclude = [SAMPLE_ID] if exclude is None else list(exclude)
    held = load_heldout(data, holdout_every, limit, exclude)
    if len(held) == 0:
        raise ValueError(f"{data}: no held-out images with masks (ids whose SHA-1 is 0 mod {holdout_every})")

    rest = Segmenter(restore, device=device, batch_size=batch_size, backend=backend)
    seg = Segmenter(model, device=device, batch_size=batch_size, backend=backend)
    seg_r = Segmenter(model, device=device, batch_size=batch_size, backend=backend, restore=rest)
    diam = float(seg.diam_mean)

    ids = list(held.names)
    imgs: List[np.ndarray] = []
    truth: List[np.ndarray] = []
    factors: List[float] = []
    for img, m in zip(held.images, held.masks):
        x, mt, f = to_model_scale(img, m, diam)
        imgs.append(x)
        truth.append(mt)
        factors.append(f)
    log.info("restore benchmark: %d held-out image(s) at %g px objects; segmentation %s, restoration %s, on %s",
             len(imgs), diam, model, restore, seg.device)

    def run(label: str, s: Any, images: Sequence[np.ndarray]) -> Dict[str, Any]:
        t0 = time.perf_counter()
        a = ap50(truth, _segment(s, images, diam))
        a["seconds"] = time.perf_counter() - t0
        log.info("  %-16s AP@0.5 %.3f (pooled %.3f) in %.1f s", label, a["mean"], a["pooled"], a["seconds"])
        return a

    clean = {"clean": run("clean", seg, imgs), "restored": run("clean, restored", seg_r, imgs)}
    per_cond: Dict[str, Any] = {}
    for c in names:
        deg = [degrade_image(x, c, condition_seed(seed, i, c)) for x, i in zip(imgs, ids)]
        d = run(f"{c}", seg, deg)
        r = run(f"{c}, restored", seg_r, deg)
        ac, ad, ar = clean["clean"], d, r
        per_cond[c] = {
            "params": dict(BENCHMARK_CONDITIONS[c]),
            "ap50_mean": {"clean": ac["mean"], "degraded": ad["mean"], "restored": ar["mean"]},
            "ap50_pooled": {"clean": ac["pooled"], "degraded": ad["pooled"], "restored": ar["pooled"]},
            "won_back": won_back(ac["mean"], ad["mean"], ar["mean"]),
            "won_back_pooled": won_back(ac["pooled"], ad["pooled"], ar["pooled"]),
            "counts50": {"degraded": {k: ad[k] for k in ("tp", "fp", "fn")},
                         "restored": {k: ar[k] for k in ("tp", "fp", "fn")}},
            "ap50_per_image": {"degraded": ad["per_image"], "restored": ar["per_image"]},
            "seconds": {"degraded": ad["seconds"], "restored": ar["seconds"]},
        }
    wb = [per_cond[c]["won_back"] for c in names]
    lost = sum(clean["clean"]["mean"] - per_cond[c]["ap50_mean"]["degraded"] for c in names)
    gained = sum(per_cond[c]["ap50_mean"]["restored"] - per_cond[c]["ap50_mean"]["degraded"] for c in names)
    mean_wb = _mean_defined(wb)
    accuracy: Dict[str, Any] = {
        "clean": {"ap50_mean": {"clean": clean["clean"]["mean"], "restored": clean["restored"]["mean"]},
                  "ap50_pooled": {"clean": clean["clean"]["pooled"], "restored": clean["restored"]["pooled"]},
                  "counts50": {k: {n: clean[k][n] for n in ("tp", "fp", "fn")} for k in clean},
                  "ap50_per_image": {k: clean[k]["per_image"] for k in clean}},
        "conditions": per_cond,
        "won_back_mean": mean_wb,
        "won_back_pooled_mean": _mean_defined([per_cond[c]["won_back_pooled"] for c in names]),
        "won_back_defined": sum(v is not None for v in wb),
        "won_back_overall": gained / lost if lost > 0 else None,
        "goal": GOAL,
        "goal_met": None if mean_wb is None else bool(mean_wb >= GOAL),
    }
    timings = throughput(restore, _devices(device), throughput_size, repeats, backend, batch_size) if repeats else []
    inputs = {
        "data": os.fspath(data) if isinstance(data, (str, os.PathLike)) else str(data),
        "split": f"held out: ids whose SHA-1 is 0 mod {holdout_every}" + (
            f"; excluded: {', '.join(exclude)}" if exclude else "") + (f"; first {limit}" if limit else ""),
        "images": len(imgs), "image_ids": ids,
        "scale_factors": factors, "shapes": [list(x.shape) for x in imgs],
        "restore": _name(restore), "model": _name(model), "diam_mean": diam,
        "restore_diam_mean": float(rest.diam_mean), "conditions": names, "seed": int(seed),
        "device": str(seg.device), "backend": backend, "backend_resolved": seg.backend,
        "threads": torch.get_num_threads(),
        "protocol": "grey, rescaled so the median true diameter is diam_mean (image bilinear, masks nearest), "
                    "1st/99th-percentile normalised and clamped >= 0, degraded with fastpose.degrade.degrade "
                    "(seed per image and condition), segmented at diameter = diam_mean; restored = "
                    "Segmenter(model, restore=...) at the same diameter; AP@0.5 against the rescaled masks",
    }
    return {"benchmark": "restore", "machine": machine_header(), "inputs": inputs, "accuracy": accuracy,
            "throughput": [_timing_dict(t) for t in timings], "seconds": time.perf_counter() - t_start}


def _name(m: Any) -> str:
    return os.fspath(m) if isinstance(m, (str, os.PathLike)) else type(m).__name__


def _timing_dict(t: Timing) -> Dict[str, Any]:
    from dataclasses import asdict
    return asdict(t)


def _f(v: Optional[float], spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def print_restore_table(res: Mapping[str, Any]) -> None:
    """A :func:`bench_restore` result as a table on stdout: per condition AP@0.5 (mean over images, pooled in
    brackets) of clean, degraded and restored images and the fraction won back."""
    m = res["machine"]
    print("# " + ", ".join(f"{k}={v}" for k, v in m.items()))
    i = res["inputs"]
    print(f"# {i['images']} image(s) of {i['data']} ({i['split']}); segmentation {i['model']} (diam_mean "
          f"{i['diam_mean']:g}), restoration {i['restore']}; {i['device']}, {i['backend_resolved']}")
    a = res["accuracy"]
    print(f"{'condition':16s} {'AP clean':>16s} {'degraded':>16s} {'restored':>16s} {'won back':>9s} "
          f"{'(pooled)':>9s}")

    def ap(d: Mapping[str, Any], k: str) -> str:
        return f"{_f(d['ap50_mean'].get(k))} ({_f(d['ap50_pooled'].get(k))})"

    c = a["clean"]
    print(f"{'clean':16s} {ap(c, 'clean'):>16s} {'-':>16s} {ap(c, 'restored'):>16s} {'-':>9s} {'-':>9s}")
    for name, d in a["conditions"].items():
        print(f"{name:16s} {ap(d, 'clean'):>16s} {ap(d, 'degraded'):>16s} {ap(d, 'restored'):>16s} "
              f"{_f(d['won_back'], '.2f'):>9s} {_f(d['won_back_pooled'], '.2f'):>9s}")
    met = a["goal_met"]
    print(f"won back, mean over {a['won_back_defined']} condition(s): {_f(a['won_back_mean'], '.2f')} "
          f"(pooled APs: {_f(a['won_back_pooled_mean'], '.2f')}; all conditions together: "
          f"{_f(a['won_back_overall'], '.2f')}); goal >= {a['goal']:g}: "
          f"{'-' if met is None else 'met' if met else 'not met'}")
    for t in res["throughput"]:
        print(f"throughput {t['name']} on {t['device']}: {t['extra']['megapixels_per_s']:.2f} Mpx/s "
              f"(median {1e3 * t['median_s']:.1f} ms, min {1e3 * t['min_s']:.1f}, max {1e3 * t['max_s']:.1f})")
    print(f"# {res['seconds']:.0f} s in all")


def card_entry(res: Mapping[str, Any]) -> Dict[str, Any]:
    """What :func:`merge_into_card` writes: the inputs and accuracy of a :func:`bench_restore` result without the
    per-image lists, the throughput in megapixels/s per device, and the versions."""
    import fastpose

    acc = json.loads(json.dumps(res["accuracy"]))
    acc["clean"].pop("ap50_per_image", None)
    for d in acc["conditions"].values():
        d.pop("ap50_per_image", None)
        d.pop("seconds", None)
    inputs = {k: v for k, v in res["inputs"].items() if k not in ("image_ids", "scale_factors", "shapes")}
    m = res["machine"]
    return {
        "inputs": inputs, **acc,
        "throughput_megapixels_per_s": {f"{t['device']} ({t['extra']['backend']})": t["extra"]["megapixels_per_s"]
                                        for t in res["throughput"]},
        "throughput_image": res["throughput"][0]["name"] if res["throughput"] else None,
        "machine": {k: m[k] for k in ("cpu", "cpu_cores", "gpu", "torch") if k in m},
        "evaluated_by": f"fastpose-bench restore (fastpose {fastpose.__version__})",
    }


def merge_into_card(path: Any, res: Mapping[str, Any]) -> None:
    """Merge a :func:`bench_restore` result into the model card at ``path``, as
    ``card["validation"]["degradation_benchmark"]`` (:func:`card_entry`; other validation entries are kept),
    written atomically (:func:`fastpose.train.card.merge_validation`)."""
    from ..train.card import merge_validation

    merge_validation(path, CARD_KEY, card_entry(res))
