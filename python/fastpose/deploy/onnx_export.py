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
           "cached_ort_session", "check_onnx", "default_tile", "input_channels", "export_onnx", "model_hash",
           "normalize_tile", "onnx_cache_key", "ort_providers", "ort_session", "ort_session_options",
           "require_module", "require_onnxruntime", "writable_cache_dir"]

log = logging.getLogger("fastpose.deploy")

#: ONNX opset of the exports: 17 is read by TensorRT 8.6+ / 10.x and onnxruntime >= 1.14.
DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES: Tuple[str, str] = ("flows_cellprob", "style")

PathLike = Union[str, os.PathLike]
TileLike = Union[int, Sequence[int], None]

ORT_MISSING = ('the ONNX export / onnxruntime backend needs the packages "onnx" and "onnxruntime" (dependencies '
               'of fastpose: reinstall it, or pip install onnx onnxruntime; onnxruntime-gpu for CUDA)')


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


_warned_unwritable: set = set()


def writable_cache_dir(folder: PathLike) -> Path:
    """``folder`` (created) when files can be written there; else a per-user temporary folder, with a warning.

    An unwritable cache (a read-only home, a ``$FASTPOSE_CACHE`` on a read-only mount) must not stop
    segmentation: the export is then rebuilt once per temporary folder instead of reused across sessions.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        import tempfile

        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        return folder
    except OSError as e:
        import tempfile

        uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
        fallback = Path(tempfile.gettempdir()) / f"fastpose-cache-{uid}" / folder.name
        fallback.mkdir(parents=True, exist_ok=True)
        if str(folder) not in _warned_unwritable:
            _warned_unwritable.add(str(folder))
            log.warning("fastpose cache %s is not writable (%s): using %s instead (set FASTPOSE_CACHE to a "
                        "writable folder to keep exports between sessions)", folder, e, fallback)
        return fallback


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


def ort_session_options(threads: Optional[int] = None) -> Any:
    """onnxruntime session options of the CPU runs: every graph optimisation (``ORT_ENABLE_ALL``: constant
    folding, Conv+BatchNorm/activation fusion and the blocked NCHWc layout, ~1.5x over ``ORT_ENABLE_EXTENDED``
    on a U-Net), sequential execution (a U-Net is a chain: parallel operator scheduling only adds threads) and
    ``threads`` intra-op threads (default: PyTorch's thread count, i.e. the physical cores or ``OMP_NUM_THREADS``
    / ``torch.set_num_threads``).  Idle intra-op threads do not spin, so the post-processing that follows each
    batch gets the cores."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = int(threads) if threads else max(1, torch.get_num_threads())
    opts.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("FASTPOSE_ORT_SPIN", "0"))
    return opts


def ort_session(path: PathLike, device: Union[str, torch.device] = "cpu", threads: Optional[int] = None) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path`` on ``device`` (CPU fallback), with
    :func:`ort_session_options`."""
    ort = require_onnxruntime()
    return ort.InferenceSession(str(path), sess_options=ort_session_options(threads),
                                providers=ort_providers(device))


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

def _runtime_versions() -> str:
    """The versions an export depends on: PyTorch (the exporter) and onnxruntime (what reads it), when installed."""
    try:
        from importlib.metadata import version

        ort_v = version("onnxruntime")
    except Exception:  # noqa: BLE001 - not installed (or onnxruntime-gpu under another name): part of the key
        ort_v = getattr(__import__("sys").modules.get("onnxruntime"), "__version__", "none")
    return f"torch={torch.__version__}|ort={ort_v}"


def onnx_cache_key(digest: str, tile: Tuple[int, int], opset: int, dynamic_batch: bool = True) -> str:
    """Cache key of an export: hash of (model hash, tile, opset, batch mode, PyTorch and onnxruntime versions)."""
    s = f"{digest}|tile={tile[0]}x{tile[1]}|opset={int(opset)}|dyn={int(dynamic_batch)}|{_runtime_versions()}"
    return hashlib.sha256(s.encode()).hexdigest()[:24]


def cached_onnx(model: nn.Module, tile: TileLike = None, opset: int = DEFAULT_OPSET,
                cache_dir: Optional[PathLike] = None, digest: Optional[str] = None, rebuild: bool = False) -> Path:
    """Path of ``model``'s ONNX export (dynamic batch) in the cache, exporting it on first use.

    The file name is keyed by the state-dict hash, tile, opset and the PyTorch/onnxruntime versions
    (``<cache>/onnx/<key>-<H>x<W>.onnx``), so changed weights or runtimes never reuse a stale file; it is written
    atomically (:func:`fastpose.io.atomic_write`), so a crash never leaves a half-written file under that name.
    An unwritable cache folder falls back to a temporary one (:func:`writable_cache_dir`).  ``digest`` skips
    re-hashing when the caller has it; ``rebuild`` re-exports over an existing (e.g. corrupt) entry.
    """
    hw = normalize_tile(model, tile)
    digest = digest or model_hash(model)
    folder = writable_cache_dir(Path(cache_dir) if cache_dir is not None else cache_root() / "onnx")
    path = folder / f"{onnx_cache_key(digest, hw, opset)}-{hw[0]}x{hw[1]}.onnx"
    if path.is_file() and not rebuild:
        log.debug("ONNX cache hit: %s", path)
        return path
    return export_onnx(model, path, tile=hw, opset=opset, dynamic_batch=True)


def cached_ort_session(model: nn.Module, tile: TileLike = None, opset: int = DEFAULT_OPSET,
                       cache_dir: Optional[PathLike] = None, digest: Optional[str] = None,
                       device: Union[str, torch.device] = "cpu", threads: Optional[int] = None) -> Tuple[Any, Path]:
    """(onnxruntime session, export path) of ``model`` for ``tile``, through the export cache.

    A cache entry onnxruntime cannot load (truncated by a full disk, overwritten, from a broken runtime) is
    re-exported once, with a warning; a fresh export that still fails raises.
    """
    path = cached_onnx(model, tile, opset, cache_dir, digest)
    try:
        return ort_session(path, device, threads), path
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types for unreadable models
        log.warning("ONNX cache entry %s cannot be loaded (%s: %s): exporting it again", path, type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "")
    path = cached_onnx(model, tile, opset, cache_dir, digest, rebuild=True)
    return ort_session(path, device, threads), path
