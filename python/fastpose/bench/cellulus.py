"""``fastpose-bench cellulus``: F1@0.5 and SEG of segmentation models on the nuclei recipe's held-out DSB images.

Cellulus' evaluation (funkelab/cellulus, ``evaluate.py``; the issue's protocol), for any model fastpose runs, so
that an unsupervised Cellulus model and a supervised Cellpose model (the bundled ``nuclei``) stand side by side:

1. Images: the held-out split of the nuclei recipe (:mod:`fastpose.train.recipes`): the ids of ``data`` whose
   SHA-1 is 0 mod ``holdout_every`` (10), the bundled sample (:data:`~fastpose.train.recipes.SAMPLE_ID`)
   excluded, images without masks skipped; colour averaged to grey as both recipes train
   (:func:`fastpose.bench.restore.load_heldout`), not normalised (each model normalises with its own
   percentiles).  The ``cellulus_nuclei`` recipe never trains on these images (nor reads any mask).
2. Each model segments each image through :class:`fastpose.Segmenter` (the path ``fastpose segment`` takes) at
   its own scale: a Cellpose model at the diameter its size model estimates, a Cellulus model unresized with the
   object size stored in it (``object_size`` overrides that for Cellulus models); with ``label_diameter`` every
   model at the image's true median diameter instead (Cellpose: resized to its ``diam_mean``; Cellulus: resized
   so the objects are its object size).  Nothing is tuned on the held-out images.
3. Scores (:func:`fastpose.metrics.f1_seg_pooled`), pooled over images: F1 = 2 sum TP / (2 sum TP + sum FP + sum
   FN) with a match at IoU > 0.5, and SEG = the summed IoU of the true objects with the predicted object covering
   more than half of each, over the number of true objects; for the fluorescence images (``grey``: one-channel
   files, the DSB fluorescence images) and for all images.

The issue's goal, for an unsupervised Cellulus model on the fluorescence images: F1@0.5 >= 0.75 (:data:`GOAL`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ._timing import machine_header

__all__ = ["bench_cellulus", "print_cellulus_table", "merge_into_card", "card_entry", "GOAL", "CARD_KEY"]

log = logging.getLogger("fastpose.bench")

#: the issue's goal: F1@0.5 of the unsupervised Cellulus model on the fluorescence held-out images
GOAL = 0.75

#: the key under a card's ``validation`` that :func:`merge_into_card` writes
CARD_KEY = "f1_seg_heldout"

#: the subsets scored: name -> image kinds in it (None: every image)
SUBSETS: Dict[str, Optional[tuple]] = {"grey": ("grey",), "all": None}


def _name(m: Any) -> str:
    return os.fspath(m) if isinstance(m, (str, os.PathLike)) else type(m).__name__


def _scores(truth: Sequence[np.ndarray], preds: Sequence[np.ndarray], kinds: Sequence[str]) -> Dict[str, Any]:
    from ..metrics import f1_seg_pooled

    out: Dict[str, Any] = {}
    for sub, keep in SUBSETS.items():
        idx = [i for i, k in enumerate(kinds) if keep is None or k in keep]
        out[sub] = f1_seg_pooled([truth[i] for i in idx], [preds[i] for i in idx]) if idx else None
    return out


def bench_cellulus(data: Any, models: Sequence[Any] = ("nuclei",), *, holdout_every: int = 10,
                   limit: Optional[int] = None, exclude: Optional[Sequence[str]] = None, label_diameter: bool = False,
                   object_size: Optional[float] = None, device: str = "auto", backend: str = "auto",
                   batch_size: int = 8) -> Dict[str, Any]:
    """Score ``models`` on the held-out images of ``data`` (see the module docstring); plain JSON types.

    Parameters
    ----------
    data : path
        Folder of ``*_img.tif`` / ``*_masks.tif`` pairs (DSB 2018 stage-1 train for the nuclei recipe's split).
    models : names, files or networks
        Each scored in turn (Cellulus and Cellpose models alike).
    holdout_every, limit, exclude
        The held-out split: ids whose SHA-1 is 0 mod ``holdout_every``, less ``exclude`` (default: the bundled
        sample, as the nuclei recipe), the first ``limit`` of them (smoke runs).
    label_diameter : bool
        Segment at each image's true median diameter instead of each model's own scale.
    object_size : float, optional
        Object size of the Cellulus models (their stored one otherwise); not used by other models.
    device, backend, batch_size
        Of each :class:`~fastpose.Segmenter`.

    Returns ``{"benchmark": "cellulus", "machine", "inputs", "models": [...], "goal", "seconds"}``; each model's
    entry holds ``model``, ``family``, ``scale`` (how it was run), ``settings`` (a Cellulus model's), ``scores``
    (``grey`` and ``all``: the :func:`~fastpose.metrics.f1_seg_pooled` dict, None for a subset without images),
    ``per_image`` (id, kind, counts, the true median diameter, the diameter segmented at), ``seconds`` and,
    for Cellulus models, ``goal_met`` (F1@0.5 of the grey images >= :data:`GOAL`).
    """
    from ..checks import choice, number
    from ..inference import Segmenter
    from ..metrics import f1_seg_pooled
    from ..train.data import folder_ids, heldout_by_hash
    from ..train.recipes import SAMPLE_ID
    from .restore import load_heldout

    t_start = time.perf_counter()
    models = list(models)
    if not models:
        raise ValueError("no models to score: give at least one --model")
    object_size = number(object_size, "object_size", lo=0.0, lo_open=True, none_ok=True)
    device = choice(device, "device", ("auto", "cpu", "cuda"))
    exclude = [SAMPLE_ID] if exclude is None else list(exclude)
    if not any(i not in exclude and heldout_by_hash(i, holdout_every) for _, _, i in folder_ids(data)):
        raise ValueError(f"{data}: no held-out images (ids whose SHA-1 is 0 mod {holdout_every}"
                         + (f", less {', '.join(exclude)}" if exclude else "") + ")")
    held = load_heldout(data, holdout_every, limit, exclude)
    if len(held) == 0:
        raise ValueError(f"{data}: no held-out images with masks (ids whose SHA-1 is 0 mod {holdout_every})")
    ids, kinds = list(held.names), list(held.kinds)
    truth = [np.asarray(m) for m in held.masks]
    diams = [float(d) for d in held.diameters]
    log.info("cellulus benchmark: %d held-out image(s) (%d grey), %d model(s)", len(ids), kinds.count("grey"),
             len(models))
    entries: List[Dict[str, Any]] = []
    for m in models:
        seg = Segmenter(m, device=device, batch_size=batch_size, backend=backend)
        family = seg.spec.family
        is_cellulus = family == "cellulus"
        if is_cellulus and object_size is not None:
            seg.update_settings(object_size=object_size)
        if label_diameter:
            scale = "each image's true median diameter"
        elif is_cellulus:
            scale = f"not resized; object size {seg.spec.settings['object_size']:g} px"
        elif seg.estimates_diameter:
            scale = "the diameter its size model estimates"
        else:
            scale = "not resized (no size model)"
        t0 = time.perf_counter()
        preds, used = [], []
        for img, d in zip(held.images, diams):
            r = seg.segment(np.asarray(img), channel_axis=0, diameter=d if label_diameter else None)
            preds.append(np.asarray(r.masks))
            used.append(None if r.diameter is None else float(r.diameter))
        dt = time.perf_counter() - t0
        per_image = []
        for i, (t, p) in enumerate(zip(truth, preds)):
            s = f1_seg_pooled(t, p)
            per_image.append({"id": ids[i], "kind": kinds[i], "true_diameter": diams[i], "diameter": used[i],
                              **{k: s[k] for k in ("tp", "fp", "fn", "n_true", "n_pred", "seg_sum", "f1")}})
        scores = _scores(truth, preds, kinds)
        entry: Dict[str, Any] = {
            "model": _name(m), "family": family, "scale": scale,
            "settings": dict(seg.spec.settings) if is_cellulus else None,
            "scores": scores, "per_image": per_image, "seconds": dt, "seconds_per_image": dt / len(ids)}
        if is_cellulus:
            g = scores["grey"]
            entry["goal_met"] = None if g is None else bool(g["f1"] >= GOAL)
        entries.append(entry)
        log.info("  %-30s F1@0.5 grey %s, all %s; SEG grey %s, all %s (%.1f s)", _name(m),
                 *(_f(scores[s] and scores[s][k]) for k in ("f1", "seg") for s in ("grey", "all")), dt)
    inputs = {
        "data": os.fspath(data) if isinstance(data, (str, os.PathLike)) else str(data),
        "split": f"held out: ids whose SHA-1 is 0 mod {holdout_every}" + (
            f"; excluded: {', '.join(exclude)}" if exclude else "") + (f"; first {limit}" if limit else ""),
        "images": len(ids), "grey_images": kinds.count("grey"),
        "true_objects": int(sum(np.unique(t[t > 0]).size for t in truth)), "image_ids": ids, "kinds": kinds,
        "label_diameter": bool(label_diameter), "object_size": object_size, "device": device, "backend": backend,
        "threads": torch.get_num_threads(),
        "protocol": "grey (colour averaged), each model's own normalisation, segmented through fastpose.Segmenter "
                    "(Cellpose: estimated diameter; Cellulus: unresized at its object size; or every model at the "
                    "true median diameter with label_diameter); F1 at IoU > 0.5 and SEG (|P n G| > |G| / 2), both "
                    "pooled over the images of each subset (grey: the one-channel files; all)",
    }
    return {"benchmark": "cellulus", "machine": machine_header(), "inputs": inputs, "models": entries,
            "goal": {"f1_grey_cellulus": GOAL}, "seconds": time.perf_counter() - t_start}


def _f(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def print_cellulus_table(res: Mapping[str, Any]) -> None:
    """A :func:`bench_cellulus` result as a table on stdout: per model F1@0.5 and SEG of the grey images and of
    all images, seconds per image."""
    m = res["machine"]
    print("# " + ", ".join(f"{k}={v}" for k, v in m.items()))
    i = res["inputs"]
    print(f"# {i['images']} image(s), {i['grey_images']} grey, {i['true_objects']} true objects, of {i['data']} "
          f"({i['split']}); {'true median diameter' if i['label_diameter'] else 'each model at its own scale'}")
    w = max([len("model")] + [len(e["model"]) for e in res["models"]])
    print(f"{'model':{w}s} {'family':9s} {'F1 grey':>8s} {'SEG grey':>8s} {'F1 all':>8s} {'SEG all':>8s} "
          f"{'s/img':>7s}  scale")
    for e in res["models"]:
        sc = e["scores"]

        def v(sub: str, k: str) -> str:
            return _f(sc[sub][k] if sc.get(sub) else None)

        print(f"{e['model']:{w}s} {e['family']:9s} {v('grey', 'f1'):>8s} {v('grey', 'seg'):>8s} {v('all', 'f1'):>8s} "
              f"{v('all', 'seg'):>8s} {e['seconds_per_image']:7.2f}  {e['scale']}")
    for e in res["models"]:
        if "goal_met" in e:
            met = e["goal_met"]
            print(f"goal for {e['model']} (unsupervised) F1@0.5 on the grey images >= {GOAL:g}: "
                  f"{'-' if met is None else 'met' if met else 'not met'}")
    print(f"# {res['seconds']:.0f} s in all")


def card_entry(res: Mapping[str, Any], model: Mapping[str, Any]) -> Dict[str, Any]:
    """What :func:`merge_into_card` writes for one model: the inputs, the scale, settings and scores (no
    per-image lists), the seconds per image, the machine and the versions."""
    import fastpose

    m = res["machine"]
    return {
        "inputs": dict(res["inputs"]), "scale": model["scale"], "settings": model.get("settings"),
        "scores": json.loads(json.dumps(model["scores"])), "seconds_per_image": model["seconds_per_image"],
        **({"goal": GOAL, "goal_met": model["goal_met"]} if "goal_met" in model else {}),
        "machine": {k: m[k] for k in ("cpu", "cpu_cores", "gpu", "torch") if k in m},
        "evaluated_by": f"fastpose-bench cellulus (fastpose {fastpose.__version__})",
    }


def merge_into_card(path: Any, res: Mapping[str, Any]) -> None:
    """Merge the one model of a :func:`bench_cellulus` result into the model card at ``path`` as
    ``card["validation"]["f1_seg_heldout"]`` (:func:`card_entry`; other validation entries kept), atomically."""
    from ..train.card import merge_validation

    if len(res["models"]) != 1:
        raise ValueError(f"--card takes the result of one --model, got {len(res['models'])}")
    merge_validation(path, CARD_KEY, card_entry(res, res["models"][0]))
