"""Training and fine-tuning of fastpose networks (Cellpose recipes); the one trainer of the bundled models.

* :func:`train` -- train a :class:`~fastpose.models.UNet` from scratch or fine-tune any model file, for a
  number of epochs or a wall-clock time budget; returns a :class:`TrainResult` (see :mod:`fastpose.train.loop`).
* :mod:`~fastpose.train.data` -- folders of ``*_img.tif`` + ``*_masks.tif`` or in-memory pairs, with
  cached flow targets, explicit channel axes and a held-out split by a hash of the image id.
* :mod:`~fastpose.train.batches` -- which crops each step sees; batches made inline or on worker
  processes/threads ahead of the step, identical either way.
* :mod:`~fastpose.train.augment` -- random affine warps (flows rotated with the image) and Cellpose-SAM
  photometric augmentations.
* :func:`train_panoptic` -- fine-tune a segmentation network into a panoptic one (a class per cell;
  :mod:`fastpose.train.panoptic`).
* :mod:`~fastpose.train.size_model` -- style -> diameter ridge regression.
* :mod:`~fastpose.train.recipes` -- the ``nuclei`` / ``cyto`` recipes of the bundled weights and the data
  sources (DSB-style folders, synthetic cells).
* :mod:`~fastpose.train.evaluate` / :mod:`~fastpose.train.card` -- held-out scores and the JSON model card.
* :mod:`~fastpose.train.cli` -- ``fastpose train`` and ``fastpose evaluate-card`` (``add_parser(subparsers)``).

Names are loaded on first use, so ``fastpose train --help`` and the CLI's argument checks do not wait for PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {"TrainData": ".data", "from_arrays": ".data", "load_folder": ".data",
          "evaluate_ap": ".evaluate", "evaluate_heldout": ".evaluate",
          "TrainResult": ".loop", "budget_lr": ".loop", "lr_schedule": ".loop", "seg_loss": ".loop", "train": ".loop",
          "train_panoptic": ".panoptic", "PanopticResult": ".panoptic",
          "fit_size_model": ".size_model", "predict_diameters": ".size_model", "train_size_model": ".size_model"}

__all__ = ["train", "TrainResult", "TrainData", "load_folder", "from_arrays", "lr_schedule", "budget_lr",
           "seg_loss", "evaluate_ap", "evaluate_heldout", "fit_size_model", "predict_diameters",
           "train_size_model", "train_panoptic", "PanopticResult"]


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module 'fastpose.train' has no attribute {name!r}")
