"""Synthetic images of cells of several classes that differ only in appearance, for panoptic training and tests.

No classed dataset ships with fastpose, so the class of a cell is given by how it looks, and a network can
only learn it from the image:

* ``small_bright``: small round cells (diameter ~10 px), bright, smooth;
* ``large_textured``: large elongated cells (~26 x 16 px), dim, with a strong granular texture;
* ``ring``: medium round cells (~18 px) with a bright rim and a dark centre.

Cells do not overlap (a gap of at least one pixel); the image is one channel, blurred, with Poisson-like and
Gaussian noise.  :func:`make_classed_image` returns the image, the masks and the class of each mask.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import checks
from .synthetic import check_shape

__all__ = ["CLASS_NAMES", "make_classed_image", "make_classed_dataset"]

log = logging.getLogger("fastpose.synthetic_classes")

#: the classes, in class-id order (id 0 is background)
CLASS_NAMES: Tuple[str, ...] = ("small_bright", "large_textured", "ring")

# per class: semi-axes (a, b) in px, brightness range
_SHAPES = {"small_bright": ((5.0, 5.0), (0.8, 1.0)), "large_textured": ((13.0, 8.0), (0.35, 0.5)),
           "ring": ((9.0, 9.0), (0.6, 0.8))}


def make_classed_image(shape: Sequence[int] = (128, 128), n_cells: Optional[int] = None, seed: int = 0,
                       classes: Sequence[str] = CLASS_NAMES, noise: float = 0.03, blur: float = 1.0
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic image of cells of ``classes`` (a subset of :data:`CLASS_NAMES`, in the order that gives
    their ids 1..K).

    Returns ``(img float32 [Y, X], masks int32 [Y, X] 0..N, mask_classes int64 [N + 1])`` with
    ``mask_classes[i]`` the class id (1..K, index into ``classes`` plus one) of mask ``i``.  A pure function of
    the arguments."""
    from scipy import ndimage as ndi

    shape2 = check_shape(shape, ndims=(2,))
    n_cells = checks.integer(n_cells, "n_cells", lo=0, hi=checks.LIMITS["synthetic_cells"], none_ok=True)
    seed = checks.integer(seed, "seed", lo=0)
    noise = checks.number(noise, "noise", lo=0.0)
    blur = checks.number(blur, "blur", lo=0.0, hi=100.0)
    names = list(classes)
    bad = [c for c in names if c not in _SHAPES]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct names from {list(CLASS_NAMES)}, got {list(classes)!r}")
    rng = np.random.default_rng(seed)
    Y, X = shape2
    if n_cells is None:
        n_cells = max(1, int(Y * X / 700))
    masks = np.zeros((Y, X), np.int32)
    img = np.zeros((Y, X), np.float32)
    cls: List[int] = [0]
    yy, xx = np.mgrid[0:Y, 0:X].astype(np.float32)
    grain = rng.standard_normal((Y, X)).astype(np.float32)
    grain = ndi.gaussian_filter(grain, 0.8)
    grain /= grain.std() + 1e-6
    tries = 0
    while len(cls) - 1 < n_cells and tries < 30 * n_cells:
        tries += 1
        k = int(rng.integers(len(names)))
        (a, b), (lo, hi) = _SHAPES[names[k]]
        a, b = a * rng.uniform(0.85, 1.15), b * rng.uniform(0.85, 1.15)
        cy, cx = rng.uniform(0, Y), rng.uniform(0, X)
        t = rng.uniform(0, np.pi)
        u = ((yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)) / a
        v = (-(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)) / b
        r = np.sqrt(u * u + v * v)
        cell = r <= 1.0
        if cell.sum() < 20 or (ndi.binary_dilation(cell, iterations=2) & (masks > 0)).any():
            continue
        i = len(cls)
        masks[cell] = i
        cls.append(k + 1)
        bright = rng.uniform(lo, hi)
        if names[k] == "large_textured":
            val = bright * (1.0 + 0.45 * grain[cell])
        elif names[k] == "ring":
            val = bright * np.clip((r[cell] - 0.45) / 0.35, 0.1, 1.0)
        else:
            val = np.full(int(cell.sum()), bright, np.float32)
        img[cell] = val
    img += np.float32(rng.uniform(0.03, 0.08))
    if blur > 0:
        img = ndi.gaussian_filter(img, blur)
    photons = float(rng.uniform(100, 300))
    img = rng.poisson(np.clip(img, 0, None) * photons).astype(np.float32) / photons
    img += rng.normal(0.0, noise, img.shape).astype(np.float32)
    return img.astype(np.float32), masks, np.asarray(cls, np.int64)


def make_classed_dataset(n: int, shape: Sequence[int] = (128, 128), seed: int = 0,
                         classes: Sequence[str] = CLASS_NAMES) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` images of :func:`make_classed_image` (seeds drawn from ``seed``)."""
    n = checks.integer(n, "n", lo=0, hi=100_000)
    seed = checks.integer(seed, "seed", lo=0)
    rng = np.random.default_rng(seed)
    out = [make_classed_image(shape, seed=int(rng.integers(2 ** 31)), classes=classes) for _ in range(n)]
    log.debug("made %d synthetic classed images of shape %s", n, tuple(shape))
    return out
