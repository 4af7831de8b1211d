"""Training data: image/mask pairs from folders or memory, with cached heat-diffusion flow targets.

Images are stored channels-first, percentile-normalised (1st -> 0, 99th -> 1, as at inference) and
brought to the network's channel count by :func:`fastpose.transforms.to_channels_first`, the function
segmentation uses: axes are never guessed (a 2D array is (Y, X); a 3D array needs ``channel_axis``).
Masks are renumbered 1..N (:func:`fastpose.labels.relabel_sequential`).

A folder can be split into training and held-out images by a hash of the image id
(:func:`heldout_by_hash`), so the split is fixed by the file names alone.  Flow targets
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
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..labels import median_diameter, relabel_sequential
from ..transforms import normalize_percentile, to_channels_first

__all__ = ["TrainData", "compute_flow_targets", "renumber", "load_folder", "from_arrays", "as_train_data",
           "prepare_image", "image_kind", "heldout_by_hash", "folder_ids", "selected_ids", "ClassedImage",
           "load_class_folder", "folder_class_names", "image_files", "split_images"]

log = logging.getLogger("fastpose.train")

PathLike = Union[str, os.PathLike]


@dataclass
class TrainData:
    """A training or validation set held in memory.

    Attributes:
        images: float32 [C, Y, X] normalised images.
        masks: int32 [Y, X] labels 1..N.
        flows: float32 [2, Y, X] unit flow targets (dY, dX) of ``masks`` (None when loaded with
            ``flows=False``, for evaluation only).
        diameters: median (area-equivalent) cell diameter of each image, pixels.
        names: a name per image (the image id: file stem less ``img_filter``, or "image <index>").
        kinds: the kind of each input image before channel handling: "grey" (one channel), "rgb" (three
            or four channels) or "<n>ch"; evaluation reports scores per kind.
        n_computed / n_cached: flow targets computed vs read from the cache when loading.
    """

    images: List[np.ndarray] = field(default_factory=list)
    masks: List[np.ndarray] = field(default_factory=list)
    flows: List[np.ndarray] = field(default_factory=list)
    diameters: List[float] = field(default_factory=list)
    names: List[str] = field(default_factory=list)
    kinds: List[str] = field(default_factory=list)
    n_computed: int = 0
    n_cached: int = 0

    def __len__(self) -> int:
        return len(self.images)

    @property
    def diam_labels(self) -> float:
        """Mean over images of the median cell diameter (Cellpose's ``diam_labels``)."""
        return float(np.mean(self.diameters)) if self.diameters else 0.0


def renumber(masks: np.ndarray) -> np.ndarray:
    """Labels as int32 1..N in order of their values (0 stays background); float masks must hold integers."""
    m = np.asarray(masks)
    if m.dtype.kind not in "iub":
        if m.dtype.kind == "f" and np.all(m == np.round(m)):
            m = m.astype(np.int64)
        else:
            raise ValueError(f"masks must hold integer labels, got dtype {m.dtype}")
    return relabel_sequential(m)[0]


def compute_flow_targets(masks: np.ndarray) -> np.ndarray:
    """Unit heat-diffusion flows (2, Y, X) float32 of a label image (the native core op)."""
    import fastpose.core as fc

    return np.asarray(fc.masks_to_flows(np.ascontiguousarray(masks, dtype=np.int32)), dtype=np.float32)


def prepare_image(img: np.ndarray, nchan: int, channel_axis: Optional[int] = None,
                  channels: Optional[Sequence[int]] = None, grey: bool = False) -> np.ndarray:
    """A 2D training image as float32 [nchan, Y, X], through :func:`fastpose.transforms.to_channels_first`.

    A 2D array is (Y, X) whatever ``channel_axis`` says (a folder may mix grey and colour files); a 3D
    array needs ``channel_axis`` (else the ValueError of ``to_channels_first``).  ``channels`` picks input
    channels in order (default: the first ``nchan``; missing ones are zero).  ``grey`` averages the first
    three selected channels (RGB; alpha dropped) into channel 0 and leaves the others zero, for a
    one-channel model trained on a mix of grey and colour images.
    """
    a = np.asarray(img)
    ca = None if a.ndim == 2 else channel_axis
    if not grey:
        return to_channels_first(a, ca, None, channels, nchan, False)
    if channels is not None:
        n_in = len(channels)
    else:  # every input channel (an out-of-range axis is reported by to_channels_first)
        n_in = a.shape[ca] if ca is not None and -a.ndim <= ca < a.ndim else 1
    x = to_channels_first(a, ca, None, channels, n_in, False)
    out = np.zeros((nchan, *x.shape[1:]), np.float32)
    out[0] = x[:3].mean(0)
    return out


def image_kind(img: np.ndarray, channel_axis: Optional[int] = None) -> str:
    """"grey" for a 2D array, "rgb" for 3 or 4 channels along ``channel_axis``, else "<n>ch"."""
    a = np.asarray(img)
    if a.ndim == 2 or channel_axis is None:
        return "grey"
    n = a.shape[channel_axis]
    return "grey" if n == 1 else "rgb" if n in (3, 4) else f"{n}ch"


def heldout_by_hash(image_id: str, every: int = 10) -> bool:
    """True for the held-out images: those whose SHA-1 of the id is 0 modulo ``every`` (~1/every of them).

    The split depends on the id alone, so adding or removing files never moves an image across it.
    """
    return every > 0 and int(hashlib.sha1(image_id.encode()).hexdigest(), 16) % every == 0


def image_files(folder: Any, img_filter: str = "_img", mask_filter: str = "_masks") -> List[Tuple[Path, str]]:
    """``(path, id)`` of the images in ``folder`` (not recursive), sorted by path: .tif, .tiff and .npy files,
    less those named like masks (``*{mask_filter}``) or fastpose outputs; the id is the file stem less a trailing
    ``img_filter`` (the id :func:`fastpose.train.data.heldout_by_hash` splits on).  FileNotFoundError for a
    missing folder, ValueError for one without images."""
    from ..inputs import find_inputs

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: no such folder")
    out: List[Tuple[Path, str]] = []
    for p in find_inputs([str(root)], False):
        stem = p.name[: -len(p.suffix)] if p.suffix else p.name
        if mask_filter and stem.endswith(mask_filter):
            continue
        out.append((p, stem[: -len(img_filter)] if img_filter and stem.endswith(img_filter) else stem))
    if not out:
        raise ValueError(f"--data {root}: no images (.tif, .tiff, .npy)")
    return out


def split_images(files: Sequence[Tuple[Path, str]], holdout_every: int = 0, exclude: Sequence[str] = ()
                 ) -> Tuple[List[Path], List[str]]:
    """``(training paths, held-out ids)``: ids in ``exclude`` are in neither; with ``holdout_every`` N > 0 the
    ids whose SHA-1 is 0 mod N are held out (never trained on), as in the nuclei recipe."""
    skip = set(exclude or ())
    every = int(holdout_every or 0)
    train = [p for p, i in files if i not in skip and not heldout_by_hash(i, every)]
    held = [i for _, i in files if i not in skip and heldout_by_hash(i, every)]
    return train, held


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
         min_masks: int, channel_axis: Optional[int], cache_file: Optional[Path],
         channels: Optional[Sequence[int]] = None, grey: bool = False, flows: bool = True) -> None:
    lab = renumber(masks)
    if lab.ndim != 2:
        raise ValueError(f"{name}: masks must be 2D, got shape {lab.shape}")
    n = int(lab.max())
    if n < min_masks:
        log.info("skipping %s: %d mask(s) < min_masks=%d", name, n, min_masks)
        return
    try:
        x = prepare_image(img, nchan, channel_axis, channels, grey)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    if x.shape[1:] != lab.shape:
        raise ValueError(f"{name}: image {x.shape[1:]} and masks {lab.shape} differ in size")
    if normalize:
        x = normalize_percentile(x)
    elif not np.isfinite(x).all():
        raise ValueError(f"{name}: image contains NaN or Inf")
    f, hit = cached_flows(lab, cache_file) if flows else (None, False)
    data.n_cached += int(hit)
    data.n_computed += int(flows and not hit)
    data.images.append(x)
    data.masks.append(lab)
    data.flows.append(f)
    data.diameters.append(median_diameter(lab))
    data.names.append(name)
    data.kinds.append(image_kind(img, None if np.ndim(img) == 2 else channel_axis))


