"""The training loop: optimisers, learning-rate schedule, loss, validation, checkpoints and resume.

Recipes (Cellpose papers):

* U-Net from scratch: SGD, lr 0.2, momentum 0.9, weight decay 1e-5, batch 8, 224x224 crops; linear
  warm-up over 10 epochs, constant, then the rate halves every 10 epochs over the last 100 epochs
  (runs > 300 epochs) or every 5 over the last 50 (runs of 100-300 epochs).
* Fine-tuning a model file / ViT: AdamW (U-Net lr 5e-3, weight decay 1e-4; ViT lr 5e-5, weight decay 0.1),
  same schedule.
* Loss: ``0.5 * MSE(y[:, :2], 5 * flows) + BCEWithLogits(y[:, 2], masks > 0)``.

Files written to ``save_dir``: ``model_last.pth`` and (with validation data) ``model_best.pth`` in the
fastpose model format (:func:`fastpose.models.save_model`), and ``train_state.pt`` (weights, optimiser,
epoch, RNG states, history) from which ``train(..., resume=...)`` continues bit-for-bit.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import augment_sample, sam_augment
from .data import TrainData, as_train_data
from .size_model import train_size_model

__all__ = ["TrainResult", "train", "lr_schedule", "seg_loss", "make_optimizer", "evaluate_ap", "make_batch",
           "STATE_FILE", "LAST_FILE", "BEST_FILE"]

log = logging.getLogger("fastpose.train")

PathLike = Union[str, os.PathLike]
STATE_FILE = "train_state.pt"
LAST_FILE = "model_last.pth"
BEST_FILE = "model_best.pth"


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: nn.Module                        #: the trained network (last epoch's weights), in eval mode;
    #: its ``fastpose_meta`` holds diam_mean, diam_labels, size_model, ... so ``Segmenter(model)`` uses them
    history: List[Dict[str, float]] = field(default_factory=list)  #: per epoch: epoch, lr, loss[, ap50]
    best_ap: Optional[float] = None         #: best validation AP@0.5 (None without validation data)
    best_epoch: Optional[int] = None
    last_path: Optional[Path] = None        #: save_dir/model_last.pth
    best_path: Optional[Path] = None        #: save_dir/model_best.pth (with validation data)
    state_path: Optional[Path] = None       #: save_dir/train_state.pt (for resume)
    size_model: Optional[Dict[str, Any]] = None
    diam_labels: float = 0.0


# --------------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------------

def lr_schedule(epochs: int, lr: float, warmup_epochs: int = 10) -> np.ndarray:
    """Per-epoch learning rates: linear warm-up ``lr * (e + 1) / warmup``, constant, then Cellpose's
    annealing (halve every 10 epochs over the last 100 for > 300 epochs, every 5 over the last 50 for
    100-300 epochs; none for shorter runs)."""
    e = np.arange(epochs)
    out = np.full(epochs, float(lr))
    if warmup_epochs > 0:
        out = np.where(e < warmup_epochs, lr * (e + 1) / warmup_epochs, out)
    if epochs > 300:
        tail, step = 100, 10
    elif epochs >= 100:
        tail, step = 50, 5
    else:
        return out
    start = epochs - tail
    late = e >= start
    out[late] = out[start - 1] / 2.0 ** ((e[late] - start) // step + 1)
    return out


def seg_loss(y: torch.Tensor, flows: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cellpose's loss: ``0.5 * MSE(y[:, :2], 5 * flows) + BCEWithLogits(y[:, 2], masks > 0)``."""
    y = y.float()
    return 0.5 * F.mse_loss(y[:, :2], 5.0 * flows) + \
        F.binary_cross_entropy_with_logits(y[:, 2], (masks > 0).float())


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "arch") and callable(model.arch) and model.arch().get("type") == "vit"


