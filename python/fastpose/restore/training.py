"""Training restoration networks (Cellpose3): a restoration U-Net learns to undo degradations so that a frozen
segmentation network segments its output as it segments the clean image.

Recipe (Cellpose 3.1's code, ``cellpose/denoise.py``; the defaults here):

* Network: the Cellpose U-Net with one input and one output map, predicting the clean image (``nbase``
  1-32-64-128-256; narrower widths for CPU runs).
* Frozen segmentation network: a one-input-channel copy of a segmentation model (first-layer weights: the
  channel-0 slice; Cellpose's ``one_chan_cellpose``) in eval mode, not optimised; gradients flow through it.
* Losses, weights ``lam = (perceptual 1.0, segmentation 1.5, reconstruction 0)``:
  segmentation ``MSE(flows of the restored image, 5 x flow targets) / 2 + BCEWithLogits(cell probability, mask)``;
  perceptual: for each of the frozen net's four encoder blocks, z-score each channel over H, W, Gram matrix
  ``einsum(bnxy,bmxy->bnm) / HW`` of the restored and of the clean image (clean detached),
  ``mean((G_restored - G_clean)^2) / (std(G_clean) + 1e-6)^2``, summed over blocks, averaged over the batch;
  reconstruction ``80 * MSE`` (ablations only).
* AdamW (weight decay 1e-5), lr 1e-3, batch 8, 2000 epochs, linear warm-up over 10 epochs, the rate halved every
  10 epochs over the last 100 (or the same shape over a wall-clock ``time_budget``).
* Degradations (:mod:`fastpose.degrade`), per crop: a random object diameter ``d = diam_mean * 2^U(-1, 1)``,
  the crop cut with its objects at ``d`` px, degraded at that size (Cellpose's presets scale blur with d / 30),
  renormalised, then resized so its objects are ``diam_mean`` px (the clean crop, flows and masks alike).
  ``kind="oneclick"`` cycles through poisson, blur and downsample: one optimiser step per kind per batch.

Where this follows the code rather than the paper: the loss weights, the 5x flows in the segmentation loss, the
presets (see :mod:`fastpose.degrade`).  One deviation: the z-scoring of the perceptual loss adds 1e-6 to the
standard deviation, so a constant feature channel (possible in small crops) gives 0, not NaN.

Files written to ``save_dir``: ``restore_last.pth`` and ``restore_best.pth`` (lowest validation loss, with
validation data) in fastpose's model format, and ``restore_state.pt`` (weights, optimiser, step, history, the
degradation generators' state), from which ``resume=`` continues.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checks
from ..degrade import ONECLICK, PRESETS, Degrade
from ..models import UNet, load_model, save_model
from ..train.augment import augment_sample

__all__ = ["train", "RestoreTrainResult", "one_channel_copy", "seg_loss", "perceptual_loss", "gram_matrices",
           "restore_loss", "make_crops", "KINDS"]

log = logging.getLogger("fastpose.restore")

PathLike = Union[str, os.PathLike]
KINDS: Tuple[str, ...] = tuple(PRESETS) + ("oneclick",)
STATE_FILE = "restore_state.pt"
LAST_FILE = "restore_last.pth"
BEST_FILE = "restore_best.pth"


@dataclass
class RestoreTrainResult:
    """What :func:`train` returns."""

    model: nn.Module                                   #: the restoration network (last weights), eval mode
    history: List[Dict[str, float]] = field(default_factory=list)  #: per logged step: step, lr, loss, ...
    best_val: Optional[float] = None                   #: lowest validation loss (None without validation)
    last_path: Optional[Path] = None
    best_path: Optional[Path] = None
    state_path: Optional[Path] = None
    info: Dict[str, Any] = field(default_factory=dict)  #: the run's settings and totals (also in the file)


# ---- the frozen segmentation network ------------------------------------------------------------------------

def one_channel_copy(seg: Union[nn.Module, PathLike], device: Union[str, torch.device] = "cpu") -> nn.Module:
    """A one-input-channel copy of a Cellpose U-Net segmentation model (a network, file or bundled name):
    the first block's weights keep the slice of input channel 0 (Cellpose's ``one_chan_cellpose``); frozen
    (no gradients to its weights) and in eval mode."""
    net = load_model(seg, device="cpu")[0] if not isinstance(seg, nn.Module) else seg
    if not isinstance(net, UNet):
        raise ValueError(f"the segmentation model must be a Cellpose U-Net, got {type(net).__name__}")
    if net.nout < 3:
        raise ValueError("the segmentation model must output flows and a cell probability (3 maps); got a "
                         f"network with {net.nout} output(s) (a restoration model?)")
    one = UNet([1, *net.nbase[1:]], nout=net.nout, sz=net.sz, max_pool=net.max_pool, diam_mean=net.diam_mean_value)
    src = net.state_dict()
    new = {}
    for k, v in one.state_dict().items():
        w = src[k]
        if w.shape != v.shape:  # the first block: slice channel 0 (BN vectors [C_in], conv weights [out, C_in, ..])
            w = w[:1] if w.ndim == 1 else w[:, :1]
        new[k] = w.clone()
    one.load_state_dict(new)
    one = one.to(device).eval()
    for p in one.parameters():
        p.requires_grad_(False)
    return one


# ---- losses ----------------------------------------------------------------------------------------------

def seg_loss(y: torch.Tensor, flows: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cellpose3's segmentation loss: ``MSE(y[:, :2], 5 * flows) / 2 + BCEWithLogits(y[:, 2], masks > 0)``."""
    y = y.float()
    return F.mse_loss(y[:, :2], 5.0 * flows) / 2.0 + F.binary_cross_entropy_with_logits(y[:, 2], (masks > 0).float())


