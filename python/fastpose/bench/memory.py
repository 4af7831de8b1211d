"""``fastpose-bench memory``: peak memory (RSS high-water mark) of 2D segmentation against image size.

Each size runs in a fresh Python process (``ru_maxrss`` is a process-lifetime high-water mark) on a synthetic
uint16 image (bright discs on a lattice, generated band by band so making it costs no extra memory).  Two
phases are measured: tiling + network (``prepare`` + ``maps``) and mask recovery (``recover``); a phase whose
estimate exceeds the budget is skipped and its estimate reported instead.  The default network is a cheap
one of the Cellpose U-Net's spec (2 channels in, flows + cell probability out, 224-pixel tiles): one 3x3
convolution (flows from the intensity gradient, cell probability from the intensity), so memory, not the
network, is measured; ``--model nuclei`` runs a real model (slow on a CPU beyond ~2048^2).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from typing import Any, Dict, List, Optional

__all__ = ["bench_memory", "print_memory_table"]

_SCRIPT = r"""
import json, resource, sys, time
import numpy as np, torch
from fastpose.inference import Segmenter
import fastpose.transforms as tr

class Cheap(torch.nn.Module):
    fastpose_meta = {"nchan": 2, "arch": {"type": "unet"}, "diam_mean": 30.0}
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1, bias=True)
        w = torch.zeros(3, 2, 3, 3)
        # flows from the intensity gradient, scaled so the flow QC keeps the discs (one mask per disc, as a
        # real network's maps would give: mask recovery's memory is measured with real masks)
        w[0, 0, 2, 1], w[0, 0, 0, 1] = 18.0, -18.0   # flow_y: d/dy of the intensity
        w[1, 0, 1, 2], w[1, 0, 1, 0] = 18.0, -18.0   # flow_x
        w[2, 0, 1, 1] = 12.0                       # cellprob: bright = inside
        with torch.no_grad():
            self.conv.weight.copy_(w)
            self.conv.bias.copy_(torch.tensor([0.0, 0.0, -6.0]))
    def forward(self, x):
        return self.conv(x)

def image(n):
    img = np.empty((n, n), np.uint16)
    x = np.arange(n)
    for y0 in range(0, n, 1024):
        y = np.arange(y0, min(n, y0 + 1024))[:, None]
        d2 = (y % 24 - 12) ** 2 + (x[None] % 24 - 12) ** 2
        img[y0:y0 + y.shape[0]] = (300 + 2000 * np.exp(-d2 / 50.0)).astype(np.uint16)
    return img

n, model, budget, phases = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
img = image(n)
kw = {} if budget == "none" else {"max_memory": None if budget == "auto" else budget}
seg = Segmenter(Cheap() if model == "cheap" else model, device="cpu", **kw)
out = {"size": n, "pixels": n * n, "model": model}
if hasattr(seg, "memory_plan"):
    plan = seg.memory_plan(img.shape)
    out.update(whole_est=plan.whole, bounded_est=plan.bounded, budget=plan.budget,
               masks_est=plan.bounded_parts["maps"] + plan.bounded_parts["mask recovery"])
out["base"] = rss()
t = time.perf_counter()
try:
    x = seg.prepare(img)
    maps, st = seg.maps(x, 1.0)
except (ValueError, MemoryError) as e:
    out["error"] = f"{type(e).__name__}: {e}"[:300]
    print(json.dumps(out)); sys.exit()
out.update(path="bounded" if type(x).__name__ == "LazyImage" or not isinstance(x, np.ndarray) else "whole",
           net_s=time.perf_counter() - t, net_peak=rss())
if phases == "all" and ("budget" not in out or out["masks_est"] <= out["budget"]):
    t = time.perf_counter()
    res = seg.recover(maps, st, 1.0, 0.0, dict(flow_threshold=0.4, cellprob_threshold=0.0, min_size=15,
                      niter=None), False)
    out.update(masks_s=time.perf_counter() - t, peak=rss(), masks=int(res.masks.max()))
print(json.dumps(out))
"""


def bench_memory(sizes: List[int], model: str = "cheap", budget: str = "auto", phases: str = "all",
                 python: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Peak RSS per image size, one fresh process each (see the module docstring).

    ``budget``: ``max_memory`` for the Segmenter ("auto": the default; "none": do not pass it, for trees before
    the budget existed); ``phases``: "all" or "maps" (skip mask recovery).
    """
    rows = []
    for n in sizes:
        p = subprocess.run([python or sys.executable, "-c", _SCRIPT, str(int(n)), model, budget, phases],
                           capture_output=True, text=True, env=env)
        if p.returncode != 0:
            rows.append({"size": n, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]})
        else:
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
            "rows": rows}


def print_memory_table(res: Dict[str, Any]) -> None:
    """The rows of :func:`bench_memory` as a table (GB = 1e9 bytes; growth over the process after start-up)."""
    print("# " + ", ".join(f"{k}={v}" for k, v in res["machine"].items()))
    print(f"{'size':>7s} {'path':>8s} {'net GB':>7s} {'peak GB':>8s} {'est GB':>7s} {'net s':>7s} "
          f"{'masks s':>8s} {'masks':>7s}")
    for r in res["rows"]:
        if "error" in r:
            print(f"{r['size']:>7d} error: {r['error']}")
            continue
        g = lambda k: f"{(r[k] - r['base']) / 1e9:.2f}" if k in r else "-"  # noqa: E731
        est = r.get("bounded_est" if r.get("path") == "bounded" else "whole_est")
        print(f"{r['size']:>7d} {r.get('path', '?'):>8s} {g('net_peak'):>7s} {g('peak'):>8s} "
              f"{'-' if est is None else f'{est / 1e9:.2f}':>7s} {r.get('net_s', 0):7.1f} "
              f"{r.get('masks_s', float('nan')):8.1f} {r.get('masks', '-')!s:>7s}")
