"""``fastpose train`` (train a U-Net from scratch, fine-tune a model file, or run a bundled model's recipe; with
``--method cellulus`` an unsupervised Cellulus network on images alone, :mod:`fastpose.cellulus.cli`) and
``fastpose evaluate-card`` (recompute the held-out evaluation of a model card for an existing model file).

Hook into the main parser with ``add_parser(subparsers)``, which adds both subcommands; each one's
``func`` default (:func:`run`, :func:`run_card`) returns the exit status.
"""

from __future__ import annotations

import argparse
import logging
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .. import checks
from .card import command_line
from .recipes import PLAIN_DEFAULTS, RECIPES, Recipe

__all__ = ["add_parser", "add_card_parser", "run", "run_card", "command_line"]

log = logging.getLogger("fastpose.train")

_RECIPE_HELP = "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values()).replace("%", "%%")
_REPRODUCE = "\n".join(f"  {r.command()}" for r in RECIPES.values())


def _workers(v: str) -> Any:
    if v.strip() == "auto":
        return "auto"
    try:
        return checks.integer(v, "", lo=0)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{str(e).strip()} (or 'auto')") from None


def _holdout(text: str, name: str) -> int:
    """0 (hold nothing out) or N >= 2 (N = 1 would hold out every image)."""
    n = checks.integer(text, name, lo=0)
    assert n is not None
    if n == 1:
        raise ValueError(f"{name} must be 0 (none) or N >= 2 (about 1/N of the images), got 1, which holds out "
                         "every image")
    return n


def _class_names(text: str, name: str) -> List[str]:
    """Comma-separated class names (ids 1, 2, ... in order), checked as the model file stores them."""
    from ..models.spec import check_class_names

    items = [t.strip() for t in str(text).split(",")]
    try:
        return list(check_class_names(items))[1:]
    except ValueError as e:
        raise ValueError(f"{name} {e}".strip()) from None


def _setting(text: str, name: str) -> Tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value): the value read as JSON (numbers, true/false, lists), else kept as text; the
    model's family checks both when they are applied."""
    import json

    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{name} takes KEY=VALUE (e.g. n_noise=4), got {text!r}")
    try:
        v: Any = json.loads(value)
    except ValueError:
        v = value
    return key.strip(), v


#: argparse types that check the value and name the flag in the message (fastpose.checks)
_INT0 = checks.arg(checks.integer, lo=0)
_INT1 = checks.arg(checks.integer, lo=1)
_DIAMETER = checks.arg(checks.number, lo=0.0, lo_open=True, hi=checks.LIMITS["diameter"])
_STEPS = checks.arg(checks.integer, lo=1, hi=1_000_000_000)
_FMAPS = checks.arg(checks.integer, lo=1, hi=4096)
_EPOCHS = checks.arg(checks.integer, lo=1, hi=checks.LIMITS["epochs"])
_BUDGET = checks.arg(checks.number, lo=0.0, lo_open=True, hi=checks.LIMITS["time_budget"])
_BATCH = checks.arg(checks.integer, lo=1, hi=checks.LIMITS["batch_size"])


def _crop(text: str, name: str) -> int:
    """An even crop side of at least 40 px (Cellulus: the network shrinks it by 16 px and max-pools by 2; the OCE
    pairs need more than 2 kappa = 20 px of output plus a few px of anchors)."""
    n = checks.integer(text, name, lo=40, hi=8192)
    assert n is not None
    if n % 2:
        raise ValueError(f"{name} must be an even integer (the network max-pools by 2 after a 4 px shrink), got "
                         f"{text!r}")
    return n


def _add_data_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("data")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help=f"defaults of a bundled model's recipe (options given here win): {_RECIPE_HELP}")
    g.add_argument("--data", "--dir", dest="dir", default=None,
                   help="training folder with *_img.tif and *_masks.tif files (--method cellulus: its images "
                        "alone, masks are neither needed nor read)")
    g.add_argument("--val-dir", default=None, help="validation folder (default: none, or --holdout-every)")
    g.add_argument("--holdout-every", type=checks.arg(_holdout), default=None, metavar="N",
                   help="hold out of --data the images whose SHA-1 of the id is 0 mod N (about 1/N of them) as "
                        "validation data; the split depends on the ids alone (nuclei recipe: 10)")
    g.add_argument("--exclude", nargs="+", default=None, metavar="ID",
                   help="image ids (file stem less --img-filter) to leave out of training and validation "
                        "(nuclei recipe: the bundled sample image)")
    g.add_argument("--synthetic-cyto", type=_INT0, default=None, metavar="N",
                   help="train on N synthetic two-channel cell images from fastpose.synthetic_cells and hold out "
                        "N/8 more (256x256, seed 0) instead of --data (cyto recipe: 400)")
    g.add_argument("--channel-axis", type=checks.arg(checks.axis), default=None,
                   help="channel axis of 3D (multichannel 2D) files; 2D files are always (Y, X); a 3D file "
                        "without it is an error, never a guess (nuclei recipe: -1; cyto: 0)")
    g.add_argument("--grey", action=argparse.BooleanOptionalAction, default=None,
                   help="average the (first three) channels of colour images into channel 0 (nuclei recipe)")
    g.add_argument("--img-filter", default="_img", help="image file name suffix before .tif (default _img)")
    g.add_argument("--mask-filter", default="_masks", help="mask file name suffix before .tif (default _masks)")
    g.add_argument("--min-masks", type=_INT0, default=1, help="skip images with fewer masks (default 1)")
    g.add_argument("--cache-dir", default=None, help="folder for cached flow targets (default: next to masks)")
    g.add_argument("--limit", type=_INT1, default=None, metavar="N",
                   help="use only the first N training and N held-out images (smoke runs)")


