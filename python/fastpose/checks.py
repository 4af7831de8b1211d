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
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar

__all__ = ["number", "integer", "probability", "choice", "arg", "arg_list", "LIMITS"]

T = TypeVar("T")

#: documented bounds on parameters that scale the work (README "Limits"); a value beyond one is rejected
#: with a sentence that names the bound rather than accepted and left to run for hours
LIMITS = {
    "diameter": 10_000.0,  # px; the image is resized by diam_mean / diameter
    "niter": 10_000,  # Euler steps of mask recovery
    "image_pixels": 2 ** 34,  # pixels (voxels) of one image, 16 G
}


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
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, str):
        s = value.strip()
        try:
            return int(s) if want_int and s.lstrip("+-").isdigit() else float(s)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "item") and getattr(value, "size", 0) == 1:  # NumPy / PyTorch scalars
        return _parse(value.item(), name, want_int)
    raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")


def number(value: Any, name: str, *, lo: Optional[float] = None, hi: Optional[float] = None,
           lo_open: bool = False, hi_open: bool = False, none_ok: bool = False) -> Optional[float]:
    """``value`` as a finite float within the bounds (``lo_open``/``hi_open``: exclusive), else ValueError.

    ``none_ok``: None passes through (an optional parameter left at its default)."""
    if value is None and none_ok:
        return None
    v = float(_parse(value, name, False))
    allowed = _describe(lo, hi, lo_open, hi_open, "a finite number")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
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
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
        v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(v)


def probability(value: Any, name: str, *, open_low: bool = False, open_high: bool = False) -> float:
    """A finite number in [0, 1] (ends made exclusive on request)."""
    v = number(value, name, lo=0.0, hi=1.0, lo_open=open_low, hi_open=open_high)
    assert v is not None
    return v


def choice(value: Any, name: str, options: Iterable[T]) -> T:
    """``value`` if it is one of ``options``, else ValueError listing them."""
    opts = list(options)
    if value not in opts:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in opts)}; got {value!r}")
    return value


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
