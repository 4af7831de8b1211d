"""Cellpose 2/3 residual U-Net ("CPnet"), rewritten with identical parameter names.

The network is the one described in the Cellpose papers: a 4-level residual encoder (``downsample``),
a style vector (global average of the deepest map, L2-normalised), a residual decoder (``upsample``)
whose blocks add a linear projection of the style and *add* (not concatenate) the encoder skips, and
a 1x1 readout (``output``) of 3 maps: dY, dX and the cell-probability logit.

Every parameter and buffer has the same name and shape as in Cellpose's ``resnet_torch.CPnet``, so
``UNet(...).load_state_dict(torch.load(cellpose_file))`` works for checkpoints written by Cellpose
2/3 (``cyto``, ``cyto2``, ``cyto3``, ``nuclei``, user-trained models).  The naming scheme is::

    diam_mean, diam_labels                                   [1] (non-trainable)
    downsample.down.res_down_{i}.proj.{0:BN,1:conv1x1}
    downsample.down.res_down_{i}.conv.conv_{k}.{0:BN,2:conv}  (index 1 is the ReLU)
    upsample.up.res_up_{i}.proj.{0:BN,1:conv1x1}
    upsample.up.res_up_{i}.conv.conv_0.{0:BN,2:conv}
    upsample.up.res_up_{i}.conv.conv_{1,2,3}.conv.{0:BN,2:conv}
    upsample.up.res_up_{i}.conv.conv_{1,2,3}.full            (style -> channels)
    output.{0:BN,2:conv1x1}

Only the 2D network is implemented (Cellpose's ``conv_3D`` variant is not).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["UNet", "DEFAULT_NBASE", "style_vector", "NormConv", "ResDown", "Encoder", "CellposeNetMixin"]

#: Cellpose's default widths: 2 input channels, then 32, 64, 128, 256 features.
DEFAULT_NBASE: Tuple[int, ...] = (2, 32, 64, 128, 256)

_BN_EPS = 1e-5
_BN_MOMENTUM = 0.05


class NormConv(nn.Sequential):
    """BatchNorm -> (ReLU) -> Conv2d with 'same' padding.

    With ``relu=True`` the children are indexed 0 (BN), 1 (ReLU), 2 (conv); without, 0 (BN), 1 (conv),
    which is how Cellpose's ``batchconv`` / ``batchconv0`` name their parameters.
    """

    def __init__(self, cin: int, cout: int, ksize: int, relu: bool = True) -> None:
        layers: List[nn.Module] = [nn.BatchNorm2d(cin, eps=_BN_EPS, momentum=_BN_MOMENTUM)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(cin, cout, ksize, padding=ksize // 2))
        super().__init__(*layers)


class _StyleNormConv(nn.Module):
    """Adds a linear projection of the style vector (and optionally a skip tensor), then BN-ReLU-conv."""

    def __init__(self, cin: int, cout: int, style_channels: int, ksize: int) -> None:
        super().__init__()
        self.conv = NormConv(cin, cout, ksize)
        self.full = nn.Linear(style_channels, cin)

    def forward(self, style: torch.Tensor, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if skip is not None:
            x = x + skip
        return self.conv(x + self.full(style)[:, :, None, None])


class ResDown(nn.Module):
    """Encoder block: two residual pairs of BN-ReLU-conv; a 1x1 BN-conv projection on the first shortcut."""

    def __init__(self, cin: int, cout: int, ksize: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(OrderedDict(
            (f"conv_{k}", NormConv(cin if k == 0 else cout, cout, ksize)) for k in range(4)))
        self.proj = NormConv(cin, cout, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        x = self.proj(x) + c.conv_1(c.conv_0(x))
        return x + c.conv_3(c.conv_2(x))


class _ResUp(nn.Module):
    """Decoder block: like :class:`ResDown`, plus the encoder skip and the style added before conv 1-3."""

    def __init__(self, cin: int, cout: int, style_channels: int, ksize: int) -> None:
        super().__init__()
        mods: List[Tuple[str, nn.Module]] = [("conv_0", NormConv(cin, cout, ksize))]
        mods += [(f"conv_{k}", _StyleNormConv(cout, cout, style_channels, ksize)) for k in (1, 2, 3)]
        self.conv = nn.Sequential(OrderedDict(mods))
        self.proj = NormConv(cin, cout, 1, relu=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        c = self.conv
        x = self.proj(x) + c.conv_1(style, c.conv_0(x), skip)
        return x + c.conv_3(style, c.conv_2(style, x))


class Encoder(nn.Module):
    """``downsample``: residual blocks at full, 1/2, 1/4, ... resolution; returns every level's map."""

    def __init__(self, nbase: Sequence[int], ksize: int, max_pool: bool) -> None:
        super().__init__()
        self.down = nn.Sequential(OrderedDict(
            (f"res_down_{i}", ResDown(nbase[i], nbase[i + 1], ksize)) for i in range(len(nbase) - 1)))
        self.max_pool = max_pool

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        feats: List[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = F.max_pool2d(x, 2, 2) if self.max_pool else F.avg_pool2d(x, 2, 2)
            x = block(x)
            feats.append(x)
        return feats


class _Decoder(nn.Module):
    """``upsample``: residual blocks from the deepest level up, nearest-neighbour 2x upsampling between."""

    def __init__(self, nbaseup: Sequence[int], ksize: int) -> None:
        super().__init__()
        style_channels = nbaseup[-1]
        self.up = nn.Sequential(OrderedDict(
            (f"res_up_{i - 1}", _ResUp(nbaseup[i], nbaseup[i - 1], style_channels, ksize))
            for i in range(1, len(nbaseup))))

    def forward(self, style: torch.Tensor, feats: List[torch.Tensor]) -> torch.Tensor:
        blocks = list(self.up)
        x = blocks[-1](feats[-1], feats[-1], style)
        for i in range(len(blocks) - 2, -1, -1):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = blocks[i](x, feats[i], style)
        return x


def style_vector(x: torch.Tensor) -> torch.Tensor:
    """Global average pool of a [B, C, H, W] map, L2-normalised per sample -> [B, C]."""
    s = x.mean(dim=(2, 3))
    return s / torch.linalg.vector_norm(s, dim=1, keepdim=True).clamp_min(1e-12)


class CellposeNetMixin:
    """What fastpose's Cellpose-style networks share (:class:`UNet`, :class:`fastpose.scellseg.SCSNet`): the
    non-trainable ``diam_mean`` / ``diam_labels`` parameters and the input size rule of an ``nbase`` encoder."""

    nbase: List[int]

    def init_diameters(self, diam_mean: float) -> None:
        """Register ``diam_mean`` and ``diam_labels`` ([1], not trained), both ``diam_mean`` at first."""
        self.diam_mean = nn.Parameter(torch.full((1,), float(diam_mean)), requires_grad=False)
        self.diam_labels = nn.Parameter(torch.full((1,), float(diam_mean)), requires_grad=False)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (2 ** number of poolings)."""
        return 2 ** (len(self.nbase) - 2)

    @property
    def diam_mean_value(self) -> float:
        """``diam_mean`` as a Python float."""
        return float(self.diam_mean.detach().float().cpu()[0])


class UNet(CellposeNetMixin, nn.Module):
    """Cellpose 2/3 residual U-Net with CPnet-identical parameter names.

    Args:
        nbase: channel widths, input channels first (Cellpose: ``[2, 32, 64, 128, 256]``). Any number of
            levels >= 2 works; the input side must be divisible by ``2 ** (len(nbase) - 2)``.
        nout: output maps (3: dY, dX, cell-probability logit).
        sz: convolution kernel size (Cellpose uses 3).
        max_pool: max pooling between encoder levels (Cellpose default); average pooling otherwise.
        diam_mean: mean cell diameter the model was trained at (stored as a non-trainable parameter).

    ``forward(x)`` returns ``(out [B, nout, H, W], style [B, nbase[-1]])``.  (Cellpose's CPnet also
    returns the encoder maps as a third element; use :meth:`forward_features` for those.)
    """

    def __init__(self, nbase: Sequence[int] = DEFAULT_NBASE, nout: int = 3, sz: int = 3,
                 max_pool: bool = True, diam_mean: float = 30.0) -> None:
        super().__init__()
        nbase = [int(n) for n in nbase]
        if len(nbase) < 2 or min(nbase) < 1:
            raise ValueError(f"nbase must list >= 2 positive widths, got {nbase}")
        if sz < 1 or sz % 2 == 0:
            raise ValueError(f"kernel size sz must be a positive odd number, got {sz}")
        self.nbase: List[int] = nbase
        self.nchan: int = nbase[0]
        self.nout: int = int(nout)
        self.sz: int = int(sz)
        self.max_pool: bool = bool(max_pool)
        nbaseup = nbase[1:] + [nbase[-1]]
        self.downsample = Encoder(nbase, sz, max_pool)
        self.upsample = _Decoder(nbaseup, sz)
        self.output = NormConv(nbaseup[0], nout, 1)
        self.init_diameters(diam_mean)

    def arch(self) -> dict:
        """Constructor kwargs (without diam_mean) as stored in fastpose model files."""
        return {"type": "unet", "nbase": list(self.nbase), "nout": self.nout, "sz": self.sz,
                "max_pool": self.max_pool}

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"UNet expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.nchan:
            raise ValueError(f"UNet was built for {self.nchan} input channels, got {x.shape[1]}")
        m = self.size_multiple
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"UNet input height and width must be divisible by {m}, got "
                             f"{x.shape[2]}x{x.shape[3]} (pad the image, e.g. to a multiple of 16)")

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Like Cellpose's CPnet.forward: ``(out, style, encoder maps)``."""
        self._check_input(x)
        feats = self.downsample(x)
        style = style_vector(feats[-1])
        out = self.output(self.upsample(style, feats))
        return out, style, feats

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, nchan, H, W] -> ``(out [B, nout, H, W], style [B, nbase[-1]])``."""
        out, style, _ = self.forward_features(x)
        return out, style
