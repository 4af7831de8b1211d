"""The recipes of the bundled models, and the data sources ``fastpose train`` reads.

A recipe is a named set of defaults for ``fastpose train`` options (any option given on the command line
wins).  ``nuclei`` and ``cyto`` are the recipes the bundled weights were trained with::

    fastpose train --recipe nuclei --data /path/to/dsb2018/stage1_train --time-budget 330 --out nuclei.pth
    fastpose train --recipe cyto --time-budget 228 --out cyto.pth

``cellulus_nuclei`` trains an unsupervised Cellulus network (``--method cellulus``, which the recipe implies) on
the images of the nuclei recipe's split, its masks never read.

Data sources (:func:`load_sources`):

* a folder of ``*_img.tif`` + ``*_masks.tif`` (``--data``), with validation images from ``--val-dir`` or
  held out of the folder by a hash of the image id (``--holdout-every N``: the ids whose SHA-1 is 0 mod N,
  :func:`~fastpose.train.data.heldout_by_hash`), minus any ``--exclude`` ids (the nuclei recipe keeps the
  bundled sample image out of both);
* synthetic two-channel cell images from :mod:`fastpose.synthetic_cells` (``--synthetic-cyto N``: N
  training images and N/8 held out, 256 x 256, seed 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .data import TrainData, folder_ids, from_arrays, heldout_by_hash, load_folder

__all__ = ["Recipe", "RECIPES", "SAMPLE_ID", "Sources", "load_sources", "PLAIN_DEFAULTS", "CELLULUS_DEFAULTS"]

log = logging.getLogger("fastpose.train")

#: id of the bundled DSB 2018 sample image (``fastpose.io.sample_paths()``), kept out of the nuclei recipe's
#: training and held-out images so it stays an unseen test image
SAMPLE_ID = "0402a81e75262469"

#: defaults of the recipe-controlled ``fastpose train`` options without a recipe
PLAIN_DEFAULTS: Dict[str, Any] = {
    "nbase": [2, 32, 64, 128, 256], "diam_mean": 30.0, "batch_size": 8, "lr": None, "optimizer": "auto",
    "weight_decay": None, "time_budget": None, "tile": None, "channel_axis": None, "grey": False,
    "holdout_every": 0, "exclude": [], "synthetic_cyto": 0, "size_model_epochs": 10, "val_every": 10,
    "workers": 0, "half": False, "card": False, "channels_last": "auto", "compile": None,
}

#: defaults of the options ``fastpose train --method cellulus`` reads, without a recipe: the authors' code
#: (funkelab/cellulus, main; :mod:`fastpose.cellulus.training`), f = 24 as in their examples
CELLULUS_DEFAULTS: Dict[str, Any] = {
    "fmaps": 24, "crop": 252, "batch_size": 8, "lr": 4e-5, "weight_decay": 0.01, "steps": 100_000,
    "time_budget": None, "object_size": 30.0, "post_processing": "cell", "channel_axis": None, "grey": False,
    "holdout_every": 0, "exclude": [], "half": False, "card": False,
}


@dataclass(frozen=True)
class Recipe:
    """Defaults for ``fastpose train`` (option dest -> value) and how to describe the result."""

    name: str
    summary: str                    #: one line for --help and the model card
    options: Mapping[str, Any]      #: option dest -> default (see :data:`PLAIN_DEFAULTS` for the others)
    data_name: str = ""             #: the data set, for the card ("DSB 2018 stage-1 train")
    data_hint: str = ""             #: the --data placeholder in the reproduce command
    kinds: Mapping[str, str] = field(default_factory=dict)  #: image kind -> what it is in this data set
    method: str = "cellpose"        #: the ``--method`` it trains (a cellulus recipe implies --method cellulus)

    def command(self, out: Optional[str] = None) -> str:
        """The one command that trains this recipe's model (on a GPU)."""
        parts = ["fastpose train", "--recipe", self.name]
        if self.data_hint:
            parts += ["--data", self.data_hint]
        if self.options.get("time_budget"):
            parts += ["--time-budget", f"{self.options['time_budget']:g}"]
        parts += ["--out", out or f"{self.name}.pth"]
        return " ".join(parts)


_COMMON = {"nbase": [2, 32, 64, 128, 256], "optimizer": "sgd", "lr": 0.2, "weight_decay": 1e-5, "tile": 224,
           "size_model_epochs": 2, "val_every": 0, "workers": "auto", "half": True, "card": True,
           "channels_last": "auto"}

