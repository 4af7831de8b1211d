"""The object-centric embedding (OCE) loss of Cellulus, and the anchor / reference pairs it is computed on.

From funkelab/cellulus (main: ``criterions/oce_loss.py``, ``datasets/zarr_dataset.py``,
``models/unet.py::select_and_add_coordinates``):

* The embedding of output pixel ``i`` is ``e(i) = r(i) + i``: the predicted offset plus the pixel's coordinate
  in the network's output crop.
* Pairs, per crop: ``int(density * (out - 2 kappa)^2)`` anchors drawn uniformly from the pixels at least
  ``kappa`` from the output crop's border, each repeated ``int(density * pi * kappa^2)`` times; each repeat's
  reference is the anchor plus an integer offset drawn uniformly from the disc ``|o|^2 < kappa^2``, ``o != 0``
  (4665 anchors x 31 references for a 252 crop with the defaults).
* ``loss = sum over pairs [1 - exp(-|e_a - stopgrad(e_r)|^2 / tau)] + lambda * sum over pairs |e_a|_2``,
  ``tau = 10``, ``lambda = 1e-5``, ``density = 0.1``, ``kappa = 10``; summed over the batch.

Where the code differs from the paper, this follows the code:

* the paper's distance is a logistic ``(1 + exp(-|d|^2 / tau))^-1``; every version of the code uses
  ``1 - exp(-|d|^2 / tau)``;
* main sums over the pairs (``v0.1`` took the mean);
* the regulariser is the norm of the anchor's *embedding* ``e_a = r + i`` (the paper: of the offset ``r``),
  once per pair (each anchor once per reference);
* in 3D the code counts anchors from the first two axes only (``int(density * (out_0 - 2 kappa) *
  (out_1 - 2 kappa))``) and references as in 2D (``int(density * pi * kappa^2)``); so does this.

Offsets and coordinates are in array order ((Y, X) or (Z, Y, X); the code's are (X, Y[, Z])), which changes
nothing but the channel order.  Sampling is seeded (a NumPy ``Generator``), so a pair set is reproducible.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import torch

from .. import checks

__all__ = ["TAU", "LAMBDA", "DENSITY", "KAPPA", "disc_offsets", "pair_counts", "sample_pairs", "embeddings_at",
           "oce_loss"]

TAU = 10.0
LAMBDA = 1e-5
DENSITY = 0.1
KAPPA = 10.0


def disc_offsets(kappa: float, ndim: int = 2) -> np.ndarray:
    """Every integer offset ``o != 0`` with ``|o|^2 < kappa^2``, int64 [K, ndim] (array axis order)."""
    r = int(math.ceil(kappa))
    grids = np.meshgrid(*([np.arange(-r, r + 1)] * ndim), indexing="ij")
    o = np.stack([g.ravel() for g in grids], 1).astype(np.int64)
    keep = ((o ** 2).sum(1) < kappa ** 2) & (np.abs(o).sum(1) > 0)
    return o[keep]


def pair_counts(out_shape: Sequence[int], density: float = DENSITY, kappa: float = KAPPA) -> Tuple[int, int]:
    """``(anchors, references per anchor)`` for an output crop of ``out_shape`` (see the module docstring)."""
    a = density * (out_shape[0] - 2 * kappa) * (out_shape[1] - 2 * kappa)
    return max(int(a), 0), int(density * math.pi * kappa ** 2)


def sample_pairs(out_shape: Sequence[int], rng: np.random.Generator, density: float = DENSITY,
                 kappa: float = KAPPA) -> Tuple[np.ndarray, np.ndarray]:
    """Anchor and reference pixels of one output crop of ``out_shape``: int64 ``[P, ndim]`` each (array axis
    order), P = anchors x references per anchor, anchors repeated in blocks (``np.repeat``, as the code).

    Anchors are uniform over ``[m, out - m]`` per axis (inclusive; ``m = ceil(kappa)``), so every reference
    lies inside the crop.  ValueError when the crop is too small for ``kappa`` or yields no pair."""
    shape = [checks.integer(s, "out_shape", lo=1) for s in out_shape]
    density = checks.number(density, "density", lo=0.0, lo_open=True, hi=1.0)
    kappa = checks.number(kappa, "kappa", lo=1.0, lo_open=True)
    m = int(math.ceil(kappa))
    if min(shape) <= 2 * m:
        raise ValueError(f"the network's output crop {tuple(shape)} is too small for kappa={kappa:g}: each side "
                         f"must exceed 2 * kappa = {2 * m} px (use a larger crop or a smaller kappa)")
    n_anchor, n_ref = pair_counts(shape, density, kappa)
    if n_anchor < 1 or n_ref < 1:
        raise ValueError(f"density={density:g} and kappa={kappa:g} give {n_anchor} anchor(s) x {n_ref} "
                         f"reference(s) on an output crop of {tuple(shape)}: no pairs to learn from")
    anchors = np.stack([rng.integers(m, s - m + 1, size=n_anchor) for s in shape], 1).astype(np.int64)
    anchors = np.repeat(anchors, n_ref, axis=0)
    disc = disc_offsets(kappa, len(shape))
    refs = anchors + disc[rng.integers(0, len(disc), size=len(anchors))]
    return anchors, refs


def embeddings_at(offsets: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Embeddings ``offset + coordinate`` of the pixels ``coords`` (int64 [B, P, D]) of ``offsets`` [B, D, *S]:
    float [B, P, D]."""
    B, D = int(offsets.shape[0]), int(offsets.shape[1])
    spatial = offsets.shape[2:]
    if coords.ndim != 3 or int(coords.shape[0]) != B or int(coords.shape[2]) != D or len(spatial) != D:
        raise ValueError(f"coords must be [B={B}, P, D={D}] for offsets of shape {tuple(offsets.shape)}, got "
                         f"{tuple(coords.shape)}")
    flat = torch.zeros(coords.shape[:2], dtype=torch.int64, device=coords.device)
    for k in range(D):
        flat = flat * int(spatial[k]) + coords[..., k]
    picked = offsets.reshape(B, D, -1).gather(2, flat[:, None, :].expand(B, D, flat.shape[1]))
    return picked.transpose(1, 2) + coords.to(offsets.dtype)


def oce_loss(offsets: torch.Tensor, anchors: torch.Tensor, references: torch.Tensor, tau: float = TAU,
             lam: float = LAMBDA) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The OCE loss of a batch (see the module docstring).

    Parameters
    ----------
    offsets : tensor [B, D, *S]
        The network's output.
    anchors, references : int64 tensors [B, P, D]
        Pixel coordinates in the output (array axis order), e.g. from :func:`sample_pairs` per crop.
    tau, lam
        Temperature and regularisation weight.

    Returns
    -------
    (loss, oce, regularisation) : scalar tensors, ``loss = oce + regularisation`` (sums over pairs and batch).
    """
    e_a = embeddings_at(offsets.float(), anchors)
    e_r = embeddings_at(offsets.float().detach(), references)
    d2 = ((e_a - e_r) ** 2).sum(-1)
    oce = (1.0 - torch.exp(-d2 / float(tau))).sum()
    reg = float(lam) * torch.linalg.vector_norm(e_a, dim=-1).sum()
    return oce + reg, oce, reg
