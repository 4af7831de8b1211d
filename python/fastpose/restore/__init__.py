"""Image restoration (Cellpose3): denoising, deblurring, upsampling and one-click restoration networks.

A restoration model is the Cellpose residual U-Net with one input and one output map that predicts the clean
image directly (Cellpose 3.1, ``cellpose/denoise.py``).  Its spec has family ``"restore"``
(:mod:`fastpose.methods.restore`), so it runs through the same generic data path as segmentation: percentile
normalisation, resizing by ``diameter`` to the model's object size, 224 px tiles with Cellpose's padding, the
sigmoid-taper blend, and back to the image's size -- on the GPU when there is one.

    >>> from fastpose.restore import restore
    >>> clean = restore(noisy, "oneclick_nuclei", diameter=17)         # float32, the image's layout
    >>> res = fastpose.segment(noisy, "nuclei", restore="oneclick_nuclei", diameter=17)
    >>> res.outputs["restored"]                                         # restored, then segmented on the device

Models: ``oneclick_nuclei`` is bundled (trained by :func:`fastpose.restore.train`, see its card); Cellpose's own
files (``denoise_cyto3``, ``deblur_nuclei``, ``upsample_cyto3``, ``oneclick_cyto3``, ``aniso_cyto2``, ...) load
from a path, or by name from Cellpose's model folder (``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models``)
when Cellpose has downloaded them there.  Nothing is downloaded.

Multichannel images are restored one channel at a time with the same network (as Cellpose does).  The output is
the network's prediction: float32, about 0-1 (the 1st/99th-percentile scale of the input), not clipped.

Where fastpose differs from Cellpose 3.1's ``DenoiseModel.eval``, on purpose:

* **Upsampling models rescale once.** Cellpose first interpolates the image by ``diam_mean / diameter`` (for
  ``upsample_*`` files and 3 <= diameter < diam_mean) and then applies the diameter rescale *again*, so its
  network sees objects at ``(diam_mean / diameter) ** 2`` times their size, ``diam_mean ** 2 / diameter`` px
  instead of the ``diam_mean`` px the model was trained at (its training crops are rescaled to ``diam_mean``,
  ``random_rotate_and_resize_noise``); we read that as a bug.  fastpose resizes once, so the network sees
  objects at ``diam_mean`` px, and ``scale="model"`` returns the image at that scale (Cellpose's upsampled
  output size, ``diam_mean / diameter`` times the input) instead of the input's size.
* **Every channel at the same diameter.** Cellpose 3.1 resizes a second channel by an extra ``30 / 17`` (its
  nuclear channel, meant for a ``<type>_nuclei`` model), even though ``_eval`` then runs the main network on it
  anyway (``chan2=True`` loads that model and never uses it).  fastpose restores every channel with the one model
  given at the one ``diameter``; restore a nuclear channel with a nuclei model and its own diameter separately
  (``channels=[1]``).  ``tests/test_restore_compat.py`` shows both: channel 1 matches Cellpose's when restored at
  ``diameter * 17 / 30``.
* Image sizes after resizing are rounded (Cellpose truncates), as everywhere in fastpose.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import checks
from ..transforms import normalize_percentile

__all__ = ["Restorer", "restore", "train"]

log = logging.getLogger("fastpose.restore")


class Restorer:
    """A loaded restoration model, ready to restore many images (see the module docstring).

    Parameters
    ----------
    model : str, path or torch.nn.Module
        A bundled name (``"oneclick_nuclei"``), a fastpose restoration model file, a Cellpose3 restoration file
        (``denoise_cyto3``, ...: a path, or a name found in Cellpose's model folder) or a network.
    device, precision, batch_size, backend
        As for :class:`~fastpose.inference.Segmenter` (``backend="auto"``: onnxruntime on the CPU, eager
        PyTorch on a GPU).

    Raises ValueError when the model is not a restoration model (a segmentation model given by mistake).
    """

    def __init__(self, model: Any = "oneclick_nuclei", device: str = "auto", precision: str = "auto",
                 batch_size: int = 8, backend: str = "auto") -> None:
        from ..inference import Segmenter

        #: the generic data path running the restoration network (also what ``Segmenter(restore=...)`` takes)
        self.segmenter = Segmenter(model, device=device, precision=precision, batch_size=batch_size,
                                   backend=backend)
        self.spec = self.segmenter.spec
        if self.spec.family != "restore":
            raise ValueError(f"{_describe(model)} is a {self.spec.family!r} model (outputs "
                             f"{', '.join(self.spec.outputs)}), not a restoration model: pass it as model=, and a "
                             "restoration model (e.g. 'oneclick_nuclei') as restore=")
        self.device = self.segmenter.device
        self.core_device = torch.device(self.segmenter.core_device)

    @property
    def diam_mean(self) -> float:
        """Object diameter the restoration network was trained at, pixels."""
        return float(self.spec.diam_mean)

    def rescale(self, diameter: Optional[float]) -> float:
        """Resize factor for images whose objects are ``diameter`` px across (1 for None or 0)."""
        return self.spec.rescale(diameter)

    def restore_tensor(self, x: torch.Tensor, diameter: Optional[float] = None, tile_overlap: float = 0.1,
                       normalize: bool = True, scale: str = "input") -> torch.Tensor:
        """Restore a batch ``x`` [B, C, Y, X] (float tensor, any device), channel by channel: each channel is
        normalised to its own percentiles (the model's, 1st/99th; ``normalize=False``: taken as it is), resized
        by ``diam_mean / diameter``, tiled through the network and resized back (``scale="input"``) or left at
        the network's scale (``scale="model"``); constant channels pass through.  Returns float32
        [B, C, Y', X'] on the core's device (:meth:`~fastpose.inference.Segmenter.channelwise`)."""
        return self.segmenter.channelwise(x, diameter, tile_overlap, normalize, scale)

    def restore(self, image: Any, *, diameter: Optional[float] = None, channel_axis: Optional[int] = None,
                z_axis: Optional[int] = None, channels: Optional[Sequence[int]] = None, tile_overlap: float = 0.1,
                normalize: bool = True, scale: str = "input") -> np.ndarray:
        """Restore one image; see :func:`restore`."""
        diameter = checks.number(diameter, "diameter", lo=0.0, hi=checks.LIMITS["diameter"], none_ok=True)
        tile_overlap = checks.number(tile_overlap, "tile_overlap", lo=0.0, hi=0.5)
        normalize = checks.boolean(normalize, "normalize")
        scale = checks.choice(scale, "scale", ("input", "model"))
        a, layout = _channels_first(image, channel_axis, z_axis, channels)   # [C, P, Y, X] float32
        C, P = a.shape[:2]
        r = self.rescale(diameter)
        if r != 1.0:
            checks.resized_shape(a.shape[-2:], (r, r), f"diameter={diameter:g} (the model's objects are "
                                 f"{self.diam_mean:g} px)", bytes_per_pixel=4 * 4)
        if normalize:  # NumPy's exact percentiles, per channel and plane (as segmentation normalises)
            for p in range(P):
                a[:, p] = normalize_percentile(a[:, p], float(self.spec.normalize["lower"]),
                                               float(self.spec.normalize["upper"]),
                                               bool(self.spec.normalize.get("invert")))
        planes = []
        for p in range(P):  # a plane at a time: [1, C, Y, X]
            t = torch.from_numpy(np.ascontiguousarray(a[:, p]))[None]
            planes.append(self.restore_tensor(t, diameter, tile_overlap, False, scale)[0].cpu().numpy())
        out = np.stack(planes, 1)  # [C, P, Y', X']
        return layout(out)


def _describe(model: Any) -> str:
    if isinstance(model, torch.nn.Module):
        return f"the network {type(model).__name__}"
    return f"model {os.fspath(model)!r}" if isinstance(model, (str, os.PathLike)) else repr(model)


def _channels_first(image: Any, channel_axis: Optional[int], z_axis: Optional[int],
                    channels: Optional[Sequence[int]]) -> Tuple[np.ndarray, Any]:
    """``(float32 [C, P, Y, X], layout)``: every channel (or those ``channels`` names) and plane of ``image``;
    ``layout(out [C, P, Y', X'])`` puts a result back in the input's axis order."""
    from ..transforms import channel_view

    a = np.asarray(image)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise ValueError(f"image must be a numeric array, got dtype {a.dtype}")
    if a.ndim < 2 or a.ndim > 4:
        raise ValueError(f"image must have 2 to 4 dimensions, got shape {a.shape}")
    channel_axis = checks.axis(channel_axis, "channel_axis")
    z_axis = checks.axis(z_axis, "z_axis")
    channels = checks.integers(channels, "channels", lo=0, none_ok=True, min_len=1)
    if a.ndim == 3 and channel_axis is None and z_axis is None:
        raise ValueError(f"a 3D image needs channel_axis=... (a multichannel 2D image) or z_axis=... (a stack), got "
                         f"shape {a.shape}")
    nin = a.shape[channel_axis] if channel_axis is not None else 1
    picks = list(range(nin)) if channels is None else list(channels)
    bad = [c for c in picks if c >= nin]
    if bad:
        raise ValueError(f"channels {bad} out of range: the image has {nin} channel(s)")
    view, _ = channel_view(a, channel_axis, z_axis, None, 1, z_axis is not None)   # [C_in, (Z,) Y, X]
    if z_axis is None:
        view = view[:, None]
    out = np.stack([np.asarray(view[c], np.float32) for c in picks])               # [C, P, Y, X]
    if not np.isfinite(out).all():
        raise ValueError("image contains NaN or Inf")
    ndim = a.ndim

    def layout(r: np.ndarray) -> np.ndarray:
        # back to the input's axis order: channels where channel_axis was, planes where z_axis was
        if channel_axis is None and z_axis is None:
            return np.ascontiguousarray(r[0, 0])
        names = ["c", "z", "y", "x"]
        arr = r
        if z_axis is None:
            arr, names = arr[:, 0], ["c", "y", "x"]
        if channel_axis is None:
            arr, names = arr[0], names[1:]
        order = [None] * ndim
        if channel_axis is not None:
            order[channel_axis % ndim] = "c"
        if z_axis is not None:
            order[z_axis % ndim] = "z"
        rest = iter(["y", "x"])
        order = [o if o is not None else next(rest) for o in order]
        return np.ascontiguousarray(np.transpose(arr, [names.index(o) for o in order]))
    return out, layout


def restore(image: Any, model: Any = "oneclick_nuclei", *, diameter: Optional[float] = None,
            channel_axis: Optional[int] = None, z_axis: Optional[int] = None,
            channels: Optional[Sequence[int]] = None, tile_overlap: float = 0.1, normalize: bool = True,
            scale: str = "input", device: str = "auto", precision: str = "auto", batch_size: int = 8,
            backend: str = "auto") -> np.ndarray:
    """Restore an image with a Cellpose3-style restoration network, one channel at a time.

    Parameters
    ----------
    image : array
        2D (Y, X); with ``channel_axis`` a multichannel 2D image; with ``z_axis`` a stack, restored plane by
        plane (4D: both).  Any integer or float dtype; NaN or Inf is a ValueError.
    model : str, path, torch.nn.Module or Restorer
        See :class:`Restorer` (default the bundled ``"oneclick_nuclei"``).
    diameter : float, optional
        Object diameter in pixels: the image is resized by ``diam_mean / diameter`` for the network (None or 0:
        not resized, the objects are taken to be the model's size already).
    channels : sequence of int, optional
        Which channels to restore (default all); the result holds only those, in that order.
    tile_overlap : float
        Overlap of the 224 px tiles (0.1, Cellpose's).
    normalize : bool
        Normalise each channel to its 1st/99th percentiles first (True; what the networks were trained on).
    scale : "input" or "model"
        The result at the input's size (default), or at the network's scale (``diam_mean / diameter`` times
        the input's size: the upsampled image of an ``upsample_*`` model).
    device, precision, batch_size, backend
        See :class:`~fastpose.inference.Segmenter`.

    Returns
    -------
    float32 array in the input's axis order (the restored channels), about 0-1.
    """
    r = model if isinstance(model, Restorer) else Restorer(model, device, precision, batch_size, backend)
    return r.restore(image, diameter=diameter, channel_axis=channel_axis, z_axis=z_axis, channels=channels,
                     tile_overlap=tile_overlap, normalize=normalize, scale=scale)


def __getattr__(name: str) -> Any:
    if name == "train":  # the trainer imports the training stack: loaded on first use
        from .training import train
        return train
    raise AttributeError(f"module 'fastpose.restore' has no attribute {name!r}")
