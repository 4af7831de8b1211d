"""A Cellpose-compatible command line: ``fastpose cellpose ARGS...`` or ``python -m fastpose.cellpose_cli ARGS...``.

Tools that shell out to the Cellpose command line (QuPath's BIOP Cellpose extension, CellProfiler's RunCellpose in
Docker mode, TrackMate-Cellpose, the Fiji wrappers) can be pointed at fastpose unchanged: the same flags (Cellpose
4.x ``cellpose/cli.py``, spelled with underscores; Cellpose 3's ``--chan``/``--chan2`` too) and the same output
files (Cellpose's ``io.save_masks``, ``io.masks_flows_to_seg``, ``io.save_rois``)::

    fastpose cellpose --dir TILES --pretrained_model nuclei --diameter 30 --save_tif --no_npy --verbose
    # -> TILES/<name>_cp_masks.tif for each image

Files written per image ``<base>`` (``<base>.tif`` -> ``<base>``), next to the image unless ``--savedir``:

* ``<base>_seg.npy``            unless ``--no_npy``: Cellpose's pickled dict (``masks``, ``outlines``, ``flows``
                                  in Cellpose's layout (:func:`cellpose_flows`), ``filename``, ``diameter``,
                                  ``ismanual``, ``chan_choose``); read it with ``np.load(f, allow_pickle=True).item()``
* ``<base>_cp_masks.tif``       ``--save_tif`` (zlib TIFF, uint16; uint32 beyond 65535 masks)
* ``<base>_cp_masks.png``       ``--save_png`` (16-bit greyscale PNG; 2D only, a TIFF instead for volumes)
* ``<base>_cp_outlines.txt``    ``--save_txt`` (ImageJ outlines text)
* ``<base>_rois.zip``           ``--save_rois`` (ImageJ ROI set)
* ``<base>_outlines_cp_masks.png``  ``--save_outlines`` (the image with red outlines)
* ``<base>_flows_cp_masks.tif``, ``_dP_cp_masks.tif``, ``_cellprob_cp_masks.tif``  ``--save_flows``

(``_cp_masks`` is the suffix ``--output_name`` changes, as in Cellpose.)  Every file is written atomically.  Images
whose names end with ``_masks``, ``_cp_masks``, ``_flows``, ``_cellprob``, ``_cp_output`` (or ``--mask_filter``)
are skipped, as Cellpose skips them.  Unlike Cellpose, ``--savedir`` also holds ``_seg.npy`` and ``_rois.zip``.

Flags mapped onto fastpose (:func:`fastpose.segment` parameters):

======================================  ===========================================================================
Cellpose flag                           fastpose
======================================  ===========================================================================
``--pretrained_model M``                model: a file (fastpose model, Cellpose U-Net or Cellpose-SAM checkpoint);
                                        ``nuclei`` -> bundled ``nuclei``; ``cyto``/``cyto2``/``cyto3`` -> bundled
                                        ``cyto`` (or Cellpose's own file in ~/.cellpose/models when there);
                                        ``cpsam`` (the default) and other Cellpose names -> the file of that name in
                                        Cellpose's model folder, else an error (fastpose downloads nothing)
``--use_gpu`` / ``--gpu_device N``      device ``cuda`` (GPU N) when usable, else the CPU with a warning; without
                                        ``--use_gpu`` the CPU, as in Cellpose
``--batch_size``                        batch_size
``--diameter D``                        diameter (0: no resizing; not given: estimated with the model's size model,
                                        no resizing for models without one)
``--flow_threshold``, ``--cellprob_threshold``   the same
``--min_size N``                        min_size (-1: 0, off)
``--niter N``                           niter (0: the default)
``--do_3D``, ``--stitch_threshold``     do_3D, stitch_threshold (z_axis 0 unless ``--z_axis``)
``--anisotropy``                        anisotropy (with ``--do_3D``)
``--z_axis``, ``--channel_axis``        the same (a 2D image with a short first or last axis: that is the channels)
``--chan C --chan2 C2`` (Cellpose 3)    channels ``[C-1, C2-1]`` (0 = greyscale / none: the first channels)
``--invert`` (Cellpose 3)               invert
``--restore_type R`` (Cellpose 3)       restore=R (a Cellpose 3 restoration model file in ~/.cellpose/models)
``--no_norm``                           normalize=False
``--norm_percentile LO HI``             the model's normalisation percentiles
``--augment``, ``--tile_overlap``       the same
``--exclude_on_edges``                  masks touching the image border removed, the rest renumbered 1..N
======================================  ===========================================================================

Accepted and ignored (logged at INFO, shown with ``--verbose``): ``--bsize`` (fastpose's tile comes from the model
file), ``--flow3D_smooth``, ``--no_resample``, ``--no_interp``, ``--save_mpl``, ``--Zstack``, ``--transformer``,
``--all_channels``, ``--pretrained_model_ortho``, ``--chan2_restore``, ``--diam_mean``, ``--train_size``, Cellpose 2's
``--net_avg``/``--fast_mode``/``--resample``, and the training settings (``--test_dir``, ``--learning_rate``, ...)
when ``--train`` is not given.  ``--train`` is refused (exit 2): train with ``fastpose train``.

Exit status: 0 every image segmented and written; 1 some images failed (each reported; the others are written);
2 usage or setup error (an unknown flag, a bad value, a model that cannot be loaded, no images): one sentence on
stderr; 70 a bug in fastpose; 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import checks

__all__ = ["build_parser", "main", "add_parser", "find_images", "resolve_model", "cellpose_flows",
           "remove_edge_masks", "IMAGE_EXTENSIONS", "SKIPPED_ENDINGS"]

log = logging.getLogger("fastpose")

PROG = "fastpose cellpose"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUG, EXIT_SIGINT = 0, 1, 2, 70, 130

#: image file extensions Cellpose looks for in --dir (``io.get_image_files``), upper case too
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".flex", ".dax", ".nd2", ".nrrd")
#: name endings (before the extension) of files Cellpose never treats as images: its own outputs
SKIPPED_ENDINGS = ("_cp_output", "_flows", "_flows_0", "_flows_1", "_flows_2", "_cellprob", "_masks")
#: Cellpose-SAM / Cellpose 4 model names: only usable as files Cellpose downloaded earlier
CELLPOSE4_NAMES = ("cpsam", "cpsam_v2", "cpdino", "cpdino-vitb")
#: Cellpose names of generalist cytoplasm models, mapped onto fastpose's bundled ``cyto``
CYTO_NAMES = ("cyto", "cyto2", "cyto3")
#: Cellpose parameter names in fastpose's messages, and the Cellpose flags they stand for
_MESSAGE_FLAGS = ("channel_axis", "z_axis", "do_3D", "stitch_threshold", "flow_threshold", "cellprob_threshold",
                  "min_size", "batch_size", "anisotropy", "niter", "diameter", "channels", "tile_overlap")
_MESSAGE_RE = re.compile(r"(?<![\w-])(" + "|".join(_MESSAGE_FLAGS) + r")=")


class UsageError(ValueError):
    """A command line that cannot run (exit status 2, one sentence on stderr)."""


# ------------------------------------------------------------------------------------------------
# the parser
# ------------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """Cellpose's flags; an error is one sentence on stderr and exit status 2, an unknown flag named as such."""

    def error(self, message: str) -> None:  # type: ignore[override]
        m = re.match(r"unrecognized arguments: (.*)", message)
        if m:
            extra = m.group(1).split()
            flags = list(dict.fromkeys(a.split("=", 1)[0] for a in extra if a.startswith("-")))
            if flags:
                message = (f"unknown flag{'s' if len(flags) > 1 else ''} {', '.join(flags)} (not a Cellpose 4 flag "
                           f"fastpose supports; see {PROG} --help)")
            else:
                message = (f"unexpected argument {extra[0]!r} (the Cellpose command line takes flags only: give "
                           "images with --dir FOLDER or --image_path FILE)")
        sys.stderr.write(f"{PROG}: {message}\n")
        self.exit(EXIT_USAGE)


