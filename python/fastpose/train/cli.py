"""``fastpose train``: train a U-Net from scratch or fine-tune a model file on a folder of labelled images.

Hook into the main parser with ``add_parser(subparsers)``; the subcommand's ``func`` default is
:func:`run`, which returns the exit status.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from ..io import atomic_write

__all__ = ["add_parser", "run"]

log = logging.getLogger("fastpose.train")


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers`` and return its parser."""
    s = subparsers.add_parser(
        "train", help="train or fine-tune a segmentation model",
        description="Train a Cellpose U-Net from scratch (SGD, Cellpose recipe) or fine-tune any model file "
                    "(AdamW) on a folder of *_img.tif images with *_masks.tif label images. Flow targets are "
                    "cached next to the masks (or in --cache-dir). Checkpoints go to --save-dir; the final "
                    "model (with its size model) is written to --out.")
    s.add_argument("--dir", required=True, help="training folder with *_img.tif and *_masks.tif files")
    s.add_argument("--val-dir", default=None, help="validation folder (AP@0.5 every --val-every epochs, best "
                                                    "checkpoint); default: none")
    s.add_argument("--model", default="scratch",
                   help="'scratch' (default) for a new U-Net, or a model file / built-in name to fine-tune")
    s.add_argument("--out", required=True, help="where to write the trained model file (.pth)")
    s.add_argument("--nbase", type=int, nargs="+", default=[2, 32, 64, 128, 256], metavar="N",
                   help="U-Net widths for --model scratch, input channels first (default 2 32 64 128 256)")
    s.add_argument("--diam-mean", type=float, default=30.0,
                   help="cell diameter (pixels) images are scaled to, for --model scratch (default 30; "
                        "Cellpose nuclei models use 17)")
    s.add_argument("--img-filter", default="_img", help="image file name suffix before .tif (default _img)")
    s.add_argument("--mask-filter", default="_masks", help="mask file name suffix before .tif (default _masks)")
    s.add_argument("--channel-axis", type=int, default=None,
                   help="channel axis of multichannel images (default: guessed, a small first or last axis)")
    s.add_argument("--min-masks", type=int, default=1, help="skip images with fewer masks (default 1)")
    s.add_argument("--cache-dir", default=None, help="folder for cached flow targets (default: next to masks)")
    s.add_argument("--epochs", type=int, default=None,
                   help="epochs (default 500 from scratch, 100 when fine-tuning)")
    s.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: SGD 0.2; AdamW 5e-3 for a U-Net, 5e-5 for a ViT)")
    s.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay (default: SGD 1e-5; AdamW 1e-4 for a U-Net, 0.1 for a ViT)")
    s.add_argument("--optimizer", choices=["auto", "sgd", "adamw"], default="auto",
                   help="auto (default): SGD from scratch, AdamW when fine-tuning or for a ViT")
    s.add_argument("--batch-size", type=int, default=8, help="crops per step (default 8)")
    s.add_argument("--images-per-epoch", type=int, default=None,
                   help="crops per epoch (default: the number of training images)")
    s.add_argument("--warmup-epochs", type=int, default=10, help="linear learning-rate warm-up (default 10)")
    s.add_argument("--tile", type=int, default=None, help="crop size (default 224; a ViT's input size)")
    s.add_argument("--scale-range", type=float, default=0.5,
                   help="random scale 1 +- range/2 around the mean diameter (default 0.5: 0.75-1.25)")
    s.add_argument("--no-rescale", action="store_true",
                   help="do not scale images so their median cell diameter matches --diam-mean")
    s.add_argument("--sam-augment", action="store_true",
                   help="add Cellpose-SAM augmentations (noise, blur, downsampling, grayscale, inversion, "
                        "channel permutation, brightness/contrast)")
    s.add_argument("--val-every", type=int, default=10, help="validate every N epochs (default 10)")
    s.add_argument("--save-dir", default=None,
                   help="checkpoint folder (model_last.pth, model_best.pth, train_state.pt); "
                        "default: <out without suffix>_train")
    s.add_argument("--save-every", type=int, default=1, help="write checkpoints every N epochs (default 1)")
    s.add_argument("--resume", default=None, help="train_state.pt (or its folder) to continue from")
    s.add_argument("--no-size-model", action="store_true", help="do not fit the style -> diameter model")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): the GPU when one is usable")
    s.add_argument("--no-amp", action="store_true", help="no mixed precision on the GPU")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Execute ``fastpose train``; returns the exit status."""
    import torch

    from ..models import UNet, load_model
    from .data import load_folder
    from .loop import train

    scratch = args.model == "scratch"
    optimizer = args.optimizer
    if scratch:
        torch.manual_seed(args.seed)
        model = UNet(nbase=args.nbase, diam_mean=args.diam_mean)
    else:
        model, _ = load_model(args.model, device="cpu")
        optimizer = "adamw" if optimizer == "auto" else optimizer  # fine-tuning recipe
    nchan = int(model.nchan)
    load_kw = dict(nchan=nchan, img_filter=args.img_filter, mask_filter=args.mask_filter,
                   min_masks=args.min_masks, channel_axis=args.channel_axis, cache_dir=args.cache_dir)
    tr = load_folder(args.dir, **load_kw)
    va = load_folder(args.val_dir, **load_kw) if args.val_dir else None
    out = Path(args.out)
    save_dir = Path(args.save_dir) if args.save_dir else out.with_name(out.stem + "_train")
    epochs = args.epochs or (500 if scratch else 100)
    res = train(model, tr, va, epochs=epochs, lr=args.lr, batch_size=args.batch_size,
                images_per_epoch=args.images_per_epoch, optimizer=optimizer, weight_decay=args.weight_decay,
                warmup_epochs=args.warmup_epochs, tile=args.tile, scale_range=args.scale_range,
                rescale=False if args.no_rescale else None, sam_augment=args.sam_augment, val_every=args.val_every,
                save_dir=save_dir, save_every=args.save_every, resume=args.resume,
                size_model=not args.no_size_model, amp=not args.no_amp, seed=args.seed, device=args.device,
                progress=not args.quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: shutil.copyfile(res.last_path, tmp), to_path=True)
    log.info("wrote %s (final loss %.4f%s); checkpoints in %s", out, res.history[-1]["loss"] if res.history else
             float("nan"), f", best val AP@0.5 {res.best_ap:.3f} at epoch {res.best_epoch}" if res.best_ap is not None
             else "", save_dir)
    return 0