def gram_matrices(feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Per encoder map [B, N, H, W]: each channel z-scored over H, W, then ``einsum(bnxy,bmxy->bnm) / HW``."""
    out = []
    for x in feats:
        x = x.float()
        x = x - x.mean((-2, -1), keepdim=True)
        x = x / (x.std((-2, -1), keepdim=True) + 1e-6)
        out.append(torch.einsum("bnxy,bmxy->bnm", x, x) / (x.shape[-2] * x.shape[-1]))
    return out


def perceptual_loss(feats_restored: Sequence[torch.Tensor], feats_clean: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cellpose3's perceptual loss between the frozen net's encoder maps of the restored and the clean image."""
    gp = gram_matrices(feats_restored)
    gt = [g.detach() for g in gram_matrices(feats_clean)]
    total = torch.zeros(gp[0].shape[0], device=gp[0].device)
    for p, t in zip(gp, gt):
        sd = t.std((1, 2)) + 1e-6
        total = total + ((t - p) ** 2).mean((1, 2)) / sd ** 2
    return total.mean()


def restore_loss(net: nn.Module, seg_net: nn.Module, noisy: torch.Tensor, clean: torch.Tensor,
                 flows: torch.Tensor, masks: torch.Tensor, lam: Sequence[float] = (1.0, 1.5, 0.0)
                 ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Total loss ``lam[0] * perceptual + lam[1] * segmentation + lam[2] * 80 * MSE`` of restoring ``noisy``
    [B, 1, T, T] (targets: ``clean`` [B, 1, T, T], ``flows`` [B, 2, T, T], ``masks`` [B, T, T]); the parts as
    floats."""
    restored = net(noisy)[0]
    parts: Dict[str, float] = {}
    loss = torch.zeros((), device=noisy.device)
    if lam[2] > 0:
        rec = 80.0 * F.mse_loss(restored.float(), clean.float())
        loss = loss + lam[2] * rec
        parts["rec"] = float(rec.detach())
    if lam[0] > 0 or lam[1] > 0:
        y, _, feats = seg_net.forward_features(restored)
        if lam[1] > 0:
            sl = seg_loss(y, flows, masks)
            loss = loss + lam[1] * sl
            parts["seg"] = float(sl.detach())
        if lam[0] > 0:
            with torch.no_grad():
                feats_clean = seg_net.forward_features(clean)[2]
            pl = perceptual_loss(feats, feats_clean)
            loss = loss + lam[0] * pl
            parts["per"] = float(pl.detach())
    return loss, parts


# ---- crops --------------------------------------------------------------------------------------------------

def make_crops(data: Any, idx: Sequence[int], rng: np.random.Generator, degrader: Degrade, *, diam_mean: float,
               tile: int, scale_range: float = 0.5, device: torch.device = torch.device("cpu")
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(noisy, clean [B, 1, T, T], flows [B, 2, T, T], masks [B, T, T])`` for images ``idx`` of ``data``
    (:class:`~fastpose.train.data.TrainData` of one-channel normalised images): per image a random object size
    ``d = diam_mean * 2^U(-1, 1)``, a crop with objects at ``d`` px (random rotation, flip, scale jitter),
    degraded by ``degrader`` at that size, then resized so objects are ``diam_mean`` px."""
    noisy, clean, flows, masks = [], [], [], []
    for i in idx:
        d = float(diam_mean * 2.0 ** rng.uniform(-1, 1))
        side = max(16, int(round(tile * d / diam_mean)))
        img = data.images[i][:1]
        x, f, m, sc = augment_sample(img, data.flows[i], data.masks[i], rng, diameter=data.diameters[i],
                                     diam_mean=d, tile=side, scale_range=scale_range)
        xc = torch.from_numpy(np.clip(x, 0, None)).to(device)[None]          # [1, 1, s, s]
        xn = degrader(xc, d)
        ft = torch.from_numpy(f).to(device)[None]
        mt = torch.from_numpy(m.astype(np.float32)).to(device)[None, None]
        if side != tile:
            xc = F.interpolate(xc, size=(tile, tile), mode="bilinear", align_corners=False)
            xn = F.interpolate(xn, size=(tile, tile), mode="bilinear", align_corners=False)
            ft = F.interpolate(ft, size=(tile, tile), mode="bilinear", align_corners=False)
            mt = F.interpolate(mt, size=(tile, tile), mode="nearest")
        noisy.append(xn)
        clean.append(xc)
        flows.append(ft)
        masks.append(mt[:, 0])
    return torch.cat(noisy), torch.cat(clean), torch.cat(flows), torch.cat(masks)


# ---- the loop -----------------------------------------------------------------------------------------------

def _lr_at(step: int, total: int, lr: float, frac: Optional[float] = None) -> float:
    from ..train.loop import budget_lr

    if frac is not None:
        return budget_lr(frac, lr, warmup=0.05, anneal_start=0.95, anneal_every=0.01)
    # Cellpose: warm-up over the first 10 of 2000 epochs (0.5%), halve every 10 epochs over the last 100 (5%)
    return budget_lr(step / max(total, 1), lr, warmup=0.005, anneal_start=0.95, anneal_every=0.005)


def train(train_data: Any, val_data: Any = None, *, model: Optional[Union[nn.Module, PathLike]] = None,
          seg_model: Union[nn.Module, PathLike] = "nuclei", kind: str = "oneclick",
          nbase: Sequence[int] = (1, 32, 64, 128, 256), diam_mean: Optional[float] = None,
          lam: Sequence[float] = (1.0, 1.5, 0.0), lr: float = 1e-3, weight_decay: float = 1e-5, batch_size: int = 8,
          tile: int = 224, steps: int = 20000, time_budget: Optional[float] = None, val_every: int = 200,
          n_val: int = 16, device: str = "auto", amp: Optional[bool] = None, seed: int = 0,
          save_dir: Optional[PathLike] = None, resume: Optional[PathLike] = None, progress: bool = True,
          threads: Optional[int] = None, extra: Optional[Dict[str, Any]] = None) -> RestoreTrainResult:
    """Train a restoration network (see the module docstring for the recipe).

    Parameters
    ----------
    train_data, val_data
        :class:`~fastpose.train.data.TrainData` of one-channel normalised images with flow targets and masks,
        a folder of ``*_img.tif`` + ``*_masks.tif``, or a list of (image, masks) pairs (images become grey).
    model
        A restoration network or file to continue from (None: a new U-Net of widths ``nbase``).
    seg_model
        The frozen segmentation model (network, file or bundled name; default ``"nuclei"``).
    kind
        "oneclick" (poisson, blur, downsample in turn) or one :data:`fastpose.degrade.PRESETS` name.
    diam_mean
        Object size the restorer works at (default: the segmentation model's).
    steps, time_budget
        Optimiser steps (one per kind and batch), or a wall-clock budget in seconds (then ``steps`` is an upper
        bound and the rate follows the budget).
    val_every, n_val
        Validation every ``val_every`` steps on ``n_val`` fixed degraded crops of ``val_data``; the best is kept.
    amp
        bf16 autocast (default: on a GPU only).
    resume
        A ``restore_state.pt`` to continue from (its settings win).
    """
    from ..train.data import as_train_data
    from ..train.loop import resolve_device

    kind = checks.choice(kind, "kind", KINDS)
    lr = checks.number(lr, "lr", lo=0.0, lo_open=True)
    weight_decay = checks.number(weight_decay, "weight_decay", lo=0.0)
    batch_size = checks.integer(batch_size, "batch_size", lo=1, hi=4096)
    tile = checks.integer(tile, "tile", lo=32, hi=4096)
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    steps = checks.integer(steps, "steps", lo=1)
    time_budget = checks.number(time_budget, "time_budget", lo=0.0, lo_open=True, none_ok=True)
    val_every = checks.integer(val_every, "val_every", lo=0)
    lam = [checks.number(v, "lam", lo=0.0) for v in lam]
    if len(lam) != 3 or not any(lam):
        raise ValueError(f"lam must be three weights (perceptual, segmentation, reconstruction), not all 0, got {lam}")
    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    amp = (dev.type == "cuda") if amp is None else bool(amp)

    seg_net = one_channel_copy(seg_model, dev)
    diam = float(diam_mean if diam_mean is not None else seg_net.diam_mean_value)
    tr = as_train_data(train_data, nchan=1, grey=True)
    va = as_train_data(val_data, nchan=1, grey=True) if val_data is not None else None
    if tr is None or len(tr) == 0:
        raise ValueError("no training images")
    if any(f is None for f in tr.flows):
        raise ValueError("training images need flow targets (load them with flows=True)")
    if model is None:
        net = UNet(list(nbase), nout=1, diam_mean=diam)
    elif isinstance(model, nn.Module):
        net = model
    else:
        net = load_model(model)[0]
    if not isinstance(net, UNet) or net.nout != 1 or net.nchan != 1:
        raise ValueError("the restoration network must be a U-Net with one input and one output map")
    net = net.to(dev)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    kinds = ONECLICK if kind == "oneclick" else (kind,)
    degraders = {k: Degrade(k, seed=seed * 1000 + j) for j, k in enumerate(kinds)}
    step, history, best_val, spent_before = 0, [], None, 0.0
    rng_state = None
    if resume is not None:
        st = torch.load(resume, map_location="cpu", weights_only=False)
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step, history, best_val = int(st["step"]), list(st["history"]), st.get("best_val")
        spent_before = float(st.get("seconds", 0.0))
        for k, s in st.get("degraders", {}).items():
            if k in degraders:
                degraders[k].rng.bit_generator.state = s
        rng_state = st.get("rng")
        log.info("resumed from %s at step %d", resume, step)
    rng = np.random.default_rng([seed, 7])
    if rng_state is not None:
        rng.bit_generator.state = rng_state
    out_dir = Path(save_dir) if save_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    # fixed validation crops (same every time): each kind in turn
    val_batches = []
    if va is not None and len(va) and val_every:
        vrng = np.random.default_rng([seed, 99])
        vdeg = {k: Degrade(k, seed=10_000 + j) for j, k in enumerate(kinds)}
        vdata = as_train_data(va, nchan=1) if any(f is None for f in va.flows) else va
        if any(f is None for f in vdata.flows):
            from ..train.data import compute_flow_targets
            vdata.flows = [compute_flow_targets(m) for m in vdata.masks]
        for j in range(max(1, n_val // batch_size)):
            k = kinds[j % len(kinds)]
            idx = vrng.integers(0, len(vdata), size=min(batch_size, n_val))
            val_batches.append(make_crops(vdata, idx, vrng, vdeg[k], diam_mean=diam, tile=tile, device=dev))

    def validate() -> float:
        net.eval()
        tot = 0.0
        with torch.no_grad():
            for nb, cb, fb, mb in val_batches:
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    loss, _ = restore_loss(net, seg_net, nb, cb, fb, mb, lam)
                tot += float(loss)
        net.train()
        return tot / max(1, len(val_batches))

    def save(path: Path, meta_extra: Dict[str, Any]) -> Path:
        net.eval()
        p = save_model(path, net, meta={"diam_mean": diam, "extra": meta_extra})
        net.train()
        return p

    info: Dict[str, Any] = {"kind": kind, "nbase": list(net.nbase), "diam_mean": diam, "lam": list(lam), "lr": lr,
                            "weight_decay": weight_decay, "batch_size": batch_size, "tile": tile, "seed": seed,
                            "device": str(dev), "amp": amp, "n_train": len(tr), "n_val": len(va) if va else 0,
                            "seg_model": str(seg_model) if not isinstance(seg_model, nn.Module) else "network",
                            "torch_threads": torch.get_num_threads()}
    if time_budget:
        info["time_budget"] = time_budget
    else:
        info["steps"] = steps
    t0 = time.time()
    net.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=None if time_budget else steps, initial=step, unit="step", desc=f"restore/{kind}",
                   dynamic_ncols=True)
    last_log = time.time()
    running: Dict[str, float] = {}
    done = False
    while not done:
        idx = rng.integers(0, len(tr), size=batch_size)
        crop_rng = np.random.default_rng([seed, 1, step])
        for k in kinds:
            elapsed = spent_before + time.time() - t0
            if step >= steps or (time_budget and elapsed >= time_budget):
                done = True
                break
            frac = elapsed / time_budget if time_budget else None
            cur_lr = _lr_at(step, steps, lr, frac)
            for g in opt.param_groups:
                g["lr"] = cur_lr
            noisy, clean, flows, masks = make_crops(tr, idx, crop_rng, degraders[k], diam_mean=diam, tile=tile,
                                                    device=dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss, parts = restore_loss(net, seg_net, noisy, clean, flows, masks, lam)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"restoration loss became {float(loss)} at step {step} ({k}); "
                                         "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            for name, v in {"loss": float(loss), **parts}.items():
                running[name] = 0.9 * running.get(name, v) + 0.1 * v
            if bar is not None:
                bar.update(1)
                bar.set_postfix({n: f"{v:.3f}" for n, v in running.items()}, refresh=False)
            if val_batches and val_every and step % val_every == 0:
                vl = validate()
                rec = {"step": step, "lr": cur_lr, "seconds": spent_before + time.time() - t0, "val_loss": vl,
                       **{n: v for n, v in running.items()}}
                history.append(rec)
                log.info("step %d: val loss %.4f (train %.4f), lr %.2e", step, vl, running.get("loss", 0), cur_lr)
                if out_dir is not None and (best_val is None or vl < best_val):
                    best_val = vl
                    save(out_dir / BEST_FILE, {"restore": {**info, "step": step, "val_loss": vl}})
                if out_dir is not None:
                    _save_state(out_dir / STATE_FILE, net, opt, step, history, best_val,
                                spent_before + time.time() - t0, degraders, rng)
            elif time.time() - last_log > 60:
                log.info("step %d: loss %.4f, lr %.2e", step, running.get("loss", 0), cur_lr)
                last_log = time.time()
    if bar is not None:
        bar.close()
    seconds = spent_before + time.time() - t0
    info.update(steps_done=step, seconds=round(seconds, 1), final_loss=running.get("loss"), best_val=best_val)
    if extra:
        info.update(extra)
    res = RestoreTrainResult(model=net.eval(), history=history, best_val=best_val, info=info)
    if out_dir is not None:
        res.last_path = save(out_dir / LAST_FILE, {"restore": info})
        res.state_path = _save_state(out_dir / STATE_FILE, net, opt, step, history, best_val, seconds, degraders, rng)
        if (out_dir / BEST_FILE).is_file():
            res.best_path = out_dir / BEST_FILE
    net.fastpose_meta = {"diam_mean": diam, "extra": {"restore": info}}
    log.info("restoration training done: %d steps in %.0f s, final loss %s", step, seconds,
             f"{running.get('loss', float('nan')):.4f}")
    return res


def _save_state(path: Path, net: nn.Module, opt: torch.optim.Optimizer, step: int, history: List[Dict[str, float]],
                best_val: Optional[float], seconds: float, degraders: Dict[str, Degrade],
                rng: np.random.Generator) -> Path:
    from ..io import atomic_write

    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step, "history": history,
             "best_val": best_val, "seconds": seconds,
             "degraders": {k: d.rng.bit_generator.state for k, d in degraders.items()},
             "rng": rng.bit_generator.state}
    return atomic_write(path, lambda f: torch.save(state, f))
