"""The Cellulus family: unsupervised object-centric embeddings -> foreground -> mean-shift -> masks.

A Cellulus model's spec (:func:`fastpose.cellulus.settings.cellulus_spec`) names this family and stores the
model's inference settings (``spec.settings``: object size, noise ensemble, clustering, post-processing).

Why the family runs its network itself (``run_net``) instead of the generic tiled path: the Cellulus U-Net has
valid convolutions (its output is 16 px smaller than its input, so a tile does not map to a tile of the same
size) and each window is predicted 32 times under salt noise, the mean and the spread of the predictions being
the maps.  :func:`run_net` does that over valid-convolution windows (:func:`fastpose.cellulus.inference.predict`)
and returns the maps the spec names, ``[offsets (D), std, image]``, at the size it was given; everything else is
the common data path: channels and percentile normalisation (1 / 99.8), resizing by ``diameter`` (the model's
``diam_mean`` is its object size), streams of images, ``do_3D`` from 2D slices, the CLI's outputs.  ``augment``
and ``tile_overlap`` do not apply (the noise ensemble is Cellulus's test-time augmentation), the network runs in
float32 whatever the segmenter's ``precision`` (the spread of the predictions decides the foreground; the
network is small); images above the
memory budget are refused (no bounded path).  3D networks segment volumes through
:func:`fastpose.cellulus.segment`, the family's own entry point.

The caller's Cellpose options (``flow_threshold``, ``cellprob_threshold``, ``min_size``, ``niter``) do not apply
either: the smallest object follows the object size (settings ``min_size``).  A segmenter's settings are
overridden with :meth:`fastpose.Segmenter.update_settings` (``fastpose segment --object-size``).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..cellulus.inference import embedding_maps, postprocess_maps
from ..cellulus.network import CellulusNet
from ..cellulus.settings import check_settings
from . import Family, register_family

__all__ = ["postprocess", "run_net", "CELLULUS"]


def run_net(seg: Any, imgs: torch.Tensor, augment: bool = False,
            tile_overlap: float = 0.1) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The maps ``[B, D + 2, Y, X]`` (mean offsets, summed std, image channel 0) of a batch of prepared images
    through the segmenter's Cellulus networks (an ensemble pools its predictions), on the core's device."""
    nets = list(seg.nets)
    for n in nets:
        if not isinstance(n, CellulusNet):
            raise ValueError(f"a 'cellulus' model must be a Cellulus network, got {type(n).__name__}")
        if n.ndim != imgs.ndim - 2:
            raise ValueError(f"this is a {n.ndim}D Cellulus network and got {imgs.ndim - 2}D images; segment volumes "
                             "with a 3D network through fastpose.cellulus.segment(volume, model, z_axis=...)")
    settings = check_settings(seg.spec.settings)
    maps = [embedding_maps(nets, imgs[b], settings, batch_size=seg.batch_size, device=seg.device, precision="fp32")
            for b in range(int(imgs.shape[0]))]
    return torch.stack(maps).to(torch.device(seg.core_device)), None


def postprocess(maps: Any, *, rescale: float = 1.0, options: Mapping[str, Any] = (),
                return_maps: bool = False) -> Dict[str, Any]:
    """Masks of one image from its maps ``[offsets (D), std, image]`` (see
    :func:`fastpose.cellulus.inference.postprocess_maps`); ``options`` are the model's settings."""
    return postprocess_maps(maps, dict(options or {}), rescale=rescale, return_maps=return_maps)


def _check(settings: Mapping[str, Any], base: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    return check_settings(settings, base=base, name="settings")


CELLULUS = register_family(Family("cellulus", postprocess, None, (), run_net=run_net, check_settings=_check))