def make_optimizer(model: nn.Module, kind: str, lr: Optional[float] = None, weight_decay: Optional[float] = None,
                   momentum: float = 0.9) -> Tuple[torch.optim.Optimizer, float]:
    """SGD (Cellpose from scratch) or AdamW (fine-tuning, ViT) with the papers' defaults for unset values.

    Returns (optimiser, base learning rate).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "sgd":
        lr = 0.2 if lr is None else lr
        wd = 1e-5 if weight_decay is None else weight_decay
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd), lr
    if kind == "adamw":
        vit = _is_vit(model)
        lr = (5e-5 if vit else 5e-3) if lr is None else lr
        wd = (0.1 if vit else 1e-4) if weight_decay is None else weight_decay
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd), lr
    raise ValueError(f"optimizer must be 'sgd', 'adamw' or 'auto', got {kind!r}")


def make_batch(data: TrainData, idx: np.ndarray, rng: np.random.Generator, *, diam_mean: float, tile: int,
               scale_range: float, rescale: bool, sam: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented crops of images ``idx``: (x [B, C, T, T], flows [B, 2, T, T], masks [B, T, T])."""
    xs, fs, ms = [], [], []
    for i in idx:
        x, f, m, _ = augment_sample(data.images[i], data.flows[i], data.masks[i], rng, diameter=data.diameters[i],
                                    diam_mean=diam_mean, tile=tile, scale_range=scale_range, rescale=rescale)
        if sam:
            x = sam_augment(x, rng)
        xs.append(x)
        fs.append(f)
        ms.append(m)
    return np.stack(xs), np.stack(fs), np.stack(ms)


def evaluate_ap(model: nn.Module, data: TrainData, device: Union[str, torch.device] = "cpu",
                threshold: float = 0.5) -> np.ndarray:
    """AP at IoU ``threshold`` of each image of ``data``, segmented with the model at the image's label
    diameter (images are already normalised)."""
    from ..metrics import average_precision
    from ..pipeline import Segmenter

    tmp_meta = not getattr(model, "fastpose_meta", None) and hasattr(model, "arch")
    if tmp_meta:  # tells the Segmenter the architecture (tile size) of a bare network
        model.fastpose_meta = {"arch": model.arch(), "nchan": int(model.nchan)}
    # a ViT takes exactly img_size tiles; the Segmenter tiles smaller images at their own size
    min_side = int(getattr(model, "img_size", 0)) if _is_vit(model) else 0
    was_training = model.training
    dev = torch.device(device)
    try:
        seg = Segmenter(model, device="cuda" if dev.type == "cuda" else "cpu")
        preds = [seg.segment(_pad_to(img, min_side), channel_axis=0, normalize=False, diameter=d).masks
                 [:img.shape[1], :img.shape[2]] for img, d in zip(data.images, data.diameters)]
    finally:
        model.train(was_training)
        if tmp_meta:
            del model.fastpose_meta
    ap, _, _, _ = average_precision(list(data.masks), preds, [threshold])
    return ap[:, 0]


def _pad_to(img: np.ndarray, side: int) -> np.ndarray:
    """Zero-pad a [C, Y, X] image at the bottom/right to at least ``side`` x ``side``."""
    py, px = max(0, side - img.shape[1]), max(0, side - img.shape[2])
    return np.pad(img, ((0, 0), (0, py), (0, px))) if (py or px) else img


def _save_atomic(obj: Any, path: Path) -> None:
    from ..io import atomic_write

    atomic_write(path, lambda f: torch.save(obj, f))


def _resolve_device(device: Union[str, torch.device]) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but PyTorch sees no CUDA GPU")
    return dev


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------

