"""Segmentation metrics: IoU matching of predicted to true masks and the scores of the papers.

* ``average_precision``: AP = TP / (TP + FP + FN) at IoU thresholds (Cellpose), with optimal one-to-one
  matching (Hungarian on the overlap graph; unique matches make it direct for thresholds >= 0.5)
* error rate = (FN + FP) / (TP + FN) (Cellpose-SAM), F1 = 2 TP / (2 TP + FP + FN)
* ``mean_ap``: mean of AP over IoU 0.50:0.05:0.95
* ``aggregated_jaccard_index`` (AJI), ``seg_score`` (Cell Tracking Challenge SEG)
* ``f1_seg_pooled``: F1 at IoU > 0.5 and SEG, both pooled over a dataset (Cellulus' evaluation)
* ``evaluate``: all of them for a dataset, both as per-image means and pooled over images
* ``panoptic_scores``: AP, error rate and F1 per image and per class, averaged over the classes present in
  each image (Cellpose-SAM's rule for semantic segmentation); ``class_accuracy``: the fraction of matched
  masks given the right class

Overlaps are counted sparsely (only pairs of masks that touch, :func:`fastpose.labels.iou_pairs`), so images
with thousands of masks are fast.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from . import checks
from .labels import check_labels, iou_pairs, relabel_sequential

DEFAULT_THRESHOLDS = (0.5, 0.75, 0.9)
COCO_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))


@dataclass
class Overlap:
    """Sparse overlap of a true and a predicted label image (labels compacted to 1..n)."""

    n_true: int
    n_pred: int
    ti: np.ndarray      # true index (1-based) of each touching pair
    pi: np.ndarray      # predicted index (1-based)
    inter: np.ndarray   # pixels in common
    area_true: np.ndarray  # [n_true + 1]
    area_pred: np.ndarray  # [n_pred + 1]

    @property
    def iou(self) -> np.ndarray:
        return self.inter / (self.area_true[self.ti] + self.area_pred[self.pi] - self.inter)


def _thresholds(thresholds: Any) -> List[float]:
    """IoU thresholds checked: one number or a non-empty sequence of them, each finite in [0, 1]."""
    if isinstance(thresholds, (str, bytes)):
        raise ValueError(f"thresholds must be numbers in [0, 1], got {thresholds!r}")
    if np.ndim(thresholds) == 0 and not isinstance(thresholds, (list, tuple)):
        thresholds = [thresholds]
    th = list(thresholds)
    if not th:
        raise ValueError("thresholds must name at least one IoU threshold in [0, 1], got none")
    return [checks.probability(t, f"thresholds[{i}]") for i, t in enumerate(th)]


def _compact(labels: np.ndarray) -> Tuple[np.ndarray, int]:
    compact, values = relabel_sequential(labels)
    return compact, max(int(values.size) - 1, 0)


def overlap(true: np.ndarray, pred: np.ndarray) -> Overlap:
    """Sparse pairwise overlaps of two label images of the same shape (integer, labels >= 0; ValueError
    otherwise)."""
    ta, pa = check_labels(true, "true"), check_labels(pred, "pred")
    if ta.shape != pa.shape:
        raise ValueError(f"true and predicted masks differ in shape: {ta.shape} vs {pa.shape}")
    t, nt = _compact(ta)
    p, npred = _compact(pa)
    pairs = iou_pairs(t, p)
    return Overlap(nt, npred, pairs.a, pairs.b, pairs.inter.astype(np.float64),
                   pairs.area_a.astype(np.float64), pairs.area_b.astype(np.float64))


def true_positives(ov: Overlap, threshold: float, strict: bool = False) -> int:
    """Number of one-to-one matches with IoU >= threshold (``strict``: IoU > threshold), maximised over
    matchings."""
    iou = ov.iou
    ok = iou > threshold if strict else iou >= threshold
    if threshold > 0.5 or (strict and threshold >= 0.5):
        return int(ok.sum())  # IoU > 0.5 pairs are unique on both sides
    if not ok.any():
        return 0
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ti, pi, w = ov.ti[ok], ov.pi[ok], iou[ok]
    # connected components of the bipartite graph of candidate pairs; Hungarian within each
    n = ov.n_true + ov.n_pred
    g = coo_matrix((np.ones(ti.size), (ti - 1, ov.n_true + pi - 1)), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    tp = 0
    pc = comp[ti - 1]
    order = np.argsort(pc, kind="stable")
    ti, pi, w, pc = ti[order], pi[order], w[order], pc[order]
    starts = np.r_[0, np.nonzero(np.diff(pc))[0] + 1, pc.size]
    for a, b in zip(starts[:-1], starts[1:]):
        if b - a == 1:
            tp += 1
            continue
        ut, it = np.unique(ti[a:b], return_inverse=True)
        up, ip = np.unique(pi[a:b], return_inverse=True)
        cost = np.zeros((ut.size, up.size))
        cost[it, ip] = -(1.0 + w[a:b] / 2.0)  # first maximise the count, then the IoU
        r, c = linear_sum_assignment(cost)
        tp += int((cost[r, c] < 0).sum())
    return tp


Labels = Union[np.ndarray, Sequence[np.ndarray]]


def _as_list(x: Labels, name: str) -> List[np.ndarray]:
    if isinstance(x, np.ndarray) and x.dtype != object:
        return [x]
    if isinstance(x, (str, bytes)) or not isinstance(x, (np.ndarray, Sequence)):
        raise ValueError(f"{name} must be a label image or a list of them, got {type(x).__name__}")
    return list(x)


def average_precision(true: Labels, pred: Labels, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """AP = TP / (TP + FP + FN) per image and threshold (Cellpose's ``metrics.average_precision``).

    ``true``, ``pred``: a label image each (integer, labels >= 0, same shape) or lists of them;
    ``thresholds``: IoU thresholds, each finite in [0, 1] (ValueError otherwise, never an AP of NaN).
    Returns (ap, tp, fp, fn), each of shape [n_images, n_thresholds]. An image with no true and no
    predicted masks has AP 1.
    """
    th = _thresholds(thresholds)
    tl, pl = _as_list(true, "true"), _as_list(pred, "pred")
    if len(tl) != len(pl):
        raise ValueError(f"{len(tl)} true vs {len(pl)} predicted label images")
    ap = np.zeros((len(tl), len(th)))
    tp = np.zeros_like(ap, dtype=np.int64)
    fp = np.zeros_like(tp)
    fn = np.zeros_like(tp)
    for i, (t, p) in enumerate(zip(tl, pl)):
        ov = overlap(t, p)
        for j, thr in enumerate(th):
            k = true_positives(ov, thr)
            tp[i, j], fp[i, j], fn[i, j] = k, ov.n_pred - k, ov.n_true - k
            denom = k + fp[i, j] + fn[i, j]
            ap[i, j] = k / denom if denom else 1.0
    return ap, tp, fp, fn


def mean_ap(true: Labels, pred: Labels) -> np.ndarray:
    """Mean AP over IoU thresholds 0.50:0.05:0.95, per image."""
    return average_precision(true, pred, COCO_THRESHOLDS)[0].mean(1)


def aggregated_jaccard_index(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI (Kumar et al. 2017): each true mask with its best-IoU prediction; unmatched predictions add
    their area to the union."""
    ov = overlap(true, pred)
    if ov.n_true == 0:
        return 1.0 if ov.n_pred == 0 else 0.0
    iou = ov.iou
    best = np.full(ov.n_true + 1, -1.0)
    best_p = np.zeros(ov.n_true + 1, np.int64)
    best_i = np.zeros(ov.n_true + 1)
    order = np.lexsort((-ov.pi, iou))  # ascending IoU; ties -> lowest pred index last wins
    best[ov.ti[order]] = iou[order]
    best_p[ov.ti[order]] = ov.pi[order]
    best_i[ov.ti[order]] = ov.inter[order]
    C = U = 0.0
    used = np.zeros(ov.n_pred + 1, bool)
    for t in range(1, ov.n_true + 1):
        if best[t] > 0:
            p = best_p[t]
            C += best_i[t]
            U += ov.area_true[t] + ov.area_pred[p] - best_i[t]
            used[p] = True
        else:
            U += ov.area_true[t]
    U += ov.area_pred[1:][~used[1:]].sum()
    return float(C / U) if U else 1.0


def _seg_sum(ov: Overlap) -> float:
    """Sum over true objects of the IoU with the predicted object covering more than half of it (|P n G| / |G|
    > 0.5: at most one per true object; 0 when none does)."""
    match = ov.inter > 0.5 * ov.area_true[ov.ti]
    return float(ov.iou[match].sum())


def seg_score(true: np.ndarray, pred: np.ndarray) -> float:
    """Cell Tracking Challenge SEG: mean over true objects of the Jaccard index with the predicted object
    covering more than half of it (0 when none does); NaN for an image without true objects."""
    ov = overlap(true, pred)
    if ov.n_true == 0:
        return float("nan")
    return _seg_sum(ov) / ov.n_true


def f1_seg_pooled(true: Labels, pred: Labels, threshold: float = 0.5) -> Dict[str, Any]:
    """F1 and SEG pooled over a dataset, as Cellulus' ``evaluate.py`` reports them.

    * F1: a predicted and a true object match when their IoU is *above* ``threshold`` (one-to-one, maximised
      over matchings: :func:`true_positives` with ``strict``); ``f1 = 2 sum TP / (2 sum TP + sum FP + sum FN)``
      over all images (1.0 when there are no objects at all).
    * SEG: the sum over every true object of every image of the IoU with the predicted object covering more
      than half of it (0 when none does), divided by the number of true objects (NaN without any).

    ``true``, ``pred``: a label image each or lists of them (as :func:`average_precision`).  Returns ``f1``,
    ``seg``, ``tp``, ``fp``, ``fn``, ``n_true``, ``n_pred``, ``seg_sum`` (the summed IoUs), ``n_images``,
    ``threshold``."""
    thr = checks.probability(threshold, "threshold")
    tl, pl = _as_list(true, "true"), _as_list(pred, "pred")
    if len(tl) != len(pl):
        raise ValueError(f"{len(tl)} true vs {len(pl)} predicted label images")
    tp = n_true = n_pred = 0
    seg_sum = 0.0
    for t, p in zip(tl, pl):
        ov = overlap(t, p)
        tp += true_positives(ov, thr, strict=True)
        n_true += ov.n_true
        n_pred += ov.n_pred
        seg_sum += _seg_sum(ov)
    fp, fn = n_pred - tp, n_true - tp
    denom = 2 * tp + fp + fn
    return {"f1": 2 * tp / denom if denom else 1.0, "seg": seg_sum / n_true if n_true else float("nan"),
            "tp": tp, "fp": fp, "fn": fn, "n_true": n_true, "n_pred": n_pred, "seg_sum": seg_sum,
            "n_images": len(tl), "threshold": thr}


def evaluate(true: Labels, pred: Labels, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Dict[str, object]:
    """All scores for a dataset: per-image means and pooled counts (sums of TP/FP/FN over images)."""
    thresholds = _thresholds(thresholds)
    tl, pl = _as_list(true, "true"), _as_list(pred, "pred")
    ap, tp, fp, fn = average_precision(tl, pl, thresholds)
    TP, FP, FN = tp.sum(0), fp.sum(0), fn.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out: Dict[str, object] = {
            "thresholds": list(thresholds),
            "ap_mean": ap.mean(0).tolist(),
            "ap_pooled": np.where(TP + FP + FN > 0, TP / (TP + FP + FN), 1.0).tolist(),
            "error_rate_pooled": np.where(TP + FN > 0, (FN + FP) / (TP + FN), 0.0).tolist(),
            "error_rate_mean": np.nanmean(np.where(tp + fn > 0, (fn + fp) / np.maximum(tp + fn, 1), np.nan), 0).tolist(),
            "f1_pooled": np.where(2 * TP + FP + FN > 0, 2 * TP / (2 * TP + FP + FN), 1.0).tolist(),
            "tp": TP.tolist(), "fp": FP.tolist(), "fn": FN.tolist(),
        }
    out["mean_ap"] = float(mean_ap(tl, pl).mean())
    out["aji_mean"] = float(np.mean([aggregated_jaccard_index(t, p) for t, p in zip(tl, pl)]))
    segs = [seg_score(t, p) for t, p in zip(tl, pl)]
    out["seg_mean"] = float(np.nanmean(segs)) if not all(np.isnan(segs)) else float("nan")
    out["n_images"] = len(tl)
    return out


# --------------------------------------------------------------------------------------------------
# panoptic (semantic class per mask)
# --------------------------------------------------------------------------------------------------

def _mask_classes(classes: Any, labels: np.ndarray, name: str) -> np.ndarray:
    """Per-mask class ids of ``labels`` as int64 ``[labels.max() + 1]``: ``classes[i]`` is the class of mask
    ``i`` (index 0 unused); ValueError when it is too short, not integers or negative."""
    try:
        c = np.asarray(classes)
    except Exception as e:  # noqa: BLE001 - ragged input: a user error
        raise ValueError(f"{name} could not be read as per-mask class ids: {e}") from None
    n = int(labels.max()) if labels.size else 0
    if c.ndim != 1 or c.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1D integer array of per-mask class ids (index = mask id), got "
                         f"{c.dtype} of shape {c.shape}")
    if c.size < n + 1:
        raise ValueError(f"{name} has {c.size} entries but the masks go up to {n} (need masks.max() + 1)")
    if n and c[1:n + 1].min() < 1:
        bad = int(np.nonzero(c[1:n + 1] < 1)[0][0]) + 1
        raise ValueError(f"{name}[{bad}] = {int(c[bad])}: every mask needs a class id >= 1 (0 is background)")
    return c.astype(np.int64)


def _of_class(labels: np.ndarray, cls: np.ndarray, c: int) -> np.ndarray:
    keep = cls == c
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def panoptic_scores(true: Labels, true_classes: Any, pred: Labels, pred_classes: Any,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> Dict[str, Any]:
    """AP, error rate and F1 per image and per class, and per image averaged over the classes present in it.

    ``true``/``pred``: label images (or lists); ``true_classes``/``pred_classes``: per image, the class id of
    each mask indexed by mask id (``classes[i]`` for mask ``i``, index 0 unused, ids >= 1; a
    :class:`~fastpose.inference.SegmentResult`'s ``classes``; per-pixel class images convert with
    :func:`fastpose.labels.majority_class`).  For each class, the true and predicted masks of that class are
    matched as in :func:`average_precision` (AP = TP / (TP + FP + FN), error rate = (FN + FP) / (TP + FN),
    F1 = 2 TP / (2 TP + FP + FN)).  A class with no true mask in an image is left out of that image's average
    (NaN in the per-class arrays), as in Cellpose-SAM; an image without true masks has NaN averages.

    Returns ``classes`` (the class ids scored), ``thresholds``, per image/class/threshold ``ap``,
    ``error_rate``, ``f1`` ([n_images, n_classes, n_thresholds], NaN where the class is absent), per image
    ``ap_image``, ``error_rate_image``, ``f1_image`` ([n_images, n_thresholds]) and their means over images
    ``ap_mean``, ``error_rate_mean``, ``f1_mean`` (lists), and ``ap_class_mean`` [n_classes, n_thresholds]
    (each class over the images holding it).
    """
    th = _thresholds(thresholds)
    tl, pl = _as_list(true, "true"), _as_list(pred, "pred")
    tcl = [true_classes] if len(tl) == 1 and np.ndim(true_classes) == 1 else list(true_classes)
    pcl = [pred_classes] if len(pl) == 1 and np.ndim(pred_classes) == 1 else list(pred_classes)
    if not len(tl) == len(pl) == len(tcl) == len(pcl):
        raise ValueError(f"{len(tl)} true and {len(pl)} predicted label images with {len(tcl)} and {len(pcl)} "
                         "class arrays: give one class array per label image")
    tl = [check_labels(t, "true") for t in tl]
    pl = [check_labels(p, "pred") for p in pl]
    tcl = [_mask_classes(c, t, f"true_classes[{i}]") for i, (c, t) in enumerate(zip(tcl, tl))]
    pcl = [_mask_classes(c, p, f"pred_classes[{i}]") for i, (c, p) in enumerate(zip(pcl, pl))]
    ids = sorted({int(v) for c, t in zip(tcl, tl) for v in c[1:int(t.max()) + 1]} |
                 {int(v) for c, p in zip(pcl, pl) for v in c[1:int(p.max()) + 1]})
    shape = (len(tl), len(ids), len(th))
    ap, er, f1 = (np.full(shape, np.nan) for _ in range(3))
    for i, (t, tc, p, pc) in enumerate(zip(tl, tcl, pl, pcl)):
        for j, c in enumerate(ids):
            tc_img = _of_class(t, tc, c)
            if not tc_img.any():
                continue  # class absent from this image's ground truth: not scored
            a, tp, fp, fn = (v[0] for v in average_precision(tc_img, _of_class(p, pc, c), th))
            ap[i, j] = a
            er[i, j] = (fn + fp) / (tp + fn)
            f1[i, j] = 2 * tp / (2 * tp + fp + fn)
    out: Dict[str, Any] = {"classes": ids, "thresholds": list(th), "ap": ap, "error_rate": er, "f1": f1}
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: NaN, as documented
        for k, v in (("ap", ap), ("error_rate", er), ("f1", f1)):
            img = np.nanmean(v, axis=1) if ids else np.full((len(tl), len(th)), np.nan)
            out[f"{k}_image"] = img
            out[f"{k}_mean"] = np.nanmean(img, axis=0).tolist()
        out["ap_class_mean"] = np.nanmean(ap, axis=0) if len(tl) else np.zeros((len(ids), len(th)))
    return out


def class_accuracy(true: Labels, true_classes: Any, pred: Labels, pred_classes: Any,
                   iou_threshold: float = 0.5) -> Dict[str, Any]:
    """Classification accuracy of matched masks: predicted and true masks paired one-to-one at IoU above
    ``iou_threshold`` (>= 0.5, where the pairs are unique), ignoring classes; ``accuracy`` is the fraction of
    pairs whose classes agree (NaN without pairs), ``n_matched`` the number of pairs, and ``confusion``
    ``{(true class, predicted class): count}``.  Class arrays as in :func:`panoptic_scores`."""
    thr = checks.probability(iou_threshold, "iou_threshold")
    if thr < 0.5:
        raise ValueError(f"iou_threshold must be >= 0.5 (unique matches), got {thr}")
    tl, pl = _as_list(true, "true"), _as_list(pred, "pred")
    tcl = [true_classes] if len(tl) == 1 and np.ndim(true_classes) == 1 else list(true_classes)
    pcl = [pred_classes] if len(pl) == 1 and np.ndim(pred_classes) == 1 else list(pred_classes)
    if not len(tl) == len(pl) == len(tcl) == len(pcl):
        raise ValueError("give one class array per label image")
    right = total = 0
    confusion: Dict[Tuple[int, int], int] = {}
    for i, (t, tc, p, pc) in enumerate(zip(tl, tcl, pl, pcl)):
        t, p = check_labels(t, "true"), check_labels(p, "pred")
        tc = _mask_classes(tc, t, f"true_classes[{i}]")
        pc = _mask_classes(pc, p, f"pred_classes[{i}]")
        pairs = iou_pairs(t, p)
        ok = pairs.iou > thr if thr == 0.5 else pairs.iou >= thr
        a, b = tc[pairs.a[ok]], pc[pairs.b[ok]]
        right += int((a == b).sum())
        total += int(ok.sum())
        for key in zip(a.tolist(), b.tolist()):
            confusion[key] = confusion.get(key, 0) + 1
    return {"accuracy": right / total if total else float("nan"), "n_matched": total, "confusion": confusion}
