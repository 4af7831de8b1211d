"""``fastpose-bench core``: every native operation (flow targets, tracking, clustering, flow QC, clean-up and the
whole ``compute_masks``) on synthetic label images, on the CPU and the GPU, side by side with Cellpose's own
``dynamics`` functions on the same inputs when ``cellpose`` is importable.

The ``compute_masks`` comparison runs interleaved: each timed Cellpose run follows a fastpose run on the same
inputs in the same process (``interleaved.compute_masks[...]``), so that other load on the machine hits both;
the ratios use those pairs."""

from __future__ import annotations

import importlib
import logging
import sys
import time
import types
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ._timing import Timing, report, time_call

__all__ = ["bench_core"]

log = logging.getLogger("fastpose.bench")


def _core_cases(size: int, cells: int, diameter: float, do3d: bool):
    from ..synthetic import random_labels
    cases = [("2d", random_labels((size, size), cells, diameter=diameter, seed=0))]
    if do3d:
        cases.append(("3d", random_labels((96, 256, 256), 600, diameter=24, seed=0)))
    return cases


def bench_core(size: int = 2048, cells: int = 4700, diameter: float = 30.0, repeats: int = 3,
               devices: Optional[List[str]] = None, cellpose: bool = True, do3d: bool = False) -> Dict[str, Any]:
    """Time every core operation on synthetic label images; Cellpose's functions too when importable."""
    import fastpose.core as fc

    if devices is None:
        devices = ["cpu"] + (["cuda"] if fc.cuda_available() else [])
    results: List[Timing] = []
    inputs: Dict[str, Any] = {}
    for case, labels in _core_cases(size, cells, diameter, do3d):
        nd = labels.ndim
        dP = 5.0 * fc.masks_to_flows(labels)
        rng = np.random.default_rng(0)
        dP_noisy = (dP + rng.normal(0, 0.2, dP.shape)).astype(np.float32)
        prob = np.where(labels > 0, 4.0, -4.0).astype(np.float32)
        mask = prob > 0
        inputs[case] = {"shape": list(labels.shape), "cells": int(labels.max()),
                        "foreground_pixels": int(mask.sum())}
        log.info("case %s: shape %s, %d cells", case, labels.shape, labels.max())
        for dev in devices:
            if dev == "cuda":
                import torch
                sync = torch.cuda.synchronize
                to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda()  # noqa: E731
            else:
                sync = None
                to = lambda a: a  # noqa: E731
            L, D, P, M = to(labels), to(dP_noisy), to(prob), to(mask.astype(np.uint8))
            with fc.use_backend(dev):
                pos = fc.follow_flows(D, M)
                lab = fc.get_masks(pos, M)
                tag = f"{case}"
                results.append(time_call(f"masks_to_flows[{tag}]", dev, lambda: fc.masks_to_flows(L), repeats, sync))
                results.append(time_call(f"follow_flows[{tag}]", dev, lambda: fc.follow_flows(D, M), repeats, sync))
                results.append(time_call(f"get_masks[{tag}]", dev, lambda: fc.get_masks(pos, M), repeats, sync))
                results.append(time_call(f"flow_errors[{tag}]", dev, lambda: fc.flow_errors(lab, D), repeats, sync))
                results.append(time_call(f"fill_holes[{tag}]", dev,
                                         lambda: fc.fill_holes_and_remove_small_masks(lab), repeats, sync))
                qc = nd == 2
                results.append(time_call(f"compute_masks[{tag}]", dev,
                                         lambda: fc.compute_masks(D, P, flow_qc_3d=qc), repeats, sync))
                if nd == 3:  # Cellpose has no 3D flow QC; fastpose's optional one, for the record
                    results.append(time_call(f"compute_masks_qc3d[{tag}]", dev,
                                             lambda: fc.compute_masks(D, P, flow_qc_3d=True), repeats, sync))
        if cellpose:
            def ours(dev: str, qc: bool = nd == 2) -> None:
                with fc.use_backend(dev):
                    fc.compute_masks(dP_noisy, prob, flow_qc_3d=qc)
            results += _bench_cellpose(case, labels, dP_noisy, prob, repeats, devices, ours)
    return report(inputs, results, _ratios(results))


