"""Scellseg's style-aware network, sCSnet, with parameter names identical to the authors' checkpoints.

From cellimnet/scellseg-publish (``scellseg/net_desc.py``: ``Extractor``, ``Tasker``, ``sCSnet``;
``scellseg/net_utils.py``: ``upsample``, ``resup``, ``attnBlock``, ``makeStyle``); written anew:

* **Down path** (``extractor.downsample``): the Cellpose residual encoder (:class:`fastpose.models.unet.Encoder`),
  nbase 2-32-64-128-256.
* **Hierarchical style** (``hierarchical_style``): ``s_k`` = the L2-normalised global average pool of down level k;
  the up blocks receive ``res_up_3``: s3 (256), ``res_up_2``: [s3, s2] (384), ``res_up_1``: [s3, s2, s1] (448),
  ``res_up_0``: [s3, s2, s1, s0] (480), each through ``Linear(style -> C)`` added before BN-ReLU-conv.  Off: every
  block gets s3, as in Cellpose.
* **Attention gates** (``attention``) on the three upper skips: the upsampled map goes through ``up_conv`` (1x1
  conv, BN, ReLU, ``nbase[n+1] -> nbase[n]``); ``psi = sigmoid(BN(conv1x1(ReLU(BN(W_g x) + BN(W_x skip)))))``
  with ``F_int = C / 2``; the block's input is ``cat[skip * psi, x]`` and the additive skip is off.  Off: Cellpose's
  additive skip.
* **Dense units** (``dense``): each up block ends with a 1x1 conv-BN-ReLU over ``cat[block input, block output]``.
* **Head** (``tasker``): BN, ReLU, 1x1 conv 32 -> 3 (dY, dX, cell-probability logit), Cellpose's ``output``.

``forward(x)`` returns ``(maps [B, 3, H, W], style [B, 256])`` with ``style`` = s3, as :class:`fastpose.models.UNet`
does, so the Segmenter, the trainers, the size model and fine-tuning take either network.  With all three switches
off the network is the Cellpose U-Net (Scellseg loads Cellpose checkpoints into exactly that); fastpose runs those
as :class:`~fastpose.models.UNet` itself.

Departs from the authors' code: batch norms use Cellpose's momentum 0.05 (the authors' code PyTorch's default 0.1),
which only changes how running statistics move during training.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.files import register_architecture
from ..models.unet import DEFAULT_NBASE, CellposeNetMixin, Encoder, NormConv, style_vector

__all__ = ["SCSNet", "is_scellseg_state_dict", "infer_arch", "from_cellpose_state_dict"]

_BN_EPS = 1e-5
_BN_MOMENTUM = 0.05


def _cbr(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    """1x1 conv -> BN (-> ReLU): the authors' ``cbrBlock`` / ``cbBlock`` (children 0 conv, 1 BN)."""
    layers: List[nn.Module] = [nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _StyleConv(nn.Module):
    """``brcStyle``: ``x + Linear(style)`` then BN-ReLU-conv."""

    def __init__(self, cin: int, cout: int, style_channels: int, ksize: int) -> None:
        super().__init__()
        self.conv = NormConv(cin, cout, ksize)
        self.full = nn.Linear(style_channels, cout)

    def forward(self, style: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x + self.full(style)[:, :, None, None])


class _ResUp(nn.Module):
    """``resup``: Cellpose's residual up block (the skip added before conv 1), plus an optional dense unit."""

    def __init__(self, cin: int, cout: int, style_channels: int, ksize: int, dense: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(OrderedDict(
            [("conv_0", NormConv(cin, cout, ksize))] +
            [(f"conv_{k}", _StyleConv(cout, cout, style_channels, ksize)) for k in (1, 2, 3)]))
        self.proj = NormConv(cin, cout, 1, relu=False)
        self.dense = bool(dense)
        if self.dense:
            self.up_conv = _cbr(cin + cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        c = self.conv
        out = self.proj(x) + c.conv_1(style, c.conv_0(x) + skip)
        out = out + c.conv_3(style, c.conv_2(style, out))
        if self.dense:
            out = self.up_conv(torch.cat([x, out], dim=1))
        return out


class _Attention(nn.Module):
    """``attnBlock``: gates the skip ``x`` by ``psi`` computed from it and the up path's ``g``."""

    def __init__(self, f_g: int, f_l: int, f_int: int) -> None:
        super().__init__()
        self.W_g = _cbr(f_g, f_int, relu=False)
        self.W_x = _cbr(f_l, f_int, relu=False)
        self.psi = nn.Sequential(nn.Conv2d(f_int, 1, 1), nn.BatchNorm2d(1, eps=_BN_EPS, momentum=_BN_MOMENTUM),
                                 nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(F.relu(self.W_g(g) + self.W_x(x)))


class _Upsample(nn.Module):
    """``upsample``: up blocks from the deepest level, nearest 2x upsampling, optional attention-gated skips."""

    def __init__(self, nbaseup: Sequence[int], ksize: int, style_channels: Sequence[int], attention: bool,
                 dense: bool) -> None:
        super().__init__()
        n = len(nbaseup) - 1
        self.attention = bool(attention)
        self.up = nn.Sequential(OrderedDict(
            (f"res_up_{k}", _ResUp(nbaseup[k + 1], nbaseup[k], style_channels[k], ksize, dense)) for k in range(n)))
        if self.attention:
            self.up_conv = nn.Sequential(OrderedDict(
                (f"up_conv_{k}", _cbr(nbaseup[k + 1], nbaseup[k])) for k in range(n - 1)))
            self.attn = nn.Sequential(OrderedDict(
                (f"attn_{k}", _Attention(nbaseup[k], nbaseup[k], nbaseup[k] // 2)) for k in range(n - 1)))

    def forward(self, styles: Sequence[torch.Tensor], feats: Sequence[torch.Tensor]) -> torch.Tensor:
        blocks = list(self.up)
        x = blocks[-1](feats[-1], feats[-1], styles[-1])
        for k in range(len(blocks) - 2, -1, -1):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            skip = feats[k]
            if self.attention:
                x = self.up_conv[k](x)
                x = torch.cat([self.attn[k](x, skip), x], dim=1)
                skip = torch.zeros_like(skip)  # the authors multiply the additive skip by 0
            x = blocks[k](x, skip, styles[k])
        return x


class _Extractor(nn.Module):
    def __init__(self, nbase: Sequence[int], ksize: int, attention: bool, dense: bool,
                 hierarchical_style: bool) -> None:
        super().__init__()
        nbaseup = list(nbase[1:]) + [nbase[-1]]
        levels = len(nbase) - 1
        if hierarchical_style:   # res_up_k gets the styles of levels k..deepest, deepest first
            style_channels = [sum(nbase[j + 1] for j in range(k, levels)) for k in range(levels)]
            style_channels[-1] = nbase[-1]
        else:
            style_channels = [nbase[-1]] * levels
        self.hierarchical_style = bool(hierarchical_style)
        self.downsample = Encoder(nbase, ksize, True)
        self.upsample = _Upsample(nbaseup, ksize, style_channels, attention, dense)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        feats = self.downsample(x)
        s = [style_vector(f) for f in feats]
        if self.hierarchical_style:
            styles = [torch.cat(s[k:][::-1], dim=1) for k in range(len(s) - 1)] + [s[-1]]
        else:
            styles = [s[-1]] * len(s)
        return self.upsample(styles, feats), s[-1], feats


class _Tasker(nn.Module):
    def __init__(self, cin: int, nout: int) -> None:
        super().__init__()
        self.base_bn = nn.BatchNorm2d(cin, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.base_conv = nn.Conv2d(cin, nout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_conv(F.relu(self.base_bn(x)))


class SCSNet(CellposeNetMixin, nn.Module):
    """Scellseg's sCSnet (see the module docstring) with the authors' parameter names.

    Args:
        nbase: widths, input channels first (default ``[2, 32, 64, 128, 256]``, Scellseg's).
        nout: output maps (3: dY, dX, cell-probability logit).
        sz: kernel size (3).
        attention, dense, hierarchical_style: the three switches (all on: Scellseg; all off: Cellpose's U-Net).
        diam_mean: the mean object diameter the network works at (non-trainable, as in fastpose's U-Net).
    """

    def __init__(self, nbase: Sequence[int] = DEFAULT_NBASE, nout: int = 3, sz: int = 3, attention: bool = True,
                 dense: bool = True, hierarchical_style: bool = True, diam_mean: float = 30.0) -> None:
        super().__init__()
        nbase = [int(n) for n in nbase]
        if len(nbase) < 3 or min(nbase) < 1:
            raise ValueError(f"nbase must list >= 3 positive widths, got {nbase}")
        if attention and any(nbase[k + 1] != 2 * nbase[k] for k in range(1, len(nbase) - 1)):
            raise ValueError(f"attention gates need widths that double from level to level (the gated skip and the "
                             f"up path are concatenated), got {nbase}")
        if sz < 1 or sz % 2 == 0:
            raise ValueError(f"kernel size sz must be a positive odd number, got {sz}")
        self.nbase: List[int] = nbase
        self.nchan: int = nbase[0]
        self.nout: int = int(nout)
        self.sz: int = int(sz)
        self.attention, self.dense, self.hierarchical_style = bool(attention), bool(dense), bool(hierarchical_style)
        self.extractor = _Extractor(nbase, sz, self.attention, self.dense, self.hierarchical_style)
        self.tasker = _Tasker(nbase[1], self.nout)
        self.init_diameters(diam_mean)

    def arch(self) -> Dict[str, Any]:
        """Constructor kwargs (without diam_mean) as stored in fastpose model files."""
        return {"type": "scellseg", "nbase": list(self.nbase), "nout": self.nout, "sz": self.sz,
                "attention": self.attention, "dense": self.dense, "hierarchical_style": self.hierarchical_style}

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.nchan:
            raise ValueError(f"SCSNet expects [B, {self.nchan}, H, W], got shape {tuple(x.shape)}")
        m = self.size_multiple
        if x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"SCSNet input height and width must be divisible by {m}, got {x.shape[2]}x{x.shape[3]}")

    def forward_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """``(maps, style s3, encoder maps)`` like :meth:`fastpose.models.UNet.forward_features`."""
        self._check_input(x)
        up, style, feats = self.extractor(x)
        return self.tasker(up), style, feats

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out, style, _ = self.forward_features(x)
        return out, style


# ---- checkpoints --------------------------------------------------------------------------------------------

_SCELLSEG_KEY = "tasker.base_conv.weight"


def is_scellseg_state_dict(sd: Mapping[str, Any]) -> bool:
    """Whether ``sd`` is an sCSnet state dict (the authors' ``extractor.`` / ``tasker.`` layout)."""
    return _SCELLSEG_KEY in sd and any(k.startswith("extractor.downsample.") for k in sd)


def infer_arch(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """The ``arch`` of an sCSnet state dict: widths from the down path, the switches from the keys present
    (``upsample.attn``, ``res_up_*.up_conv``) and the style width of ``res_up_0``."""
    nbase = []
    i = 0
    while f"extractor.downsample.down.res_down_{i}.proj.1.weight" in sd:
        w = sd[f"extractor.downsample.down.res_down_{i}.proj.1.weight"]
        if i == 0:
            nbase.append(int(w.shape[1]))
        nbase.append(int(w.shape[0]))
        i += 1
    if len(nbase) < 3:
        raise ValueError("no extractor.downsample.down.res_down_* weights")
    attention = any(k.startswith("extractor.upsample.attn.") for k in sd)
    dense = any(".up_conv." in k and k.startswith("extractor.upsample.up.") for k in sd)
    full = sd["extractor.upsample.up.res_up_0.conv.conv_1.full.weight"]
    hierarchical = int(full.shape[1]) != nbase[-1]
    return {"type": "scellseg", "nbase": nbase, "nout": int(sd[_SCELLSEG_KEY].shape[0]),
            "sz": int(sd["extractor.downsample.down.res_down_0.conv.conv_0.2.weight"].shape[-1]),
            "attention": attention, "dense": dense, "hierarchical_style": hierarchical}


def from_cellpose_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A Cellpose (CPnet) state dict renamed to the sCSnet layout, as Scellseg's ``load_model`` does: the
    ``extractor.`` prefix, ``output.0`` -> ``tasker.base_bn``, ``output.2`` -> ``tasker.base_conv`` (for an sCSnet
    with the switches off; ``diam_mean`` / ``diam_labels`` kept as they are)."""
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in ("diam_mean", "diam_labels"):
            out[k] = v
        elif k.startswith("output.0."):
            out["tasker.base_bn." + k[len("output.0."):]] = v
        elif k.startswith("output.2."):
            out["tasker.base_conv." + k[len("output.2."):]] = v
        else:
            out["extractor." + k] = v
    return out


def _recognise(sd: Mapping[str, Any]) -> Any:
    if not is_scellseg_state_dict(sd):
        return None
    return infer_arch(sd), dict(sd), "scellseg"


def _spec_defaults(net: nn.Module) -> Dict[str, Any]:
    # as the Cellpose U-Net: 224 px tiles, padded to a multiple of 16, images resized by their diameter
    return {"tile": 224, "pad_multiple": 16, "pad_to_tile": False, "rescale_by_diameter": True}


register_architecture("scellseg", SCSNet, _spec_defaults, _recognise)
