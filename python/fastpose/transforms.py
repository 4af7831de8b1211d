"""Input transforms shared by segmentation and training: axes and channels, percentile normalisation, resizing.

Axes are never guessed: :func:`to_channels_first` takes them by name for :func:`fastpose.segment` and for
training data alike.  :func:`percentiles` is NumPy's linear percentile, exact, in O(N) for integer images.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["to_channels_first", "channel_view", "percentiles", "channel_range", "scale_channel",
           "normalize_percentile", "normalize_tiles", "normalize", "LazyImage", "prepare_lazy", "resize",
           "scaled_size", "check_finite", "STATS_PIXELS", "tensor_percentiles", "normalize_tensor"]

ArrayLike = Any


def to_channels_first(image: ArrayLike, channel_axis: Optional[int], z_axis: Optional[int],
                      channels: Optional[Sequence[int]], nchan: int, do_3D: bool) -> np.ndarray:
    """Return a float32 array (C, Y, X) or (C, Z, Y, X) with exactly ``nchan`` channels.

    ``channel_axis``/``z_axis`` name the axes explicitly (no guessing): a 2D array is (Y, X); a 3D array
    needs ``channel_axis`` (a multichannel 2D image) or ``z_axis`` (a volume); a 4D array needs both.
    ``channels`` picks which input channels feed the network, in order (default: the first ``nchan``);
    missing channels are zero (Cellpose's convention for an absent nuclear channel).
    """
    a, picks = channel_view(image, channel_axis, z_axis, channels, nchan, do_3D)
    out = np.zeros((nchan, *a.shape[1:]), np.float32)
    for i, c in enumerate(picks):
        if c is not None:
            out[i] = a[c]
    return out


def channel_view(image: ArrayLike, channel_axis: Optional[int], z_axis: Optional[int],
                 channels: Optional[Sequence[int]], nchan: int, do_3D: bool) -> Tuple[np.ndarray, List[Optional[int]]]:
    """The axis and channel logic of :func:`to_channels_first` without the float copy.

    Returns ``(view, picks)``: ``view`` is the input, channels first ((C_in, Y, X) or (C_in, Z, Y, X)), a
    transposed view of ``image`` in its own dtype (no copy); ``picks[i]`` is the input channel feeding network
    channel ``i`` (None: a zero channel).  Raises the same ValueErrors as :func:`to_channels_first`.
    """
    a = np.asarray(image)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise ValueError(f"image must be a numeric array, got dtype {a.dtype}")
    if a.ndim < 2 or a.ndim > 4:
        raise ValueError(f"image must have 2 to 4 dimensions, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"image is empty (shape {a.shape})")
    axes = list(range(a.ndim))
    ca = None if channel_axis is None else _axis(channel_axis, a.ndim, "channel_axis")
    za = None if z_axis is None else _axis(z_axis, a.ndim, "z_axis")
    if ca is not None and ca == za:
        raise ValueError("channel_axis and z_axis must differ")
    spatial = [ax for ax in axes if ax not in (ca, za)]
    if len(spatial) != 2:
        hint = ("for a 3D array pass channel_axis=... (a multichannel 2D image) or z_axis=... (a volume)"
                if a.ndim == 3 else "for a 4D array pass both channel_axis and z_axis")
        raise ValueError(f"image of shape {a.shape}: cannot tell the axes apart; {hint}")
    order = ([ca] if ca is not None else []) + ([za] if za is not None else []) + spatial
    a = np.transpose(a, order)
    if ca is None:
        a = a[None]
    if do_3D and za is None:
        raise ValueError("do_3D=True needs a volume: pass z_axis")
    if not do_3D and za is not None:
        raise ValueError("a volume (z_axis given) needs do_3D=True or stitch_threshold > 0 "
                         "(or segment its planes one by one)")
    picks = list(range(min(nchan, a.shape[0]))) if channels is None else list(channels)
    if len(picks) > nchan:
        raise ValueError(f"channels={list(channels)} selects {len(picks)} channels; the model takes {nchan}")
    out: List[Optional[int]] = [None] * nchan
    for i, c in enumerate(picks):
        if c is None or c < 0:
            continue
        if c >= a.shape[0]:
            raise ValueError(f"channels={list(channels)}: the image has only {a.shape[0]} channel(s)")
        out[i] = int(c)
    return a, out


def _axis(ax: int, ndim: int, name: str) -> int:
    if not -ndim <= ax < ndim:
        raise ValueError(f"{name}={ax} is out of range for a {ndim}D image")
    return ax % ndim


def _lerp(a: float, b: float, t: float) -> float:
    # NumPy's linear interpolation between neighbouring order statistics (numpy/lib/_function_base_impl.py)
    return b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t


#: channels of more pixels than this get their percentiles in bands of rows (bounded memory): exactly for
#: integer-valued channels in [0, 65535] (a histogram summed over the bands, the same numbers as NumPy's), from a
#: deterministic strided subsample of about this many pixels otherwise (every k-th row and column,
#: k = ceil(sqrt(pixels / STATS_PIXELS))).  Channels up to this size (4096 x 4096) use the exact statistics.
STATS_PIXELS = 2 ** 24
#: pixels per band of the banded passes (statistics, finite checks)
BAND_PIXELS = 2 ** 22


def _bands(ch: np.ndarray) -> Iterator[np.ndarray]:
    """Views covering ``ch`` in bands of about :data:`BAND_PIXELS` pixels (rows of its last two axes)."""
    if ch.ndim == 1:
        for i in range(0, ch.shape[0], BAND_PIXELS):
            yield ch[i:i + BAND_PIXELS]
        return
    rows = max(1, BAND_PIXELS // max(1, ch.shape[-1]))
    for idx in np.ndindex(*ch.shape[:-2]):
        plane = ch[idx]
        for r in range(0, plane.shape[0], rows):
            yield plane[r:r + rows]


def _subsample(ch: np.ndarray, dtype: Any = None) -> np.ndarray:
    """The deterministic strided subsample of a large channel (see :data:`STATS_PIXELS`), as a small copy."""
    k = int(math.ceil(math.sqrt(ch.size / STATS_PIXELS)))
    sub = ch[::k * k] if ch.ndim == 1 else ch[..., ::k, ::k]
    return np.ascontiguousarray(sub, dtype=dtype)


def _order_stats(cum: np.ndarray, n: int, qs: Sequence[float]) -> List[float]:
    out = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        k = int(np.floor(pos))
        a = float(np.searchsorted(cum, k, side="right"))           # k-th smallest (0-based)
        b = float(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
        out.append(_lerp(a, b, pos - k))
    return out


def percentiles(ch: np.ndarray, qs: Sequence[float], dtype: Any = None) -> List[float]:
    """``np.percentile(ch, qs)`` (method "linear"), exactly, in O(N) for integer-valued channels.

    Microscopy images are mostly 8/16-bit integers; for those the order statistics come from a histogram
    (``np.bincount``) instead of a partial sort, about 4x faster on a 1080x1080 channel.  Anything else
    (fractional values, negative or huge ranges) goes to ``np.percentile``.  Channels above
    :data:`STATS_PIXELS` pixels are read in bands (no whole-channel copy): still exact for integer values in
    [0, 65535], from a strided subsample otherwise.  ``dtype``: the statistics of ``ch.astype(dtype)`` (the
    values as they will be normalised, e.g. float32), without converting the whole channel.
    """
    n = ch.size
    if n == 0:
        raise ValueError("cannot normalise an empty image")
    if dtype is not None and ch.dtype == np.dtype(dtype):
        dtype = None
    if n > STATS_PIXELS:
        return _percentiles_large(ch, qs, dtype)
    flat = ch.reshape(-1) if dtype is None else ch.reshape(-1).astype(dtype)
    lo, hi = float(flat.min()), float(flat.max())
    if not (lo >= 0 and hi <= 65535):  # negative, large, or NaN
        return [float(v) for v in np.percentile(flat, qs)]
    iv = flat.astype(np.int32)
    if not np.array_equal(iv, flat):
        return [float(v) for v in np.percentile(flat, qs)]
    return _order_stats(np.cumsum(np.bincount(iv, minlength=int(hi) + 1)), n, qs)


def _percentiles_large(ch: np.ndarray, qs: Sequence[float], dtype: Any = None) -> List[float]:
    integral = ch.dtype.kind in "biu"
    if integral and dtype is not None and np.dtype(dtype).kind == "f":
        integral = False  # int -> float may round values beyond 2**24: decide on the converted values
    lo, hi = math.inf, -math.inf

    def bands() -> Iterator[np.ndarray]:
        for b in _bands(ch):
            yield b if dtype is None else b.astype(dtype)
    for b in bands():
        lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
        if not integral or not (lo >= 0 and hi <= 65535):
            break
    if not integral and lo >= 0 and hi <= 65535:  # a float channel: integer-valued throughout?
        integral = True
        for b in bands():
            lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
            if not (lo >= 0 and hi <= 65535) or not np.array_equal(np.floor(b), b):
                integral = False
                break
    if not (integral and lo >= 0 and hi <= 65535):
        return [float(v) for v in np.percentile(_subsample(ch, dtype), qs)]
    counts = np.zeros(int(hi) + 1, np.int64)
    for b in bands():
        counts += np.bincount(b.reshape(-1).astype(np.intp), minlength=int(hi) + 1)
    return _order_stats(np.cumsum(counts), ch.size, qs)


def channel_range(ch: np.ndarray, lower: float, upper: float,
                  dtype: Any = None) -> Tuple[np.float64, np.float64, bool]:
    """``(lo, hi, ok)``: the ``lower``/``upper`` percentiles of a channel (checked finite) and whether they span
    a range to scale by (False for constant channels, which normalise to 0).  ``dtype``: of the channel's values
    converted to it (float32 for a prepared image), band by band."""
    if ch.size > STATS_PIXELS or (dtype is not None and ch.dtype != np.dtype(dtype)):
        for b in _bands(ch):
            check_finite(b if dtype is None else b.astype(dtype))
    else:
        check_finite(ch)
    lo, hi = (np.float64(v) for v in percentiles(ch, [lower, upper], dtype))
    return lo, hi, bool(hi - lo > 1e-3 * max(abs(hi), 1e-12) and hi > lo)


def scale_channel(ch: np.ndarray, lo: np.float64, hi: np.float64, ok: bool, invert: bool = False) -> np.ndarray:
    """Scale a float32 channel in place so ``lo``/``hi`` map to 0/1 (then invert); zero when not ``ok``.  The one
    arithmetic of the percentile normalisation, whole images and blocks alike (so both agree bitwise)."""
    if ok:
        ch -= lo
        ch /= (hi - lo)
        if invert:
            ch *= -1
            ch += 1
    else:
        ch[...] = 0
    return ch


def normalize_percentile(x: np.ndarray, lower: float = 1.0, upper: float = 99.0, invert: bool = False) -> np.ndarray:
    """Scale each channel (axis 0) so its ``lower``/``upper`` percentiles map to 0 and 1 (Cellpose).

    Channels that are constant (or all zero) are left at 0 instead of dividing by zero.
    """
    x = x.astype(np.float32, copy=True)
    for c in range(x.shape[0]):
        scale_channel(x[c], *channel_range(x[c], lower, upper), invert=invert)
    return x


class LazyImage:
    """A 2D image prepared block by block: channels picked and normalised on read, never copied whole.

    What :func:`to_channels_first` + :func:`normalize` would return, float32 ``[nchan, Y, X]``, but each
    :meth:`block` reads only its region of the original array (any dtype, any axis order) and converts just
    that; the normalisation statistics are computed once, up front, with :func:`channel_range` (so a block is
    bitwise the same region of the whole prepared image).  Made by :func:`prepare_lazy`.
    """

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, src: np.ndarray, picks: Sequence[Optional[int]],
                 ranges: Optional[Sequence[Tuple[np.float64, np.float64, bool]]], invert: bool) -> None:
        self.src = src
        self.picks = list(picks)
        self.ranges = None if ranges is None else list(ranges)
        self.invert = bool(invert)
        self.shape: Tuple[int, int, int] = (len(self.picks), int(src.shape[-2]), int(src.shape[-1]))

    @property
    def nbytes(self) -> int:
        """Bytes of the dense float32 image (what materialising it would allocate)."""
        return 4 * self.shape[0] * self.shape[1] * self.shape[2]

    def block(self, y0: int, y1: int, x0: int = 0, x1: Optional[int] = None) -> np.ndarray:
        """The prepared float32 ``[nchan, y1 - y0, x1 - x0]`` region (rows/columns clipped to the image)."""
        Y, X = self.shape[1:]
        x1 = X if x1 is None else x1
        y0, y1, x0, x1 = max(0, y0), min(Y, y1), max(0, x0), min(X, x1)
        out = np.zeros((self.shape[0], max(0, y1 - y0), max(0, x1 - x0)), np.float32)
        if out.size == 0:
            return out
        for i, c in enumerate(self.picks):
            if c is None:
                continue
            out[i] = self.src[c, y0:y1, x0:x1]
            if self.ranges is not None:
                scale_channel(out[i], *self.ranges[i], invert=self.invert)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.block(0, self.shape[1])
        return a if dtype is None else a.astype(dtype, copy=False)


def prepare_lazy(image: ArrayLike, channel_axis: Optional[int], channels: Optional[Sequence[int]], nchan: int,
                 mode: Any = True, lower: float = 1.0, upper: float = 99.0, invert: bool = False) -> LazyImage:
    """A 2D image as a :class:`LazyImage`: :func:`to_channels_first` + :func:`normalize` (``mode`` True or False;
    ``"tile"`` needs the whole image) without a whole-image copy.  Statistics and finite checks run in bands."""
    if mode == "tile":
        raise ValueError("normalize='tile' is not available for images prepared block by block (images above "
                         "the memory budget): use normalize=True, or crop/downsample the image")
    src, picks = channel_view(image, channel_axis, None, channels, nchan, False)
    ranges: Optional[List[Tuple[np.float64, np.float64, bool]]] = None
    done: dict = {}
    if mode:
        zero = (np.float64(0.0), np.float64(0.0), False)  # an absent channel is all zeros: constant -> 0
        ranges = []
        for c in picks:
            if c is not None and c not in done:
                done[c] = channel_range(src[c], lower, upper, np.float32)
            ranges.append(zero if c is None else done[c])
    else:
        for c in set(p for p in picks if p is not None):
            for b in _bands(src[c]):
                check_finite(b.astype(np.float32, copy=False))
    return LazyImage(src, picks, ranges, bool(invert and mode))


def normalize_tiles(x: np.ndarray, blocksize: int = 128, lower: float = 1.0, upper: float = 99.0,
                    invert: bool = False) -> np.ndarray:
    """Tile-wise percentile normalisation for unevenly lit images (Cellpose's ``tile_norm_blocksize``).

    The last two axes are cut into blocks of about ``blocksize`` pixels; each block's ``lower``/``upper``
    percentiles form coarse maps that are smoothly (bilinearly) resized to the image and used in place of the
    global percentiles of :func:`normalize_percentile`.
    """
    import torch
    import torch.nn.functional as F

    if blocksize < 8:
        raise ValueError(f"tile normalisation block size must be >= 8, got {blocksize}")
    x = check_finite(x.astype(np.float32, copy=True))
    Ly, Lx = x.shape[-2:]
    ny, nx = max(1, round(Ly / blocksize)), max(1, round(Lx / blocksize))
    ys = np.linspace(0, Ly, ny + 1).astype(int)
    xs = np.linspace(0, Lx, nx + 1).astype(int)
    flat = x.reshape(-1, Ly, Lx)
    for c in range(flat.shape[0]):
        lo = np.zeros((ny, nx), np.float32)
        hi = np.zeros((ny, nx), np.float32)
        for j in range(ny):
            for i in range(nx):
                lo[j, i], hi[j, i] = np.percentile(flat[c, ys[j]:ys[j + 1], xs[i]:xs[i + 1]], [lower, upper])
        maps = torch.from_numpy(np.stack([lo, hi]))[None]
        maps = F.interpolate(maps, size=(Ly, Lx), mode="bilinear", align_corners=False)[0].numpy()
        rng = maps[1] - maps[0]
        ok = rng > 1e-6
        flat[c] = np.where(ok, (flat[c] - maps[0]) / np.where(ok, rng, 1.0), 0.0)
        if invert:
            flat[c] = 1.0 - flat[c]
    return flat.reshape(x.shape)


def check_finite(x: np.ndarray) -> np.ndarray:
    """``x`` unchanged; ValueError when it holds NaN or Inf."""
    if not np.isfinite(x).all():
        raise ValueError("image contains NaN or Inf")
    return x


def normalize(x: np.ndarray, mode: Any = True, lower: float = 1.0, upper: float = 99.0,
              invert: bool = False) -> np.ndarray:
    """The input normalisation of a model: ``mode`` True (per-channel ``lower``/``upper`` percentiles to 0/1),
    ``"tile"`` (the same per block of ~128 px, :func:`normalize_tiles`) or False (none; still checked finite).

    ``x`` is channels-first float32 (:func:`to_channels_first`); ``invert`` flips intensities after scaling
    (with ``mode=False`` it is ignored, as the percentiles that define the range are not computed).
    """
    if mode == "tile":
        return normalize_tiles(x, lower=lower, upper=upper, invert=invert)
    if mode:
        return normalize_percentile(x, lower=lower, upper=upper, invert=invert)
    return check_finite(x)


def resize(t: Any, size: Tuple[int, ...]) -> Any:
    """Resize a tensor [B, C, *spatial] to ``size`` (bilinear in 2D, trilinear in 3D, ``align_corners=False``
    as in Cellpose); returned unchanged when it already has that size."""
    import torch.nn.functional as F

    size = tuple(int(s) for s in size)
    if tuple(t.shape[2:]) == size:
        return t
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(t, size=size, mode=mode, align_corners=False)


def scaled_size(shape: Sequence[int], scale: Sequence[float]) -> Tuple[int, ...]:
    """``shape`` times ``scale`` per axis, rounded, at least 1 (the size an image is resized to)."""
    return tuple(max(1, int(round(s * f))) for s, f in zip(shape, scale))


# ---- the same on tensors (any device): restoration chained in front of segmentation stays on the GPU ------------

def tensor_percentiles(flat: Any, qs: Sequence[float]) -> Any:
    """NumPy's linear percentiles ``qs`` (0-100) of each row of a tensor ``flat`` [n, N] -> float32 [len(qs), n],
    computed in float32 on the tensor's device (rows beyond 2**24 values: a strided subsample of about that
    many, as :data:`STATS_PIXELS` does for NumPy)."""
    import torch

    n = flat.shape[-1]
    if n > STATS_PIXELS:
        flat = flat[:, :: int(math.ceil(n / STATS_PIXELS))]
    q = torch.tensor([float(v) / 100.0 for v in qs], dtype=torch.float32, device=flat.device)
    return torch.quantile(flat.float(), q, dim=-1)


def normalize_tensor(t: Any, lower: float = 1.0, upper: float = 99.0, invert: bool = False) -> Any:
    """:func:`normalize_percentile` of a float tensor [B, C, *spatial] on its own device, per image and channel:
    the ``lower``/``upper`` percentiles map to 0/1, constant channels to 0 (the same rule as
    :func:`channel_range`); ValueError when it holds NaN or Inf."""
    import torch

    if not bool(torch.isfinite(t).all()):
        raise ValueError("image contains NaN or Inf")
    b, c = t.shape[:2]
    flat = t.reshape(b * c, -1).float()
    lo, hi = tensor_percentiles(flat, (lower, upper))
    ok = (hi - lo > 1e-3 * torch.clamp(hi.abs(), min=1e-12)) & (hi > lo)
    scale = torch.where(ok, hi - lo, torch.ones_like(hi))
    out = (flat - lo[:, None]) / scale[:, None]
    out = torch.where(ok[:, None], out, torch.zeros_like(out))
    if invert:
        out = torch.where(ok[:, None], 1 - out, out)
    return out.reshape(t.shape)
