"""Network backends for :class:`fastpose.inference.Segmenter`.

A backend turns a loaded network into a callable ``runner(x) -> (y, style)`` with the network's own
contract (``x`` a torch tensor [B, C, H, W] on the segmenter's device; ``y`` [B, >=3, H, W]; ``style``
[B, S], torch tensors on the same device), so the tiled inference path is the same for all of them:

* ``"auto"`` (default): the fastest runtime that gives the same masks on the device: ``"onnxruntime"`` on
  the CPU (fp32, fastpose U-Nets and ViTs: 2.9x eager PyTorch on the bundled U-Net, 2 cores; see
  :func:`resolve_backend`), ``"torch"`` on a GPU (TensorRT stays opt-in) and everywhere else.
* ``"torch"``: the PyTorch module itself, eager (training always uses it).
* ``"compile"``: ``torch.compile`` -- ``mode="reduce-overhead"`` (CUDA graphs) on a GPU, ``mode="default"``
  on the CPU; the last, partial batch is zero-padded to the full batch size so shapes stay fixed.
* ``"onnxruntime"``: the network exported to ONNX (cached under ``$FASTPOSE_CACHE``/``~/.cache/fastpose``),
  run by onnxruntime, with the CUDA execution provider and I/O bound to torch CUDA tensors on a GPU.
* ``"tensorrt"``: a TensorRT engine built from that ONNX export (see :mod:`fastpose.deploy.trt`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .onnx_export import (DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAMES, PathLike, cached_ort_session, model_hash,
                          require_onnxruntime)

__all__ = ["BACKENDS", "CompiledNet", "OnnxRuntimeNet", "Runner", "check_backend", "make_runner", "resolve_backend"]

log = logging.getLogger("fastpose.deploy")

#: Backend names accepted by ``Segmenter(..., backend=...)`` and ``fastpose segment --backend``.
BACKENDS: Tuple[str, ...] = ("auto", "torch", "compile", "onnxruntime", "tensorrt")

Runner = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]

#: torch.compile backend used by the "compile" backend (``inductor``; ``aot_eager`` compiles in seconds
#: instead of minutes on a small CPU, at no speed gain -- handy for tests).
COMPILE_BACKEND_ENV = "FASTPOSE_COMPILE_BACKEND"


def check_backend(backend: str, device: Union[str, torch.device, None] = None) -> str:
    """Validate a backend name and that what it needs is installed; returns the name.

    ValueError for an unknown name (listing the choices); RuntimeError naming the install command when
    onnxruntime / TensorRT is missing, or when ``tensorrt`` is asked for without a CUDA device.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        require_onnxruntime()
    elif backend == "tensorrt":
        from .trt import require_tensorrt

        require_tensorrt()
        if device is not None and torch.device(device).type != "cuda":
            raise RuntimeError("backend='tensorrt' runs on an NVIDIA GPU: use device='cuda' (or 'auto' on a "
                               "machine with a usable CUDA GPU)")
    elif backend == "compile" and not hasattr(torch, "compile"):
        raise RuntimeError(f"backend='compile' needs PyTorch >= 2.0 (this is {torch.__version__})")
    return backend


def _onnx_exportable(net: nn.Module) -> bool:
    """Whether ``net`` is a network whose ONNX export is known to reproduce it: a fastpose U-Net or ViT
    (``forward(x) -> (maps, style)``, three maps used).  Other modules (custom families) stay on PyTorch."""
    from ..models import UNet, ViT, spec_of

    if not isinstance(net, (UNet, ViT)):
        return False
    try:
        return int(spec_of(net, getattr(net, "fastpose_meta", None)).n_outputs) <= 3  # flows_cellprob: 3 maps
    except Exception:  # noqa: BLE001 - no spec: not a network the segmenter would export
        return False


_logged: set = set()