def _flag_table(s: argparse.ArgumentParser) -> List[Tuple[str, str, Any, bool]]:
    """(dest, long option, default, is BooleanOptionalAction) of each option, in parser order."""
    out = []
    for a in s._actions:
        if a.option_strings and a.dest not in ("help", "quiet"):  # (no effect on the result)
            boolopt = isinstance(a, argparse.BooleanOptionalAction)
            # a --x/--no-x pair is named by its positive form (the longest name would be --no-x)
            long = "--data" if a.dest == "dir" else a.option_strings[0] if boolopt else max(a.option_strings,
                                                                                            key=len)
            out.append((a.dest, long, a.default, boolopt))
    return out


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``train`` and ``evaluate-card`` subcommands to ``subparsers``; returns the ``train`` parser."""
    from .evaluate import DEFAULT_MODES, MODES

    s = subparsers.add_parser(
        "train", help="train or fine-tune a segmentation model (or a bundled model's recipe)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Train a Cellpose U-Net from scratch (SGD, Cellpose recipe) or fine-tune any model file (AdamW) on a "
            "folder of *_img.tif images with *_masks.tif label images, for --epochs or a wall-clock --time-budget. "
            "Flow targets are cached next to the masks (or in --cache-dir). Checkpoints go to --save-dir; the final "
            "model (with its size model) is written to --out, and with --card a JSON model card scored on the "
            "held-out images beside it (see evaluate-card).", 100) + "\n\n" + textwrap.fill(
            "--method cellulus trains an unsupervised Cellulus network (object-centric embeddings, OCE loss; "
            "fastpose.cellulus) on the images of --data alone, no masks, for --steps or a --time-budget, and "
            "writes the best-loss weights with their inference settings (--object-size, --post-processing) to "
            "--out, which fastpose segment --model runs. It reads the data, schedule and run options that make "
            "sense for it (--holdout-every / --exclude leave images out; --lr, --weight-decay, --batch-size; "
            "--save-dir, --resume, --card, --seed, --device) and refuses the Cellpose-only ones.", 100) + "\n\n" +
        textwrap.fill(
            "--pseudo-labels MODEL bootstraps a Cellpose U-Net from the masks MODEL (an unsupervised Cellulus model, "
            "or any model) predicts on the training images of --data, whose own masks are not read; --masks-dir adds "
            "a few true annotations (half of each batch, loss (1 - alpha) L_annotated + alpha L_pseudo: Cellulus' "
            "recipe, fastpose.train.pseudo). Every Cellpose training option applies (--recipe nuclei for its "
            "schedule and split).", 100),
        epilog="The recipes' commands (the bundled models come from these, on a GPU; weights differ run to run):\n"
               + _REPRODUCE)
    _add_data_args(s)
    g = s.add_argument_group("model")
    g.add_argument("--method", choices=["cellpose", "cellulus"], default=None,
                   help="cellpose (default): a Cellpose U-Net from images and masks; cellulus: an unsupervised "
                        "Cellulus network from images alone (implied by --recipe cellulus_nuclei)")
    g.add_argument("--model", default="scratch",
                   help="'scratch' (default) for a new U-Net, or a model file / built-in name to fine-tune "
                        "(--method cellulus: a new network, or a Cellulus model file to train further)")
    g.add_argument("--arch", choices=["unet", "scellseg"], default="unet",
                   help="network of --model scratch: unet (default, Cellpose's U-Net) or scellseg (Scellseg's sCSnet: "
                        "attention-gated skips, dense units, hierarchical styles; fastpose.scellseg), trained with the "
                        "same Cellpose recipe")
    g.add_argument("--out", required=True, help="where to write the trained model file (.pth)")
    g.add_argument("--nbase", type=_INT1, nargs="+", default=None, metavar="N",
                   help="U-Net widths for --model scratch, input channels first (default 2 32 64 128 256)")
    g.add_argument("--diam-mean", type=_DIAMETER, default=None,
                   help="cell diameter (pixels) images are scaled to, for --model scratch (default 30; "
                        "nuclei recipe 17)")
    g = s.add_argument_group("schedule")
    g.add_argument("--epochs", type=_EPOCHS, default=None,
                   help="epochs (default 500 from scratch, 100 when fine-tuning; with --time-budget: no limit)")
    g.add_argument("--time-budget", type=_BUDGET, default=None, metavar="SECONDS",
                   help="train for this many wall-clock seconds instead of epochs: linear warm-up over the first "
                        "--warmup-fraction, then the rate halves at --anneal-start and every --anneal-every of "
                        "the budget (nuclei recipe 330, cyto 228)")
    g.add_argument("--warmup-fraction", type=checks.arg(checks.probability), default=0.05,
                   help="warm-up, fraction of the budget (0.05)")
    g.add_argument("--anneal-start", type=checks.arg(checks.probability), default=0.7,
                   help="first halving of the rate, fraction of the budget (0.7)")
    g.add_argument("--anneal-every", type=checks.arg(checks.probability, open_low=True), default=0.06,
                   help="then halve every this fraction of the budget (0.06)")
    g.add_argument("--lr", type=checks.arg(checks.number, lo=0.0, lo_open=True), default=None,
                   help="learning rate (default: SGD 0.2; AdamW 5e-3 for a U-Net, 5e-5 for a ViT; Cellulus: Adam "
                        "4e-5)")
    g.add_argument("--weight-decay", type=checks.arg(checks.number, lo=0.0), default=None,
                   help="weight decay (default: SGD 1e-5; AdamW 1e-4 for a U-Net, 0.1 for a ViT; Cellulus 0.01)")
    g.add_argument("--optimizer", choices=["auto", "sgd", "adamw"], default=None,
                   help="auto (default): SGD from scratch, AdamW when fine-tuning or for a ViT")
    g.add_argument("--batch-size", type=_BATCH, default=None, help="crops per step (default 8; nuclei recipe 16)")
    g.add_argument("--images-per-epoch", type=_INT1, default=None,
                   help="crops per epoch (default: the number of training images)")
    g.add_argument("--warmup-epochs", type=_INT0, default=10, help="linear learning-rate warm-up (default 10)")
    g.add_argument("--tile", type=checks.arg(checks.integer, lo=16, hi=4096), default=None,
                   help="crop size (default 224; a ViT's input size)")
    g.add_argument("--scale-range", type=checks.arg(checks.number, lo=0.0, hi=2.0, hi_open=True), default=0.5,
                   help="random scale 1 +- range/2 around the mean diameter (default 0.5: 0.75-1.25)")
    g.add_argument("--no-rescale", action="store_true",
                   help="do not scale images so their median cell diameter matches --diam-mean")
    g.add_argument("--sam-augment", action="store_true",
                   help="add Cellpose-SAM augmentations (noise, blur, downsampling, grayscale, inversion, "
                        "channel permutation, brightness/contrast)")
    g = s.add_argument_group("cellulus (--method cellulus: unsupervised, images only; the authors' defaults)")
    g.add_argument("--fmaps", type=_FMAPS, default=None, metavar="F",
                   help="feature maps of the network's first level (the second has 3F; default 24, the authors' "
                        "examples; the paper used 64)")
    g.add_argument("--crop", type=checks.arg(_crop), default=None,
                   help="crop side, even, >= 40 (default 252: 236 px of output per crop)")
    g.add_argument("--steps", type=_STEPS, default=None,
                   help="optimiser steps (default 100000, the authors'; with --time-budget an upper bound)")
    g.add_argument("--object-size", type=_DIAMETER, default=None, metavar="PX",
                   help="rough object diameter in these images, pixels: stored in the model file, it sets the "
                        "mean-shift bandwidth (half of it) and the smallest object kept (default 30, the authors'; "
                        "cellulus_nuclei recipe 20)")
    g.add_argument("--post-processing", choices=["cell", "nucleus", "none"], default=None,
                   help="stored in the model file: cell (default: a halo facing the background removed), nucleus "
                        "(Otsu's threshold of the image inside each object, holes filled) or none")
    g = s.add_argument_group("pseudo-labels (a U-Net bootstrapped from another model's masks; Cellulus' recipe)")
    g.add_argument("--pseudo-labels", default=None, metavar="MODEL",
                   help="train on the masks this model (a Cellulus model file, or any model fastpose segment runs) "
                        "predicts on the training images of --data; their own masks are not read")
    g.add_argument("--masks-dir", default=None, metavar="DIR",
                   help="a few true annotations: the *_masks.tif files of DIR (named like the images of --data) "
                        "replace the pseudo-labels of those images, which then make half of each batch")
    g.add_argument("--masks-fraction", type=checks.arg(checks.number, lo=0.0, lo_open=True, hi=1.0), default=None,
                   metavar="F", help="use only this fraction of the --masks-dir annotations (at least one image, "
                                     "drawn with --seed; default 1: all)")
    g.add_argument("--alpha", type=checks.arg(checks.probability), default=None,
                   help="weight of the pseudo-labelled half of each batch when --masks-dir is given (default 0.5, "
                        "the paper's)")
    g.add_argument("--teacher-setting", action="append", type=checks.arg(_setting), default=None,
                   metavar="KEY=VALUE", help="override an inference setting of the --pseudo-labels model for the "
                                             "labelling, e.g. n_noise=4 (a Cellulus model's noise ensemble: 8 "
                                             "predictions instead of 32); repeat for several")
    g.add_argument("--pseudo-cache", default=None, metavar="DIR",
                   help="folder for the pseudo-labels (read back when the same model labelled the same images; "
                        "default <out stem>_train/pseudo_labels)")
    g = s.add_argument_group("panoptic (a class per cell; Cellpose-SAM's recipe)")
    g.add_argument("--classes", action="store_true",
                   help="train a panoptic model: per-pixel class images (class ids, 0 = background) beside the "
                        "masks, X_classes.tif (--class-filter) next to X_img.tif / X_masks.tif; each mask takes "
                        "its majority class. --model scratch adds class maps to a new U-Net; a segmentation model "
                        "file gets them initialised from its cell-probability map (x -0.5 background, x +0.5 "
                        "classes); a panoptic model file trains further. AdamW, no diameter rescaling, cross-entropy "
                        "weighted by inverse class frequencies (default lr: U-Net 5e-3, ViT 5e-5; 100 epochs)")
    g.add_argument("--class-names", type=checks.arg(_class_names), default=None, metavar="A,B,...",
                   help="the class names of ids 1, 2, ... (comma-separated; default: classes.json in --data, a "
                        "JSON list); stored in the model file")
    g.add_argument("--class-filter", default="_classes",
                   help="class image file name suffix before .tif (default _classes)")
    g.add_argument("--synthetic-classes", type=_INT1, default=None, metavar="N",
                   help="train on N synthetic images of three appearance-defined classes (small_bright, "
                        "large_textured, ring; fastpose.synthetic_classes, 128x128, seed 0) and hold out 3N/10 "
                        "more (seed 1) instead of --data; implies --classes")
    g.add_argument("--scores-out", default=None,
                   help="with held-out images: write their per-class scores (JSON) here (default: "
                        "<out without suffix>_panoptic_scores.json)")
    g = s.add_argument_group("speed")
    g.add_argument("--workers", type=_workers, default=None, metavar="N|auto",
                   help="augment batches on N worker processes (or threads, --worker-type) ahead of the step; "
                        "0: inline (default); auto: CPU count - 2 (recipes). The batches are the same either way")
    g.add_argument("--worker-type", choices=["process", "thread"], default="process",
                   help="workers are processes (default; forked where possible) or threads")
    g.add_argument("--channels-last", choices=["auto", "on", "off"], default=None,
                   help="channels-last memory format (auto, the default: on a GPU)")
    g.add_argument("--compile", default=None, metavar="BACKEND",
                   help="torch.compile the training step with this backend (inductor on a GPU; eager or "
                        "aot_eager to check the path); default: eager PyTorch")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on the GPU (default: bf16 autocast)")
    g = s.add_argument_group("outputs")
    g.add_argument("--val-every", type=_INT0, default=None,
                   help="validate on the held-out images every N epochs (default 10; 0: never, as in the recipes)")
    g.add_argument("--save-dir", default=None,
                   help="checkpoint folder (model_last.pth, model_best.pth, train_state.pt); "
                        "default: <out without suffix>_train")
    g.add_argument("--save-every", type=_INT1, default=1, help="write checkpoints every N epochs (default 1)")
    g.add_argument("--resume", default=None, help="train_state.pt (or its folder) to continue from (epoch runs; "
                                                  "--method cellulus: cellulus_state.pt or its folder)")
    g.add_argument("--no-size-model", action="store_true", help="do not fit the style -> diameter model")
    g.add_argument("--size-model-epochs", type=_INT1, default=None,
                   help="random crops per training image for the size model (default 10; recipes 2)")
    g.add_argument("--half", action=argparse.BooleanOptionalAction, default=None,
                   help="store the weights in float16 (recipes: yes)")
    g.add_argument("--card", action=argparse.BooleanOptionalAction, default=None,
                   help="after training, score the held-out images (see evaluate-card) and write the model card "
                        "<out>.json, also stored in the model file (recipes: yes; --method cellulus: the card "
                        "without scores, which fastpose-bench cellulus --card adds)")
    g.add_argument("--card-modes", nargs="+", choices=list(MODES), default=list(DEFAULT_MODES), metavar="MODE",
                   help=f"what the card scores: {', '.join(MODES)} (default: {' '.join(DEFAULT_MODES)})")
    g.add_argument("--seed", type=_INT0, default=0, help="random seed (default 0)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): the GPU when one is usable")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run, _flags=_flag_table(s))
    add_card_parser(subparsers)
    return s


def add_card_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``evaluate-card`` subcommand to ``subparsers`` and return its parser."""
    from .evaluate import DEFAULT_MODES, MODES

    s = subparsers.add_parser(
        "evaluate-card", help="(re)compute the held-out evaluation of a model card",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Score an existing model file on held-out images (AP@0.5/0.75/0.9, pooled error rate, COCO mean AP "
            "and AJI, at the label diameter and with the estimated diameter, with flip TTA, overall and per image "
            "kind) and write its JSON model card: the validation is computed here, the training record is copied "
            "from the model file's metadata. The data options are those of `fastpose train` (--recipe sets them "
            "as for training, so the held-out split is the same). The model file itself is not changed.", 100),
        epilog="The bundled cards:\n"
               "  fastpose evaluate-card nuclei --recipe nuclei --data /path/to/dsb2018/stage1_train --device cpu\n"
               "  fastpose evaluate-card cyto --recipe cyto --device cpu")
    s.add_argument("model", help="model file or built-in name (nuclei, cyto)")
    _add_data_args(s)
    s.add_argument("--out", default=None, help="card to write (default: the model file with .json)")
    s.add_argument("--name", default=None, help="model name in the card (default: the recipe, else the file stem)")
    s.add_argument("--modes", nargs="+", choices=list(MODES), default=list(DEFAULT_MODES), metavar="MODE",
                   help=f"what to score: {', '.join(MODES)} (default: {' '.join(DEFAULT_MODES)})")
    s.add_argument("--training-note", default=None,
                   help="where the weights came from, for a model file that does not record its trainer")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): the GPU when one is usable")
    s.set_defaults(func=run_card, _flags=_flag_table(s))
    return s