_num = checks.arg
_IGNORED = "accepted and ignored by fastpose"


def build_parser() -> argparse.ArgumentParser:
    """The parser of Cellpose 4's command line (flag names, defaults and help as in ``cellpose/cli.py``), each
    flag's help saying what fastpose does with it; numeric values are checked at parse time (exit 2 naming the
    flag)."""
    p = _Parser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Segment images as the Cellpose command line does (same flags, same output files), "
                            "with fastpose. Integrations that run `python -m cellpose ...` or `cellpose ...` "
                            "(QuPath, CellProfiler, TrackMate, Fiji) can run `fastpose cellpose ...` unchanged.",
                epilog=_EPILOG)
    p.add_argument("--version", action="store_true", help="print fastpose's version and exit")
    p.add_argument("--verbose", action="store_true",
                   help="log progress and settings to stderr (without it: warnings and errors only)")
    p.add_argument("--Zstack", action="store_true", help=f"Cellpose: run the GUI in 3D mode; {_IGNORED} (no GUI)")

    g = p.add_argument_group("Hardware Arguments")
    g.add_argument("--use_gpu", action="store_true",
                   help="run on the GPU when PyTorch sees one; otherwise the CPU, with a warning (never an error)")
    g.add_argument("--gpu_device", default="0", type=str,
                   help="which GPU with --use_gpu, an integer (default 0); other values (mps) are logged and ignored")

    g = p.add_argument_group("Input Image Arguments")
    g.add_argument("--dir", default=[], type=str,
                   help="folder of images to segment (.tif, .tiff, .png, .jpg, .jpeg, .flex; names ending with "
                        "_masks, _cp_masks, _flows, _cellprob, _cp_output or --mask_filter are skipped)")
    g.add_argument("--image_path", default=[], type=str,
                   help="one image to segment, when --dir is not given")
    g.add_argument("--look_one_level_down", action="store_true",
                   help="also segment the images in the subfolders of --dir")
    g.add_argument("--img_filter", default=[], type=str,
                   help="only images whose name (before the extension) ends with this")
    g.add_argument("--channel_axis", default=None, type=_num(checks.axis),
                   help="axis of the channels, -4 to 3 (default: a 2D image's first or last axis when it is "
                        "at most 4 long, else none)")
    g.add_argument("--z_axis", default=None, type=_num(checks.axis),
                   help="axis of Z, -4 to 3 (default 0 with --do_3D or --stitch_threshold)")
    g.add_argument("--chan", default=0, type=_num(checks.integer, lo=0, hi=64),
                   help="Cellpose 3: channel to segment (0 = greyscale: the first channel(s), 1 = red/first, "
                        "2 = green/second, ...); fastpose channels [chan-1, ...]")
    g.add_argument("--chan2", default=0, type=_num(checks.integer, lo=0, hi=64),
                   help="Cellpose 3: optional nuclear channel (0 = none, 1 = red/first, ...); the model's second "
                        "input channel")
    g.add_argument("--invert", action="store_true",
                   help="Cellpose 3: invert intensities after normalisation (fastpose does, Cellpose 4 ignores it)")
    g.add_argument("--all_channels", action="store_true", help=f"Cellpose 3; {_IGNORED}")

    g = p.add_argument_group("Model Arguments")
    g.add_argument("--pretrained_model", default="cpsam", type=str,
                   help="model: a file (fastpose model, Cellpose U-Net checkpoint or Cellpose-SAM checkpoint) or a "
                        "name: nuclei, cyto (bundled with fastpose; cyto2 and cyto3 also mean cyto unless Cellpose's "
                        "own file is in its model folder, ~/.cellpose/models) or a Cellpose name (cpsam, the "
                        "default, ...) whose file Cellpose downloaded to that folder (fastpose downloads nothing: "
                        "without the file, an error)")
    g.add_argument("--add_model", default=None, type=str,
                   help="copy this model file into Cellpose's model folder (~/.cellpose/models) and exit; it can "
                        "then be named by its file name")
    g.add_argument("--pretrained_model_ortho", default=None, type=str, help=f"Cellpose 3; {_IGNORED}")
    g.add_argument("--restore_type", default=None, type=str,
                   help="Cellpose 3: restoration model run before segmenting (denoise_cyto3, ...: its file in "
                        "~/.cellpose/models, or a path)")
    g.add_argument("--chan2_restore", action="store_true", help=f"Cellpose 3; {_IGNORED}")
    g.add_argument("--transformer", action="store_true", help=f"Cellpose 3; {_IGNORED}")

    g = p.add_argument_group("Algorithm Arguments")
    g.add_argument("--no_norm", action="store_true", help="do not normalise the images")
    g.add_argument("--norm_percentile", nargs=2, type=_num(checks.number, lo=0.0, hi=100.0), default=None,
                   metavar=("VALUE1", "VALUE2"),
                   help="normalisation percentiles, 0 <= VALUE1 < VALUE2 <= 100 (default: the model's, 1 99)")
    g.add_argument("--do_3D", action="store_true", help="3D segmentation of Z stacks (z axis 0 unless --z_axis)")
    g.add_argument("--diameter", default=None, type=_num(checks.number, lo=0.0, hi=checks.LIMITS["diameter"]),
                   help=f"cell diameter in pixels, 0 to {checks.LIMITS['diameter']:g}: images are resized so cells "
                        "match the model's; 0 = no resizing; not given: estimated with the model's size model (no "
                        "resizing for models without one)")
    g.add_argument("--stitch_threshold", default=0.0, type=_num(checks.probability),
                   help="in [0, 1]; > 0: segment Z planes in 2D and link masks across planes by IoU (default 0)")
    g.add_argument("--min_size", default=15, type=_num(checks.integer, lo=-1, hi=checks.LIMITS["image_pixels"]),
                   help="smallest mask kept, pixels (default 15; -1 = keep all)")
    g.add_argument("--flow3D_smooth", default=[0.0], nargs="+", type=_num(checks.number, lo=0.0, hi=1000.0),
                   help=f"Cellpose: smoothing of 3D flows; {_IGNORED}")
    g.add_argument("--flow_threshold", default=0.4, type=_num(checks.number, lo=0.0),
                   help="flow-error QC threshold, >= 0 (default 0.4; 0 = off)")
    g.add_argument("--cellprob_threshold", default=0.0, type=_num(checks.number),
                   help="cell-probability threshold, any finite number (default 0; lower: more and larger masks)")
    g.add_argument("--niter", default=0, type=_num(checks.integer, lo=0, hi=checks.LIMITS["niter"]),
                   help=f"iterations of mask recovery, 0 to {checks.LIMITS['niter']} (default 0: 200 at the model's "
                        "scale)")
    g.add_argument("--anisotropy", default=1.0,
                   type=_num(checks.number, lo=0.0, lo_open=True, hi=checks.LIMITS["anisotropy"]),
                   help="Z step relative to the XY pixel size, with --do_3D (default 1)")
    g.add_argument("--exclude_on_edges", action="store_true",
                   help="remove masks touching the image border; the rest are renumbered 1..N")
    g.add_argument("--augment", action="store_true", help="flip test-time augmentation (50%% tile overlap)")
    g.add_argument("--tile_overlap", default=0.1, type=_num(checks.number, lo=0.0, hi=0.5),
                   help="tile overlap fraction, 0 to 0.5 (default 0.1)")
    g.add_argument("--batch_size", default=8, type=_num(checks.integer, lo=1, hi=checks.LIMITS["batch_size"]),
                   help=f"tiles per network batch, 1 to {checks.LIMITS['batch_size']} (default 8)")
    g.add_argument("--bsize", default=256, type=_num(checks.integer, lo=16, hi=4096),
                   help=f"Cellpose's tile size; {_IGNORED} (the tile comes from the model file)")
    g.add_argument("--no_resample", action="store_true", help=f"Cellpose 3; {_IGNORED}")
    g.add_argument("--no_interp", action="store_true", help=f"Cellpose 3; {_IGNORED}")
    for flag in ("--net_avg", "--fast_mode", "--resample"):
        g.add_argument(flag, action="store_true", help=f"Cellpose 2; {_IGNORED}")

    g = p.add_argument_group("Output Arguments")
    g.add_argument("--save_png", action="store_true", help="write <base>_cp_masks.png (16-bit; a TIFF for volumes)")
    g.add_argument("--save_tif", action="store_true", help="write <base>_cp_masks.tif")
    g.add_argument("--output_name", default=None, type=str,
                   help="suffix of the mask files instead of _cp_masks (may be empty when --savedir is not --dir)")
    g.add_argument("--no_npy", action="store_true", help="do not write <base>_seg.npy")
    g.add_argument("--savedir", default=None, type=str,
                   help="existing folder for all outputs (default: each image's folder)")
    g.add_argument("--dir_above", action="store_true",
                   help="write outputs in the folder above each image's folder")
    g.add_argument("--in_folders", action="store_true",
                   help="mask, outline, text and flow files in masks/, outlines/, txt_outlines/, flows/ subfolders")
    g.add_argument("--save_flows", action="store_true",
                   help="write <base>_flows<suffix>.tif (RGB flows), _dP<suffix>.tif and _cellprob<suffix>.tif (2D)")
    g.add_argument("--save_outlines", action="store_true",
                   help="write <base>_outlines<suffix>.png, the image with red outlines (2D)")
    g.add_argument("--save_rois", action="store_true", help="write <base>_rois.zip, an ImageJ ROI set (2D)")
    g.add_argument("--save_txt", action="store_true", help="write <base>_cp_outlines.txt, ImageJ outlines (2D)")
    g.add_argument("--save_mpl", action="store_true", help=f"Cellpose: a matplotlib figure; {_IGNORED}")

    g = p.add_argument_group("Training Arguments",
                             "Training is refused: use `fastpose train` (see fastpose train --help). Without --train "
                             f"the training settings are {_IGNORED}, except --mask_filter, which also names files "
                             "that --dir skips.")
    g.add_argument("--train", action="store_true", help="refused (exit 2): train with fastpose train")
    g.add_argument("--test_dir", default=[], type=str, help=f"training only; {_IGNORED}")
    g.add_argument("--file_list", default=[], type=str, help=f"training only; {_IGNORED}")
    g.add_argument("--mask_filter", default="_masks", type=str,
                   help="name ending of mask files (default _masks): images with it are skipped")
    for flag, default in (("--learning_rate", "1e-5"), ("--weight_decay", "0.1"), ("--n_epochs", "100"),
                          ("--train_batch_size", "1"), ("--nimg_per_epoch", None), ("--nimg_test_per_epoch", None),
                          ("--min_train_masks", "5"), ("--SGD", "0"), ("--save_every", "100"),
                          ("--model_name_out", None), ("--diam_mean", "30")):
        g.add_argument(flag, default=default, type=str, help=f"training only; {_IGNORED}")
    g.add_argument("--save_each", action="store_true", help=f"training only; {_IGNORED}")
    g.add_argument("--train_size", action="store_true", help=f"Cellpose 3; {_IGNORED}")
    return p


