"""Class heads: turn a segmentation network (3 maps: dY, dX, cell probability) into a panoptic one.

A panoptic network has ``3 + K + 1`` output maps: the three Cellpose maps, then a background map and one map
per class (Cellpose-SAM, Methods: "Semantic segmentation training and evaluation").  The new maps are
initialised from the cell-probability map's readout weights times -0.5 (background) and +0.5 (each class), so
the network starts out calling cells "some class" and the rest background; the first three maps are kept
exactly, so the segmentation of the network is unchanged until it is trained.

The widened network carries ``class_names`` (background first); :func:`fastpose.models.spec_of` then gives it a
panoptic spec (:func:`fastpose.models.spec.panoptic_spec`) and model files store the names in the spec.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence, Tuple

import torch
import torch.nn as nn

from .spec import check_class_names
from .unet import UNet
from .vit import ViT

__all__ = ["add_class_heads", "class_head_weights"]

log = logging.getLogger("fastpose.models")


def class_head_weights(w_prob: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Initial weights of the ``n_classes + 1`` class maps from the cell-probability map's weights ``w_prob``
    (stacked along a new leading axis): background ``-0.5 * w_prob``, each class ``+0.5 * w_prob``."""
    return torch.stack([-0.5 * w_prob] + [0.5 * w_prob] * int(n_classes))


def _check_plain(net: nn.Module) -> None:
    nout = int(getattr(net, "nout", 3))
    if nout != 3 or getattr(net, "class_names", None):
        raise ValueError(f"add_class_heads needs a segmentation network with 3 output maps (dY, dX, cell "
                         f"probability), got one with {nout} maps"
                         + (f" and classes {list(net.class_names)}" if getattr(net, "class_names", None) else ""))


@torch.no_grad()
def _widen_unet(net: UNet, n_classes: int) -> None:
    old = net.output[2]
    assert isinstance(old, nn.Conv2d)
    new = nn.Conv2d(old.in_channels, 3 + n_classes + 1, old.kernel_size, padding=old.padding).to(old.weight)
    new.weight[:3] = old.weight
    new.weight[3:] = class_head_weights(old.weight[2], n_classes)
    new.bias[:3] = old.bias
    new.bias[3:] = class_head_weights(old.bias[2], n_classes)
    net.output[2] = new
    net.nout = 3 + n_classes + 1


@torch.no_grad()
def _widen_vit(net: ViT, n_classes: int) -> None:
    old = net.out
    p2 = int(net.patch_size) ** 2
    nout = 3 + n_classes + 1
    new = nn.Conv2d(old.in_channels, nout * p2, 1).to(old.weight)
    # readout channel o * p^2 + k is pixel k of the patch in map o (W2 is an identity pixel shuffle)
    new.weight[:3 * p2] = old.weight[:3 * p2]
    new.weight[3 * p2:] = class_head_weights(old.weight[2 * p2:3 * p2], n_classes).flatten(0, 1)
    new.bias[:3 * p2] = old.bias[:3 * p2]
    new.bias[3 * p2:] = class_head_weights(old.bias[2 * p2:3 * p2], n_classes).flatten(0, 1)
    net.out = new
    ps = int(net.patch_size)
    net.W2 = nn.Parameter(torch.eye(nout * p2, device=old.weight.device, dtype=net.W2.dtype).reshape(
        nout * p2, nout, ps, ps), requires_grad=False)
    net.nout = nout
    net._arch["nout"] = nout


def add_class_heads(net: nn.Module, class_names: Sequence[str]) -> nn.Module:
    """Widen the readout of a :class:`~fastpose.models.UNet` or :class:`~fastpose.models.ViT` (3 maps) to
    ``3 + K + 1`` maps for the ``K`` classes ``class_names`` (``"background"`` is prepended when not first), in
    place; returns ``net``.  The first three maps are unchanged; the class maps start from the
    cell-probability weights times -0.5 (background) and +0.5 (classes).

    Sets ``net.class_names`` (background first) and drops a stored spec from ``net.fastpose_meta``, so the
    spec is inferred again as a panoptic one.  ValueError for other networks, bad names, or a network that
    already has class maps."""
    names: Tuple[str, ...] = check_class_names(list(class_names) if not isinstance(class_names, str)
                                               else class_names)
    _check_plain(net)
    k = len(names) - 1
    if isinstance(net, UNet):
        _widen_unet(net, k)
    elif isinstance(net, ViT):
        _widen_vit(net, k)
    else:
        raise ValueError(f"add_class_heads takes a fastpose UNet or ViT, got a {type(net).__name__}")
    net.class_names = names
    meta: Any = dict(getattr(net, "fastpose_meta", None) or {})
    meta.pop("spec", None)
    if meta:
        meta["arch"] = net.arch()
        meta["classes"] = list(names)
        net.fastpose_meta = meta
    log.info("added %d class maps (%s) to a %s", k + 1, ", ".join(names), type(net).__name__)
    return net
