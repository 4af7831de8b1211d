"""Rules for label images, each written once: sequential relabelling, the label dtype, IoU pairs, diameters.

Every module that renumbers labels, picks the dtype of a label image, matches masks by IoU or measures
cell diameters calls these (the metrics, 3D stitching, the core wrappers, training data, the CLI).
NumPy only; :func:`relabel_sequential` also takes a PyTorch tensor and stays on its device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

import numpy as np

__all__ = ["check_labels", "labels_dtype", "as_labels", "relabel_sequential", "IoUPairs", "iou_pairs",
           "median_diameter", "majority_class"]


def check_labels(labels: Any, name: str) -> np.ndarray:
    """``labels`` as a NumPy label image, checked: an integer array (not bool, float, complex or object) of at
    least one dimension with labels >= 0; ValueError naming ``name`` otherwise (the one rule, for the metrics,
    IoU pairs and diameters)."""
    try:
        lab = np.asarray(labels)
    except Exception as e:  # noqa: BLE001 - ragged lists and the like: a user error
        raise ValueError(f"{name} could not be read as a label image: {e}") from None
    if lab.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer label image (0 = background, 1..N = masks), got dtype "
                         f"{lab.dtype}" + ("; convert a bool mask with skimage.measure.label or "
                                           "scipy.ndimage.label" if lab.dtype.kind == "b" else ""))
    if lab.ndim < 1:
        raise ValueError(f"{name} must be an image (at least 1 dimension), got a scalar")
    if lab.size and lab.min() < 0:
        raise ValueError(f"{name} has negative labels (min {int(lab.min())}); labels must be >= 0 with "
                         "0 = background")
    return lab


def labels_dtype(n: int) -> np.dtype:
    """uint16 for up to 65535 masks, else uint32 (Cellpose's convention)."""
    return np.dtype(np.uint16) if n <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def as_labels(labels: Any) -> np.ndarray:
    """A label image (NumPy, or a tensor on any device) as a NumPy array of :func:`labels_dtype`."""
    a = labels if isinstance(labels, np.ndarray) else labels.cpu().numpy()
    n = int(a.max()) if a.size else 0
    return a.astype(labels_dtype(n), copy=False)


def relabel_sequential(labels: Any) -> Tuple[Any, Any]:
    """Map labels to 0..N in increasing order of their values; 0 stays background.

    Returns ``(relabelled int32 array of the input's shape, values)`` where ``values[k]`` is the old label of
    new label ``k`` (``values[0] == 0``).  A PyTorch tensor stays a tensor on its device.
    """
    if not isinstance(labels, np.ndarray) and type(labels).__module__.startswith("torch"):
        import torch
        uniq, inv = torch.unique(labels, sorted=True, return_inverse=True)
        inv = inv.reshape(labels.shape).to(torch.int32)
        if uniq.numel() and int(uniq[0].item()) != 0:
            inv += 1
            uniq = torch.cat([torch.zeros(1, dtype=uniq.dtype, device=uniq.device), uniq])
        return inv.contiguous(), uniq
    a = np.asarray(labels)
    uniq, inv = np.unique(a, return_inverse=True)
    inv = inv.reshape(a.shape).astype(np.int32)
    if uniq.size and uniq[0] != 0:
        inv += 1
        uniq = np.concatenate([np.zeros(1, uniq.dtype), uniq])
    return np.ascontiguousarray(inv), uniq


@dataclass
class IoUPairs:
    """Every pair of touching masks of two label images of the same shape (labels used as given)."""

    n_a: int              #: largest label of ``a``
    n_b: int              #: largest label of ``b``
    a: np.ndarray         #: int64 label in ``a`` of each touching pair (pairs sorted by (a, b))
    b: np.ndarray         #: int64 label in ``b``
    inter: np.ndarray     #: int64 pixels in common
    area_a: np.ndarray    #: int64 [n_a + 1] pixels per label of ``a``
    area_b: np.ndarray    #: int64 [n_b + 1]

    @property
    def iou(self) -> np.ndarray:
        """float64 intersection over union of each pair."""
        return self.inter / (self.area_a[self.a] + self.area_b[self.b] - self.inter)


def iou_pairs(a: np.ndarray, b: np.ndarray) -> IoUPairs:
    """Sparse overlaps of label images ``a`` and ``b`` (non-negative integers, same shape).

    Only pairs that share pixels are listed, so images with thousands of masks are cheap.  Labels need not be
    sequential (areas are counted up to the largest label); compact them first with :func:`relabel_sequential`
    when they are sparse and large.
    """
    a, b = check_labels(a, "a"), check_labels(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"label images differ in shape: {a.shape} vs {b.shape}")
    x = np.asarray(a).ravel().astype(np.int64, copy=False)
    y = np.asarray(b).ravel().astype(np.int64, copy=False)
    na = int(x.max()) if x.size else 0
    nb = int(y.max()) if y.size else 0
    both = (x > 0) & (y > 0)
    key = x[both] * (nb + 1) + y[both]
    pairs, inter = np.unique(key, return_counts=True)
    return IoUPairs(na, nb, pairs // (nb + 1), pairs % (nb + 1), inter.astype(np.int64),
                    np.bincount(x, minlength=na + 1), np.bincount(y, minlength=nb + 1))


def median_diameter(masks: np.ndarray) -> float:
    """Median over masks of the diameter of the disc with the same area (Cellpose's ``diameters``)."""
    counts = np.bincount(check_labels(masks, "masks").ravel().astype(np.int64))[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    return float(np.median(np.sqrt(counts / np.pi) * 2))


def majority_class(masks: Any, classes: Any, n_classes: int) -> np.ndarray:
    """The class with the most pixels inside each mask: ``out[i]`` for mask ``i`` (``out[0] = 0``, background).

    ``masks``: a label image; ``classes``: a per-pixel class image of the same shape with values in
    ``0..n_classes - 1`` (0 = background).  Ties go to the lowest class id.  Returns int64
    ``[masks.max() + 1]``.  ValueError for mismatched shapes or classes out of range."""
    m = check_labels(masks, "masks")
    c = np.asarray(classes)
    if c.shape != m.shape:
        raise ValueError(f"class image and masks differ in shape: {c.shape} vs {m.shape}")
    if c.dtype.kind not in "iu":
        raise ValueError(f"the class image must hold integer class ids, got dtype {c.dtype}")
    k = int(n_classes)
    if c.size and (c.min() < 0 or c.max() >= k):
        raise ValueError(f"class ids must be in 0..{k - 1}, got {int(c.min())}..{int(c.max())}")
    n = int(m.max()) + 1 if m.size else 1
    counts = np.bincount(m.ravel().astype(np.int64) * k + c.ravel().astype(np.int64),
                         minlength=n * k).reshape(n, k)
    out = counts.argmax(1).astype(np.int64)
    out[0] = 0
    return out
