"""Tiled network inference for any model spec: pad -> tiles -> network batches (ensemble-averaged) -> blend.

The same path serves every family: only the spec says the tile size, padding, how many output maps there are
and which of them are flow components (negated where flip test-time augmentation mirrored a tile).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import fastpose.core as fc

from ..models.spec import ModelSpec

__all__ = ["run_tiled", "autocast_dtype"]


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
    amp = net_device.type == "cuda" and precision in ("fp16", "bf16")
    dt = autocast_dtype(precision)
    with torch.inference_mode():
        for i in range(0, flat.shape[0], batch_size):
            xb = flat[i:i + batch_size].to(net_device, non_blocking=True)
            acc = sacc = None
            for net in runners:
                with torch.autocast(net_device.type, dtype=dt, enabled=amp):
                    yb, sb = _split_output(net(xb))
                yb = yb[:, :nout].float()
                acc = yb if acc is None else acc + yb
                if sb is not None:
                    sacc = sb.float() if sacc is None else sacc + sb.float()
            acc = acc / len(runners)
            out[i:i + batch_size] = acc.to(core_device)
            if sacc is not None:
                sb = (sacc / len(runners)).to(core_device)
                if styles is None:
                    styles = torch.zeros((B * nt, sb.shape[1]), device=core_device)
                styles[i:i + batch_size] = sb
    y = fc.blend_tiles(out.reshape(B, nt, nout, out.shape[-2], out.shape[-1]), grid,
                       flow_channels=spec.flow_channels or None)
    y = y[:, :, py // 2: py // 2 + Ly, px // 2: px // 2 + Lx]
    if styles is None:
        return y, None
    st = styles.reshape(B, nt, -1).mean(1)
    st = st / torch.clamp(torch.linalg.vector_norm(st, dim=1, keepdim=True), min=1e-12)
    return y, st
