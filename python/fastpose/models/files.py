"""Model files: fastpose's own format, plus Cellpose 2/3 (CPnet) and Cellpose-SAM checkpoints.

fastpose model file format (version 1)
--------------------------------------
A single ``torch.save``'d dict, readable with ``torch.load(path, weights_only=True)``::

    {
      "format": "fastpose-model",          # marks the file
      "version": 1,                        # format version (readers reject newer versions)
      "arch": {"type": "unet", "nbase": [2, 32, 64, 128, 256], "nout": 3, "sz": 3, "max_pool": True}
           or {"type": "vit", "img_size": 256, "patch_size": 8, "embed_dim": 1024, ...},
                                           # constructor kwargs of UNet / ViT (a ViT may give just
                                           # {"type": "vit", "preset": "vit_l"})
      "state_dict": {name: tensor},        # float16 when saved with half=True (loaded back as float32)
      "diam_mean": float,                  # diameter the network was trained at
      "diam_labels": float,                # mean diameter of the training labels
      "normalize": {"lower": 1.0, "upper": 99.0, "invert": False},  # input percentile normalisation
      "size_model": None or {"A": [...], "smean": [...], "ymean": float},  # style -> log-diameter
      "spec": {"family": "cellpose", "nchan": 2, "tile": 224, ...},    # ModelSpec.to_dict() (models/spec.py);
                                           # optional: files without it get one inferred from "arch" at load
      "extra": {...},                      # optional free-form metadata (plain Python types only)
    }

Only plain Python containers / numbers / strings and tensors are stored, so the file loads with
``weights_only=True``; numpy arrays in the metadata are converted to lists when saving.

Cellpose files
--------------
* Cellpose 2/3 (``cyto``, ``cyto2``, ``cyto3``, ``nuclei``, user models): a bare CPnet state dict,
  recognised by ``downsample.down.res_down_0.conv.conv_0.0.weight``; loaded into :class:`UNet` with the
  widths, kernel size and number of outputs inferred from the weight shapes and ``diam_mean`` /
  ``diam_labels`` from the stored parameters.  (Cellpose's separate ``*_size.npy`` size models are
  pickles and are not read.)
* Cellpose-SAM (``cpsam``, ``cpsam_v2``): a state dict with ``W2`` and ``encoder.*`` keys; loaded into
  :class:`ViT` (the ``vit_l`` preset for real checkpoints; sizes are inferred from the shapes).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from .spec import DEFAULT_NORMALIZE, ModelSpec, class_names, panoptic_spec
from .unet import UNet
from .vit import VIT_PRESETS, ViT

__all__ = ["FORMAT", "FORMAT_VERSION", "BUILTIN_MODELS", "DEFAULT_NORMALIZE", "ARCHITECTURES", "Architecture",
           "BUILTIN_ARCHITECTURES", "register_architecture", "build_model", "spec_of", "save_model", "load_model",
           "model_from_state_dict", "resolve_model_path", "ModelNotFoundError", "CELLPOSE_NAMES",
           "CELLPOSE_RESTORE_NAMES", "cellpose_model_dir"]

log = logging.getLogger("fastpose.models")

FORMAT = "fastpose-model"
FORMAT_VERSION = 1

#: Built-in model name -> file path (or a zero-argument callable returning one, e.g. a downloader).
#: Empty for now; bundled weights are registered here by other modules.
_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"

#: Models shipped in the wheel (``fastpose/weights/``; each has a JSON card beside it saying how it was
#: trained and how it scored): ``nuclei`` (DSB 2018 nuclei, one channel, diam_mean 17), ``cyto``
#: (cells with an optional nuclear channel, trained on synthetic images only, diam_mean 30) and
#: ``oneclick_nuclei`` (a Cellpose3-style one-click restoration network for nuclei, diam_mean 17) and
#: ``cellulus_nuclei`` (an unsupervised Cellulus network trained on DSB 2018 images without their masks; its
#: inference settings travel in the file).
BUILTIN_MODELS: Dict[str, Union[str, os.PathLike, Callable[[], Union[str, os.PathLike]]]] = {
    "nuclei": _WEIGHTS / "nuclei.pth",
    "cyto": _WEIGHTS / "cyto.pth",
    "oneclick_nuclei": _WEIGHTS / "oneclick_nuclei.pth",
    "cellulus_nuclei": _WEIGHTS / "cellulus_nuclei.pth",
}

_CPNET_KEY = "downsample.down.res_down_0.conv.conv_0.0.weight"
_CPSAM_KEYS = ("W2", "encoder.patch_embed.proj.weight", "encoder.pos_embed", "out.weight")
_EXPECTED = ("a fastpose model file (a torch.save'd dict with format='fastpose-model'), a Cellpose 2/3 "
             f"CPnet state dict (with key {_CPNET_KEY!r}) or a Cellpose-SAM state dict (with keys "
             f"{', '.join(repr(k) for k in _CPSAM_KEYS)}), or a Scellseg sCSnet state dict (keys 'extractor.*', "
             "'tasker.base_conv.weight')")
_FP16_MAX = 65504.0

PathLike = Union[str, os.PathLike]
DeviceLike = Union[str, torch.device, None]


# --------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    """A network architecture that model files can name in ``arch["type"]``.

    ``build(diam_mean=..., **kwargs)`` constructs the untrained network; ``spec_defaults(net)`` gives the
    :class:`ModelSpec` fields that depend on the architecture (tile, padding, rescaling), used for files that
    store no spec (Cellpose checkpoints, fastpose files written before the spec).
    """

    build: Callable[..., nn.Module]
    spec_defaults: Callable[[nn.Module], Dict[str, Any]]
    #: for bare state dicts of this architecture (another project's checkpoint layout): ``recognise(sd)`` returns
    #: ``(arch, state dict in this architecture's names, format name)``, or None when ``sd`` is not one
    recognise: Optional[Callable[[Mapping[str, Any]], Optional[Tuple[Dict[str, Any], Dict[str, Any], str]]]] = None


def _unet_spec_defaults(net: nn.Module) -> Dict[str, Any]:
    fields: Dict[str, Any] = {"tile": 224, "pad_multiple": 16, "pad_to_tile": False, "rescale_by_diameter": True}
    if int(getattr(net, "nout", 3)) == 1 and int(getattr(net, "nchan", 0)) == 1:
        from .spec import RESTORE_OUTPUTS
        fields.update(family="restore", outputs=RESTORE_OUTPUTS, flow_channels=(), pad_border=8)
    return fields


def _build_vit(diam_mean: float = 30.0, preset: Optional[str] = None, **kw: Any) -> nn.Module:
    if preset is not None:
        return ViT.from_preset(str(preset), diam_mean=diam_mean, **kw)
    return ViT(diam_mean=diam_mean, **kw)


#: ``arch["type"]`` -> :class:`Architecture`.  New network families register here (:func:`register_architecture`).
ARCHITECTURES: Dict[str, Architecture] = {
    # the Cellpose U-Net halves the size three times: pad to a multiple of 16; 224 tiles; resized by diameter.
    # One input and one output map: a Cellpose3 restoration network (the image in, the restored image out)
    "unet": Architecture(UNet, lambda net: _unet_spec_defaults(net)),
    # Cellpose-SAM's ViT takes tiles of exactly its input size and is trained to be size-invariant
    "vit": Architecture(_build_vit, lambda net: {"tile": int(getattr(net, "img_size", 256)), "pad_multiple": 1,
                                                 "pad_to_tile": True, "rescale_by_diameter": False}),
}


#: architectures shipped with fastpose outside this package: ``arch["type"]`` -> the module that registers it
#: (:func:`register_architecture`) when first imported, so their files load without importing it first
BUILTIN_ARCHITECTURES: Dict[str, str] = {"cellulus": "fastpose.cellulus.network", "scellseg": "fastpose.scellseg.network"}


def register_architecture(name: str, build: Callable[..., nn.Module],
                          spec_defaults: Callable[[nn.Module], Dict[str, Any]],
                          recognise: Optional[Callable[..., Any]] = None) -> None:
    """Make ``arch={"type": name, **kwargs}`` loadable: ``build(diam_mean=..., **kwargs)`` builds the network;
    ``recognise`` (see :attr:`Architecture.recognise`) lets bare state dicts in another layout load too."""
    ARCHITECTURES[str(name)] = Architecture(build, spec_defaults, recognise)


def _recognise(sd: Mapping[str, Any]) -> Optional[Tuple[Dict[str, Any], Dict[str, Any], str]]:
    """The first registered architecture's reading of a bare state dict (every built-in one imported first)."""
    for kind in BUILTIN_ARCHITECTURES:
        _architecture(kind)
    for a in ARCHITECTURES.values():
        if a.recognise is not None:
            got = a.recognise(sd)
            if got is not None:
                return got
    return None


