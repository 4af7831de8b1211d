"""On-the-fly training augmentation.

Geometric (Cellpose): one random affine warp per sample -- rescale so the image's median cell diameter
maps to the model's ``diam_mean``, times a random factor in ``1 +- scale_range/2``; random rotation;
random horizontal flip; random translation; crop to ``tile`` x ``tile``.  Images and flows are sampled
bilinearly, masks with nearest neighbour; the flow *vectors* are then rotated/flipped with the image.

Photometric (Cellpose-SAM, optional): degradations (Poisson noise, Gaussian blur, downsampling,
anisotropic blur + downsampling) with re-normalisation, grayscale, inversion, channel permutation,
brightness/contrast jitter.

Conventions: image arrays are [C, Y, X]; flows are [2, Y, X] = (dY, dX); coordinates are (row, col).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

__all__ = ["Affine", "make_affine", "random_affine", "warp_sample", "augment_sample", "sam_augment", "degrade"]


@dataclass
class Affine:
    """Output pixel ``o`` samples the input at ``matrix @ o + offset``; flows map by ``flow_matrix``."""

    matrix: np.ndarray       # [2, 2]
    offset: np.ndarray       # [2]
    flow_matrix: np.ndarray  # [2, 2], applied to (dY, dX) vectors
    scale: float             # output pixels per input pixel
    out_shape: Tuple[int, int]


def make_affine(in_shape: Tuple[int, int], out_shape: Tuple[int, int], scale: float = 1.0, theta: float = 0.0,
                flip_x: bool = False, shift: Tuple[float, float] = (0.0, 0.0)) -> Affine:
    """The affine warp for a given scale, rotation angle (radians), horizontal flip and input shift.

    The output centre samples the input centre plus ``shift`` (input pixels).  With ``M = R(theta) F / s``
    the input position of output pixel ``o`` is ``c_in + M (o - c_out)``; vectors transform with
    ``M^-1 = s F R(theta)^T``, i.e. unit flows with ``F R(theta)^T``.
    """
    c, s_ = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s_], [s_, c]])
    flip = np.diag([1.0, -1.0 if flip_x else 1.0])
    m = rot @ flip / float(scale)
    c_in = (np.asarray(in_shape, float) - 1) / 2 + np.asarray(shift, float)
    c_out = (np.asarray(out_shape, float) - 1) / 2
    return Affine(matrix=m, offset=c_in - m @ c_out, flow_matrix=flip @ rot.T, scale=float(scale),
                  out_shape=(int(out_shape[0]), int(out_shape[1])))


def random_affine(rng: np.random.Generator, in_shape: Tuple[int, int], tile: int = 224, base_scale: float = 1.0,
                  scale_range: float = 0.5, rotate: bool = True, flip: bool = True) -> Affine:
    """Cellpose's random warp: scale ``base_scale * U(1 - scale_range/2, 1 + scale_range/2)``, angle
    ``U(0, 2 pi)``, flip with p=0.5, and a shift keeping the crop inside the (rescaled) image when it fits."""
    s = base_scale * (1.0 - scale_range / 2 + scale_range * rng.random())
    theta = float(rng.uniform(0, 2 * np.pi)) if rotate else 0.0
    flip_x = bool(rng.random() < 0.5) if flip else False
    slack = np.maximum(0.0, np.asarray(in_shape, float) - tile / s)
    shift = (rng.random(2) - 0.5) * slack
    return make_affine(in_shape, (tile, tile), s, theta, flip_x, (float(shift[0]), float(shift[1])))


def warp_sample(img: np.ndarray, flows: Optional[np.ndarray], masks: Optional[np.ndarray],
                aff: Affine) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """Apply ``aff``: images and flows bilinear (flows then rotated), masks nearest; outside is 0."""
    from scipy.ndimage import affine_transform

    def warp(a: np.ndarray, order: int) -> np.ndarray:
        return affine_transform(a, aff.matrix, aff.offset, output_shape=aff.out_shape, order=order,
                                mode="constant", cval=0.0, prefilter=False)

    out_img = np.stack([warp(ch.astype(np.float32, copy=False), 1) for ch in img])
    out_flows = None
    if flows is not None:
        f = np.stack([warp(ch.astype(np.float32, copy=False), 1) for ch in flows])
        out_flows = np.einsum("ij,jyx->iyx", aff.flow_matrix.astype(np.float32), f).astype(np.float32)
    out_masks = None if masks is None else warp(masks.astype(np.int32, copy=False), 0)
    return out_img.astype(np.float32), out_flows, out_masks


def augment_sample(img: np.ndarray, flows: np.ndarray, masks: np.ndarray, rng: np.random.Generator, *,
                   diameter: float = 0.0, diam_mean: float = 30.0, tile: int = 224, scale_range: float = 0.5,
                   rotate: bool = True, flip: bool = True, rescale: bool = True
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One augmented training crop: ``(img [C, tile, tile], flows [2, tile, tile], masks, scale)``.

    With ``rescale`` and a positive ``diameter`` the image is first scaled by ``diam_mean / diameter``.
    """
    base = diam_mean / diameter if (rescale and diameter > 0) else 1.0
    aff = random_affine(rng, img.shape[-2:], tile, base, scale_range, rotate, flip)
    x, f, m = warp_sample(img, flows, masks, aff)
    return x, f, m, aff.scale