def _resolve(args: argparse.Namespace) -> Optional[Recipe]:
    """Fill the recipe-controlled options left unset with the recipe's values, then the plain defaults."""
    recipe = RECIPES[args.recipe] if args.recipe else None
    for k, plain in PLAIN_DEFAULTS.items():
        if hasattr(args, k) and getattr(args, k) is None:
            setattr(args, k, recipe.options.get(k, plain) if recipe else plain)
    return recipe


def _recipe_options(args: argparse.Namespace, recipe: Optional[Recipe]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"name": recipe.name if recipe else None}
    for k in PLAIN_DEFAULTS:
        if hasattr(args, k):
            out[k] = getattr(args, k)
    return out


def _version() -> str:
    import fastpose

    return fastpose.__version__


#: the options only ``--method cellulus`` reads (all unset by default)
CELLULUS_ONLY = ("fmaps", "crop", "steps", "object_size", "post_processing")
#: the options only ``--pseudo-labels`` reads (all unset by default)
PSEUDO_ONLY = ("masks_dir", "masks_fraction", "alpha", "teacher_setting", "pseudo_cache")


def method_of(args: argparse.Namespace) -> str:
    """The training method: ``--method``, else the recipe's, else "cellpose"; ValueError when they disagree."""
    recipe = RECIPES[args.recipe] if getattr(args, "recipe", None) else None
    if recipe is not None and args.method is not None and args.method != recipe.method:
        raise ValueError(f"--recipe {recipe.name} trains with --method {recipe.method}, not --method {args.method}: "
                         "drop --method (the recipe sets it)")
    return args.method or (recipe.method if recipe else "cellpose")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def run(args: argparse.Namespace) -> int:
    """Execute ``fastpose train``; returns the exit status."""
    if method_of(args) == "cellulus":
        from ..cellulus.cli import run_train

        return run_train(args)
    bad = [_flag(k) for k in CELLULUS_ONLY if getattr(args, k, None) is not None]
    if getattr(args, "pseudo_labels", None) is None:
        lone = [_flag(k) for k in PSEUDO_ONLY if getattr(args, k, None) is not None]
        if lone:
            raise ValueError(f"{', '.join(lone)} {'goes' if len(lone) == 1 else 'go'} with --pseudo-labels MODEL "
                             "(a U-Net bootstrapped from that model's masks); add it, or drop "
                             f"{'it' if len(lone) == 1 else 'them'}")
    elif args.classes or args.synthetic_classes or args.synthetic_cyto:
        raise ValueError("--pseudo-labels labels the images of --data: it does not combine with --classes, "
                         "--synthetic-classes or --synthetic-cyto")
    if bad:
        raise ValueError(f"{', '.join(bad)} {'is an option' if len(bad) == 1 else 'are options'} of --method "
                         "cellulus (unsupervised Cellulus training); add --method cellulus, or drop "
                         f"{'it' if len(bad) == 1 else 'them'} to train a Cellpose U-Net")
    return run_cellpose(args)