_EPILOG = """\
Outputs go next to each image (or to --savedir): <base>_seg.npy unless --no_npy, <base>_cp_masks.tif with
--save_tif, <base>_cp_masks.png with --save_png, <base>_cp_outlines.txt with --save_txt, <base>_rois.zip with
--save_rois, <base>_outlines_cp_masks.png with --save_outlines, <base>_flows_cp_masks.tif (and _dP, _cellprob)
with --save_flows; every file is written atomically.  Images with no masks get no PNG, outlines, text, ROI or
flow files (as in Cellpose); the TIFF and _seg.npy are always written.

Exit status: 0 all images written; 1 some images failed (each reported, the others written); 2 usage or setup
error (unknown flag, bad value, no images, a model that cannot be loaded, --train): one sentence on stderr;
70 a bug in fastpose; 130 Ctrl-C."""


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``cellpose`` subcommand to ``fastpose``'s parser: every argument after ``cellpose`` is passed
    unchanged to :func:`main` (its ``func`` default), so ``fastpose cellpose --dir D --save_tif`` and
    ``fastpose cellpose --help`` behave as ``python -m fastpose.cellpose_cli ...``."""
    # no prefix character the arguments can start with: argparse then takes every argument, flags included,
    # as the REMAINDER positional instead of parsing (and refusing) Cellpose's flags itself
    s = subparsers.add_parser("cellpose", add_help=False, prefix_chars="\x00",
                              help="Cellpose-compatible command line (same flags and output files; see "
                                   "fastpose cellpose --help)",
                              description="Cellpose-compatible command line: fastpose cellpose --help for its flags.")
    s.add_argument("cellpose_argv", nargs=argparse.REMAINDER, metavar="CELLPOSE_ARGS",
                   help="Cellpose command-line flags")
    s.set_defaults(func=_run_subcommand)
    return s


def _run_subcommand(args: argparse.Namespace) -> int:
    return main(list(args.cellpose_argv), debug=bool(getattr(args, "verbose", False)))


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------

def _natural_key(p: Path) -> List[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(p))]


def find_images(folder: Path, img_filter: str = "", mask_filter: str = "_masks",
                look_one_level_down: bool = False) -> List[Path]:
    """The images Cellpose's ``io.get_image_files`` would segment in ``folder``: files with an image extension
    (:data:`IMAGE_EXTENSIONS`, any case) whose name before the extension ends with ``img_filter`` and not with one
    of :data:`SKIPPED_ENDINGS` or ``mask_filter``; with ``look_one_level_down`` those of the subfolders too.
    Naturally sorted; hidden files are skipped.  UsageError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--dir {folder} is not a folder" if folder.exists() else f"--dir {folder} does not exist")
    folders = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                     key=_natural_key) if look_one_level_down else []
    folders.append(folder)
    endings = [e for e in (*SKIPPED_ENDINGS, mask_filter) if e]
    found: List[Path] = []
    n_files = 0
    for d in folders:
        for q in d.iterdir():
            if q.name.startswith(".") or not q.is_file():
                continue
            n_files += 1
            stem, ext = q.stem, q.suffix
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            if img_filter and not stem.endswith(img_filter):
                continue
            if any(len(stem) > len(e) and stem.endswith(e) for e in endings):
                continue
            found.append(q)
    if not found:
        what = f" whose names end with {img_filter!r}" if img_filter else ""
        raise UsageError(f"no images{what} in --dir {folder}" + (" (nor its subfolders)" if look_one_level_down else "")
                         + f" ({n_files} file(s) there; images are {', '.join(IMAGE_EXTENSIONS[:5])}, ..., and "
                           "files ending with _masks, _cp_masks, _flows or _cellprob are skipped)")
    return sorted(set(found), key=_natural_key)


