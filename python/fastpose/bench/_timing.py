"""What every benchmark shares: the :class:`Timing` record, :func:`time_call`, the machine header, the result
layout and the synthetic input images.

Package-private: the sibling modules (:mod:`.core`, :mod:`.segment`, :mod:`.net`) import these public names;
nothing outside ``fastpose.bench`` should.  No PyTorch import at module level (``fastpose-bench --help`` and
``import fastpose.bench`` stay light).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .rss import reset_peak

__all__ = ["Timing", "time_call", "machine_header", "report", "bench_images", "speedups", "flops_per_tile",
           "matmul_gflops"]


@dataclass
class Timing:
    """One timed operation: wall times in seconds, peak memory growth (CPU) and free-form figures (``extra``)."""

    name: str
    device: str
    median_s: float
    min_s: float
    max_s: float
    peak_mem_mb: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def _status_mb(key: str) -> Optional[float]:
    """Field ``key`` of ``/proc/self/status`` (``VmRSS``: resident set, ``VmHWM``: its peak) in MB; None
    where there is none (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def time_call(name: str, device: str, fn: Callable[[], Any], repeats: int = 3,
              sync: Optional[Callable[[], None]] = None, warmup: int = 1) -> Timing:
    """Median/min/max wall time of ``fn`` after ``warmup`` runs; peak RSS growth of one run (CPU)."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times: List[float] = []
    peak = None
    for i in range(repeats):
        measure_mem = i == 0 and reset_peak()
        base = _status_mb("VmRSS") if measure_mem else None
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
        if measure_mem and base is not None:
            hw = _status_mb("VmHWM")
            peak = None if hw is None else max(0.0, hw - base)
    return Timing(name, device, statistics.median(times), min(times), max(times), peak)


def machine_header() -> Dict[str, Any]:
    """Versions and hardware the figures were measured with (fastpose, Python, NumPy, CPU, torch, GPU, driver,
    cellpose when importable)."""
    import fastpose
    import fastpose.core as fc
    info: Dict[str, Any] = {
        "fastpose": fastpose.__version__, "python": platform.python_version(), "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
        "cuda_compiled": fc.cuda_compiled(), "cuda_available": fc.cuda_available(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        if fc.cuda_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["cuda_runtime"] = torch.version.cuda
            try:
                import subprocess
                info["driver"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                    text=True, timeout=10).stdout.strip().splitlines()[0]
            except Exception:  # noqa: BLE001 - no nvidia-smi: leave the driver out
                pass
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        import cellpose  # noqa: F401
        info["cellpose"] = version("cellpose")
    except Exception:  # noqa: BLE001
        pass
    return info


def report(inputs: Mapping[str, Any], timings: Sequence[Timing], ratios: Mapping[str, float]) -> Dict[str, Any]:
    """A benchmark's result, as printed and written by ``--json``: ``machine`` (:func:`machine_header`),
    ``inputs``, ``timings`` (one dict per :class:`Timing`) and ``ratios``."""
    return {"machine": machine_header(), "inputs": dict(inputs), "timings": [asdict(t) for t in timings],
            "ratios": dict(ratios)}


def bench_images(n: int, size: int, seed: int = 0) -> List[np.ndarray]:
    """Two-channel (Y, X, 2) uint16 images of nuclei-like blobs: channel 0 cytoplasm-like, 1 nuclei."""
    from scipy import ndimage as ndi

    from ..synthetic import random_labels
    out = []
    for i in range(n):
        lab = random_labels((size, size), int(size * size / 1400), diameter=30, seed=seed + i)
        rng = np.random.default_rng(seed + i)
        cyto = ndi.gaussian_filter((lab > 0).astype(np.float32), 2) * rng.uniform(200, 800)
        nuc = ndi.gaussian_filter(ndi.binary_erosion(lab > 0, iterations=6).astype(np.float32), 1.5) * 1000
        img = np.stack([cyto, nuc], -1) + rng.normal(100, 20, (size, size, 2))
        out.append(np.clip(img, 0, 65535).astype(np.uint16))
    return out


def speedups(timings: Sequence[Timing], pairs: Sequence[Sequence[str]]) -> Dict[str, float]:
    """Speed-ups from the rows they name: for each ``(label, fast, slow)`` in ``pairs``, the median time of
    the row named ``slow`` over that of the row named ``fast`` (> 1: ``fast`` is faster).

    Rows are looked up by exact name, never by position or prefix, so a ratio can only come from the two rows
    it names; a pair whose rows are not both present (e.g. Cellpose not installed) is left out.
    """
    by_name: Dict[str, Timing] = {}
    for t in timings:
        if t.name in by_name:
            raise ValueError(f"two timings are named {t.name!r}: a ratio would be ambiguous")
        by_name[t.name] = t
    out: Dict[str, float] = {}
    for label, fast, slow in pairs:
        if fast in by_name and slow in by_name and by_name[fast].median_s > 0:
            out[label] = by_name[slow].median_s / by_name[fast].median_s
    return out


def flops_per_tile(net: Any, nchan: int, tile: Any) -> float:
    """Floating-point operations (multiply and add counted apart) of one forward pass of ``net`` on a ``tile``
    (side, or (height, width)) tile, by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    th, tw = (int(tile), int(tile)) if np.isscalar(tile) else (int(tile[0]), int(tile[1]))
    p = next(iter(net.parameters()))
    x = torch.zeros((1, int(nchan), th, tw), dtype=torch.float32, device=p.device)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        net(x)
    return float(fc.get_total_flops())


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 peak of this machine: GFLOP/s of the best of ``repeats`` ``n`` x ``n`` matrix products on
    PyTorch's CPU threads (oneDNN/MKL, what onnxruntime's MLAS kernels also reach)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9