RECIPES: Dict[str, Recipe] = {
    "nuclei": Recipe(
        name="nuclei",
        summary="one-channel nuclei U-Net on DSB 2018 stage-1 train (grey; colour images averaged), 10% held out "
                "by a hash of the image id, 330 s wall-clock budget, batches of 16",
        options={**_COMMON, "diam_mean": 17.0, "batch_size": 16, "time_budget": 330.0, "channel_axis": -1,
                 "grey": True, "holdout_every": 10, "exclude": [SAMPLE_ID]},
        data_name="DSB 2018 stage-1 train",
        data_hint="/path/to/dsb2018/stage1_train",
        kinds={"grey": "one-channel files (DSB fluorescence)",
               "rgb": "colour files (DSB brightfield / histology), averaged to grey"}),
    "cyto": Recipe(
        name="cyto",
        summary="two-channel (cytoplasm + nuclei) U-Net on 400 synthetic images from fastpose.synthetic_cells "
                "(50 held out), 228 s wall-clock budget, batches of 8",
        options={**_COMMON, "diam_mean": 30.0, "batch_size": 8, "time_budget": 228.0, "channel_axis": 0,
                 "synthetic_cyto": 400},
        data_name="synthetic cells, fastpose.synthetic_cells"),
    # Cellulus on the nuclei recipe's images and split, masks never read.  Sized for a CPU (how the bundled
    # weights were trained: no GPU was lent): crops of 124 px (108 px of output, room for the kappa = 10 pairs),
    # batches of 4 and Adam at 5e-4 for a 2700 s wall-clock budget, where the authors' settings (CELLULUS_DEFAULTS:
    # crops 252, batch 8, Adam 4e-5, 100,000 steps) take 7.3 s a step on 2 cores and do not move the loss in an
    # hour; the same command on a GPU runs many more steps in the budget.  Weight decay 0.01, f 24 and the OCE
    # loss are the authors'.  object_size 20: about the median nucleus diameter of DSB 2018 stage-1 train (the
    # median of the per-image medians of 67 of its images, every 8th file: 19.5 px; 10th-90th percentile 11-48
    # px), where the authors' default 30 is for their data; the 'cell' post-processing is the authors' default.
    # Both are inference settings, stored in the model file (bench/cellulus_settings.py chooses them again on
    # training images; fastpose segment --object-size overrides the first).
    "cellulus_nuclei": Recipe(
        name="cellulus_nuclei",
        summary="unsupervised Cellulus network (f 24) on the images alone of DSB 2018 stage-1 train (grey; masks "
                "not read), the nuclei recipe's split (10% held out by a hash of the image id, the bundled sample "
                "excluded), crops 124, batch 4, Adam 5e-4, weight decay 0.01, 2700 s wall-clock budget, object "
                "size 20 px",
        options={**CELLULUS_DEFAULTS, "crop": 124, "batch_size": 4, "lr": 5e-4, "time_budget": 2700.0,
                 "object_size": 20.0, "channel_axis": -1, "grey": True, "holdout_every": 10,
                 "exclude": [SAMPLE_ID], "card": True},
        data_name="DSB 2018 stage-1 train, images only",
        data_hint="/path/to/dsb2018/stage1_train",
        kinds={"grey": "one-channel files (DSB fluorescence)",
               "rgb": "colour files (DSB brightfield / histology), averaged to grey"},
        method="cellulus"),
}


@dataclass
class Sources:
    """What :func:`load_sources` returns: training and held-out data (either may be None when not asked
    for) and a description for the card."""

    train: Optional[TrainData]
    heldout: Optional[TrainData]
    description: str
    n_train: int
    n_heldout: int


