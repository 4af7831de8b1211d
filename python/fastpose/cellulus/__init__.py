"""Cellulus: unsupervised cell segmentation from object-centric embeddings (Wolf, Lalit et al., ICCV 2023).

A small U-Net of valid convolutions learns, from images alone, to embed each pixel at the centre of its object:
the offset between the embeddings of two nearby pixels should equal their spatial offset when they lie on the
same object, which random placement of similar objects makes learnable without labels (the OCE loss).  At
inference the embeddings of 32 salt-noised predictions are averaged; where they vary most is background;
the foreground's embeddings are clustered by mean-shift into objects.

    >>> from fastpose import cellulus
    >>> res = cellulus.train("IMAGES/", save_dir="runs/cellulus", time_budget=3600)   # no masks needed
    >>> masks = fastpose.segment(image, model="runs/cellulus/cellulus_best.pth").masks
    >>> masks = cellulus.segment(image, "runs/cellulus/cellulus_best.pth", object_size=20).masks

Modules: :mod:`.network` (the U-Net, registered as the ``"cellulus"`` architecture), :mod:`.loss` (the OCE loss),
:mod:`.inference` (noise ensemble, foreground, mean-shift, post-processing, :func:`segment`), :mod:`.training`
(:func:`train`), :mod:`.settings` (the inference settings stored in model files), :mod:`.cli` (``fastpose train
--method cellulus``).  The family that runs
Cellulus models inside :func:`fastpose.segment` is :mod:`fastpose.methods.cellulus`.

The facts come from the authors' code (funkelab/cellulus, main); where it differs from the paper, fastpose
follows the code, and each module says where.  Clustering needs the native :func:`fastpose.core.mean_shift`.
"""

from __future__ import annotations

from .inference import (cluster, connected_components, embedding_maps, foreground, grow_shrink, otsu_threshold,
                        postprocess_maps, predict, refine_nuclei, segment, size_filter)
from .loss import DENSITY, KAPPA, LAMBDA, TAU, disc_offsets, embeddings_at, oce_loss, pair_counts, sample_pairs
from .network import CONTEXT, SHRINK, CellulusNet, save_cellulus, valid_size
from .settings import DEFAULT_SETTINGS, NORMALIZE, cellulus_spec, check_settings, min_object_size
from .training import CellulusTrainResult, load_images, train

__all__ = [
    "CellulusNet", "SHRINK", "CONTEXT", "valid_size", "save_cellulus",
    "oce_loss", "sample_pairs", "pair_counts", "disc_offsets", "embeddings_at", "TAU", "LAMBDA", "DENSITY", "KAPPA",
    "predict", "embedding_maps", "otsu_threshold", "foreground", "cluster", "grow_shrink", "refine_nuclei",
    "connected_components", "size_filter", "postprocess_maps", "segment",
    "DEFAULT_SETTINGS", "NORMALIZE", "check_settings", "cellulus_spec", "min_object_size",
    "train", "CellulusTrainResult", "load_images",
]
