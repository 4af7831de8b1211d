"""``fastpose finetune``: few-shot fine-tuning from the command line (:func:`fastpose.scellseg.finetune.finetune`).

::

    fastpose finetune --shots SHOTS/ [--query QUERY/] [--contrast STYLES/] --strategy contrastive --model nuclei \\
        --out tuned.pth
    fastpose segment IMAGES/ --model tuned.pth --diameter D      # D: printed at the end, and in the model file

``SHOTS/`` holds ``*_img.tif`` + ``*_masks.tif`` (the annotated images); ``QUERY/`` unlabelled images of the same
experiment; ``STYLES/`` one folder per contrast style (default: the styles shipped with fastpose).  The model file
is written atomically, with the recipe and the shots' diameter in it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .. import checks

__all__ = ["add_parser", "run"]

log = logging.getLogger("fastpose.finetune")


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``finetune`` subcommand; its ``func`` default is :func:`run`."""
    s = subparsers.add_parser(
        "finetune", help="fine-tune a model on a few annotated images (Scellseg's contrastive or classic)",
        description="Fine-tune MODEL (a U-Net or sCSnet: bundled name or file) on the few annotated images of "
                    "--shots, for --steps steps of --batch-size crops. --strategy contrastive (Scellseg) also pulls "
                    "the style of the shots towards unlabelled --query images of the same experiment and away from "
                    "other styles (--contrast); classic uses the segmentation loss alone. Deterministic for a "
                    "--seed on the CPU. Prints the diameter to segment the new model at.")
    s.add_argument("--shots", required=True, metavar="DIR", help="folder of *_img.tif + *_masks.tif: the shots")
    s.add_argument("--query", default=None, metavar="DIR",
                   help="unlabelled images of the same experiment (default: the shot images); contrastive only")
    s.add_argument("--contrast", default=None, metavar="DIR",
                   help="a folder of style folders of images (default: the styles shipped with fastpose: DSB "
                        "fluorescence, DSB colour, synthetic cells); contrastive only")
    s.add_argument("--strategy", choices=["contrastive", "classic"], default="contrastive",
                   help="contrastive (default, Scellseg) or classic fine-tuning")
    s.add_argument("--model", default="nuclei", help="base model: bundled name or file (default nuclei)")
    s.add_argument("--out", required=True, help="model file to write (.pth)")
    s.add_argument("--steps", type=checks.arg(checks.integer, lo=1, hi=1_000_000), default=100,
                   help="optimiser steps (default 100, the authors')")
    s.add_argument("--batch-size", type=checks.arg(checks.integer, lo=1, hi=checks.LIMITS["batch_size"]),
                   default=8, help="crops per step and per batch (default 8)")
    s.add_argument("--lr", type=checks.arg(checks.number, lo=0.0, lo_open=True), default=1e-3,
                   help="Adam's learning rate, halved every 25 steps (default 1e-3)")
    s.add_argument("--tile", type=checks.arg(checks.integer, lo=16, hi=4096), default=224,
                   help="crop side (default 224)")
    s.add_argument("--channel-axis", type=checks.arg(checks.axis), default=None,
                   help="channel axis of multichannel shot / query files (default: colour files averaged to grey)")
    s.add_argument("--seed", type=checks.arg(checks.integer, lo=0), default=0, help="random seed (default 0)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): the GPU when present")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Execute ``fastpose finetune``; returns the exit status."""
    from ..models import save_model
    from .finetune import finetune

    if args.strategy == "classic" and (args.query or args.contrast):
        raise ValueError("--query and --contrast are for --strategy contrastive; classic fine-tuning uses the shots "
                         "alone")
    res = finetune(args.model, args.shots, query=args.query, contrast=args.contrast, strategy=args.strategy,
                   steps=args.steps, batch_size=args.batch_size, lr=args.lr, tile=args.tile,
                   channel_axis=args.channel_axis, seed=args.seed, device=args.device, progress=not args.quiet)
    meta = res.model.fastpose_meta
    save_model(Path(args.out), res.model, {k: meta[k] for k in ("diam_mean", "diam_labels", "normalize", "extra")
                                           if k in meta})
    log.info("wrote %s (%s fine-tuning, %d shot(s), %d steps, %.2f s/step); segment with --diameter %.1f", args.out,
             args.strategy, res.info["n_shots"], args.steps, res.seconds_per_step, res.diameter)
    return 0
