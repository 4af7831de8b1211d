"""Training and fine-tuning of fastpose networks (Cellpose recipes).

* :func:`train` -- train a :class:`~fastpose.models.UNet` from scratch or fine-tune any model file;
  returns a :class:`TrainResult` (see :mod:`fastpose.train.loop`).
* :mod:`~fastpose.train.data` -- folders of ``*_img.tif`` + ``*_masks.tif`` or in-memory pairs, with
  cached flow targets (:func:`load_folder`, :func:`from_arrays`, :class:`TrainData`).
* :mod:`~fastpose.train.augment` -- random affine warps (flows rotated with the image) and Cellpose-SAM
  photometric augmentations.
* :mod:`~fastpose.train.size_model` -- style -> diameter ridge regression.
* :mod:`~fastpose.train.cli` -- ``fastpose train`` (``add_parser(subparsers)``, ``run(args)``).
"""

from __future__ import annotations

from .data import TrainData, from_arrays, load_folder
from .loop import TrainResult, evaluate_ap, lr_schedule, seg_loss, train
from .size_model import fit_size_model, predict_diameters, train_size_model

__all__ = ["train", "TrainResult", "TrainData", "load_folder", "from_arrays", "lr_schedule", "seg_loss",
           "evaluate_ap", "fit_size_model", "predict_diameters", "train_size_model"]
