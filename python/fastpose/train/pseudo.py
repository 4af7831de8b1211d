"""Bootstrapping a Cellpose U-Net from pseudo-labels: the masks another model (typically an unsupervised Cellulus
model) predicts on the training images, mixed with a few true annotations when there are some.

Cellulus' recipe (paper section 4.2 and appendix B; the authors' branch ``semi-supervised-new``, which was never
merged into main; fastpose follows the paper where the two agree and says where it departs):

* Pseudo-labels: the teacher's predictions on the training images (:func:`pseudo_labels`, any model
  :class:`fastpose.Segmenter` runs, with the settings stored in it), cached on disk and keyed by the teacher's
  weights and settings so that several students (0, 1 and 10% of the masks) share one labelling pass.
* Sparse annotations: in an image with annotations, the pseudo objects that overlap an annotated object or lie
  within ``margin`` (30 px) of one are replaced by the annotations (:func:`merge_labels`; the paper: "background
  within 30 px of labels counts as annotated").  For a fully annotated image that leaves the annotations.
* Loss: ``L = (1 - alpha) L_sparse + alpha L_pseudo`` with ``alpha`` 0.5 and every batch half annotated, half
  pseudo-labelled crops (:func:`fastpose.train.loop.train`'s ``annotated`` / ``alpha``); with no annotations the
  student trains on the pseudo-labels alone.
* Departs from the paper: the student is the Cellpose U-Net trained with the Cellpose recipe and loss (the paper
  trained a StarDist U-Net with Adam 1e-5 for 200 epochs); ``fastpose train --pseudo-labels`` takes every
  option of Cellpose training (``--recipe nuclei`` for the nuclei recipe's schedule and split).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["merge_labels", "pseudo_labels", "teacher_key", "annotated_ids", "pseudo_sources", "MARGIN", "ALPHA"]

log = logging.getLogger("fastpose.train")

PathLike = Union[str, os.PathLike]

#: the paper's margin: background within this distance (px) of an annotated object counts as annotated
MARGIN = 30.0
#: the paper's weight of the pseudo-labelled half of each batch
ALPHA = 0.5
MANIFEST = "pseudo_labels.json"


def merge_labels(pseudo: Any, annotated: Any, margin: float = MARGIN) -> np.ndarray:
    """The annotated objects of ``annotated`` [*S] plus the objects of ``pseudo`` [*S] that neither overlap an
    annotated object nor come within ``margin`` px of one (Euclidean distance, pixel centres), relabelled 1..N
    (annotated objects first, in label order; :func:`fastpose.labels.relabel_sequential`), int32.

    ``margin=0`` drops only the pseudo objects that overlap an annotation.  ValueError for label images of
    different shapes, or for anything that is not a label image (:func:`fastpose.labels.check_labels`)."""
    from scipy import ndimage as ndi

    from .. import checks
    from ..labels import check_labels, relabel_sequential

    p = check_labels(pseudo, "pseudo")
    a = check_labels(annotated, "annotated")
    margin = checks.number(margin, "margin", lo=0.0)
    if p.shape != a.shape:
        raise ValueError(f"pseudo-labels {p.shape} and annotations {a.shape} differ in shape")
    ann = a > 0
    if not ann.any():
        return relabel_sequential(p)[0]
    near = ann if margin == 0 else ndi.distance_transform_edt(~ann) <= margin
    a_lab = relabel_sequential(a)[0]
    n_a = int(a_lab.max())
    p_lab = relabel_sequential(p)[0]
    n_p = int(p_lab.max())
    hit = np.zeros(n_p + 1, bool)
    hit[np.unique(p_lab[near])] = True
    keep = ~hit
    keep[0] = False
    out = a_lab.copy()
    add = keep[p_lab] & ~ann
    out[add] = p_lab[add] + n_a
    return relabel_sequential(out)[0]


def teacher_key(segmenter: Any, options: Mapping[str, Any]) -> str:
    """SHA-256 of a teacher's networks (weights and architecture, :func:`fastpose.deploy.onnx_export.model_hash`),
    its model spec (with the inference settings stored in it) and the labelling ``options``: the key of a
    pseudo-label cache."""
    from ..deploy.onnx_export import model_hash

    h = hashlib.sha256()
    for net in segmenter.nets:
        h.update(model_hash(net).encode())
    h.update(json.dumps(segmenter.spec.to_dict(), sort_keys=True, default=str).encode())
    h.update(json.dumps(dict(options), sort_keys=True, default=str).encode())
    return h.hexdigest()


def _read_manifest(folder: Path) -> Dict[str, Any]:
    p = folder / MANIFEST
    if not p.is_file():
        return {}
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); the pseudo-labels are computed again", p, e)
        return {}
    return m if isinstance(m, dict) else {}


def pseudo_labels(teacher: Any, images: Sequence[Union[np.ndarray, Callable[[], np.ndarray]]],
                  names: Sequence[str], *, cache_dir: Optional[PathLike] = None, channel_axis: Optional[int] = None,
                  diameter: Optional[float] = None, device: str = "auto", progress: bool = True,
                  **segment_options: Any) -> List[np.ndarray]:
    """The teacher's masks of each image (the pseudo-labels), computed or read from ``cache_dir``.

    Parameters
    ----------
    teacher
        A model name, file or network :class:`fastpose.Segmenter` runs (a Cellulus model runs with the inference
        settings stored in it), or a Segmenter.
    images, names
        The images (arrays, or zero-argument loaders), and a unique name per image (its id: the cache file name).
    cache_dir
        Folder of ``<name>_masks.tif`` files and a manifest holding the teacher's key (:func:`teacher_key` of the
        network and the options): files written by the same teacher with the same options are read back instead
        of computed; another teacher's files are computed again and replaced.  Written atomically, one at a time,
        so an interrupted run keeps what it finished.  None: nothing is written.
    channel_axis, diameter, device, segment_options
        Passed to the segmenter (:meth:`fastpose.Segmenter.segment`).
    progress
        A tqdm progress bar.

    ValueError (naming the image) for an image the teacher cannot segment; the masks come back as
    :func:`fastpose.labels.as_labels` arrays.
    """
    from tqdm.auto import tqdm

    from ..inference import Segmenter
    from ..io import atomic_write, read_image, write_tiff_atomic
    from ..labels import as_labels

    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    if len(set(names)) != len(names):
        raise ValueError("pseudo_labels: the image names must be unique (they name the cached files)")
    seg = teacher if isinstance(teacher, Segmenter) else Segmenter(teacher, device=device)
    opts = {"channel_axis": channel_axis, "diameter": diameter, **segment_options}
    key = teacher_key(seg, opts)
    folder = Path(cache_dir) if cache_dir is not None else None
    done: Dict[str, Any] = {}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        m = _read_manifest(folder)
        if m.get("teacher_key") == key:
            done = dict(m.get("images") or {})
        elif m:
            log.info("%s: pseudo-labels of another teacher or other options; computing them again", folder)

    def save_manifest() -> None:
        assert folder is not None
        body = {"teacher_key": key, "options": {k: v for k, v in opts.items()}, "images": done}
        atomic_write(folder / MANIFEST, lambda f: f.write(json.dumps(body, indent=1, default=str)), text=True)

    out: List[np.ndarray] = []
    n_read = 0
    for img, name in tqdm(list(zip(images, names)), desc="pseudo-labels", unit="image", disable=not progress):
        f = folder / f"{name}_masks.tif" if folder is not None else None
        if f is not None and name in done and f.is_file():
            m = read_image(f)
            if m.dtype.kind in "iu":
                out.append(as_labels(m))
                n_read += 1
                continue
        a = img() if callable(img) else img
        try:
            masks = as_labels(seg.segment(a, **opts).masks)
        except ValueError as e:
            raise ValueError(f"{name}: the teacher cannot segment it: {e}") from None
        out.append(masks)
        if f is not None:
            write_tiff_atomic(f, masks)
            done[name] = int(masks.max())
            save_manifest()
    if folder is not None:
        log.info("pseudo-labels: %d computed, %d read from %s", len(out) - n_read, n_read, folder)
    return out


def annotated_ids(masks_dir: PathLike, ids: Sequence[str], held_out: Sequence[str], mask_filter: str = "_masks",
                  fraction: float = 1.0, seed: int = 0) -> List[Tuple[str, Path]]:
    """``(id, mask file)`` of the annotations in ``masks_dir`` used for training: the ``<id>{mask_filter}.tif``
    files whose id is one of the training images ``ids``, then ``fraction`` of them (at least one, drawn with
    ``seed``; sorted by id).  The masks of held-out images (``held_out``) and of images not among ``ids`` are
    skipped (logged), so ``masks_dir`` may be the training folder itself; ValueError for a folder with no mask
    file of a training image."""
    from .. import checks

    fraction = checks.number(fraction, "masks_fraction", lo=0.0, lo_open=True, hi=1.0)
    root = Path(masks_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--masks-dir {root}: no such folder")
    known, held = set(ids), set(held_out)
    found: List[Tuple[str, Path]] = []
    unknown: List[str] = []
    skipped_held = 0
    for p in sorted(root.iterdir()):
        if p.suffix.lower() not in (".tif", ".tiff") or not p.stem.endswith(mask_filter):
            continue
        i = p.stem[: len(p.stem) - len(mask_filter)]
        if i in held:
            skipped_held += 1
        elif i in known:
            found.append((i, p))
        else:
            unknown.append(p.name)
    if skipped_held:
        log.info("--masks-dir %s: the masks of %d held-out image(s) skipped (never trained on)", root, skipped_held)
    if unknown:
        log.info("--masks-dir %s: %d mask file(s) without a training image in --data ignored (%s%s)", root,
                 len(unknown), ", ".join(unknown[:3]), " ..." if len(unknown) > 3 else "")
    if not found:
        raise ValueError(f"--masks-dir {root}: no *{mask_filter}.tif file of a training image of --data")
    if fraction < 1.0:
        k = max(1, int(round(fraction * len(found))))
        pick = np.sort(np.random.default_rng([seed, 5]).choice(len(found), k, replace=False))
        found = [found[j] for j in pick]
    return found


def pseudo_sources(opts: Any, nchan: int, *, teacher: Any, masks_dir: Optional[PathLike] = None,
                   masks_fraction: float = 1.0, cache_dir: Optional[PathLike] = None, device: str = "auto",
                   progress: bool = True, recipe_name: str = "",
                   teacher_settings: Optional[Mapping[str, Any]] = None) -> Tuple[Any, Any, str]:
    """``(pseudo-labelled TrainData, annotated TrainData or None, description)`` for ``fastpose train
    --pseudo-labels``.

    ``opts`` holds the data options of ``fastpose train`` (``dir``, ``holdout_every``, ``exclude``,
    ``channel_axis``, ``grey``, ``img_filter``, ``mask_filter``, ``min_masks``, ``cache_dir``, ``limit``,
    ``seed``).  The training images of ``opts.dir`` (the split of :func:`fastpose.train.data.split_images`; masks
    there are not read) are prepared for the student (channels, ``grey``), labelled by ``teacher``
    (:func:`pseudo_labels`, cached in ``cache_dir``) and, where ``masks_dir`` annotates them
    (:func:`annotated_ids`), merged with the annotations (:func:`merge_labels`) into the annotated set, which
    then leaves the pseudo-labelled one.  Images the teacher finds fewer than ``min_masks`` objects in are
    skipped, as images with too few masks are.  ``teacher_settings`` override the teacher's own inference
    settings (:meth:`fastpose.Segmenter.update_settings`; e.g. a smaller Cellulus noise ensemble, ``n_noise``)."""
    from ..io import read_image
    from .data import from_arrays, heldout_by_hash, image_files, prepare_image

    if not opts.dir:
        raise ValueError("--pseudo-labels labels the images of --data: pass --data FOLDER")
    every = int(opts.holdout_every or 0)
    exclude = set(opts.exclude or ())
    files = [(p, i) for p, i in image_files(opts.dir, opts.img_filter, opts.mask_filter) if i not in exclude]
    train = [(p, i) for p, i in files if not heldout_by_hash(i, every)]
    held = [i for _, i in files if heldout_by_hash(i, every)]
    if opts.limit:
        train = train[:opts.limit]
    if not train:
        raise ValueError(f"--data {opts.dir}: no training images left ({len(held)} held out)")
    ids = [i for _, i in train]
    images: List[np.ndarray] = []
    for p, i in train:
        try:
            images.append(prepare_image(read_image(p), nchan, opts.channel_axis, None, bool(opts.grey)))
        except ValueError as e:
            raise ValueError(f"{p.name}: {e}") from None
    teach = [x[0] if x.shape[0] == 1 else x for x in images]
    seg = teacher
    if teacher_settings:
        from ..inference import Segmenter

        seg = teacher if isinstance(teacher, Segmenter) else Segmenter(teacher, device=device)
        seg.update_settings(**dict(teacher_settings))
    masks = pseudo_labels(seg, teach, ids, cache_dir=cache_dir, channel_axis=None if nchan == 1 else 0,
                          device=device, progress=progress)
    ann_pairs = annotated_ids(masks_dir, ids, held, opts.mask_filter, masks_fraction, int(opts.seed or 0)) \
        if masks_dir is not None else []
    ann_of = dict(ann_pairs)
    flow_cache = opts.cache_dir or (Path(cache_dir) / "flows" if cache_dir is not None else None)
    kw = dict(nchan=nchan, channel_axis=0, min_masks=opts.min_masks, cache_dir=flow_cache)
    pi = [j for j, i in enumerate(ids) if i not in ann_of]
    pseudo = from_arrays([images[j] for j in pi], [masks[j] for j in pi], names=[ids[j] for j in pi], **kw) \
        if pi else None
    annotated = None
    if ann_pairs:
        aj = [ids.index(i) for i, _ in ann_pairs]
        merged = [merge_labels(masks[j], read_image(ann_of[ids[j]])) for j in aj]
        annotated = from_arrays([images[j] for j in aj], merged, names=[ids[j] for j in aj], **kw)
    if pseudo is None or len(pseudo) == 0:
        raise ValueError("no pseudo-labelled training images left: the teacher found no objects (fewer than "
                         f"--min-masks {opts.min_masks}) in the images not annotated")
    name = recipe_name or Path(opts.dir).name
    with_settings = (" with " + ", ".join(f"{k} {v}" for k, v in dict(teacher_settings).items())
                     if teacher_settings else "")
    parts = [f"{len(pseudo)} training images pseudo-labelled by {_teacher_name(teacher)}{with_settings} (their "
             "masks not read)"]
    if annotated is not None:
        parts.append(f"{len(annotated)} with true masks from {Path(masks_dir).name}/ "
                     f"({'all' if masks_fraction >= 1 else f'{masks_fraction:g} of the'} annotated training images, "
                     f"{len(annotated) / len(train):.1%} of the training images)")
    parts.append(f"held out: the ids whose SHA-1 is 0 mod {every} ({len(held)} images, not trained on)" if every
                 else "no held-out images")
    if exclude:
        parts.append("excluded: " + ", ".join(sorted(exclude)))
    if opts.limit:
        parts.append(f"the first {opts.limit} training images only (--limit)")
    return pseudo, annotated, f"{name} ({'; '.join(parts)})"


def _teacher_name(teacher: Any) -> str:
    if isinstance(teacher, (str, os.PathLike)):
        return Path(teacher).name
    return type(teacher).__name__