def read_any(path: Path) -> np.ndarray:
    """An image file as an array: TIFF (and .flex) with :func:`fastpose.io.read_image`, PNG and JPEG with Pillow
    when installed.  ValueError/OSError ``cannot read <path>: <why>`` otherwise."""
    from .io import read_image

    ext = path.suffix.lower()
    if ext in (".png", ".jpg", ".jpeg"):
        try:
            from PIL import Image
        except ImportError:
            raise ValueError(f"cannot read {path}: PNG and JPEG images need Pillow (pip install pillow), or "
                             "convert them to TIFF") from None
        if not path.is_file():
            raise FileNotFoundError(f"cannot read {path}: no such file")
        try:
            with Image.open(path) as im:
                a = np.asarray(im)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad file for the user
            raise ValueError(f"cannot read {path}: {e}") from None
        if a.dtype.kind not in "biuf" or a.size == 0:
            raise ValueError(f"cannot read {path}: no numeric image data (dtype {a.dtype}, shape {a.shape})")
        return a
    if ext in (".dax", ".nd2", ".nrrd"):
        raise ValueError(f"cannot read {path}: fastpose reads TIFF, PNG and JPEG images; convert {ext} files to TIFF")
    return read_image(path)


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------

def resolve_model(name: Optional[str]) -> Tuple[str, str]:
    """What ``--pretrained_model name`` loads: ``(model for fastpose, note)`` (the note: how a Cellpose name was
    mapped, or ""); see the module docstring.  UsageError for a Cellpose model fastpose has no file of."""
    from .models.files import BUILTIN_MODELS, CELLPOSE_NAMES, cellpose_model_dir

    name = (name or "").strip()
    if name in ("", "None", "False", "0"):  # Cellpose: no model means its default
        name = "cpsam"
    if Path(name).is_file():
        return name, ""
    local = cellpose_model_dir() / name
    if name in ("nuclei", "cyto"):
        return name, "" if name in BUILTIN_MODELS else f"{name} is not bundled with this fastpose"
    if name in CYTO_NAMES:
        if local.is_file():
            return str(local), f"{name}: Cellpose's model file {local}"
        return "cyto", f"{name} is Cellpose's cytoplasm model: using fastpose's bundled cyto model instead"
    if name in BUILTIN_MODELS or (name in CELLPOSE_NAMES and name not in CELLPOSE4_NAMES):
        return name, ""
    if "/" not in name and "\\" not in name and local.is_file():
        return str(local), f"{name}: Cellpose's model file {local}"
    if name in CELLPOSE4_NAMES:
        default = " (Cellpose's default)" if name == "cpsam" else ""
        raise UsageError(f"--pretrained_model {name}{default} is "
                         f"Cellpose-SAM, whose weights fastpose does not ship and cannot download offline (no file "
                         f"{local}); pass --pretrained_model nuclei, cyto or a model file (a fastpose model, a "
                         f"Cellpose checkpoint, or a downloaded {name} file)")
    if "/" in name or "\\" in name or Path(name).suffix:
        raise UsageError(f"--pretrained_model {name}: no such model file")
    raise UsageError(f"--pretrained_model {name} is neither a model file, a fastpose model (nuclei, cyto) nor a "
                     f"Cellpose model whose file is in {local.parent}; pass --pretrained_model nuclei, cyto or a "
                     "model file")