def _architecture(kind: Any) -> Optional[Architecture]:
    """The registered architecture ``kind`` (importing its module for :data:`BUILTIN_ARCHITECTURES`), or None."""
    if kind not in ARCHITECTURES and isinstance(kind, str) and kind in BUILTIN_ARCHITECTURES:
        import importlib

        importlib.import_module(BUILTIN_ARCHITECTURES[kind])
    return ARCHITECTURES.get(kind)


def _known_types() -> str:
    return ", ".join(map(repr, sorted(set(ARCHITECTURES) | set(BUILTIN_ARCHITECTURES))))


def build_model(arch: Mapping[str, Any], diam_mean: float = 30.0) -> nn.Module:
    """Construct an untrained network from an ``arch`` dict (``{"type": <registered name>, **kwargs}``)."""
    if not isinstance(arch, Mapping) or "type" not in arch:
        raise ValueError(f"arch must be a dict with a 'type' of {_known_types()}, got {arch!r}")
    kw = {k: v for k, v in arch.items() if k != "type"}
    entry = _architecture(arch["type"])
    if entry is None:
        raise ValueError(f"unknown arch type {arch['type']!r}; expected one of {_known_types()}")
    try:
        return entry.build(diam_mean=diam_mean, **kw)
    except TypeError as e:  # unknown / missing kwargs
        raise ValueError(f"bad arch {dict(arch)!r}: {e}") from e


