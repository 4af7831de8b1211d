"""One home for checking public parameters: finite, in range, of the right kind.

Every public entry point (``fastpose.segment``, :class:`~fastpose.inference.Segmenter`, the core wrappers,
metrics, training, the command line) checks its parameters here, once, at the boundary, so a bad value gets
the same precise sentence everywhere: what was given and what is allowed.  The ``name`` is what the caller
knows the parameter by: the Python name in the API (``diameter``), the flag on the command line
(``--diameter``); :func:`arg` turns a check into an argparse ``type=`` so the command line reports the flag.

Nothing here converts before it checks: ``int(nan)``, ``int("3.5")`` or ``float("1e999")`` never reach a
traceback; a bool is not a number.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

__all__ = ["number", "integer", "probability", "choice", "boolean", "integers", "axis", "resized_shape", "memory_bytes",
           "arg", "arg_list", "LIMITS"]

T = TypeVar("T")

#: documented bounds on parameters that scale the work (README "Limits"); a value beyond one is rejected
#: with a sentence that names the bound rather than accepted and left to run for hours
LIMITS = {
    "diameter": 10_000.0,  # px; the image is resized by diam_mean / diameter
    "niter": 10_000,  # Euler steps of mask recovery
    "image_pixels": 2 ** 34,  # pixels (voxels) of one image, 16 G, after resizing by the diameter
    "anisotropy": 100.0,  # Z step relative to the XY pixel size
    "batch_size": 1024,  # tiles per network batch; crops per training step
    "epochs": 1_000_000,  # training epochs
    "time_budget": 30 * 24 * 3600.0,  # s, a month of training
    "synthetic_pixels": 2 ** 26,  # pixels (voxels) of one synthetic image (fastpose.synthetic*)
    "synthetic_cells": 10_000,  # cell centres of one synthetic image (placement is quadratic in them)
}


def _show(value: Any, width: int = 60) -> str:
    """``repr(value)``, shortened to about ``width`` characters (a huge number or array stays readable)."""
    r = repr(value)
    return r if len(r) <= width else r[:width - 5] + "[...]"


def _describe(lo: Optional[float], hi: Optional[float], lo_open: bool, hi_open: bool, kind: str) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{kind} {'<' if hi_open else '<='} {hi:g}"
    return kind


def _parse(value: Any, name: str, want_int: bool) -> float:
    """The value as a Python number, without rounding: a string is parsed, a bool or anything else rejected."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a number, got {_show(value)}")
    if isinstance(value, str):
        s = value.strip()
        try:
            return int(s) if want_int and s.lstrip("+-").isdigit() else float(s)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {_show(value)}") from None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "item") and getattr(value, "size", 0) == 1:  # NumPy / PyTorch scalars
        return _parse(value.item(), name, want_int)
    raise ValueError(f"{name} must be a number, got {type(value).__name__} {_show(value)}")


def number(value: Any, name: str, *, lo: Optional[float] = None, hi: Optional[float] = None,
           lo_open: bool = False, hi_open: bool = False, none_ok: bool = False) -> Optional[float]:
    """``value`` as a finite float within the bounds (``lo_open``/``hi_open``: exclusive), else ValueError.

    ``none_ok``: None passes through (an optional parameter left at its default)."""
    if value is None and none_ok:
        return None
    raw = _parse(value, name, False)
    try:
        v = float(raw)
    except OverflowError:  # an int beyond the float range
        v = math.inf if raw > 0 else -math.inf
    allowed = _describe(lo, hi, lo_open, hi_open, "a finite number")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be {allowed}, got {_show(value)}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name} must be {allowed}, got {_show(value)}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name} must be {allowed}, got {_show(value)}")
    return v


def integer(value: Any, name: str, *, lo: Optional[int] = None, hi: Optional[int] = None,
            none_ok: bool = False) -> Optional[int]:
    """``value`` as an int within ``[lo, hi]``, else ValueError.  A float is accepted only when it is
    integral (``3.0``), never rounded (``3.5`` is an error); NaN and infinities are errors."""
    if value is None and none_ok:
        return None
    v = _parse(value, name, True)
    allowed = _describe(lo, hi, False, False, "an integer")
    if isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise ValueError(f"{name} must be {allowed}, got {_show(value)}")
        v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be {allowed}, got {_show(value)}")
    return int(v)


def probability(value: Any, name: str, *, open_low: bool = False, open_high: bool = False) -> float:
    """A finite number in [0, 1] (ends made exclusive on request)."""
    v = number(value, name, lo=0.0, hi=1.0, lo_open=open_low, hi_open=open_high)
    assert v is not None
    return v


def choice(value: Any, name: str, options: Iterable[T]) -> T:
    """The option equal to ``value``, else ValueError listing them (a bool matches only a bool)."""
    opts = list(options)
    for o in opts:  # a bool matches only a bool (1 is not True), an array never matches
        if isinstance(o, bool) != isinstance(value, (bool, np.bool_)) or isinstance(value, np.ndarray):
            continue
        try:
            if bool(value == o):
                return o
        except Exception:  # noqa: BLE001 - a value that cannot be compared is not an option
            continue
    raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in opts)}; got {_show(value)}")


