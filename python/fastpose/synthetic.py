"""Synthetic label images with exact masks, for tests and benchmarks.

Cells are placed at random centres, grown as jittered discs (balls in 3D) and clipped against each
other on the Voronoi boundary between centres, which yields both touching and isolated cells.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import checks


def check_shape(shape: Sequence[int], name: str = "shape", ndims: Sequence[int] = (2, 3)) -> tuple:
    """``shape`` as a tuple of ints >= 1 with an allowed number of axes and at most
    ``LIMITS["synthetic_pixels"]`` pixels; ValueError otherwise."""
    dims = checks.integers(shape, name, lo=1)
    assert dims is not None
    if len(dims) not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} axes, got {tuple(dims)}")
    n = int(np.prod(dims, dtype=np.int64))
    if n > checks.LIMITS["synthetic_pixels"]:
        raise ValueError(f"{name}={tuple(dims)} has {n} pixels, more than the limit of "
                         f"{checks.LIMITS['synthetic_pixels']} for a synthetic image (fastpose.checks.LIMITS)")
    return tuple(dims)


def random_labels(shape: Sequence[int], n_cells: int, diameter: float = 30.0, seed: int = 0,
                  min_distance: float = 0.6) -> np.ndarray:
    """Label image (int32, 0 = background, 1..N) of about ``n_cells`` cells of the given mean diameter.

    Args:
        shape: (Y, X) or (Z, Y, X), ints >= 1, at most ``LIMITS["synthetic_pixels"]`` pixels.
        n_cells: number of cell centres to draw, 0 to ``LIMITS["synthetic_cells"]`` (cells that vanish are
            dropped; labels stay 1..N).
        diameter: mean cell diameter in pixels (finite, > 0); each cell's radius varies by +-20%.
        seed: random seed, >= 0 (the result is a pure function of the arguments).
        min_distance: minimum centre distance as a fraction of the diameter, >= 0 (controls crowding).
    """
    from scipy import ndimage as ndi

    shape = check_shape(shape)
    n_cells = checks.integer(n_cells, "n_cells", lo=0, hi=checks.LIMITS["synthetic_cells"])
    diameter = checks.number(diameter, "diameter", lo=0.0, lo_open=True, hi=checks.LIMITS["diameter"])
    seed = checks.integer(seed, "seed", lo=0)
    min_distance = checks.number(min_distance, "min_distance", lo=0.0)
    rng = np.random.default_rng(seed)
    r_mean = diameter / 2.0
    centres: list[np.ndarray] = []
    tries = 0
    lo = np.full(len(shape), 0.0)
    hi = np.array(shape, float)
    while len(centres) < n_cells and tries < n_cells * 50:
        tries += 1
        c = rng.uniform(lo, hi)
        if centres:
            d = np.sqrt(((np.asarray(centres) - c) ** 2).sum(1)).min()
            if d < min_distance * diameter:
                continue
        centres.append(c)
    seeds = np.zeros(shape, np.int32)
    idx = np.clip(np.round(np.asarray(centres)).astype(int), 0, np.array(shape) - 1) if centres else np.zeros((0, len(shape)), int)
    for k, c in enumerate(idx):
        seeds[tuple(c)] = k + 1
    if not centres:
        return seeds
    dist, inds = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    owner = seeds[tuple(inds)]
    radii = r_mean * rng.uniform(0.8, 1.2, size=len(centres) + 1)
    # anisotropic jitter: slightly elliptical cells
    grid = np.indices(shape, dtype=np.float32)
    cen = np.zeros((len(centres) + 1, len(shape)), np.float32)
    cen[1:] = idx
    scale = rng.uniform(0.8, 1.25, size=(len(centres) + 1, len(shape))).astype(np.float32)
    d2 = np.zeros(shape, np.float32)
    for a in range(len(shape)):
        d2 += ((grid[a] - cen[owner, a]) * scale[owner, a]) ** 2
    labels = np.where((owner > 0) & (d2 <= radii[owner] ** 2), owner, 0).astype(np.int32)
    # keep one connected piece per label and renumber 1..N
    out = np.zeros(shape, np.int32)
    n = 0
    objs = ndi.find_objects(labels)
    for k, sl in enumerate(objs):
        if sl is None:
            continue
        m = labels[sl] == k + 1
        cc, ncc = ndi.label(m)
        if ncc > 1:
            sizes = ndi.sum(m, cc, range(1, ncc + 1))
            m = cc == (int(np.argmax(sizes)) + 1)
        if m.sum() < 5:
            continue
        n += 1
        out[sl][m] = n
    return out


def disc(shape: Sequence[int], centre: Sequence[float], radius: float) -> np.ndarray:
    """Boolean disc (2D) or ball (3D)."""
    grid = np.indices(tuple(shape), dtype=np.float64)
    d2 = sum((grid[a] - centre[a]) ** 2 for a in range(len(shape)))
    return d2 <= radius ** 2
