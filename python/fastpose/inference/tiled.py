"""Tiled network inference for any model spec: pad -> tiles -> network batches (ensemble-averaged) -> blend.

The same path serves every family: only the spec says the tile size, padding, how many output maps there are
and which of them are flow components (negated where flip test-time augmentation mirrored a tile).

:func:`run_tiled` holds the whole (padded) image, every tile and every tile output at once: the fast path.
:func:`run_tiled_bounded` gives the same maps (bitwise on the CPU) for images too large for that (see
:mod:`.budget`): tiles are cut from bands of rows of a :class:`~fastpose.transforms.LazyImage` (converted and
normalised band by band from the original array), run a batch at a time in the same order and batches, and
blended by :class:`~fastpose.core.tiles.TileBlender` into one preallocated float32 result.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import fastpose.core as fc

from ..models.spec import ModelSpec

__all__ = ["run_tiled", "run_tiled_bounded", "autocast_dtype", "network_forward"]


def autocast_dtype(precision: str) -> torch.dtype:
    """The autocast dtype of a reduced ``precision`` ("fp16" or "bf16")."""
    return torch.float16 if precision == "fp16" else torch.bfloat16


def _split_output(out: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    # runners return (maps, style) (Cellpose networks) or just maps
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


def run_tiled(runners: Sequence[Any], imgs: torch.Tensor, spec: ModelSpec, *, net_device: torch.device,
              core_device: torch.device, batch_size: int, precision: str = "fp32", augment: bool = False,
              tile_overlap: float = 0.1) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Network outputs for a batch of equally sized, normalised images.

    Parameters
    ----------
    runners : sequence of callables
        ``runner(x [b, C, tile, tile]) -> maps [b, >= n_outputs, tile, tile]`` or ``(maps, style [b, S])``; the
        outputs of several runners (an ensemble) are averaged.
    imgs : tensor [B, C, Y, X] float32
    spec : ModelSpec
        Tile size, padding, output count and flow channels.
    net_device, core_device : torch.device
        Where the network runs; where tiles are cut and blended (the native core's device).
    batch_size : int
        Tiles per network call.
    precision : str
        "fp16"/"bf16" autocast on a CUDA ``net_device``; anything else runs in float32.
    augment, tile_overlap
        Flip test-time augmentation (50% overlap), else tiles overlapping by ``tile_overlap``.

    Returns
    -------
    maps : tensor [B, n_outputs, Y, X] float32 on ``core_device``
    styles : tensor [B, S] (the mean tile style, L2-normalised) or None when the runners return no style
    """
    B, C, Ly, Lx = imgs.shape
    py, px = spec.padding(Ly), spec.padding(Lx)
    nout = spec.n_outputs
    x = imgs.to(core_device)
    if py or px:
        x = F.pad(x, (px // 2, px - px // 2, py // 2, py - py // 2))
    tiles, grid = fc.make_tiles(x.contiguous(), bsize=spec.tile, overlap=tile_overlap, augment=augment)
    nt = tiles.shape[1]
    flat = tiles.reshape(B * nt, C, tiles.shape[-2], tiles.shape[-1])
    out = torch.empty((B * nt, nout, flat.shape[-2], flat.shape[-1]), dtype=torch.float32, device=core_device)
    styles: Optional[torch.Tensor] = None
    forward = network_forward(runners, nout, net_device, precision)
    with torch.inference_mode():
        for i in range(0, flat.shape[0], batch_size):
            acc, sb = forward(flat[i:i + batch_size])
            out[i:i + batch_size] = acc.to(core_device)
            if sb is not None:
                sb = sb.to(core_device)
                if styles is None:
                    styles = torch.zeros((B * nt, sb.shape[1]), device=core_device)
                styles[i:i + batch_size] = sb
    y = fc.blend_tiles(out.reshape(B, nt, nout, out.shape[-2], out.shape[-1]), grid,
                       flow_channels=spec.flow_channels or None)
    y = y[:, :, py // 2: py // 2 + Ly, px // 2: px // 2 + Lx]
    if styles is None:
        return y, None
    return y, _mean_style(styles.reshape(B, nt, -1))


def network_forward(runners: Sequence[Any], nout: int, net_device: torch.device,
             precision: str) -> Callable[[torch.Tensor], Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """``f(tiles) -> (maps [b, nout, ty, tx] float32 on net_device, style [b, S] or None)``: one network batch,
    averaged over the runners (an ensemble), the same arithmetic for both tiled paths."""
    amp = net_device.type == "cuda" and precision in ("fp16", "bf16")
    dt = autocast_dtype(precision)

    def f(x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        xb = x.to(net_device, non_blocking=True)
        acc = sacc = None
        for net in runners:
            with torch.autocast(net_device.type, dtype=dt, enabled=amp):
                yb, sb = _split_output(net(xb))
            yb = yb[:, :nout].float()
            acc = yb if acc is None else acc + yb
            if sb is not None:
                sacc = sb.float() if sacc is None else sacc + sb.float()
        acc = acc / len(runners)
        return acc, (None if sacc is None else sacc / len(runners))
    return f


def _mean_style(styles: torch.Tensor) -> torch.Tensor:
    """[B, S] mean tile style of [B, ntiles, S], L2-normalised."""
    st = styles.mean(1)
    return st / torch.clamp(torch.linalg.vector_norm(st, dim=1, keepdim=True), min=1e-12)


def run_tiled_bounded(runners: Sequence[Any], image: Any, spec: ModelSpec, *, net_device: torch.device,
                      batch_size: int, precision: str = "fp32", augment: bool = False, tile_overlap: float = 0.1,
                      out: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[torch.Tensor]]:
    """:func:`run_tiled` of one image within a small, image-independent working set (plus the result).

    Parameters
    ----------
    runners, spec, net_device, batch_size, precision, augment, tile_overlap
        As for :func:`run_tiled`.
    image : LazyImage (or a float32 array [C, Y, X])
        The prepared image, read band by band with ``image.block(y0, y1)`` (a NumPy array is sliced).
    out : float32 array [n_outputs, Y, X], optional
        Where the maps are written (allocated when None).

    Returns
    -------
    maps : float32 NumPy [n_outputs, Y, X]
        Bitwise the maps of :func:`run_tiled` on the CPU: the same tiles (zero padding, flips), the same network
        batches in the same order, the same blending (:class:`~fastpose.core.tiles.TileBlender`).
    style : tensor [S] (CPU) or None
    """
    from ..core.tiles import TileBlender, plan_tiles

    C, Ly, Lx = (int(s) for s in image.shape)
    block = image.block if hasattr(image, "block") else (lambda y0, y1: np.asarray(image[:, max(0, y0):y1]))
    py, px = spec.padding(Ly), spec.padding(Lx)
    oy, ox = py // 2, px // 2
    nout = spec.n_outputs
    grid = plan_tiles(Ly + py, Lx + px, spec.tile, tile_overlap, augment)
    by, bx, nx = grid.by, grid.bx, grid.nx
    ys, xs, flips = list(grid.ystart), list(grid.xstart), list(grid.flips)
    width = max(Lx + px, max(xs) + bx)
    if out is None:
        out = np.empty((nout, Ly, Lx), np.float32)
    elif out.shape != (nout, Ly, Lx) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {(nout, Ly, Lx)}, got {out.dtype} {out.shape}")

    def emit(r0: int, rows: np.ndarray) -> None:  # grid (padded) rows -> image rows, padding cropped
        a, b = max(r0, oy), min(r0 + rows.shape[1], oy + Ly)
        if b > a:
            out[:, a - oy:b - oy] = rows[:, a - r0:b - r0, ox:ox + Lx]

    blender = TileBlender(grid, nout, spec.flow_channels or None, emit)
    bands: Dict[int, np.ndarray] = {}

    def band(j: int) -> np.ndarray:  # padded rows ys[j] .. ys[j] + by of the prepared image, zeros outside
        if j not in bands:
            for k in [k for k in bands if k < j]:
                del bands[k]
            b = np.zeros((C, by, width), np.float32)
            r0 = ys[j] - oy
            a0, a1 = max(0, r0), min(Ly, r0 + by)
            if a1 > a0:
                b[:, a0 - r0:a1 - r0, ox:ox + Lx] = block(a0, a1)
            bands[j] = b
        return bands[j]

    def tile(t: int) -> np.ndarray:
        j, i = divmod(t, nx)
        v = band(j)[:, :, xs[i]:xs[i] + bx]
        f = flips[t] if augment else 0
        if f & 1:
            v = v[:, ::-1, :]
        if f & 2:
            v = v[:, :, ::-1]
        return v

    forward = network_forward(runners, nout, net_device, precision)
    styles: Optional[torch.Tensor] = None
    nt = grid.count
    with torch.inference_mode():
        for i in range(0, nt, batch_size):
            idx = range(i, min(i + batch_size, nt))
            xb = torch.from_numpy(np.stack([tile(t) for t in idx]))
            acc, sb = forward(xb)
            acc = acc.cpu().numpy()
            for k in range(acc.shape[0]):
                blender.add(acc[k])
            if sb is not None:
                if styles is None:
                    styles = torch.zeros((nt, sb.shape[1]))
                styles[i:i + len(idx)] = sb.cpu()
    return out, (None if styles is None else _mean_style(styles[None])[0])