def _device(args: argparse.Namespace) -> str:
    if not args.use_gpu:
        if args.gpu_device not in ("0", ""):
            log.info("--gpu_device %s without --use_gpu: running on the CPU, as Cellpose does", args.gpu_device)
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        log.warning("--use_gpu: no CUDA GPU is usable here; running on the CPU")
        return "cpu"
    dev = args.gpu_device.strip()
    if dev.isdigit() and int(dev) < torch.cuda.device_count():
        torch.cuda.set_device(int(dev))
    else:
        log.info("--gpu_device %s is not a CUDA GPU index here (%d GPU(s)); using the current GPU", dev,
                 torch.cuda.device_count())
    return "cuda"


# ------------------------------------------------------------------------------------------------
# outputs in Cellpose's formats
# ------------------------------------------------------------------------------------------------

def remove_edge_masks(masks: np.ndarray) -> np.ndarray:
    """``masks`` without the masks touching the image border (any axis), the rest renumbered 1..N in their
    order (Cellpose's ``utils.remove_edge_masks``); uint16, or uint32 beyond 65535 masks."""
    from .labels import as_labels, relabel_sequential

    m = np.array(masks, copy=True)
    border = np.zeros(m.shape, bool)
    for ax in range(m.ndim):
        idx = [slice(None)] * m.ndim
        for end in (0, -1):
            idx[ax] = end
            border[tuple(idx)] = True
    edge = np.unique(m[border])
    edge = edge[edge > 0]
    if edge.size:
        m[np.isin(m, edge)] = 0
    out, _ = relabel_sequential(m)
    return as_labels(out)