def _first_conv_channels(net: nn.Module) -> int:
    for p in net.parameters():
        if p.ndim == 4:
            return int(p.shape[1])
    return 2


def spec_of(net: nn.Module, meta: Optional[Mapping[str, Any]] = None) -> ModelSpec:
    """The :class:`ModelSpec` of a network: the one its file stored (``meta["spec"]``), else one inferred from
    its architecture (Cellpose family), channel count, ``diam_mean`` and ``normalize``; a network with class heads
    (``net.class_names``, :func:`fastpose.models.heads.add_class_heads`) gets a panoptic spec."""
    meta = dict(meta or {})
    if meta.get("spec"):
        return ModelSpec.from_dict(meta["spec"])
    names = getattr(net, "class_names", None)
    spec = _inferred_spec(net, meta)
    return panoptic_spec(spec, names) if names else spec


def _inferred_spec(net: nn.Module, meta: Mapping[str, Any]) -> ModelSpec:
    arch = dict(meta.get("arch") or (net.arch() if callable(getattr(net, "arch", None)) else {}) or {})
    kind = arch.get("type", "unet")
    entry = _architecture(kind)
    if entry is None:
        raise ValueError(f"no spec stored and unknown arch type {kind!r}: cannot tell how to run this network")
    fields = dict(entry.spec_defaults(net))
    nchan = meta.get("nchan") or getattr(net, "nchan", None) or _first_conv_channels(net)
    diam = meta.get("diam_mean") or getattr(net, "diam_mean_value", None) or 30.0
    return ModelSpec(nchan=int(nchan), diam_mean=float(diam),
                     normalize=dict(meta.get("normalize") or DEFAULT_NORMALIZE), **fields)


def _model_arch(model: nn.Module, meta: Mapping[str, Any]) -> Dict[str, Any]:
    if "arch" in meta:
        return dict(meta["arch"])
    if hasattr(model, "arch") and callable(model.arch):
        return dict(model.arch())
    raise ValueError(f"cannot tell the architecture of a {type(model).__name__}: pass meta={{'arch': ...}}")


# --------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------

def _plain(obj: Any, where: str) -> Any:
    """Convert metadata to types that ``torch.load(weights_only=True)`` accepts."""
    if isinstance(obj, np.generic):  # before the float check: np.float64 subclasses float
        return obj.item()
    if obj is None or type(obj) in (bool, int, float, str):
        return obj
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, (int, float, str)):  # subclasses (IntEnum, torch's TorchVersion, ...) as the plain type:
        return (int if isinstance(obj, int) else float if isinstance(obj, float) else str)(obj)  # weights_only
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise ValueError(f"metadata {where} has unsupported type {type(obj).__name__}")