def from_arrays(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], nchan: int = 2, normalize: bool = True,
                min_masks: int = 1, channel_axis: Optional[int] = 0, cache_dir: Optional[PathLike] = None,
                channels: Optional[Sequence[int]] = None, grey: bool = False,
                names: Optional[Sequence[str]] = None, flows: bool = True) -> TrainData:
    """Training data from in-memory images and label images.

    Images are [Y, X] or, by default, channels-first [C, Y, X] (``channel_axis=0``; pass ``-1`` for
    [Y, X, C]).  ``channels``/``grey``: see :func:`prepare_image`.  With ``cache_dir`` the flow targets
    are cached there, one ``<sha1 of masks>.npz`` per image; ``flows=False`` skips them (evaluation data).
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    data = TrainData()
    for i, (img, m) in enumerate(zip(images, masks)):
        cache = None
        if cache_dir is not None and flows:
            cache = Path(cache_dir) / f"{_mask_key(renumber(m))}.npz"
        name = names[i] if names is not None else f"image {i}"
        _add(data, name, img, m, nchan, normalize, min_masks, channel_axis, cache, channels, grey, flows)
    log.info("training data: %d of %d images (%d flow targets computed, %d cached)", len(data), len(images),
             data.n_computed, data.n_cached)
    return data


def folder_ids(folder: PathLike, img_filter: str = "_img", mask_filter: str = "_masks"
               ) -> List[Tuple[Path, Path, str]]:
    """``(image path, mask path, image id)`` of every ``*{img_filter}.tif`` with a ``*{mask_filter}.tif``
    in ``folder``, sorted by file name (the id is the stem less ``img_filter``)."""
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
    return pairs


def selected_ids(root: Path, img_filter: str, mask_filter: str, select: Optional[Callable[[str], bool]],
                 limit: Optional[int]) -> List[Tuple[Path, Path, str]]:
    """:func:`folder_ids` of ``root`` kept by ``select`` (None: all), the first ``limit`` of them; ValueError when
    none is left."""
    pairs = [p for p in folder_ids(root, img_filter, mask_filter) if select is None or select(p[2])]
    if limit is not None:
        pairs = pairs[:limit]
    if not pairs:
        raise ValueError(f"{root}: no images selected")
    return pairs


def load_folder(folder: PathLike, nchan: int = 2, img_filter: str = "_img", mask_filter: str = "_masks",
                min_masks: int = 1, normalize: bool = True, channel_axis: Optional[int] = None,
                cache_dir: Optional[PathLike] = None, channels: Optional[Sequence[int]] = None,
                grey: bool = False, select: Optional[Callable[[str], bool]] = None,
                limit: Optional[int] = None, flows: bool = True) -> TrainData:
    """Load ``*{img_filter}.tif`` images with their ``*{mask_filter}.tif`` masks (Cellpose convention).

    ``img_filter=""`` takes every TIFF that is not a mask.  Images are 2D (Y, X) or, with
    ``channel_axis``, multichannel 2D (no guessing: a 3D file without ``channel_axis`` is an error);
    ``channels``/``grey``: see :func:`prepare_image`.  ``select(image_id)`` keeps only the images it
    returns True for (e.g. a held-out split, :func:`heldout_by_hash`); ``limit`` keeps the first that many
    of those.  Flow targets are cached as ``<mask stem>_flows.npz`` next to the masks, or in ``cache_dir``;
    ``flows=False`` skips them (evaluation data: nothing is written).
    """
    from ..io import read_image

    root = Path(folder)
    pairs = selected_ids(root, img_filter, mask_filter, select, limit)
    data = TrainData()
    for img_p, mask_p, stem in pairs:
        cache = (Path(cache_dir) if cache_dir is not None else mask_p.parent) / f"{mask_p.stem}_flows.npz"
        _add(data, stem, read_image(img_p), read_image(mask_p), nchan, normalize, min_masks, channel_axis, cache,
             channels, grey, flows)
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


# ---- class labels beside the masks (panoptic training) ----------------------------------------------------

class ClassedImage(NamedTuple):
    """One image of a classed folder, as read (the trainer normalises it and brings it to its channels)."""

    image: np.ndarray    #: the image file's array
    masks: np.ndarray    #: the label image
    classes: np.ndarray  #: per-pixel class ids (0 = background), the masks' shape
    name: str            #: the image id (file stem less ``img_filter``)


def folder_class_names(folder: PathLike, given: Optional[Sequence[str]] = None) -> Optional[List[str]]:
    """The K class names of a classed folder: ``given`` (e.g. ``--class-names a,b``) or else the list in
    ``classes.json`` in the folder (a JSON list of names, class id 1 first, or ``{"classes": [...]}``);
    None when neither is there.  ValueError for an unreadable or malformed ``classes.json``."""
    import json

    if given is not None:
        return list(given)
    p = Path(folder) / "classes.json"
    if not p.is_file():
        return None
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: cannot read the class names ({e})") from None
    names = doc.get("classes") if isinstance(doc, dict) else doc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{p}: expected a JSON list of class names (class id 1 first) or {{\"classes\": [...]}}, "
                         f"got {str(doc)[:80]!r}")
    return names


def load_class_folder(folder: PathLike, img_filter: str = "_img", mask_filter: str = "_masks",
                      class_filter: str = "_classes", select: Optional[Callable[[str], bool]] = None,
                      limit: Optional[int] = None) -> List[ClassedImage]:
    """Images, masks and per-pixel class images of a folder: ``X{img_filter}.tif`` with ``X{mask_filter}.tif``
    and ``X{class_filter}.tif`` (class ids, 0 = background; each mask takes its majority class when training).

    The pairs are found as by :func:`folder_ids`; ``select(image_id)`` and ``limit`` as in
    :func:`load_folder` (e.g. ``select=lambda i: not heldout_by_hash(i, 10)``).  An image without its class
    file, a class file of another shape than its masks, or one that does not hold integers is a ValueError
    naming the file (never a guess).  Arrays are returned as read: channel axes are the trainer's
    ``channel_axis`` (2D files are always (Y, X)).
    """
    from ..io import read_image

    root = Path(folder)
    pairs = selected_ids(root, img_filter, mask_filter, select, limit)
    missing = []
    out: List[ClassedImage] = []
    for img_p, mask_p, stem in pairs:
        cls_p = next((root / f"{stem}{class_filter}{ext}" for ext in (".tif", ".tiff")
                      if (root / f"{stem}{class_filter}{ext}").is_file()), None)
        if cls_p is None:
            missing.append(f"{stem}{class_filter}.tif")
            continue
        m, c = read_image(mask_p), read_image(cls_p)
        if c.shape != m.shape:
            raise ValueError(f"{cls_p.name}: class image of shape {c.shape}, but its masks {mask_p.name} are {m.shape}")
        if c.dtype.kind not in "iu":
            if c.dtype.kind == "f" and np.isfinite(c).all() and np.all(c == np.round(c)) and c.min() >= 0:
                c = c.astype(np.int64)
            else:
                raise ValueError(f"{cls_p.name}: class images hold integer class ids (0 = background), got {c.dtype}")
        out.append(ClassedImage(read_image(img_p), m, c.astype(np.int64, copy=False), stem))
    if missing:
        raise ValueError(f"{root}: {len(missing)} image(s) without a class image: {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''} (per-pixel class ids beside *{mask_filter}.tif)")
    log.info("%s: %d classed images", root, len(out))
    return out