def _normalize99(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [1, 99]) if x.size else (0.0, 1.0)
    return (x - lo) / max(float(hi - lo), 1e-20)


def flow_rgb(dP: np.ndarray) -> np.ndarray:
    """Cellpose's colour wheel of flows (``plot.dx_to_circ``): ``dP`` [2, ...] (dy, dx) -> uint8 [..., 3]."""
    dP = np.asarray(dP, np.float32)
    mag = 255 * np.clip(_normalize99(np.sqrt(np.sum(dP ** 2, axis=0))), 0, 1.0) / 2
    ang = np.arctan2(dP[1], dP[0]) + np.pi
    rgb = np.zeros((*dP.shape[1:], 3), np.uint8)
    for c, shift in enumerate((0.0, 2 * np.pi / 3, 4 * np.pi / 3)):
        rgb[..., c] = np.clip(mag * (np.cos(ang + shift) + 1), 0, 255).astype(np.uint8)
    return rgb


def cellpose_flows(flows: Optional[np.ndarray], cellprob: Optional[np.ndarray], ndim: int) -> List[Any]:
    """The ``flows`` entry of a Cellpose 4 ``_seg.npy`` (``io.masks_flows_to_seg``) from fastpose's flows
    ([ndim, *shape] float32, Cellpose's scale) and cell-probability logits ([*shape]):

    * 2D: ``[RGB flows uint8 [1, Y, X, 3], cell probability 0-255 uint8 [1, Y, X], zeros uint8 [1, Y, X, 3],
      [], float32 [3, Y, X] (dY, dX, cellprob)]``
    * 3D: ``[RGB flows uint8 [Z, Y, X, 3], cell probability uint8 [Z, Y, X], Z flow 0-255 uint8 [Z, Y, X], [],
      float32 [4, Z, Y, X] (dZ, dY, dX, cellprob)]``

    (CellProfiler's RunCellpose reads ``flows[1]`` as the probability image.)  ``[]`` when there are no flows."""
    if flows is None or cellprob is None:
        return []
    dP = np.asarray(flows, np.float32)
    cp = np.asarray(cellprob, np.float32)
    rgb = flow_rgb(dP[-2:])
    prob8 = (np.clip(_normalize99(cp), 0, 1) * 255).astype(np.uint8)
    full = np.concatenate([dP, cp[None]], axis=0).astype(np.float32)
    if ndim == 2:
        return [rgb[None], prob8[None], np.zeros((1, *rgb.shape), np.uint8), [], full]
    zflow = dP[0] if dP.shape[0] == 3 else np.zeros(cp.shape, np.float32)
    return [rgb, prob8, np.clip(zflow / 10 * 127 + 127, 0, 255).astype(np.uint8), [], full]


