"""Few-shot fine-tuning of a segmentation network: Scellseg's contrastive fine-tuning, or classic fine-tuning.

:func:`finetune` is small on purpose: it is what a human-in-the-loop tool (the napari plugin's retraining) calls
with the handful of images a user has just corrected.  From cellimnet/scellseg-publish (``models.py``
``finetune``, ``net_desc.py`` ``LossFn``, ``contrast_learning/dataset.py``; written anew):

* **Shots**: the labelled images, drawn ``batch_size`` per step with replacement, augmented and rescaled as
  fastpose's training crops are (:func:`fastpose.train.augment.augment_sample`: each image scaled so its median
  object diameter becomes the network's ``diam_mean``, random scale, rotation and flips, ``tile``-px crops).
  Departs from the code: the authors rescale every shot by one factor (their mean diameter to 30).
* **Contrastive** (``strategy="contrastive"``): besides the shots, a *query* batch (unlabelled images of the same
  experiment: ``query``, default the shot images) and a *contrast* batch (images of one other style per step,
  drawn from ``contrast``: a folder of style folders, default the styles shipped with fastpose,
  :func:`default_contrast`), each a random square crop of 156-290 px resized to ``tile``; the three batches run
  through the network separately, in training mode.  Loss ``L_seg + sigmoid(alpha) * L_c`` with
  ``L_c = sum_ij MSE(s_i, q_j) / (sum_ij MSE(s_i, c_j) + 1e-5)`` over the deepest style vectors (256-d) of the
  shot (s), query (q) and contrast (c) batches, and ``alpha`` learnable (init 0.2, its own Adam group, lr 0.1).
* **Classic** (``strategy="classic"``): the same without the query and contrast batches.
* ``L_seg``: Cellpose's loss (:func:`fastpose.train.loop.seg_loss`; the authors' ``LossFn`` is the same).
* Adam at ``lr`` (1e-3) on every layer, ``steps`` (100) steps of ``batch_size`` (8), the rate halved every
  ``halve_every`` (25) steps; batch norms in training mode.  Deterministic for a ``seed`` on the CPU.

Works for any network with Cellpose's outputs and ``forward(x) -> (maps, style)``: a fastpose or Cellpose U-Net,
an sCSnet (:class:`fastpose.scellseg.SCSNet`), or a file or bundled name of one.  The returned network carries
the mean diameter of the shots (``diam_labels``): segment with ``diameter=result.diameter`` (Scellseg takes the
diameter from the shots too); its size model is dropped (the styles moved).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checks

__all__ = ["finetune", "FinetuneResult", "contrastive_loss", "default_contrast", "load_styles", "network_input",
           "STRATEGIES"]

log = logging.getLogger("fastpose.finetune")

STRATEGIES = ("contrastive", "classic")
#: side range of the query / contrast crops before they are resized to the tile (the authors' 156-290 px)
CROP_RANGE = (156, 290)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns."""

    model: nn.Module                         #: the fine-tuned network, eval mode, on the CPU
    diameter: float                          #: mean of the shots' median object diameters: segment at it
    history: List[Dict[str, float]] = field(default_factory=list)  #: per step: loss, seg, contrast, alpha, lr
    seconds_per_step: float = 0.0
    info: Dict[str, Any] = field(default_factory=dict)


