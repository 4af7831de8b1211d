"""TensorRT engines for fastpose networks: build from the ONNX export, cache, run on torch CUDA tensors.

Written against TensorRT 10's Python API (named I/O tensors, ``execute_async_v3``)::

    onnx  --OnnxParser-->  INetworkDefinition  --Builder.build_serialized_network(config)-->  plan file
    plan  --Runtime.deserialize_cuda_engine-->  ICudaEngine  --create_execution_context-->  context
    context.set_input_shape / set_tensor_address(torch tensor.data_ptr()) / execute_async_v3(torch stream)

* Precision: ``fp32``, ``fp16`` (default), ``bf16``; ``int8`` and ``fp8`` by explicit quantization: the ONNX
  export gets Q/DQ nodes from NVIDIA ModelOpt (``pip install "nvidia-modelopt[onnx]"``) calibrated on a set of
  normalised tiles, then TensorRT builds it with the matching precision flag.  (TensorRT's implicit INT8
  calibrators are deprecated since 10.1 and have no FP8 form.)  The precision flags are TensorRT 10's
  weak-typing flags, which TensorRT 11 removed: hence ``fastpose[trt]`` asks for ``tensorrt>=10,<11``.
* One optimisation profile per engine: batch 1 .. ``max_batch`` (optimum ``max_batch``), fixed tile.
* A timing cache (``<cache>/trt/timing-<GPU, TensorRT hash>.cache``) makes rebuilds fast; engines are cached under
  ``<cache>/trt/<key>.plan``, the key hashing model + tile + precision + GPU name + TensorRT version (+ batch
  range, opset and calibration set), so a new GPU, TensorRT or weight file never reuses a stale plan.

TensorRT needs an NVIDIA GPU; when ``import tensorrt`` fails everything here raises a RuntimeError saying
``pip install "fastpose[trt]"``.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..io import atomic_write
from .onnx_export import (DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAMES, PathLike, TileLike, cache_root, cached_onnx,
                          model_hash, normalize_tile, require_module)

__all__ = ["PRECISIONS", "TRT_MISSING", "TensorRTEngine", "TensorRTNet", "build_engine", "engine_cache_key",
           "export_engine", "quantize_onnx", "require_tensorrt"]

log = logging.getLogger("fastpose.deploy")

#: Engine precisions.
PRECISIONS: Tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "fp8")
#: TensorRT builder flags per precision (int8/fp8 keep fp16 for the layers left unquantized).
_FLAGS: Dict[str, Tuple[str, ...]] = {"fp32": (), "fp16": ("FP16",), "bf16": ("BF16",),
                                      "int8": ("FP16", "INT8"), "fp8": ("FP16", "FP8")}

TRT_MISSING = ('backend "tensorrt" needs NVIDIA TensorRT\'s Python package, which is not installed. On a machine '
               'with an NVIDIA GPU and driver: pip install "fastpose[trt]" (installs tensorrt>=10,<11). '
               'Without TensorRT, use backend="onnxruntime" or "compile".')


def require_tensorrt() -> Any:
    """Import and return ``tensorrt``; RuntimeError with the install command when it is missing."""
    return require_module("tensorrt", TRT_MISSING)


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown TensorRT precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return precision


def _check_batch(max_batch: int) -> int:
    if int(max_batch) < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return int(max_batch)


def _calibration_array(calibration: Any, nchan: int, tile: Tuple[int, int]) -> np.ndarray:
    """Calibration tiles as float32 [N, C, H, W] (a NumPy array, a tensor or a ``.npy`` path)."""
    if isinstance(calibration, (str, Path)):
        calibration = np.load(calibration, allow_pickle=False)
    if isinstance(calibration, torch.Tensor):
        calibration = calibration.detach().cpu().numpy()
    a = np.ascontiguousarray(np.asarray(calibration, np.float32))
    if a.ndim != 4 or a.shape[0] < 1 or a.shape[1] != nchan or tuple(a.shape[2:]) != tuple(tile):
        raise ValueError(f"calibration set must be normalised tiles [N, {nchan}, {tile[0]}, {tile[1]}] "
                         f"(N >= 1), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("calibration set contains NaN or Inf")
    return a


def engine_cache_key(digest: str, tile: Union[int, Sequence[int]], precision: str, gpu_name: str,
                     trt_version: str, max_batch: int = 8, opset: int = DEFAULT_OPSET,
                     calibration_digest: str = "") -> str:
    """Cache key of an engine: SHA-256 over model hash, tile, precision, GPU name, TensorRT version, batch
    range, opset and calibration-set hash (hex, 32 characters)."""
    _check_precision(precision)
    hw = (int(tile), int(tile)) if isinstance(tile, (int, np.integer)) else tuple(int(t) for t in tile)
    s = "|".join([digest, f"tile={hw[0]}x{hw[1]}", f"precision={precision}", f"gpu={gpu_name}",
                  f"trt={trt_version}", f"max_batch={_check_batch(max_batch)}", f"opset={int(opset)}",
                  f"calib={calibration_digest}"])
    return hashlib.sha256(s.encode()).hexdigest()[:32]


def quantize_onnx(onnx_path: PathLike, out_path: PathLike, precision: str, calibration: np.ndarray) -> Path:
    """Insert calibrated Q/DQ nodes (``int8`` or ``fp8``) with NVIDIA ModelOpt; written atomically."""
    if precision not in ("int8", "fp8"):
        raise ValueError(f"quantize_onnx takes precision 'int8' or 'fp8', got {precision!r}")
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as e:
        raise RuntimeError(f'precision={precision!r} quantizes the ONNX export with NVIDIA ModelOpt: '
                           f'pip install "nvidia-modelopt[onnx]"') from e
    atomic_write(out_path, lambda tmp: quantize(onnx_path=str(onnx_path), quantize_mode=precision,
                                                calibration_data=calibration, output_path=str(tmp)), to_path=True)
    return Path(out_path)


def build_engine(onnx_path: PathLike, engine_path: PathLike, precision: str = "fp16", max_batch: int = 8,
                 workspace_gb: float = 4.0, timing_cache: Optional[PathLike] = None) -> Path:
    """Build a TensorRT engine (plan file, written atomically) from an ONNX file with a dynamic batch axis.

    The optimisation profile covers batch 1..``max_batch`` at the ONNX file's fixed tile size.  For ``int8`` /
    ``fp8`` the ONNX file must already carry Q/DQ nodes (see :func:`quantize_onnx` / :func:`export_engine`).
    ``timing_cache`` (a file) is read when present and updated after the build.
    """
    trt = require_tensorrt()
    _check_precision(precision)
    max_batch = _check_batch(max_batch)
    if workspace_gb <= 0:
        raise ValueError(f"workspace_gb must be > 0, got {workspace_gb}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    inp = network.get_input(0)
    shape = tuple(int(d) for d in inp.shape)
    if len(shape) != 4 or min(shape[1:]) < 1:
        raise RuntimeError(f"{onnx_path}: input {inp.name} has shape {shape}; expected [batch, C, H, W] with "
                           "a fixed tile (export it with fastpose.deploy.export_onnx)")
    _, c, h, w = shape
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, c, h, w), (max_batch, c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)
    for name in _FLAGS[precision]:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise RuntimeError(f"TensorRT {trt.__version__} has no BuilderFlag.{name} (TensorRT 11 removed the "
                               f"precision flags): precision={precision!r} needs TensorRT 10 "
                               f"(pip install \"tensorrt>=10,<11\"), or use precision='fp32'")
        config.set_flag(flag)
    cache = None
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, False)
    log.info("building TensorRT engine from %s: %s, batch 1..%d, tile %dx%d (this takes a while)", onnx_path,
             precision, max_batch, h, w)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    if cache is not None:
        data = bytes(memoryview(config.get_timing_cache().serialize()))
        atomic_write(timing_cache, lambda f: f.write(data))
    engine_bytes = bytes(memoryview(plan))
    out = atomic_write(engine_path, lambda f: f.write(engine_bytes))
    log.info("wrote TensorRT engine %s (%.1f MB)", out, len(engine_bytes) / 2 ** 20)
    return out


def export_engine(model: nn.Module, engine_path: Optional[PathLike] = None, precision: str = "fp16",
                  tile: TileLike = None, max_batch: int = 8, opset: int = DEFAULT_OPSET,
                  calibration: Any = None, onnx_path: Optional[PathLike] = None,
                  cache_dir: Optional[PathLike] = None, workspace_gb: float = 4.0) -> Path:
    """ONNX-export ``model`` (or use ``onnx_path``), quantize it for int8/fp8, and build a TensorRT engine.

    Without ``engine_path`` the engine goes to the engine cache (``<cache>/trt/<key>.plan``) and an existing
    cached engine is returned as is.  ``calibration``: normalised tiles [N, C, H, W] (array, tensor or ``.npy``
    path), required for int8/fp8 and not used otherwise.  Returns the engine's path.
    """
    trt = require_tensorrt()
    _check_precision(precision)
    max_batch = _check_batch(max_batch)
    hw = normalize_tile(model, tile)
    if not torch.cuda.is_available():
        raise RuntimeError("building a TensorRT engine needs a CUDA GPU (PyTorch sees none)")
    calib = None
    calib_digest = ""
    if precision in ("int8", "fp8"):
        if calibration is None:
            raise ValueError(f"precision={precision!r} needs a calibration set: normalised tiles "
                             f"[N, C, {hw[0]}, {hw[1]}] (e.g. a few hundred tiles of typical images)")
        from .onnx_export import input_channels

        calib = _calibration_array(calibration, input_channels(model), hw)
        calib_digest = hashlib.sha256(calib.tobytes()).hexdigest()[:16]
    elif calibration is not None:
        log.warning("calibration set ignored for precision %s", precision)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    digest = model_hash(model)
    gpu = torch.cuda.get_device_name(torch.cuda.current_device())
    key = engine_cache_key(digest, hw, precision, gpu, str(trt.__version__), max_batch, opset, calib_digest)
    if engine_path is None:
        engine_path = root / "trt" / f"{key}.plan"
        if Path(engine_path).is_file():
            log.info("TensorRT engine cache hit: %s", engine_path)
            return Path(engine_path)
    src = Path(onnx_path) if onnx_path is not None else cached_onnx(model, hw, opset, root / "onnx", digest)
    with tempfile.TemporaryDirectory(prefix="fastpose-trt-") as tmpdir:
        if calib is not None:
            src = quantize_onnx(src, Path(tmpdir) / f"{precision}.onnx", precision, calib)
        # timing caches are specific to a GPU and TensorRT version: one file per pair
        tc = hashlib.sha256(f"{gpu}|{trt.__version__}".encode()).hexdigest()[:12]
        return build_engine(src, engine_path, precision, max_batch, workspace_gb,
                            timing_cache=root / "trt" / f"timing-{tc}.cache")


class TensorRTEngine:
    """A deserialized engine and one execution context, run on torch CUDA tensors.

    ``engine(x)`` with ``x`` a CUDA tensor [B, C, H, W] (B within the profile) binds ``x`` and freshly
    allocated torch outputs by address and enqueues the engine on the current torch CUDA stream
    (``execute_async_v3``), so it orders with the surrounding PyTorch work without a synchronisation.
    """

    def __init__(self, path: PathLike) -> None:
        trt = require_tensorrt()
        self.trt = trt
        self.path = Path(path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{self.path}: TensorRT cannot load this engine (built for another GPU or "
                               f"TensorRT version? delete it to rebuild)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [INPUT_NAME] or sorted(set(names) - set(inputs)) != sorted(OUTPUT_NAMES):
            raise RuntimeError(f"{self.path}: engine tensors {names}; expected input {INPUT_NAME!r} and outputs "
                               f"{list(OUTPUT_NAMES)} (build it from fastpose.deploy.export_onnx)")
        lo, _, hi = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.tile = (int(hi[2]), int(hi[3]))
        self.dtypes: Dict[str, torch.dtype] = {n: self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}

    def _torch_dtype(self, dt: Any) -> torch.dtype:
        t = self.trt.DataType
        table = {t.FLOAT: torch.float32, t.HALF: torch.float16, t.INT32: torch.int32}
        if hasattr(t, "BF16"):
            table[t.BF16] = torch.bfloat16
        if dt not in table:
            raise RuntimeError(f"{self.path}: unsupported engine I/O dtype {dt}")
        return table[dt]

    def __call__(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if not x.is_cuda:
            raise ValueError("TensorRT engines take CUDA tensors")
        if tuple(x.shape[-2:]) != self.tile:
            raise ValueError(f"{self.path.name} was built for {self.tile[0]}x{self.tile[1]} tiles, got "
                             f"{tuple(x.shape[-2:])}")
        n = int(x.shape[0])
        if n > self.max_batch:
            parts = [self(x[i:i + self.max_batch]) for i in range(0, n, self.max_batch)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        x = x.to(self.dtypes[INPUT_NAME]).contiguous()
        ctx = self.context
        if not ctx.set_input_shape(INPUT_NAME, tuple(x.shape)):
            raise RuntimeError(f"{self.path.name}: input shape {tuple(x.shape)} outside the engine's profile "
                               f"(batch {self.min_batch}..{self.max_batch})")
        ctx.set_tensor_address(INPUT_NAME, x.data_ptr())
        outs: List[torch.Tensor] = []
        for name in OUTPUT_NAMES:
            t = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self.dtypes[name], device=x.device)
            ctx.set_tensor_address(name, t.data_ptr())
            outs.append(t)
        if not ctx.execute_async_v3(torch.cuda.current_stream(x.device).cuda_stream):
            raise RuntimeError(f"{self.path.name}: TensorRT execution failed")
        return outs[0], outs[1]


class TensorRTNet:
    """The ``tensorrt`` backend: a network run through cached TensorRT engines, one per tile shape.

    Engines come from :func:`export_engine` (built on first use, then loaded from the engine cache).  Pass
    ``engine_path`` to run a prebuilt plan file instead (e.g. an int8 engine from ``fastpose export --engine``)
    -- it then serves its own tile size only.
    """

    def __init__(self, net: Optional[nn.Module] = None, precision: str = "fp16", max_batch: int = 8,
                 opset: int = DEFAULT_OPSET, calibration: Any = None, cache_dir: Optional[PathLike] = None,
                 engine_path: Optional[PathLike] = None) -> None:
        require_tensorrt()
        _check_precision(precision)
        self.max_batch = _check_batch(max_batch)
        if net is None and engine_path is None:
            raise ValueError("TensorRTNet needs a network or an engine_path")
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'tensorrt' needs a CUDA GPU (PyTorch sees none)")
        if precision in ("int8", "fp8") and calibration is None and engine_path is None:
            raise ValueError(f"precision={precision!r} needs a calibration set (normalised tiles [N, C, H, W])")
        self.net = net
        self.precision = precision
        self.opset = int(opset)
        self.calibration = calibration
        self.cache_dir = cache_dir
        self._engines: Dict[Tuple[int, int], TensorRTEngine] = {}
        if engine_path is not None:
            eng = TensorRTEngine(engine_path)
            self._engines[eng.tile] = eng

    def engine(self, tile: Tuple[int, int]) -> TensorRTEngine:
        """The engine for ``tile`` (built or loaded from the cache on first use)."""
        if tile not in self._engines:
            if self.net is None:
                raise ValueError(f"this TensorRT engine serves {list(self._engines)} tiles only, got {tile}")
            path = export_engine(self.net, None, self.precision, tile, self.max_batch, self.opset,
                                 self.calibration, cache_dir=self.cache_dir)
            self._engines[tile] = TensorRTEngine(path)
        return self._engines[tile]

    def __call__(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.engine((int(x.shape[-2]), int(x.shape[-1])))(x)
