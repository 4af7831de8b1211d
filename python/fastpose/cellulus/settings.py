"""Cellulus inference settings and the model spec of Cellulus models.

A Cellulus model file stores, in its spec's ``settings`` (:class:`fastpose.models.ModelSpec`), everything its
inference needs beyond the network: the object size, the noise ensemble, the clustering and the
post-processing.  :func:`check_settings` is the one place they are checked (every key, every value), for the
spec, for :func:`fastpose.cellulus.segment`'s overrides and for the family's post-processing alike.

Defaults are the authors' (funkelab/cellulus, main: ``configs/inference_config.py``, ``infer.py``,
``configs/experiment_config.py``); where fastpose departs from them it says so at the key.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

from .. import checks
from ..models.spec import ModelSpec

__all__ = ["DEFAULT_SETTINGS", "NORMALIZE", "POST_PROCESSING", "SEED_MODES", "check_settings", "cellulus_spec",
           "outputs_for", "min_object_size", "bandwidth_of"]

#: the authors' examples normalise with csbdeep's percentiles 1 / 99.8 (then ``normalization_factor=1.0``)
NORMALIZE: Dict[str, Any] = {"lower": 1.0, "upper": 99.8, "invert": False}

#: post-processing after the mean-shift: ``"cell"`` (grow ``grow`` px, then shrink ``shrink`` px from the
#: background: removes the halo the embeddings give objects surrounded by background), ``"nucleus"`` (Otsu per
#: object on the raw channel 0, holes filled) or ``"none"``
POST_PROCESSING: Tuple[str, ...] = ("cell", "nucleus", "none")

#: where the mean-shift hill climbs start (passed to :func:`fastpose.core.mean_shift` as ``seeds=``):
#: ``"bin"`` (one seed per occupied bin of size ``bandwidth``) or ``"all"`` (every fitted point)
SEED_MODES: Tuple[str, ...] = ("bin", "all")

#: Every setting, with its default.  Lengths are pixels at the network's scale (the scale the model was
#: trained at; ``fastpose.segment(..., diameter=d)`` resizes images so objects of ``d`` px are
#: ``object_size`` px there, and the lengths follow the image back to its own scale).
DEFAULT_SETTINGS: Dict[str, Any] = {
    # rough object diameter (the authors' ``object_size``, default 30); also the spec's ``diam_mean``
    "object_size": 30.0,
    # mean-shift bandwidth, None: 0.5 * object_size (``infer.py``)
    "bandwidth": None,
    # smallest object kept, pixels (voxels); None: int(0.1 * pi * s^2 / 4) in 2D, int(0.1 * 4/3 pi s^3 / 8) in 3D
    "min_size": None,
    "post_processing": "cell",
    # 'cell' post-processing: grow by this distance, then remove pixels within ``shrink`` of the background
    "grow": 3.0,
    "shrink": 6.0,
    # foreground threshold on the summed std of the noise ensemble; None: Otsu's threshold of the std map
    "foreground_threshold": None,
    # fraction of the foreground pixels the mean-shift is fitted on (Bernoulli draws, the authors'
    # ``reduction_probability``); every foreground pixel is then assigned to a centre
    "fit_fraction": 0.1,
    # Departs from the authors' code: scikit-learn's MeanShift there seeds from every fitted point ("all");
    # bin seeding gives the same clusters in all but degenerate cases, far faster
    "seeds": "bin",
    # True: every foreground pixel takes its nearest centre, as the authors' ``MeanShift.predict`` does
    # (scikit-learn's predict ignores cluster_all); False: pixels farther than the bandwidth from every centre
    # become background
    "cluster_all": True,
    # the noise ensemble: ``n_noise`` predictions for each salt value, each with ``p_salt`` of the input's
    # elements (all channels) set to that value; mean embedding and std summed over the D offsets
    "n_noise": 16,
    "salt_values": [0.5, 1.0],
    "p_salt": 0.01,
    # largest input window of the tiled prediction (valid convolutions: a window gives its side - 16 output
    # pixels; each image side is split into equal windows up to this size); larger windows give the same
    # embeddings with less overlap where memory allows (the windows' noise aside); a 3D
    # network needs a smaller one (252^3 voxels x 32 noisy copies is a lot)
    "crop": 252,
    # seed of the noise and of the mean-shift's fitted subset (results are a function of image and settings)
    "seed": 0,
}


def check_settings(settings: Optional[Mapping[str, Any]] = None, base: Optional[Mapping[str, Any]] = None,
                   name: str = "settings") -> Dict[str, Any]:
    """``base`` (default :data:`DEFAULT_SETTINGS`) updated with ``settings``, every value checked; ValueError
    naming the key for an unknown key or a value of the wrong kind or out of range.  Returns plain values
    (floats, ints, bools, strings, a list for ``salt_values``) so the result can be stored in a model file."""
    out = dict(DEFAULT_SETTINGS)
    for src, what in ((base, "base"), (settings, name)):
        if src is None:
            continue
        if not isinstance(src, Mapping):
            raise ValueError(f"{name} must be a dict of Cellulus settings, got {type(src).__name__}")
        unknown = sorted(set(src) - set(DEFAULT_SETTINGS))
        if unknown:
            raise ValueError(f"unknown Cellulus setting(s) {unknown}; known: {', '.join(DEFAULT_SETTINGS)}")
        out.update(src)
    o: Dict[str, Any] = {}
    o["object_size"] = checks.number(out["object_size"], "object_size", lo=0.0, lo_open=True,
                                     hi=checks.LIMITS["diameter"])
    o["bandwidth"] = checks.number(out["bandwidth"], "bandwidth", lo=0.0, lo_open=True, none_ok=True)
    o["min_size"] = checks.integer(out["min_size"], "min_size", lo=0, none_ok=True)
    o["post_processing"] = checks.choice(out["post_processing"], "post_processing", POST_PROCESSING)
    o["grow"] = checks.number(out["grow"], "grow", lo=0.0)
    o["shrink"] = checks.number(out["shrink"], "shrink", lo=0.0)
    o["foreground_threshold"] = checks.number(out["foreground_threshold"], "foreground_threshold", none_ok=True)
    o["fit_fraction"] = checks.probability(out["fit_fraction"], "fit_fraction", open_low=True)
    o["seeds"] = checks.choice(out["seeds"], "seeds", SEED_MODES)
    o["cluster_all"] = checks.boolean(out["cluster_all"], "cluster_all")
    o["n_noise"] = checks.integer(out["n_noise"], "n_noise", lo=1, hi=4096)
    sv = out["salt_values"]
    if isinstance(sv, (str, bytes)) or not hasattr(sv, "__iter__"):
        raise ValueError(f"salt_values must be a list of numbers (e.g. [0.5, 1.0]), got {sv!r}")
    sv = [checks.number(v, f"salt_values[{i}]") for i, v in enumerate(sv)]
    if not sv:
        raise ValueError("salt_values must hold at least one value")
    o["salt_values"] = sv
    o["p_salt"] = checks.probability(out["p_salt"], "p_salt")
    crop = checks.integer(out["crop"], "crop", lo=18, hi=8192)
    if crop % 2:
        raise ValueError(f"crop must be even (the network max-pools by 2 after a 4 px shrink), got {crop}")
    o["crop"] = crop
    o["seed"] = checks.integer(out["seed"], "seed", lo=0)
    return o


def bandwidth_of(settings: Mapping[str, Any]) -> float:
    """The mean-shift bandwidth at the network's scale: ``settings["bandwidth"]``, else half the object size."""
    bw = settings.get("bandwidth")
    return float(bw) if bw is not None else 0.5 * float(settings["object_size"])


