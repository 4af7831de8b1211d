"""``fastpose train --method cellulus``: an unsupervised Cellulus network from a folder of images, no masks.

The flags live in the ``fastpose train`` parser (:mod:`fastpose.train.cli`); :func:`run_train` runs the Cellulus
branch::

    fastpose train --method cellulus --data IMAGES/ --out my_cellulus.pth [--time-budget 3600] [--object-size 20]
    fastpose train --recipe cellulus_nuclei --data /path/to/dsb2018/stage1_train --out cellulus_nuclei.pth
    fastpose segment IMAGES/ --out OUT/ --model my_cellulus.pth

* Data: the images of ``--data`` (.tif, .tiff, .npy; files named like masks or outputs skipped, masks never
  read), ids = file stems less ``--img-filter``; ``--holdout-every N`` leaves out the ids whose SHA-1 is 0 mod N
  and ``--exclude`` the ids named (the nuclei recipe's split, so that its held-out images stay unseen);
  ``--limit`` keeps the first N.  ``--grey`` averages colour images to one channel; otherwise the network takes
  one channel (2D files, no ``--channel-axis``) or the channels of the first training image.
* Training: :func:`fastpose.cellulus.training.train` with ``--fmaps``, ``--crop``, ``--batch-size``, ``--lr``,
  ``--weight-decay``, ``--steps`` / ``--time-budget``, ``--seed``, ``--device``; checkpoints and the resume
  state in ``--save-dir`` (default ``<out stem>_train/``), ``--resume`` from its ``cellulus_state.pt``.
* Output: ``--out`` holds the best-loss weights (the last ones when no best-loss check ran: fewer than 100
  steps) with the inference settings (``--object-size``, ``--post-processing``), the training record, the
  resolved options, the data and the command; ``--card`` (on for the recipe) also writes ``<out>.json`` (its
  ``validation`` is empty until ``fastpose-bench cellulus --card`` merges the held-out F1 and SEG in).

Options of Cellpose training that mean nothing here (``--epochs``, ``--nbase``, ``--val-dir``...) are a usage
error naming them, as are the Cellulus options with ``--method cellpose`` (:func:`fastpose.train.cli.run`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["run_train", "CELLULUS_OPTIONS", "recipe_text"]

log = logging.getLogger("fastpose.train")

#: the ``fastpose train`` options (argparse dests) the Cellulus branch reads; any other one given is an error
CELLULUS_OPTIONS = ("recipe", "method", "dir", "holdout_every", "exclude", "channel_axis", "grey", "img_filter",
                    "mask_filter", "limit", "model", "out", "time_budget", "lr", "weight_decay", "batch_size",
                    "save_dir", "resume", "half", "card", "seed", "device", "fmaps", "crop", "steps",
                    "object_size", "post_processing")


def recipe_text(info: Mapping[str, Any]) -> str:
    """One line describing a Cellulus run from :attr:`CellulusTrainResult.info`."""
    length = (f"{info['time_budget']:g} s wall-clock budget" if info.get("time_budget")
              else f"{info.get('steps')} steps")
    return (f"Adam lr {info.get('lr'):g} wd {info.get('weight_decay'):g}, {length} ({info.get('steps_done')} done), "
            f"{info.get('crop')} px crops, batch {info.get('batch_size')}, OCE loss (tau {info.get('tau'):g}, "
            f"lambda {info.get('lam'):g}, density {info.get('density'):g}, kappa {info.get('kappa'):g}; "
            f"{info.get('pairs_per_crop')} pairs per crop), {info.get('augment')} augmentation, fp32, network f "
            f"{info.get('f')}")


def _given(args: argparse.Namespace) -> List[str]:
    """The flags given (not at their parser defaults) that the Cellulus branch does not read."""
    return [flag for dest, flag, default, _ in getattr(args, "_flags", [])
            if dest not in CELLULUS_OPTIONS and getattr(args, dest, default) != default]


def _state_file(path: Any) -> Path:
    from .training import STATE_FILE

    p = Path(path)
    if p.is_dir():
        p = p / STATE_FILE
    if not p.is_file():
        raise FileNotFoundError(f"--resume {path}: no such file (a {STATE_FILE} or the folder holding it)")
    return p


def _channels_of(path: Path, channel_axis: Optional[int]) -> int:
    """Input channels of one image file: 1 for a 2D file or without ``channel_axis``, else its length along it
    (an axis out of range: 1, which the loader then reports)."""
    if channel_axis is None:
        return 1
    from ..io import read_image

    a = read_image(path)
    if a.ndim < 3 or not -a.ndim <= channel_axis < a.ndim:
        return 1
    return int(a.shape[channel_axis])


def run_train(args: argparse.Namespace) -> int:
    """Execute ``fastpose train --method cellulus`` (see the module docstring); returns the exit status."""
    import fastpose

    from ..models import load_model
    from ..train.card import build_card, command_line, write_card
    from ..train.data import image_files, split_images
    from ..train.recipes import CELLULUS_DEFAULTS, RECIPES, SAMPLE_ID
    from .network import CellulusNet, save_cellulus
    from .settings import check_settings
    from .training import train

    given = dict(vars(args))
    bad = _given(args)
    if bad:
        what = "it is a Cellpose training option" if len(bad) == 1 else "they are Cellpose training options"
        raise ValueError(f"--method cellulus (unsupervised, images only) does not take {', '.join(bad)}: {what}; "
                         "Cellulus trains for --steps or a --time-budget on the images of --data (see fastpose "
                         "train --help)")
    recipe = RECIPES[args.recipe] if args.recipe else None
    opts: Dict[str, Any] = dict(CELLULUS_DEFAULTS)
    if recipe is not None:
        opts.update({k: v for k, v in recipe.options.items() if k in opts})
    for k in opts:
        v = getattr(args, k, None)
        if v is not None:
            opts[k] = v
    opts["exclude"] = list(opts["exclude"] or [])
    cmd = command_line("fastpose train", given)
    scratch = args.model == "scratch"
    if not args.dir:
        raise ValueError("no training images: pass --data FOLDER (its images alone; masks are not read)")

    files = image_files(args.dir, args.img_filter, args.mask_filter)
    paths, held = split_images(files, opts["holdout_every"], opts["exclude"])
    n_found = len(paths)
    if args.limit:
        paths = paths[:args.limit]
    if not paths:
        raise ValueError(f"--data {args.dir}: no training images left ({len(files)} found, {len(held)} held out by "
                         "--holdout-every, the rest excluded)")
    every = int(opts["holdout_every"] or 0)
    parts = [f"{len(paths)} training images, masks not read"]
    parts.append(f"held out: the ids whose SHA-1 is 0 mod {every} ({len(held)} image{'' if len(held) == 1 else 's'}, "
                 "not trained on)" if every else "no held-out images")
    if opts["exclude"]:
        parts.append("excluded: " + ", ".join(sorted(opts["exclude"])) + (
            " (the bundled sample)" if opts["exclude"] == [SAMPLE_ID] else ""))
    if args.limit and len(paths) < n_found:
        parts.append(f"limited to the first {len(paths)} of {n_found} (a smoke run)")
    name = recipe.data_name if recipe is not None and recipe.data_name else Path(args.dir).name
    desc = f"{name} ({'; '.join(parts)})"

    resume = _state_file(args.resume) if args.resume else None
    model: Optional[CellulusNet] = None
    if resume is not None:
        import torch

        try:
            st = torch.load(resume, map_location="cpu", weights_only=True)
            nchan, width = int(st["arch"]["in_channels"]), int(st["arch"]["f"])
        except Exception as e:  # noqa: BLE001 - any unreadable or foreign file is a usage error
            raise ValueError(f"--resume {resume}: not a Cellulus training state ({type(e).__name__}: {e})") from None
    elif not scratch:
        net, _ = load_model(args.model, device="cpu")
        if not isinstance(net, CellulusNet):
            raise ValueError(f"--model {args.model} is a {type(net).__name__}, not a Cellulus network: --method "
                             "cellulus trains Cellulus networks (--model scratch for a new one)")
        model, nchan, width = net, net.in_channels, net.f
    if (resume is not None or not scratch) and args.fmaps is not None and args.fmaps != width:
        raise ValueError(f"--fmaps {args.fmaps}: the network {'of --resume' if resume is not None else 'of --model'} "
                         f"has f = {width}, which training keeps (--fmaps sets the width of a new network)")
    if resume is None and scratch:
        nchan = 1 if opts["grey"] else _channels_of(paths[0], opts["channel_axis"])
    settings = check_settings({"object_size": opts["object_size"], "post_processing": opts["post_processing"]})
    out = Path(args.out)
    save_dir = Path(args.save_dir) if args.save_dir else out.with_name(out.stem + "_train")
    log.info("Cellulus training on %s; checkpoints in %s", desc, save_dir)
    res = train(paths, model=model, nchan=nchan, channel_axis=opts["channel_axis"], grey=bool(opts["grey"]),
                f=opts["fmaps"], crop=opts["crop"], batch_size=opts["batch_size"], lr=opts["lr"],
                weight_decay=opts["weight_decay"], steps=opts["steps"], time_budget=opts["time_budget"],
                object_size=settings["object_size"], settings={"post_processing": settings["post_processing"]},
                save_dir=save_dir, resume=resume, progress=not args.quiet, device=args.device, seed=args.seed)

    best = res.best_model is not None
    net = (res.best_model if best else res.model).cpu().eval()
    best_step = next((h["step"] for h in res.history if h["loss"] == res.best_loss), None) if best else None
    trainer = f"fastpose train --method cellulus (fastpose {fastpose.__version__})"
    info: Dict[str, Any] = {
        **res.info, "trainer": trainer, "command": cmd, "recipe": recipe_text(res.info),
        "weights": (f"best mean loss over 100 steps, at step {best_step}" if best else
                    "last (no best-loss check ran: fewer than 100 steps)"),
        "history": res.history}
    options = {"name": recipe.name if recipe is not None else None, "method": "cellulus", **opts}
    extra: Dict[str, Any] = {"training": info, "recipe": options, "data": desc}
    card = None
    if opts["card"]:
        meta = {"diam_mean": settings["object_size"], "diam_labels": settings["object_size"], "arch": net.arch()}
        card = build_card(name=recipe.name if recipe is not None else out.stem, meta=meta, data=desc,
                          reproduce=cmd, recipe=options, training={k: v for k, v in info.items() if k != "history"},
                          validation={}, written_by=trainer, kinds=recipe.kinds if recipe is not None else None)
        card["kind"] = "cellulus"
        card["settings"] = dict(settings)
        extra["card"] = card
    save_cellulus(out, net, settings, extra=extra, half=bool(opts["half"]))
    if card is not None:
        write_card(out.with_suffix(".json"), card)
    log.info("wrote %s (%s weights, %d steps in %.0f s%s)%s; checkpoints in %s", out, "best-loss" if best else "last",
             res.info.get("steps_done", 0), res.info.get("seconds", 0.0),
             f", best mean loss {res.best_loss:.1f}" if best else "",
             f" and {out.with_suffix('.json')}" if card is not None else "", save_dir)
    return 0
