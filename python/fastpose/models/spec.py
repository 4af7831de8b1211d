"""The model spec: everything the generic data path needs to know about a network, stored in its model file.

Tiling, batching, blending, flip TTA, streaming and 3D read a :class:`ModelSpec` and never ask which family or
architecture a network belongs to.  A family (``fastpose.methods``) adds what to do with the output maps.

    image -> channels (nchan, channels) -> normalise (normalize) -> resize (rescale_by_diameter, diam_mean)
          -> pad (pad_multiple, pad_to_tile) -> tiles (tile) -> network -> blend (flow_channels un-flipped)
          -> outputs [len(outputs), Y, X] -> the family's post-processing (family, with the model's settings)

A family whose network does not fit the tiles (Cellulus: valid convolutions, a noise ensemble) runs it itself
(``fastpose.methods.Family.run_net``) and the rest of the path stays the same.

Model files written by fastpose store the spec (``"spec"``); Cellpose checkpoints and fastpose files written
before the spec existed get one inferred at load from their architecture (see ``models.files``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Mapping, Optional, Tuple

from .. import checks

__all__ = ["ModelSpec", "DEFAULT_NORMALIZE", "CELLPOSE_OUTPUTS", "RESTORE_OUTPUTS", "CLASS_PREFIX", "check_class_names", "class_names",
           "panoptic_spec"]

#: Cellpose's input normalisation: per channel, the 1st percentile -> 0 and the 99th -> 1.
DEFAULT_NORMALIZE: Dict[str, Any] = {"lower": 1.0, "upper": 99.0, "invert": False}

#: Output maps of a Cellpose network: the two flow components (5x unit vectors) and the cell-probability logit.
CELLPOSE_OUTPUTS: Tuple[str, ...] = ("flow_y", "flow_x", "cellprob")

#: Output map of a restoration network (Cellpose3: the restored image, predicted directly, no input skip).
RESTORE_OUTPUTS: Tuple[str, ...] = ("restored",)

#: Output maps named ``"class:<name>"`` are semantic class maps (panoptic models: background first, then the K
#: classes, after the three Cellpose maps; see :func:`panoptic_spec`).
CLASS_PREFIX = "class:"


@dataclass(frozen=True)
class ModelSpec:
    """What the data path needs to run a network (all fields plain, so the spec round-trips through a file).

    Attributes
    ----------
    family : str
        Post-processing family in :mod:`fastpose.methods` (``"cellpose"``: flows + cell probability -> masks).
    nchan : int
        Input channels of the network.
    tile : int
        Tile side, pixels (224 for the Cellpose U-Net, the input size of a ViT).
    pad_multiple : int
        Images are padded to a multiple of this before tiling (16: the U-Net halves the size three times).
    pad_to_tile : bool
        Images smaller than a tile are padded up to it (networks that take only their exact input size).
    outputs : tuple of str
        Names of the output maps, in channel order; the network may return more channels (ignored).
    flow_channels : tuple of int
        Output channels that are flow components along (Y, X): they change sign under flips (flip TTA) and are
        re-assigned to (Z, Y, X) when 3D is assembled from 2D slices.  Either () or (0, 1).
    rescale_by_diameter : bool
        Images are resized so cells have ``diam_mean`` pixels (U-Nets); False: the network is size-invariant.
    diam_mean : float
        Cell diameter the network was trained at, pixels.
    normalize : dict
        Input percentile normalisation ``{"lower": 1.0, "upper": 99.0, "invert": False}``, honoured at inference.
    pad_border : int
        Extra zero padding on every side before tiling, pixels (0; 8 for restoration models: Cellpose 3's
        ``run_net`` pads by a multiple of 16 plus 8 px per side, and restoration is checked against it).
    settings : dict
        The family's own inference settings, stored with the model (plain values: numbers, strings, bools, None,
        lists): Cellulus's object size, noise ensemble, clustering and post-processing.  The segmenter hands
        them to the family's post-processing under the caller's options (``Segmenter.recover``).  Empty for the
        Cellpose families; written to a file only when not empty.
    """

    family: str = "cellpose"
    nchan: int = 2
    tile: int = 224
    pad_multiple: int = 16
    pad_to_tile: bool = False
    outputs: Tuple[str, ...] = CELLPOSE_OUTPUTS
    flow_channels: Tuple[int, ...] = (0, 1)
    rescale_by_diameter: bool = True
    diam_mean: float = 30.0
    normalize: Dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_NORMALIZE))
    pad_border: int = 0
    settings: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []

        def field_ok(check: Any, name: str, *args: Any, **kw: Any) -> Any:
            try:
                return check(getattr(self, name), name, *args, **kw)
            except ValueError as e:
                problems.append(str(e))
                return getattr(self, name)

        try:
            object.__setattr__(self, "outputs", tuple(str(o) for o in self.outputs))
            object.__setattr__(self, "flow_channels", tuple(int(c) for c in self.flow_channels))
        except (TypeError, ValueError):
            raise ValueError(f"invalid model spec: outputs must be names and flow_channels integers, got "
                             f"{self.outputs!r} and {self.flow_channels!r}") from None
        if not isinstance(self.normalize, Mapping) and self.normalize is not None:
            raise ValueError(f"invalid model spec: normalize must be a dict, got {self.normalize!r}")
        if not isinstance(self.settings, Mapping) and self.settings is not None:
            raise ValueError(f"invalid model spec: settings must be a dict, got {self.settings!r}")
        settings = dict(self.settings or {})
        if any(not isinstance(k, str) for k in settings):
            raise ValueError(f"invalid model spec: settings keys must be names, got {sorted(map(repr, settings))}")
        object.__setattr__(self, "settings", settings)
        norm = dict(DEFAULT_NORMALIZE)
        norm.update(dict(self.normalize or {}))
        object.__setattr__(self, "normalize", norm)
        if not self.family or not isinstance(self.family, str):
            problems.append(f"family must be a name, got {self.family!r}")
        object.__setattr__(self, "nchan", field_ok(checks.integer, "nchan", lo=1, hi=1024))
        object.__setattr__(self, "tile", field_ok(checks.integer, "tile", lo=8, hi=8192))
        object.__setattr__(self, "pad_multiple", field_ok(checks.integer, "pad_multiple", lo=1, hi=8192))
        object.__setattr__(self, "pad_to_tile", field_ok(checks.boolean, "pad_to_tile"))
        object.__setattr__(self, "pad_border", field_ok(checks.integer, "pad_border", lo=0, hi=8192))
        object.__setattr__(self, "rescale_by_diameter", field_ok(checks.boolean, "rescale_by_diameter"))
        object.__setattr__(self, "diam_mean", field_ok(checks.number, "diam_mean", lo=0.0, lo_open=True,
                                                       hi=checks.LIMITS["diameter"]))
        if not self.outputs:
            problems.append("outputs must name at least one map")
        if self.flow_channels not in ((), (0, 1)) or len(self.outputs) < len(self.flow_channels):
            problems.append(f"flow_channels must be () or (0, 1) within the outputs, got {self.flow_channels}")
        try:
            lo = checks.number(norm["lower"], "normalize lower")
            hi = checks.number(norm["upper"], "normalize upper")
            if not 0.0 <= lo < hi <= 100.0:
                problems.append(f"normalize needs 0 <= lower < upper <= 100, got {lo}, {hi}")
            norm["invert"] = checks.boolean(norm.get("invert", False), "normalize invert")
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ValueError("invalid model spec: " + "; ".join(problems))

    # ---- derived -------------------------------------------------------------------------------
    @property
    def n_outputs(self) -> int:
        return len(self.outputs)

    def padding(self, size: int) -> int:
        """Pixels of padding for an image side of ``size`` (split half before, half after; ``pad_border`` on each
        side included)."""
        pad = (-int(size)) % int(self.pad_multiple)
        if self.pad_to_tile:
            pad = max(pad, int(self.tile) - int(size))
        return pad + 2 * int(self.pad_border)

    def rescale(self, diameter: Optional[float]) -> float:
        """Resize factor for images whose cells are ``diameter`` pixels across (1: no resizing); ``diameter`` is
        checked by the caller (``Segmenter.check_options``: None or finite in [0, LIMITS["diameter"]])."""
        if self.rescale_by_diameter and diameter is not None and diameter > 0:
            return float(self.diam_mean) / float(diameter)
        return 1.0

    # ---- file round trip ----------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["outputs"] = list(self.outputs)
        d["flow_channels"] = list(self.flow_channels)
        if not self.settings:  # files of families without settings stay as they were
            del d["settings"]
        else:
            d["settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.settings.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model spec has unknown fields {sorted(unknown)} (known: {sorted(known)})")
        try:
            return cls(**dict(d))
        except TypeError as e:
            raise ValueError(f"invalid model spec {dict(d)!r}: {e}") from e

    def with_(self, **changes: Any) -> "ModelSpec":
        """A copy with some fields changed."""
        return replace(self, **changes)


# ---- panoptic models: K + 1 class maps after the Cellpose maps ---------------------------------------

def check_class_names(names: Any) -> Tuple[str, ...]:
    """Class names checked: a non-empty sequence of distinct, non-empty strings without ``","`` or newlines
    (they become CSV values and ROI names).  Returns them with ``"background"`` first (prepended when absent);
    ValueError saying what was given otherwise."""
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise ValueError(f"class names must be a list of names (e.g. ['epithelial', 'lymphocyte']), got {names!r}")
    out = [n for n in names]
    bad = [n for n in out if not isinstance(n, str) or not n.strip() or any(c in n for c in ",\n\r\t")]
    if bad:
        raise ValueError(f"class names must be non-empty strings without commas, tabs or newlines, got {bad!r}")
    out = [n.strip() for n in out]
    if not out or out[0] != "background":
        out = ["background"] + out
    if len(out) < 2:
        raise ValueError("a panoptic model needs at least one class besides background, got none")
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise ValueError(f"class names must be distinct ('background' is class 0), got duplicates {dup}")
    return tuple(out)


def class_names(spec: ModelSpec) -> Tuple[str, ...]:
    """The class names of a spec's class maps, background first (``()`` for a model without classes)."""
    return tuple(o[len(CLASS_PREFIX):] for o in spec.outputs if o.startswith(CLASS_PREFIX))


def panoptic_spec(spec: ModelSpec, names: Any, rescale_by_diameter: bool = False) -> ModelSpec:
    """``spec`` as a panoptic model's: family ``"panoptic"``, outputs = the three Cellpose maps then one
    ``"class:<name>"`` map per class (background first, see :func:`check_class_names`).  Panoptic models are
    trained without diameter rescaling (Cellpose-SAM's recipe), so by default they run without it too."""
    names = check_class_names(names)
    return spec.with_(family="panoptic", outputs=tuple(CELLPOSE_OUTPUTS) + tuple(CLASS_PREFIX + n for n in names),
                      flow_channels=(0, 1), rescale_by_diameter=bool(rescale_by_diameter))