def resolve_backend(backend: str, device: Union[str, torch.device], precision: Optional[str] = "fp32",
                    nets: Sequence[nn.Module] = ()) -> str:
    """The backend ``backend`` runs as on ``device``: itself, or for ``"auto"`` the fastest one that gives the
    same masks there.

    ``"auto"`` is ``"onnxruntime"`` on the CPU when the precision is fp32, onnxruntime is installed and every
    network in ``nets`` is a fastpose U-Net or ViT (their exports match PyTorch to ~1e-6 relative; masks of
    the bundled nuclei model on DSB 2018 images are identical, see bench/RESULTS.md); ``"torch"`` otherwise
    (a CUDA device, reduced precision, another network, onnxruntime missing).  The choice is logged once per
    process.  Validates the name like :func:`check_backend`.
    """
    check_backend(backend, device)
    if backend != "auto":
        return backend
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cpu":
        out, why = "torch", f"on {dev.type} (TensorRT stays opt-in: backend='tensorrt')"
    elif precision not in (None, "auto", "fp32"):
        out, why = "torch", f"for precision {precision!r} on the CPU (onnxruntime runs fp32)"
    elif not all(_onnx_exportable(n) for n in nets):
        out, why = "torch", ("for a network other than a fastpose U-Net/ViT with the 3 Cellpose maps "
                             "(e.g. panoptic class maps)")
    else:
        try:
            require_onnxruntime()
            import onnx  # noqa: F401 - the exporter needs it
        except (RuntimeError, ImportError):
            out, why = "torch", "on the CPU: onnxruntime/onnx not installed (pip install onnx onnxruntime: ~2.9x)"
        else:
            out, why = "onnxruntime", "on the CPU (ONNX export cached, first use of a tile shape exports it)"
    key = (out, why)
    if key not in _logged:
        _logged.add(key)
        (log.warning if "not installed" in why else log.info)("backend 'auto' -> %r %s", out, why)
    return out


def make_runner(net: nn.Module, backend: str, device: Union[str, torch.device], batch_size: int = 8,
                precision: str = "fp32", opset: int = DEFAULT_OPSET,
                cache_dir: Optional[PathLike] = None) -> Runner:
    """Wrap ``net`` (already on ``device``, in eval mode) for ``backend``; see the module docstring.

    ``"auto"`` is resolved by :func:`resolve_backend`.  ``precision`` matters to ``tensorrt`` only (the engine's
    precision; "auto" = fp16); the ONNX backends take fp32 tiles and the ``torch``/``compile`` runners leave
    precision to the tiled path's autocast.
    """
    auto = backend == "auto"
    backend = resolve_backend(backend, device, precision if auto else None, [net])
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if backend == "torch":
        return net
    if backend == "compile":
        return CompiledNet(net, batch_size=batch_size, device=device)
    if backend == "onnxruntime":
        return OnnxRuntimeNet(net, device=device, opset=opset, cache_dir=cache_dir, fallback=auto)
    from .trt import TensorRTNet

    prec = "fp16" if precision in (None, "auto") else precision
    return TensorRTNet(net, precision=prec, max_batch=batch_size, opset=opset, cache_dir=cache_dir)


