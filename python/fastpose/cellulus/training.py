"""Training Cellulus networks: images only, no masks.

Recipe (funkelab/cellulus, main: ``train.py``, ``datasets/zarr_dataset.py``; the defaults here):

* Network: :class:`~fastpose.cellulus.network.CellulusNet` with ``f`` = 24 (the authors' examples; the paper
  used 64), all image channels in, Kaiming-normal init.
* Data: each image normalised to its 1st / 99.8th percentiles per channel (the examples' csbdeep
  normalisation); random crops of ``crop`` = 252 px (images smaller than a crop are reflect-padded to it),
  crops that are all <= 0 drawn again (the code's ``np.max(sample) <= 0`` rule).
* Augmentation: random flips of every axis and a random multiple of 90 degrees in the (Y, X) plane, a cheap
  stand-in for the authors' elastic augmentation (control points every 64 px, jitter 2, rotation in
  [0, pi/2], scale in [0.9, 1.1]), which fastpose does not implement.
* Loss: the OCE loss (:mod:`fastpose.cellulus.loss`) on freshly drawn anchor / reference pairs per crop,
  summed over pairs and batch; tau 10, lambda 1e-5, density 0.1, kappa 10.
* Adam, lr 4e-5, weight decay 0.01 (the code's; the paper gives no weight decay), batch 8, constant rate (the
  code has no schedule; the paper divided by 10 after epochs 20 and 30); 100,000 iterations in the code, here
  ``steps`` or a wall-clock ``time_budget``.
* Best-loss checkpoint: every ``best_every`` (100) steps the mean loss of those steps is compared with the
  lowest so far, and the weights are kept when it is lower (the code's ``best_loss.pth``).

Files written to ``save_dir``: ``cellulus_best.pth`` (lowest mean loss) and ``cellulus_last.pth`` in fastpose's
model format (:func:`~fastpose.cellulus.network.save_cellulus`: the Cellulus spec and inference settings, so
``fastpose.segment(image, model="cellulus_best.pth")`` runs them), and ``cellulus_state.pt`` (weights,
optimiser, step, history, the random generator), from which ``resume=`` continues.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import checks
from .loss import DENSITY, KAPPA, LAMBDA, TAU, oce_loss, pair_counts, sample_pairs
from .network import SHRINK, CellulusNet, save_cellulus
from .settings import NORMALIZE, check_settings

__all__ = ["train", "CellulusTrainResult", "load_images", "random_crop", "make_batch"]

log = logging.getLogger("fastpose.cellulus")

PathLike = Union[str, os.PathLike]
STATE_FILE = "cellulus_state.pt"
LAST_FILE = "cellulus_last.pth"
BEST_FILE = "cellulus_best.pth"


@dataclass
class CellulusTrainResult:
    """What :func:`train` returns."""

    model: CellulusNet                                   #: the network with the last weights, eval mode
    best_model: Optional[CellulusNet] = None             #: the network with the best-loss weights, eval mode
    history: List[Dict[str, float]] = field(default_factory=list)  #: per ``best_every`` steps: step, loss, ...
    best_loss: Optional[float] = None                    #: lowest mean loss over ``best_every`` steps
    last_path: Optional[Path] = None
    best_path: Optional[Path] = None
    state_path: Optional[Path] = None
    info: Dict[str, Any] = field(default_factory=dict)   #: the run's settings and totals (also in the files)


# ---- data ---------------------------------------------------------------------------------------------------

def load_images(images: Any, *, nchan: int = 1, channel_axis: Optional[int] = None, z_axis: Optional[int] = None,
                channels: Optional[Sequence[int]] = None, grey: bool = False) -> List[np.ndarray]:
    """Training images as float32 channels-first arrays ([nchan, Y, X], or [nchan, Z, Y, X] with ``z_axis``),
    each normalised to its 1 / 99.8 percentiles per channel.

    ``images``: a folder (its .tif/.tiff/.npy images; files named like outputs, ``*_masks.tif`` and the like,
    are skipped), a list of paths, or a list of arrays.  Axes as for :func:`fastpose.segment`; ``grey`` averages
    the first three channels of colour images into one (for ``nchan=1`` models trained on mixed folders).
    ValueError for an image holding NaN or Inf, or of the wrong dimensions."""
    from ..inputs import find_inputs
    from ..io import read_image
    from ..train.data import prepare_image
    from ..transforms import normalize_percentile, to_channels_first

    if isinstance(images, (str, os.PathLike)):
        p = Path(images)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such folder or file")
        items: List[Any] = list(find_inputs([str(p)], False)) if p.is_dir() else [p]
        if not items:
            raise ValueError(f"{p}: no images (.tif, .tiff, .npy)")
    elif isinstance(images, np.ndarray):
        items = [images]
    else:
        items = list(images)
    if not items:
        raise ValueError("no training images")
    out = []
    for i, it in enumerate(items):
        name = str(it) if isinstance(it, (str, os.PathLike)) else f"images[{i}]"
        a = read_image(it) if isinstance(it, (str, os.PathLike)) else np.asarray(it)
        try:
            if z_axis is None:
                x = prepare_image(a, nchan, channel_axis, channels, grey)
            else:
                x = to_channels_first(a, channel_axis, z_axis, channels, nchan, True)
            x = normalize_percentile(x, NORMALIZE["lower"], NORMALIZE["upper"])
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        out.append(x)
    return out


def random_crop(img: np.ndarray, crop: int, rng: np.random.Generator, tries: int = 20) -> np.ndarray:
    """A random ``crop``-sided crop of ``img`` [C, *S] (reflect-padded first where a side is smaller), drawn again
    (up to ``tries`` times) while it is all <= 0."""
    nd = img.ndim - 1
    pads = [(0, 0)] + [(0, max(0, crop - s)) for s in img.shape[1:]]
    if any(p[1] for p in pads):
        img = np.pad(img, pads, mode="reflect" if min(img.shape[1:]) > 1 else "edge")
    c = img
    for _ in range(max(1, tries)):
        o = [int(rng.integers(0, s - crop + 1)) for s in img.shape[1:]]
        c = img[(slice(None),) + tuple(slice(a, a + crop) for a in o)]
        if c.max() > 0:
            break
    assert c.shape[1:] == (crop,) * nd
    return c


def _augment(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    for ax in range(1, c.ndim):
        if rng.random() < 0.5:
            c = np.flip(c, ax)
    return np.rot90(c, int(rng.integers(0, 4)), axes=(c.ndim - 2, c.ndim - 1))


def make_batch(images: Sequence[np.ndarray], batch_size: int, crop: int, rng: np.random.Generator,
               augment: bool = True, density: float = DENSITY, kappa: float = KAPPA
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(crops [B, C, *crop], anchors [B, P, D], references [B, P, D])``: random crops of random images
    (augmented) and the OCE pairs of each crop's output (``crop - 16`` px per side)."""
    crops, anchors, refs = [], [], []
    for _ in range(batch_size):
        c = random_crop(images[int(rng.integers(0, len(images)))], crop, rng)
        if augment:
            c = _augment(c, rng)
        a, r = sample_pairs((crop - SHRINK,) * (c.ndim - 1), rng, density, kappa)
        crops.append(np.ascontiguousarray(c))
        anchors.append(a)
        refs.append(r)
    return np.stack(crops), np.stack(anchors), np.stack(refs)