def train(model: Union[nn.Module, PathLike], train_data: Any, val_data: Any = None, *, epochs: int = 100,
          lr: Optional[float] = None, batch_size: int = 8, images_per_epoch: Optional[int] = None,
          optimizer: str = "auto", weight_decay: Optional[float] = None, momentum: float = 0.9,
          warmup_epochs: int = 10, tile: Optional[int] = None, scale_range: float = 0.5,
          rescale: Optional[bool] = None,
          sam_augment: bool = False, min_masks: int = 1, cache_dir: Optional[PathLike] = None,
          val_every: int = 10, save_dir: Optional[PathLike] = None, save_every: int = 1,
          resume: Optional[PathLike] = None, size_model: bool = True, amp: Union[bool, str] = "auto",
          seed: int = 0, device: Union[str, torch.device] = "auto", progress: bool = True) -> TrainResult:
    """Train (or fine-tune) a segmentation network on images with label masks.

    Args:
        model: a :class:`~fastpose.models.UNet` / :class:`~fastpose.models.ViT`, or a model file to
            fine-tune (loaded with :func:`~fastpose.models.load_model`).
        train_data, val_data: a :class:`TrainData`, a folder of ``*_img.tif`` + ``*_masks.tif``, or a
            list of (image, masks) pairs (images [C, Y, X] or [Y, X]).
        epochs: total epochs (a resumed run continues up to this number).
        lr, weight_decay, momentum: optimiser settings (None: the recipe defaults, see module docstring).
        batch_size: crops per step.  images_per_epoch: crops per epoch (default: the training set size;
            drawn with replacement when larger).
        optimizer: "sgd", "adamw" or "auto" (AdamW for a ViT or when ``model`` is a file, else SGD).
        warmup_epochs: epochs of linear learning-rate warm-up.
        tile: crop side (default 224 for the U-Net, the ViT's ``img_size``).
        scale_range: random scale factor in ``1 +- scale_range/2``; rescale: first scale every image so
            its median cell diameter becomes the model's ``diam_mean`` (default: yes for a U-Net, no for a
            ViT, matching :class:`~fastpose.pipeline.Segmenter`, which resizes only for U-Nets).
        sam_augment: add Cellpose-SAM's photometric augmentations.
        min_masks, cache_dir: see :func:`fastpose.train.data.load_folder`.
        val_every: validate (AP@0.5) every this many epochs and after the last one.
        save_dir: folder for model_last.pth / model_best.pth / train_state.pt (None: nothing written).
        save_every: write model_last.pth and train_state.pt every this many epochs (and at the end).
        resume: a train_state.pt (or the folder holding it) to continue from.
        size_model: fit the style -> diameter model after training (U-Net only).
        amp: mixed precision on the GPU ("auto": on when training on CUDA).
        seed: seeds the data sampling/augmentation generator and torch.
        device: "auto", "cpu" or "cuda".
        progress: show a tqdm progress bar over epochs.
    """
    from tqdm.auto import tqdm

    from ..models import DEFAULT_NORMALIZE, load_model, save_model

    dev = _resolve_device(device)
    fine_tune = not isinstance(model, nn.Module)
    if fine_tune:
        model, _ = load_model(model, device="cpu")
    nchan = int(model.nchan)
    vit = _is_vit(model)
    tile = int(tile or (getattr(model, "img_size", 256) if vit else 224))
    rescale = (not vit) if rescale is None else bool(rescale)
    if not vit and tile % model.size_multiple:
        raise ValueError(f"tile must be a multiple of {model.size_multiple}, got {tile}")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    kw = dict(min_masks=min_masks, cache_dir=cache_dir)
    tr = as_train_data(train_data, nchan, **kw)
    va = as_train_data(val_data, nchan, **kw)
    if tr is None or len(tr) == 0:
        raise ValueError("no training images (with at least min_masks masks)")
    diam_mean = float(model.diam_mean_value)
    diam_labels = tr.diam_labels
    kind = optimizer if optimizer != "auto" else ("adamw" if (vit or fine_tune) else "sgd")

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = model.to(dev).train()
    with torch.no_grad():
        model.diam_labels.fill_(diam_labels)
    opt, base_lr = make_optimizer(model, kind, lr, weight_decay, momentum)
    lrs = lr_schedule(epochs, base_lr, warmup_epochs)
    use_amp = dev.type == "cuda" and (amp is True or amp == "auto")
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    n_per_epoch = int(images_per_epoch or len(tr))

    history: List[Dict[str, float]] = []
    best_ap: Optional[float] = None
    best_epoch: Optional[int] = None
    start = 0
    if resume is not None:
        rp = Path(resume)
        rp = rp / STATE_FILE if rp.is_dir() else rp
        st = torch.load(rp, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if "scaler" in st and scaler.is_enabled():
            scaler.load_state_dict(st["scaler"])
        start, history = int(st["epoch"]), list(st["history"])
        best_ap, best_epoch = st.get("best_ap"), st.get("best_epoch")
        rng.bit_generator.state = st["np_rng"]
        torch.set_rng_state(st["torch_rng"])
        if dev.type == "cuda" and st.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(st["cuda_rng"], dev)
        log.info("resumed from %s at epoch %d", rp, start)

    out_dir = Path(save_dir) if save_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    info = {"optimizer": kind, "lr": base_lr, "epochs": epochs, "batch_size": batch_size,
            "images_per_epoch": n_per_epoch, "tile": tile, "scale_range": scale_range, "rescale": rescale,
            "sam_augment": sam_augment, "seed": seed, "n_train": len(tr), "n_val": len(va) if va else 0,
            "fine_tuned_from": (getattr(model, "fastpose_meta", None) or {}).get("path")}

    def meta(sm: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {"diam_mean": diam_mean, "diam_labels": diam_labels, "normalize": dict(DEFAULT_NORMALIZE),
                "size_model": sm, "extra": {"training": {**info, "epochs_done": len(history), "best_ap50": best_ap,
                                                         "final_loss": history[-1]["loss"] if history else None}}}

    def save_state(epoch: int) -> None:
        assert out_dir is not None
        _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                      "epoch": epoch, "history": history, "best_ap": best_ap, "best_epoch": best_epoch,
                      "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                      "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
                     out_dir / STATE_FILE)
        save_model(out_dir / LAST_FILE, model, meta())

    log.info("training %s on %d images (%d val) for %d epochs: %s lr %.3g, batch %d, tile %d, device %s%s",
             type(model).__name__, len(tr), len(va) if va else 0, epochs, kind, base_lr, batch_size, tile, dev,
             " (amp)" if use_amp else "")
    bar = tqdm(range(start, epochs), desc="train", unit="epoch", disable=not progress, initial=start,
               total=epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = float(lrs[epoch])
        order = rng.choice(len(tr), n_per_epoch, replace=n_per_epoch > len(tr))
        total, count = 0.0, 0
        for b in range(0, n_per_epoch, batch_size):
            x, f, m = make_batch(tr, order[b:b + batch_size], rng, diam_mean=diam_mean, tile=tile,
                                 scale_range=scale_range, rescale=rescale, sam=sam_augment)
            xt, ft, mt = (torch.from_numpy(a).to(dev, non_blocking=True) for a in (x, f, m))
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                y, _ = model(xt)
            loss = seg_loss(y, ft, mt)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach()) * len(x)
            count += len(x)
        rec: Dict[str, float] = {"epoch": epoch + 1, "lr": float(lrs[epoch]), "loss": total / count,
                                 "time": time.perf_counter() - t0}
        last = epoch + 1 == epochs
        if va is not None and len(va) and ((epoch + 1) % val_every == 0 or last):
            ap = float(np.mean(evaluate_ap(model, va, dev)))
            rec["ap50"] = ap
            log.info("epoch %d: loss %.4f, val AP@0.5 %.3f", epoch + 1, rec["loss"], ap)
            if best_ap is None or ap > best_ap:
                best_ap, best_epoch = ap, epoch + 1
                if out_dir is not None:
                    save_model(out_dir / BEST_FILE, model, meta())
        elif (epoch + 1) % 10 == 0:
            log.info("epoch %d: loss %.4f, lr %.3g", epoch + 1, rec["loss"], rec["lr"])
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.3g}")
        if out_dir is not None and ((epoch + 1) % save_every == 0 or last):
            save_state(epoch + 1)

    sm = None
    if size_model and not vit and len(history) == epochs:
        sm = train_size_model(model, tr, batch_size=batch_size, tile=tile, seed=seed, device=dev)
    model.fastpose_meta = {**dict(getattr(model, "fastpose_meta", None) or {}), **meta(sm),
                           "arch": model.arch(), "nchan": nchan}
    if out_dir is not None and start < epochs:
        save_model(out_dir / LAST_FILE, model, meta(sm))
    model.eval()
    return TrainResult(model=model, history=history, best_ap=best_ap, best_epoch=best_epoch,
                       last_path=out_dir / LAST_FILE if out_dir else None,
                       best_path=out_dir / BEST_FILE if (out_dir and best_epoch) else None,
                       state_path=out_dir / STATE_FILE if out_dir else None, size_model=sm,
                       diam_labels=diam_labels)