def run_cellpose(args: argparse.Namespace) -> int:
    """Execute ``fastpose train`` for a Cellpose U-Net (or ``--classes``: a panoptic one); the exit status."""
    import torch

    from ..models import UNet, load_model, save_model
    from .card import build_card, recipe_text, write_card
    from .evaluate import evaluate_heldout
    from .loop import train
    from .recipes import load_sources

    if args.classes or args.synthetic_classes:
        return run_panoptic(args)
    given = dict(vars(args))
    recipe = _resolve(args)
    cmd = command_line("fastpose train", given)
    scratch = args.model == "scratch"
    optimizer = args.optimizer
    if scratch:
        torch.manual_seed(args.seed)
        if args.arch == "scellseg":
            from ..scellseg import SCSNet

            model = SCSNet(nbase=args.nbase, diam_mean=args.diam_mean)
        else:
            model = UNet(nbase=args.nbase, diam_mean=args.diam_mean)
    else:
        if args.arch != "unet":
            raise ValueError(f"--arch {args.arch} builds a new network: it goes with --model scratch (a model file "
                             "keeps its own architecture)")
        model, _ = load_model(args.model, device="cpu")
        optimizer = "adamw" if optimizer == "auto" else optimizer  # fine-tuning recipe
    annotated = None
    if args.pseudo_labels is not None:
        src, annotated = _pseudo_sources(args, int(model.nchan), recipe, out_of=Path(args.out))
    else:
        src = load_sources(args, int(model.nchan), recipe=recipe)
    if args.card and not (src.heldout is not None and len(src.heldout)):
        raise ValueError("--card needs held-out images: --holdout-every N, --val-dir or --synthetic-cyto")
    out = Path(args.out)
    save_dir = Path(args.save_dir) if args.save_dir else out.with_name(out.stem + "_train")
    epochs = args.epochs if args.epochs is not None else (None if args.time_budget else (500 if scratch else 100))
    res = train(model, src.train, src.heldout, epochs=epochs, time_budget=args.time_budget, lr=args.lr,
                batch_size=args.batch_size, images_per_epoch=args.images_per_epoch, optimizer=optimizer,
                weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                warmup_fraction=args.warmup_fraction, anneal_start=args.anneal_start, anneal_every=args.anneal_every,
                tile=args.tile, scale_range=args.scale_range, rescale=False if args.no_rescale else None,
                sam_augment=args.sam_augment, val_every=args.val_every, save_dir=save_dir,
                save_every=args.save_every, resume=args.resume, size_model=not args.no_size_model,
                size_model_epochs=args.size_model_epochs, amp=not args.no_amp,
                channels_last={"on": True, "off": False}.get(args.channels_last, "auto"),
                compile_backend=args.compile, workers=args.workers, worker_type=args.worker_type, seed=args.seed,
                device=args.device, progress=not args.quiet, annotated=annotated,
                alpha=args.alpha if args.alpha is not None else 0.5)
    trainer = f"fastpose train (fastpose {_version()})"
    info = {**res.info, "trainer": trainer, "command": cmd, "recipe": recipe_text(res.info)}
    meta = res.model.fastpose_meta
    options = _recipe_options(args, recipe)
    if args.pseudo_labels is not None:
        options.update(pseudo_labels=args.pseudo_labels, masks_dir=args.masks_dir, masks_fraction=args.masks_fraction,
                       alpha=args.alpha if args.alpha is not None else 0.5,
                       teacher_settings=dict(args.teacher_setting or []))
    extra: Dict[str, Any] = {"training": info, "recipe": options, "data": src.description}
    card = None
    if args.card:
        dev = next(res.model.parameters()).device
        validation = evaluate_heldout(res.model, src.heldout, device=dev, modes=args.card_modes)
        card = build_card(name=recipe.name if recipe else out.stem, meta=meta, data=src.description, reproduce=cmd,
                          recipe=options, training=info, validation=validation,
                          written_by=trainer, kinds=recipe.kinds if recipe else None)
        extra["card"] = card
    save_model(out, res.model, {**{k: meta[k] for k in ("diam_mean", "diam_labels", "normalize", "size_model")},
                                "extra": extra}, half=bool(args.half))
    if card is not None:
        write_card(out.with_suffix(".json"), card)
    log.info("wrote %s (final loss %s%s)%s; checkpoints in %s", out,
             f"{info['final_loss']:.4f}" if info.get("final_loss") is not None else "n/a",
             f", best val AP@0.5 {res.best_ap:.3f} at epoch {res.best_epoch}" if res.best_ap is not None else "",
             f" and {out.with_suffix('.json')}" if card is not None else "", save_dir)
    return 0