def min_object_size(object_size: float, ndim: int = 2) -> int:
    """The authors' default smallest object: ``int(0.1 * pi * s^2 / 4)`` px in 2D (70 for s = 30),
    ``int(0.1 * 4/3 * pi * s^3 / 8)`` voxels in 3D: a tenth of the disc (ball) of diameter ``s``."""
    s = float(object_size)
    if int(ndim) == 3:
        return int(0.1 * 4.0 / 3.0 * math.pi * s ** 3 / 8.0)
    return int(0.1 * math.pi * s ** 2 / 4.0)


def outputs_for(ndim: int) -> Tuple[str, ...]:
    """The maps of a Cellulus model's inference, in order: the mean offsets (one per axis, array order: Z, Y, X),
    the std of the noise ensemble summed over the offsets, and the normalised input channel 0 (the 'nucleus'
    post-processing thresholds it per object)."""
    axes = ("offset_z", "offset_y", "offset_x")[3 - int(ndim):]
    return (*axes, "std", "image")


def cellulus_spec(nchan: int, ndim: int = 2, settings: Optional[Mapping[str, Any]] = None) -> ModelSpec:
    """The :class:`~fastpose.models.ModelSpec` of a Cellulus model taking ``nchan`` channels of ``ndim``-D images.

    Family ``"cellulus"`` (:mod:`fastpose.methods.cellulus`, which runs the network itself: valid convolutions
    and the noise ensemble do not fit the generic 224 px tiling), ``diam_mean`` = the object size (images are
    resized by ``diameter`` as for every model), the 1 / 99.8 percentile normalisation, ``tile`` = the
    prediction window, and the checked :data:`DEFAULT_SETTINGS` updated with ``settings``.  The offsets of a 2D
    model are flow-like (they change sign under flips and become (Z, Y, X) flows of a volume assembled from 2D
    slices), so they are its ``flow_channels``.
    """
    ndim = checks.choice(ndim, "ndim", (2, 3))
    s = check_settings(settings)
    return ModelSpec(family="cellulus", nchan=checks.integer(nchan, "nchan", lo=1, hi=1024), tile=s["crop"],
                     pad_multiple=1, pad_to_tile=False, outputs=outputs_for(ndim),
                     flow_channels=(0, 1) if ndim == 2 else (), rescale_by_diameter=True,
                     diam_mean=s["object_size"], normalize=dict(NORMALIZE), settings=s)
