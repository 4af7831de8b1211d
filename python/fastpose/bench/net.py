"""Network-step and Cellpose-SAM-style benchmarks behind ``fastpose-bench net`` and ``fastpose-bench sam``.

``net`` times the network step alone on random tiles (224x224 for the U-Net, 256x256 for a ViT) for every
way fastpose can run it: eager fp32 (PyTorch defaults: TF32 convolutions on Ampere and later), eager
autocast fp16 / bf16 (what ``Segmenter`` does on a GPU), half-precision weights in channels-last layout,
``torch.compile`` with CUDA graphs (the ``compile`` backend), onnxruntime and TensorRT when installed.
Tiles per second are reported for each, with the ratio to eager fp32 measured in the same run.

``sam`` times whole-image segmentation with a ViT (default ``vit_l``, random weights saved as a
Cellpose-SAM-format file) on ``--size`` x ``--size`` three-channel images, side by side with the
``cellpose`` 4.x package's ``CellposeModel.eval`` on the same weights when it is importable.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..deploy import CompiledNet, OnnxRuntimeNet, TensorRTNet
from ..inference import Segmenter
from ..models import UNet, ViT
from ._timing import Timing, bench_images, report, time_call
from .segment import ratios_vs_cellpose, time_cellpose_eval, time_segment_many

__all__ = ["bench_net", "bench_sam"]

log = logging.getLogger("fastpose.bench")


def _make_net(arch: str) -> Tuple[torch.nn.Module, int, int]:
    """(network with seeded random weights, tile side, input channels) of ``arch``."""
    torch.manual_seed(0)
    if arch == "unet":
        return UNet(), 224, 2
    net = ViT.from_preset(arch)  # ValueError naming the presets for anything else
    return net, net.img_size, net.nchan


def _variants(net, device: str, batch: int, backends: Sequence[str]) -> List[Tuple[str, Callable]]:
    """(name, fn(x_fp32) -> output) for each way of running the network step."""
    cuda = device == "cuda"
    out: List[Tuple[str, Callable]] = []
    if "torch" in backends:
        out.append(("eager fp32", lambda x: net(x)))
        if cuda:
            for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
                def run(x, dt=dt):
                    with torch.autocast("cuda", dtype=dt):
                        return net(x)
                out.append((f"eager autocast {name}", run))
            half = copy.deepcopy(net).half().to(memory_format=torch.channels_last)

            def run_half(x):
                return half(x.half().contiguous(memory_format=torch.channels_last))
            out.append(("eager fp16 weights, channels-last", run_half))
    if "compile" in backends:
        if not cuda:
            out.append(("compile fp32", CompiledNet(net, batch_size=batch, device=device)))
        else:
            comp16 = CompiledNet(net, batch_size=batch, device=device)

            def run_c16(x):
                with torch.autocast("cuda", dtype=torch.float16):
                    return comp16(x)
            out.append(("compile autocast fp16 + CUDA graphs", run_c16))
    if "onnxruntime" in backends:
        try:
            ort = OnnxRuntimeNet(net, device=device)
            out.append(("onnxruntime fp32", ort))
        except Exception as e:  # noqa: BLE001 - not installed / no provider: say so and go on
            log.warning("onnxruntime skipped: %s", e)
    if "tensorrt" in backends:
        try:
            for prec in ("fp16", "bf16"):
                out.append((f"tensorrt {prec}", TensorRTNet(net, precision=prec, max_batch=batch)))
        except Exception as e:  # noqa: BLE001
            log.warning("tensorrt skipped: %s", e)
    return out


def bench_net(arch: str = "unet", batch_sizes: Sequence[int] = (8, 32), device: str = "auto",
              repeats: int = 20, backends: Sequence[str] = ("torch", "compile", "onnxruntime", "tensorrt")
              ) -> Dict[str, Any]:
    """Tiles per second of the network step for each variant and batch size (median of ``repeats`` runs
    after warm-up; several input sets rotate so the GPU's cache does not flatter small batches)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    net, tile, nchan = _make_net(arch)
    net = net.to(device).eval()
    sync = torch.cuda.synchronize if device == "cuda" else None
    results: List[Timing] = []
    with torch.no_grad():
        for bs in batch_sizes:
            xs = [torch.randn(bs, nchan, tile, tile, device=device) for _ in range(4)]
            base: Optional[float] = None
            for name, fn in _variants(net, device, bs, backends):
                k = [0]

                def step():
                    fn(xs[k[0] % len(xs)])
                    k[0] += 1
                try:
                    for _ in range(2):  # compilation, CUDA-graph capture and autotuning stay out of the timings
                        step()
                    t = time_call(f"{arch} {name} [batch {bs}]", device, step, repeats, sync, warmup=1)
                except Exception as e:  # noqa: BLE001 - one variant failing must not lose the others
                    log.warning("%s failed: %s", name, e)
                    continue
                t.extra["tiles_per_s"] = bs / t.median_s
                if name == "eager fp32":
                    base = t.median_s
                if base:
                    t.extra["x_eager_fp32"] = base / t.median_s
                results.append(t)
                log.info("%s: %.0f tiles/s", t.name, t.extra["tiles_per_s"])
    inputs = {"net": {"arch": arch, "tile": tile, "channels": nchan, "batch_sizes": list(batch_sizes)}}
    return report(inputs, results, {})


def _sam_images(n: int, size: int, seed: int = 0) -> List[np.ndarray]:
    return [np.concatenate([im, im[..., :1]], -1) for im in bench_images(n, size, seed)]  # (Y, X, 3)


def bench_sam(arch: str = "vit_l", n_images: int = 4, size: int = 1200, repeats: int = 2,
              precision: str = "bf16", batch_size: int = 8, backend: str = "torch",
              cellpose: bool = True) -> Dict[str, Any]:
    """Whole-image ViT segmentation (no diameter, 256 tiles) vs ``cellpose`` 4.x on the same weights."""
    net, _, _ = _make_net(arch)
    with tempfile.TemporaryDirectory(prefix="fastpose-bench-") as tmpdir:
        path = os.path.join(tmpdir, f"{arch}_random.pth")
        torch.save(net.state_dict(), path)  # Cellpose-SAM's own key names: both packages read this file
        imgs = _sam_images(n_images, size)
        seg = Segmenter(path, device="auto", precision=precision, batch_size=batch_size, backend=backend)
        ours = time_segment_many(seg, imgs, "sam", repeats, channel_axis=-1, diameter=None)
        results: List[Timing] = [ours]
        info = {"arch": arch, "images": n_images, "size": size, "precision": precision, "batch_size": batch_size,
                "backend": backend, "weights": "random (same file for both packages)"}
        if cellpose:
            results += _cellpose4_eval(path, imgs, seg.device.type == "cuda", repeats, batch_size)
    return report({"sam": info}, results, ratios_vs_cellpose(ours, results))


def _cellpose4_eval(path: str, imgs: List[np.ndarray], gpu: bool, repeats: int, batch_size: int) -> List[Timing]:
    try:
        from importlib.metadata import version
        major = int(version("cellpose").split(".")[0])
    except Exception:  # noqa: BLE001
        log.info("cellpose not installed: skipping the side-by-side comparison")
        return []
    if major < 4:
        log.info("cellpose %s is not 4.x: skipping the Cellpose-SAM comparison", version("cellpose"))
        return []
    return time_cellpose_eval(path, imgs, gpu, repeats, "sam", batch_size=batch_size)