def _pseudo_sources(args: argparse.Namespace, nchan: int, recipe: Optional[Recipe], out_of: Path) -> Tuple[Any, Any]:
    """``(Sources, annotated TrainData or None)`` of ``--pseudo-labels`` (:func:`fastpose.train.pseudo.pseudo_sources`);
    the held-out images (their true masks: evaluation only) as without it."""
    from .pseudo import pseudo_sources
    from .recipes import Sources, load_sources

    cache = Path(args.pseudo_cache) if args.pseudo_cache else \
        (Path(args.save_dir) if args.save_dir else out_of.with_name(out_of.stem + "_train")) / "pseudo_labels"
    pseudo, annotated, desc = pseudo_sources(
        args, nchan, teacher=args.pseudo_labels, masks_dir=args.masks_dir,
        masks_fraction=args.masks_fraction if args.masks_fraction is not None else 1.0, cache_dir=cache,
        device=args.device, progress=not args.quiet, recipe_name=recipe.data_name if recipe else "",
        teacher_settings=dict(args.teacher_setting or []))
    heldout = None
    if args.holdout_every or args.val_dir:
        heldout = load_sources(args, nchan, which=("heldout",), recipe=recipe).heldout
    n_ann = len(annotated) if annotated is not None else 0
    return Sources(pseudo, heldout, desc, len(pseudo) + n_ann, len(heldout) if heldout is not None else 0), annotated


