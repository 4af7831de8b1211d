"""Peak resident memory of this process, for the benchmarks and the memory tests (Linux ``/proc``).

``ru_maxrss`` cannot be reset and, after ``fork`` + ``exec``, starts at the spawning process's peak, so a child
started by a large process (pytest after heavy tests) can report no growth at all.  ``VmHWM`` can be reset to the
current resident size through ``/proc/self/clear_refs``; :func:`peak_bytes` falls back to ``ru_maxrss`` where it
cannot (the callers then check that an earlier peak does not hide the growth).
"""

from __future__ import annotations

import os
import resource

__all__ = ["reset_peak", "resident_bytes", "peak_bytes"]


def reset_peak() -> bool:
    """Reset this process's peak resident size (``VmHWM``) to its current size; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def resident_bytes() -> int:
    """Current resident size of this process, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes(reset: bool) -> int:
    """Peak resident size, bytes: ``VmHWM`` (since the last :func:`reset_peak`, when ``reset`` says it worked),
    else ``ru_maxrss``."""
    if reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
