"""The training loop: optimisers, learning-rate schedules, loss, validation, checkpoints and resume.

Recipes (Cellpose papers):

* U-Net from scratch: SGD, lr 0.2, momentum 0.9, weight decay 1e-5, batch 8, 224x224 crops; linear
  warm-up over 10 epochs, constant, then the rate halves every 10 epochs over the last 100 epochs
  (runs > 300 epochs) or every 5 over the last 50 (runs of 100-300 epochs).
* Fine-tuning a model file / ViT: AdamW (U-Net lr 5e-3, weight decay 1e-4; ViT lr 5e-5, weight decay 0.1),
  same schedule.
* Loss: ``0.5 * MSE(y[:, :2], 5 * flows) + BCEWithLogits(y[:, 2], masks > 0)``.

A run is counted in epochs, or given a wall-clock ``time_budget``: then it ends when the budget is spent
and the rate follows :func:`budget_lr` (the same warm-up / constant / halving shape laid over the fraction of
the budget used; how the bundled models were trained, see :mod:`fastpose.train.recipes`).  Options for
fast hardware: batches augmented on worker processes ahead of the step (``workers``), channels-last
memory format and ``torch.compile`` of the training step, bf16 autocast on a GPU (``amp``).

Files written to ``save_dir``: ``model_last.pth`` and (with validation data) ``model_best.pth`` in the
fastpose model format (:func:`fastpose.models.save_model`), and ``train_state.pt`` (weights, optimiser,
epoch, history) from which ``train(..., resume=...)`` continues bit-for-bit (epoch-counted runs).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checks
from .batches import BatchMaker, auto_workers, batch_tasks, iter_batches, make_batch
from .data import as_train_data
from .evaluate import is_vit, evaluate_ap
from .size_model import train_size_model

__all__ = ["TrainResult", "train", "lr_schedule", "budget_lr", "seg_loss", "make_optimizer", "evaluate_ap",
           "make_batch", "STATE_FILE", "LAST_FILE", "BEST_FILE"]

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
    history: List[Dict[str, float]] = field(default_factory=list)  #: per epoch: epoch, lr, loss, time[, ap50]
    best_ap: Optional[float] = None         #: best validation AP@0.5 (None without validation data)
    best_epoch: Optional[int] = None
    last_path: Optional[Path] = None        #: save_dir/model_last.pth
    best_path: Optional[Path] = None        #: save_dir/model_best.pth (with validation data)
    state_path: Optional[Path] = None       #: save_dir/train_state.pt (for resume)
    size_model: Optional[Dict[str, Any]] = None
    diam_labels: float = 0.0
    info: Dict[str, Any] = field(default_factory=dict)  #: the run's settings and totals (also stored in the
    #: model file as ``extra["training"]``): steps, samples, seconds, data_wait_seconds, final_loss, ...


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


def budget_lr(frac: float, lr: float, warmup: float = 0.05, anneal_start: float = 0.7,
              anneal_every: float = 0.06) -> float:
    """Learning rate after the fraction ``frac`` of a time budget: linear warm-up over the first ``warmup``
    (from at least 2% of ``lr``), constant, then halved at ``anneal_start`` and again every
    ``anneal_every`` (defaults: 5%, 70%, 6%: Cellpose's shape of schedule on a wall clock)."""
    if frac < warmup:
        return lr * max(frac / warmup, 0.02)
    if frac < anneal_start:
        return lr
    return lr / 2.0 ** (int((frac - anneal_start) / anneal_every) + 1)


def seg_loss(y: torch.Tensor, flows: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cellpose's loss: ``0.5 * MSE(y[:, :2], 5 * flows) + BCEWithLogits(y[:, 2], masks > 0)``."""
    y = y.float()
    return 0.5 * F.mse_loss(y[:, :2], 5.0 * flows) + \
        F.binary_cross_entropy_with_logits(y[:, 2], (masks > 0).float())


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
        vit = is_vit(model)
        lr = (5e-5 if vit else 5e-3) if lr is None else lr
        wd = (0.1 if vit else 1e-4) if weight_decay is None else weight_decay
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd), lr
    raise ValueError(f"optimizer must be 'sgd', 'adamw' or 'auto', got {kind!r}")


def _save_atomic(obj: Any, path: Path) -> None:
    from ..io import atomic_write

    atomic_write(path, lambda f: torch.save(obj, f))


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but PyTorch sees no CUDA GPU")
    return dev


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------

def train(model: Union[nn.Module, PathLike], train_data: Any, val_data: Any = None, *,
          epochs: Optional[int] = None, time_budget: Optional[float] = None, lr: Optional[float] = None,
          batch_size: int = 8, images_per_epoch: Optional[int] = None, optimizer: str = "auto",
          weight_decay: Optional[float] = None, momentum: float = 0.9, warmup_epochs: int = 10,
          warmup_fraction: float = 0.05, anneal_start: float = 0.7, anneal_every: float = 0.06,
          tile: Optional[int] = None, scale_range: float = 0.5, rescale: Optional[bool] = None,
          sam_augment: bool = False, min_masks: int = 1, cache_dir: Optional[PathLike] = None,
          channel_axis: Optional[int] = None, val_every: int = 10, save_dir: Optional[PathLike] = None,
          save_every: int = 1, resume: Optional[PathLike] = None, size_model: bool = True,
          size_model_epochs: int = 10, amp: Union[bool, str] = "auto", channels_last: Union[bool, str] = "auto",
          compile_backend: Optional[str] = None, workers: Union[int, str] = 0, worker_type: str = "process",
          prefetch: Optional[int] = None, log_every: int = 200, seed: int = 0,
          device: Union[str, torch.device] = "auto", progress: bool = True, annotated: Any = None,
          alpha: float = 0.5) -> TrainResult:
    """Train (or fine-tune) a segmentation network on images with label masks.

    Every parameter is checked (:mod:`fastpose.checks`) before anything is loaded or trained: a ValueError
    names it, what was given and what is allowed.

    Args:
        model: a :class:`~fastpose.models.UNet` / :class:`~fastpose.models.ViT`, or a model file to
            fine-tune (loaded with :func:`~fastpose.models.load_model`).
        train_data, val_data: a :class:`TrainData`, a folder of ``*_img.tif`` + ``*_masks.tif``, or a
            list of (image, masks) pairs (images [Y, X] or channels-first [C, Y, X]).
        epochs: total epochs, 1 to ``LIMITS["epochs"]`` (a resumed run continues up to this number; 0 is an
            error, not the default).  Default (None) 100, or with ``time_budget`` no limit.
        time_budget: train for this many wall-clock seconds instead (compilation and checkpoints count;
            the size model and the final validation come after); the rate follows :func:`budget_lr` with
            ``warmup_fraction``, ``anneal_start`` and ``anneal_every`` instead of :func:`lr_schedule`.
        lr, weight_decay, momentum: optimiser settings (None: the recipe defaults, see module docstring).
        batch_size: crops per step.  images_per_epoch: crops per epoch (default: the training set size;
            drawn with replacement when larger).
        optimizer: "sgd", "adamw" or "auto" (AdamW for a ViT or when ``model`` is a file, else SGD).
        warmup_epochs: epochs of linear learning-rate warm-up (epoch-counted runs).
        tile: crop side (default 224 for the U-Net, the ViT's ``img_size``).
        scale_range: random scale factor in ``1 +- scale_range/2``; rescale: first scale every image so
            its median cell diameter becomes the model's ``diam_mean`` (default: yes for a U-Net, no for a
            ViT, matching the Segmenter, which resizes only for U-Nets).
        sam_augment: add Cellpose-SAM's photometric augmentations.
        min_masks, cache_dir, channel_axis: see :func:`fastpose.train.data.load_folder` (``channel_axis``
            of multichannel files or arrays; arrays default to channels-first).
        val_every: validate (AP@0.5) every this many epochs and after the last one (0: never).
        save_dir: folder for model_last.pth / model_best.pth / train_state.pt (None: nothing written).
        save_every: write model_last.pth and train_state.pt every this many epochs (and at the end).
        resume: a train_state.pt (or the folder holding it) to continue an epoch-counted run from.
        size_model: fit the style -> diameter model after training (U-Net only) on ``size_model_epochs``
            random crops per training image.
        amp: mixed precision on the GPU ("auto": on when training on CUDA; bf16 where supported).
        channels_last: channels-last memory format for the network and batches ("auto": on CUDA, where
            cuDNN's tensor-core convolutions want NHWC).
        compile_backend: ``torch.compile`` the training step with this backend ("inductor" on a GPU;
            "eager"/"aot_eager" to check the path); the first steps pay for the compilation.
        workers: augment batches on this many worker processes (``worker_type="process"``) or threads
            (``"thread"``), ``prefetch`` batches ahead of the step (default 3 per worker); 0 (default) makes
            them inline; "auto": the CPU count less two.  The batches are the same either way (see
            :mod:`fastpose.train.batches`).
        log_every: log the mean loss every this many steps (time-budget runs); ``final_loss`` is the mean
            over the last this many steps.
        seed: seeds the crop order, the augmentation and torch.
        device: "auto", "cpu" or "cuda".
        progress: show a tqdm progress bar (epochs, or seconds of the budget).
        annotated, alpha: a second training set mixed into every step (as ``train_data``): each batch takes
            ``batch_size // 2`` crops from it and the rest from ``train_data``, and the loss is
            ``alpha * loss(train_data crops) + (1 - alpha) * loss(annotated crops)``.  Cellulus' pseudo-label
            recipe (:mod:`fastpose.train.pseudo`): ``train_data`` pseudo-labelled images, ``annotated`` the few
            with true masks.  Epochs count ``train_data`` crops; the annotated crops cycle on their own.
    """
    from tqdm.auto import tqdm

    from ..models import DEFAULT_NORMALIZE, load_model, save_model

    L = checks.LIMITS
    epochs = checks.integer(epochs, "epochs", lo=1, hi=L["epochs"], none_ok=True)  # 0 is an error, not "default"
    time_budget = checks.number(time_budget, "time_budget", lo=0.0, lo_open=True, hi=L["time_budget"], none_ok=True)
    lr = checks.number(lr, "lr", lo=0.0, lo_open=True, none_ok=True)
    batch_size = checks.integer(batch_size, "batch_size", lo=1, hi=L["batch_size"])
    images_per_epoch = checks.integer(images_per_epoch, "images_per_epoch", lo=1, none_ok=True)
    optimizer = checks.choice(optimizer, "optimizer", ("auto", "sgd", "adamw"))
    weight_decay = checks.number(weight_decay, "weight_decay", lo=0.0, none_ok=True)
    momentum = checks.number(momentum, "momentum", lo=0.0, hi=1.0, hi_open=True)
    warmup_epochs = checks.integer(warmup_epochs, "warmup_epochs", lo=0)
    warmup_fraction = checks.probability(warmup_fraction, "warmup_fraction")
    anneal_start = checks.probability(anneal_start, "anneal_start")
    anneal_every = checks.probability(anneal_every, "anneal_every", open_low=True)
    tile = checks.integer(tile, "tile", lo=16, hi=4096, none_ok=True)
    scale_range = checks.number(scale_range, "scale_range", lo=0.0, hi=2.0, hi_open=True)
    rescale = None if rescale is None else checks.boolean(rescale, "rescale")
    for name, v in (("sam_augment", sam_augment), ("size_model", size_model), ("progress", progress)):
        checks.boolean(v, name)
    min_masks = checks.integer(min_masks, "min_masks", lo=0)
    channel_axis = checks.axis(channel_axis, "channel_axis")
    val_every = checks.integer(val_every, "val_every", lo=0)
    save_every = checks.integer(save_every, "save_every", lo=1)
    size_model_epochs = checks.integer(size_model_epochs, "size_model_epochs", lo=1)
    if not isinstance(amp, (bool, np.bool_)):
        checks.choice(amp, "amp", (True, False, "auto"))
    if not isinstance(channels_last, (bool, np.bool_)):
        checks.choice(channels_last, "channels_last", (True, False, "auto"))
    if compile_backend is not None and not (isinstance(compile_backend, str) and compile_backend):
        raise ValueError(f"compile_backend must be None or a torch.compile backend name, got {compile_backend!r}")
    if workers != "auto":
        workers = checks.integer(workers, "workers", lo=0)
    worker_type = checks.choice(worker_type, "worker_type", ("process", "thread"))
    prefetch = checks.integer(prefetch, "prefetch", lo=1, none_ok=True)
    log_every = checks.integer(log_every, "log_every", lo=1)
    alpha = checks.probability(alpha, "alpha")
    if annotated is not None and batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 with annotated= (half of each batch from each set), got "
                         f"{batch_size}")
    seed = checks.integer(seed, "seed", lo=0, hi=2 ** 63 - 1)
    if not isinstance(device, torch.device):
        device = checks.choice(device, "device", ("auto", "cpu", "cuda")) if not str(device).startswith("cuda:") \
            else device
    dev = resolve_device(device)
    fine_tune = not isinstance(model, nn.Module)
    if fine_tune:
        model, _ = load_model(model, device="cpu")
    nchan = int(model.nchan)
    vit = is_vit(model)
    tile = int(tile or (getattr(model, "img_size", 256) if vit else 224))
    rescale = (not vit) if rescale is None else bool(rescale)
    timed = time_budget is not None
    if not vit and tile % model.size_multiple:
        raise ValueError(f"tile must be a multiple of {model.size_multiple}, got {tile}")
    if timed and resume is not None:
        raise ValueError("resume continues epoch-counted runs; a time-budget run cannot be continued exactly")
    if epochs is None and not timed:
        epochs = 100
    n_workers = auto_workers() if workers == "auto" else int(workers)
    kw: Dict[str, Any] = dict(min_masks=min_masks, cache_dir=cache_dir)
    if channel_axis is not None:
        kw["channel_axis"] = channel_axis
    tr = as_train_data(train_data, nchan, **kw)
    va = as_train_data(val_data, nchan, **kw)
    if tr is None or len(tr) == 0:
        raise ValueError("no training images (with at least min_masks masks)")
    ann = as_train_data(annotated, nchan, **kw)
    if ann is not None and len(ann) == 0:
        raise ValueError("annotated= holds no images (with at least min_masks masks)")
    b_ann = batch_size // 2 if ann is not None else 0
    diam_mean = float(model.diam_mean_value)
    diam_labels = tr.diam_labels
    kind = optimizer if optimizer != "auto" else ("adamw" if (vit or fine_tune) else "sgd")

    torch.manual_seed(seed)
    model = model.to(dev).train()
    with torch.no_grad():
        model.diam_labels.fill_(diam_labels)
    cl = dev.type == "cuda" if channels_last == "auto" else bool(channels_last)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    # the compiled module shares the parameters; the plain one is what is validated and saved
    fwd = torch.compile(model, backend=compile_backend, dynamic=False) if compile_backend else model
    opt, base_lr = make_optimizer(model, kind, lr, weight_decay, momentum)
    lrs = None if timed else lr_schedule(epochs, base_lr, warmup_epochs)
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
        try:
            st = torch.load(rp, map_location="cpu", weights_only=True)  # never runs code from the file
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - PyTorch's own text advises weights_only=False: not passed on
            raise ValueError(f"cannot resume from {rp}: not a readable {STATE_FILE} ({type(e).__name__}); "
                             f"pass the {STATE_FILE} written by an epoch-counted run (or its folder)") from None
        if not isinstance(st, dict) or not {"model", "optimizer", "epoch", "history"} <= set(st):
            raise ValueError(f"cannot resume from {rp}: not a {STATE_FILE} (no model/optimizer/epoch/history)")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if "scaler" in st and scaler.is_enabled():
            scaler.load_state_dict(st["scaler"])
        start, history = int(st["epoch"]), list(st["history"])
        best_ap, best_epoch = st.get("best_ap"), st.get("best_epoch")
        torch.set_rng_state(st["torch_rng"])
        if dev.type == "cuda" and st.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(st["cuda_rng"], dev)
        log.info("resumed from %s at epoch %d", rp, start)

    out_dir = Path(save_dir) if save_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    info: Dict[str, Any] = {
        "optimizer": kind, "lr": base_lr, "momentum": momentum if kind == "sgd" else None,
        "weight_decay": float(opt.param_groups[0]["weight_decay"]), "epochs": epochs, "time_budget": time_budget,
        "schedule": (f"budget_lr(warmup {warmup_fraction}, halving at {anneal_start} then every {anneal_every})"
                     if timed else f"lr_schedule(warm-up {warmup_epochs} epochs)"),
        "batch_size": batch_size, "images_per_epoch": n_per_epoch, "tile": tile, "scale_range": scale_range,
        "rescale": rescale, "sam_augment": sam_augment, "seed": seed, "n_train": len(tr),
        "n_val": len(va) if va else 0, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "amp": str(amp_dtype).replace("torch.", "") if use_amp else None, "channels_last": cl,
        "compile": compile_backend or None, "workers": n_workers, "worker_type": worker_type if n_workers else None,
        "fine_tuned_from": (getattr(model, "fastpose_meta", None) or {}).get("path")}
    if ann is not None:
        info.update(n_annotated=len(ann), alpha=alpha, annotated_per_batch=b_ann)
    totals: Dict[str, Any] = {}

    def meta(sm: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {"diam_mean": diam_mean, "diam_labels": diam_labels, "normalize": dict(DEFAULT_NORMALIZE),
                "size_model": sm, "extra": {"training": {**info, **totals, "epochs_done": len(history),
                                                         "best_ap50": best_ap}}}

    def save_state(epoch: int) -> None:
        assert out_dir is not None
        _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                      "epoch": epoch, "history": history, "best_ap": best_ap, "best_epoch": best_epoch,
                      "torch_rng": torch.get_rng_state(),
                      "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
                     out_dir / STATE_FILE)
        save_model(out_dir / LAST_FILE, model, meta())

    log.info("training %s on %d images (%d val) for %s: %s lr %.3g, batch %d, tile %d, device %s%s%s%s%s",
             type(model).__name__, len(tr), len(va) if va else 0,
             f"{time_budget:g} s" if timed else f"{epochs} epochs", kind, base_lr, batch_size, tile, dev,
             f" ({info['amp']})" if use_amp else "", ", channels-last" if cl else "",
             f", compiled ({compile_backend})" if compile_backend else "",
             f", {n_workers} {worker_type} workers" if n_workers else "")
    bar = tqdm(desc="train", unit="s" if timed else "epoch", disable=not progress, initial=0 if timed else start,
               total=int(round(time_budget)) if timed else epochs)
    maker = BatchMaker(tr, diam_mean, tile, scale_range, rescale, sam_augment, seed)
    batches = iter_batches(maker, batch_tasks(seed, len(tr), n_per_epoch, batch_size - b_ann, start, epochs),
                           n_workers, worker_type, prefetch)
    ann_batches = None
    if ann is not None:
        seed2 = (seed + 1) % 2 ** 63
        tasks2 = batch_tasks(seed2, len(ann), b_ann * -(-len(ann) // b_ann), b_ann)  # full batches only
        for _ in range(start * -(-n_per_epoch // (batch_size - b_ann))):  # resume: where the stream stood
            next(tasks2)
        ann_batches = iter_batches(BatchMaker(ann, diam_mean, tile, scale_range, rescale, sam_augment, seed2),
                                   tasks2, n_workers, worker_type, prefetch)
    bench_flag = torch.backends.cudnn.benchmark
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels
    t_run = time.perf_counter()
    steps = seen = 0
    waited = 0.0
    recent: deque = deque(maxlen=max(1, log_every))  # step losses, read back only when logged
    ep = {"epoch": start, "loss": torch.zeros((), device=dev), "n": 0, "t0": t_run, "lr": 0.0}

    def finish_epoch(last: bool) -> None:
        nonlocal best_ap, best_epoch
        e = ep["epoch"]
        rec: Dict[str, float] = {"epoch": e + 1, "lr": float(ep["lr"]), "loss": float(ep["loss"]) / ep["n"],
                                 "time": time.perf_counter() - ep["t0"], "crops": ep["n"]}
        if va is not None and len(va) and val_every > 0 and ((e + 1) % val_every == 0 or last):
            ap = float(np.mean(evaluate_ap(model, va, dev)))
            rec["ap50"] = ap
            log.info("epoch %d: loss %.4f, val AP@0.5 %.3f", e + 1, rec["loss"], ap)
            if best_ap is None or ap > best_ap:
                best_ap, best_epoch = ap, e + 1
                if out_dir is not None:
                    save_model(out_dir / BEST_FILE, model, meta())
        elif not timed and (e + 1) % 10 == 0:
            log.info("epoch %d: loss %.4f, lr %.3g", e + 1, rec["loss"], rec["lr"])
        history.append(rec)
        if timed:
            bar.update(min(bar.total, int(time.perf_counter() - t_run)) - bar.n)
        else:
            bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.3g}")
        if out_dir is not None and ((e + 1) % save_every == 0 or last):
            save_state(e + 1)

    try:
        while not (timed and time.perf_counter() - t_run >= time_budget):
            tw = time.perf_counter()
            nxt = next(batches, None)
            waited += time.perf_counter() - tw
            if nxt is None:
                break
            e, _, (x, f, m) = nxt
            n_main = len(x)
            if ann_batches is not None:
                _, _, (x2, f2, m2) = next(ann_batches)
                x, f, m = np.concatenate([x, x2]), np.concatenate([f, f2]), np.concatenate([m, m2])
            if e != ep["epoch"]:
                finish_epoch(last=False)
                ep.update(epoch=e, loss=torch.zeros((), device=dev), n=0, t0=time.perf_counter())
            if timed:
                lr_now = budget_lr((time.perf_counter() - t_run) / time_budget, base_lr, warmup_fraction,
                                   anneal_start, anneal_every)
            else:
                lr_now = float(lrs[e])
            for g in opt.param_groups:
                g["lr"] = lr_now
            xt, ft, mt = (torch.from_numpy(a).to(dev, non_blocking=True) for a in (x, f, m))
            if cl:
                xt = xt.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                y, _ = fwd(xt)
            if ann_batches is None:
                loss = seg_loss(y, ft, mt)
            else:
                loss = alpha * seg_loss(y[:n_main], ft[:n_main], mt[:n_main]) + \
                    (1.0 - alpha) * seg_loss(y[n_main:], ft[n_main:], mt[n_main:])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            lv = loss.detach()  # no host sync per step
            ep["loss"] = ep["loss"] + lv * len(x)
            ep["n"] += len(x)
            ep["lr"] = lr_now
            recent.append(lv)
            steps += 1
            seen += len(x)
            if timed and steps % log_every == 0:
                el = time.perf_counter() - t_run
                log.info("%.0f s step %d (%.0f crops/s) loss %.4f lr %.4g, %.0f%% of the time waiting for data",
                         el, steps, seen / el, float(torch.stack(list(recent)).mean()), lr_now, 100 * waited / el)
        if ep["n"]:
            totals.update(steps=steps, samples=seen, seconds=round(time.perf_counter() - t_run, 1),
                          data_wait_seconds=round(waited, 1),
                          final_loss=float(torch.stack(list(recent)).mean()) if recent else None)
            finish_epoch(last=True)
    finally:
        batches.close()
        if ann_batches is not None:
            ann_batches.close()
        bar.close()
        torch.backends.cudnn.benchmark = bench_flag
    if cl:
        model = model.to(memory_format=torch.contiguous_format)

    sm = None
    if size_model and not vit and (timed or len(history) == epochs):
        sm = train_size_model(model, tr, n_epochs=size_model_epochs, batch_size=batch_size, tile=tile, seed=seed,
                              device=dev)
    model.fastpose_meta = {**dict(getattr(model, "fastpose_meta", None) or {}), **meta(sm),
                           "arch": model.arch(), "nchan": nchan}
    if out_dir is not None and (timed or start < epochs):
        save_model(out_dir / LAST_FILE, model, meta(sm))
    model.eval()
    return TrainResult(model=model, history=history, best_ap=best_ap, best_epoch=best_epoch,
                       last_path=out_dir / LAST_FILE if out_dir else None,
                       best_path=out_dir / BEST_FILE if (out_dir and best_epoch) else None,
                       state_path=out_dir / STATE_FILE if out_dir else None, size_model=sm,
                       diam_labels=diam_labels, info=meta(sm)["extra"]["training"])
