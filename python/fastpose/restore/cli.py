"""``fastpose restore`` (restore images, write float32 TIFFs) and ``fastpose train-restore`` (train a restoration
network with the Cellpose3 recipe); see :mod:`fastpose.restore` and :mod:`fastpose.restore.training`."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from .. import checks

__all__ = ["add_parsers", "run_restore", "run_train", "write_restore_card", "RECIPES"]

log = logging.getLogger("fastpose")

_INT0 = checks.arg(checks.integer, lo=0)
_INT1 = checks.arg(checks.integer, lo=1)
_POS = checks.arg(checks.number, lo=0.0, lo_open=True)

#: recipes of ``fastpose train-restore --recipe``: option dest -> default (options given on the command line win)
RECIPES: Dict[str, Dict[str, Any]] = {
    # the bundled one-click nuclei restorer: DSB 2018 (the nuclei model's split), frozen bundled nuclei model
    "oneclick_nuclei": {"kind": "oneclick", "seg_model": "nuclei", "channel_axis": -1, "grey": True,
                        "holdout_every": 10, "exclude": ["0402a81e75262469"]},
}

_SUFFIX = "_restored.tif"


def add_parsers(sub: "argparse._SubParsersAction") -> None:
    """Add ``restore`` and ``train-restore`` to the ``fastpose`` command line."""
    s = sub.add_parser(
        "restore", help="restore images (denoise, deblur, upsample) with a Cellpose3-style restoration model",
        description="Restore images (TIFF or .npy files, folders, glob patterns) channel by channel with a "
                    "restoration model and write <stem>_restored.tif (float32, about 0-1: the 1st/99th "
                    "percentile scale) to --out, each written to a temporary file and renamed. One unreadable "
                    "or unusable file is reported and skipped; the exit status is then 1.")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    s.add_argument("--out", required=True, help="output folder (created if missing; checked writable first)")
    s.add_argument("--model", default="oneclick_nuclei",
                   help="restoration model: bundled oneclick_nuclei (default), a fastpose restoration file, or a "
                        "Cellpose3 file (denoise_cyto3, deblur_nuclei, upsample_cyto3, oneclick_cyto3, ...: a path, "
                        "or the name of one in Cellpose's model folder ~/.cellpose/models)")
    s.add_argument("--diameter", type=checks.arg(checks.number, lo=0.0, hi=checks.LIMITS["diameter"]), default=None,
                   help="object diameter in pixels: the image is resized by the model's diameter / this for the "
                        "network (default: not resized; 0 = not resized)")
    s.add_argument("--channel-axis", type=checks.arg(checks.axis), default=None,
                   help="axis of the channels of multichannel images (default: none); each channel is restored")
    s.add_argument("--z-axis", type=checks.arg(checks.axis), default=None,
                   help="axis of Z for stacks, restored plane by plane (default: none)")
    s.add_argument("--channels", type=checks.arg(checks.integer, lo=0), nargs="+", default=None, metavar="C",
                   help="restore only these 0-based channels (default: all)")
    s.add_argument("--scale", choices=["input", "model"], default="input",
                   help="input (default): the result at the input's size; model: at the network's scale (the "
                        "upsampled image of an upsample_* model: model diameter / --diameter times the input)")
    s.add_argument("--tile-overlap", type=checks.arg(checks.number, lo=0.0, hi=0.5), default=0.1,
                   help="overlap of the 224 px tiles, 0 to 0.5 (default 0.1)")
    s.add_argument("--batch-size", type=checks.arg(checks.integer, lo=1, hi=checks.LIMITS["batch_size"]), default=8,
                   help="tiles per network batch (default 8)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): the GPU when one is usable")
    s.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="network precision (auto: fp16 on GPU, fp32 on CPU)")
    s.add_argument("--backend", choices=["auto", "torch", "compile", "onnxruntime", "tensorrt"], default="auto",
                   help="how the network runs (see fastpose segment --help; default auto)")
    s.add_argument("--recursive", action="store_true", help="search folders recursively; outputs mirror them")
    s.add_argument("--skip-existing", action="store_true",
                   help="skip inputs whose <stem>_restored.tif exists (files are only ever complete: written to a "
                        "temporary file and renamed)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run_restore)

    s = sub.add_parser(
        "train-restore", help="train a restoration network (Cellpose3 recipe: segmentation + perceptual losses)",
        description="Train a Cellpose3 restoration network on *_img.tif + *_masks.tif images: crops are degraded "
                    "(fastpose.degrade: Poisson noise, blur, downsampling) and the network learns to restore them "
                    "so that a frozen segmentation model (--seg-model) sees the clean image (segmentation loss on "
                    "its flows and cell probability, perceptual loss on its encoder features). The same command "
                    "runs on the CPU within --time-budget and on a GPU.",
        epilog="The bundled oneclick_nuclei model: fastpose train-restore --recipe oneclick_nuclei --data "
               "DSB2018/train --nbase 1 16 32 64 128 --tile 112 --time-budget 3000 --out oneclick_nuclei.pth "
               "(a 2-core CPU run; the Cellpose widths 1 32 64 128 256 and --tile 224 are the defaults)")
    g = s.add_argument_group("data")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="defaults of a bundled restoration model's recipe (options given here win): "
                        "oneclick_nuclei = --kind oneclick --seg-model nuclei --channel-axis -1 --grey "
                        "--holdout-every 10 --exclude 0402a81e75262469 (the bundled sample)")
    g.add_argument("--data", "--dir", dest="dir", default=None, help="folder of *_img.tif and *_masks.tif")
    g.add_argument("--val-dir", default=None, help="validation folder (default: none, or --holdout-every)")
    g.add_argument("--holdout-every", type=_INT1, default=None, metavar="N",
                   help="hold out the ids whose SHA-1 is 0 mod N for validation (default: none)")
    g.add_argument("--exclude", nargs="+", default=None, metavar="ID", help="image ids to leave out entirely")
    g.add_argument("--channel-axis", type=checks.arg(checks.axis), default=None,
                   help="channel axis of multichannel files (2D files are (Y, X))")
    g.add_argument("--grey", action=argparse.BooleanOptionalAction, default=None,
                   help="average colour images to one channel (restoration networks take one channel)")
    g.add_argument("--img-filter", default="_img", help="image file name suffix before .tif (default _img)")
    g.add_argument("--mask-filter", default="_masks", help="mask file name suffix before .tif (default _masks)")
    g.add_argument("--min-masks", type=_INT0, default=1, help="skip images with fewer masks (default 1)")
    g.add_argument("--cache-dir", default=None, help="folder for cached flow targets (default: next to the masks)")
    g.add_argument("--limit", type=_INT1, default=None, metavar="N", help="only the first N images (smoke runs)")
    g = s.add_argument_group("model and losses")
    g.add_argument("--out", required=True, help="the trained restoration model file to write (.pth)")
    g.add_argument("--kind", choices=["oneclick", "poisson", "blur", "downsample", "aniso"], default=None,
                   help="degradations: oneclick (poisson, blur, downsample in turn; default) or one preset")
    g.add_argument("--seg-model", default=None,
                   help="frozen segmentation model of the losses (bundled name or Cellpose U-Net file; default "
                        "nuclei)")
    g.add_argument("--model", default=None, help="restoration model file to continue from (default: a new network)")
    g.add_argument("--nbase", type=_INT1, nargs="+", default=None, metavar="N",
                   help="network widths, input first (default 1 32 64 128 256, Cellpose's)")
    g.add_argument("--diam-mean", type=_POS, default=None,
                   help="object diameter the network works at (default: the segmentation model's)")
    g.add_argument("--lam", type=checks.arg(checks.number, lo=0.0), nargs=3, default=None,
                   metavar=("PER", "SEG", "REC"),
                   help="loss weights perceptual, segmentation, reconstruction (default 1 1.5 0, Cellpose3's)")
    g = s.add_argument_group("schedule")
    g.add_argument("--steps", type=_INT1, default=None, help="optimiser steps (default 20000; an upper bound with "
                                                             "--time-budget)")
    g.add_argument("--time-budget", type=_POS, default=None, metavar="SECONDS",
                   help="stop after this wall-clock time; the learning rate follows the budget")
    g.add_argument("--lr", type=_POS, default=None, help="AdamW learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=checks.arg(checks.number, lo=0.0), default=None,
                   help="AdamW weight decay (default 1e-5)")
    g.add_argument("--batch-size", type=checks.arg(checks.integer, lo=1, hi=checks.LIMITS["batch_size"]), default=None,
                   help="crops per step (default 8)")
    g.add_argument("--tile", type=checks.arg(checks.integer, lo=32, hi=4096), default=None,
                   help="crop side, a multiple of 16 (default 224)")
    g.add_argument("--val-every", type=_INT0, default=None,
                   help="validate every N steps on fixed degraded held-out crops, keep the best (default 200)")
    g.add_argument("--n-val", type=_INT1, default=None, help="validation crops (default 16)")
    g = s.add_argument_group("run")
    g.add_argument("--save-dir", default=None, help="checkpoints and resume state (default: <out>.run/)")
    g.add_argument("--resume", default=None, help="restore_state.pt to continue from")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): the GPU when one is usable")
    g.add_argument("--no-amp", action="store_true", help="no bf16 autocast on the GPU")
    g.add_argument("--threads", type=_INT1, default=None, help="PyTorch CPU threads (default: PyTorch's)")
    g.add_argument("--half", action=argparse.BooleanOptionalAction, default=False,
                   help="store the weights in float16 (half the file size)")
    g.add_argument("--card", action=argparse.BooleanOptionalAction, default=None,
                   help="write the model card <out>.json (training record; fastpose-bench restore --card adds the "
                        "degradation benchmark; default: on with --recipe)")
    g.add_argument("--seed", type=_INT0, default=0, help="random seed (default 0)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run_train)


# ---- fastpose restore ---------------------------------------------------------------------------------------

def run_restore(args: argparse.Namespace) -> int:
    """``fastpose restore``: every input restored and written as ``<stem>_restored.tif``; 1 when any failed."""
    from tqdm import tqdm

    from ..inputs import UsageError, check_out_folder, check_unique_outputs, collect_inputs
    from ..io import read_image, remove_temp_files, write_tiff_atomic
    from . import Restorer

    out = Path(args.out)
    files = collect_inputs(args.inputs, args.recursive, out)
    if not files:
        raise UsageError(f"no input images (.tif, .tiff, .npy) found in {' '.join(args.inputs)}")
    check_unique_outputs(files, out)
    check_out_folder(out, sorted({f.rel for f in files}))
    for d in sorted({f.rel for f in files}):
        remove_temp_files(out / d)
    todo = [f for f in files if not (args.skip_existing and (out / f.rel / f"{f.stem}{_SUFFIX}").is_file())]
    if len(todo) < len(files):
        log.info("--skip-existing: %d input(s) already restored", len(files) - len(todo))
    if not todo:
        return 0
    r = Restorer(args.model, device=args.device, precision=args.precision, batch_size=args.batch_size,
                 backend=args.backend)
    log.info("%d image(s); restoration model %s (objects %g px) on %s", len(todo), args.model, r.diam_mean,
             r.device)
    failed: List[str] = []
    t0 = time.perf_counter()
    pixels = 0
    for f in tqdm(todo, desc="restore", unit="img", disable=args.quiet or None):
        try:
            img = read_image(f.path)
            y = r.restore(img, diameter=args.diameter, channel_axis=args.channel_axis, z_axis=args.z_axis,
                          channels=args.channels, tile_overlap=args.tile_overlap, scale=args.scale)
            write_tiff_atomic(out / f.rel / f"{f.stem}{_SUFFIX}", y.astype(np.float32))
            pixels += int(np.asarray(img).size)
        except (ValueError, OSError, RuntimeError) as e:
            failed.append(str(f.path))
            msg = str(e)
            log.error("%s", msg if str(f.path) in msg else f"{f.path}: {msg}")
    dt = time.perf_counter() - t0
    log.info("restored %d of %d input(s) in %.1f s (%.2f Mpx/s); failed %d", len(todo) - len(failed), len(todo), dt,
             pixels / 1e6 / max(dt, 1e-9), len(failed))
    for p in failed:
        log.info("failed: %s", p)
    return 1 if failed else 0


# ---- fastpose train-restore ---------------------------------------------------------------------------------

_PLAIN = {"kind": "oneclick", "seg_model": "nuclei", "channel_axis": None, "grey": True, "holdout_every": 0,
          "exclude": [], "nbase": [1, 32, 64, 128, 256], "lam": [1.0, 1.5, 0.0], "steps": 20000, "lr": 1e-3,
          "weight_decay": 1e-5, "batch_size": 8, "tile": 224, "val_every": 200, "n_val": 16}


def run_train(args: argparse.Namespace) -> int:
    """``fastpose train-restore``: load the data, train (:func:`fastpose.restore.training.train`), write --out
    (the best validated weights, else the last) with the run's record and the command that made it."""
    from ..models import load_model, save_model
    from ..train.recipes import load_sources
    from .training import train

    opts = dict(_PLAIN)
    if args.recipe:
        opts.update(RECIPES[args.recipe])
    for k, v in vars(args).items():
        if v is not None and k in _PLAIN:
            opts[k] = v
    ns = argparse.Namespace(**{**vars(args), **{k: opts[k] for k in ("channel_axis", "grey", "holdout_every",
                                                                       "exclude")}},
                            synthetic_cyto=0)
    src = load_sources(ns, nchan=1)
    out = Path(args.out)
    save_dir = Path(args.save_dir) if args.save_dir else out.with_name(out.name + ".run")
    command = "fastpose train-restore " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 2 and sys.argv[1] == "train-restore" else None
    res = train(src.train, src.heldout, model=args.model, seg_model=opts["seg_model"], kind=opts["kind"],
                nbase=opts["nbase"], diam_mean=args.diam_mean, lam=opts["lam"], lr=opts["lr"],
                weight_decay=opts["weight_decay"], batch_size=opts["batch_size"], tile=opts["tile"],
                steps=opts["steps"], time_budget=args.time_budget, val_every=opts["val_every"], n_val=opts["n_val"],
                device=args.device, amp=False if args.no_amp else None, seed=args.seed, save_dir=save_dir,
                resume=args.resume, progress=not args.quiet, threads=args.threads,
                extra={"data": src.description, "command": command, "recipe": args.recipe})
    best = res.best_path if res.best_path is not None else res.last_path
    net, meta = load_model(best)
    info = dict(res.info)
    info["weights"] = "best validation loss" if res.best_path is not None else "last step"
    save_model(out, net, meta={"diam_mean": meta["diam_mean"], "extra": {"restore": info}}, half=bool(args.half))
    log.info("wrote %s (%s weights; %d steps in %.0f s)", out, info["weights"], info["steps_done"], info["seconds"])
    if args.card if args.card is not None else bool(args.recipe):
        write_restore_card(out, out.with_suffix(".json"), name=out.stem, data=src.description,
                           reproduce=command or "fastpose train-restore ...", recipe=opts)
        log.info("wrote the model card %s", out.with_suffix(".json"))
    return 0


def write_restore_card(model: Any, card_path: Any, *, name: str, data: str, reproduce: str,
                       recipe: Dict[str, Any]) -> Dict[str, Any]:
    """Write the card of a restoration model file (every field from code: the file's metadata and training
    record, the data, the command and options that trained it); its ``validation`` is empty until
    ``fastpose-bench restore --card`` merges the degradation benchmark in.  Returns the card."""
    import fastpose

    from ..models import load_model
    from ..train.card import build_card, write_card

    _, meta = load_model(model)
    training = dict((meta.get("extra") or {}).get("restore") or {})
    card = build_card(name=name, meta=meta, data=data, reproduce=reproduce, recipe=recipe, training=training,
                      validation={}, written_by=f"fastpose {fastpose.__version__} train-restore")
    card["kind"] = "restoration"
    write_card(card_path, card)
    return card
