"""Segmentation pipeline, top to bottom:

    image -> channels -> normalise -> resize to the model's cell diameter -> tiles -> network
          -> blend (un-flip, taper) -> resize back -> track -> cluster -> flow QC -> clean-up -> masks

``segment(images, model=...)`` is the one-call entry point; :class:`Segmenter` keeps a loaded model for
reuse across calls (and across the images of a screen).  On a GPU every step after the upload stays on
the device: tiles, network, blending, resizing and the native mask recovery work on CUDA tensors.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

import fastpose.core as fc

log = logging.getLogger("fastpose.pipeline")

ArrayLike = Any


@dataclass
class SegmentResult:
    """What :func:`segment` returns for one image."""

    masks: np.ndarray                       #: labels, uint16 (uint32 beyond 65535 masks), image shape
    flows: Optional[np.ndarray] = None      #: (ndim, *shape) float32 flows at network scale (5x unit)
    cellprob: Optional[np.ndarray] = None   #: (*shape) float32 cell-probability logits
    styles: Optional[np.ndarray] = None     #: style vector of the image
    diameter: Optional[float] = None        #: diameter used (given or estimated), pixels
    info: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Input preparation
# --------------------------------------------------------------------------------------------------

def to_channels_first(image: ArrayLike, channel_axis: Optional[int], z_axis: Optional[int],
                      channels: Optional[Sequence[int]], nchan: int, do_3D: bool) -> np.ndarray:
    """Return a float32 array (C, Y, X) or (C, Z, Y, X) with exactly ``nchan`` channels.

    ``channel_axis``/``z_axis`` name the axes explicitly (no guessing): a 2D array is (Y, X); a 3D array
    needs ``channel_axis`` (a multichannel 2D image) or ``z_axis`` (a volume); a 4D array needs both.
    ``channels`` picks which input channels feed the network, in order (default: the first ``nchan``);
    missing channels are zero (Cellpose's convention for an absent nuclear channel).
    """
    a = np.asarray(image)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise ValueError(f"image must be a numeric array, got dtype {a.dtype}")
    if a.ndim < 2 or a.ndim > 4:
        raise ValueError(f"image must have 2 to 4 dimensions, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"image is empty (shape {a.shape})")
    axes = list(range(a.ndim))
    ca = None if channel_axis is None else _axis(channel_axis, a.ndim, "channel_axis")
    za = None if z_axis is None else _axis(z_axis, a.ndim, "z_axis")
    if ca is not None and ca == za:
        raise ValueError("channel_axis and z_axis must differ")
    spatial = [ax for ax in axes if ax not in (ca, za)]
    if len(spatial) != 2:
        hint = ("for a 3D array pass channel_axis=... (a multichannel 2D image) or z_axis=... (a volume)"
                if a.ndim == 3 else "for a 4D array pass both channel_axis and z_axis")
        raise ValueError(f"image of shape {a.shape}: cannot tell the axes apart; {hint}")
    order = ([ca] if ca is not None else []) + ([za] if za is not None else []) + spatial
    a = np.transpose(a, order)
    if ca is None:
        a = a[None]
    if do_3D and za is None:
        raise ValueError("do_3D=True needs a volume: pass z_axis")
    if not do_3D and za is not None:
        raise ValueError("a volume (z_axis given) needs do_3D=True or stitch_threshold > 0 "
                         "(or segment its planes one by one)")
    picks = list(range(min(nchan, a.shape[0]))) if channels is None else list(channels)
    if len(picks) > nchan:
        raise ValueError(f"channels={list(channels)} selects {len(picks)} channels; the model takes {nchan}")
    out = np.zeros((nchan, *a.shape[1:]), np.float32)
    for i, c in enumerate(picks):
        if c is None or c < 0:
            continue
        if c >= a.shape[0]:
            raise ValueError(f"channels={list(channels)}: the image has only {a.shape[0]} channel(s)")
        out[i] = a[c]
    return out


def _axis(ax: int, ndim: int, name: str) -> int:
    if not -ndim <= ax < ndim:
        raise ValueError(f"{name}={ax} is out of range for a {ndim}D image")
    return ax % ndim


def _lerp(a: float, b: float, t: float) -> float:
    # NumPy's linear interpolation between neighbouring order statistics (numpy/lib/_function_base_impl.py)
    return b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t


def percentiles(ch: np.ndarray, qs: Sequence[float]) -> List[float]:
    """``np.percentile(ch, qs)`` (method "linear"), exactly, in O(N) for integer-valued channels.

    Microscopy images are mostly 8/16-bit integers; for those the order statistics come from a histogram
    (``np.bincount``) instead of a partial sort, about 4x faster on a 1080x1080 channel.  Anything else
    (fractional values, negative or huge ranges) goes to ``np.percentile``.
    """
    flat = ch.reshape(-1)
    n = flat.size
    if n == 0:
        raise ValueError("cannot normalise an empty image")
    lo, hi = float(flat.min()), float(flat.max())
    if not (lo >= 0 and hi <= 65535):  # negative, large, or NaN
        return [float(v) for v in np.percentile(flat, qs)]
    iv = flat.astype(np.int32)
    if not np.array_equal(iv, flat):
        return [float(v) for v in np.percentile(flat, qs)]
    cum = np.cumsum(np.bincount(iv, minlength=int(hi) + 1))
    out = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        k = int(np.floor(pos))
        a = float(np.searchsorted(cum, k, side="right"))           # k-th smallest (0-based)
        b = float(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
        out.append(_lerp(a, b, pos - k))
    return out


def normalize_percentile(x: np.ndarray, lower: float = 1.0, upper: float = 99.0, invert: bool = False) -> np.ndarray:
    """Scale each channel (axis 0) so its ``lower``/``upper`` percentiles map to 0 and 1 (Cellpose).

    Channels that are constant (or all zero) are left at 0 instead of dividing by zero.
    """
    x = x.astype(np.float32, copy=True)
    for c in range(x.shape[0]):
        ch = x[c]
        if not np.isfinite(ch).all():
            raise ValueError("image contains NaN or Inf")
        lo, hi = (np.float64(v) for v in percentiles(ch, [lower, upper]))
        if hi - lo > 1e-3 * max(abs(hi), 1e-12) and hi > lo:
            ch -= lo
            ch /= (hi - lo)
            if invert:
                ch *= -1
                ch += 1
        else:
            ch[...] = 0
    return x


def normalize_tiles(x: np.ndarray, blocksize: int = 128, lower: float = 1.0, upper: float = 99.0,
                    invert: bool = False) -> np.ndarray:
    """Tile-wise percentile normalisation for unevenly lit images (Cellpose's ``tile_norm_blocksize``).

    The last two axes are cut into blocks of about ``blocksize`` pixels; each block's ``lower``/``upper``
    percentiles form coarse maps that are smoothly (bilinearly) resized to the image and used in place of the
    global percentiles of :func:`normalize_percentile`.
    """
    import torch
    import torch.nn.functional as F

    if blocksize < 8:
        raise ValueError(f"tile normalisation block size must be >= 8, got {blocksize}")
    x = x.astype(np.float32, copy=True)
    if not np.isfinite(x).all():
        raise ValueError("image contains NaN or Inf")
    Ly, Lx = x.shape[-2:]
    ny, nx = max(1, round(Ly / blocksize)), max(1, round(Lx / blocksize))
    ys = np.linspace(0, Ly, ny + 1).astype(int)
    xs = np.linspace(0, Lx, nx + 1).astype(int)
    flat = x.reshape(-1, Ly, Lx)
    for c in range(flat.shape[0]):
        lo = np.zeros((ny, nx), np.float32)
        hi = np.zeros((ny, nx), np.float32)
        for j in range(ny):
            for i in range(nx):
                lo[j, i], hi[j, i] = np.percentile(flat[c, ys[j]:ys[j + 1], xs[i]:xs[i + 1]], [lower, upper])
        maps = torch.from_numpy(np.stack([lo, hi]))[None]
        maps = F.interpolate(maps, size=(Ly, Lx), mode="bilinear", align_corners=False)[0].numpy()
        rng = maps[1] - maps[0]
        ok = rng > 1e-6
        flat[c] = np.where(ok, (flat[c] - maps[0]) / np.where(ok, rng, 1.0), 0.0)
        if invert:
            flat[c] = 1.0 - flat[c]
    return flat.reshape(x.shape)


# --------------------------------------------------------------------------------------------------
# The segmenter
# --------------------------------------------------------------------------------------------------

class Segmenter:
    """A loaded model (or an ensemble) ready to segment many images.

    Parameters
    ----------
    model : str, path, torch.nn.Module or a list of them
        A bundled model name, a model file (fastpose's format or a Cellpose checkpoint), a network, or a
        list for an ensemble (flows and probabilities averaged, as in the Cellpose paper).
    device : "auto", "cpu" or "cuda"
        Where the network and the core run ("auto": the GPU when usable).
    precision : "auto", "fp32", "fp16" or "bf16"
        Network precision on the GPU ("auto" = fp16 there, fp32 on the CPU).
    batch_size : int
        Tiles per network batch.
    backend : "torch", "compile", "onnxruntime" or "tensorrt"
        How the network runs (see :mod:`fastpose.deploy.backends`): eager PyTorch (default), ``torch.compile``,
        an ONNX export in onnxruntime, or a TensorRT engine (GPU; precision from ``precision``).
    """

    def __init__(self, model: Any = "nuclei", device: str = "auto", precision: str = "auto",
                 batch_size: int = 8, backend: str = "torch") -> None:
        import torch

        from .deploy.backends import check_backend, make_runner
        from .models import load_model

        check_backend(backend)
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but PyTorch sees no CUDA GPU")
        use_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda") if use_gpu else torch.device("cpu")
        # the core runs on the GPU only when fastpose was built with CUDA; otherwise tensors come back
        self.core_device = "cuda" if use_gpu and fc.cuda_available() else "cpu"
        if precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
        self.precision = ("fp16" if use_gpu else "fp32") if precision == "auto" else precision
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = int(batch_size)
        models = model if isinstance(model, (list, tuple)) else [model]
        if not models:
            raise ValueError("model list is empty")
        self.nets: List[Any] = []
        self.metas: List[Dict[str, Any]] = []
        for m in models:
            if isinstance(m, torch.nn.Module):
                net, meta = m, dict(getattr(m, "fastpose_meta", {}) or {})
            else:
                net, meta = load_model(m, device=self.device)
            net = net.to(self.device).eval()
            self.nets.append(net)
            self.metas.append(meta)
        arch = self.metas[0].get("arch", {}) or {}
        self.kind = arch.get("type", "unet")
        self.nchan = int(self.metas[0].get("nchan") or _infer_nchan(self.nets[0]))
        self.bsize = int(getattr(self.nets[0], "img_size", 256)) if self.kind == "vit" else 224
        self.diam_mean = float(self.metas[0].get("diam_mean") or getattr(self.nets[0], "diam_mean_value", 30.0))
        self.size_model = self.metas[0].get("size_model")
        self.backend = backend
        #: what run_net calls per network: the module itself for "torch", else a backend runner
        self.runners = [make_runner(net, backend, self.device, self.batch_size, self.precision) for net in self.nets]

    # ---- network step -------------------------------------------------------------------------
    def run_net(self, imgs: "Any", augment: bool = False, tile_overlap: float = 0.1) -> Tuple[Any, Any]:
        """Network outputs for a batch of equally sized images.

        Args: imgs: torch tensor [B, C, Y, X] float32 (normalised).
        Returns: (y [B, 3, Y, X] float32 on the core's device: dY, dX, cellprob logit; styles [B, S]).
        """
        import torch
        import torch.nn.functional as F

        B, C, Ly, Lx = imgs.shape
        # the U-Net halves the resolution three times: pad to a multiple of 16 (Cellpose does the same);
        # the ViT takes tiles of exactly its input size: pad smaller images up to it
        py, px = (-Ly) % 16, (-Lx) % 16
        if self.kind == "vit":
            py, px = max(0, self.bsize - Ly), max(0, self.bsize - Lx)
        core_dev = torch.device("cuda") if self.core_device == "cuda" else torch.device("cpu")
        x = imgs.to(core_dev)
        if py or px:
            x = F.pad(x, (px // 2, px - px // 2, py // 2, py - py // 2))
        tiles, grid = fc.make_tiles(x.contiguous(), bsize=self.bsize, overlap=tile_overlap, augment=augment)
        nt = tiles.shape[1]
        flat = tiles.reshape(B * nt, C, tiles.shape[-2], tiles.shape[-1])
        out = torch.empty((B * nt, 3, flat.shape[-2], flat.shape[-1]), dtype=torch.float32, device=core_dev)
        styles = None
        amp = self.device.type == "cuda" and self.precision in ("fp16", "bf16")
        dt = torch.float16 if self.precision == "fp16" else torch.bfloat16
        with torch.inference_mode():
            for i in range(0, flat.shape[0], self.batch_size):
                xb = flat[i:i + self.batch_size].to(self.device, non_blocking=True)
                acc = None
                sacc = None
                for net in self.runners:
                    with torch.autocast(self.device.type, dtype=dt, enabled=amp):
                        yb, sb = net(xb)
                    yb = yb[:, :3].float()
                    acc = yb if acc is None else acc + yb
                    sacc = sb.float() if sacc is None else sacc + sb.float()
                acc = acc / len(self.nets)
                out[i:i + self.batch_size] = acc.to(core_dev)
                sb = (sacc / len(self.nets)).to(core_dev)
                if styles is None:
                    styles = torch.zeros((B * nt, sb.shape[1]), device=core_dev)
                styles[i:i + self.batch_size] = sb
        y = fc.blend_tiles(out.reshape(B, nt, 3, out.shape[-2], out.shape[-1]), grid, flow_channels=(0, 1))
        y = y[:, :, py // 2: py // 2 + Ly, px // 2: px // 2 + Lx]
        st = styles.reshape(B, nt, -1).mean(1)
        st = st / torch.clamp(torch.linalg.vector_norm(st, dim=1, keepdim=True), min=1e-12)
        return y, st

    # ---- 2D -----------------------------------------------------------------------------------
    def _flows_2d(self, x: np.ndarray, rescale: float, augment: bool, tile_overlap: float):
        """x: (C, Y, X) or a batch (B, C, Y, X) of equally sized normalised images.

        Returns (dP [(B,) 2, Y, X], cellprob [(B,) Y, X], style [(B,) S]) tensors at input size.
        """
        import torch
        import torch.nn.functional as F

        single = x.ndim == 3
        t = torch.from_numpy(x[None] if single else x).to(self.device)
        Ly, Lx = x.shape[-2:]
        if rescale != 1.0:
            ny, nx = max(1, int(round(Ly * rescale))), max(1, int(round(Lx * rescale)))
            t = F.interpolate(t, size=(ny, nx), mode="bilinear", align_corners=False)
        y, st = self.run_net(t, augment, tile_overlap)
        if rescale != 1.0:
            y = F.interpolate(y, size=(Ly, Lx), mode="bilinear", align_corners=False)
        dP, prob = y[:, :2].contiguous(), y[:, 2].contiguous()
        return (dP[0], prob[0], st[0]) if single else (dP, prob, st)

    def estimate_diameter(self, x: np.ndarray, augment: bool = False, tile_overlap: float = 0.1) -> float:
        """Cellpose's two-step size estimate: style -> diameter regression, then the median diameter of
        a first segmentation at that size.  Needs a model file with a size model."""
        if not self.size_model:
            raise ValueError("this model has no size model: pass diameter= (or 0 for no resizing)")
        _, _, st = self._flows_2d(x, 1.0, augment, tile_overlap)
        sm = self.size_model
        s = st.detach().float().cpu().numpy()
        A = np.asarray(sm["A"], np.float64)
        smean = np.asarray(sm["smean"], np.float64)
        d0 = float(np.exp(A @ (s - smean) + np.log(self.diam_mean) + float(sm["ymean"])))
        d0 = float(np.clip(d0, 5.0, 500.0))
        masks = self._segment_2d(x, d0, augment, tile_overlap, {}, False).masks
        d1 = median_diameter(masks)
        return d1 if d1 > 0 else d0

    def _rescale(self, diameter: Optional[float]) -> float:
        if self.kind == "unet" and diameter is not None and diameter > 0:
            return self.diam_mean / float(diameter)
        return 1.0

    def _masks_2d(self, dP: Any, prob: Any, st: Any, rescale: float, diameter: Optional[float],
                  mask_kw: Dict[str, Any], return_flows: bool) -> SegmentResult:
        """Mask recovery of one image from its network outputs (runs on the core's device)."""
        kw = dict(mask_kw)
        if kw.get("niter") is None:
            kw["niter"] = int(round(200 / min(rescale, 1.0)))
        masks = _to_numpy_labels(fc.compute_masks(dP, prob, **kw))
        res = SegmentResult(masks=masks, styles=st.detach().float().cpu().numpy(), diameter=diameter)
        if return_flows:
            res.flows = dP.float().cpu().numpy()
            res.cellprob = prob.float().cpu().numpy()
        return res

    def _segment_2d(self, x: np.ndarray, diameter: Optional[float], augment: bool, tile_overlap: float,
                    mask_kw: Dict[str, Any], return_flows: bool) -> SegmentResult:
        rescale = self._rescale(diameter)
        dP, prob, st = self._flows_2d(x, rescale, augment, tile_overlap)
        return self._masks_2d(dP, prob, st, rescale, diameter, mask_kw, return_flows)

    # ---- 3D -----------------------------------------------------------------------------------
    def _segment_3d(self, x: np.ndarray, diameter: Optional[float], anisotropy: Optional[float], augment: bool,
                    tile_overlap: float, mask_kw: Dict[str, Any], return_flows: bool) -> SegmentResult:
        """x: (C, Z, Y, X). The 2D network on XY, ZY and ZX slices; flows averaged; tracked in 3D."""
        import torch
        import torch.nn.functional as F

        C, Lz, Ly, Lx = x.shape
        rescale = 1.0
        if self.kind == "unet" and diameter is not None and diameter > 0:
            rescale = self.diam_mean / float(diameter)
        zscale = rescale * (anisotropy if anisotropy else 1.0)
        vol = torch.from_numpy(x).to(self.device)
        size = (max(1, round(Lz * zscale)), max(1, round(Ly * rescale)), max(1, round(Lx * rescale)))
        if size != (Lz, Ly, Lx):
            vol = F.interpolate(vol[None], size=size, mode="trilinear", align_corners=False)[0]
        Z, Y, X = vol.shape[1:]
        dev = torch.device("cuda") if self.core_device == "cuda" else torch.device("cpu")
        dZ = torch.zeros((Z, Y, X), device=dev)
        dY = torch.zeros_like(dZ)
        dX = torch.zeros_like(dZ)
        prob = torch.zeros_like(dZ)
        styles = []
        # XY planes: (dY, dX); ZY planes (x fixed): (dZ, dY); ZX planes (y fixed): (dZ, dX)
        for view in ("xy", "zy", "zx"):
            if view == "xy":
                stack = vol.permute(1, 0, 2, 3)          # [Z, C, Y, X]
            elif view == "zy":
                stack = vol.permute(3, 0, 1, 2)          # [X, C, Z, Y]
            else:
                stack = vol.permute(2, 0, 1, 3)          # [Y, C, Z, X]
            stack = stack.contiguous()
            outs = []
            for i in range(0, stack.shape[0], max(1, self.batch_size)):
                y, st = self.run_net(stack[i:i + self.batch_size], augment, tile_overlap)
                outs.append(y)
                styles.append(st)
            y = torch.cat(outs)                           # [n, 3, a, b]
            if view == "xy":
                dY += y[:, 0]; dX += y[:, 1]; prob += y[:, 2]                   # noqa: E702
            elif view == "zy":
                y = y.permute(1, 2, 3, 0)                 # [3, Z, Y, X]
                dZ += y[0]; dY += y[1]; prob += y[2]                            # noqa: E702
            else:
                y = y.permute(1, 2, 0, 3)                 # [3, Z, Y, X]
                dZ += y[0]; dX += y[1]; prob += y[2]                            # noqa: E702
        dP = torch.stack([dZ / 2, dY / 2, dX / 2])
        prob = prob / 3
        if (Z, Y, X) != (Lz, Ly, Lx):
            both = torch.cat([dP, prob[None]])[None]
            both = F.interpolate(both, size=(Lz, Ly, Lx), mode="trilinear", align_corners=False)[0]
            dP, prob = both[:3].contiguous(), both[3].contiguous()
        kw = dict(mask_kw)
        if kw.get("niter") is None:
            kw["niter"] = int(round(200 / min(rescale, 1.0)))
        masks = _to_numpy_labels(fc.compute_masks(dP, prob, **kw))
        st = torch.cat(styles).mean(0)
        res = SegmentResult(masks=masks, styles=st.float().cpu().numpy(), diameter=diameter)
        if return_flows:
            res.flows = dP.float().cpu().numpy()
            res.cellprob = prob.float().cpu().numpy()
        return res

    # ---- public -------------------------------------------------------------------------------
    def _prepare(self, image: ArrayLike, channel_axis: Optional[int], z_axis: Optional[int],
                 channels: Optional[Sequence[int]], vol3: bool, normalize: Union[bool, str], invert: bool) -> np.ndarray:
        x = to_channels_first(image, channel_axis, z_axis, channels, self.nchan, vol3)
        if normalize == "tile":
            return normalize_tiles(x, invert=invert)
        if normalize:
            return normalize_percentile(x, invert=invert)
        if not np.isfinite(x).all():
            raise ValueError("image contains NaN or Inf")
        return x

    @staticmethod
    def _check_options(tile_overlap: float, anisotropy: Optional[float], stitch_threshold: float) -> None:
        if not 0.0 <= tile_overlap <= 0.5:
            raise ValueError(f"tile_overlap must be in [0, 0.5], got {tile_overlap}")
        if anisotropy is not None and not anisotropy > 0:
            raise ValueError(f"anisotropy must be > 0, got {anisotropy}")
        if stitch_threshold < 0:
            raise ValueError("stitch_threshold must be >= 0")

    def segment(self, image: ArrayLike, *, channel_axis: Optional[int] = None, z_axis: Optional[int] = None,
                channels: Optional[Sequence[int]] = None, diameter: Optional[float] = None, do_3D: bool = False,
                anisotropy: Optional[float] = None, stitch_threshold: float = 0.0, augment: bool = False,
                tile_overlap: float = 0.1, normalize: Union[bool, str] = True, invert: bool = False,
                flow_threshold: float = 0.4, cellprob_threshold: float = 0.0, min_size: int = 15,
                niter: Optional[int] = None, return_flows: bool = False) -> SegmentResult:
        """Segment one image; see :func:`segment` for the parameters."""
        self._check_options(tile_overlap, anisotropy, stitch_threshold)
        vol3 = do_3D or stitch_threshold > 0
        x = self._prepare(image, channel_axis, z_axis, channels, vol3, normalize, invert)
        mask_kw = dict(flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold, min_size=min_size,
                       niter=niter)
        if diameter is None:
            if self.kind == "vit" or not self.size_model:
                diameter = 0.0  # ViTs need no diameter; without a size model: no resizing
            else:
                plane = x if x.ndim == 3 else x[:, x.shape[1] // 2]
                diameter = self.estimate_diameter(plane, augment, tile_overlap)
                log.info("estimated diameter: %.1f px", diameter)
        if do_3D:
            return self._segment_3d(x, diameter, anisotropy, augment, tile_overlap, mask_kw, return_flows)
        if stitch_threshold > 0:
            planes = [self._segment_2d(x[:, z], diameter, augment, tile_overlap, mask_kw, return_flows)
                      for z in range(x.shape[1])]
            masks = stitch3D(np.stack([p.masks for p in planes]), stitch_threshold)
            res = SegmentResult(masks=masks, diameter=diameter,
                                styles=np.mean([p.styles for p in planes], axis=0))
            if return_flows:
                res.cellprob = np.stack([p.cellprob for p in planes])
                res.flows = np.stack([p.flows for p in planes], axis=1)
            return res
        return self._segment_2d(x, diameter, augment, tile_overlap, mask_kw, return_flows)

    def segment_many(self, images: Iterable[ArrayLike], *, channel_axis: Optional[int] = None,
                     channels: Optional[Sequence[int]] = None, diameter: Optional[float] = None,
                     augment: bool = False, tile_overlap: float = 0.1, normalize: Union[bool, str] = True, invert: bool = False,
                     flow_threshold: float = 0.4, cellprob_threshold: float = 0.0, min_size: int = 15,
                     niter: Optional[int] = None, return_flows: bool = False, **kwargs: Any
                     ) -> Iterator[SegmentResult]:
        """Segment a stream of 2D images for throughput, yielding results in input order.

        Consecutive images of the same shape are pooled so their tiles share network batches (up to
        ``batch_size`` tiles); while the network runs on one group, a worker thread recovers the masks
        of the previous group (native code, GIL released); on a GPU the next group's network is queued first
        and the masks are recovered on a second CUDA stream from the same host thread.  Only a
        couple of groups are held in memory, so an iterator of any length streams.  3D options
        (``z_axis``, ``do_3D``, ``stitch_threshold``) and ``diameter=None`` fall back to one image at a
        time.
        """
        import torch

        if diameter is None and (self.kind == "vit" or not self.size_model):
            diameter = 0.0
        if kwargs.get("do_3D") or kwargs.get("stitch_threshold") or kwargs.get("z_axis") is not None \
                or diameter is None:
            for img in images:
                yield self.segment(img, channel_axis=channel_axis, channels=channels, diameter=diameter,
                                   augment=augment, tile_overlap=tile_overlap, normalize=normalize, invert=invert,
                                   flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold,
                                   min_size=min_size, niter=niter, return_flows=return_flows, **kwargs)
            return
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        self._check_options(tile_overlap, None, 0.0)
        mask_kw = dict(flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold, min_size=min_size,
                       niter=niter)
        rescale = self._rescale(diameter)
        on_gpu = self.core_device == "cuda"
        side = torch.cuda.Stream() if on_gpu else None

        def finish(dP, prob, st, ready):
            if side is None:
                return [self._masks_2d(dP[i], prob[i], st[i], rescale, diameter, mask_kw, return_flows)
                        for i in range(dP.shape[0])]
            with torch.cuda.stream(side):
                side.wait_event(ready)
                return [self._masks_2d(dP[i], prob[i], st[i], rescale, diameter, mask_kw, return_flows)
                        for i in range(dP.shape[0])]

        def prepared() -> Iterator[np.ndarray]:
            # channel selection + normalisation on a few threads (NumPy releases the GIL), a bounded window
            # ahead of the network so the CPU work overlaps the GPU's
            workers = max(1, min(4, (os.cpu_count() or 2) - 1))
            with cf.ThreadPoolExecutor(max_workers=workers) as prep:
                window: Deque[cf.Future] = collections.deque()
                for img in images:
                    window.append(prep.submit(self._prepare, img, channel_axis, None, channels, False, normalize,
                                              invert))
                    if len(window) > 2 * workers:
                        yield window.popleft().result()
                while window:
                    yield window.popleft().result()

        def groups():
            group: List[np.ndarray] = []
            for x in prepared():
                if group and (x.shape != group[0].shape or len(group) >= self._group_size(x.shape)):
                    yield np.stack(group)
                    group = []
                group.append(x)
            if group:
                yield np.stack(group)

        if on_gpu:
            # one host thread: the network of group k+1 is queued on the main stream before the masks of group
            # k are recovered on the side stream, so the GPU runs both at once without CUDA calls from a
            # second host thread
            held: Optional[Tuple[Any, Any, Any, Any]] = None
            for xb in groups():
                dP, prob, st = self._flows_2d(xb, rescale, augment, tile_overlap)
                ready = torch.cuda.Event()
                ready.record()
                if held is not None:
                    yield from finish(*held)
                held = (dP, prob, st, ready)
            if held is not None:
                yield from finish(*held)
            return
        with cf.ThreadPoolExecutor(max_workers=1) as pool:  # CPU: native mask recovery releases the GIL
            pending: Optional[cf.Future] = None
            for xb in groups():
                dP, prob, st = self._flows_2d(xb, rescale, augment, tile_overlap)
                fut = pool.submit(finish, dP, prob, st, None)
                if pending is not None:
                    yield from pending.result()
                pending = fut
            if pending is not None:
                yield from pending.result()

    def _group_size(self, shape: Tuple[int, ...]) -> int:
        """Images per network call so their tiles fill about one batch (at least one image)."""
        from .core.tiles import plan_tiles

        pad = [s + (-s) % 16 for s in shape[-2:]]
        return max(1, self.batch_size // plan_tiles(pad[0], pad[1], self.bsize).count)


def _infer_nchan(net: Any) -> int:
    for p in net.parameters():
        if p.ndim == 4:
            return int(p.shape[1])
    return 2


def _to_numpy_labels(m: Any) -> np.ndarray:
    if isinstance(m, np.ndarray):
        return m
    a = m.cpu().numpy()
    mx = int(a.max()) if a.size else 0
    return a.astype(np.uint16 if mx <= 65535 else np.uint32)


def median_diameter(masks: np.ndarray) -> float:
    """Median over masks of the diameter of the disc with the same area (Cellpose's ``diameters``)."""
    counts = np.bincount(masks.ravel().astype(np.int64))[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    return float(np.median(np.sqrt(counts / np.pi) * 2))


def stitch3D(masks: np.ndarray, stitch_threshold: float = 0.25) -> np.ndarray:
    """Link 2D masks of consecutive planes into 3D objects when their IoU exceeds ``stitch_threshold``.

    Each mask of plane z+1 takes the label of the plane-z mask it overlaps best if that IoU is above the
    threshold, else a new label (Cellpose's ``utils.stitch3D``).
    """
    out = masks.astype(np.int64).copy()
    nxt = int(out[0].max()) + 1
    for z in range(1, out.shape[0]):
        prev, cur = out[z - 1], masks[z].astype(np.int64)
        new = np.zeros_like(cur)
        nc = int(cur.max())
        if nc == 0:
            out[z] = 0
            continue
        both = (prev > 0) & (cur > 0)
        iou_best = np.zeros(nc + 1)
        lab_best = np.zeros(nc + 1, np.int64)
        if both.any():
            npv = int(prev.max()) + 1
            key = cur[both] * npv + prev[both]
            pairs, inter = np.unique(key, return_counts=True)
            ci, pi = pairs // npv, pairs % npv
            ac = np.bincount(cur.ravel(), minlength=nc + 1)
            ap = np.bincount(prev.ravel(), minlength=npv)
            iou = inter / (ac[ci] + ap[pi] - inter)
            order = np.argsort(iou)
            iou_best[ci[order]] = iou[order]
            lab_best[ci[order]] = pi[order]
        mapping = np.zeros(nc + 1, np.int64)
        for c in range(1, nc + 1):
            if iou_best[c] > stitch_threshold:
                mapping[c] = lab_best[c]
            else:
                mapping[c] = nxt
                nxt += 1
        new = mapping[cur]
        out[z] = new
    mx = int(out.max())
    return out.astype(np.uint16 if mx <= 65535 else np.uint32)


def segment(images: Union[ArrayLike, Sequence[ArrayLike]], model: Any = "nuclei", *, device: str = "auto",
            precision: str = "auto", batch_size: int = 8, backend: str = "torch",
            **kwargs: Any) -> Union[SegmentResult, List[SegmentResult]]:
    """Segment one image or a list of images.

    Parameters
    ----------
    images : array or list of arrays
        2D (Y, X), multichannel 2D (with ``channel_axis``), or 3D (with ``z_axis``) images of any
        integer or float dtype.
    model : str, path, module or list
        Bundled model name, model file (fastpose or Cellpose checkpoint), network, or an ensemble list.
    device, precision, batch_size, backend
        See :class:`Segmenter`.
    channel_axis, z_axis : int, optional
        Which axis holds channels / Z.  Default: none (a plain 2D image).
    channels : sequence of int, optional
        Input channels fed to the network, in order (default the first ones); a missing second channel
        is zero.
    diameter : float or None
        Typical cell diameter in pixels; the image is resized so cells match the model's training size.
        None (default) estimates it with the model's size model (U-Net model files that have one; Cellpose's
        two-step estimate), and means no resizing for models without one and for ViTs; 0: no resizing.
    do_3D : bool
        Run the 2D network on XY, ZY and ZX slices, average the flows and track in 3D.
    anisotropy : float, optional
        Z sampling relative to XY (e.g. 2.0 when Z steps are twice the pixel size), 3D only.
    stitch_threshold : float
        > 0: segment planes in 2D and link them across Z by IoU above this value.
    augment : bool
        Flip test-time augmentation with 50% tile overlap.
    tile_overlap : float
        Tile overlap fraction without ``augment`` (default 0.1).
    normalize : bool or "tile"
        Percentile normalisation (1st/99th) per channel (True), per block of ~128 pixels smoothly
        interpolated, for unevenly lit images ("tile"), or none (False).
    invert : bool
        Invert intensities after normalisation.
    flow_threshold, cellprob_threshold, min_size, niter
        Mask recovery settings (see :func:`fastpose.core.compute_masks`); niter None: 200 at the model's
        scale.
    return_flows : bool
        Also return flows and cell probabilities in the result.

    Returns
    -------
    SegmentResult or list of SegmentResult
    """
    seg = model if isinstance(model, Segmenter) else Segmenter(model, device, precision, batch_size, backend)
    if isinstance(images, (list, tuple)):
        return list(seg.segment_many(images, **kwargs))
    return seg.segment(images, **kwargs)
