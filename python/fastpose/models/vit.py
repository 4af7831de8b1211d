"""Cellpose-SAM style vision transformer: SAM's ViT image encoder with an 8x8-patch pixel readout.

Architecture (as in Cellpose 4's ``CPSAM``, formerly ``vit_sam.Transformer``):

* patch embedding: ``Conv2d(3, width, kernel=stride=patch_size)`` (8x8 patches -> a 32x32 token grid for
  256x256 inputs), plus learned absolute position embeddings for that grid;
* ``depth`` pre-norm transformer blocks, all with *global* attention.  Like SAM, attention logits get
  decomposed relative position terms (per-axis tables ``rel_pos_h`` / ``rel_pos_w``); a table whose
  length differs from ``2 * grid - 1`` is linearly resampled, exactly as SAM does;
* SAM's neck: 1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d, to 256 channels;
* readout: 1x1 conv ``out`` to ``nout * patch_size**2`` channels, then a fixed (non-trainable) transposed
  convolution ``W2`` (an identity kernel, i.e. a pixel shuffle) back to full resolution.

Parameter names and shapes of the ``vit_l`` preset equal those of Cellpose-SAM checkpoints (``cpsam``,
``cpsam_v2``), so ``ViT.from_preset("vit_l").load_state_dict(torch.load(cpsam_file))`` works.  Note that
in ``vit_l`` the relative-position tables keep SAM's pretraining sizes (127 for the four originally
global blocks 5, 11, 17, 23 and 27 for the originally windowed ones) and are resampled on the fly.

Output convention: ``forward(x) -> (out [B, 3, H, W], style [B, 256])`` with out = dY, dX, cellprob logit.
Cellpose-SAM returns an all-zero "style"; here it is the L2-normalised global average of the neck
features (256 values), which is harmless for code that ignores it and useful for code that does not.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ViT", "VIT_PRESETS", "to_three_channels"]

#: Constructor kwargs of the built-in sizes.  ``vit_l`` matches Cellpose-SAM.
VIT_PRESETS: Dict[str, Dict[str, Any]] = {
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16,
                  rel_pos_len=[127 if i in (5, 11, 17, 23) else 27 for i in range(24)]),
    "vit_s": dict(embed_dim=384, depth=6, num_heads=6),
    "vit_t": dict(embed_dim=192, depth=4, num_heads=3),
}


def to_three_channels(x: torch.Tensor, order: Optional[Sequence[int]] = None, nchan: int = 3) -> torch.Tensor:
    """Bring a [B, C, H, W] (or [C, H, W]) image to exactly ``nchan`` channels for the ViT.

    ``order`` optionally selects / permutes input channels first (e.g. ``[1, 0]`` to put the nuclear
    channel first; duplicates are allowed).  Missing channels are zero-filled, surplus channels are
    dropped, as Cellpose-SAM does.  The network is trained to be invariant to channel order; this helper
    only provides the fixed-size input.
    """
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected [B, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    if order is not None:
        idx = [int(i) for i in order]
        if any(i < 0 or i >= x.shape[1] for i in idx):
            raise ValueError(f"channel order {idx} out of range for {x.shape[1]} channels")
        x = x[:, idx]
    c = x.shape[1]
    if c > nchan:
        x = x[:, :nchan]
    elif c < nchan:
        x = torch.cat([x, x.new_zeros((x.shape[0], nchan - c) + tuple(x.shape[2:]))], dim=1)
    return x[0] if squeeze else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a [B, C, H, W] map (SAM's ``LayerNorm2d``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) * torch.rsqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class _PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fewer input channels than the kernel has: use the leading kernel slices (as Cellpose-SAM does)
        w = self.proj.weight[:, : x.shape[1]]
        return F.conv2d(x, w, self.proj.bias, stride=self.proj.stride).permute(0, 2, 3, 1)  # B H W C


def _resample_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a [L, C] relative-position table to ``length`` rows (SAM's get_rel_pos)."""
    if table.shape[0] == length:
        return table
    t = F.interpolate(table.T[None], size=length, mode="linear")
    return t[0].T


def _rel_pos_index(size: int, device: torch.device) -> torch.Tensor:
    r = torch.arange(size, device=device)
    return r[:, None] - r[None, :] + (size - 1)


