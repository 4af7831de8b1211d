"""Panoptic training: a segmentation network fine-tuned (or trained) to also give each cell a class.

Cellpose-SAM's recipe (Methods, "Semantic segmentation training and evaluation"):

* the network gets K + 1 class maps (background and K classes) initialised from the cell-probability map's
  weights times -0.5 / +0.5 (:func:`fastpose.models.add_class_heads`);
* loss = the Cellpose loss (:func:`fastpose.train.loop.seg_loss`) + cross-entropy on the class maps weighted
  by the inverse of the per-pixel class frequencies (over the training set; background is a class);
* the images are not rescaled by the cells' diameters (random scale augmentation only);
* AdamW with a linear warm-up and halvings (:func:`fastpose.train.loop.lr_schedule`); the paper's ViT run
  used lr 5e-5, weight decay 0.1, batch 16, 500 epochs.

Class labels sit beside the masks: per image either a per-pixel class image (0 = background, e.g. a
``*_classes.tif`` next to ``*_masks.tif``; each mask takes its majority class) or a per-mask array
(``classes[i]`` for mask ``i``, index 0 unused).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checks
from ..labels import check_labels, majority_class, relabel_sequential
from ..transforms import normalize_percentile
from .augment import augment_sample
from .data import compute_flow_targets, prepare_image
from .loop import budget_lr, lr_schedule, make_optimizer, resolve_device, seg_loss

__all__ = ["PanopticResult", "train_panoptic", "class_weights", "panoptic_loss", "mask_class_table",
           "evaluate_panoptic", "format_panoptic_table"]

log = logging.getLogger("fastpose.train")

PathLike = Union[str, os.PathLike]


@dataclass
class PanopticResult:
    """What :func:`train_panoptic` returns."""

    model: nn.Module                         #: the trained panoptic network, in eval mode (``class_names`` set)
    class_names: Tuple[str, ...]             #: background first
    history: List[Dict[str, float]] = field(default_factory=list)  #: per epoch: loss, lr
    class_weights: List[float] = field(default_factory=list)       #: cross-entropy weight per class
    path: Optional[Path] = None              #: the model file written (``save_path``)


def mask_class_table(masks: np.ndarray, classes: Any, n_classes: int, name: str = "classes"
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """``(masks renumbered 1..N int32, table int64 [N + 1])``: the class of each mask from a per-pixel class
    image (majority inside each mask) or a per-mask array indexed by the original mask ids; ValueError when
    the classes do not fit the masks or fall outside ``1..n_classes - 1`` for a mask."""
    lab, values = relabel_sequential(check_labels(masks, f"{name} (masks)"))
    c = np.asarray(classes)
    if c.ndim == lab.ndim and c.shape == lab.shape:
        table = majority_class(lab, c.astype(np.int64) if c.dtype.kind in "iu" else c, n_classes)
    elif c.ndim == 1 and c.dtype.kind in "iu":
        if c.size <= int(values.max(initial=0)):
            raise ValueError(f"{name}: per-mask classes have {c.size} entries but the masks go up to "
                             f"{int(values.max())}")
        table = c[np.asarray(values, np.int64)].astype(np.int64)
        table[0] = 0
    else:
        raise ValueError(f"{name}: give a per-pixel class image of the masks' shape {lab.shape} or a 1D integer "
                         f"array of per-mask classes, got {c.dtype} of shape {c.shape}")
    if table.size > 1 and (table[1:].min() < 1 or table[1:].max() >= n_classes):
        raise ValueError(f"{name}: every mask needs a class in 1..{n_classes - 1} (0 is background), got "
                         f"{int(table[1:].min())}..{int(table[1:].max())}")
    return lab.astype(np.int32), table


def class_weights(tables: Sequence[np.ndarray], masks: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Inverse per-pixel class frequencies over a training set (background = class 0), scaled so the classes
    present average 1; classes with no pixel get 0."""
    counts = np.zeros(n_classes, np.float64)
    for t, m in zip(tables, masks):
        counts += np.bincount(t[m].ravel(), minlength=n_classes)[:n_classes]
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1.0), 0.0)
    present = w > 0
    if present.any():
        w[present] /= w[present].mean()
    return w.astype(np.float32)


