"""The memory budget of 2D segmentation: how much a path will allocate, estimated before it allocates anything.

Two paths segment a 2D image (see :mod:`.segmenter` and :mod:`.tiled`):

* the **whole-image** path: the image converted to float32 [C, Y, X], normalised, resized, padded, cut into
  every tile at once, blended; fastest, and the one ordinary images take (its results are the reference);
* the **bounded** path: tiles cut from the original (integer) array, converted and normalised tile by tile
  (statistics computed in bands, :data:`fastpose.transforms.STATS_PIXELS`), fed to the network a batch at a
  time and blended into one preallocated float32 result [n_outputs, Y, X]; only the result, the mask
  recovery and a few bands of rows scale with the image.

:func:`plan_2d` estimates both; :meth:`MemoryPlan.choose` takes the whole-image path when it fits the budget,
the bounded one when only that fits, and raises a ValueError (the estimate, the budget, what to do) otherwise.
The budget (``max_memory`` of :class:`~fastpose.inference.Segmenter` / :func:`~fastpose.segment`; the
``--max-memory`` flag) is a number of bytes or a size such as ``"8GB"``; by default
:data:`DEFAULT_FRACTION` of the memory available when the image arrives (``MemAvailable`` of
``/proc/meminfo``; where that cannot be read, of the physical memory).  The estimates count what fastpose
allocates, not the input array itself.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from ..checks import number

__all__ = ["parse_memory", "available_memory", "resolve_budget", "plan_2d", "MemoryPlan", "format_bytes",
           "DEFAULT_FRACTION", "MASKS_BYTES_PER_PIXEL", "NET_BYTES_PER_TILE_PIXEL"]

log = logging.getLogger("fastpose.inference")

#: default budget: this fraction of the memory available when an image arrives
DEFAULT_FRACTION = 0.8
#: peak bytes per pixel of ``fastpose.core.compute_masks`` on the CPU in 2D beyond its inputs (measured: 17.2-17.7
#: at 3000^2-8000^2 with 40000-320000 cells, all-foreground or not; the peak is tracking (threshold mask 1,
#: positions 8, the AVX2 flow table 8) or clustering (mask 1, positions 8, histogram 4, int32 labels 4); the
#: mask and positions are freed before the flow QC, which works per mask; tests/test_core_memory.py holds it)
MASKS_BYTES_PER_PIXEL = 20
#: network activations per tile pixel of a batch (measured for the Cellpose U-Net, CPU fp32: ~1.7 kB)
NET_BYTES_PER_TILE_PIXEL = 2048

_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_memory(value: Any, name: str = "max_memory") -> Optional[int]:
    """A memory size in bytes from a number of bytes or a string such as ``"8GB"``, ``"512MiB"``, ``"1.5G"``
    (decimal units K/M/G/T[B], binary KiB/MiB/GiB/TiB); None stays None (the default budget)."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", value)
        unit = m.group(2).upper() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"{name} must be a number of bytes or a size such as '8GB' or '512MiB' "
                             f"(units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), got {value!r}")
        v = number(m.group(1), name, lo=0.0, lo_open=True)
        return int(v * _UNITS[unit])
    v = number(value, name, lo=0.0, lo_open=True)
    return int(v)