def _state_for_file(model: nn.Module, half: bool) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point() and not k.startswith("diam_"):
            if v.numel() and float(v.abs().max()) > _FP16_MAX:
                log.warning("keeping %s in %s: values exceed the float16 range", k, v.dtype)
            else:
                v = v.to(torch.float16)
        out[k] = v.clone()
    return out


def save_model(path: PathLike, model: nn.Module, meta: Optional[Mapping[str, Any]] = None,
               half: bool = False) -> Path:
    """Write ``model`` to ``path`` in the fastpose format (see module docstring), atomically.

    Args:
        path: destination file (conventionally ``*.pth``); its folder must exist.
        model: a :class:`UNet` or :class:`ViT` (anything else needs ``meta["arch"]``).
        meta: optional ``diam_mean``, ``diam_labels`` (default: the model's parameters), ``normalize``
            (default :data:`DEFAULT_NORMALIZE`), ``size_model``, ``arch``, ``extra``.
        half: store floating-point weights as float16 (half the size; loaded back as float32).

    The file is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so readers never see a partial file.  Returns the path.
    """
    meta = dict(meta or {})
    unknown = set(meta) - {"diam_mean", "diam_labels", "normalize", "size_model", "arch", "spec", "extra", "classes"}
    if unknown:
        raise ValueError(f"unknown meta keys {sorted(unknown)}; put free-form data under meta['extra']")
    sd = model.state_dict()
    diam_mean = float(meta.get("diam_mean", sd["diam_mean"].item() if "diam_mean" in sd else 30.0))
    diam_labels = float(meta.get("diam_labels", sd["diam_labels"].item() if "diam_labels" in sd else diam_mean))
    payload: Dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arch": _plain(_model_arch(model, meta), "arch"),
        "state_dict": _state_for_file(model, half),
        "diam_mean": diam_mean,
        "diam_labels": diam_labels,
        "normalize": _plain(meta.get("normalize", DEFAULT_NORMALIZE), "normalize"),
        "size_model": _plain(meta.get("size_model"), "size_model"),
    }
    # the spec agrees with the file's own diam_mean / normalize / channel count
    spec = spec_of(model, {**meta, "arch": payload["arch"]}).with_(
        diam_mean=diam_mean, normalize=dict(payload["normalize"]),
        nchan=int(getattr(model, "nchan", None) or _first_conv_channels(model)))
    payload["spec"] = spec.to_dict()
    if class_names(spec):  # panoptic models: the class names (background first), also in the spec's outputs
        payload["classes"] = list(class_names(spec))
    if meta.get("extra") is not None:
        payload["extra"] = _plain(meta["extra"], "extra")
    # keep the stored parameters consistent with the metadata
    for k in ("diam_mean", "diam_labels"):
        if k in payload["state_dict"]:
            payload["state_dict"][k] = torch.full_like(payload["state_dict"][k], payload[k])

    from ..io import atomic_write

    path = atomic_write(path, lambda f: torch.save(payload, f))
    log.info("saved %s model to %s (%s)", payload["arch"]["type"], path, "fp16" if half else "fp32")
    return path


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------

#: Cellpose 3's restoration model names (``cellpose.denoise.MODEL_NAMES`` less the loss ablations)
CELLPOSE_RESTORE_NAMES: Tuple[str, ...] = tuple(
    [f"{k}_{d}" for k in ("denoise", "deblur", "upsample", "oneclick") for d in ("cyto3", "cyto2", "nuclei")]
    + ["aniso_cyto2", "aniso_nuclei"])
#: Cellpose model names looked up in Cellpose's own model folder when they are not bundled with fastpose
CELLPOSE_NAMES: Tuple[str, ...] = ("cyto2", "cyto3", "cpsam") + CELLPOSE_RESTORE_NAMES


