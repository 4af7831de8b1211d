"""A deterministic stand-in for a Cellpose network, for checking blockwise segmentation against whole images.

:class:`BlobFlowNet` is a fixed convolution: its flows follow the gradient of the Gaussian-blurred input (towards
the middle of each bright blob), its cell-probability logit is the input's intensity around 0.5.  It is
translation-consistent (every output pixel depends only on the input within a few sigma of it), needs no
training, and gives real objects on images of separated bright blobs (:func:`blob_image`), so the tests and the
benchmark of :mod:`fastpose.distributed` can compare blockwise and whole-image labels object by object.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.spec import CELLPOSE_OUTPUTS, ModelSpec

__all__ = ["BlobFlowNet", "blob_model", "blob_image"]


class BlobFlowNet(nn.Module):
    """``x [B, 1, T, T] -> (maps [B, 3, T, T], style [B, 1])``: flows ``5 * grad(g) / |grad(g)|`` of the input
    blurred by a Gaussian of ``sigma`` px (zero padding), cell probability logit ``8 * (x - 0.5)``."""

    def __init__(self, sigma: float = 3.0) -> None:
        super().__init__()
        r = int(np.ceil(3 * sigma))
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        self.register_buffer("kernel", (k / k.sum()).reshape(1, 1, -1))
        self.radius = r

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = x[:, :1].float()
        r = self.radius
        k = self.kernel
        g = F.conv2d(x, k.reshape(1, 1, 1, -1), padding=(0, r))
        g = F.conv2d(g, k.reshape(1, 1, -1, 1), padding=(r, 0))
        gp = F.pad(g, (1, 1, 1, 1))
        gy = (gp[:, :, 2:, 1:-1] - gp[:, :, :-2, 1:-1]) * 0.5
        gx = (gp[:, :, 1:-1, 2:] - gp[:, :, 1:-1, :-2]) * 0.5
        n = torch.sqrt(gy * gy + gx * gx) + 1e-4
        maps = torch.cat([5 * gy / n, 5 * gx / n, 8 * (x - 0.5)], 1)
        return maps, x.mean((2, 3))


def blob_model(sigma: float = 3.0, tile: int = 64, diameter: float = 12.0) -> BlobFlowNet:
    """A :class:`BlobFlowNet` with its model spec attached (``fastpose_meta``): Cellpose family, one channel,
    ``tile``-px tiles, no resizing; segment it with ``backend="torch"``."""
    net = BlobFlowNet(sigma).eval()
    spec = ModelSpec(family="cellpose", nchan=1, tile=int(tile), pad_multiple=1, outputs=CELLPOSE_OUTPUTS,
                     flow_channels=(0, 1), rescale_by_diameter=False, diam_mean=float(diameter))
    net.fastpose_meta = {"spec": spec.to_dict(), "diam_mean": float(diameter), "nchan": 1}
    return net


def blob_image(shape: Sequence[int], n: int, diameter: float = 12.0, seed: int = 0) -> np.ndarray:
    """uint16 image of about ``n`` separated bright blobs (value 1000 on 0, a little seeded noise) of about
    ``diameter`` px, 2D or 3D (:func:`fastpose.synthetic.random_labels` with centres 1.3 diameters apart)."""
    from ..synthetic import random_labels

    lab = random_labels(tuple(int(s) for s in shape), int(n), diameter=float(diameter), seed=int(seed),
                        min_distance=1.3)
    rng = np.random.default_rng(int(seed) + 1)
    img = (lab > 0) * 1000.0 + rng.integers(0, 20, lab.shape)
    return img.astype(np.uint16)
