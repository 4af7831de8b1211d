"""Training data: image/mask pairs from folders or memory, with cached heat-diffusion flow targets.

Images are stored channels-first, percentile-normalised (1st -> 0, 99th -> 1, as at inference) and
brought to the network's channel count.  Masks are renumbered 1..N.  Flow targets
(``fastpose.core.masks_to_flows``) are computed once and cached in an ``.npz`` next to the mask file (or
in ``cache_dir``) keyed by a SHA-1 of the renumbered masks, so a second run starts at once and a changed
mask file is recomputed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["TrainData", "compute_flow_targets", "renumber", "load_folder", "from_arrays", "as_train_data",
           "to_chw"]

log = logging.getLogger("fastpose.train")

PathLike = Union[str, os.PathLike]


@dataclass
class TrainData:
    """A training or validation set held in memory.

    Attributes:
        images: float32 [C, Y, X] normalised images.
        masks: int32 [Y, X] labels 1..N.
        flows: float32 [2, Y, X] unit flow targets (dY, dX) of ``masks``.
        diameters: median (area-equivalent) cell diameter of each image, pixels.
        names: a name per image (file stem or index) for log messages.
        n_computed / n_cached: flow targets computed vs read from the cache when loading.
    """

    images: List[np.ndarray] = field(default_factory=list)
    masks: List[np.ndarray] = field(default_factory=list)
    flows: List[np.ndarray] = field(default_factory=list)
    diameters: List[float] = field(default_factory=list)
    names: List[str] = field(default_factory=list)
    n_computed: int = 0
    n_cached: int = 0

    def __len__(self) -> int:
        return len(self.images)

    @property
    def diam_labels(self) -> float:
        """Mean over images of the median cell diameter (Cellpose's ``diam_labels``)."""
        return float(np.mean(self.diameters)) if self.diameters else 0.0


def renumber(masks: np.ndarray) -> np.ndarray:
    """Labels as int32 1..N in order of their values (0 stays background)."""
    m = np.asarray(masks)
    if m.dtype.kind not in "iub":
        if m.dtype.kind == "f" and np.all(m == np.round(m)):
            m = m.astype(np.int64)
        else:
            raise ValueError(f"masks must hold integer labels, got dtype {m.dtype}")
    uniq, inv = np.unique(m, return_inverse=True)
    inv = inv.reshape(m.shape).astype(np.int32)
    if uniq.size and uniq[0] != 0:
        inv += 1
    return inv


def compute_flow_targets(masks: np.ndarray) -> np.ndarray:
    """Unit heat-diffusion flows (2, Y, X) float32 of a label image (the native core op)."""
    import fastpose.core as fc

    return np.asarray(fc.masks_to_flows(np.ascontiguousarray(masks, dtype=np.int32)), dtype=np.float32)


def _median_diameter(masks: np.ndarray) -> float:
    from ..pipeline import median_diameter

    return median_diameter(masks)


def to_chw(img: np.ndarray, nchan: int, channel_axis: Optional[int] = None) -> np.ndarray:
    """A 2D image as float32 [nchan, Y, X]: extra channels dropped, missing ones zero.

    ``channel_axis`` names the channel axis of a 3D array; without it a small first axis (<= 4) is taken
    as channels, else a small last axis.
    """
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3:
        if channel_axis is None:
            if a.shape[0] <= 4:
                channel_axis = 0
            elif a.shape[-1] <= 4:
                channel_axis = 2
            else:
                raise ValueError(f"image of shape {a.shape}: cannot tell the channel axis; pass channel_axis")
        a = np.moveaxis(a, channel_axis, 0)
    else:
        raise ValueError(f"training images must be 2D (optionally with channels), got shape {a.shape}")
    out = np.zeros((nchan, *a.shape[1:]), np.float32)
    k = min(nchan, a.shape[0])
    out[:k] = a[:k]
    return out


def _mask_key(masks: np.ndarray) -> str:
    h = hashlib.sha1(np.ascontiguousarray(masks).tobytes())
    h.update(repr(masks.shape).encode())
    return h.hexdigest()


def _save_npz_atomic(path: Path, **arrays: Any) -> None:
    from ..io import atomic_write

    atomic_write(path, lambda f: np.savez(f, **arrays))


def cached_flows(masks: np.ndarray, cache_file: Optional[Path]) -> Tuple[np.ndarray, bool]:
    """Flow targets of renumbered ``masks``, read from / written to ``cache_file`` (.npz) when given.

    Returns (flows, came_from_cache).  A cache written for other masks (key mismatch) is recomputed; an
    unwritable cache location only logs a warning.
    """
    key = _mask_key(masks)
    if cache_file is not None and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return z["flows"].astype(np.float32, copy=False), True
            log.debug("%s is stale; recomputing", cache_file)
        except Exception as e:  # noqa: BLE001 - a corrupt cache is simply rebuilt
            log.warning("cannot read flow cache %s (%s); recomputing", cache_file, e)
    flows = compute_flow_targets(masks)
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            _save_npz_atomic(cache_file, key=np.array(key), flows=flows)
        except OSError as e:
            log.warning("cannot write flow cache %s (%s)", cache_file, e)
    return flows, False


def _add(data: TrainData, name: str, img: np.ndarray, masks: np.ndarray, nchan: int, normalize: bool,
         min_masks: int, channel_axis: Optional[int], cache_file: Optional[Path]) -> None:
    from ..pipeline import normalize_percentile

    lab = renumber(masks)
    if lab.ndim != 2:
        raise ValueError(f"{name}: masks must be 2D, got shape {lab.shape}")
    n = int(lab.max())
    if n < min_masks:
        log.info("skipping %s: %d mask(s) < min_masks=%d", name, n, min_masks)
        return
    x = to_chw(img, nchan, channel_axis)
    if x.shape[1:] != lab.shape:
        raise ValueError(f"{name}: image {x.shape[1:]} and masks {lab.shape} differ in size")
    if normalize:
        x = normalize_percentile(x)
    elif not np.isfinite(x).all():
        raise ValueError(f"{name}: image contains NaN or Inf")
    flows, hit = cached_flows(lab, cache_file)
    data.n_cached += int(hit)
    data.n_computed += int(not hit)
    data.images.append(x)
    data.masks.append(lab)
    data.flows.append(flows)
    data.diameters.append(_median_diameter(lab))
    data.names.append(name)


def from_arrays(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], nchan: int = 2, normalize: bool = True,
                min_masks: int = 1, channel_axis: Optional[int] = None,
                cache_dir: Optional[PathLike] = None) -> TrainData:
    """Training data from in-memory images ([C, Y, X], [Y, X] or [Y, X, C]) and label images.

    With ``cache_dir`` the flow targets are cached there, one ``<sha1 of masks>.npz`` per image.
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    data = TrainData()
    for i, (img, m) in enumerate(zip(images, masks)):
        cache = None
        if cache_dir is not None:
            cache = Path(cache_dir) / f"{_mask_key(renumber(m))}.npz"
        _add(data, f"image {i}", img, m, nchan, normalize, min_masks, channel_axis, cache)
    log.info("training data: %d of %d images (%d flow targets computed, %d cached)", len(data), len(images),
             data.n_computed, data.n_cached)
    return data


def load_folder(folder: PathLike, nchan: int = 2, img_filter: str = "_img", mask_filter: str = "_masks",
                min_masks: int = 1, normalize: bool = True, channel_axis: Optional[int] = None,
                cache_dir: Optional[PathLike] = None) -> TrainData:
    """Load ``*{img_filter}.tif`` images with their ``*{mask_filter}.tif`` masks (Cellpose convention).

    ``img_filter=""`` takes every TIFF that is not a mask.  Flow targets are cached as
    ``<mask stem>_flows.npz`` next to the masks, or in ``cache_dir``.
    """
    from ..io import read_image

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    pairs: List[Tuple[Path, Path, str]] = []
    for p in sorted(root.iterdir()):
        if p.suffix.lower() not in (".tif", ".tiff") or p.stem.endswith(mask_filter):
            continue
        if not p.stem.endswith(img_filter):
            continue
        stem = p.stem[: len(p.stem) - len(img_filter)] if img_filter else p.stem
        mask = next((root / f"{stem}{mask_filter}{ext}" for ext in (".tif", ".tiff", p.suffix)
                     if (root / f"{stem}{mask_filter}{ext}").is_file()), None)
        if mask is None:
            log.warning("skipping %s: no %s%s.tif", p.name, stem, mask_filter)
            continue
        pairs.append((p, mask, stem))
    if not pairs:
        raise ValueError(f"{root}: no *{img_filter}.tif images with *{mask_filter}.tif masks")
    data = TrainData()
    for img_p, mask_p, stem in pairs:
        cache = (Path(cache_dir) if cache_dir is not None else mask_p.parent) / f"{mask_p.stem}_flows.npz"
        _add(data, stem, read_image(img_p), read_image(mask_p), nchan, normalize, min_masks, channel_axis, cache)
    log.info("%s: %d of %d images (%d flow targets computed, %d cached)", root, len(data), len(pairs),
             data.n_computed, data.n_cached)
    return data


def as_train_data(x: Any, nchan: int, **kwargs: Any) -> TrainData:
    """Accept a :class:`TrainData`, a folder path, or a list of (image, masks) pairs."""
    if x is None or isinstance(x, TrainData):
        return x
    if isinstance(x, (str, os.PathLike)):
        return load_folder(x, nchan=nchan, **kwargs)
    pairs = list(x)
    return from_arrays([p[0] for p in pairs], [p[1] for p in pairs], nchan=nchan, **kwargs)
