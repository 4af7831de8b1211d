"""Deployment: ONNX export, network backends for the segmenter, TensorRT engines.

>>> from fastpose.deploy import export_onnx, check_onnx
>>> export_onnx(net, "model.onnx")                    # U-Net: 224 tiles; ViT: 256; dynamic batch
>>> check_onnx(net, "model.onnx")                     # onnxruntime vs PyTorch fp32, rel. error <= 1e-4
>>> Segmenter("nuclei").backend                       # "auto" (default): "onnxruntime" on the CPU, "torch" on GPUs
>>> Segmenter("nuclei", backend="torch")              # or "onnxruntime", "compile", "tensorrt"

``onnx`` and ``onnxruntime`` are dependencies of fastpose (the CPU default runs on onnxruntime); both, and
``tensorrt`` (``pip install "fastpose[trt]"``), are imported only when used.
"""

from __future__ import annotations

from .backends import BACKENDS, CompiledNet, OnnxRuntimeNet, check_backend, make_runner, resolve_backend
from .onnx_export import (DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAMES, OnnxCheck, cache_root, cached_onnx, check_onnx,
                          export_onnx, model_hash)
from .trt import (PRECISIONS, TensorRTEngine, TensorRTNet, build_engine, engine_cache_key, export_engine,
                  require_tensorrt)

__all__ = [
    "BACKENDS", "CompiledNet", "OnnxRuntimeNet", "check_backend", "make_runner", "resolve_backend",
    "DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAMES", "OnnxCheck", "cache_root", "cached_onnx", "check_onnx",
    "export_onnx", "model_hash",
    "PRECISIONS", "TensorRTEngine", "TensorRTNet", "build_engine", "engine_cache_key", "export_engine",
    "require_tensorrt",
]