def contrastive_loss(s: torch.Tensor, q: torch.Tensor, c: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Scellseg's ``L_c = sum_ij MSE(s_i, q_j) / (sum_ij MSE(s_i, c_j) + eps)`` for style batches [B, S] (MSE: the
    mean over the S elements, as ``nn.MSELoss``)."""
    pos = ((s[:, None, :] - q[None, :, :]) ** 2).mean(-1).sum()
    neg = ((s[:, None, :] - c[None, :, :]) ** 2).mean(-1).sum()
    return pos / (neg + eps)


def _style_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "contrast"


def load_styles(folder: Union[str, os.PathLike]) -> Dict[str, List[np.ndarray]]:
    """Contrast styles from ``folder``: each subfolder a style, its images (.tif, .tiff, .npy; files named like
    masks skipped) that style's examples.  FileNotFoundError for a missing folder, ValueError for one without any
    style folder holding an image."""
    from ..inputs import find_inputs
    from ..io import read_image

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"contrast {root}: no such folder (a folder of style folders of images)")
    styles: Dict[str, List[np.ndarray]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        imgs = [read_image(p) for p in find_inputs([str(d)], False) if not p.stem.endswith("_masks")]
        if imgs:
            styles[d.name] = imgs
    if not styles:
        raise ValueError(f"contrast {root}: no style folder with images (expected {root}/<style>/*.tif)")
    return styles


def default_contrast() -> Dict[str, List[np.ndarray]]:
    """The contrast styles shipped with fastpose: ``dsb_fluorescence`` and ``dsb_histology`` (5 crops each of DSB
    2018 stage-1 train images, CC0; ``fastpose/data/contrast/``) and ``synthetic_cells`` (5 images of
    :mod:`fastpose.synthetic_cells`, seed 0, made on the fly)."""
    from ..synthetic_cells import make_cyto_dataset

    styles = load_styles(_style_dir()) if _style_dir().is_dir() else {}
    styles["synthetic_cells"] = [img for img, _ in make_cyto_dataset(5, (192, 192), seed=0)]
    return styles


def _as_images(x: Any, what: str) -> List[np.ndarray]:
    from ..inputs import find_inputs
    from ..io import read_image

    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if not p.exists():
            raise FileNotFoundError(f"{what} {p}: no such folder or file")
        files = [q for q in (find_inputs([str(p)], False) if p.is_dir() else [p]) if not q.stem.endswith("_masks")]
        if not files:
            raise ValueError(f"{what} {p}: no images (.tif, .tiff, .npy)")
        return [read_image(q) for q in files]
    if isinstance(x, np.ndarray):
        return [x]
    out = list(x)
    if not out:
        raise ValueError(f"{what}: no images")
    return [np.asarray(a) for a in out]


def _crop_resize(img: np.ndarray, tile: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of side U(156, 290) (at most the image's shorter side) of ``img`` [C, Y, X], resized
    bilinearly to ``tile``; smaller images are reflect-padded to the crop first."""
    side = int(rng.integers(CROP_RANGE[0], CROP_RANGE[1] + 1))
    c, h, w = img.shape
    if min(h, w) < side:
        side = max(16, min(h, w)) if min(h, w) >= 16 else side
        ph, pw = max(0, side - h), max(0, side - w)
        if ph or pw:
            img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > 1 else "edge")
            c, h, w = img.shape
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = torch.from_numpy(np.ascontiguousarray(img[:, y0:y0 + side, x0:x0 + side], dtype=np.float32))[None]
    return F.interpolate(crop, size=(tile, tile), mode="bilinear", align_corners=False)[0].numpy()


def _prepared(images: Sequence[np.ndarray], nchan: int, channel_axis: Optional[int], what: str) -> List[np.ndarray]:
    from ..transforms import normalize_percentile

    out = []
    for i, a in enumerate(images):
        x = network_input(a, nchan, channel_axis, f"{what}[{i}]")
        if not np.isfinite(x).all():
            raise ValueError(f"{what}[{i}]: image contains NaN or Inf")
        out.append(normalize_percentile(x))
    return out


