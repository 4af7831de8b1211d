"""Model families: what to do with a network's output maps.

A family is a name in a model's spec (:class:`fastpose.models.ModelSpec`), a post-processing function and,
optionally, a size estimate.  The generic data path (:mod:`fastpose.inference`) runs the network through
tiles, blending, flip TTA, streaming and 3D for any spec, then hands the maps to the family:

    postprocess(maps, rescale=..., options=..., return_maps=...) -> {"masks": ..., other SegmentResult fields}

(``options``: the model's ``spec.settings`` updated with the caller's options the family reads.)  A family
whose network the generic tiling cannot run gives its own ``run_net`` (Cellulus); the rest of the data path
(preparation, resizing by diameter, streaming, 3D from slices) stays the same.

``maps`` is a float32 tensor ``[len(spec.outputs), *spatial]`` on the core's device, at the input image's size,
with the flow channels first (2D: ``[flow_y, flow_x, ...]``; 3D: ``[flow_z, flow_y, flow_x, ...]``).  Adding a
family is :func:`register_family` with a spec that names it; no edit of the tiling or streaming code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional

__all__ = ["Family", "register_family", "get_family", "options_for", "FAMILIES", "BUILTIN_FAMILIES"]

#: ``postprocess(maps, *, rescale, options, return_maps) -> dict`` of :class:`~fastpose.inference.SegmentResult`
#: fields (``masks``, ``flows``, ``cellprob``, ``outputs``, ``classes``).
PostProcess = Callable[..., Dict[str, Any]]


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes
    ----------
    name : str
        The spec's ``family``.
    postprocess : callable
        Maps of one image -> result fields (see the module docstring).
    estimate_diameter : callable, optional
        ``(segmenter, x, augment, tile_overlap) -> diameter`` for a prepared image ``x`` [C, Y, X]; families
        without one run at the given diameter (or without resizing when none is given).
    options : tuple of str
        Names of the post-processing options the family reads (the rest are ignored).  The model's own
        ``spec.settings`` reach ``postprocess`` too, under these.
    run_net : callable, optional
        ``(segmenter, imgs [B, C, Y, X], augment, tile_overlap) -> (maps [B, n_outputs, Y, X] float32 on the
        core's device, styles or None)`` for families whose networks the generic tiling cannot run (Cellulus:
        valid convolutions that shrink their input by 16 px, and a 32-prediction noise ensemble per window);
        None (the default): the generic tiled path (:func:`fastpose.inference.tiled.run_tiled`).  Such families
        have no bounded-memory path for images above the memory budget.
    check_settings : callable, optional
        ``(settings, base) -> dict``: the family's inference settings ``base`` (a model's ``spec.settings``)
        updated with ``settings``, every key and value checked (ValueError otherwise); what
        :meth:`fastpose.Segmenter.update_settings` calls.  None: the family has no settings to override.
    """

    name: str
    postprocess: PostProcess
    estimate_diameter: Optional[Callable[..., float]] = None
    options: tuple = ()
    run_net: Optional[Callable[..., Any]] = None
    check_settings: Optional[Callable[..., Dict[str, Any]]] = None


FAMILIES: Dict[str, Family] = {}

#: families shipped with fastpose: name -> module that registers it when first imported
BUILTIN_FAMILIES: Dict[str, str] = {"cellpose": "fastpose.methods.cellpose", "panoptic": "fastpose.methods.panoptic",
                                    "restore": "fastpose.methods.restore", "cellulus": "fastpose.methods.cellulus"}


def register_family(family: Family) -> Family:
    """Make ``family`` available to every model whose spec names it (replaces one of the same name)."""
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    """The registered family called ``name``; ValueError listing the known ones otherwise."""
    if name not in FAMILIES and name in BUILTIN_FAMILIES:
        import importlib
        importlib.import_module(BUILTIN_FAMILIES[name])
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; registered: {', '.join(sorted(FAMILIES)) or 'none'}")
    return FAMILIES[name]


def options_for(family: Family, options: Mapping[str, Any]) -> Dict[str, Any]:
    """The subset of ``options`` that ``family`` reads."""
    return {k: v for k, v in options.items() if k in family.options}
