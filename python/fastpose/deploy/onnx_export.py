"""ONNX export of fastpose networks (U-Net and ViT), and a check of the export against PyTorch.

The exported graph has one input and two outputs::

    image           float32 [B, C, T, T]   normalised tiles (B: dynamic when dynamic_batch=True)
    flows_cellprob  float32 [B, 3, T, T]   dY, dX, cell-probability logit
    style           float32 [B, S]         style vector

The tile size ``T`` is fixed (224 for U-Nets, as the segmenter tiles them; the ViT's ``img_size``, 256, for
ViTs), which is what TensorRT and graph-capturing runtimes want.  Files are written atomically (a temporary
file in the same folder, then ``os.replace``), so a crash never leaves a truncated model under the final name.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..io import atomic_write

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAMES", "OnnxCheck", "TileLike", "cache_root", "cached_onnx",
           "check_onnx", "default_tile", "input_channels", "export_onnx", "model_hash", "normalize_tile",
           "onnx_cache_key", "ort_providers", "ort_session", "require_module", "require_onnxruntime"]

log = logging.getLogger("fastpose.deploy")

#: ONNX opset of the exports: 17 is read by TensorRT 8.6+ / 10.x and onnxruntime >= 1.14.
DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES: Tuple[str, str] = ("flows_cellprob", "style")

PathLike = Union[str, os.PathLike]
TileLike = Union[int, Sequence[int], None]

ORT_MISSING = ('the ONNX export / onnxruntime backend needs the packages "onnx" and "onnxruntime": '
               'pip install "fastpose[onnx]" (or: pip install onnx onnxruntime; onnxruntime-gpu for CUDA)')


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------

def require_module(name: str, missing: str) -> Any:
    """Import and return the optional module ``name``; RuntimeError(``missing``, the install command) without it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise RuntimeError(missing) from e


def require_onnxruntime() -> Any:
    """Import and return ``onnxruntime``; RuntimeError with the install command when it is missing."""
    return require_module("onnxruntime", ORT_MISSING)