def cellpose_model_dir() -> Path:
    """Where Cellpose keeps the models it downloaded: ``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def _available() -> str:
    names = sorted(BUILTIN_MODELS)
    return ", ".join(names) if names else "(none registered yet)"


class ModelNotFoundError(FileNotFoundError, ValueError):
    """A model that is neither a file nor a bundled name (a FileNotFoundError; also a ValueError, as before).
    ``filename`` is the path or name asked for; the message is the sentence it was made with."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def resolve_model_path(path_or_name: PathLike) -> Path:
    """A model file path from a path or a :data:`BUILTIN_MODELS` name.

    :class:`ModelNotFoundError` (a FileNotFoundError) naming the path and listing the bundled names when it is
    neither; ValueError for a folder or a name that is not a string or path."""
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(f"a model must be a bundled model name or a model file path, got "
                        f"{type(path_or_name).__name__}")
    name = os.fspath(path_or_name)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not name.strip():
        raise ModelNotFoundError(f"the model name is empty; available built-in models: {_available()}")
    p = Path(name)
    if p.is_file():
        return p
    if name in BUILTIN_MODELS:
        target = BUILTIN_MODELS[name]
        target = target() if callable(target) else target
        tp = Path(target)
        if not tp.is_file():
            err = ModelNotFoundError(f"bundled model {name!r} points to {tp}, which is not a file (a broken "
                                     "installation?)")
            err.filename = str(tp)
            raise err
        return tp
    if name in CELLPOSE_NAMES:  # a Cellpose model Cellpose downloaded earlier (fastpose downloads nothing)
        cand = cellpose_model_dir() / name
        if cand.is_file():
            return cand
        err = ModelNotFoundError(
            f"Cellpose's model {name!r} is not bundled with fastpose and is not in {cand.parent}; download "
            f"https://www.cellpose.org/models/{name} and pass its path (fastpose downloads nothing); "
            f"bundled models: {_available()}")
        err.filename = name
        raise err
    if p.exists():
        raise ValueError(f"cannot load model {p}: it is a folder, not a file")
    err = ModelNotFoundError(f"no model file {name!r}, and {name!r} is not a bundled model name; "
                             f"available built-in models: {_available()}")
    err.filename = name
    raise err