def _cellpose_dynamics() -> types.ModuleType:
    """``cellpose.dynamics``, importable without torchvision.

    Cellpose 4's ``cellpose.transforms`` imports torchvision at module level for its augmentations only (not
    used by ``dynamics``); PyPI's torchvision does not install beside the CPU torch of the test environment.
    When torchvision is missing, empty stand-ins of the two modules it imports are placed in ``sys.modules``
    for the import only, then removed.
    """
    try:
        return importlib.import_module("cellpose.dynamics")
    except ImportError as e:
        if "torchvision" not in str(e):
            raise
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.transforms._functional_tensor"]
    stubs = {n: types.ModuleType(n) for n in names}
    stubs["torchvision"].transforms = stubs["torchvision.transforms"]  # type: ignore[attr-defined]
    stubs["torchvision.transforms"].functional = stubs["torchvision.transforms.functional"]  # type: ignore
    for n in [m for m in sys.modules if m == "cellpose" or m.startswith("cellpose.")]:
        del sys.modules[n]  # a half-imported cellpose from the failed attempt
    sys.modules.update(stubs)
    try:
        log.info("torchvision not importable: importing cellpose.dynamics with empty torchvision stand-ins")
        return importlib.import_module("cellpose.dynamics")
    finally:
        for n in names:
            if sys.modules.get(n) is stubs[n]:
                del sys.modules[n]


def _interleaved(name: str, device: str, ours: Callable[[], Any], theirs: Callable[[], Any], repeats: int,
                 sync: Optional[Callable[[], None]]) -> List[Timing]:
    """``repeats`` pairs (fastpose run, Cellpose run) back to back after one warm-up pair: the Timings
    ``interleaved.<name>`` and ``cellpose.<name>``."""
    times: Dict[str, List[float]] = {"interleaved": [], "cellpose": []}
    for i in range(repeats + 1):
        for key, fn in (("interleaved", ours), ("cellpose", theirs)):
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            if i > 0:
                times[key].append(time.perf_counter() - t0)
    out = []
    for key, ts in times.items():
        ts = sorted(ts)
        med = ts[len(ts) // 2] if len(ts) % 2 else 0.5 * (ts[len(ts) // 2 - 1] + ts[len(ts) // 2])
        out.append(Timing(f"{key}.{name}", device, med, ts[0], ts[-1], None, {"runs": len(ts)}))
    return out


def _bench_cellpose(case: str, labels: np.ndarray, dP: np.ndarray, prob: np.ndarray, repeats: int,
                    devices: Optional[List[str]] = None,
                    ours: Optional[Callable[[str], None]] = None) -> List[Timing]:
    """Cellpose's ``masks_to_flows`` and ``compute_masks`` on the inputs fastpose was timed on; with ``ours``
    (fastpose's ``compute_masks`` on a device) the latter runs interleaved with it (:func:`_interleaved`)."""
    try:
        import torch
        dynamics = _cellpose_dynamics()
    except Exception as e:  # noqa: BLE001 - cellpose missing or broken: nothing to compare with
        log.info("cellpose not importable (%s): skipping the side-by-side comparison", e)
        return []
    out: List[Timing] = []
    devs = [("cpu", torch.device("cpu"), None)]
    if torch.cuda.is_available():
        devs.append(("cuda", torch.device("cuda"), torch.cuda.synchronize))
    for name, tdev, sync in devs:
        if devices is not None and name not in devices:
            continue
        r = 1 if name == "cpu" else repeats
        w = 0 if name == "cpu" else 1
        qc = 0.4 if labels.ndim == 2 else 0.0
        # Cellpose 3: dynamics.masks_to_flows; Cellpose 4: masks_to_flows_gpu / _gpu_3d (PyTorch, any device)
        mtf = getattr(dynamics, "masks_to_flows", None) or getattr(
            dynamics, "masks_to_flows_gpu_3d" if labels.ndim == 3 else "masks_to_flows_gpu")
        try:
            out.append(time_call(f"cellpose.masks_to_flows[{case}]", name,
                                 lambda: mtf(labels, device=tdev), r, sync, warmup=w))
        except Exception as e:  # noqa: BLE001 - a broken cellpose install must not lose the other figures
            log.warning("cellpose masks_to_flows failed on %s: %s", name, e)
        try:
            def theirs() -> None:
                dynamics.compute_masks(dP, prob, flow_threshold=qc, device=tdev, do_3D=labels.ndim == 3)
            if ours is not None:
                out += _interleaved(f"compute_masks[{case}]", name, lambda: ours(name), theirs, repeats, sync)
            else:
                out.append(time_call(f"cellpose.compute_masks[{case}]", name, theirs, r, sync, warmup=w))
        except Exception as e:  # noqa: BLE001 - a broken cellpose install must not lose fastpose's own figures
            log.warning("cellpose comparison failed on %s: %s", name, e)
    return out


def _ratios(results: List[Timing]) -> Dict[str, float]:
    """``"<op>[case]@<device>"``: Cellpose's time over fastpose's for each op timed by both on one device
    (fastpose's interleaved runs where there are some)."""
    by = {(t.name, t.device): t.median_s for t in results}
    ratios = {}
    for (name, dev), s in by.items():
        if name.startswith("cellpose."):
            op = name[len("cellpose."):]
            ours = by.get((f"interleaved.{op}", dev)) or by.get((op, dev))
            if ours:
                ratios[f"{op}@{dev}"] = s / ours
    return ratios
