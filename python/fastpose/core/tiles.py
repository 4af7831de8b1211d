"""Overlapping tiles and sigmoid-taper blending (Cellpose 3 ``make_tiles`` / ``average_tiles``).

``make_tiles`` cuts an image into overlapping tiles (flipped in Cellpose's pattern with ``augment``),
a network runs on them, and ``blend_tiles`` un-flips the outputs (negating the flow channels of flipped
tiles), weights them with Cellpose's sigmoid taper and averages them back into an image.

:class:`TileBlender` is ``blend_tiles`` for tiles that arrive one at a time, in tile order, from an image too
large to hold every tile: it keeps float64 sums for one band of rows and hands each row on as soon as no
later tile covers it, bitwise equal to ``blend_tiles`` (the same weights, the same order of the sums).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

from .. import _core, checks
from ._backend import any_nonfinite, call, empty, finish, placement, prepare, ptr

TileGrid = _core.TileGrid
TileGrid.__doc__ = """Geometry of the tiles of an Ly x Lx image (read-only; made by make_tiles / plan_tiles).

Attributes: Ly, Lx (image size), by, bx (tile size), ny, nx (tiles per axis; tile (j, i) has index
j * nx + i), augment (flipped tiles), count (ny * nx), ystart, xstart (tile origins), flips (per tile:
bit 0 flipped in Y, bit 1 flipped in X).
"""


def _check_bsize(bsize: Any) -> int:
    b = checks.integer(bsize, "bsize", lo=1)
    assert b is not None
    return b


def plan_tiles(Ly: int, Lx: int, bsize: int = 224, overlap: float = 0.1, augment: bool = False) -> TileGrid:
    """Tile geometry for an ``Ly x Lx`` image (see :func:`make_tiles`)."""
    b = _check_bsize(bsize)
    ly, lx = checks.integer(Ly, "Ly", lo=0), checks.integer(Lx, "Lx", lo=0)
    ov = checks.number(overlap, "overlap")
    return _core.plan_tiles(ly, lx, b, ov, checks.boolean(augment, "augment"))


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
    n = B * grid.count * C * grid.by * grid.bx
    if n > checks.LIMITS["image_pixels"]:
        raise ValueError(f"bsize={bsize} cuts the {Ly}x{Lx} image into {grid.count} tiles of {grid.by}x{grid.bx} "
                         f"({n:.3g} values), more than fastpose.checks.LIMITS['image_pixels']; use a smaller bsize")
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



class TileBlender:
    """Blend tile outputs that arrive one by one, in tile order, holding only a band of rows.

    ``add(tile)`` takes the output of tile ``0, 1, 2, ...`` of ``grid`` (float32 [C, by, bx], in the layout of
    :func:`make_tiles`: flipped tiles still flipped); each output row, once no later tile covers it, is handed to
    ``emit(row0, rows)`` with ``rows`` float32 [C, n, grid.Lx] for grid rows ``row0 .. row0 + n - 1``, in order.
    The values are bitwise those of :func:`blend_tiles` (CPU): the same taper weights, float64 sums over the
    covering tiles in increasing tile order, one division.  Memory: float64 sums for at most ``grid.by`` rows.

    Parameters
    ----------
    grid : TileGrid
    channels : int
        Channels of the tile outputs.
    flow_channels : (int, int) or None
        As for :func:`blend_tiles`: channels negated for tiles flipped in Y / X (-1 or None: none).
    emit : callable ``(row0, rows) -> None``
    """

    def __init__(self, grid: TileGrid, channels: int, flow_channels: Optional[Sequence[int]],
                 emit: Callable[[int, np.ndarray], None]) -> None:
        if not isinstance(grid, TileGrid):
            raise ValueError(f"grid must be a TileGrid (from plan_tiles), got {type(grid).__name__}")
        self.grid, self.C, self.emit = grid, int(channels), emit
        fy, fx = (-1, -1) if flow_channels is None else (-1 if v is None else int(v) for v in flow_channels)
        for v in (fy, fx):
            if v < -1 or v >= self.C:
                raise ValueError(f"flow channel {v} out of range for {self.C} channels (use -1 for none)")
        self.fy, self.fx = fy, fx
        self.ys, self.xs, self.flips = list(grid.ystart), list(grid.xstart), list(grid.flips)
        self.w = taper_mask(grid.by, grid.bx)
        self.next = 0          # index of the next tile expected
        self.lo = 0            # first grid row not yet emitted
        self.num = np.zeros((self.C, 0, grid.Lx), np.float64)
        self.den = np.zeros((0, grid.Lx), np.float64)

    @property
    def done(self) -> bool:
        """True once every tile has been added (and every row emitted)."""
        return self.next >= self.grid.count

    def _flush(self, upto: int) -> None:
        n = min(upto, self.grid.Ly) - self.lo
        if n <= 0:
            return
        num, den = self.num[:, :n], self.den[:n]
        with np.errstate(invalid="ignore", divide="ignore"):
            rows = np.where(den > 0, num / den, 0.0).astype(np.float32)
        self.emit(self.lo, rows)
        self.num, self.den = self.num[:, n:], self.den[n:]
        self.lo += n

    def add(self, tile: Any) -> None:
        """Add the output of the next tile (float32 [C, by, bx])."""
        g = self.grid
        if self.done:
            raise ValueError(f"all {g.count} tiles of the grid have been added")
        v = np.asarray(tile, np.float32)
        if v.shape != (self.C, g.by, g.bx):
            raise ValueError(f"tile {self.next} has shape {v.shape}, expected {(self.C, g.by, g.bx)}")
        t = self.next
        j, i = divmod(t, g.nx)
        y0, x0 = self.ys[j], self.xs[i]
        if i == 0:  # a new row of tiles: rows above it are final; extend the sums down to its last row
            self._flush(y0)
            hi = min(y0 + g.by, g.Ly)
            extra = hi - (self.lo + self.den.shape[0])
            if extra > 0:
                self.num = np.concatenate([self.num, np.zeros((self.C, extra, g.Lx), np.float64)], axis=1)
                self.den = np.concatenate([self.den, np.zeros((extra, g.Lx), np.float64)], axis=0)
        flip = self.flips[t] if g.augment else 0
        if flip & 1:
            v = v[:, ::-1, :]
        if flip & 2:
            v = v[:, :, ::-1]
        neg = [c for c in range(self.C) if (int(bool(flip & 1) and c == self.fy)
                                            + int(bool(flip & 2) and c == self.fx)) & 1]
        h, w = min(g.by, g.Ly - y0), min(g.bx, g.Lx - x0)
        if h > 0 and w > 0:
            vv = v[:, :h, :w].astype(np.float64)
            if neg:
                vv[neg] = -vv[neg]
            ww = self.w[:h, :w]
            r = y0 - self.lo
            self.num[:, r:r + h, x0:x0 + w] += ww * vv
            self.den[r:r + h, x0:x0 + w] += ww
        self.next += 1
        if self.done:
            self._flush(g.Ly)