def _synthetic_cyto(n: int, nchan: int, which: Tuple[str, ...], cache_dir: Optional[str]
                    ) -> Tuple[Optional[TrainData], Optional[TrainData], int, int]:
    from ..synthetic_cells import make_cyto_dataset

    n_val = max(1, n // 8)
    ds = make_cyto_dataset(n + n_val, (256, 256), seed=0)
    part = {"train": ds[:n], "heldout": ds[n:]}
    out: Dict[str, Optional[TrainData]] = {"train": None, "heldout": None}
    for w in which:
        pairs = part[w]
        off = 0 if w == "train" else n
        out[w] = from_arrays([p[0] for p in pairs], [p[1] for p in pairs], nchan=nchan, channel_axis=0,
                             cache_dir=cache_dir, names=[f"synthetic {off + i}" for i in range(len(pairs))],
                             flows=w == "train")
    return out["train"], out["heldout"], n, n_val


def load_sources(opts: Any, nchan: int, which: Tuple[str, ...] = ("train", "heldout"),
                 recipe: Optional[Recipe] = None) -> Sources:
    """Load the data ``opts`` names (an argparse namespace of ``fastpose train`` / ``evaluate-card``
    options: ``dir``, ``val_dir``, ``holdout_every``, ``exclude``, ``synthetic_cyto``, ``channel_axis``,
    ``grey``, ``img_filter``, ``mask_filter``, ``min_masks``, ``cache_dir``, ``limit``).

    ``which`` says which parts to load (the evaluator needs only "heldout"); the other is only counted.
    Held-out images are loaded without flow targets (validation never uses them), so evaluating writes
    nothing next to the data.
    """
    which = tuple(which)
    n_syn = int(getattr(opts, "synthetic_cyto", 0) or 0)
    name = recipe.data_name if recipe and recipe.data_name else ""
    if n_syn:
        if opts.dir or opts.val_dir:
            raise ValueError("--synthetic-cyto makes its own data: drop --data/--dir and --val-dir")
        tr, va, nt, nv = _synthetic_cyto(n_syn, nchan, which, opts.cache_dir)
        desc = f"{name or 'synthetic cells, fastpose.synthetic_cells'} ({nt} train / {nv} held-out, 256x256, seed 0)"
        return Sources(tr, va, desc, nt, nv)
    if not opts.dir:
        raise ValueError("no training data: pass --data FOLDER (or --synthetic-cyto N)")
    every = int(opts.holdout_every or 0)
    if every and opts.val_dir:
        raise ValueError("--holdout-every splits --data itself: drop --val-dir (or --holdout-every)")
    exclude = set(opts.exclude or [])
    kw = dict(nchan=nchan, img_filter=opts.img_filter, mask_filter=opts.mask_filter, min_masks=opts.min_masks,
              channel_axis=opts.channel_axis, cache_dir=opts.cache_dir, grey=bool(opts.grey),
              limit=getattr(opts, "limit", None) or None)
    ids = [i for _, _, i in folder_ids(opts.dir, opts.img_filter, opts.mask_filter) if i not in exclude]
    in_train = (lambda i: i not in exclude and not heldout_by_hash(i, every)) if every else \
        (lambda i: i not in exclude)
    n_tr = sum(map(in_train, ids))
    tr = load_folder(opts.dir, select=in_train, **kw) if "train" in which else None
    va: Optional[TrainData] = None
    if every:
        n_va = len(ids) - n_tr
        if "heldout" in which:
            va = load_folder(opts.dir, select=lambda i: i not in exclude and heldout_by_hash(i, every), flows=False,
                             **kw)
        split = f"held out: the ids whose SHA-1 is 0 mod {every}"
    elif opts.val_dir:
        vids = [i for _, _, i in folder_ids(opts.val_dir, opts.img_filter, opts.mask_filter) if i not in exclude]
        n_va = len(vids)
        if "heldout" in which:
            va = load_folder(opts.val_dir, select=lambda i: i not in exclude, flows=False, **kw)
        split = f"held out: {Path(opts.val_dir).name}/"
    else:
        n_va, split = 0, "no held-out images"
    if kw["limit"]:
        n_tr, n_va = min(n_tr, kw["limit"]), min(n_va, kw["limit"])
    n_tr = len(tr) if tr is not None else n_tr  # loaded: images with too few masks are skipped
    n_va = len(va) if va is not None else n_va
    parts: List[str] = [f"{n_tr} train / {n_va} held-out images", split]
    if exclude:
        parts.append("excluded: " + ", ".join(sorted(exclude)) + (" (the bundled sample)" if exclude == {SAMPLE_ID}
                                                                   else ""))
    if kw["limit"]:
        parts.append(f"limited to the first {kw['limit']} of each (a smoke run)")
    desc = f"{name or Path(opts.dir).name} ({'; '.join(parts)})"
    return Sources(tr, va, desc, n_tr, n_va)
