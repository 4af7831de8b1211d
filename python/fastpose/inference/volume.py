"""3D from a 2D network: maps of XY, ZY and ZX slices combined into one volume (Cellpose's ``do_3D``), and
linking 2D masks of consecutive planes into 3D objects (``stitch3D``).

Generic over the model spec: flow components of each view go to the two volume axes of that view's plane
(XY -> (Y, X), ZY -> (Z, Y), ZX -> (Z, X)) and are averaged over the two views that see each axis; every other
map is averaged over the three views.  The result has the flows first: ``[flow_z, flow_y, flow_x, others...]``.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from ..labels import iou_pairs, labels_dtype
from ..models.spec import ModelSpec
from ..transforms import resize, scaled_size

__all__ = ["volume_maps", "stitch3D", "VIEWS", "add_view", "combined_views"]

#: view name -> (permutation of a [C, Z, Y, X] volume into a stack of 2D images [n, C, a, b],
#:               the volume axes (0 = Z, 1 = Y, 2 = X) of the image axes (a, b),
#:               the permutation of the stacked outputs [n, K, a, b] back to [K, Z, Y, X])
VIEWS = {
    "xy": ((1, 0, 2, 3), (1, 2), (1, 0, 2, 3)),   # Z planes [Z, C, Y, X]
    "zy": ((3, 0, 1, 2), (0, 1), (1, 2, 3, 0)),   # X planes [X, C, Z, Y]
    "zx": ((2, 0, 1, 3), (0, 2), (1, 2, 0, 3)),   # Y planes [Y, C, Z, X]
}


def volume_maps(run: Callable[[torch.Tensor], Tuple[torch.Tensor, Optional[torch.Tensor]]], x: np.ndarray,
                spec: ModelSpec, *, rescale: float, anisotropy: Optional[float], batch_size: int,
                net_device: torch.device, core_device: torch.device) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Maps of a volume from 2D slices in three orientations.

    ``run(stack [n, C, a, b]) -> (maps [n, n_outputs, a, b], styles [n, S] or None)`` is the tiled 2D network;
    ``x`` is a prepared volume [C, Z, Y, X].  The volume is resized by ``rescale`` in Y and X and by
    ``rescale * anisotropy`` in Z for the network, and the maps are resized back.

    Returns ``(maps [n_flow3 + n_other, Z, Y, X] on core_device, mean style [S] or None)``.
    """
    C, Lz, Ly, Lx = x.shape
    zscale = rescale * (anisotropy if anisotropy else 1.0)
    vol = torch.from_numpy(x).to(net_device)
    size = scaled_size((Lz, Ly, Lx), (zscale, rescale, rescale))
    if size != (Lz, Ly, Lx):
        vol = resize(vol[None], size)[0]
    Z, Y, X = vol.shape[1:]
    nflow = len(spec.flow_channels)
    nother = spec.n_outputs - nflow
    acc = torch.zeros((3 * (nflow > 0) + nother, Z, Y, X), device=core_device)
    styles: List[torch.Tensor] = []
    for view in ("xy", "zy", "zx"):
        to_stack, axes, back = VIEWS[view]
        stack = vol.permute(*to_stack).contiguous()
        outs = []
        for i in range(0, stack.shape[0], max(1, batch_size)):
            y, st = run(stack[i:i + batch_size])
            outs.append(y)
            if st is not None:
                styles.append(st)
        add_view(acc, torch.cat(outs).permute(*back), view, nflow)   # [n_outputs, Z, Y, X]
    maps = combined_views(acc, nflow)
    if (Z, Y, X) != (Lz, Ly, Lx):
        maps = resize(maps[None], (Lz, Ly, Lx))[0]
    style = torch.cat(styles).mean(0) if styles else None
    return maps, style


def add_view(acc: torch.Tensor, y: torch.Tensor, view: str, nflow: int) -> None:
    """Add one view's maps ``y`` [n_outputs, Z, Y, X] to the accumulator ``acc`` [3 (flows, when the spec has
    them) + others, Z, Y, X]: its two flow components to the volume axes of its plane, the rest as they are."""
    axes = VIEWS[view][1]
    k0 = 3 if nflow else 0
    if nflow:
        acc[axes[0]] += y[0]
        acc[axes[1]] += y[1]
    for k in range(acc.shape[0] - k0):
        acc[k0 + k] += y[nflow + k]


def combined_views(acc: torch.Tensor, nflow: int) -> torch.Tensor:
    """The volume's maps from the accumulated three views: flows averaged over the two views that see each axis,
    other maps over all three."""
    if not nflow:
        return acc / 3
    return torch.cat([acc[:3] / 2, acc[3:] / 3])


def stitch3D(masks: np.ndarray, stitch_threshold: float = 0.25) -> np.ndarray:
    """Link 2D masks of consecutive planes into 3D objects when their IoU exceeds ``stitch_threshold``.

    Each mask of plane z+1 takes the label of the plane-z mask it overlaps best if that IoU is above the
    threshold, else a new label (Cellpose's ``utils.stitch3D``).
    """
    out = masks.astype(np.int64).copy()
    nxt = int(out[0].max()) + 1
    for z in range(1, out.shape[0]):
        cur = masks[z].astype(np.int64)
        nc = int(cur.max())
        if nc == 0:
            out[z] = 0
            continue
        iou_best = np.zeros(nc + 1)
        lab_best = np.zeros(nc + 1, np.int64)
        pairs = iou_pairs(cur, out[z - 1])
        if pairs.a.size:
            iou = pairs.iou
            order = np.argsort(iou)
            iou_best[pairs.a[order]] = iou[order]
            lab_best[pairs.a[order]] = pairs.b[order]
        mapping = np.zeros(nc + 1, np.int64)
        for c in range(1, nc + 1):
            if iou_best[c] > stitch_threshold:
                mapping[c] = lab_best[c]
            else:
                mapping[c] = nxt
                nxt += 1
        out[z] = mapping[cur]
    return out.astype(labels_dtype(int(out.max())))