def network_input(a: np.ndarray, nchan: int, channel_axis: Optional[int] = None, what: str = "image") -> np.ndarray:
    """``a`` as the network's [nchan, Y, X] input, not normalised: ``channel_axis`` when given, else colour
    images ([Y, X, 3|4]) channels last and other 3D arrays channels first; colour averaged to grey, as the nuclei
    recipe does (:func:`fastpose.train.data.prepare_image`).  ValueError naming ``what`` for an image that does not
    fit."""
    from ..train.data import prepare_image

    a = np.asarray(a)
    ca = None if a.ndim == 2 else channel_axis
    if a.ndim == 3 and ca is None:
        ca = -1 if a.shape[-1] in (3, 4) else 0
    grey = a.ndim == 3 and a.shape[ca] in (3, 4)
    try:
        return prepare_image(a, nchan, ca, None, grey)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def finetune(model: Any, shots: Any, query: Any = None, contrast: Any = None, *, strategy: str = "contrastive",
             steps: int = 100, batch_size: int = 8, lr: float = 1e-3, alpha_lr: float = 0.1, alpha: float = 0.2,
             halve_every: int = 25, tile: int = 224, channel_axis: Optional[int] = None, seed: int = 0,
             device: str = "auto", progress: bool = True) -> FinetuneResult:
    """Fine-tune ``model`` on a few annotated images (see the module docstring for the recipe).

    Parameters
    ----------
    model
        A network (copied, never changed in place), a model file or a bundled name (``"nuclei"``, ``"cyto"``).
    shots
        The annotated images: a folder of ``*_img.tif`` + ``*_masks.tif``, or a list of ``(image, masks)`` pairs.
    query
        Unlabelled images of the same experiment (folder, list of arrays); default the shot images.  Contrastive
        only.
    contrast
        Images of other styles: a folder of style folders, a ``{style: [images]}`` dict, or None for the styles
        shipped with fastpose (:func:`default_contrast`).  Contrastive only.
    strategy
        ``"contrastive"`` (Scellseg) or ``"classic"`` (the segmentation loss alone).
    steps, batch_size, lr, alpha_lr, alpha, halve_every, tile
        The recipe: optimiser steps, crops per batch, Adam's rate for the network and for ``alpha`` (its initial
        value), steps per halving of the rates, crop side (a multiple of the network's size multiple).
    channel_axis
        Channel axis of multichannel shot / query files and arrays (default: colour images, [Y, X, 3|4], channels
        last; other 3D arrays channels first); colour is averaged to grey.
    seed, device, progress
        Seed of the crops, the draws and the initial state; "auto", "cpu" or "cuda"; a progress bar (seconds per
        step in its postfix and in ``seconds_per_step``).

    Returns
    -------
    :class:`FinetuneResult` (``model``: the fine-tuned copy in eval mode, ``diameter``: segment at it).
    """
    from tqdm.auto import tqdm

    from ..models import load_model
    from ..train.augment import augment_sample
    from ..io import read_image
    from ..train.data import TrainData, folder_ids, from_arrays
    from ..train.loop import resolve_device, seg_loss

    strategy = checks.choice(strategy, "strategy", STRATEGIES)
    steps = checks.integer(steps, "steps", lo=1, hi=1_000_000)
    batch_size = checks.integer(batch_size, "batch_size", lo=1, hi=checks.LIMITS["batch_size"])
    lr = checks.number(lr, "lr", lo=0.0, lo_open=True)
    alpha_lr = checks.number(alpha_lr, "alpha_lr", lo=0.0)
    alpha = checks.number(alpha, "alpha")
    halve_every = checks.integer(halve_every, "halve_every", lo=1)
    tile = checks.integer(tile, "tile", lo=16, hi=4096)
    seed = checks.integer(seed, "seed", lo=0)
    channel_axis = checks.axis(channel_axis, "channel_axis")
    progress = checks.boolean(progress, "progress")
    dev = resolve_device(checks.choice(device, "device", ("auto", "cpu", "cuda")))

    if isinstance(model, nn.Module):
        net = copy.deepcopy(model).cpu()
        meta = dict(getattr(model, "fastpose_meta", None) or {})
    else:
        net, meta = load_model(model, device="cpu")
    if not (hasattr(net, "nchan") and hasattr(net, "diam_mean") and int(getattr(net, "nout", 3)) >= 3):
        raise ValueError(f"finetune takes a segmentation network with Cellpose's outputs (a U-Net or an sCSnet), "
                         f"got a {type(net).__name__}")
    nchan = int(net.nchan)
    mult = int(getattr(net, "size_multiple", 1))
    if tile % mult:
        raise ValueError(f"tile must be a multiple of {mult} for this network, got {tile}")
    if isinstance(shots, (str, os.PathLike)):
        pairs = [(read_image(p), read_image(m), stem) for p, m, stem in folder_ids(shots)]
    else:
        pairs = [(np.asarray(p[0]), np.asarray(p[1]), f"shot {i}") for i, p in enumerate(shots)]
    shot_data: TrainData = from_arrays([network_input(x, nchan, channel_axis, name) for x, _, name in pairs],
                                       [m for _, m, _ in pairs], nchan=nchan, channel_axis=0,
                                       names=[name for _, _, name in pairs])
    if shot_data is None or len(shot_data) == 0:
        raise ValueError("no shots: pass annotated images (a folder of *_img.tif + *_masks.tif, or (image, masks) "
                         "pairs) with at least one mask each")
    diameter = float(np.mean(shot_data.diameters))
    diam_mean = float(net.diam_mean_value)
    queries: List[np.ndarray] = []
    styles: Dict[str, List[np.ndarray]] = {}
    if strategy == "contrastive":
        queries = shot_data.images if query is None else _prepared(_as_images(query, "query"), nchan,
                                                                    channel_axis, "query")
        raw = default_contrast() if contrast is None else (
            {str(k): [np.asarray(a) for a in v] for k, v in contrast.items()} if isinstance(contrast, dict)
            else load_styles(contrast))
        styles = {k: _prepared(v, nchan, None, f"contrast[{k!r}]") for k, v in raw.items() if len(v)}
        if not styles:
            raise ValueError("contrast: no style with images")

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 13])
    net = net.to(dev).train()
    a = torch.nn.Parameter(torch.tensor(float(alpha), device=dev))
    groups = [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr}]
    if strategy == "contrastive":
        groups.append({"params": [a], "lr": alpha_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=halve_every, gamma=0.5)
    names = sorted(styles)
    history: List[Dict[str, float]] = []
    bar = tqdm(total=steps, desc=f"finetune ({strategy})", unit="step", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for step in range(steps):
            idx = rng.integers(0, len(shot_data), batch_size)
            xs, fs, ms = [], [], []
            for i in idx:
                x, f, m, _ = augment_sample(shot_data.images[i], shot_data.flows[i], shot_data.masks[i], rng,
                                            diameter=shot_data.diameters[i], diam_mean=diam_mean, tile=tile)
                xs.append(x)
                fs.append(f)
                ms.append(m)
            xt = torch.from_numpy(np.stack(xs)).to(dev)
            y, s = net(xt)
            l_seg = seg_loss(y, torch.from_numpy(np.stack(fs)).to(dev), torch.from_numpy(np.stack(ms)).to(dev))
            loss = l_seg
            rec: Dict[str, float] = {"step": step + 1, "lr": float(opt.param_groups[0]["lr"])}
            if strategy == "contrastive":
                qb = np.stack([_crop_resize(queries[int(j)], tile, rng)
                               for j in rng.integers(0, len(queries), batch_size)])
                style = names[int(rng.integers(0, len(names)))]
                pool = styles[style]
                cb = np.stack([_crop_resize(pool[int(j)], tile, rng) for j in rng.integers(0, len(pool), batch_size)])
                _, sq = net(torch.from_numpy(qb).to(dev))
                _, sc = net(torch.from_numpy(cb).to(dev))
                l_c = contrastive_loss(s, sq, sc)
                loss = l_seg + torch.sigmoid(a) * l_c
                rec.update(contrast=float(l_c.detach()), alpha=float(a.detach()))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss became {float(loss)} at step {step + 1}; lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            rec.update(loss=float(loss.detach()), seg=float(l_seg.detach()))
            history.append(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", s_per_step=f"{(time.perf_counter() - t0) / (step + 1):.2f}",
                            refresh=False)
    finally:
        bar.close()
    spent = time.perf_counter() - t0
    net = net.cpu().eval()
    with torch.no_grad():
        net.diam_labels.fill_(diameter)
    info = {"strategy": strategy, "steps": steps, "batch_size": batch_size, "lr": lr, "alpha_lr": alpha_lr,
            "alpha_init": alpha, "halve_every": halve_every, "tile": tile, "seed": seed, "device": str(dev),
            "n_shots": len(shot_data), "shot_names": list(shot_data.names), "shot_diameter": diameter,
            "n_query": len(queries), "contrast_styles": names, "seconds": round(spent, 2),
            "final_alpha": float(a.detach()) if strategy == "contrastive" else None}
    net.fastpose_meta = {**{k: v for k, v in meta.items() if k not in ("size_model", "path")}, "size_model": None,
                         "diam_mean": diam_mean, "diam_labels": diameter, "arch": net.arch(), "nchan": nchan,
                         "extra": {**dict(meta.get("extra") or {}), "finetune": info}}
    log.info("fine-tuned (%s) on %d shot(s) for %d steps in %.1f s (%.2f s/step); segment at diameter %.1f",
             strategy, len(shot_data), steps, spent, spent / steps, diameter)
    return FinetuneResult(model=net, diameter=diameter, history=history, seconds_per_step=spent / steps, info=info)