#: options of segmentation training that panoptic training does not take, with their unset values
_NOT_PANOPTIC = {"arch": "unet", "recipe": None, "resume": None, "workers": None, "compile": None,
                 "sam_augment": False, "card": None, "synthetic_cyto": None, "val_dir": None, "optimizer": None,
                 "half": None}


def _synthetic_classed(n: int) -> Tuple[List[Any], List[Any]]:
    from ..synthetic_classes import make_classed_dataset

    tr = make_classed_dataset(n, (128, 128), seed=0)
    te = make_classed_dataset(max(1, 3 * n // 10), (128, 128), seed=1)
    return tr, te


def run_panoptic(args: argparse.Namespace) -> int:
    """Execute ``fastpose train --classes`` (panoptic training, :func:`fastpose.train.train_panoptic`);
    returns the exit status.  Held-out images (``--holdout-every`` or ``--synthetic-classes``) are scored per
    class (:func:`fastpose.train.panoptic.evaluate_panoptic`) and the scores stored in the model file and a
    JSON beside it."""
    import json

    import torch

    from ..io import atomic_write
    from ..models import UNet, load_model, save_model
    from .data import folder_class_names, heldout_by_hash, load_class_folder
    from .panoptic import evaluate_panoptic, format_panoptic_table, train_panoptic

    given = dict(vars(args))
    bad = [f"--{k.replace('_', '-')}" for k, unset in _NOT_PANOPTIC.items() if getattr(args, k, unset) != unset]
    if bad:
        raise ValueError(f"panoptic training (--classes) does not take {', '.join(bad)}; it trains for --epochs "
                         "and/or a --time-budget with AdamW (see --help)")
    _resolve(args)
    cmd = command_line("fastpose train", given)
    if args.synthetic_classes:
        if args.dir:
            raise ValueError("--synthetic-classes makes its own data: drop --data/--dir")
        from ..synthetic_classes import CLASS_NAMES

        names = list(args.class_names or CLASS_NAMES)
        if names != list(CLASS_NAMES):
            raise ValueError(f"--synthetic-classes has the classes {','.join(CLASS_NAMES)}, not {','.join(names)}")
        tr, te = _synthetic_classed(int(args.synthetic_classes))
        desc = (f"synthetic classed cells, fastpose.synthetic_classes ({len(tr)} train / {len(te)} held-out, "
                "128x128, seeds 0 / 1)")
        channel_axis: Any = 0
    else:
        if not args.dir:
            raise ValueError("no training data: pass --data FOLDER (with *_classes.tif class images) or "
                             "--synthetic-classes N")
        names = folder_class_names(args.dir, args.class_names)
        every = int(args.holdout_every or 0)
        exclude = set(args.exclude or [])
        kw: Dict[str, Any] = {"img_filter": args.img_filter, "mask_filter": args.mask_filter,
                              "class_filter": args.class_filter, "limit": args.limit}
        tr = [t[:3] for t in load_class_folder(args.dir, select=lambda i: i not in exclude and not (
            every and heldout_by_hash(i, every)), **kw)]
        te = [t[:3] for t in load_class_folder(args.dir, select=lambda i: i not in exclude and heldout_by_hash(
            i, every), **kw)] if every else []
        desc = f"{Path(args.dir).name} ({len(tr)} train / {len(te)} held-out images" + (
            f"; held out: the ids whose SHA-1 is 0 mod {every})" if every else ")")
        channel_axis = args.channel_axis
    if args.model == "scratch":
        torch.manual_seed(args.seed)
        model = UNet(nbase=args.nbase, diam_mean=args.diam_mean)
    else:
        model, _ = load_model(args.model, device="cpu")
    if names is None and not getattr(model, "class_names", None):
        raise ValueError("no class names: pass --class-names a,b,... or put a classes.json (a JSON list) in --data")
    out = Path(args.out)
    res = train_panoptic(model, [a for a, _, _ in tr], [b for _, b, _ in tr], [c for *_, c in tr], names,
                         epochs=args.epochs if args.epochs is not None else (None if args.time_budget else 100),
                         time_budget=args.time_budget, batch_size=args.batch_size,
                         images_per_epoch=args.images_per_epoch, lr=args.lr, weight_decay=args.weight_decay,
                         warmup_epochs=args.warmup_epochs, tile=args.tile, scale_range=args.scale_range,
                         channel_axis=channel_axis, seed=args.seed, device=args.device)
    meta = res.model.fastpose_meta
    extra: Dict[str, Any] = dict(meta.get("extra") or {})
    extra.update({"data": desc, "command": cmd, "trainer": f"fastpose train --classes (fastpose {_version()})"})
    scores = None
    if te:
        dev = next(res.model.parameters()).device
        scores = evaluate_panoptic(res.model, [a for a, _, _ in te], [b for _, b, _ in te], [c for *_, c in te],
                                   channel_axis=channel_axis, device=dev.type)
        extra["panoptic_validation"] = scores
        log.info("held-out scores (%s):\n%s", desc, format_panoptic_table(scores))
    save_model(out, res.model, {"diam_mean": meta["diam_mean"], "diam_labels": meta["diam_labels"], "extra": extra})
    if scores is not None:
        sp = Path(args.scores_out) if args.scores_out else out.with_name(out.stem + "_panoptic_scores.json")
        doc = {"model": str(out), "data": desc, "command": cmd, "training": extra.get("training"), **scores}
        atomic_write(sp, lambda f: f.write(json.dumps(doc, indent=1)), text=True)
        log.info("wrote %s and %s", out, sp)
    else:
        log.info("wrote %s (classes %s; no held-out images to score)", out, list(res.class_names[1:]))
    return 0


def run_card(args: argparse.Namespace) -> int:
    """Execute ``fastpose evaluate-card``; returns the exit status."""
    from ..models import load_model
    from .card import build_card, training_record, write_card
    from .evaluate import evaluate_heldout
    from .loop import resolve_device
    from .recipes import load_sources

    given = dict(vars(args))
    if args.recipe and RECIPES[args.recipe].method != "cellpose":
        raise ValueError(f"--recipe {args.recipe} trains a {RECIPES[args.recipe].method} model, which evaluate-card "
                         "does not score (it scores Cellpose models by AP); score it with fastpose-bench "
                         f"{RECIPES[args.recipe].method} --data DIR --model MODEL --card CARD.json")
    recipe = _resolve(args)
    cmd = command_line("fastpose evaluate-card", given, (args.model,))
    dev = resolve_device(args.device)
    net, meta = load_model(args.model, device="cpu")
    src = load_sources(args, int(net.nchan), which=("heldout",), recipe=recipe)
    if src.heldout is None or not len(src.heldout):
        raise ValueError("no held-out images: pass --recipe, --holdout-every N with --data, --val-dir or "
                         "--synthetic-cyto")
    validation = evaluate_heldout(net, src.heldout, device=dev, modes=args.modes)
    validation["evaluated"]["command"] = cmd
    training = training_record(meta)
    if not training.get("trainer"):
        training["trainer"] = args.training_note or "not recorded in the model file"
    elif args.training_note:
        training["note"] = args.training_note
    # a file from `fastpose train` records its command and options; for older files: the recipe's
    stored = dict(meta.get("extra") or {})
    reproduce = training.get("command") or (recipe.command() if recipe else "not recorded")
    if isinstance(stored.get("recipe"), dict):
        options = stored["recipe"]
    elif recipe is not None:  # the options `reproduce` runs with
        options = {"name": recipe.name, **PLAIN_DEFAULTS, **recipe.options}
    else:
        options = _recipe_options(args, recipe)
    path = Path(meta.get("path") or args.model)
    name = args.name or (recipe.name if recipe else path.stem)
    card = build_card(name=name, meta=meta, data=src.description, reproduce=reproduce, recipe=options,
                      training=training, validation=validation, written_by=f"fastpose evaluate-card "
                      f"(fastpose {_version()}); the model file is unchanged",
                      kinds=recipe.kinds if recipe else None)
    out = Path(args.out) if args.out else path.with_suffix(".json")
    write_card(out, card)
    log.info("wrote %s", out)
    return 0