class _Attention(nn.Module):
    """Multi-head global self-attention with SAM's decomposed relative position bias."""

    def __init__(self, dim: int, num_heads: int, rel_pos_len: Optional[int]) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.use_rel_pos = rel_pos_len is not None
        if self.use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(int(rel_pos_len), head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(int(rel_pos_len), head_dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        nh = self.num_heads
        qkv = self.qkv(x).reshape(B, H * W, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, nh, HW, hd]
        bias = None
        if self.use_rel_pos:
            Rh = _resample_rel_pos(self.rel_pos_h, 2 * H - 1)[_rel_pos_index(H, x.device)]  # [H, H, hd]
            Rw = _resample_rel_pos(self.rel_pos_w, 2 * W - 1)[_rel_pos_index(W, x.device)]  # [W, W, hd]
            rq = q.reshape(B, nh, H, W, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", rq, Rh.to(rq.dtype))
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", rq, Rw.to(rq.dtype))
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, nh, H * W, H * W)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(y.transpose(1, 2).reshape(B, H, W, C))


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rel_pos_len: Optional[int]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, num_heads, rel_pos_len)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Encoder(nn.Module):
    """SAM ``ImageEncoderViT`` (global attention everywhere), parameter names preserved."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float, out_chans: int, rel_pos_len: List[Optional[int]]) -> None:
        super().__init__()
        grid = img_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.patch_embed = _PatchEmbed(in_chans, embed_dim, patch_size)
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, mlp_ratio, rel_pos_len[i]) for i in range(depth))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


class ViT(nn.Module):
    """Cellpose-SAM style ViT segmentation network.

    Args:
        img_size: input side (the position embeddings cover ``img_size // patch_size`` squared tokens).
        patch_size: patch side (Cellpose-SAM: 8).
        in_chans: input channels (3); fewer channels at run time use the leading kernel slices.
        embed_dim, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP expansion.
        out_chans: neck output channels (256).
        nout: output maps (3: dY, dX, cellprob logit).
        rel_pos_len: length of each block's relative-position tables: an int for all blocks, a per-block
            list (``None`` entries = no relative position term), or None for the grid-native ``2*grid-1``.
        use_rel_pos: False to build blocks without relative position terms.
        diam_mean: mean training diameter (non-trainable parameter, as in Cellpose).

    ``forward(x [B, C<=in_chans, img_size, img_size]) -> (out [B, nout, H, W], style [B, out_chans])``.
    """

    def __init__(self, img_size: int = 256, patch_size: int = 8, in_chans: int = 3, embed_dim: int = 384,
                 depth: int = 6, num_heads: int = 6, mlp_ratio: float = 4.0, out_chans: int = 256, nout: int = 3,
                 rel_pos_len: Union[None, int, Sequence[Optional[int]]] = None, use_rel_pos: bool = True,
                 diam_mean: float = 30.0) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        grid = img_size // patch_size
        if not use_rel_pos:
            lens: List[Optional[int]] = [None] * depth
        elif rel_pos_len is None:
            lens = [2 * grid - 1] * depth
        elif isinstance(rel_pos_len, int):
            lens = [int(rel_pos_len)] * depth
        else:
            lens = [None if v is None else int(v) for v in rel_pos_len]
            if len(lens) != depth:
                raise ValueError(f"rel_pos_len has {len(lens)} entries for {depth} blocks")
        self._arch: Dict[str, Any] = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                          embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                          mlp_ratio=float(mlp_ratio), out_chans=out_chans, nout=nout,
                                          rel_pos_len=lens, use_rel_pos=use_rel_pos)
        self.img_size = img_size
        self.patch_size = patch_size
        self.nchan = in_chans
        self.nout = nout
        # parameter registration order follows Cellpose-SAM so state_dict key order matches too
        self.diam_labels = nn.Parameter(torch.full((1,), float(diam_mean)), requires_grad=False)
        self.diam_mean = nn.Parameter(torch.full((1,), float(diam_mean)), requires_grad=False)
        self.encoder = _Encoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                out_chans, lens)
        self.out = nn.Conv2d(out_chans, nout * patch_size ** 2, kernel_size=1)
        self.W2 = nn.Parameter(torch.eye(nout * patch_size ** 2).reshape(nout * patch_size ** 2, nout,
                                                                           patch_size, patch_size),
                               requires_grad=False)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ViT":
        """Build ``vit_l`` (Cellpose-SAM), ``vit_s`` or ``vit_t``; ``overrides`` replace preset kwargs."""
        if name not in VIT_PRESETS:
            raise ValueError(f"unknown ViT preset {name!r}; available: {sorted(VIT_PRESETS)}")
        kw = dict(VIT_PRESETS[name])
        kw.update(overrides)
        return cls(**kw)

    @property
    def diam_mean_value(self) -> float:
        """``diam_mean`` as a Python float."""
        return float(self.diam_mean.detach().float().cpu()[0])

    def arch(self) -> dict:
        """Constructor kwargs (without diam_mean) as stored in fastpose model files."""
        return {"type": "vit", **{k: (list(v) if isinstance(v, list) else v) for k, v in self._arch.items()}}

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, C, img_size, img_size] (C <= in_chans) -> ``(out [B, nout, H, W], style [B, 256])``."""
        if x.ndim != 4:
            raise ValueError(f"ViT expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        if x.shape[1] > self.nchan:
            raise ValueError(f"ViT takes at most {self.nchan} channels, got {x.shape[1]} (see to_three_channels)")
        if x.shape[2] != self.img_size or x.shape[3] != self.img_size:
            raise ValueError(f"ViT input must be {self.img_size}x{self.img_size} (its position embeddings are "
                             f"fixed), got {x.shape[2]}x{x.shape[3]}: tile the image")
        feat = self.encoder(x)
        y = F.conv_transpose2d(self.out(feat), self.W2.to(feat.dtype), stride=self.patch_size)
        s = feat.float().mean(dim=(2, 3))
        style = s / torch.linalg.vector_norm(s, dim=1, keepdim=True).clamp_min(1e-12)
        return y, style.to(y.dtype)