def available_memory() -> int:
    """Bytes of memory available now: ``MemAvailable`` of ``/proc/meminfo``, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux/macOS
        return 16 * 2 ** 30


def resolve_budget(max_memory: Optional[int]) -> int:
    """The budget in bytes: ``max_memory``, or :data:`DEFAULT_FRACTION` of :func:`available_memory`."""
    return int(max_memory) if max_memory is not None else int(DEFAULT_FRACTION * available_memory())


def format_bytes(n: float) -> str:
    """``n`` bytes as a short decimal size (``"12.3 GB"``)."""
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.1f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated peak bytes of the two 2D paths for one image (see the module docstring)."""

    shape: Tuple[int, int]
    whole: int
    bounded: int
    budget: int
    whole_parts: Dict[str, int] = field(default_factory=dict)
    bounded_parts: Dict[str, int] = field(default_factory=dict)

    def choose(self, bounded_ok: bool = True, why_not: str = "", whole_ok: bool = True) -> str:
        """``"whole"`` when the whole-image path fits the budget (and is possible: ``whole_ok``), else
        ``"bounded"`` when that fits (and is possible: ``bounded_ok``), else ValueError with the estimates, the
        budget and what to do."""
        if whole_ok and self.whole <= self.budget:
            return "whole"
        if bounded_ok and self.bounded <= self.budget:
            log.info("image %dx%d: whole-image path ~%s over the budget %s; tiling it within ~%s", *self.shape,
                     format_bytes(self.whole), format_bytes(self.budget), format_bytes(self.bounded))
            return "bounded"
        best = self.bounded if bounded_ok else self.whole
        parts = self.bounded_parts if bounded_ok else self.whole_parts
        detail = ", ".join(f"{k} {format_bytes(v)}" for k, v in parts.items() if v)
        extra = "" if bounded_ok else f" ({why_not}; the tiled path would need ~{format_bytes(self.bounded)})"
        raise ValueError(
            f"segmenting a {self.shape[0]} x {self.shape[1]} image needs about {format_bytes(best)} ({detail}), "
            f"more than the memory budget max_memory={format_bytes(self.budget)}{extra}.  Crop or downsample the "
            "image (or segment it in pieces), or raise max_memory (--max-memory) if the machine has the memory; "
            "a blockwise path for images beyond one machine's memory is not available yet")


def plan_2d(shape: Tuple[int, int], *, nchan: int, n_outputs: int, tile: int, padding: Any, rescale: float = 1.0,
            augment: bool = False, tile_overlap: float = 0.1, batch_size: int = 8, prepared: bool = False,
            budget: int) -> MemoryPlan:
    """Estimate the peak bytes of both 2D paths for an image of ``shape`` (Y, X).

    ``padding``: the spec's ``padding(size)``; ``prepared``: the image is already a float32 [C, Y, X] array (its
    conversion is not counted again).  See the module docstring for what each path allocates.
    """
    from ..core.tiles import plan_tiles
    from ..transforms import STATS_PIXELS, scaled_size

    Y, X = (int(s) for s in shape)
    P = Y * X
    C, O = int(nchan), int(n_outputs)
    ry, rx = scaled_size((Y, X), (rescale, rescale)) if rescale != 1.0 else (Y, X)
    Pr = ry * rx
    yp, xp = ry + padding(ry), rx + padding(rx)
    Pp = yp * xp
    g = plan_tiles(yp, xp, tile, tile_overlap, augment)
    T = g.count * g.by * g.bx
    net = min(batch_size, g.count) * g.by * g.bx * (NET_BYTES_PER_TILE_PIXEL + 4 * (C + 2 * O))
    masks = MASKS_BYTES_PER_PIXEL * P
    # whole-image path: phases (prepare, network, mask recovery); the prepared image lives throughout
    held = 4 * C * P
    stats = 0 if P > STATS_PIXELS else 5 * P  # int32 copy + comparison mask of the exact statistics
    prep = 0 if prepared else held + 4 * C * P + stats
    tiles = 4 * C * Pp + 4 * C * T + 4 * O * T + 4 * O * Pp + (4 * C * Pr if rescale != 1.0 else 0)
    back = 4 * O * P if rescale != 1.0 else 0
    whole_net = held + tiles + net
    whole_rec = held + 4 * O * P + masks
    whole = max(prep, whole_net, held + 4 * O * Pp + back, whole_rec)
    whole_parts = {"prepared image": held, "tiles and blending": tiles + back, "network": net,
                   "maps": 4 * O * P, "mask recovery": masks}
    # bounded path: the result, rolling bands (float64 accumulators, input rows), a batch, mask recovery
    band_rows = 2 * g.by + 4
    bands = band_rows * xp * (8 * (O + 1) * 2 + 4 * C * 2)
    if rescale != 1.0:  # source rows for the resize, network-scale rows kept for resizing back
        bands += band_rows * (X * 4 * (C + O) + xp * 4 * (C + O)) * 2
    result = 4 * O * P
    bounded = result + max(bands + net, masks)
    bounded_parts = {"maps": result, "bands": bands, "network": net, "mask recovery": masks}
    return MemoryPlan((Y, X), int(whole), int(bounded), int(budget), whole_parts, bounded_parts)