# ---- the loop -----------------------------------------------------------------------------------------------

def train(images: Any, *, model: Optional[Union[CellulusNet, PathLike]] = None, nchan: int = 1,
          channel_axis: Optional[int] = None, z_axis: Optional[int] = None, channels: Optional[Sequence[int]] = None,
          grey: bool = False, f: int = 24, crop: int = 252, batch_size: int = 8, lr: float = 4e-5,
          weight_decay: float = 0.01, steps: int = 100_000, time_budget: Optional[float] = None,
          density: float = DENSITY, kappa: float = KAPPA, tau: float = TAU, lam: float = LAMBDA,
          augment: bool = True, object_size: float = 30.0, settings: Optional[Mapping[str, Any]] = None,
          best_every: int = 100, save_dir: Optional[PathLike] = None, resume: Optional[PathLike] = None,
          progress: bool = True, device: str = "auto", seed: int = 0, threads: Optional[int] = None,
          extra: Optional[Mapping[str, Any]] = None) -> CellulusTrainResult:
    """Train a Cellulus network on images alone (see the module docstring for the recipe).

    Parameters
    ----------
    images
        A folder of images, a list of paths, or a list of arrays (see :func:`load_images`).
    model
        A Cellulus network or file to continue from (None: a new network of width ``f``).
    nchan, channel_axis, z_axis, channels, grey
        Input channels of the network and how to read them from the images; ``z_axis``: volumes (a 3D network).
    f, crop, batch_size, lr, weight_decay
        Network width, crop side (even; each crop gives ``crop - 16`` output px, which must exceed ``2 kappa``),
        crops per step, Adam's rate and weight decay.
    steps, time_budget
        Optimiser steps, or a wall-clock budget in seconds (then ``steps`` is an upper bound).
    density, kappa, tau, lam
        The OCE loss's pair density, pair radius, temperature and regularisation weight.
    augment
        Random flips and 90-degree rotations of the crops.
    object_size, settings
        The inference settings stored in the model files (:data:`fastpose.cellulus.settings.DEFAULT_SETTINGS`;
        ``object_size`` is the objects' diameter in these images, pixels).
    best_every
        Steps per best-loss check (the mean loss of those steps against the lowest so far).
    save_dir, resume
        Folder for the files (None: nothing written; the best weights are still returned); a
        ``cellulus_state.pt`` to continue from (its network and step count win).
    progress, device, seed, threads
        tqdm progress bar; "auto", "cpu" or "cuda"; seed of the initial weights, crops and pairs; torch threads.
    extra
        Free-form metadata added to the files' ``extra["cellulus"]``.
    """
    from ..train.loop import resolve_device

    nchan = checks.integer(nchan, "nchan", lo=1, hi=1024)
    f = checks.integer(f, "f", lo=1, hi=4096)
    crop = checks.integer(crop, "crop", lo=18, hi=8192)
    if crop % 2:
        raise ValueError(f"crop must be even (the network max-pools by 2 after a 4 px shrink), got {crop}")
    batch_size = checks.integer(batch_size, "batch_size", lo=1, hi=checks.LIMITS["batch_size"])
    lr = checks.number(lr, "lr", lo=0.0, lo_open=True)
    weight_decay = checks.number(weight_decay, "weight_decay", lo=0.0)
    steps = checks.integer(steps, "steps", lo=1)
    time_budget = checks.number(time_budget, "time_budget", lo=0.0, lo_open=True, hi=checks.LIMITS["time_budget"],
                                none_ok=True)
    density = checks.number(density, "density", lo=0.0, lo_open=True, hi=1.0)
    kappa = checks.number(kappa, "kappa", lo=1.0, lo_open=True)
    tau = checks.number(tau, "tau", lo=0.0, lo_open=True)
    lam = checks.number(lam, "lam", lo=0.0)
    augment = checks.boolean(augment, "augment")
    progress = checks.boolean(progress, "progress")
    grey = checks.boolean(grey, "grey")
    best_every = checks.integer(best_every, "best_every", lo=1)
    seed = checks.integer(seed, "seed", lo=0)
    channel_axis = checks.axis(channel_axis, "channel_axis")
    z_axis = checks.axis(z_axis, "z_axis")
    channels = checks.integers(channels, "channels", lo=0, none_ok=True, min_len=1)
    threads = checks.integer(threads, "threads", lo=1, hi=4096, none_ok=True)
    inf_settings = check_settings({**dict(settings or {}), "object_size": object_size})
    ndim = 3 if z_axis is not None else 2
    n_anchor, n_ref = pair_counts((crop - SHRINK,) * ndim, density, kappa)
    if crop - SHRINK <= 2 * int(np.ceil(kappa)) or n_anchor < 1 or n_ref < 1:
        raise ValueError(f"crop={crop} gives an output of {crop - SHRINK} px, too small for kappa={kappa:g} and "
                         f"density={density:g} ({n_anchor} anchors x {n_ref} references): use a larger crop")
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(checks.choice(device, "device", ("auto", "cpu", "cuda")))

    data = load_images(images, nchan=nchan, channel_axis=channel_axis, z_axis=z_axis, channels=channels, grey=grey)
    state = None
    if resume is not None:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping) or state.get("format") != "fastpose-cellulus-state":
            raise ValueError(f"{resume}: not a Cellulus training state (cellulus_state.pt)")
    torch.manual_seed(seed)
    if state is not None:
        arch = {k: v for k, v in dict(state["arch"]).items() if k != "type"}
        net = CellulusNet(**arch)
        net.load_state_dict(state["model"])
    elif model is None:
        net = CellulusNet(in_channels=nchan, f=f, ndim=ndim)
    elif isinstance(model, CellulusNet):
        net = model
    else:
        from ..models import load_model

        net = load_model(model)[0]
    if not isinstance(net, CellulusNet):
        raise ValueError(f"model must be a Cellulus network, got {type(net).__name__}")
    if net.in_channels != nchan or net.ndim != ndim:
        raise ValueError(f"the network takes {net.in_channels} channel(s) of {net.ndim}D images; the training data "
                         f"has {nchan} channel(s) of {ndim}D images")
    net = net.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    step, history, best_loss, spent_before = 0, [], None, 0.0
    rng = np.random.default_rng([seed, 7])
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), list(state["history"])
        best_loss, spent_before = state.get("best_loss"), float(state.get("seconds", 0.0))
        rng.bit_generator.state = state["rng"]
        log.info("resumed from %s at step %d", resume, step)
    best_state = copy.deepcopy(state["best_model"]) if state is not None and state.get("best_model") else None
    out_dir = Path(save_dir) if save_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    info: Dict[str, Any] = {"f": net.f, "ndim": ndim, "nchan": nchan, "crop": crop, "batch_size": batch_size, "lr": lr,
                            "weight_decay": weight_decay, "density": density, "kappa": kappa, "tau": tau, "lam": lam,
                            "pairs_per_crop": n_anchor * n_ref, "augment": "flips + rot90" if augment else "none",
                            "normalize": dict(NORMALIZE), "object_size": inf_settings["object_size"], "seed": seed,
                            "device": str(dev), "n_images": len(data), "torch_threads": torch.get_num_threads()}
    if time_budget:
        info["time_budget"] = time_budget
    else:
        info["steps"] = steps
    if extra:
        info.update(dict(extra))

    def save(path: Path, weights: Optional[Dict[str, torch.Tensor]], meta: Dict[str, Any]) -> Path:
        m = net
        if weights is not None:
            m = CellulusNet(**{k: v for k, v in net.arch().items() if k != "type"})
            m.load_state_dict(weights)
        return save_cellulus(path, m.eval(), inf_settings, extra={"cellulus": meta})

    def save_state(seconds: float) -> Path:
        from ..io import atomic_write

        st = {"format": "fastpose-cellulus-state", "arch": net.arch(), "model": net.state_dict(),
              "optimizer": opt.state_dict(), "step": step, "history": history, "best_loss": best_loss,
              "best_model": best_state, "seconds": seconds, "rng": rng.bit_generator.state}
        return atomic_write(out_dir / STATE_FILE, lambda fh: torch.save(st, fh))

    t0 = time.time()
    net.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=None if time_budget else steps, initial=step, unit="step", desc="cellulus",
                   dynamic_ncols=True)
    window_loss = window_oce = 0.0
    window_n = 0
    running: Optional[float] = None
    last_log = time.time()
    pairs = n_anchor * n_ref * batch_size
    while step < steps and not (time_budget and spent_before + time.time() - t0 >= time_budget):
        x, a, r = make_batch(data, batch_size, crop, rng, augment, density, kappa)
        xt = torch.from_numpy(x).to(dev)
        at, rt = torch.from_numpy(a).to(dev), torch.from_numpy(r).to(dev)
        loss, oce, _ = oce_loss(net(xt), at, rt, tau, lam)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Cellulus loss became {float(loss)} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        lv, ov = float(loss.detach()), float(oce.detach())
        window_loss, window_oce, window_n = window_loss + lv, window_oce + ov, window_n + 1
        running = ov / pairs if running is None else 0.9 * running + 0.1 * ov / pairs
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"oce/pair": f"{running:.4f}"}, refresh=False)
        if step % best_every == 0:
            mean_loss = window_loss / window_n
            rec = {"step": step, "seconds": round(spent_before + time.time() - t0, 2), "loss": mean_loss,
                   "oce": window_oce / window_n, "oce_per_pair": window_oce / window_n / pairs}
            history.append(rec)
            window_loss = window_oce = 0.0
            window_n = 0
            if best_loss is None or mean_loss < best_loss:
                best_loss = mean_loss
                best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                if out_dir is not None:
                    save(out_dir / BEST_FILE, best_state, {**info, "step": step, "loss": mean_loss})
            if out_dir is not None:
                save_state(spent_before + time.time() - t0)
            log.info("step %d: mean loss %.1f (oce %.4f per pair), best %.1f", step, mean_loss,
                     rec["oce_per_pair"], best_loss)
        elif time.time() - last_log > 60:
            log.info("step %d: oce %.4f per pair", step, running)
            last_log = time.time()
    if bar is not None:
        bar.close()
    seconds = spent_before + time.time() - t0
    info.update(steps_done=step, seconds=round(seconds, 1), best_loss=best_loss,
                final_oce_per_pair=running)
    net.eval()
    res = CellulusTrainResult(model=net, history=history, best_loss=best_loss, info=info)
    if best_state is not None:
        bm = CellulusNet(**{k: v for k, v in net.arch().items() if k != "type"})
        bm.load_state_dict(best_state)
        res.best_model = bm.to(dev).eval()
    if out_dir is not None:
        res.last_path = save(out_dir / LAST_FILE, None, info)
        res.state_path = save_state(seconds)
        if (out_dir / BEST_FILE).is_file():
            res.best_path = out_dir / BEST_FILE
    log.info("Cellulus training done: %d steps in %.0f s, best mean loss %s", step, seconds,
             "-" if best_loss is None else f"{best_loss:.1f}")
    return res