def png16_bytes(masks: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG of a 2D label image (labels < 65536), as Cellpose's ``_cp_masks.png``."""
    h, w = masks.shape
    be = np.ascontiguousarray(masks, dtype=">u2")
    raw = b"".join(b"\x00" + be[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _folders(image: Path, args: argparse.Namespace) -> Dict[str, Path]:
    if args.savedir is not None:
        base = Path(args.savedir)
    else:
        base = image.parent.parent if args.dir_above else image.parent
    sub = {"masks": "masks", "outlines": "outlines", "txt": "txt_outlines", "flows": "flows"}
    out = {k: (base / v if args.in_folders else base) for k, v in sub.items()}
    out["base"] = base
    return out


def _suffix(args: argparse.Namespace) -> str:
    """The mask files' suffix, by Cellpose's rule for --output_name."""
    if args.output_name is None:
        return "_cp_masks"
    if args.savedir is None:
        return args.output_name if args.output_name else "_cp_masks"
    same = bool(args.dir) and Path(args.savedir).resolve() == Path(args.dir).resolve()
    return "_cp_masks" if same else args.output_name


def write_image_outputs(image_path: Path, image: np.ndarray, masks: np.ndarray, res: Any, args: argparse.Namespace,
                        suffix: str) -> List[Path]:
    """Write one image's outputs as Cellpose names them (see the module docstring); returns the paths written."""
    from .io import atomic_write, write_tiff_atomic
    from .outputs import write_outlines_png, write_outlines_txt, write_rois_zip, write_seg_npy

    d = _folders(image_path, args)
    base = image_path.stem
    written: List[Path] = []
    empty = int(masks.max()) == 0 if masks.size else True
    two_d = masks.ndim == 2
    if not args.no_npy:
        written.append(write_seg_npy(d["base"] / f"{base}_seg.npy", str(image_path), masks, diameter=res.diameter,
                                     cellpose_flows=cellpose_flows(res.flows, res.cellprob, masks.ndim)))
    png, tif = args.save_png, args.save_tif
    if png and (not two_d or int(masks.max()) >= 2 ** 16):
        if two_d:
            log.warning("%s: more than 65535 masks: %s%s.tif instead of PNG", image_path, base, suffix)
        png, tif = False, True
    if empty and png:
        log.warning("%s: no masks found, no PNG, outlines or text files written", image_path)
        png = False
    if tif:
        written.append(write_tiff_atomic(d["masks"] / f"{base}{suffix}.tif", masks))
    if png:
        data = png16_bytes(masks)
        written.append(atomic_write(d["masks"] / f"{base}{suffix}.png", lambda f: f.write(data)))
    if two_d and not empty:
        if args.save_txt:
            written.append(write_outlines_txt(d["txt"] / f"{base}_cp_outlines.txt", masks))
        if args.save_outlines:
            img2 = np.asarray(image)
            written.append(write_outlines_png(d["outlines"] / f"{base}_outlines{suffix}.png", img2, masks))
        if args.save_flows and res.flows is not None and res.cellprob is not None:
            written.append(write_tiff_atomic(d["flows"] / f"{base}_flows{suffix}.tif", flow_rgb(res.flows[-2:])))
            written.append(write_tiff_atomic(d["flows"] / f"{base}_dP{suffix}.tif",
                                             np.asarray(res.flows, np.float32)))
            written.append(write_tiff_atomic(d["flows"] / f"{base}_cellprob{suffix}.tif",
                                             np.asarray(res.cellprob, np.float32)))
        if args.save_rois:
            written.append(write_rois_zip(d["base"] / f"{base}_rois.zip", masks))
    elif args.save_rois and two_d:
        log.warning("%s: no masks found, will not save ImageJ ROIs", image_path)
    return written


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------

def _message(e: BaseException) -> str:
    """An exception's sentence with fastpose's parameter names as the Cellpose flags (``channel_axis=5`` ->
    ``--channel_axis 5``)."""
    return _MESSAGE_RE.sub(lambda m: f"--{m.group(1)} ", str(e).strip() or type(e).__name__)


def _ignored(args: argparse.Namespace, defaults: argparse.Namespace) -> List[str]:
    """The accepted-and-ignored flags set away from their defaults."""
    names = ["Zstack", "all_channels", "pretrained_model_ortho", "chan2_restore", "transformer", "bsize",
             "no_resample", "no_interp", "net_avg", "fast_mode", "resample", "save_mpl", "train_size"]
    training = ["test_dir", "file_list", "learning_rate", "weight_decay", "n_epochs", "train_batch_size",
                "nimg_per_epoch", "nimg_test_per_epoch", "min_train_masks", "SGD", "save_every", "model_name_out",
                "diam_mean", "save_each"]
    out = [f"--{k}" for k in names + training if getattr(args, k) != getattr(defaults, k)]
    if any(v != 0 for v in args.flow3D_smooth):
        out.append("--flow3D_smooth")
    return out


def _axes(image: np.ndarray, args: argparse.Namespace, volume: bool) -> Tuple[Optional[int], Optional[int]]:
    """(channel_axis, z_axis) of one image: the flags, else Cellpose's guesses (Z first for volumes; a short axis,
    at most 4 long, first or last, holds the channels)."""
    ca, za = args.channel_axis, args.z_axis
    nd = image.ndim
    if volume and za is None:
        za = 0
    if ca is None:
        used = {za % nd} if za is not None else set()
        free = [a for a in range(nd) if a not in used]
        if nd - len(used) == 3:  # one axis more than Y, X: the channels
            short = [a for a in (free[-1], free[0]) if image.shape[a] <= 4]
            ca = short[0] if short else (min(free, key=lambda a: image.shape[a]) if volume else None)
    return ca, za


def _channels(args: argparse.Namespace, nchan: int) -> Optional[List[int]]:
    """Cellpose 3's ``--chan``/``--chan2`` as fastpose channels (0-based, at most the model's count)."""
    if not args.chan:
        return None
    ch = [args.chan - 1] + ([args.chan2 - 1] if args.chan2 else [])
    return ch[:nchan]


def main(argv: Optional[Sequence[str]] = None, debug: bool = False) -> int:
    """Run the Cellpose-compatible command line (``argv``: the arguments, default ``sys.argv[1:]``); returns the
    exit status (see the module docstring).  ``debug``: log at DEBUG (``fastpose -v cellpose ...``)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    previous = log.level
    try:
        try:
            args = build_parser().parse_args(None if argv is None else list(argv))
        except SystemExit as e:  # --help (0) or a parse error (2, its sentence already on stderr)
            return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
        log.setLevel(logging.DEBUG if debug else logging.INFO if args.verbose else logging.WARNING)
        return _run(args)
    except UsageError as e:
        sys.stderr.write(f"{PROG}: {_message(e)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted by Ctrl-C\n")
        return EXIT_SIGINT
    except (ValueError, OSError, RuntimeError) as e:  # setup: the model, the device, --savedir
        sys.stderr.write(f"{PROG}: {_message(e)}\n")
        log.debug("details", exc_info=True)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - a bug: one sentence, the traceback with fastpose -v
        sys.stderr.write(f"{PROG}: internal error (a bug in fastpose, please report it): {type(e).__name__}: {e}\n")
        log.debug("traceback", exc_info=True)
        return EXIT_BUG
    finally:
        log.setLevel(previous)


def _run(args: argparse.Namespace) -> int:
    import fastpose

    if args.version:
        print(f"fastpose {fastpose.__version__} (Cellpose-compatible command line: Cellpose 4 flags and outputs)")
        return EXIT_OK
    if args.train:
        test = f" --val-dir {args.test_dir}" if args.test_dir else ""
        raise UsageError("--train is not supported by the Cellpose-compatible command line: train with fastpose "
                         f"train (e.g. fastpose train --dir {args.dir or 'TRAIN_DIR'}{test} --mask-filter "
                         f"{args.mask_filter} --model nuclei --out model.pth; see fastpose train --help)")
    if args.add_model:
        from .models.files import cellpose_model_dir

        src = Path(args.add_model)
        if not src.is_file():
            raise UsageError(f"--add_model {src}: no such file")
        dest = cellpose_model_dir() / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        print(f"copied {src} to {dest}; use it with --pretrained_model {src.name}")
        return EXIT_OK
    if not args.dir and not args.image_path:
        raise UsageError("give images with --dir FOLDER or --image_path FILE (fastpose has no GUI)")
    defaults = build_parser().parse_args([])
    for flag in _ignored(args, defaults):
        log.info("%s: a Cellpose flag fastpose accepts and ignores", flag)
    if args.norm_percentile is not None and not args.norm_percentile[0] < args.norm_percentile[1]:
        raise UsageError(f"--norm_percentile needs VALUE1 < VALUE2, got {args.norm_percentile[0]:g} "
                         f"{args.norm_percentile[1]:g}")
    if args.savedir is not None and not Path(args.savedir).is_dir():
        raise UsageError(f"--savedir {args.savedir} does not exist" if not Path(args.savedir).exists()
                         else f"--savedir {args.savedir} is not a folder")
    if args.dir:
        images = find_images(Path(args.dir), args.img_filter or "", args.mask_filter, args.look_one_level_down)
    else:
        p = Path(args.image_path)
        if not p.is_file():
            raise UsageError(f"--image_path {p}: no such file")
        images = [p]
    model, note = resolve_model(args.pretrained_model)
    if note:
        log.info("--pretrained_model %s", note)
    device = _device(args)
    volume = args.do_3D or args.stitch_threshold > 0
    stitch = args.stitch_threshold
    if args.do_3D and stitch > 0:
        log.info("--do_3D and --stitch_threshold: 3D segmentation (--stitch_threshold ignored, as in Cellpose)")
        stitch = 0.0
    seg = fastpose.Segmenter(model, device=device, batch_size=args.batch_size, restore=args.restore_type)
    if seg.is_image_model:
        raise UsageError(f"--pretrained_model {args.pretrained_model} is a restoration model (no masks); pass it "
                         "as --restore_type and a segmentation model as --pretrained_model")
    if args.norm_percentile is not None:
        seg.spec = dataclasses.replace(seg.spec, normalize={**seg.spec.normalize, "lower": args.norm_percentile[0],
                                                            "upper": args.norm_percentile[1]})
    kw: Dict[str, Any] = dict(
        diameter=args.diameter, do_3D=args.do_3D, stitch_threshold=stitch,
        anisotropy=args.anisotropy if args.do_3D else None, augment=args.augment, tile_overlap=args.tile_overlap,
        normalize=not args.no_norm, invert=args.invert, flow_threshold=args.flow_threshold,
        cellprob_threshold=args.cellprob_threshold, min_size=max(args.min_size, 0),
        niter=args.niter or None, channels=_channels(args, seg.nchan),
        return_flows=not args.no_npy or args.save_flows)
    seg.check_options(**kw)  # a setting that means nothing: exit 2 before any image
    suffix = _suffix(args)
    log.info(">>>> running fastpose (%s model %s on %s) on %d image(s)", seg.spec.family, model, seg.device,
             len(images))
    t0 = time.perf_counter()
    failed: List[str] = []
    for path in images:
        try:
            img = read_any(path)
            ca, za = _axes(img, args, volume)
            res = seg.segment(img, channel_axis=ca, z_axis=za, **kw)
            masks = res.masks
            if args.exclude_on_edges:
                masks = remove_edge_masks(masks)
            written = write_image_outputs(path, img, masks, res, args, suffix)
        except (ValueError, OSError, RuntimeError, TypeError) as e:
            failed.append(str(path))
            msg = _message(e)
            log.error("%s", msg if str(path) in msg else f"{path}: {msg}")
            continue
        log.info("%s: %d masks%s -> %s", path, int(masks.max()) if masks.size else 0,
                 f" (diameter {res.diameter:.1f})" if res.diameter else "",
                 ", ".join(q.name for q in written) or "nothing (no output asked for)")
    log.info(">>>> completed %d of %d image(s) in %.2f s%s", len(images) - len(failed), len(images),
             time.perf_counter() - t0, f"; failed: {', '.join(failed)}" if failed else "")
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
