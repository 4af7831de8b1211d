"""Validation of a network on held-out :class:`~fastpose.train.data.TrainData`: AP during training, and the
scores of a model card.

Images go through the public :class:`fastpose.Segmenter` (imported when needed), already normalised as
they were for training; scores come from :func:`fastpose.metrics.evaluate`.

Card modes (:data:`MODES`): the label diameter of each image or the diameter the model's size model
estimates, each with or without flip test-time augmentation (``augment=True``).  Every mode is scored
on the whole split and per image kind (:attr:`TrainData.kinds`: "grey", "rgb", ...).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:  # PyTorch is imported where it is used, so the CLI's parser does not wait for it
    import torch
    import torch.nn as nn

from .data import TrainData

__all__ = ["MODES", "DEFAULT_MODES", "THRESHOLDS", "segment_data", "evaluate_ap", "score_block",
           "evaluate_heldout"]

log = logging.getLogger("fastpose.train")

#: mode name -> (segment at the label diameter (else: estimated), flip TTA)
MODES: Dict[str, Tuple[bool, bool]] = {
    "label_diameter": (True, False),
    "estimated_diameter": (False, False),
    "label_diameter_flip_tta": (True, True),
    "estimated_diameter_flip_tta": (False, True),
}
DEFAULT_MODES = ("label_diameter", "estimated_diameter", "label_diameter_flip_tta")
THRESHOLDS = (0.5, 0.75, 0.9)


def is_vit(model: nn.Module) -> bool:
    return hasattr(model, "arch") and callable(model.arch) and model.arch().get("type") == "vit"


@contextmanager
def _segmenter(model: nn.Module, device: Union[str, torch.device]) -> Iterator[Any]:
    """A Segmenter on ``model`` (a bare network gets its architecture as temporary metadata); the
    network's train/eval mode is restored afterwards."""
    from .. import Segmenter

    tmp_meta = not getattr(model, "fastpose_meta", None) and hasattr(model, "arch")
    if tmp_meta:  # tells the Segmenter the architecture (tile size) of a bare network
        model.fastpose_meta = {"arch": model.arch(), "nchan": int(model.nchan)}
    was_training = model.training
    import torch

    dev = torch.device(device)
    try:
        yield Segmenter(model, device="cuda" if dev.type == "cuda" else "cpu")
    finally:
        model.train(was_training)
        if tmp_meta:
            del model.fastpose_meta


def _pad_to(img: np.ndarray, side: int) -> np.ndarray:
    """Zero-pad a [C, Y, X] image at the bottom/right to at least ``side`` x ``side``."""
    py, px = max(0, side - img.shape[1]), max(0, side - img.shape[2])
    return np.pad(img, ((0, 0), (0, py), (0, px))) if (py or px) else img


def segment_data(seg: Any, model: nn.Module, data: TrainData, label_diameter: bool = True,
                 augment: bool = False) -> Tuple[List[np.ndarray], List[float]]:
    """Masks of every image of ``data`` (normalised [C, Y, X]) and the diameter each was segmented at."""
    # a ViT takes exactly img_size tiles; the Segmenter tiles smaller images at their own size
    min_side = int(getattr(model, "img_size", 0)) if is_vit(model) else 0
    preds, diams = [], []
    for img, d in zip(data.images, data.diameters):
        r = seg.segment(_pad_to(img, min_side), channel_axis=0, normalize=False, augment=augment,
                        diameter=d if label_diameter else None)
        preds.append(np.asarray(r.masks)[:img.shape[1], :img.shape[2]])
        diams.append(float(r.diameter))
    return preds, diams


def evaluate_ap(model: nn.Module, data: TrainData, device: Union[str, torch.device] = "cpu",
                threshold: float = 0.5) -> np.ndarray:
    """AP at IoU ``threshold`` of each image of ``data``, segmented with the model at the image's label
    diameter (images are already normalised)."""
    from ..metrics import average_precision

    with _segmenter(model, device) as seg:
        preds, _ = segment_data(seg, model, data)
    ap, _, _, _ = average_precision(list(data.masks), preds, [threshold])
    return ap[:, 0]


def _pct(t: float) -> str:
    return f"{round(t * 100):d}"


def score_block(true: Sequence[np.ndarray], pred: Sequence[np.ndarray],
                thresholds: Sequence[float] = THRESHOLDS) -> Dict[str, Any]:
    """Card scores of one set of images (:func:`fastpose.metrics.evaluate`): mean AP per image at each
    threshold, and at the first threshold the pooled error rate ((FN + FP) / (TP + FN)), pooled AP and
    counts; COCO mean AP (0.5:0.95) and AJI."""
    from ..metrics import evaluate

    r = evaluate(list(true), list(pred), list(thresholds))
    t0 = _pct(thresholds[0])
    out: Dict[str, Any] = {"images": len(true)}
    for t, ap in zip(thresholds, r["ap_mean"]):
        out[f"ap{_pct(t)}_mean"] = float(ap)
    out[f"error_rate{t0}_pooled"] = float(r["error_rate_pooled"][0])
    out[f"ap{t0}_pooled"] = float(r["ap_pooled"][0])
    out[f"tp{t0}"], out[f"fp{t0}"], out[f"fn{t0}"] = (int(r[k][0]) for k in ("tp", "fp", "fn"))
    out["mean_ap_50_95"] = float(r["mean_ap"])
    out["aji_mean"] = float(r["aji_mean"])
    return out


def evaluate_heldout(model: nn.Module, data: TrainData, device: Union[str, torch.device] = "cpu",
                     modes: Sequence[str] = DEFAULT_MODES, thresholds: Sequence[float] = THRESHOLDS
                     ) -> Dict[str, Any]:
    """The ``validation`` part of a model card: :func:`score_block` for each mode of :data:`MODES`, on the
    whole of ``data`` and, when it holds more than one, per image kind (``by_kind``); estimated-diameter modes also give the median
    ratio of estimated to label diameter.  ``evaluated`` says on what, how long and with which versions."""
    import fastpose

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown evaluation mode(s) {bad}; choose from {list(MODES)}")
    if len(data) == 0:
        raise ValueError("no held-out images to evaluate")
    t0 = time.perf_counter()
    out: Dict[str, Any] = {}
    kinds = sorted(set(data.kinds)) if len(data.kinds) == len(data) else []
    kinds = kinds if len(kinds) > 1 else []  # one kind: the whole split
    with _segmenter(model, device) as seg:
        for mode in modes:
            label_d, augment = MODES[mode]
            tm = time.perf_counter()
            preds, diams = segment_data(seg, model, data, label_d, augment)
            block = score_block(data.masks, preds, thresholds)
            if not label_d:
                ratio = np.asarray(diams) / np.maximum(np.asarray(data.diameters), 1e-6)
                block["diameter_ratio_median"] = float(np.median(ratio))
            if kinds:
                block["by_kind"] = {k: score_block([m for m, kk in zip(data.masks, data.kinds) if kk == k],
                                                   [p for p, kk in zip(preds, data.kinds) if kk == k], thresholds)
                                    for k in kinds}
            out[mode] = block
            log.info("%s: AP@%.2f %.4f (%d images, %.0f s)", mode, thresholds[0],
                     block[f"ap{_pct(thresholds[0])}_mean"], len(data), time.perf_counter() - tm)
    import torch

    dev = torch.device(device)
    out["evaluated"] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": "fp16" if dev.type == "cuda" else "fp32",
        "seconds": round(time.perf_counter() - t0, 1),
        "fastpose": str(fastpose.__version__), "torch": str(torch.__version__),  # plain str (TorchVersion is not)
    }
    return out
