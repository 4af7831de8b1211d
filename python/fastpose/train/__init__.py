"""Training and fine-tuning of fastpose networks (Cellpose recipes); the one trainer of the bundled models.

* :func:`train` -- train a :class:`~fastpose.models.UNet` from scratch or fine-tune any model file, for a
  number of epochs or a wall-clock time budget; returns a :class:`TrainResult` (see :mod:`fastpose.train.loop`).
* :mod:`~fastpose.train.data` -- folders of ``*_img.tif`` + ``*_masks.tif`` or in-memory pairs, with
  cached flow targets, explicit channel axes and a held-out split by a hash of the image id.
* :mod:`~fastpose.train.batches` -- which crops each step sees; batches made inline or on worker
  processes/threads ahead of the step, identical either way.
* :mod:`~fastpose.train.augment` -- random affine warps (flows rotated with the image) and Cellpose-SAM
  photometric augmentations.
* :mod:`~fastpose.train.size_model` -- style -> diameter ridge regression.
* :mod:`~fastpose.train.recipes` -- the ``nuclei`` / ``cyto`` recipes of the bundled weights and the data
  sources (DSB-style folders, synthetic cells).
* :mod:`~fastpose.train.evaluate` / :mod:`~fastpose.train.card` -- held-out scores and the JSON model card.
* :mod:`~fastpose.train.cli` -- ``fastpose train`` and ``fastpose evaluate-card`` (``add_parser(subparsers)``).
"""

from __future__ import annotations

from .data import TrainData, from_arrays, load_folder
from .evaluate import evaluate_ap, evaluate_heldout
from .loop import TrainResult, budget_lr, lr_schedule, seg_loss, train
from .size_model import fit_size_model, predict_diameters, train_size_model

__all__ = ["train", "TrainResult", "TrainData", "load_folder", "from_arrays", "lr_schedule", "budget_lr",
           "seg_loss", "evaluate_ap", "evaluate_heldout", "fit_size_model", "predict_diameters",
           "train_size_model"]