class CompiledNet:
    """``torch.compile``'d network for fixed-shape batches.

    Every call runs a batch of exactly ``batch_size`` tiles (a smaller one is zero-padded and the padding cut
    off the outputs; a larger one is split), so each tile shape compiles once.  On a GPU the mode is
    ``"reduce-overhead"`` (CUDA graphs); outputs are cloned because graph replays reuse their memory.
    """

    def __init__(self, net: nn.Module, batch_size: int = 8, device: Union[str, torch.device] = "cpu",
                 mode: Optional[str] = None, compile_backend: Optional[str] = None) -> None:
        self.net = net
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.mode = mode or ("reduce-overhead" if self.cuda else "default")
        be = compile_backend or os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
        kw: Dict[str, Any] = dict(backend=be, dynamic=False)
        if be == "inductor":
            kw["mode"] = self.mode
        self.fn = torch.compile(net, **kw)
        log.info("backend 'compile': torch.compile(backend=%s, mode=%s), batches padded to %d", be,
                 kw.get("mode", "-"), self.batch_size)

    def __call__(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        n = int(x.shape[0])
        if n > self.batch_size:
            parts = [self(x[i:i + self.batch_size]) for i in range(0, n, self.batch_size)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if n < self.batch_size:
            pad = x.new_zeros((self.batch_size - n, *x.shape[1:]))
            x = torch.cat([x, pad])
        if self.cuda and hasattr(torch, "compiler") and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            torch.compiler.cudagraph_mark_step_begin()
        y, style = self.fn(x.contiguous())
        return y[:n].clone(), style[:n].clone()


class OnnxRuntimeNet:
    """The network's ONNX export run by onnxruntime, one cached export and session per tile shape.

    The segmenter's U-Net tiles are 224x224 except for images smaller than a tile; each new tile shape gets
    its own (cached) export, so results match PyTorch exactly rather than via padding.  On a CUDA device with
    ``onnxruntime-gpu``, inputs and outputs are bound to torch CUDA tensors (no host round trip); otherwise
    tensors go through NumPy on the CPU.

    With ``fallback`` (what ``backend="auto"`` uses), a tile shape whose export or session fails runs on the
    PyTorch module instead, with a warning, rather than failing the segmentation.
    """

    def __init__(self, net: nn.Module, device: Union[str, torch.device] = "cpu", opset: int = DEFAULT_OPSET,
                 cache_dir: Optional[PathLike] = None, fallback: bool = False) -> None:
        require_onnxruntime()
        self.net = net
        self.fallback = bool(fallback)
        self.device = torch.device(device)
        self.opset = int(opset)
        self.cache_dir = cache_dir
        self.digest = model_hash(net)
        self._sessions: Dict[Tuple[int, int], Any] = {}

    def session(self, tile: Tuple[int, int]) -> Any:
        """The onnxruntime session for ``tile`` (exporting the network on first use)."""
        if tile not in self._sessions:
            try:
                t0 = time.perf_counter()
                sess, path = cached_ort_session(self.net, tile, self.opset, self.cache_dir, digest=self.digest,
                                                device=self.device)
            except Exception as e:  # noqa: BLE001 - export/runtime failures: eager PyTorch when allowed
                if not self.fallback:
                    raise
                log.warning("onnxruntime unavailable for %dx%d tiles (%s: %s): running them on PyTorch", *tile,
                            type(e).__name__, e)
                sess = None
            else:
                log.info("backend 'onnxruntime': %s on %s (ready in %.2f s)", path.name, sess.get_providers()[0],
                         time.perf_counter() - t0)
            self._sessions[tile] = sess
        return self._sessions[tile]

    def __call__(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        sess = self.session((int(x.shape[-2]), int(x.shape[-1])))
        if sess is None:
            y, style = self.net(x)
            return y, style
        x = x.float().contiguous()
        if x.is_cuda and sess.get_providers()[0] == "CUDAExecutionProvider":
            return self._run_cuda(sess, x)
        y, style = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x.detach().cpu().numpy()})
        return torch.from_numpy(y).to(x.device), torch.from_numpy(style).to(x.device)

    @staticmethod
    def _run_cuda(sess: Any, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Run with I/O bound to torch CUDA memory (onnxruntime's IOBinding)."""
        b = int(x.shape[0])
        nstyle = sess.get_outputs()[1].shape[1]
        y = torch.empty((b, 3, x.shape[-2], x.shape[-1]), dtype=torch.float32, device=x.device)
        style = torch.empty((b, int(nstyle)), dtype=torch.float32, device=x.device)
        io = sess.io_binding()
        dev = x.device.index or 0
        for name, t in ((INPUT_NAME, x), (OUTPUT_NAMES[0], y), (OUTPUT_NAMES[1], style)):
            bind = io.bind_input if name == INPUT_NAME else io.bind_output
            bind(name, "cuda", dev, np.float32, list(t.shape), t.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()  # x must be ready: onnxruntime uses its own stream
        sess.run_with_iobinding(io)
        return y, style
