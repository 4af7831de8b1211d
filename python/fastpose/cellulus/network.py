"""The Cellulus network: a 2-level U-Net of valid convolutions with a field of view of 17 px.

funkelab/cellulus (main, ``models/unet.py``) builds funlib's ``UNet`` with these settings; this is the same
network written out (state dicts are not interchangeable: the layers are named here, and the offsets come in
array order, see below):

* down: a conv pass ``[3x3, 1x1, 1x1, 3x3]`` (valid, each followed by ReLU) from the image channels to ``f``
  maps; a 2x2 max-pool; the same conv pass to ``3f`` maps (``fmap_inc_factor`` 3);
* up: nearest-neighbour upsampling by 2, the down pass's output centre-cropped to it and concatenated
  ``[skip, up]``, a conv pass to ``features_in_last_layer`` (64) maps;
* head: 1x1 conv 64 -> 64, ReLU, 1x1 conv 64 -> D (D = 2 in 2D, 3 in 3D, with Conv3d / MaxPool3d).

Each spatial side shrinks by 16 px (252 -> 236): input sides must be even (the max-pool follows a 4 px
shrink) and at least 18.  All convolutions get Kaiming-normal weights (``nonlinearity="relu"``, as the authors'
``train.py`` initialises every conv layer, the head included); biases keep PyTorch's default.  ``f`` is
configurable: the paper used 64, the authors' examples 24 (fastpose's default).

Output channel ``k`` is the offset along spatial axis ``k`` in array order ((Y, X) in 2D, (Z, Y, X) in 3D);
the authors' code orders them (X, Y[, Z]).  The embedding of a pixel is its offset plus its coordinate
(:mod:`fastpose.cellulus.loss`).

The network registers itself as the architecture ``"cellulus"`` (``arch = {"type": "cellulus", "in_channels",
"f", "ndim", "fmap_inc_factor", "features_in_last_layer"}``), so :func:`fastpose.models.save_model` /
:func:`~fastpose.models.load_model` round-trip it; :func:`save_cellulus` writes a file with the Cellulus spec
and settings (what :func:`fastpose.segment` reads).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from .. import checks
from ..models.files import register_architecture, save_model
from .settings import NORMALIZE, cellulus_spec

__all__ = ["CellulusNet", "SHRINK", "CONTEXT", "valid_size", "save_cellulus"]

#: pixels each spatial side loses through the network (valid convolutions)
SHRINK = 16
#: context on each side: SHRINK // 2
CONTEXT = SHRINK // 2
#: smallest input side: even and at least this
MIN_INPUT = 18


def valid_size(n: int) -> int:
    """The smallest input side >= ``n`` the network takes (even, at least :data:`MIN_INPUT`)."""
    n = max(int(n), MIN_INPUT)
    return n + (n % 2)


def _conv_pass(cin: int, cout: int, ndim: int) -> nn.Sequential:
    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    layers: List[nn.Module] = []
    for i, k in enumerate((3, 1, 1, 3)):
        layers += [conv(cin if i == 0 else cout, cout, k), nn.ReLU()]
    return nn.Sequential(*layers)


def _centre_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    sl = [slice(None), slice(None)]
    for a, b in zip(x.shape[2:], shape):
        o = (int(a) - int(b)) // 2
        sl.append(slice(o, o + int(b)))
    return x[tuple(sl)]


class CellulusNet(nn.Module):
    """The Cellulus U-Net (see the module docstring): ``forward(x [B, C, *S]) -> offsets [B, D, *(S - 16)]``.

    Parameters
    ----------
    in_channels : int
        Image channels (all of them feed the network).
    f : int
        Feature maps of the first level (the second has ``fmap_inc_factor * f``); default 24.
    ndim : int
        2 (Conv2d) or 3 (Conv3d); D = ``ndim`` offsets out.
    fmap_inc_factor, features_in_last_layer : int
        3 and 64, the authors' values.
    diam_mean : float, optional
        Ignored (the builder's keyword; a Cellulus model's object size lives in its spec).
    """

    def __init__(self, in_channels: int = 1, f: int = 24, ndim: int = 2, fmap_inc_factor: int = 3,
                 features_in_last_layer: int = 64, diam_mean: Optional[float] = None) -> None:
        super().__init__()
        self.in_channels = checks.integer(in_channels, "in_channels", lo=1, hi=1024)
        self.f = checks.integer(f, "f", lo=1, hi=4096)
        self.ndim = checks.choice(ndim, "ndim", (2, 3))
        self.fmap_inc_factor = checks.integer(fmap_inc_factor, "fmap_inc_factor", lo=1, hi=64)
        self.features_in_last_layer = checks.integer(features_in_last_layer, "features_in_last_layer", lo=1,
                                                     hi=4096)
        self.nchan = self.in_channels  # what fastpose's model files and segmenter read
        conv = nn.Conv2d if self.ndim == 2 else nn.Conv3d
        f2 = self.f * self.fmap_inc_factor
        self.down = _conv_pass(self.in_channels, self.f, self.ndim)
        self.pool = (nn.MaxPool2d if self.ndim == 2 else nn.MaxPool3d)(2, stride=2)
        self.bottom = _conv_pass(self.f, f2, self.ndim)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.right = _conv_pass(self.f + f2, self.features_in_last_layer, self.ndim)
        self.head = nn.Sequential(conv(self.features_in_last_layer, self.features_in_last_layer, 1), nn.ReLU(),
                                  conv(self.features_in_last_layer, self.ndim, 1))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    @property
    def shrink(self) -> int:
        """Pixels each spatial side loses (16)."""
        return SHRINK

    def arch(self) -> Dict[str, Any]:
        """The ``arch`` dict of fastpose model files."""
        return {"type": "cellulus", "in_channels": self.in_channels, "f": self.f, "ndim": self.ndim,
                "fmap_inc_factor": self.fmap_inc_factor, "features_in_last_layer": self.features_in_last_layer}

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError unless ``x`` is [B, in_channels, *S] with ``ndim`` even sides of at least 18."""
        if x.ndim != self.ndim + 2 or int(x.shape[1]) != self.in_channels:
            axes = "Y, X" if self.ndim == 2 else "Z, Y, X"
            raise ValueError(f"the Cellulus network takes [B, {self.in_channels}, {axes}] inputs, got shape "
                             f"{tuple(x.shape)}")
        bad = [int(s) for s in x.shape[2:] if s < MIN_INPUT or s % 2]
        if bad:
            raise ValueError(f"the Cellulus network takes even sides of at least {MIN_INPUT} px (valid convolutions, "
                             f"then a 2x max-pool), got {tuple(int(s) for s in x.shape[2:])}; pad the input "
                             "(fastpose.cellulus.valid_size)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skip = self.down(x)
        u = self.up(self.bottom(self.pool(skip)))
        h = torch.cat([_centre_crop(skip, u.shape[2:]), u], dim=1)
        return self.head(self.right(h))


def _build(diam_mean: float = 30.0, **kw: Any) -> nn.Module:
    return CellulusNet(**kw)


def _spec_defaults(net: nn.Module) -> Dict[str, Any]:
    """Spec fields of a Cellulus network saved without a spec (the default settings); ``normalize`` and
    ``diam_mean`` come from the file's own fields, so :func:`save_cellulus` writes them."""
    spec = cellulus_spec(int(getattr(net, "in_channels", 1)), int(getattr(net, "ndim", 2)))
    d = spec.to_dict()
    for k in ("nchan", "diam_mean", "normalize"):
        d.pop(k)
    return d


register_architecture("cellulus", _build, _spec_defaults)


def save_cellulus(path: Union[str, os.PathLike], net: CellulusNet, settings: Optional[Mapping[str, Any]] = None,
                  extra: Optional[Mapping[str, Any]] = None, half: bool = False) -> Path:
    """Write a Cellulus network to a fastpose model file that :func:`fastpose.segment` runs: the spec of
    :func:`~fastpose.cellulus.settings.cellulus_spec` with ``settings`` (checked; defaults for the rest), its
    ``diam_mean`` = the object size, the 1 / 99.8 percentile normalisation; ``extra``: free-form metadata.
    (:func:`fastpose.models.save_model` writes a loadable Cellulus file too, but with the generic defaults: the
    1 / 99 normalisation and the default settings.)"""
    if not isinstance(net, CellulusNet):
        raise ValueError(f"net must be a CellulusNet, got {type(net).__name__}")
    spec = cellulus_spec(net.in_channels, net.ndim, settings)
    meta: Dict[str, Any] = {"spec": spec.to_dict(), "diam_mean": spec.diam_mean, "diam_labels": spec.diam_mean,
                            "normalize": dict(NORMALIZE)}
    if extra is not None:
        meta["extra"] = dict(extra)
    return save_model(path, net, meta, half=half)
