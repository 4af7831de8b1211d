"""Cellulus inference: the noise ensemble, tiled over valid-convolution windows, then foreground, mean-shift and
post-processing.

From funkelab/cellulus (main: ``models/unet.py`` infer mode, ``predict.py``, ``detect.py``, ``segment.py``,
``utils/mean_shift.py``, ``utils/misc.py``):

1. **Predict** (:func:`predict`).  The image, reflect-padded by the network's 8 px context on each side, is cut
   into input windows of at most ``crop`` (252) px, each giving its side less 16 output pixels; the windows
   overlap in the input so their outputs tile the image (the authors' gunpowder ``Scan`` does the same with
   windows of exactly 252 px; fastpose splits each side into equal windows, less work for the same outputs).  Each window runs
   ``2 * n_noise`` times (32): ``n_noise`` with each salt value (0.5, 1.0), each time ``p_salt`` (1%) of the
   window's elements (all channels) set to that value.  Out: the mean offsets and the population std over the
   predictions, summed over the D offsets.  Window origins are even, so the stitched output is what one
   forward pass over the whole padded image would give (the max-pool grid is the same).
2. **Detect** (:func:`foreground`, :func:`cluster`).  Foreground = ``std < Otsu(std)`` (the paper's high noise
   variance = background).  The embeddings (mean offset + pixel coordinate) of the foreground pixels are
   clustered by :func:`fastpose.core.mean_shift` (flat kernel, bandwidth ``0.5 * object_size``), fitted on a
   random ``fit_fraction`` (10%) of them, then every foreground pixel is assigned; labels 1..K.
3. **Segment** (:func:`grow_shrink`, :func:`refine_nuclei`, :func:`size_filter`).  ``"cell"``: ``exp =
   EDT(seg == 0) < grow``, then ``seg[EDT(exp) < shrink] = 0`` (labels are never grown: this removes about
   ``shrink - grow`` px of halo facing the background and keeps edges that face a neighbour within
   ``grow``-ish px); ``"nucleus"``: per object, Otsu's threshold of the raw channel 0 inside it, the pixels
   above it, holes filled.  Then connected components (full connectivity), objects smaller than ``min_size``
   dropped (default ``int(0.1 pi s^2 / 4)``), labels renumbered 1..N (:func:`fastpose.labels.relabel_sequential`).

Where fastpose differs from the authors' code, on purpose: mean-shift seeds from bins by default (``seeds``
setting; the code seeds from every fitted point); Otsu's threshold is computed here in NumPy (the same
256-bin rule as scikit-image's ``threshold_otsu``, which fastpose does not depend on); windows that overlap are
stitched by keeping the later window's outputs (each window's noise is its own, as in the code).

:func:`segment` runs all of it on a 2D image or a 3D volume with a Cellulus model (file or network) and
settings overrides: the family's own entry point.  :func:`fastpose.segment` runs 2D models through the common
data path (:mod:`fastpose.methods.cellulus`).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import checks
from ..labels import as_labels, relabel_sequential
from .network import CONTEXT, SHRINK, CellulusNet, valid_size
from .settings import bandwidth_of, check_settings, min_object_size

__all__ = ["predict", "embedding_maps", "otsu_threshold", "foreground", "cluster", "grow_shrink", "refine_nuclei",
           "size_filter", "connected_components", "postprocess_maps", "segment"]

log = logging.getLogger("fastpose.cellulus")


# ---- 1. predict ------------------------------------------------------------------------------------------------

def _reflect_pad(x: torch.Tensor, pads: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """Reflect-pad the spatial axes of ``x`` [C, *S] by ``pads[k] = (before, after)``; pads wider than the image
    reflect repeatedly (a single pixel is repeated)."""
    for k, (a, b) in enumerate(pads):
        ax = k + 1
        while a > 0 or b > 0:
            n = int(x.shape[ax])
            if n == 1:
                x = torch.cat([x.narrow(ax, 0, 1)] * a + [x] + [x.narrow(ax, 0, 1)] * b, dim=ax)
                break
            sa, sb = min(a, n - 1), min(b, n - 1)
            parts = []
            if sa:
                parts.append(x.narrow(ax, 1, sa).flip(ax))
            parts.append(x)
            if sb:
                parts.append(x.narrow(ax, n - 1 - sb, sb).flip(ax))
            x = torch.cat(parts, dim=ax)
            a, b = a - sa, b - sb
    return x


def _windows(size: int, crop: int) -> Tuple[int, List[int], int]:
    """For an image side of ``size``: (input window side, output window origins, extra padding after) so that
    windows of that side at those (even) origins in the padded image give outputs covering ``size``.

    ``crop`` is the largest window; the side is split into as few windows as that allows, of equal size (a
    256 px side takes two windows of 144 px rather than two of 252 px: a third of the work)."""
    even = size + size % 2
    n = -(-even // (crop - SHRINK))
    w = valid_size(-(-even // n) + SHRINK)
    w += w % 2
    out = w - SHRINK
    if n == 1:
        return w, [0], out - size
    starts = list(range(0, even - out, out)) + [even - out]
    return w, sorted(set(starts)), even - size


#: on the CPU, at most this many input pixels (voxels) per network call: larger batches of large windows run at
#: half the speed (the activations leave the caches)
CPU_BATCH_PIXELS = 1 << 17


def predict(nets: Union[torch.nn.Module, Sequence[torch.nn.Module]], x: Any, *, crop: int = 252,
            n_noise: int = 16, salt_values: Sequence[float] = (0.5, 1.0), p_salt: float = 0.01,
            batch_size: int = 8, seed: int = 0, device: Any = None, precision: str = "fp32"
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean offsets and summed std of the noise ensemble over a normalised image (step 1 of the module docstring).

    Parameters
    ----------
    nets : CellulusNet or a list of them
        An ensemble pools its members' predictions (``2 * n_noise`` each).
    x : array or tensor [C, *S]
        The normalised image, channels first (2D: [C, Y, X]; 3D: [C, Z, Y, X]).
    crop : int
        Largest input window side (even, >= 18); each image side is split into as few windows as that allows, of
        equal size, and smaller images run as one window of their own size.
    n_noise, salt_values, p_salt
        Predictions per salt value, the values, and the fraction of elements salted per prediction;
        ``n_noise=0`` gives one clean prediction (std 0).
    batch_size : int
        Noisy copies per network call (on the CPU at most :data:`CPU_BATCH_PIXELS` input pixels per call).
    seed : int
        Seed of the noise (on the device of the network).
    device : torch device, optional
        Where the networks run (default: where their weights are).
    precision : "fp32", "fp16" or "bf16"
        Autocast on a CUDA device.

    Returns
    -------
    (mean [D, *S], std [*S]) float32 tensors on ``device``.
    """
    nets = list(nets) if isinstance(nets, (list, tuple)) else [nets]
    if not nets:
        raise ValueError("no network given")
    for n in nets:
        if not isinstance(n, CellulusNet):
            raise ValueError(f"predict needs Cellulus networks, got {type(n).__name__}")
    ndim, nchan = nets[0].ndim, nets[0].in_channels
    if any(n.ndim != ndim or n.in_channels != nchan for n in nets):
        raise ValueError("ensemble members must agree on dimensions and input channels")
    crop = checks.integer(crop, "crop", lo=18, hi=8192)
    if crop % 2:
        raise ValueError(f"crop must be even, got {crop}")
    n_noise = checks.integer(n_noise, "n_noise", lo=0, hi=4096)
    p_salt = checks.probability(p_salt, "p_salt")
    salts = [checks.number(v, "salt value") for v in salt_values]
    batch_size = checks.integer(batch_size, "batch_size", lo=1, hi=checks.LIMITS["batch_size"])
    seed = checks.integer(seed, "seed", lo=0)
    precision = checks.choice(precision, "precision", ("fp32", "fp16", "bf16"))
    dev = torch.device(device) if device is not None else next(nets[0].parameters()).device
    t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != ndim + 1 or int(t.shape[0]) != nchan:
        axes = "Y, X" if ndim == 2 else "Z, Y, X"
        raise ValueError(f"this {ndim}D Cellulus network takes images [C={nchan}, {axes}] (channels first), got "
                         f"shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"image is empty (shape {tuple(t.shape)})")
    t = t.to(dev, torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise ValueError("image contains NaN or Inf")
    shape = tuple(int(s) for s in t.shape[1:])
    plans = [_windows(s, crop) for s in shape]
    xp = _reflect_pad(t, [(CONTEXT, CONTEXT + extra) for _, _, extra in plans])
    out_shape = tuple(s + extra for s, (_, _, extra) in zip(shape, plans))
    mean = torch.zeros((ndim, *out_shape), dtype=torch.float32, device=dev)
    std = torch.zeros(out_shape, dtype=torch.float32, device=dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    jobs = [(v, k) for v in salts for k in range(n_noise)] if n_noise > 0 else [(None, 0)]
    amp = dev.type == "cuda" and precision != "fp32"
    adt = torch.float16 if precision == "fp16" else torch.bfloat16
    if dev.type == "cpu":
        batch_size = max(1, min(batch_size, CPU_BATCH_PIXELS // int(np.prod([w for w, _, _ in plans]))))
    for origin in itertools.product(*[starts for _, starts, _ in plans]):
        sl_in = tuple(slice(o, o + w) for o, (w, _, _) in zip(origin, plans))
        win = xp[(slice(None),) + sl_in]
        preds: List[torch.Tensor] = []
        with torch.inference_mode():
            for i in range(0, len(jobs), batch_size):
                chunk = jobs[i:i + batch_size]
                xb = win.unsqueeze(0).repeat(len(chunk), *([1] * win.ndim))
                for j, (v, _) in enumerate(chunk):
                    if v is not None:
                        salt = torch.rand(xb[j].shape, generator=gen, device=dev) <= p_salt
                        xb[j][salt] = v
                for net in nets:
                    with torch.autocast(dev.type, dtype=adt, enabled=amp):
                        preds.append(net(xb).float())
            allp = torch.cat(preds)
            s, m = torch.std_mean(allp, dim=0, unbiased=False)
        sl_out = tuple(slice(o, o + int(m.shape[k + 1])) for k, o in enumerate(origin))
        mean[(slice(None),) + sl_out] = m
        std[sl_out] = s.sum(0)
    crop_back = tuple(slice(0, n) for n in shape)
    return mean[(slice(None),) + crop_back].contiguous(), std[crop_back].contiguous()


def embedding_maps(nets: Union[torch.nn.Module, Sequence[torch.nn.Module]], x: Any,
                   settings: Optional[Mapping[str, Any]] = None, batch_size: int = 8, device: Any = None,
                   precision: str = "fp32") -> torch.Tensor:
    """The maps of a Cellulus model's spec (``outputs``): mean offsets [D], summed std, and the image's channel 0,
    float32 [D + 2, *S] on ``device``, from :func:`predict` with ``settings`` (checked; defaults otherwise)."""
    s = check_settings(settings)
    mean, std = predict(nets, x, crop=s["crop"], n_noise=s["n_noise"], salt_values=s["salt_values"],
                        p_salt=s["p_salt"], batch_size=batch_size, seed=s["seed"], device=device,
                        precision=precision)
    t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
    return torch.cat([mean, std[None], t[:1].to(mean.device, torch.float32)])


# ---- 2. detect -------------------------------------------------------------------------------------------------

def otsu_threshold(values: Any, nbins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape, finite): scikit-image's ``threshold_otsu`` for float data, in
    NumPy -- a ``nbins`` histogram over [min, max], the bin centre maximising the between-class variance; the
    value itself when all values are equal.  ValueError for an empty or non-finite input."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("Otsu's threshold of no values")
    if not np.isfinite(v).all():
        raise ValueError("Otsu's threshold needs finite values")
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    counts, edges = np.histogram(v, bins=int(nbins), range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2.0
    counts = counts.astype(np.float64)
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        m1 = np.cumsum(counts * centres) / w1
        m2 = (np.cumsum((counts * centres)[::-1]) / w2[::-1])[::-1]
    var = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centres[int(np.nanargmax(var))])


def foreground(std: Any, threshold: Optional[float] = None) -> Tuple[np.ndarray, float]:
    """``(std < threshold, threshold)`` with Otsu's threshold of ``std`` when ``threshold`` is None."""
    s = np.asarray(std, dtype=np.float32)
    thr = otsu_threshold(s) if threshold is None else float(threshold)
    return s < thr, thr


def _mean_shift(points: np.ndarray, bandwidth: float, seeds: str, fit: np.ndarray, cluster_all: bool) -> np.ndarray:
    import fastpose.core as fc

    try:
        fn = fc.mean_shift
        out = fn(points, bandwidth, seeds=seeds, fit_points=fit, cluster_all=cluster_all)
    except (AttributeError, ImportError) as e:
        raise RuntimeError("the native mean-shift (fastpose.core.mean_shift, csrc/meanshift) is not in this build "
                           f"of fastpose ({type(e).__name__}: {e}); rebuild fastpose to segment Cellulus "
                           "embeddings") from None
    labels = out[0] if isinstance(out, tuple) else out
    return np.asarray(labels.cpu().numpy() if torch.is_tensor(labels) else labels).astype(np.int64)


def cluster(embeddings: Any, mask: Any, bandwidth: float, fit_fraction: float = 0.1, seeds: str = "bin",
            cluster_all: bool = True, seed: int = 0) -> np.ndarray:
    """Mean-shift labels of the foreground: int32 [*S], 0 = background, 1..K.

    ``embeddings``: [D, *S] absolute embeddings (offset + coordinate, pixels); ``mask``: bool [*S].  The
    clustering is fitted on a random ``fit_fraction`` of the foreground pixels (independent draws, seeded; all of
    them when the draw is empty) and every foreground pixel is assigned (:func:`fastpose.core.mean_shift`; with
    ``cluster_all=False`` pixels farther than ``bandwidth`` from every centre stay background)."""
    e = np.asarray(embeddings, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if e.shape[1:] != m.shape or e.shape[0] != m.ndim:
        raise ValueError(f"embeddings [D, *S] and mask [*S] do not fit: {e.shape} vs {m.shape}")
    out = np.zeros(m.shape, np.int32)
    n = int(m.sum())
    if n == 0:
        return out
    pts = np.ascontiguousarray(e[:, m].T)
    rng = np.random.default_rng([int(seed), 11])
    fit = np.flatnonzero(rng.random(n) < float(fit_fraction))
    if fit.size == 0:
        fit = np.arange(n)
    labels = _mean_shift(pts, float(bandwidth), seeds, fit, bool(cluster_all))
    out[m] = np.where(labels >= 0, labels + 1, 0)
    return out


# ---- 3. segment ------------------------------------------------------------------------------------------------

def grow_shrink(seg: Any, grow: float = 3.0, shrink: float = 6.0) -> np.ndarray:
    """The authors' 'cell' post-processing: ``exp = EDT(seg == 0) < grow``, then ``seg[EDT(exp) < shrink] = 0``.

    Labels are never grown; pixels within ``shrink`` of the background of the grown mask are removed, which
    takes about ``shrink - grow`` px off edges facing background and keeps edges facing an object within
    ``grow`` px.  (The image border is not background: EDT measures to background pixels only.)"""
    from scipy import ndimage as ndi

    out = np.array(seg, copy=True)
    fg = out != 0
    if not fg.any():
        return out
    exp = ndi.distance_transform_edt(~fg) < float(grow)
    if exp.all():
        return out
    out[ndi.distance_transform_edt(exp) < float(shrink)] = 0
    return out


def refine_nuclei(seg: Any, image: Any) -> np.ndarray:
    """The authors' 'nucleus' post-processing: each object keeps its pixels brighter than Otsu's threshold of
    ``image`` inside it, holes filled (within its bounding box); objects are written in increasing label order,
    so a later one wins where filled holes overlap."""
    from scipy import ndimage as ndi

    s = np.asarray(seg)
    img = np.asarray(image, dtype=np.float32)
    if img.shape != s.shape:
        raise ValueError(f"image and labels differ in shape: {img.shape} vs {s.shape}")
    out = np.zeros(s.shape, np.int64)
    lab = s.astype(np.int64)
    for k, sl in enumerate(ndi.find_objects(lab), 1):
        if sl is None:
            continue
        m = lab[sl] == k
        vals = img[sl][m]
        keep = m & (img[sl] > otsu_threshold(vals))
        keep = ndi.binary_fill_holes(keep)
        out[sl][keep] = k
    return out


def connected_components(seg: Any) -> np.ndarray:
    """Connected components of a label image (full connectivity; different labels are different components):
    int64 labels 1..N, components of one label numbered in turn."""
    from scipy import ndimage as ndi

    lab = np.asarray(seg).astype(np.int64)
    out = np.zeros(lab.shape, np.int64)
    structure = ndi.generate_binary_structure(lab.ndim, lab.ndim)
    n = 0
    for k, sl in enumerate(ndi.find_objects(lab), 1):
        if sl is None:
            continue
        m = lab[sl] == k
        cc, nc = ndi.label(m, structure)
        region = out[sl]
        region[m] = cc[m] + n
        n += nc
    return out


def size_filter(seg: Any, min_size: int) -> np.ndarray:
    """Connected components of ``seg`` (:func:`connected_components`), those under ``min_size`` pixels removed,
    renumbered 1..N (:func:`fastpose.labels.relabel_sequential`); int32."""
    cc = connected_components(seg)
    if cc.size and min_size > 0:
        sizes = np.bincount(cc.ravel())
        small = sizes < int(min_size)
        small[0] = False
        cc[small[cc]] = 0
    return relabel_sequential(cc)[0]


def postprocess_maps(maps: Any, settings: Optional[Mapping[str, Any]] = None, rescale: float = 1.0,
                     return_maps: bool = False) -> Dict[str, Any]:
    """Masks from a Cellulus model's maps ``[offsets (D), std, image, ...]`` (a tensor or array, at the image's
    size): steps 2 and 3 of the module docstring with ``settings`` (checked; defaults otherwise).

    ``rescale``: the factor the image was resized by for the network (``diam_mean / diameter``); the maps were
    resized back, so offsets are divided by it and every length of the settings (object size, bandwidth, grow,
    shrink; ``min_size`` as an area or volume) follows the image to its own scale.

    Returns SegmentResult fields: ``masks`` (uint16/uint32), ``info`` (foreground threshold, bandwidth,
    min_size, clusters) and, with ``return_maps``, ``outputs``: ``offsets`` (float32 [D, *S], image px),
    ``std`` and ``foreground`` (uint8).
    """
    s = check_settings(settings)
    r = checks.number(rescale, "rescale", lo=0.0, lo_open=True)
    m = maps.detach().float().cpu().numpy() if torch.is_tensor(maps) else np.asarray(maps, np.float32)
    ndim = m.ndim - 1
    if ndim not in (2, 3) or m.shape[0] < ndim + 1:
        raise ValueError(f"Cellulus maps must be [offsets (D), std, image] of a 2D or 3D image, got shape {m.shape}")
    offsets, std = m[:ndim] / r, m[ndim]
    image = m[ndim + 1] if m.shape[0] > ndim + 1 else None
    fg, thr = foreground(std, s["foreground_threshold"])
    coords = np.indices(std.shape, dtype=np.float32)
    emb = offsets + coords
    bw = bandwidth_of(s) / r
    seg = cluster(emb, fg, bw, s["fit_fraction"], s["seeds"], s["cluster_all"], s["seed"])
    n_clusters = int(seg.max()) if seg.size else 0
    if s["post_processing"] == "cell":
        seg = grow_shrink(seg, s["grow"] / r, s["shrink"] / r)
    elif s["post_processing"] == "nucleus":
        if image is None:
            raise ValueError("the 'nucleus' post-processing needs the image channel in the maps")
        seg = refine_nuclei(seg, image)
    if s["min_size"] is None:
        min_size = min_object_size(s["object_size"] / r, ndim)
    else:
        min_size = int(round(s["min_size"] / r ** ndim))
    masks = as_labels(size_filter(seg, min_size))
    out: Dict[str, Any] = {"masks": masks, "info": {"foreground_threshold": thr, "bandwidth": bw,
                                                     "min_size": min_size, "clusters": n_clusters}}
    if return_maps:
        out["outputs"] = {"offsets": offsets.astype(np.float32), "std": std.astype(np.float32),
                          "foreground": fg.astype(np.uint8)}
    return out


# ---- the family's own entry point ------------------------------------------------------------------------------

def _load(model: Any, device: torch.device) -> Tuple[List[CellulusNet], Dict[str, Any]]:
    from ..models import load_model, spec_of

    models = list(model) if isinstance(model, (list, tuple)) else [model]
    nets, spec = [], None
    for mdl in models:
        if isinstance(mdl, torch.nn.Module):
            net, meta = mdl, dict(getattr(mdl, "fastpose_meta", {}) or {})
        else:
            net, meta = load_model(mdl, device=device)
        if not isinstance(net, CellulusNet):
            raise ValueError(f"model must be a Cellulus model (a CellulusNet or its file), got a {type(net).__name__}")
        sp = spec_of(net, meta) if meta.get("spec") else None
        spec = spec if spec is not None else sp
        nets.append(net.to(device).eval())
    settings = dict(spec.settings) if spec is not None and spec.family == "cellulus" else {}
    norm = dict(spec.normalize) if spec is not None and spec.family == "cellulus" else None
    return nets, {"settings": settings, "normalize": norm}


def segment(image: Any, model: Any, *, channel_axis: Optional[int] = None, z_axis: Optional[int] = None,
            channels: Optional[Sequence[int]] = None, normalize: bool = True, device: str = "auto",
            precision: str = "auto", batch_size: int = 8, return_maps: bool = False, **settings: Any) -> Any:
    """Segment a 2D image or a 3D volume with a Cellulus model: the family's own entry point.

    :func:`fastpose.segment` runs 2D Cellulus models through the common data path (and volumes from 2D slices
    with ``do_3D``); this one also runs 3D networks on volumes, and takes any setting as a keyword.

    Parameters
    ----------
    image : array
        (Y, X), with ``channel_axis`` a multichannel image, with ``z_axis`` a volume (3D networks).
    model : path, bundled name, CellulusNet, or a list of them (an ensemble)
        A file written by :func:`fastpose.cellulus.train` / :func:`~fastpose.cellulus.network.save_cellulus`.
    channel_axis, z_axis, channels
        As for :func:`fastpose.segment`.
    normalize : bool
        Percentile normalisation per channel with the model's percentiles (1 / 99.8).
    device, precision, batch_size
        Where the network runs ("auto": the GPU when usable), its precision on a GPU ("auto" = fp32 here: the
        std map decides the foreground), noisy copies per network call.
    return_maps : bool
        Also return the offsets, std and foreground in ``result.outputs``.
    **settings
        Overrides of the model's settings (:data:`fastpose.cellulus.settings.DEFAULT_SETTINGS`), e.g.
        ``object_size=20``, ``post_processing="nucleus"``.

    Returns
    -------
    fastpose.inference.SegmentResult with ``masks`` (uint16/uint32 of the image's spatial shape) and ``info``.
    """
    from ..inference.result import SegmentResult
    from ..transforms import normalize as normalize_image
    from ..transforms import to_channels_first

    device = checks.choice(device, "device", ("auto", "cpu", "cuda"))
    precision = checks.choice(precision, "precision", ("auto", "fp32", "fp16", "bf16"))
    normalize = checks.boolean(normalize, "normalize")
    return_maps = checks.boolean(return_maps, "return_maps")
    batch_size = checks.integer(batch_size, "batch_size", lo=1, hi=checks.LIMITS["batch_size"])
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but PyTorch sees no CUDA GPU")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    nets, stored = _load(model, dev)
    s = check_settings(settings, base=stored["settings"], name="segment settings")
    ndim = nets[0].ndim
    volume = ndim == 3
    if volume and z_axis is None:
        raise ValueError("this is a 3D Cellulus network: pass a volume with z_axis")
    if not volume and z_axis is not None:
        raise ValueError("this is a 2D Cellulus network: segment volumes with a 3D network (or plane by plane, or "
                         "with fastpose.segment(..., do_3D=True))")
    x = to_channels_first(image, checks.axis(channel_axis, "channel_axis"), checks.axis(z_axis, "z_axis"),
                          checks.integers(channels, "channels", lo=0, none_ok=True, min_len=1),
                          nets[0].in_channels, volume)
    norm = stored["normalize"] or {"lower": 1.0, "upper": 99.8, "invert": False}
    x = normalize_image(x, normalize, float(norm["lower"]), float(norm["upper"]), bool(norm.get("invert")))
    maps = embedding_maps(nets, x, s, batch_size=batch_size, device=dev,
                          precision="fp32" if precision == "auto" else precision)
    fields = postprocess_maps(maps, s, 1.0, return_maps)
    return SegmentResult(diameter=s["object_size"], **fields)