def boolean(value: Any, name: str) -> bool:
    """``value`` if it is a bool (Python or NumPy), else ValueError: ``"no"``, ``0`` or ``None`` are not
    silently read as False."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {type(value).__name__} {_show(value)}")


def integers(value: Any, name: str, *, lo: Optional[int] = None, hi: Optional[int] = None,
             none_ok: bool = False, min_len: int = 0) -> Optional[List[int]]:
    """A sequence of integers (each checked as :func:`integer`) as a list, else ValueError naming the item."""
    if value is None and none_ok:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or getattr(value, "ndim", 1) == 0:
        raise ValueError(f"{name} must be a sequence of integers, got {type(value).__name__} {_show(value)}")
    items = list(value)
    if len(items) < min_len:
        raise ValueError(f"{name} must have at least {min_len} item(s), got {_show(value)}")
    return [integer(v, f"{name}[{i}]", lo=lo, hi=hi) for i, v in enumerate(items)]  # type: ignore[misc]


def axis(value: Any, name: str, ndim: Optional[int] = None) -> Optional[int]:
    """None or an integer axis (``-ndim <= axis < ndim`` when ``ndim`` is given; without it ``-4..3``, the axes
    of an image of at most 4 dimensions)."""
    if ndim is None:
        return integer(value, name, lo=-4, hi=3, none_ok=True)
    return integer(value, name, lo=-ndim, hi=ndim - 1, none_ok=True)


def memory_bytes() -> int:
    """The memory this process may use: the machine's physical memory, or less under an address-space limit
    (``ulimit -v`` / ``RLIMIT_AS``); 0 when it cannot be told."""
    total = 0
    try:
        total = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            total = min(total, int(soft)) if total else int(soft)
    except (ImportError, ValueError, OSError):
        pass
    return total


def resized_shape(shape: Sequence[int], scale: Sequence[float], why: str,
                  limit: Optional[int] = None, bytes_per_pixel: int = 0) -> Tuple[int, ...]:
    """The size ``shape`` is resized to by ``scale`` per axis (rounded, at least 1), checked before anything
    is allocated: ValueError when it would exceed ``limit`` (default ``LIMITS["image_pixels"]``) pixels, or,
    with ``bytes_per_pixel``, when that many bytes per pixel would exceed :func:`memory_bytes`.

    ``why`` names the cause in the message, e.g. ``"diameter=0.01 (model diameter 17)"``."""
    limit = int(LIMITS["image_pixels"] if limit is None else limit)
    f = [float(x) for x in scale]
    out = []
    for s, x in zip(shape, f):
        v = float(s) * x
        if not math.isfinite(v):
            raise ValueError(f"{why} resizes the image by a factor {x:g}, which is not a usable size")
        out.append(max(1, int(round(v))))
    n = math.prod(out)
    if n > limit:
        dims = "x".join(str(int(s)) for s in shape)
        raise ValueError(f"{why} implies resizing the {dims} image to {'x'.join(map(str, out))} ({n:.3g} pixels), "
                         f"more than the limit of {limit:.3g} pixels (fastpose.checks.LIMITS['image_pixels']); "
                         "pass the cells' real diameter in pixels (or 0 for no resizing)")
    mem = memory_bytes() if bytes_per_pixel else 0
    if mem and n * bytes_per_pixel > mem:
        dims = "x".join(str(int(s)) for s in shape)
        raise ValueError(f"{why} implies resizing the {dims} image to {'x'.join(map(str, out))} ({n:.3g} pixels), "
                         f"which needs about {n * bytes_per_pixel / 2 ** 30:.3g} GiB, more than the "
                         f"{mem / 2 ** 30:.3g} GiB of memory here; pass the cells' real diameter in pixels "
                         "(or 0 for no resizing)")
    return tuple(out)


def arg(check: Callable[..., Any], **bounds: Any) -> Callable[[str], Any]:
    """An argparse ``type=`` running ``check(text, name, **bounds)``; argparse then reports the flag:
    ``argument --diameter: must be a finite number >= 0, got 'nan'``."""

    def convert(text: str) -> Any:
        try:
            return check(text, "", **bounds)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).strip()) from None

    convert.__name__ = getattr(check, "__name__", "value")  # argparse names the type in some messages
    return convert


def arg_list(check: Callable[..., Any], *, min_len: int = 1, sep: str = ",",
             options: Optional[Sequence[str]] = None, **bounds: Any) -> Callable[[str], list]:
    """An argparse ``type=`` for a ``sep``-separated list (``--save masks,rois``): each item checked with
    ``check`` (or against ``options`` when ``check`` is :func:`choice`), at least ``min_len`` items,
    duplicates dropped in order."""

    def convert(text: str) -> list:
        items = [t.strip() for t in text.split(sep) if t.strip()]
        if len(items) < min_len:
            raise argparse.ArgumentTypeError(f"needs at least {min_len} item(s), got {text!r}"
                                             + (f"; choose from {', '.join(options)}" if options else ""))
        out: list = []
        for t in items:
            try:
                v = check(t, "", options) if options is not None else check(t, "", **bounds)
            except ValueError as e:
                raise argparse.ArgumentTypeError(f"item {t!r}: {str(e).strip()}") from None
            if v not in out:
                out.append(v)
        return out

    convert.__name__ = "list"
    return convert