def panoptic_loss(y: torch.Tensor, flows: torch.Tensor, masks: torch.Tensor, target: torch.Tensor,
                  weight: torch.Tensor) -> torch.Tensor:
    """The Cellpose loss on maps 0-2 plus the class-weighted cross-entropy of maps 3.. against ``target``
    (per-pixel class ids, 0 = background)."""
    y = y.float()
    return seg_loss(y[:, :3], flows, masks) + F.cross_entropy(y[:, 3:], target, weight=weight)


def train_panoptic(model: Union[nn.Module, PathLike], images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                   classes: Sequence[Any], class_names: Optional[Sequence[str]] = None, *, epochs: Optional[int] = 100,
                   time_budget: Optional[float] = None,
                   batch_size: int = 8, images_per_epoch: Optional[int] = None, lr: Optional[float] = None,
                   weight_decay: Optional[float] = None, warmup_epochs: int = 10, tile: Optional[int] = None,
                   scale_range: float = 0.5, channel_axis: Optional[int] = 0, seed: int = 0,
                   device: Union[str, torch.device] = "auto", save_path: Optional[PathLike] = None
                   ) -> PanopticResult:
    """Fine-tune a segmentation network into a panoptic one (or train a panoptic one further).

    Args:
        model: a :class:`~fastpose.models.UNet` / :class:`~fastpose.models.ViT` or a model file.  A network
            without class maps gets them (:func:`~fastpose.models.add_class_heads` with ``class_names``); one
            with class maps keeps them (``class_names``, if given, must agree).
        images, masks, classes: per image the image ([Y, X] or channels on ``channel_axis``), the label image
            and its classes (a per-pixel class image or per-mask ids; see the module docstring).
        class_names: the K class names (background is prepended) for a network without class maps.
        time_budget: wall-clock seconds of training (the same command on a CPU or a GPU); the learning rate then
            follows :func:`fastpose.train.budget_lr` over the budget (warm-up, constant, halvings from 70%) and
            ``epochs`` (None: no limit) is an upper bound.
        epochs, batch_size, images_per_epoch, lr, weight_decay, warmup_epochs: AdamW and its schedule (lr and
            weight decay default to the fine-tuning recipe: U-Net 5e-3 / 1e-4, ViT 5e-5 / 0.1).
        tile: crop side (default 224 for a U-Net, the ViT's input size); scale_range: random scale
            ``1 +- scale_range / 2`` (no diameter rescaling).
        seed: crop order, augmentation and torch seed.  device: "auto", "cpu" or "cuda".
        save_path: write the trained model there (:func:`fastpose.models.save_model`, atomic).

    Every parameter is checked before any work (ValueError naming it, what was given and what is allowed).

    The trained model segments like any other (``fastpose.segment`` / ``Segmenter``, a class per mask in
    ``SegmentResult.classes``); under ``backend="auto"`` a panoptic model runs on PyTorch (the ONNX
    path is taken only for networks with the 3 Cellpose maps, :func:`fastpose.deploy.backends.resolve_backend`).
    From folders and the command line: ``fastpose train --classes`` (:mod:`fastpose.train.cli`,
    :func:`fastpose.train.data.load_class_folder`).
    """
    from ..models import ViT, add_class_heads, load_model, save_model
    from ..models.spec import check_class_names

    time_budget = checks.number(time_budget, "time_budget", lo=0.0, lo_open=True, hi=checks.LIMITS["time_budget"],
                                none_ok=True)
    if epochs is None and time_budget is None:
        raise ValueError("give epochs, time_budget or both")
    epochs = checks.integer(epochs, "epochs", lo=1, hi=checks.LIMITS["epochs"], none_ok=True)
    if epochs is None:
        epochs = int(checks.LIMITS["epochs"])  # bounded by the time budget
    batch_size = checks.integer(batch_size, "batch_size", lo=1, hi=checks.LIMITS["batch_size"])
    images_per_epoch = checks.integer(images_per_epoch, "images_per_epoch", lo=1, none_ok=True)
    lr = checks.number(lr, "lr", lo=0.0, lo_open=True, none_ok=True)
    weight_decay = checks.number(weight_decay, "weight_decay", lo=0.0, none_ok=True)
    warmup_epochs = checks.integer(warmup_epochs, "warmup_epochs", lo=0)
    tile = checks.integer(tile, "tile", lo=16, hi=4096, none_ok=True)
    scale_range = checks.number(scale_range, "scale_range", lo=0.0, hi=2.0, hi_open=True)
    channel_axis = checks.axis(channel_axis, "channel_axis")
    seed = checks.integer(seed, "seed", lo=0, hi=2 ** 63 - 1)
    images, masks, classes = list(images), list(masks), list(classes)
    if not images or not len(images) == len(masks) == len(classes):
        raise ValueError(f"give one mask image and one class array per image, got {len(images)} images, "
                         f"{len(masks)} masks and {len(classes)} class arrays (at least one of each)")
    if not isinstance(model, nn.Module):
        model, _ = load_model(model, device="cpu")
    have = getattr(model, "class_names", None)
    if have:
        if class_names is not None and check_class_names(list(class_names)) != tuple(have):
            raise ValueError(f"the model's classes are {list(have)}, not {list(class_names)}")
        names = tuple(have)
    else:
        if class_names is None:
            raise ValueError("this network has no class maps: pass class_names (the K classes) to add them")
        names = check_class_names(list(class_names))
        add_class_heads(model, names)
    n_classes = len(names)
    vit = isinstance(model, ViT)
    tile = int(tile or (model.img_size if vit else 224))
    if not vit and tile % model.size_multiple:
        raise ValueError(f"tile must be a multiple of {model.size_multiple}, got {tile}")
    nchan = int(model.nchan)

    xs, ms, fs, tables = [], [], [], []
    for i, (img, m, c) in enumerate(zip(images, masks, classes)):
        lab, table = mask_class_table(m, c, n_classes, name=f"classes[{i}]")
        x = prepare_image(img, nchan, channel_axis)
        if x.shape[1:] != lab.shape:
            raise ValueError(f"image {i}: image {x.shape[1:]} and masks {lab.shape} differ in size")
        xs.append(normalize_percentile(x))
        ms.append(lab)
        fs.append(compute_flow_targets(lab))
        tables.append(table)
    w = class_weights(tables, ms, n_classes)
    log.info("panoptic training on %d images, classes %s, cross-entropy weights %s", len(xs), list(names),
             np.round(w, 3).tolist())

    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = model.to(dev).train()
    opt, base_lr = make_optimizer(model, "adamw", lr, weight_decay)
    lrs = None if time_budget else lr_schedule(epochs, base_lr, warmup_epochs)
    wt = torch.from_numpy(w).to(dev)
    rng = np.random.default_rng([seed, 14])
    n_per_epoch = int(images_per_epoch or max(len(xs), batch_size))
    history: List[Dict[str, float]] = []
    t0 = time.perf_counter()
    out_of_time = False
    for e in range(epochs):
        if lrs is not None:
            for g in opt.param_groups:
                g["lr"] = float(lrs[e])
        order = rng.permutation(np.resize(np.arange(len(xs)), n_per_epoch))
        total, n = 0.0, 0
        for s in range(0, n_per_epoch, batch_size):
            if time_budget:
                frac = (time.perf_counter() - t0) / time_budget
                if frac >= 1.0:
                    out_of_time = True
                    break
                for g in opt.param_groups:
                    g["lr"] = budget_lr(frac, base_lr)
            bx, bf, bm, bt = [], [], [], []
            for i in order[s:s + batch_size]:
                x, f, m, _ = augment_sample(xs[i], fs[i], ms[i], rng, tile=tile, scale_range=scale_range,
                                            rescale=False)
                bx.append(x)
                bf.append(f)
                bm.append(m)
                bt.append(tables[i][m])
            xt, ft, mt = (torch.from_numpy(np.stack(a)).to(dev) for a in (bx, bf, bm))
            tt = torch.from_numpy(np.stack(bt)).to(dev)
            y, _ = model(xt)
            loss = panoptic_loss(y, ft, mt, tt, wt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(bx)
            n += len(bx)
        if n:
            history.append({"epoch": e + 1, "loss": total / n, "lr": float(opt.param_groups[0]["lr"])})
        if n and ((e + 1) % 10 == 0 or e + 1 == epochs or out_of_time):
            log.info("panoptic epoch %d: loss %.4f (%.0f s)", e + 1, history[-1]["loss"], time.perf_counter() - t0)
        if out_of_time:
            break
    model.eval()
    diam = float(model.diam_mean_value)
    meta = {"diam_mean": diam, "diam_labels": diam,
            "extra": {"training": {"panoptic": True, "epochs": len(history), "time_budget": time_budget, "batch_size": batch_size, "lr": base_lr,
                                   "tile": tile, "n_train": len(xs), "class_weights": w.tolist(), "seed": seed,
                                   "seconds": round(time.perf_counter() - t0, 1)}}}
    model.fastpose_meta = {**meta, "arch": model.arch(), "nchan": nchan, "classes": list(names)}
    path = Path(save_model(save_path, model, meta)) if save_path is not None else None
    return PanopticResult(model=model, class_names=names, history=history, class_weights=w.tolist(), path=path)


def evaluate_panoptic(model: nn.Module, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                      classes: Sequence[Any], *, channel_axis: Optional[int] = 0, threshold: float = 0.5,
                      device: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Score a panoptic network on held-out images: per class AP, error rate and F1 at ``threshold``
    (:func:`fastpose.metrics.panoptic_scores`, each class averaged over the images holding it), the
    per-image averages' means, and the classification accuracy of the matched masks
    (:func:`fastpose.metrics.class_accuracy`).  ``classes`` as for :func:`train_panoptic`.

    Panoptic models segment on PyTorch (``backend="auto"`` picks it for them)."""
    from ..inference import Segmenter
    from ..metrics import class_accuracy, panoptic_scores

    names = tuple(getattr(model, "class_names", None) or ())
    if not names:
        raise ValueError("evaluate_panoptic needs a panoptic network (one with class maps)")
    seg = Segmenter(model, device=device)
    true, tcls, pred, pcls = [], [], [], []
    for i, (img, m, c) in enumerate(zip(images, masks, classes)):
        lab, table = mask_class_table(m, c, len(names), name=f"held-out classes[{i}]")
        a = np.asarray(img)
        r = seg.segment(a, channel_axis=None if a.ndim == 2 else channel_axis)
        true.append(lab)
        tcls.append(table)
        pred.append(r.masks)
        pcls.append(r.classes if r.classes is not None else np.zeros(int(r.masks.max()) + 1, np.int64))
    ps = panoptic_scores(true, tcls, pred, pcls, thresholds=[threshold])
    acc = class_accuracy(true, tcls, pred, pcls)
    per_class = {}
    for j, k in enumerate(ps["classes"]):
        if k >= len(names):
            continue
        n_true = int(sum(int((t[1:] == k).sum()) for t in tcls))
        with np.errstate(all="ignore"):
            per_class[names[k]] = {
                "n_true": n_true,
                "ap": _nanmean(ps["ap"][:, j, 0]), "error_rate": _nanmean(ps["error_rate"][:, j, 0]),
                "f1": _nanmean(ps["f1"][:, j, 0])}
    return {"threshold": threshold, "n_images": len(true), "per_class": per_class,
            "ap_mean": float(ps["ap_mean"][0]), "error_rate_mean": float(ps["error_rate_mean"][0]),
            "f1_mean": float(ps["f1_mean"][0]), "class_accuracy": float(acc["accuracy"]),
            "n_matched": int(acc["n_matched"]), "n_true": int(sum(int(t.max()) for t in true)),
            "confusion": {f"{names[a]}->{names[b]}": int(n) for (a, b), n in sorted(acc["confusion"].items())
                          if a < len(names) and b < len(names)}}


def _nanmean(a: np.ndarray) -> Optional[float]:
    a = np.asarray(a, np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else None


def format_panoptic_table(scores: Dict[str, Any]) -> str:
    """A Markdown table of :func:`evaluate_panoptic`'s scores (a row per class, then the image means)."""
    t = scores["threshold"]
    f = (lambda v: "n/a" if v is None else f"{v:.3f}")
    lines = [f"| class | true masks | AP@{t:g} | error rate | F1 |", "|---|---:|---:|---:|---:|"]
    for name, r in scores["per_class"].items():
        lines.append(f"| {name} | {r['n_true']} | {f(r['ap'])} | {f(r['error_rate'])} | {f(r['f1'])} |")
    lines.append(f"| per-image mean ({scores['n_images']} images) | {scores['n_true']} | {f(scores['ap_mean'])} | "
                 f"{f(scores['error_rate_mean'])} | {f(scores['f1_mean'])} |")
    lines.append(f"\nclassification accuracy of the matched masks: {f(scores['class_accuracy'])} "
                 f"({scores['n_matched']} of {scores['n_true']} true masks matched at IoU 0.5)")
    return "\n".join(lines)
