"""Overlapping tiles and sigmoid-taper blending (Cellpose 3 ``make_tiles`` / ``average_tiles``).

``make_tiles`` cuts an image into overlapping tiles (flipped in Cellpose's pattern with ``augment``),
a network runs on them, and ``blend_tiles`` un-flips the outputs (negating the flow channels of flipped
tiles), weights them with Cellpose's sigmoid taper and averages them back into an image.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from .. import _core
from ._backend import any_nonfinite, as_number, call, empty, finish, placement, prepare, ptr

TileGrid = _core.TileGrid
TileGrid.__doc__ = """Geometry of the tiles of an Ly x Lx image (read-only; made by make_tiles / plan_tiles).

Attributes: Ly, Lx (image size), by, bx (tile size), ny, nx (tiles per axis; tile (j, i) has index
j * nx + i), augment (flipped tiles), count (ny * nx), ystart, xstart (tile origins), flips (per tile:
bit 0 flipped in Y, bit 1 flipped in X).
"""


def _check_bsize(bsize: Any) -> int:
    b = as_number(bsize, "bsize", int)
    if b != bsize or b < 1:
        raise ValueError(f"bsize must be an integer >= 1, got {bsize!r}")
    return b


def plan_tiles(Ly: int, Lx: int, bsize: int = 224, overlap: float = 0.1, augment: bool = False) -> TileGrid:
    """Tile geometry for an ``Ly x Lx`` image (see :func:`make_tiles`)."""
    b = _check_bsize(bsize)
    if int(Ly) < 0 or int(Lx) < 0:
        raise ValueError(f"image size must be >= 0, got {(Ly, Lx)}")
    ov = float(overlap)
    if not math.isfinite(ov):
        raise ValueError(f"overlap must be finite, got {overlap!r}")
    return _core.plan_tiles(int(Ly), int(Lx), b, ov, bool(augment))


def taper_mask(ly: int, lx: int) -> np.ndarray:
    """Cellpose's ``_taper_mask(ly, lx, sig=7.5)``: float64 (ly, lx) blending weights of a tile."""
    wy, wx = _core.tile_taper(int(ly), int(lx))
    return np.asarray(wy, np.float64)[:, None] * np.asarray(wx, np.float64)[None, :]


def make_tiles(image: Any, bsize: int = 224, overlap: float = 0.1, augment: bool = False) -> Tuple[Any, TileGrid]:
    """Cut an image into overlapping tiles.

    Without ``augment``, tiles are ``min(bsize, Y) x min(bsize, X)``, overlapping by at least
    ``overlap`` (clamped to [0.05, 0.5]) of a tile, spread evenly from edge to edge.  With ``augment``,
    tiles are ``bsize x bsize`` (images smaller than a tile are zero-padded), overlap by half a tile,
    and tile (j, i) is flipped in Y when j is even and i odd, in X when j is odd and i even, in both
    when both are odd.

    Parameters
    ----------
    image : array (C, Y, X) or (B, C, Y, X), real
        Image with a channel axis (cast to float32).  Must be finite.
    bsize : int
        Tile size (>= 1).
    overlap : float
        Fraction of overlap between tiles (ignored with ``augment``).
    augment : bool
        Flipped, half-overlapping tiles (Cellpose's test-time augmentation).

    Returns
    -------
    tiles : array (ntiles, C, by, bx) or (B, ntiles, C, by, bx), float32
        Same kind (NumPy / torch) and device as ``image``; tile index j * nx + i.
    grid : TileGrid
        The geometry, to pass to :func:`blend_tiles`.
    """
    where = placement(image)
    img = prepare(image, "image", np.float32, where)
    shp = tuple(int(s) for s in img.shape)
    if len(shp) not in (3, 4):
        raise ValueError(f"image must be (C, Y, X) or (B, C, Y, X), got shape {shp} "
                         "(add a channel axis to a 2D image: image[None])")
    batched = len(shp) == 4
    B, C, Ly, Lx = shp if batched else (1, *shp)
    if any_nonfinite(img):
        raise ValueError("image contains NaN or Inf")
    grid = plan_tiles(Ly, Lx, bsize, overlap, augment)
    tiles = empty((B, grid.count, C, grid.by, grid.bx), np.float32, where)
    call(where, _core.make_tiles, ptr(img), B, C, grid, ptr(tiles))
    if not batched:
        tiles = tiles[0]
    return finish(tiles, where), grid


def blend_tiles(tiles: Any, grid: TileGrid, flow_channels: Optional[Sequence[int]] = (0, 1)) -> Any:
    """Blend tile outputs back into an image (Cellpose's ``unaugment_tiles`` + ``average_tiles``).

    Each output pixel is the average over the tiles covering it of the un-flipped tile values,
    weighted by Cellpose's sigmoid taper (bandwidth 7.5 px).  For tiles flipped in Y (X), channel
    ``flow_channels[0]`` (``flow_channels[1]``) is negated, as a flow component must be.

    Parameters
    ----------
    tiles : array (ntiles, C, by, bx) or (B, ntiles, C, by, bx), float
        Per-tile outputs, in the layout returned by :func:`make_tiles` for ``grid``.
    grid : TileGrid
        Geometry returned by :func:`make_tiles` / :func:`plan_tiles`.
    flow_channels : (int, int) or None
        Channels holding the Y and X flow components (-1 or None: no such channel).

    Returns
    -------
    array (C, Y, X) or (B, C, Y, X), float32, same kind and device as ``tiles``.
    """
    if not isinstance(grid, TileGrid):
        raise ValueError(f"grid must be a TileGrid (from make_tiles), got {type(grid).__name__}")
    where = placement(tiles)
    t = prepare(tiles, "tiles", np.float32, where)
    shp = tuple(int(s) for s in t.shape)
    if len(shp) not in (4, 5):
        raise ValueError(f"tiles must be (ntiles, C, by, bx) or (B, ntiles, C, by, bx), got shape {shp}")
    batched = len(shp) == 5
    B, T, C, by, bx = shp if batched else (1, *shp)
    if (T, by, bx) != (grid.count, grid.by, grid.bx):
        raise ValueError(f"tiles of shape {shp} do not match the grid: expected {grid.count} tiles of "
                         f"{grid.by}x{grid.bx} ({grid!r})")
    if flow_channels is None:
        fy, fx = -1, -1
    else:
        fc = tuple(flow_channels)
        if len(fc) != 2:
            raise ValueError(f"flow_channels must be a pair (y_channel, x_channel), got {flow_channels!r}")
        fy, fx = (-1 if v is None else int(v) for v in fc)
        for v in (fy, fx):
            if v < -1 or v >= C:
                raise ValueError(f"flow channel {v} out of range for {C} channels (use -1 for none)")
    if any_nonfinite(t):
        raise ValueError("tiles contain NaN or Inf")
    out = empty((B, C, grid.Ly, grid.Lx), np.float32, where)
    call(where, _core.blend_tiles, ptr(t), B, C, grid, fy, fx, ptr(out))
    if not batched:
        out = out[0]
    return finish(out, where)

