"""Synthetic two-channel cell images (cytoplasm + nucleus) with exact masks, for training tests and demos.

Cells come from :func:`fastpose.synthetic.random_labels` (touching and isolated, jittered ellipses).  Each
cell gets its own brightness and a smooth texture; its edges are darkened (so touching cells are
separable, like a membrane-excluded cytoplasm stain); channel 1 holds a nucleus, a smaller blob inside
every cell.  The image is blurred and has Poisson-like and Gaussian noise added.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from . import checks
from .synthetic import check_shape, random_labels

__all__ = ["make_cyto_image", "make_cyto_dataset"]

log = logging.getLogger("fastpose.synthetic_cells")


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    from scipy import ndimage as ndi

    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (f - f.mean()) / (f.std() + 1e-6)


def make_cyto_image(shape: Sequence[int] = (256, 256), n_cells: Optional[int] = None, diameter: float = 30.0,
                    seed: int = 0, noise: float = 0.05, blur: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic cytoplasm + nucleus image.

    Args:
        shape: (Y, X).
        n_cells: cell centres to draw (default: enough for a moderately crowded field).
        diameter: mean cell diameter in pixels.
        seed: random seed; the result is a pure function of the arguments.
        noise: std of the additive Gaussian noise (image intensities are roughly in [0, 1]).
        blur: sigma of the Gaussian blur (point-spread function), pixels.

    Returns:
        (img float32 [2, Y, X]: cytoplasm, nucleus; masks int32 [Y, X], 0 = background, 1..N).
    """
    from scipy import ndimage as ndi

    shape2 = check_shape(shape, ndims=(2,))
    checks.integer(n_cells, "n_cells", lo=0, hi=checks.LIMITS["synthetic_cells"], none_ok=True)
    diameter = checks.number(diameter, "diameter", lo=0.0, lo_open=True, hi=checks.LIMITS["diameter"])
    seed = checks.integer(seed, "seed", lo=0)
    noise = checks.number(noise, "noise", lo=0.0)
    blur = checks.number(blur, "blur", lo=0.0, hi=1000.0)
    rng = np.random.default_rng(seed)
    if n_cells is None:
        area = shape2[0] * shape2[1] / (np.pi * (diameter / 2) ** 2)
        n_cells = min(max(1, int(area * rng.uniform(0.3, 0.8))), checks.LIMITS["synthetic_cells"])
    masks = random_labels(shape2, n_cells, diameter=diameter, seed=int(rng.integers(2 ** 31)),
                          min_distance=float(rng.uniform(0.6, 0.9)))
    n = int(masks.max())
    # distance of every cell pixel to its own boundary (touching cells' borders count as boundary)
    inside = masks > 0
    border = np.zeros_like(inside)
    border[:-1] |= masks[:-1] != masks[1:]
    border[1:] |= masks[1:] != masks[:-1]
    border[:, :-1] |= masks[:, :-1] != masks[:, 1:]
    border[:, 1:] |= masks[:, 1:] != masks[:, :-1]
    dist = ndi.distance_transform_edt(inside & ~border).astype(np.float32)
    idx = np.arange(1, n + 1)
    dmax = np.zeros(n + 1, np.float32)
    if n:
        dmax[1:] = np.asarray(ndi.maximum(dist, masks, idx), np.float32)
    rel = dist / np.maximum(dmax[masks], 1.0)  # 0 at the cell edge, 1 at its innermost pixel

    bright = np.zeros(n + 1, np.float32)
    bright[1:] = rng.uniform(0.3, 1.0, n)
    texture = 1.0 + 0.25 * _smooth_noise(rng, shape2, sigma=max(1.0, diameter / 10))
    cyto = bright[masks] * (0.45 + 0.55 * np.clip(rel * 2.5, 0, 1)) * texture
    # nucleus: the innermost part of each cell (a blob following the cell's shape), own brightness
    nuc_frac = np.zeros(n + 1, np.float32)
    nuc_frac[1:] = rng.uniform(0.35, 0.6, n)
    nuc_b = np.zeros(n + 1, np.float32)
    nuc_b[1:] = rng.uniform(0.5, 1.0, n)
    nucleus = np.where(inside & (rel >= nuc_frac[masks]), nuc_b[masks], 0.0).astype(np.float32)
    nucleus *= 1.0 + 0.15 * _smooth_noise(rng, shape2, sigma=1.5)
    cyto[~inside] = 0.0

    img = np.stack([cyto, nucleus]).astype(np.float32)
    img += np.float32(rng.uniform(0.02, 0.1))  # background offset
    img = ndi.gaussian_filter(img, sigma=(0, blur, blur)) if blur > 0 else img
    photons = float(rng.uniform(50, 300))
    img = rng.poisson(np.clip(img, 0, None) * photons).astype(np.float32) / photons
    img += rng.normal(0.0, noise, img.shape).astype(np.float32)
    return img.astype(np.float32), masks.astype(np.int32)


def make_cyto_dataset(n: int, shape: Sequence[int] = (256, 256), seed: int = 0,
                      diameter: Union[float, Tuple[float, float]] = (20.0, 40.0)
                      ) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``n`` synthetic (img [2, Y, X] float32, masks int32 [Y, X]) pairs.

    ``diameter`` is a fixed mean cell diameter or a (low, high) range drawn per image.
    """
    n = checks.integer(n, "n", lo=0, hi=100_000)
    check_shape(shape, ndims=(2,))
    seed = checks.integer(seed, "seed", lo=0)
    if isinstance(diameter, (tuple, list)):
        if len(diameter) != 2:
            raise ValueError(f"diameter must be a number or a (low, high) pair, got {diameter!r}")
        lo, hi = (checks.number(d, f"diameter[{i}]", lo=0.0, lo_open=True, hi=checks.LIMITS["diameter"])
                  for i, d in enumerate(diameter))
        if lo > hi:
            raise ValueError(f"diameter range must have low <= high, got {diameter!r}")
        diameter = (lo, hi)
    else:
        diameter = checks.number(diameter, "diameter", lo=0.0, lo_open=True, hi=checks.LIMITS["diameter"])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        d = float(rng.uniform(*diameter)) if isinstance(diameter, tuple) else float(diameter)
        out.append(make_cyto_image(shape, diameter=d, seed=int(rng.integers(2 ** 31))))
    log.debug("made %d synthetic cyto images of shape %s", n, tuple(shape))
    return out
