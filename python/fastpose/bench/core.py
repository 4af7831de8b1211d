"""``fastpose-bench core``: every native operation (flow targets, tracking, clustering, flow QC, clean-up and the
whole ``compute_masks``) on synthetic label images, on the CPU and the GPU, side by side with Cellpose's own
``dynamics`` functions on the same inputs when ``cellpose`` is importable."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

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
        if cellpose:
            results += _bench_cellpose(case, labels, dP_noisy, prob, repeats, devices)
    return report(inputs, results, _ratios(results))


def _bench_cellpose(case: str, labels: np.ndarray, dP: np.ndarray, prob: np.ndarray, repeats: int,
                    devices: Optional[List[str]] = None) -> List[Timing]:
    try:
        import torch
        from cellpose import dynamics
    except Exception:  # noqa: BLE001 - cellpose missing or broken: nothing to compare with
        log.info("cellpose not importable: skipping the side-by-side comparison")
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
        try:
            out.append(time_call(f"cellpose.masks_to_flows[{case}]", name,
                                 lambda: dynamics.masks_to_flows(labels, device=tdev), r, sync, warmup=w))
            out.append(time_call(f"cellpose.compute_masks[{case}]", name,
                                 lambda: dynamics.compute_masks(dP, prob, flow_threshold=qc, device=tdev,
                                                                do_3D=labels.ndim == 3), r, sync, warmup=w))
        except Exception as e:  # noqa: BLE001 - a broken cellpose install must not lose fastpose's own figures
            log.warning("cellpose comparison failed on %s: %s", name, e)
    return out


def _ratios(results: List[Timing]) -> Dict[str, float]:
    """``"<op>[case]@<device>"``: Cellpose's time over fastpose's for each op timed by both on one device."""
    by = {(t.name, t.device): t.median_s for t in results}
    ratios = {}
    for (name, dev), s in by.items():
        if name.startswith("cellpose."):
            ours = by.get((name[len("cellpose."):], dev))
            if ours:
                ratios[f"{name[len('cellpose.'):]}@{dev}"] = s / ours
    return ratios
