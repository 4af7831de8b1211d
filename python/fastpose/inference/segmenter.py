"""The segmenter: a loaded model (or ensemble) and the data path, top to bottom.

    image -> channels, normalise (transforms) -> resize by diameter -> tiles -> network -> blend (tiled)
          -> resize back -> the family's post-processing (methods: cellpose = track -> cluster -> flow QC)

2D images go through :meth:`Segmenter.segment_prepared`; volumes through :mod:`.volume` (``do_3D``: XY/ZY/ZX
slices) or plane by plane with :func:`.volume.stitch3D`; streams of images through :mod:`.streaming`.  None of
it branches on the family or the architecture: the model's :class:`~fastpose.models.ModelSpec` says how to run
it and its family (:mod:`fastpose.methods`) what to do with the maps.  On a GPU every step after the upload
stays on the device.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import checks, methods
from ..core import cuda_available
from ..models import load_model, spec_of
from ..models.spec import ModelSpec
from ..transforms import normalize as normalize_image
from ..transforms import (LazyImage, channel_view, normalize_tensor, prepare_lazy, resize, scaled_size,
                          to_channels_first)
from .budget import MemoryPlan, parse_memory, plan_2d, resolve_budget
from .result import SegmentResult
from .tiled import run_tiled, run_tiled_bounded
from .volume import stitch3D, volume_maps

__all__ = ["Segmenter", "segment"]

log = logging.getLogger("fastpose.inference")

#: the options of :meth:`Segmenter.segment` and their defaults (what :meth:`Segmenter.check_options` checks)
SEGMENT_DEFAULTS: Dict[str, Any] = dict(
    channel_axis=None, z_axis=None, channels=None, diameter=None, do_3D=False, anisotropy=None,
    stitch_threshold=0.0, augment=False, tile_overlap=0.1, normalize=True, invert=False, flow_threshold=0.4,
    cellprob_threshold=0.0, min_size=15, niter=None, return_flows=False)

#: an image: NumPy array (or anything ``np.asarray`` takes) of any integer or float dtype
ArrayLike = Any


class Segmenter:
    """A loaded model (or an ensemble) ready to segment many images.

    Parameters
    ----------
    model : str, path, torch.nn.Module or a list of them
        A bundled model name, a model file (fastpose's format or a Cellpose checkpoint), a network, or a
        list for an ensemble (maps averaged, as in the Cellpose paper; the members must share one spec).
    device : "auto", "cpu" or "cuda"
        Where the network and the core run ("auto": the GPU when usable).
    precision : "auto", "fp32", "fp16" or "bf16"
        Network precision on the GPU ("auto" = fp16 there, fp32 on the CPU).
    batch_size : int
        Tiles per network batch.
    backend : "auto", "torch", "compile", "onnxruntime" or "tensorrt"
        How the network runs (see :mod:`fastpose.deploy.backends`): "auto" (default) is the fastest runtime
        giving the same masks -- onnxruntime on the CPU (a cached ONNX export; ~2.9x eager PyTorch on 2 cores),
        eager PyTorch on a GPU; or eager PyTorch, ``torch.compile``, an ONNX export in onnxruntime, or a
        TensorRT engine (GPU; precision from ``precision``).  The ``backend`` attribute holds what it resolved to.
    max_memory : int, str or None
        Memory budget of 2D segmentation, bytes or a size such as ``"8GB"`` (None: 80% of the memory available
        when an image arrives; see :mod:`fastpose.inference.budget`).  Images whose whole-image path would
        exceed it are tiled from the original array within a bounded working set (the same maps); beyond what
        that needs, a ValueError gives the estimate and what to do.
    restore : str, path, torch.nn.Module, Segmenter or fastpose.restore.Restorer, optional
        A restoration model run on each channel before this model (:meth:`restore_prepared`; see
        :func:`segment`).

    Attributes
    ----------
    spec : ModelSpec
        How the network is run (tile, padding, outputs, rescaling, normalisation), from the model file.
    family : fastpose.methods.Family
        What is done with the maps (``spec.family``).
    """

    def __init__(self, model: Any = "nuclei", device: str = "auto", precision: str = "auto",
                 batch_size: int = 8, backend: str = "auto", max_memory: Any = None, restore: Any = None) -> None:
        from ..deploy.backends import check_backend, make_runner, resolve_backend

        check_backend(backend)
        device = checks.choice(device, "device", ("auto", "cpu", "cuda"))
        precision = checks.choice(precision, "precision", ("auto", "fp32", "fp16", "bf16"))
        batch_size = checks.integer(batch_size, "batch_size", lo=1, hi=checks.LIMITS["batch_size"])
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but PyTorch sees no CUDA GPU")
        use_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda") if use_gpu else torch.device("cpu")
        # the core runs on the GPU only when fastpose was built with CUDA; otherwise tensors come back
        self.core_device = "cuda" if use_gpu and cuda_available() else "cpu"
        self.precision = ("fp16" if use_gpu else "fp32") if precision == "auto" else precision
        self.batch_size = batch_size
        models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not models:
            raise ValueError("model list is empty: pass a model name, file or network, or a non-empty list")
        for i, m in enumerate(models):
            if not isinstance(m, (str, os.PathLike, torch.nn.Module)):
                where = f"model[{i}]" if isinstance(model, (list, tuple)) else "model"
                raise TypeError(f"{where} must be a bundled model name, a model file path or a torch.nn.Module, "
                                f"got {type(m).__name__}")
        self.nets: List[Any] = []
        self.metas: List[Dict[str, Any]] = []
        specs: List[ModelSpec] = []
        for m in models:
            if isinstance(m, torch.nn.Module):
                net, meta = m, dict(getattr(m, "fastpose_meta", {}) or {})
            else:
                net, meta = load_model(m, device=self.device)
            net = net.to(self.device).eval()
            self.nets.append(net)
            self.metas.append(meta)
            specs.append(spec_of(net, meta))
        for i, s in enumerate(specs[1:], 1):
            if s != specs[0]:
                diff = {k: (v, getattr(s, k)) for k, v in specs[0].to_dict().items() if s.to_dict()[k] != v}
                raise ValueError(f"ensemble members must share one model spec; member {i} differs from member 0 "
                                 f"in {diff}")
        self.spec: ModelSpec = specs[0]
        self.family = methods.get_family(self.spec.family)
        self.size_model = self.metas[0].get("size_model")
        #: the backend the network runs on ("auto" resolved for this device, precision and network)
        self.backend: str = resolve_backend(backend, self.device, self.precision, self.nets)
        #: the memory budget in bytes (None: a fraction of the available memory, per image)
        self.max_memory: Optional[int] = parse_memory(max_memory)
        #: what the tiled path calls per network: the module itself for "torch", else a backend runner
        self.runners = [make_runner(net, backend, self.device, self.batch_size, self.precision) for net in self.nets]
        #: the image-to-image model run on each channel before this one (``restore=``: a restoration model), or
        #: None; see :meth:`restore_prepared`
        self.restorer: Optional["Segmenter"] = None
        if restore is not None:
            if isinstance(getattr(restore, "segmenter", None), Segmenter):  # a fastpose.restore.Restorer
                restore = restore.segmenter
            pre = restore if isinstance(restore, Segmenter) else Segmenter(
                restore, device=device, precision=precision, batch_size=batch_size, backend=backend,
                max_memory=max_memory)
            if not pre.is_image_model:
                raise ValueError(f"restore= needs a restoration model (one image channel in, one image out), got "
                                 f"a {pre.spec.family!r} model with {pre.nchan} input channel(s) and outputs "
                                 f"{', '.join(pre.spec.outputs)}")
            if self.is_image_model:
                raise ValueError("model= is a restoration model (one image in, one image out), not a segmentation "
                                 "model: pass the segmentation model as model= and the restoration model as restore=")
            self.restorer = pre

    # ---- what the spec says ---------------------------------------------------------------------
    @property
    def nchan(self) -> int:
        """Input channels of the network."""
        return self.spec.nchan

    @property
    def bsize(self) -> int:
        """Tile side, pixels."""
        return self.spec.tile

    @property
    def diam_mean(self) -> float:
        """Cell diameter the network was trained at, pixels."""
        return float(self.spec.diam_mean)

    @property
    def is_image_model(self) -> bool:
        """Whether the network maps one image channel to one image (a restoration model): no flows, one output."""
        return self.spec.nchan == 1 and self.spec.n_outputs == 1 and not self.spec.flow_channels

    @property
    def estimates_diameter(self) -> bool:
        """Whether ``diameter=None`` estimates the diameter (a rescaling model with a size model and a family
        that knows how) rather than meaning "no resizing"."""
        return bool(self.spec.rescale_by_diameter and self.size_model and self.family.estimate_diameter)

    def update_settings(self, **settings: Any) -> Dict[str, Any]:
        """Override the model's own inference settings (``spec.settings``, from the model file) for this
        segmenter, e.g. ``update_settings(object_size=20)`` for a Cellulus model; checked by the family
        (:attr:`fastpose.methods.Family.check_settings`).  ValueError for a family without settings, an
        unknown key or a bad value (the segmenter is then unchanged).  Returns the settings now in force."""
        check = self.family.check_settings
        if check is None:
            raise ValueError(f"a {self.family.name!r} model has no inference settings to override (got "
                             f"{', '.join(sorted(settings)) or 'none'})")
        new = check(settings, self.spec.settings)
        self.spec = dataclasses.replace(self.spec, settings=new)
        return dict(self.spec.settings)

    # ---- building blocks --------------------------------------------------------------------------
    def run_net(self, imgs: torch.Tensor, augment: bool = False,
                tile_overlap: float = 0.1) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Tiled network outputs of a batch [B, C, Y, X] of equally sized normalised images: (maps [B, n_outputs,
        Y, X] float32 on the core's device, styles [B, S] or None); see :func:`.tiled.run_tiled`, or the family's own
        ``run_net`` when it has one (networks the generic tiling cannot run; see :class:`fastpose.methods.Family`)."""
        if self.family.run_net is not None:
            return self.family.run_net(self, imgs, augment, tile_overlap)
        return run_tiled(self.runners, imgs, self.spec, net_device=self.device,
                         core_device=torch.device(self.core_device), batch_size=self.batch_size,
                         precision=self.precision, augment=augment, tile_overlap=tile_overlap)

    def prepare(self, image: ArrayLike, channel_axis: Optional[int] = None, z_axis: Optional[int] = None,
                channels: Optional[Sequence[int]] = None, volume: bool = False, normalize: Union[bool, str] = True,
                invert: bool = False) -> np.ndarray:
        """Channels first (float32 [C, Y, X] or [C, Z, Y, X] with the model's channel count), normalised as the
        model file says (``normalize=True``), per block (``"tile"``) or not at all (False); ``invert`` inverts
        in addition to the model's own setting.

        A 2D image whose whole-image path would exceed the memory budget (``max_memory``) comes back as a
        :class:`~fastpose.transforms.LazyImage` instead: the same values, read block by block from ``image``
        (see :mod:`.budget`); the other methods take either."""
        norm = self.spec.normalize
        lower, upper, inv = float(norm["lower"]), float(norm["upper"]), bool(invert or norm.get("invert", False))
        if not volume:
            src, _ = channel_view(image, channel_axis, z_axis, channels, self.nchan, volume)
            plan = self.memory_plan(src.shape[-2:])
            if plan.whole > plan.budget:
                plan.choose(bounded_ok=normalize != "tile", why_not="normalize='tile' needs the whole image")
                return prepare_lazy(image, channel_axis, channels, self.nchan, normalize, lower, upper, inv)
        x = to_channels_first(image, channel_axis, z_axis, channels, self.nchan, volume)
        return normalize_image(x, normalize, lower, upper, inv)

    def memory_plan(self, shape: Sequence[int], rescale: float = 1.0, augment: bool = False,
                    tile_overlap: float = 0.1, prepared: bool = False) -> MemoryPlan:
        """Estimated peak memory of the whole-image and the bounded 2D paths for an image of spatial ``shape``
        against this segmenter's budget (see :func:`.budget.plan_2d`)."""
        return plan_2d(tuple(int(s) for s in shape[-2:]), nchan=self.nchan, n_outputs=self.spec.n_outputs,
                       tile=self.spec.tile, padding=self.spec.padding, rescale=rescale, augment=augment,
                       tile_overlap=tile_overlap, batch_size=self.batch_size, prepared=prepared,
                       budget=resolve_budget(self.max_memory))

    def maps(self, x: Any, rescale: float = 1.0, augment: bool = False,
             tile_overlap: float = 0.1) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Maps of a prepared image [C, Y, X] (or a batch [B, C, Y, X] of equal size; a NumPy array or a tensor on
        any device) resized by ``rescale`` for the network and back: (maps [(B,) n_outputs, Y, X] on the core's device, styles [(B,) S] or None).

        A :class:`~fastpose.transforms.LazyImage`, or images whose whole-image path would exceed the memory
        budget, go through the bounded path (:meth:`maps_bounded`; maps on the CPU)."""
        if isinstance(x, LazyImage):
            return self.maps_bounded(x, rescale, augment, tile_overlap)
        plan = self.memory_plan(x.shape[-2:], rescale, augment, tile_overlap, prepared=True)
        n = 1 if x.ndim == 3 else int(x.shape[0])
        if plan.whole * n > plan.budget:
            if x.ndim == 3:
                if torch.is_tensor(x):  # the bounded path cuts tiles from a host array
                    x = x.detach().float().cpu().numpy()
                return self.maps_bounded(x, rescale, augment, tile_overlap)
            parts = [self.maps(xi, rescale, augment, tile_overlap) for xi in x]  # one image at a time
            st = None if parts[0][1] is None else torch.stack([p[1] for p in parts])
            return (parts[0][0][None] if n == 1 else torch.stack([p[0] for p in parts])), st
        single = x.ndim == 3
        t = x if torch.is_tensor(x) else torch.from_numpy(x)
        t = (t[None] if single else t).to(self.device, torch.float32)
        Ly, Lx = x.shape[-2:]
        if rescale != 1.0:
            t = resize(t, scaled_size((Ly, Lx), (rescale, rescale)))
        y, st = self.run_net(t, augment, tile_overlap)
        if rescale != 1.0:
            y = resize(y, (Ly, Lx))
        if single:
            return y[0], (None if st is None else st[0])
        return y, st

    def channelwise(self, x: torch.Tensor, diameter: Optional[float] = None, tile_overlap: float = 0.1,
                    normalize: bool = True, scale: str = "input") -> torch.Tensor:
        """Run this one-channel image model (:attr:`is_image_model`) on every channel of a batch ``x``
        [B, C, Y, X] (a tensor on any device): each channel normalised to the model's percentiles
        (``normalize``), resized by ``diam_mean / diameter``, tiled through the network and resized back
        (``scale="input"``) or left at the network's scale (``"model"``).  Constant channels (an absent nuclear
        channel) are passed through unchanged.  Returns the first output map per channel, float32 [B, C, Y', X']
        on the core's device."""
        if x.ndim != 4:
            raise ValueError(f"channelwise expects a batch [B, C, Y, X], got shape {tuple(x.shape)}")
        norm = self.spec.normalize
        r = self.spec.rescale(diameter)
        Ly, Lx = int(x.shape[-2]), int(x.shape[-1])
        out: List[torch.Tensor] = []
        for c in range(x.shape[1]):
            xc = x[:, c:c + 1].to(self.device, torch.float32)
            flat = xc.reshape(xc.shape[0], -1)
            constant = (flat.amax(1) - flat.amin(1)) <= 0
            if normalize:
                xc = normalize_tensor(xc, float(norm["lower"]), float(norm["upper"]), bool(norm.get("invert")))
            if scale == "model" and r != 1.0:
                y, _ = self.run_net(resize(xc, scaled_size((Ly, Lx), (r, r))), False, tile_overlap)
            else:
                y, _ = self.maps(xc, r, False, tile_overlap)
            y = y[:, :1].float()
            if bool(constant.any()):  # passed through as they came in (resized to the output when scale="model")
                keep = resize(x[:, c:c + 1].to(y.device, torch.float32), tuple(y.shape[-2:]))
                y = torch.where(constant.to(y.device)[:, None, None, None], keep, y)
            out.append(y.to(torch.device(self.core_device)))
        return torch.cat(out, 1)

    def restore_prepared(self, x: Any, diameter: Optional[float], tile_overlap: float = 0.1,
                         volume: bool = False) -> Tuple[Any, Any]:
        """``(network input, restored)`` of a prepared image (2D [C, Y, X], a batch [B, C, Y, X], or with
        ``volume`` [C, Z, Y, X]): each channel through the restoration model (``restore=``) at ``diameter``,
        then normalised again for this model (Cellpose re-normalises restored images).  2D results are tensors
        on the device (segmentation continues there); volumes come back as NumPy arrays.  Without a restoration
        model: ``(x, None)``."""
        if self.restorer is None:
            return x, None
        if isinstance(x, LazyImage):
            raise ValueError("restore= is not supported for images above the memory budget (max_memory): restore "
                             "them with fastpose.restore in parts, or raise the budget")
        norm = self.spec.normalize
        lo, hi = float(norm["lower"]), float(norm["upper"])
        if volume:  # plane by plane: [C, Z, Y, X] -> Z batches of [C, Y, X]
            planes = torch.from_numpy(np.ascontiguousarray(x)).permute(1, 0, 2, 3)
            step = max(1, self.batch_size)
            rest = [self.restorer.channelwise(planes[i:i + step], diameter, tile_overlap).cpu()
                    for i in range(0, planes.shape[0], step)]
            r = torch.cat(rest).float()
            xin = normalize_tensor(r, lo, hi)
            return (xin.permute(1, 0, 2, 3).contiguous().numpy(), r.permute(1, 0, 2, 3).contiguous().numpy())
        t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
        single = t.ndim == 3
        r = self.restorer.channelwise(t[None] if single else t, diameter, tile_overlap)
        xin = normalize_tensor(r, lo, hi).to(self.device)
        return (xin[0], r[0]) if single else (xin, r)

    def maps_bounded(self, x: Any, rescale: float = 1.0, augment: bool = False,
                     tile_overlap: float = 0.1) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """:meth:`maps` of one prepared image (a :class:`~fastpose.transforms.LazyImage` or a float32 [C, Y, X]
        array) by the bounded path (:func:`.tiled.run_tiled_bounded`): the same maps, float32 [n_outputs, Y, X]
        in one preallocated CPU tensor; ValueError when even that exceeds the memory budget."""
        if self.family.run_net is not None:
            raise ValueError(f"this {self.family.name} model runs its network itself (not through the generic "
                             "tiles), which has no bounded-memory path: the image is above the memory budget "
                             "(max_memory); raise the budget or segment the image in parts")
        plan = self.memory_plan(x.shape[-2:], rescale, augment, tile_overlap, prepared=True)
        lazy = isinstance(x, LazyImage)
        if rescale != 1.0:  # not tiled yet: the whole-image path, if the budget allows it
            if plan.whole + (x.nbytes if lazy else 0) > plan.budget:
                plan.choose(bounded_ok=False, why_not=f"resizing by {rescale:.3g} (for the diameter) is done on "
                                                      "the whole image; diameter=0 segments it unresized")
            return self.maps(np.asarray(x) if lazy else x, rescale, augment, tile_overlap)
        if plan.bounded + (0 if lazy else x.nbytes) > plan.budget:
            plan.choose(bounded_ok=True, whole_ok=False)
        y, st = run_tiled_bounded(self.runners, x, self.spec, net_device=self.device, batch_size=self.batch_size,
                                  precision=self.precision, augment=augment, tile_overlap=tile_overlap)
        return torch.from_numpy(y), st

    def recover(self, maps: torch.Tensor, style: Optional[torch.Tensor], rescale: float, diameter: Optional[float],
                options: Mapping[str, Any], return_flows: bool) -> SegmentResult:
        """The family's post-processing of one image's maps (runs on the core's device), with the model's own
        settings (``spec.settings``) updated by the options the family reads."""
        opts = {**self.spec.settings, **methods.options_for(self.family, options)}
        fields = self.family.postprocess(maps, rescale=rescale, options=opts, return_maps=return_flows)
        styles = None if style is None else style.detach().float().cpu().numpy()
        return SegmentResult(styles=styles, diameter=diameter, **fields)

    def segment_prepared(self, x: np.ndarray, diameter: Optional[float], augment: bool = False,
                         tile_overlap: float = 0.1, options: Mapping[str, Any] = (),
                         return_flows: bool = False) -> SegmentResult:
        """Segment a prepared 2D image [C, Y, X] (or a :class:`~fastpose.transforms.LazyImage`) at ``diameter``
        (None or 0: no resizing), by the whole-image path or, above the memory budget, the bounded one."""
        rescale = self.spec.rescale(diameter)
        maps, st = self.maps(x, rescale, augment, tile_overlap)
        return self.recover(maps, st, rescale, diameter, dict(options), return_flows)

    def estimate_diameter(self, x: np.ndarray, augment: bool = False, tile_overlap: float = 0.1) -> float:
        """The family's size estimate for a prepared image [C, Y, X] (Cellpose: style -> diameter regression,
        then the median diameter of a first segmentation).  Needs a model with a size model."""
        if self.family.estimate_diameter is None:
            raise ValueError(f"the {self.family.name} family has no size estimate: pass diameter=")
        return float(self.family.estimate_diameter(self, x, augment, tile_overlap))

    def _segment_3d(self, x: np.ndarray, diameter: Optional[float], anisotropy: Optional[float], augment: bool,
                    tile_overlap: float, options: Mapping[str, Any], return_flows: bool) -> SegmentResult:
        rescale = self.spec.rescale(diameter)
        maps, style = volume_maps(lambda s: self.run_net(s, augment, tile_overlap), x, self.spec, rescale=rescale,
                                  anisotropy=anisotropy, batch_size=self.batch_size, net_device=self.device,
                                  core_device=torch.device(self.core_device))
        return self.recover(maps, style, rescale, diameter, options, return_flows)

    @staticmethod
    def check_options(**options: Any) -> Dict[str, Any]:
        """The options of :meth:`segment` checked (:mod:`fastpose.checks`) and normalised; ValueError naming the
        parameter, what was given and what is allowed, for settings that mean nothing.  Options not given keep
        the defaults of :meth:`segment`; unknown names are a TypeError.  Run once, at the public boundary."""
        unknown = set(options) - set(SEGMENT_DEFAULTS)
        if unknown:
            raise TypeError(f"unexpected arguments {sorted(unknown)}; known: {', '.join(SEGMENT_DEFAULTS)}")
        o = {**SEGMENT_DEFAULTS, **options}
        for k in ("do_3D", "augment", "invert", "return_flows"):
            o[k] = checks.boolean(o[k], k)
        o["channel_axis"] = checks.axis(o["channel_axis"], "channel_axis")
        o["z_axis"] = checks.axis(o["z_axis"], "z_axis")
        o["channels"] = checks.integers(o["channels"], "channels", lo=0, none_ok=True, min_len=1)
        o["diameter"] = checks.number(o["diameter"], "diameter", lo=0.0, hi=checks.LIMITS["diameter"],
                                      none_ok=True)
        o["anisotropy"] = checks.number(o["anisotropy"], "anisotropy", lo=0.0, lo_open=True,
                                        hi=checks.LIMITS["anisotropy"], none_ok=True)
        o["stitch_threshold"] = checks.probability(o["stitch_threshold"], "stitch_threshold")
        o["tile_overlap"] = checks.number(o["tile_overlap"], "tile_overlap", lo=0.0, hi=0.5)
        o["normalize"] = checks.choice(o["normalize"], "normalize", (True, False, "tile"))
        o["flow_threshold"] = checks.number(o["flow_threshold"], "flow_threshold", lo=0.0, none_ok=True)
        o["cellprob_threshold"] = checks.number(o["cellprob_threshold"], "cellprob_threshold")
        o["min_size"] = checks.integer(o["min_size"], "min_size", lo=0)
        o["niter"] = checks.integer(o["niter"], "niter", lo=1, hi=checks.LIMITS["niter"], none_ok=True)
        return o

    def check_size(self, shape: Sequence[int], diameter: Optional[float], anisotropy: Optional[float] = None,
                   volume: bool = False) -> None:
        """ValueError, before anything is allocated, when ``diameter`` (and in 3D ``anisotropy``) would resize an
        image of spatial ``shape`` beyond ``LIMITS["image_pixels"]`` or beyond this machine's memory (see
        :func:`fastpose.checks.resized_shape`): the sentence names the size the diameter implies."""
        r = self.spec.rescale(diameter)
        if r == 1.0 and not (volume and anisotropy):
            return
        why = f"diameter={diameter:g} (the model's cells are {self.diam_mean:g} px)"
        # float32 input channels + output maps, and a copy of each while resizing
        bpp = 4 * 2 * (self.nchan + self.spec.n_outputs)
        if volume and len(shape) == 3:
            za = 1.0 if anisotropy is None else anisotropy
            checks.resized_shape(shape, (r * za, r, r), why + (f" with anisotropy={za:g}" if anisotropy else ""),
                                 bytes_per_pixel=bpp)
        else:
            checks.resized_shape(shape[-2:], (r, r), why, bytes_per_pixel=bpp)

    def check_input_size(self, image: Any, o: Mapping[str, Any]) -> None:
        """:meth:`check_size` on the spatial axes of a raw input (axes as named; skipped when they do not fit,
        :func:`fastpose.transforms.to_channels_first` then reports them)."""
        if o["diameter"] is None or not hasattr(image, "shape"):
            return
        shape = tuple(int(n) for n in image.shape)
        if not 2 <= len(shape) <= 4 or any(not -len(shape) <= a < len(shape)
                                           for a in (o["channel_axis"], o["z_axis"]) if a is not None):
            return
        named = [a % len(shape) for a in (o["channel_axis"], o["z_axis"]) if a is not None]
        rest = tuple(n for i, n in enumerate(shape) if i not in named)
        if len(rest) != 2:
            return
        if o["do_3D"] and o["z_axis"] is not None:
            self.check_size((shape[o["z_axis"] % len(shape)], *rest), o["diameter"], o["anisotropy"], True)
        else:
            self.check_size(rest, o["diameter"])

    # ---- public -------------------------------------------------------------------------------
    def segment(self, image: ArrayLike, *, channel_axis: Optional[int] = None, z_axis: Optional[int] = None,
                channels: Optional[Sequence[int]] = None, diameter: Optional[float] = None, do_3D: bool = False,
                anisotropy: Optional[float] = None, stitch_threshold: float = 0.0, augment: bool = False,
                tile_overlap: float = 0.1, normalize: Union[bool, str] = True, invert: bool = False,
                flow_threshold: float = 0.4, cellprob_threshold: float = 0.0, min_size: int = 15,
                niter: Optional[int] = None, return_flows: bool = False) -> SegmentResult:
        """Segment one image; see :func:`segment` for the parameters."""
        o = self.check_options(channel_axis=channel_axis, z_axis=z_axis, channels=channels, diameter=diameter,
                               do_3D=do_3D, anisotropy=anisotropy, stitch_threshold=stitch_threshold,
                               augment=augment, tile_overlap=tile_overlap, normalize=normalize, invert=invert,
                               flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold,
                               min_size=min_size, niter=niter, return_flows=return_flows)
        return self.segment_checked(image, o)

    def segment_checked(self, image: ArrayLike, o: Mapping[str, Any]) -> SegmentResult:
        """:meth:`segment` with options ``o`` already through :meth:`check_options` (the streaming path's entry,
        so each image is not checked again)."""
        channel_axis, z_axis, channels, diameter = o["channel_axis"], o["z_axis"], o["channels"], o["diameter"]
        do_3D, anisotropy, stitch_threshold, augment = o["do_3D"], o["anisotropy"], o["stitch_threshold"], o["augment"]
        tile_overlap, normalize, invert = o["tile_overlap"], o["normalize"], o["invert"]
        return_flows = o["return_flows"]
        self.check_input_size(image, o)
        vol3 = do_3D or stitch_threshold > 0
        x = self.prepare(image, channel_axis, z_axis, channels, vol3, normalize, invert)
        options = {k: o[k] for k in ("flow_threshold", "cellprob_threshold", "min_size", "niter")}
        x_raw = x
        if diameter is None:
            if not self.estimates_diameter:
                diameter = 0.0  # size-invariant networks, or no size model: no resizing
            else:
                # with a restoration model: estimated on the image restored unresized, then restored again below
                xr, _ = self.restore_prepared(x, None, tile_overlap, vol3)
                plane = xr if xr.ndim == 3 else xr[:, xr.shape[1] // 2]
                diameter = self.estimate_diameter(plane, augment, tile_overlap)
                log.info("estimated diameter: %.1f px", diameter)
                self.check_size(x.shape[1:], diameter, anisotropy, do_3D)
        x, restored = self.restore_prepared(x_raw, diameter, tile_overlap, vol3)
        res = self._segment_restored(x, diameter, anisotropy, do_3D, stitch_threshold, augment, tile_overlap,
                                     options, return_flows)
        if restored is not None:
            res.outputs["restored"] = restored if isinstance(restored, np.ndarray) else restored.cpu().numpy()
        return res

    def _segment_restored(self, x: Any, diameter: float, anisotropy: Optional[float], do_3D: bool,
                          stitch_threshold: float, augment: bool, tile_overlap: float, options: Dict[str, Any],
                          return_flows: bool) -> SegmentResult:
        if do_3D:
            return self._segment_3d(x, diameter, anisotropy, augment, tile_overlap, options, return_flows)
        if stitch_threshold > 0:
            planes = [self.segment_prepared(x[:, z], diameter, augment, tile_overlap, options, return_flows)
                      for z in range(x.shape[1])]
            masks = stitch3D(np.stack([p.masks for p in planes]), stitch_threshold)
            styles = None if any(p.styles is None for p in planes) else np.mean([p.styles for p in planes], axis=0)
            res = SegmentResult(masks=masks, diameter=diameter, styles=styles)
            if return_flows:
                res.cellprob = np.stack([p.cellprob for p in planes])
                res.flows = np.stack([p.flows for p in planes], axis=1)
            return res
        return self.segment_prepared(x, diameter, augment, tile_overlap, options, return_flows)

    def segment_many(self, images: Iterable[Any], *, channel_axis: Optional[int] = None,
                     channels: Optional[Sequence[int]] = None, diameter: Optional[float] = None,
                     augment: bool = False, tile_overlap: float = 0.1, normalize: Union[bool, str] = True,
                     invert: bool = False, flow_threshold: float = 0.4, cellprob_threshold: float = 0.0,
                     min_size: int = 15, niter: Optional[int] = None, return_flows: bool = False,
                     return_errors: bool = False, **kwargs: Any) -> Iterator[Any]:
        """Segment a stream of images for throughput, yielding results in input order.

        Items are arrays, or zero-argument callables that load one (called on worker threads ahead of the
        network, so reading overlaps computing).  Consecutive 2D images of the same shape are pooled so their
        tiles share network batches; mask recovery of one group overlaps the network of the next (see
        :mod:`.streaming`).  3D options (``z_axis``, ``do_3D``, ``stitch_threshold``) and an estimated diameter
        run one image at a time.  With ``return_errors=True`` an item that cannot be loaded or segmented
        yields its exception instead of a result, and the stream goes on.
        """
        from .streaming import stream

        params = self.check_options(channel_axis=channel_axis, channels=channels, diameter=diameter,
                                    augment=augment, tile_overlap=tile_overlap, normalize=normalize, invert=invert,
                                    flow_threshold=flow_threshold, cellprob_threshold=cellprob_threshold,
                                    min_size=min_size, niter=niter, return_flows=return_flows, **kwargs)
        return_errors = checks.boolean(return_errors, "return_errors")
        if isinstance(images, (str, bytes, np.ndarray)) or not isinstance(images, Iterable):
            raise TypeError(f"images must be an iterable of images (arrays or loaders), got {type(images).__name__}"
                            + (" (for one image call segment)" if isinstance(images, np.ndarray) else ""))
        return stream(self, images, params, return_errors)

    def group_size(self, shape: Tuple[int, ...]) -> int:
        """Images of ``shape`` per network call so their tiles fill about one batch (at least one image)."""
        from ..core.tiles import plan_tiles

        ly, lx = (s + self.spec.padding(s) for s in shape[-2:])
        return max(1, self.batch_size // plan_tiles(ly, lx, self.spec.tile).count)


def segment(images: Union[ArrayLike, Sequence[ArrayLike]], model: Any = "nuclei", *, device: str = "auto",
            precision: str = "auto", batch_size: int = 8, backend: str = "auto", max_memory: Any = None,
            restore: Any = None, **kwargs: Any) -> Union[SegmentResult, List[SegmentResult]]:
    """Segment one image or a list of images.

    Parameters
    ----------
    images : array or list of arrays
        2D (Y, X), multichannel 2D (with ``channel_axis``), or 3D (with ``z_axis``) images of any
        integer or float dtype.
    model : str, path, module, list or Segmenter
        Bundled model name, model file (fastpose or Cellpose checkpoint), network, an ensemble list, or a
        :class:`Segmenter` already loaded.
    device, precision, batch_size, backend, max_memory
        See :class:`Segmenter` (``max_memory``: the memory budget, bytes or "8GB"; ignored when ``model`` is
        a Segmenter, which has its own).
    restore : str, path or module, optional
        A restoration model (``"oneclick_nuclei"``, a Cellpose3 file such as ``denoise_cyto3``, see
        :mod:`fastpose.restore`) run on each channel before segmentation, at the same ``diameter``, on the same
        device; the restored image comes back in ``result.outputs["restored"]`` (float32 [C, Y, X], the
        network's channels).  With ``diameter=None`` the diameter is estimated on the image restored unresized,
        then the image is restored again at that diameter.
    channel_axis, z_axis : int, optional
        Which axis holds channels / Z.  Default: none (a plain 2D image).
    channels : sequence of int, optional
        Input channels fed to the network, in order (default the first ones); a missing second channel
        is zero.
    diameter : float or None
        Typical cell diameter in pixels; the image is resized so cells match the model's training size.
        None (default) estimates it with the model's size model (U-Net model files that have one; Cellpose's
        two-step estimate), and means no resizing for models without one and for ViTs; 0: no resizing.
    do_3D : bool
        Run the 2D network on XY, ZY and ZX slices, average the maps and track in 3D.
    anisotropy : float, optional
        Z sampling relative to XY (e.g. 2.0 when Z steps are twice the pixel size), 3D only.
    stitch_threshold : float
        > 0: segment planes in 2D and link them across Z by IoU above this value.
    augment : bool
        Flip test-time augmentation with 50% tile overlap.
    tile_overlap : float
        Tile overlap fraction without ``augment`` (default 0.1).
    normalize : bool or "tile"
        Percentile normalisation per channel with the model file's percentiles (1st/99th for Cellpose models)
        (True), per block of ~128 pixels smoothly interpolated, for unevenly lit images ("tile"), or none (False).
    invert : bool
        Invert intensities after normalisation (in addition to the model file's own setting).
    flow_threshold, cellprob_threshold, min_size, niter
        Mask recovery settings (see :func:`fastpose.core.compute_masks`); niter None: 200 at the model's
        scale.
    return_flows : bool
        Also return flows and cell probabilities in the result.

    Every parameter is checked once, here, before any work (:meth:`Segmenter.check_options`,
    :mod:`fastpose.checks`): a value of the wrong kind or out of range (NaN, a negative diameter, ``niter=0``, a
    string for a bool, ...) is a ValueError naming the parameter, what was given and what is allowed; an unknown
    keyword is a TypeError.  The work is bounded for every accepted value: ``diameter`` is at most
    ``LIMITS["diameter"]``, a diameter that would resize the image beyond ``LIMITS["image_pixels"]`` or this
    machine's memory is refused before anything is allocated, and the default ``niter`` never exceeds the
    image's diagonal (nor ``LIMITS["niter"]``).  Images holding NaN or Inf are a ValueError.

    Returns
    -------
    SegmentResult or list of SegmentResult
    """
    if isinstance(model, Segmenter) and restore is not None:
        raise ValueError("model is a Segmenter already: pass restore= when creating it (Segmenter(..., restore=...))")
    seg = model if isinstance(model, Segmenter) else Segmenter(model, device, precision, batch_size, backend,
                                                               max_memory, restore)
    if isinstance(images, (list, tuple)):
        return list(seg.segment_many(images, **kwargs))
    return seg.segment(images, **kwargs)