def _strip_module_prefix(sd: Mapping[str, Any]) -> Dict[str, Any]:
    keys = list(sd)
    if keys and all(k.startswith("module.") for k in keys):  # saved from DataParallel / DDP
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _infer_unet(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """UNet kwargs from CPnet weight shapes."""
    needed = ("downsample.down.res_down_0.proj.1.weight", "downsample.down.res_down_0.conv.conv_0.2.weight",
              "output.2.weight")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise ValueError(f"incomplete Cellpose CPnet state dict: missing {missing}")
    nbase = [int(sd["downsample.down.res_down_0.proj.1.weight"].shape[1])]
    i = 0
    while f"downsample.down.res_down_{i}.proj.1.weight" in sd:
        nbase.append(int(sd[f"downsample.down.res_down_{i}.proj.1.weight"].shape[0]))
        i += 1
    kernel = sd["downsample.down.res_down_0.conv.conv_0.2.weight"]
    if kernel.ndim != 4:
        raise ValueError("this Cellpose checkpoint is a 3D (conv_3D) network, which fastpose does not implement")
    sz = int(kernel.shape[-1])
    nout = int(sd["output.2.weight"].shape[0])
    return {"type": "unet", "nbase": nbase, "nout": nout, "sz": sz, "max_pool": True}


def _infer_vit(sd: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """ViT kwargs from Cellpose-SAM weight shapes (``vit_l`` for real checkpoints)."""
    pw = sd["encoder.patch_embed.proj.weight"]
    embed_dim, in_chans, ps = int(pw.shape[0]), int(pw.shape[1]), int(pw.shape[-1])
    grid = int(sd["encoder.pos_embed"].shape[1])
    depth = 0
    while f"encoder.blocks.{depth}.norm1.weight" in sd:
        depth += 1
    rel = [sd.get(f"encoder.blocks.{i}.attn.rel_pos_h") for i in range(depth)]
    lens = [None if t is None else int(t.shape[0]) for t in rel]
    head_dim = next((int(t.shape[1]) for t in rel if t is not None), None)
    num_heads = embed_dim // head_dim if head_dim else VIT_PRESETS["vit_l"]["num_heads"]
    mlp = int(sd["encoder.blocks.0.mlp.lin1.weight"].shape[0]) if depth else 4 * embed_dim
    kw: Dict[str, Any] = {
        "type": "vit", "img_size": grid * ps, "patch_size": ps, "in_chans": in_chans, "embed_dim": embed_dim,
        "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp / embed_dim,
        "out_chans": int(sd["encoder.neck.0.weight"].shape[0]), "nout": int(sd["W2"].shape[1]),
        "rel_pos_len": lens, "use_rel_pos": any(v is not None for v in lens),
    }
    return kw


def model_from_state_dict(sd: Mapping[str, torch.Tensor],
                          source: str = "state dict") -> Tuple[nn.Module, Dict[str, Any]]:
    """Build + load a network from a bare Cellpose (CPnet) or Cellpose-SAM state dict."""
    sd = _strip_module_prefix(sd)
    try:
        if _CPNET_KEY in sd:
            arch, kind = _infer_unet(sd), "cellpose"
        elif all(k in sd for k in _CPSAM_KEYS):
            arch, kind = _infer_vit(sd), "cellpose-sam"
        else:
            got = _recognise(sd)
            arch, sd, kind = got if got is not None else (None, sd, None)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{source}: cannot infer the network from the state dict ({e})") from e
    if arch is None:
        some = ", ".join(list(sd)[:5])
        raise ValueError(f"{source}: unrecognised state dict (first keys: {some}); expected {_EXPECTED}")
    model = build_model(arch)
    missing = [k for k in ("diam_mean", "diam_labels") if k not in sd]
    if missing:  # Cellpose 1 checkpoints predate these parameters
        log.warning("%s has no %s; using the default diam_mean of 30", source, " / ".join(missing))
    try:
        res = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise ValueError(f"{source}: weights do not fit the inferred {arch['type']} network: {e}") from e
    bad_missing = [k for k in res.missing_keys if k not in ("diam_mean", "diam_labels")]
    if bad_missing or res.unexpected_keys:
        raise ValueError(f"{source}: state dict does not match the inferred {arch['type']} network "
                         f"(missing {bad_missing[:5]}, unexpected {res.unexpected_keys[:5]})")
    meta = {
        "format": kind, "version": None, "arch": arch,
        "diam_mean": model.diam_mean_value,
        "diam_labels": float(model.diam_labels.detach().float().cpu()[0]),
        "normalize": dict(DEFAULT_NORMALIZE), "size_model": None,
    }
    return model, meta


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _clean(text: str, path: Optional[Path] = None) -> str:
    """One line of an exception's text without ANSI codes (and without a leading ``"<path>: "``)."""
    t = _ANSI.sub("", str(text)).strip().splitlines()
    line = t[0].strip() if t else ""
    if path is not None and line.startswith(f"{path}: "):
        line = line[len(f"{path}: "):]
    return line


def _why_unreadable(path: Path, e: BaseException) -> str:
    """What a file that ``torch.load(weights_only=True)`` refused is, in fastpose's words (never PyTorch's
    advice to load with ``weights_only=False``, which would run code from the file)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as oe:
        return f"it cannot be read ({oe.strerror or type(oe).__name__})"
    if size == 0:
        return "the file is empty"
    msg = _ANSI.sub("", str(e))
    if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in msg:
        m = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"Unsupported global: ([\w.]+)", msg)
        what = f" ({m.group(1)})" if m else ""
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            return (f"it holds Python objects whose loading would run code{what}; fastpose loads only tensors and "
                    "plain data from model files, so that no code from a file runs (save the weights with "
                    "fastpose.models.save_model or as a plain state dict)")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError):
            return f"it is a truncated or damaged PyTorch (zip) file ({size} bytes)"
        if not any(n.endswith("data.pkl") for n in names):
            return "it is a zip archive, but not a PyTorch file (no data.pkl inside)"
        return f"it is a damaged PyTorch file ({type(e).__name__}: {_clean(msg)[:200]})"
    if head[:1] == b"\x80":
        return f"it is a truncated or damaged pickle (legacy PyTorch format, {size} bytes)"
    text = head.replace(b"\r", b"").replace(b"\n", b"").replace(b"\t", b"")
    if text and all(32 <= c < 127 for c in text[:512]):
        return "it is a text file, not a PyTorch model file"
    return "it is not a PyTorch file (unrecognised content)"


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # never runs code from the file
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError (not a zip / corrupt), EOFError, ...
        raise ValueError(f"cannot load model {path}: {_why_unreadable(path, e)}; expected {_EXPECTED}") from None


def _model_from_object(obj: Any, path: Path) -> Tuple[nn.Module, Dict[str, Any]]:
    """The network and metadata of what a model file held (ValueError saying why it is not a model)."""
    if isinstance(obj, Mapping) and "format" in obj:
        if obj["format"] != FORMAT:
            raise ValueError(f"{path}: unknown model format {obj['format']!r}; expected {_EXPECTED}")
        version = obj.get("version")
        if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
            raise ValueError(f"{path}: fastpose-model version {version!r} is not supported "
                             f"(this fastpose reads versions 1..{FORMAT_VERSION})")
        for k in ("arch", "state_dict"):
            if k not in obj:
                raise ValueError(f"{path}: fastpose model file without {k!r}")
        diam_mean = float(obj.get("diam_mean", 30.0))
        model = build_model(obj["arch"], diam_mean=diam_mean)
        try:
            model.load_state_dict(_strip_module_prefix(obj["state_dict"]), strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: weights do not match the stored arch {obj['arch']!r}: {e}") from e
        meta: Dict[str, Any] = {
            "format": FORMAT, "version": version, "arch": dict(obj["arch"]), "diam_mean": diam_mean,
            "diam_labels": float(obj.get("diam_labels", diam_mean)),
            "normalize": dict(obj.get("normalize") or DEFAULT_NORMALIZE),
            "size_model": obj.get("size_model"),
        }
        if "extra" in obj:
            meta["extra"] = obj["extra"]
    elif _is_state_dict(obj):
        model, meta = model_from_state_dict(obj, source=str(path))
    elif isinstance(obj, Mapping):
        raise ValueError(f"{path}: a dict without 'format' that is not a Cellpose state dict "
                         f"(keys: {', '.join(map(str, list(obj)[:5]))}); expected {_EXPECTED}")
    else:
        raise ValueError(f"{path}: contains a {type(obj).__name__}, not a model; expected {_EXPECTED}")
    meta["nchan"] = int(getattr(model, "nchan"))
    meta["path"] = str(path)
    if isinstance(obj, Mapping) and obj.get("spec"):
        meta["spec"] = dict(obj["spec"])
    meta["spec"] = spec_of(model, meta).to_dict()
    names = class_names(ModelSpec.from_dict(meta["spec"]))
    if names:  # a panoptic model: its class maps and names travel with the network
        model.class_names = names
        meta["classes"] = list(names)
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"its weights contain NaN or Inf ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    return model, meta


def load_model(path_or_name: PathLike, device: DeviceLike = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Load a model file (fastpose or Cellpose format) or a built-in model by name.

    Returns ``(model, meta)``: the network in eval mode on ``device`` (float32) and a metadata dict with
    ``format`` ('fastpose-model', 'cellpose' or 'cellpose-sam'), ``version``, ``arch``, ``nchan``,
    ``diam_mean``, ``diam_labels``, ``normalize``, ``size_model``, ``path`` (and ``extra`` if stored).
    The same dict is attached to the model as ``model.fastpose_meta``.

    Files are read with ``torch.load(weights_only=True)`` only: no code from a file ever runs.  Anything that is
    not a model (a text file, a truncated file, a zip that is not a PyTorch file, a pickle that needs code, a
    state dict of an unknown architecture, non-finite weights) is a ValueError of one sentence,
    ``"cannot load model <path>: <why>"``; a name that is neither a file nor in :data:`BUILTIN_MODELS` is a
    :class:`ModelNotFoundError` (a FileNotFoundError) listing the available names.
    """
    path = resolve_model_path(path_or_name)
    obj = _torch_load(path)
    try:
        model, meta = _model_from_object(obj, path)
    except ValueError as e:
        raise ValueError(f"cannot load model {path}: {_clean(e, path)}") from None
    except (TypeError, KeyError, AttributeError, IndexError, RuntimeError) as e:  # contents of the wrong kind
        raise ValueError(f"cannot load model {path}: its contents do not make a model ({type(e).__name__}: "
                         f"{_clean(e)[:300]})") from None
    model = model.to(torch.device(device) if device is not None else torch.device("cpu")).eval()
    model.fastpose_meta = meta
    log.info("loaded %s %s model from %s (diam_mean %.1f)", meta["format"], meta["arch"]["type"], path,
             meta["diam_mean"])
    return model, meta