# --------------------------------------------------------------------------------------------------
# Cellpose-SAM photometric augmentations
# --------------------------------------------------------------------------------------------------

def _resize(x: np.ndarray, size: Tuple[int, int], mode: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=size, mode=mode, **kw)[0].numpy()


def degrade(img: np.ndarray, rng: np.random.Generator, kind: Optional[str] = None) -> np.ndarray:
    """One Cellpose3-style degradation of a [C, Y, X] normalised image, then percentile re-normalisation.

    ``kind``: "poisson" (photon counts 10**U(0.5, 2.5) at intensity 1), "blur" (sigma U(1, 4)),
    "downsample" (factor U(2, 5), area down / bilinear up) or "aniso" (blur and downsample one random
    axis by U(2, 5)); random when None.
    """
    from scipy.ndimage import gaussian_filter

    from ..transforms import normalize_percentile

    kinds = ("poisson", "blur", "downsample", "aniso")
    kind = kinds[int(rng.integers(4))] if kind is None else kind
    x = img.astype(np.float32, copy=True)
    Y, X = x.shape[-2:]
    if kind == "poisson":
        k = 10 ** rng.uniform(0.5, 2.5)
        x = rng.poisson(np.clip(x, 0, None) * k).astype(np.float32) / np.float32(k)
    elif kind == "blur":
        x = gaussian_filter(x, (0, *[rng.uniform(1, 4)] * 2))
    elif kind == "downsample":
        d = rng.uniform(2, 5)
        x = _resize(_resize(x, (max(1, int(Y / d)), max(1, int(X / d))), "area"), (Y, X), "bilinear")
    elif kind == "aniso":
        d = rng.uniform(2, 5)
        ax = int(rng.integers(2))
        sig = [0.0, 0.0, 0.0]
        sig[1 + ax] = d / 2
        x = gaussian_filter(x, sig)
        small = (max(1, int(Y / d)), X) if ax == 0 else (Y, max(1, int(X / d)))
        x = _resize(_resize(x, small, "area"), (Y, X), "bilinear")
    else:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {kinds}")
    empty = ~np.any(img != 0, axis=(1, 2))
    x = normalize_percentile(x)
    x[empty] = 0
    return x


def sam_augment(img: np.ndarray, rng: np.random.Generator, p_degrade: float = 0.5, p_gray: float = 0.1,
                p_invert: float = 0.25, permute: bool = True, brightness: float = 0.2,
                contrast: Tuple[float, float] = (0.5, 2.0)) -> np.ndarray:
    """Cellpose-SAM's photometric set on a [C, Y, X] normalised crop (channels that are all zero stay so
    until the permutation): degradation, grayscale (replicate channel 0), inversion (1 - x), channel
    permutation, then per-channel brightness (+N(0, brightness)) and contrast (log-uniform factor)."""
    x = img.astype(np.float32, copy=True)
    if rng.random() < p_degrade:
        x = degrade(x, rng)
    live = np.any(x != 0, axis=(1, 2))
    if rng.random() < p_gray and live[0]:
        x[:] = x[0]
        live[:] = True
    if rng.random() < p_invert:
        x[live] = 1.0 - x[live]
    for c in np.flatnonzero(live):
        m = x[c].mean()
        f = np.exp(rng.uniform(np.log(contrast[0]), np.log(contrast[1])))
        x[c] = (x[c] - m) * f + m + rng.normal(0.0, brightness)
    if permute:
        x = x[rng.permutation(x.shape[0])]
    return np.ascontiguousarray(x, dtype=np.float32)
