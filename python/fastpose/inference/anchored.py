"""Network maps of any box of an image from a tile grid anchored to the image's own coordinates.

:func:`.tiled.run_tiled` spreads its tiles evenly over the image it is given, so a crop of an image gets other
tiles (and other maps) than the same pixels in the whole image.  Here the tiles of an image of spatial shape
``shape`` sit at fixed positions, ``k * stride`` along each axis from the image's origin (zeros beyond its edges),
and :func:`region_maps` computes the maps of a box from exactly the tiles that cover it: every pixel gets the
same tiles, in the same order, in the same network batch size, so the maps of a box are bitwise those of the
same pixels of the whole image computed here (the basis of :mod:`fastpose.distributed`'s exact blocks).

* Tiles are ``spec.tile`` pixels square (zero beyond the image), ``stride = floor(tile / (1 + 2 * tile_overlap))``
  apart (the density of Cellpose's tiles on a large image: ``ceil((1 + 2 * overlap) * L / tile)`` tiles over
  ``L`` px), or half a tile with flip test-time augmentation (Cellpose's flip pattern by the tile's global row and
  column parity: :func:`flip_of`).
* Blending: each pixel is the mean of its tiles' un-flipped outputs weighted by Cellpose's sigmoid taper
  (:func:`fastpose.core.tiles.taper_mask`), summed in float64 in global tile order, divided once, cast to
  float32; flow channels of flipped tiles are negated (as :func:`fastpose.core.blend_tiles`).  Written in NumPy:
  the work is the network's, the blending a few array operations per tile.
* The network sees every batch padded to ``batch_size`` tiles, so its arithmetic does not depend on how many
  tiles a box happens to have.
* 3D (``len(shape) == 3``): Cellpose's ``do_3D`` maps of XY, ZY and ZX planes (:data:`.volume.VIEWS`), each
  plane tiled on the anchored grid of its two axes, combined as :func:`.volume.volume_maps` combines them
  (flows averaged over the two views that see each axis, other maps over three).

No resizing happens here: the image is taken at the network's scale.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..models.spec import ModelSpec
from .tiled import network_forward
from .volume import VIEWS, add_view, combined_views

__all__ = ["stride_of", "flip_of", "tiles_covering", "region_maps", "Box"]

#: a box of an image: per spatial axis ``(start, stop)`` (stop exclusive; may reach beyond the image)
Box = Sequence[Tuple[int, int]]


def stride_of(tile: int, augment: bool, tile_overlap: float) -> int:
    """Distance between tile origins: half a tile with ``augment`` (Cellpose's flip TTA overlaps by half),
    else ``floor(tile / (1 + 2 * tile_overlap))`` (Cellpose's tile density; at least 1)."""
    if augment:
        return max(1, tile // 2)
    return max(1, int(math.floor(tile / (1.0 + 2.0 * float(tile_overlap)))))


def flip_of(j: int, i: int) -> int:
    """Cellpose's flip of tile (row j, column i) under augmentation: bit 0 = flipped in Y, bit 1 = in X (j even,
    i odd: Y; j odd, i even: X; both odd: both)."""
    jo, io = j & 1, i & 1
    return (1 if io and not jo else 0) | (2 if jo and not io else 0) | (3 if jo and io else 0)


def tiles_covering(length: int, tile: int, stride: int, a: int, b: int) -> range:
    """Indices k of the tiles ``[k * stride, k * stride + tile)`` of an axis of ``length`` pixels (tiles
    0 .. K-1, the last one reaching the end) that overlap ``[a, b)``."""
    count = 1 if length <= tile else -(-(length - tile) // stride) + 1
    lo = max(0, -(-(a - tile + 1) // stride))
    hi = min(count - 1, (b - 1) // stride)
    return range(lo, hi + 1)


def _taper(tile: int) -> np.ndarray:
    from ..core.tiles import taper_mask

    return taper_mask(tile, tile)


def _plane_maps(forward: Callable[[torch.Tensor], Any], read: Callable[[Box], np.ndarray], plane_shape: Tuple[int, int],
                box: List[Tuple[int, int]], axes: Tuple[int, int], spec: ModelSpec, batch_size: int, augment: bool,
                stride: int) -> np.ndarray:
    """Maps [n_outputs, *box sizes] of the box (of a 2D image, or of a stack of planes over the box's other
    axis) tiled on the anchored grid of the plane ``axes``."""
    T = int(spec.tile)
    nout = spec.n_outputs
    fy, fx = (spec.flow_channels[0], spec.flow_channels[1]) if spec.flow_channels else (-1, -1)
    (a0, a1), (b0, b1) = box[axes[0]], box[axes[1]]
    rows = tiles_covering(plane_shape[0], T, stride, a0, a1)
    cols = tiles_covering(plane_shape[1], T, stride, b0, b1)
    # the input box: the box widened to its tiles along the plane axes
    wide = list(box)
    wide[axes[0]] = (rows[0] * stride, rows[-1] * stride + T)
    wide[axes[1]] = (cols[0] * stride, cols[-1] * stride + T)
    x = read(wide)                                   # [C, *wide sizes] float32, zeros outside the image
    stack_axes = [d for d in range(len(box)) if d not in axes]
    # planes first: [n, C, A, B]
    perm = [1 + d for d in stack_axes] + [0, 1 + axes[0], 1 + axes[1]]
    planes = np.ascontiguousarray(np.transpose(x, perm)).reshape(-1, x.shape[0], x.shape[1 + axes[0]],
                                                                  x.shape[1 + axes[1]])
    n = planes.shape[0]
    ra, rb = a1 - a0, b1 - b0
    num = np.zeros((n, nout, ra, rb), np.float64)
    den = np.zeros((ra, rb), np.float64)
    w = _taper(T)
    jobs = [(p, j, i) for p in range(n) for j in rows for i in cols]
    seen_den = set()

    def place(j: int, i: int) -> Tuple[slice, slice, slice, slice]:
        y0, x0 = j * stride, i * stride
        ty0, ty1 = max(a0, y0), min(a1, y0 + T)
        tx0, tx1 = max(b0, x0), min(b1, x0 + T)
        return (slice(ty0 - a0, ty1 - a0), slice(tx0 - b0, tx1 - b0), slice(ty0 - y0, ty1 - y0),
                slice(tx0 - x0, tx1 - x0))

    ay0, bx0 = rows[0] * stride, cols[0] * stride
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s:s + batch_size]
        xb = np.zeros((batch_size, planes.shape[1], T, T), np.float32)
        for k, (p, j, i) in enumerate(chunk):
            t = planes[p, :, j * stride - ay0: j * stride - ay0 + T, i * stride - bx0: i * stride - bx0 + T]
            f = flip_of(j, i) if augment else 0
            if f & 1:
                t = t[:, ::-1, :]
            if f & 2:
                t = t[:, :, ::-1]
            xb[k] = t
        with torch.inference_mode():
            y, _ = forward(torch.from_numpy(xb))
        y = y.float().cpu().numpy()
        for k, (p, j, i) in enumerate(chunk):
            out = y[k, :nout]
            f = flip_of(j, i) if augment else 0
            if f & 1:
                out = out[:, ::-1, :]
            if f & 2:
                out = out[:, :, ::-1]
            out = out.astype(np.float64)
            if f & 1 and fy >= 0:
                out[fy] *= -1
            if f & 2 and fx >= 0:
                out[fx] *= -1
            oy, ox, ty, tx = place(j, i)
            wt = w[ty, tx]
            num[p, :, oy, ox] += wt * out[:, ty, tx]
            if (j, i) not in seen_den:
                seen_den.add((j, i))
                den[oy, ox] += wt
    maps = (num / np.where(den > 0, den, 1.0)).astype(np.float32)   # [n, nout, ra, rb]
    # back to [nout, *box sizes]: stack axis (if any) where it belongs
    if not stack_axes:
        return maps[0]
    d = stack_axes[0]
    order = [0, 1, 2]
    sizes = [b - a for a, b in box]
    out = np.moveaxis(maps, 0, 1)                                    # [nout, n, ra, rb]
    # axes of `out` after nout: (stack d, axes[0], axes[1]) -> volume order
    src = [d, axes[0], axes[1]]
    inv = [src.index(k) for k in order]
    out = np.transpose(out, [0] + [1 + k for k in inv])
    assert list(out.shape[1:]) == sizes
    return np.ascontiguousarray(out)


def region_maps(runners: Sequence[Any], spec: ModelSpec, read: Callable[[Box], np.ndarray], shape: Sequence[int],
                box: Box, *, net_device: torch.device, batch_size: int, precision: str = "fp32",
                augment: bool = False, tile_overlap: float = 0.1) -> np.ndarray:
    """The maps of ``box`` of an image of spatial ``shape`` on the anchored tile grid (module docstring).

    Parameters
    ----------
    runners, spec, net_device, batch_size, precision
        As for :func:`.tiled.run_tiled` (the network, ensemble-averaged; its spec's tile, outputs, flow
        channels).
    read : callable
        ``read(box) -> float32 [C, *box sizes]``: the prepared (normalised) image over any box, zeros outside
        the image.
    shape : (Y, X) or (Z, Y, X)
        Spatial shape of the whole image.
    box : per axis (start, stop)
        The box to compute, inside the image.
    augment, tile_overlap
        Flip TTA (half-tile stride) or the overlap of plain tiles.

    Returns
    -------
    float32 NumPy [n_outputs, *box sizes] (3D: flows first, ``[flow_z, flow_y, flow_x, others...]``).
    """
    shape = tuple(int(s) for s in shape)
    box = [(int(a), int(b)) for a, b in box]
    if len(shape) not in (2, 3) or len(box) != len(shape):
        raise ValueError(f"shape and box must both be 2D or 3D, got {shape} and {box}")
    for (a, b), n in zip(box, shape):
        if not 0 <= a < b <= n:
            raise ValueError(f"box {box} is not inside the image {shape}")
    forward = network_forward(runners, spec.n_outputs, net_device, precision)
    stride = stride_of(int(spec.tile), augment, tile_overlap)
    bs = max(1, int(batch_size))
    if len(shape) == 2:
        return _plane_maps(forward, read, shape, box, (0, 1), spec, bs, augment, stride)
    nflow = len(spec.flow_channels)
    sizes = [b - a for a, b in box]
    acc = torch.zeros((3 * (nflow > 0) + spec.n_outputs - nflow, *sizes))
    for view in ("xy", "zy", "zx"):
        axes = VIEWS[view][1]
        plane_shape = (shape[axes[0]], shape[axes[1]])
        y = torch.from_numpy(_plane_maps(forward, read, plane_shape, box, axes, spec, bs, augment, stride))
        add_view(acc, y, view, nflow)
    return combined_views(acc, nflow).numpy()
