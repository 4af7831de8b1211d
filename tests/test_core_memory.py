"""Peak memory of the native mask recovery (``fastpose.core.compute_masks``, ``flow_errors``) on large synthetic
images, each in a fresh process: the growth of the peak resident size over the resident size just before the
call, per pixel.  The peak is ``VmHWM`` after resetting it (``/proc/self/clear_refs``), or ``ru_maxrss`` where
that cannot be done (a process spawned by a large one, e.g. pytest after heavy tests, inherits that one's peak
in ``ru_maxrss``: then the test skips rather than measure nothing).  Deterministic bounds in bytes, no timing.

What they hold (2D, beyond the inputs): compute_masks peaks in tracking (threshold mask 1 + positions 8 + the
AVX2 flow table 8) or clustering (mask 1 + positions 8 + histogram 4 + int32 labels 4), ~17.5 B/px; a whole-image
flow array in the flow QC (+8 B/px) or the mask and positions kept past clustering (+9 B/px) would break
``MASKS_BYTES_PER_PIXEL`` (20).  The flow QC on its own computes each mask's flows in its box: it allocates
nothing per pixel (a whole-image float flow array would be 4 * ndim B/px).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastpose.inference import budget

# Inputs are a small synthetic tile (labels -> 5 * flows + noise, logits) repeated over the image by slice
# assignment, so building them leaves no large temporaries behind the baseline.
_SCRIPT = r"""
import itertools, json, sys
import numpy as np
import fastpose.core as fc
from fastpose.bench.rss import peak_bytes, reset_peak, resident_bytes
from fastpose.synthetic import random_labels

mode, size = sys.argv[1], int(sys.argv[2])
three = mode.endswith("3d")
t = 48 if three else 300
shape = (size,) * (3 if three else 2)
lab = (random_labels((t,) * 3, 60, diameter=12, seed=1) if three
       else random_labels((t, t), 450, diameter=12, seed=1, min_distance=0.4))
f = 5 * np.asarray(fc.masks_to_flows(lab), np.float32)
f += np.random.default_rng(0).normal(0, 0.5, f.shape).astype(np.float32)
dP = np.empty((len(shape),) + shape, np.float32)
other = np.empty(shape, np.int32 if mode.startswith("errors") else np.float32)
for k, o in enumerate(itertools.product(*[range(0, s, t) for s in shape])):
    sl = tuple(slice(a, min(a + t, s)) for a, s in zip(o, shape))
    ts = tuple(slice(0, x.stop - x.start) for x in sl)
    dP[(slice(None),) + sl] = f[(slice(None),) + ts]
    # compute_masks: every pixel foreground (the densest clustering); flow_errors: the tile's labels, distinct
    # per tile (offset by k * max), so every mask stays inside its tile
    other[sl] = np.where(lab[ts] > 0, lab[ts] + k * int(lab.max()), 0) if mode.startswith("errors") else 3.0
del f, lab
n = int(np.prod(shape))


rss_now = resident_bytes()
reset = reset_peak()
hidden = peak_bytes(reset) - rss_now  # > 0: an earlier peak would hide part of the growth
if mode.startswith("errors"):
    out = fc.flow_errors(other, dP)
    count = int(out.shape[0])
else:
    out = fc.compute_masks(dP, other)
    count = int(out.max())
peak = peak_bytes(reset)
print(json.dumps({"n": n, "count": count, "growth": (peak - rss_now) / n, "hidden": hidden / n}))
"""


def _growth(mode: str, size: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode, str(size)], check=False, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["hidden"] > 0.5:
        pytest.skip(f"cannot measure the peak: /proc/self/clear_refs is not writable and ru_maxrss starts "
                    f"{r['hidden']:.1f} B/px above the resident size")
    return r


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_compute_masks_2d_peak_within_the_budget_constant():
    """3000 x 3000, all foreground, ~40000 cells: the peak stays under MASKS_BYTES_PER_PIXEL (was ~23 B/px with
    the mask and positions kept through a whole-image flow QC)."""
    r = _growth("masks2d", 3000)
    assert r["count"] > 10000, r  # many cells: the clustering and the QC did real work
    assert r["growth"] < budget.MASKS_BYTES_PER_PIXEL, r


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_compute_masks_3d_peak():
    """144^3 voxels, all foreground: the tracking peak (mask 1 + positions 12 + flow table 16 on (Z+1)(Y+1)(X+1)
    entries; measured 29.6 B/voxel) bounds it; the 3D flow QC (no whole-image flows) and clustering stay below."""
    r = _growth("masks3d", 144)
    assert r["count"] > 500, r
    assert r["growth"] < 32, r


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.parametrize("mode,size", [("errors2d", 3000), ("errors3d", 144)])
def test_flow_qc_allocates_nothing_per_pixel(mode, size):
    """flow_errors (the QC of compute_masks) recomputes each mask's flows in its padded box: no whole-image
    float array (4 * ndim B/px) and no whole-image boolean for the finiteness check of dP."""
    r = _growth(mode, size)
    assert r["count"] > 500, r
    # half a byte per pixel plus 16 MB of fixed costs (thread stacks, first-use imports): a whole-image flow array
    # would be 72 MB (2D, 3000^2) / 36 MB (3D, 144^3) more
    assert r["growth"] * r["n"] < 0.5 * r["n"] + 16e6, r