def cache_root() -> Path:
    """fastpose's cache folder: ``$FASTPOSE_CACHE`` when set, else ``~/.cache/fastpose``.

    ONNX exports go to ``<root>/onnx``, TensorRT engines and timing caches to ``<root>/trt``.
    """
    env = os.environ.get("FASTPOSE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastpose"


def model_hash(model: nn.Module) -> str:
    """SHA-256 (hex) of a network's class, architecture and state dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    arch = getattr(model, "arch", None)
    if callable(arch):
        h.update(repr(sorted(arch().items())).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def default_tile(model: nn.Module) -> int:
    """The tile the segmenter feeds a network: its model spec's ``tile`` (the ViT's ``img_size``, 224 for U-Nets)."""
    from ..models import spec_of

    return int(spec_of(model, getattr(model, "fastpose_meta", None)).tile)


def input_channels(model: nn.Module) -> int:
    """Input channels of ``model`` (its model spec's ``nchan``)."""
    from ..models import spec_of

    return int(spec_of(model, getattr(model, "fastpose_meta", None)).nchan)


def normalize_tile(model: nn.Module, tile: TileLike) -> Tuple[int, int]:
    """``tile`` (None, an int or (height, width)) as a validated (height, width) pair for ``model``."""
    if tile is None:
        tile = default_tile(model)
    if isinstance(tile, (int, np.integer)):
        hw = (int(tile), int(tile))
    else:
        vals = [int(v) for v in tile]
        if len(vals) != 2:
            raise ValueError(f"tile must be an int or (height, width), got {tile!r}")
        hw = (vals[0], vals[1])
    if min(hw) < 1:
        raise ValueError(f"tile must be positive, got {hw}")
    size = getattr(model, "img_size", None)
    if size and hw != (int(size), int(size)):
        raise ValueError(f"this ViT takes {size}x{size} tiles only (fixed position embeddings), got tile={hw}")
    mult = getattr(model, "size_multiple", None)
    if isinstance(mult, int) and (hw[0] % mult or hw[1] % mult):
        raise ValueError(f"tile {hw} must be a multiple of {mult} for this U-Net (e.g. 224 or 256)")
    return hw


class _Exportable(nn.Module):
    """(out, style) of a fastpose network as float32 ``flows_cellprob`` [B, 3, T, T] and ``style``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y, style = self.net(x)
        return y[:, :3].float(), style.float()


# --------------------------------------------------------------------------------------------------
# export and check
# --------------------------------------------------------------------------------------------------

def export_onnx(model: nn.Module, path: PathLike, tile: TileLike = None, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True) -> Path:
    """Export a U-Net or ViT to an ONNX file (written atomically) and return its path.

    Args:
        model: a fastpose network (``forward(x) -> (out, style)``); it is not modified (a float32 CPU copy
            in eval mode is exported).
        path: destination ``.onnx`` file.
        tile: tile side (int) or (height, width); default 224 for U-Nets, ``img_size`` (256) for ViTs.
        opset: ONNX opset (17 by default; TensorRT's parser reads 9..20-ish, onnxruntime >= 1.14 reads 17).
        dynamic_batch: make the batch axis dynamic (else it is fixed to 1).

    Uses PyTorch's TorchScript-based exporter (``dynamo=False``), which handles both networks at opset 17.
    """
    if not 9 <= int(opset) <= 21:
        raise ValueError(f"opset must be in 9..21, got {opset}")
    th, tw = normalize_tile(model, tile)
    net = copy.deepcopy(model).float().cpu().eval()
    wrapper = _Exportable(net).eval()
    example = torch.zeros((2 if dynamic_batch else 1, input_channels(net), th, tw), dtype=torch.float32)
    axes = {n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)} if dynamic_batch else None

    def write(tmp: Path) -> None:
        kw: Dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                  opset_version=int(opset), dynamic_axes=axes, do_constant_folding=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape checks in forward(): expected
            with torch.no_grad():
                try:
                    torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, **kw)
                except TypeError:  # PyTorch < 2.5 has no dynamo= argument (and only this exporter)
                    torch.onnx.export(wrapper, (example,), str(tmp), **kw)

    out = atomic_write(path, write, to_path=True)
    log.info("exported %s to %s (tile %dx%d, opset %d, %s batch)", type(model).__name__, out, th, tw, opset,
             "dynamic" if dynamic_batch else "fixed")
    return out


def ort_providers(device: Union[str, torch.device] = "cpu") -> List[str]:
    """onnxruntime execution providers: CUDA first when ``device`` is CUDA and onnxruntime has it."""
    ort = require_onnxruntime()
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(path: PathLike, device: Union[str, torch.device] = "cpu") -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path`` on ``device`` (CPU fallback)."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=ort_providers(device))


@dataclass
class OnnxCheck:
    """Result of :func:`check_onnx`: per output, the largest absolute error and that error relative to the
    largest PyTorch magnitude; ``ok`` when every output is within ``atol + rtol * max|torch|``."""

    max_abs: Dict[str, float] = field(default_factory=dict)
    rel: Dict[str, float] = field(default_factory=dict)
    ok: bool = True
    atol: float = 0.0
    rtol: float = 1e-4

    def __str__(self) -> str:
        parts = [f"{k}: max abs err {self.max_abs[k]:.3g}, rel {self.rel[k]:.3g}" for k in self.max_abs]
        return ("OK" if self.ok else "MISMATCH") + f" (rtol {self.rtol:g}, atol {self.atol:g}); " + "; ".join(parts)


def check_onnx(model: nn.Module, path: PathLike, atol: float = 0.0, rtol: float = 1e-4, batch: int = 2,
               seed: int = 0, raise_on_error: bool = True) -> OnnxCheck:
    """Compare onnxruntime (CPU) on ``path`` with the PyTorch fp32 network on random tiles.

    An output passes when ``max|onnx - torch| <= atol + rtol * max|torch|``.  Raises RuntimeError on a
    mismatch when ``raise_on_error`` (the default), else returns the :class:`OnnxCheck` either way.
    """
    sess = ort_session(path, "cpu")
    inp = sess.get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in inp.shape]
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(*shape, generator=g, dtype=torch.float32)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {inp.name: x.numpy()})))
    net = copy.deepcopy(model).float().cpu().eval()
    with torch.no_grad():
        ref = _Exportable(net)(x)
    res = OnnxCheck(atol=float(atol), rtol=float(rtol))
    for name, r in zip(OUTPUT_NAMES, ref):
        r = r.numpy()
        a = got[name]
        if a.shape != r.shape:
            raise RuntimeError(f"{path}: output {name} has shape {a.shape}, PyTorch gives {r.shape}")
        err = float(np.max(np.abs(a - r))) if r.size else 0.0
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        res.max_abs[name] = err
        res.rel[name] = err / max(scale, 1e-30)
        res.ok = res.ok and err <= atol + rtol * scale
    log.info("ONNX check of %s: %s", path, res)
    if raise_on_error and not res.ok:
        raise RuntimeError(f"{path} does not match the PyTorch network: {res}")
    return res


# --------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------

def onnx_cache_key(digest: str, tile: Tuple[int, int], opset: int, dynamic_batch: bool = True) -> str:
    """Cache key of an export: hash of (model hash, tile, opset, batch mode)."""
    s = f"{digest}|tile={tile[0]}x{tile[1]}|opset={int(opset)}|dyn={int(dynamic_batch)}"
    return hashlib.sha256(s.encode()).hexdigest()[:24]


def cached_onnx(model: nn.Module, tile: TileLike = None, opset: int = DEFAULT_OPSET,
                cache_dir: Optional[PathLike] = None, digest: Optional[str] = None) -> Path:
    """Path of ``model``'s ONNX export (dynamic batch) in the cache, exporting it on first use.

    The file name is keyed by the state-dict hash, tile and opset (``<cache>/onnx/<key>-<H>x<W>.onnx``), so
    changed weights never reuse a stale file.  ``digest`` skips re-hashing when the caller has it.
    """
    hw = normalize_tile(model, tile)
    digest = digest or model_hash(model)
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "onnx"
    path = folder / f"{onnx_cache_key(digest, hw, opset)}-{hw[0]}x{hw[1]}.onnx"
    if path.is_file():
        log.debug("ONNX cache hit: %s", path)
        return path
    return export_onnx(model, path, tile=hw, opset=opset, dynamic_batch=True)
