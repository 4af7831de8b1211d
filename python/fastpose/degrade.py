"""Image degradations of Cellpose3 (Poisson noise, Gaussian blur, downsampling, anisotropic downsampling) as a
seeded, batched PyTorch module: what restoration training feeds its network and what the restoration benchmark
measures against.

Everything works on a batch ``[B, C, Y, X]`` of float images on any device (the GPU when the tensor is there):

* :func:`gaussian_blur`: separable Gaussian per image (``sigma_y``, ``sigma_x`` per image; 0 = none), kernel
  ``2 * max(8, 2 * sigma_max) - 1`` taps, zero padding -- Cellpose 3.1's ``add_noise``.
* :func:`downsample`: keep every ``ds``-th pixel (rows only when ``rows_only``), bilinear back to full size.
* :func:`poisson_noise`: ``Poisson(scale * x)`` (photon counts at intensity 1 = ``scale``).
* :func:`renormalize`: each image and channel to its own 1st/99th percentiles (constant ones left alone).
* :func:`degrade`: those in Cellpose's order (blur -> downsample -> Poisson -> renormalise) with fixed
  parameters: the benchmark's conditions.
* :class:`Degrade`: random degradations drawn per image from a preset (:data:`PRESETS`, Cellpose 3.1's
  ``--noise_type`` settings), reproducible from a seed: the per-image parameters come from a NumPy generator,
  the per-pixel Poisson draws from a ``torch.Generator`` on the tensor's device seeded from it.

Following Cellpose 3.1's code (``cellpose/denoise.py``: ``add_noise``, ``random_rotate_and_resize_noise``), not
its paper, where they differ: the presets are the code's (the paper's parameters match its ``*_expr`` variants),
the Poisson scale is ``clamp(Gamma(4, rate=beta), min=1)``, blur is forced on when an image is downsampled, and
sigma scales with ``diameter / 30``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import checks
from .transforms import tensor_percentiles

__all__ = ["Preset", "PRESETS", "ONECLICK", "gaussian_blur", "downsample", "poisson_noise", "renormalize",
           "degrade", "Degrade", "BENCHMARK_CONDITIONS"]

Number = Union[float, Sequence[float], torch.Tensor, np.ndarray]


@dataclass(frozen=True)
class Preset:
    """One kind of random degradation (Cellpose 3.1's ``--noise_type`` presets).

    Attributes
    ----------
    p_poisson, p_blur, p_downsample : float
        Probability that an image gets Poisson noise / Gaussian blur / downsampling (blur is forced on for a
        downsampled image).
    beta : float
        Rate of the Gamma(4, beta) distribution of the Poisson scale (clamped at >= 1): small = brighter
        photon counts = less noise (0.7: mean scale 5.7; 0.03: 133).
    gblur : float
        Blur strength g: sigma = (diameter / 30) * (1 + (g - 1) * u), u ~ U(0, 1) (isotropic presets;
        u = ds / (2 g) when downsampled); anisotropic: sigma_y = (diameter / 30) * g * u, sigma_x = sigma_y / 10.
    ds_max : int
        Downsampling factors are drawn in [2, ds_max].
    aniso : bool
        Rows only: downsample and blur along Y (the Z axis of a resliced volume), not X.
    """

    p_poisson: float
    p_blur: float
    p_downsample: float
    beta: float
    gblur: float
    ds_max: int = 7
    aniso: bool = False


#: Cellpose 3.1's presets (``denoise.py``, ``--noise_type``): the probabilities of noise / blur / downsampling,
#: the Poisson rate beta and the blur strength.  ``aniso`` uses ``gblur = 1.5 * ds_max``.
PRESETS: Dict[str, Preset] = {
    "poisson": Preset(0.8, 0.0, 0.0, beta=0.7, gblur=0.0),
    "blur": Preset(0.8, 0.8, 0.0, beta=0.1, gblur=10.0),
    "downsample": Preset(0.8, 0.8, 0.8, beta=0.03, gblur=5.0),
    "aniso": Preset(0.8, 0.8, 0.8, beta=0.1, gblur=1.5 * 7, aniso=True),
}

#: the one-click models cycle through these (one optimiser step each per batch)
ONECLICK: Tuple[str, ...] = ("poisson", "blur", "downsample")

#: Cellpose-SAM's degradation benchmark (paper 001, Methods): condition name -> :func:`degrade` keyword arguments
BENCHMARK_CONDITIONS: Dict[str, Dict[str, Any]] = {
    "poisson_5": {"poisson": 5.0}, "poisson_2.5": {"poisson": 2.5}, "poisson_0.5": {"poisson": 0.5},
    "blur_2": {"sigma": 2.0, "poisson": 120.0}, "blur_4": {"sigma": 4.0, "poisson": 120.0},
    "blur_8": {"sigma": 8.0, "poisson": 120.0},
    "downsample_2": {"ds": 2, "sigma": 1.0}, "downsample_5": {"ds": 5, "sigma": 2.5},
    "downsample_10": {"ds": 10, "sigma": 5.0},
}


def _per_image(v: Optional[Number], b: int, name: str, device: torch.device) -> Optional[torch.Tensor]:
    """A float64 tensor [b] of a scalar or per-image values (None stays None)."""
    if v is None:
        return None
    t = torch.as_tensor(v.detach().cpu() if isinstance(v, torch.Tensor) else np.asarray(v, np.float64),
                        dtype=torch.float64).reshape(-1)
    if t.numel() == 1:
        t = t.expand(b)
    if t.numel() != b:
        raise ValueError(f"{name} must be one number or one per image ({b}), got {t.numel()} values")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0, got {t.tolist()}")
    return t


def _check_batch(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, C, Y, X], got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"images must be a batch [B, C, Y, X], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"images must be floating point, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"images are empty (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or Inf")
    return x


def _kernel(sigma: torch.Tensor, half: int, device: torch.device) -> torch.Tensor:
    """Normalised 1D Gaussians [b, 2 * half - 1]; sigma 0 gives a delta."""
    r = torch.arange(-half + 1, half, device=device, dtype=torch.float64)
    s = sigma.to(device)[:, None]
    k = torch.exp(-r[None] ** 2 / (2 * s.clamp_min(1e-12) ** 2))
    k = torch.where(s > 0, k, (r[None] == 0).to(k.dtype))
    return k / k.sum(-1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma_y: Number, sigma_x: Optional[Number] = None) -> torch.Tensor:
    """Each image of ``x`` [B, C, Y, X] blurred by a Gaussian of ``sigma_y`` rows / ``sigma_x`` columns
    (scalars or one per image; ``sigma_x`` defaults to ``sigma_y``; 0 = no blur along that axis).  The kernel has
    ``2 * max(8, int(2 * max sigma)) - 1`` taps and the image is zero-padded, as in Cellpose 3.1."""
    x = _check_batch(x)
    b = x.shape[0]
    sy = _per_image(sigma_y, b, "sigma_y", x.device)
    sx = sy if sigma_x is None else _per_image(sigma_x, b, "sigma_x", x.device)
    half = max(8, int(2 * float(torch.maximum(sy, sx).max())))
    ky, kx = _kernel(sy, half, x.device), _kernel(sx, half, x.device)
    k2 = (ky[:, :, None] * kx[:, None, :]).to(x.dtype)           # [b, K, K]
    k2 = k2 / k2.sum((1, 2), keepdim=True)
    c = x.shape[1]
    # one group per (image, channel): [1, b*c, Y, X] convolved with [b*c, 1, K, K]
    w = k2.repeat_interleave(c, 0)[:, None]
    y = F.conv2d(x.reshape(1, b * c, *x.shape[-2:]), w, padding=k2.shape[-1] // 2, groups=b * c)
    return y.reshape(x.shape)


def downsample(x: torch.Tensor, factor: Union[int, Sequence[int]], rows_only: bool = False) -> torch.Tensor:
    """Keep every ``factor``-th pixel (row and column, or rows only) and interpolate bilinearly back to the
    full size (``align_corners=False``), per image (``factor`` one int or one per image; 1 = unchanged)."""
    x = _check_batch(x)
    b = x.shape[0]
    f = _per_image(factor, b, "factor", x.device)
    out = x.clone()
    for i in range(b):
        d = int(f[i])
        if float(f[i]) != d or d < 1:
            raise ValueError(f"downsampling factors must be integers >= 1, got {float(f[i])}")
        if d == 1:
            continue
        sub = x[i:i + 1, :, ::d] if rows_only else x[i:i + 1, :, ::d, ::d]
        out[i] = F.interpolate(sub, size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
    return out


def poisson_noise(x: torch.Tensor, scale: Number, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Photon noise: ``Poisson(scale * max(x, 0))`` per image (``scale``: photons at intensity 1, one number or
    one per image), drawn with ``generator`` (a ``torch.Generator`` on ``x``'s device) when given.  The result
    is in photon counts; :func:`renormalize` brings it back to the 1st/99th percentile range."""
    x = _check_batch(x)
    s = _per_image(scale, x.shape[0], "scale", x.device).to(device=x.device, dtype=x.dtype)
    rate = x.clamp_min(0) * s[:, None, None, None]
    return torch.poisson(rate, generator=generator)


def renormalize(x: torch.Tensor, lower: float = 1.0, upper: float = 99.0) -> torch.Tensor:
    """Each image and channel of ``x`` [B, C, Y, X] scaled so its ``lower``/``upper`` percentiles map to 0/1;
    channels whose percentiles differ by <= 1e-3 are left as they are (Cellpose 3.1's ``img_norm``)."""
    x = _check_batch(x)
    b, c = x.shape[:2]
    flat = x.reshape(b * c, -1)
    lo, hi = tensor_percentiles(flat, (lower, upper)).to(x.dtype)
    ok = (hi - lo) > 1e-3
    scale = torch.where(ok, hi - lo, torch.ones_like(hi))
    shift = torch.where(ok, lo, torch.zeros_like(lo))
    return ((flat - shift[:, None]) / scale[:, None]).reshape(x.shape)


def degrade(x: torch.Tensor, *, poisson: Optional[Number] = None, sigma: Optional[Number] = None,
            sigma_x: Optional[Number] = None, ds: Optional[Union[int, Sequence[int]]] = None,
            rows_only: bool = False, seed: Optional[int] = 0, generator: Optional[torch.Generator] = None,
            renorm: bool = True) -> torch.Tensor:
    """Degrade a batch with fixed parameters, in Cellpose's order: blur (``sigma``, ``sigma_x``) ->
    downsample (``ds``, ``rows_only``) -> Poisson noise (``poisson`` = photons at intensity 1) -> renormalise
    (1st/99th percentiles).  Parameters left None are skipped.  The noise is drawn from ``generator`` or a
    fresh one seeded with ``seed`` (None: PyTorch's global generator), so the same call gives the same image.
    ``x`` should be normalised (1st/99th percentiles -> 0/1), as Cellpose degrades its clean images."""
    x = _check_batch(x)
    y = x
    if sigma is not None or sigma_x is not None:
        y = gaussian_blur(y, sigma if sigma is not None else 0.0, sigma_x)
    if ds is not None:
        y = downsample(y, ds, rows_only=rows_only)
    if poisson is not None:
        if generator is None and seed is not None:
            generator = torch.Generator(device=x.device).manual_seed(int(seed))
        y = poisson_noise(y, poisson, generator)
    return renormalize(y) if renorm else y


class Degrade(torch.nn.Module):
    """Random Cellpose3 degradations of a batch, reproducible from a seed.

    Parameters
    ----------
    kind : str
        A :data:`PRESETS` name ("poisson", "blur", "downsample", "aniso").
    seed : int
        Seed of the NumPy generator for the per-image draws (which degradations, their parameters); the
        Poisson draws use a ``torch.Generator`` on the batch's device seeded from it.  Each call advances the
        generator, so a module built with the same seed gives the same sequence of batches.
    alpha : float
        Shape of the Gamma distribution of the Poisson scale (4, Cellpose).

    ``forward(x, diameters)``: ``x`` [B, C, Y, X] clean images normalised to 0/1 at their 1st/99th percentiles
    (negative values are clamped to 0 first, as Cellpose does), ``diameters`` the object diameter in each image
    in pixels (one number or one per image; blur scales with ``diameter / 30``).  Returns the degraded,
    renormalised batch; :attr:`last` holds the parameters drawn for it (``poisson``, ``sigma_y``, ``sigma_x``,
    ``ds``: one value per image, 0 / 1 where not applied).
    """

    def __init__(self, kind: str = "poisson", seed: int = 0, alpha: float = 4.0) -> None:
        super().__init__()
        self.kind = checks.choice(kind, "kind", tuple(PRESETS))
        self.preset = PRESETS[self.kind]
        self.alpha = checks.number(alpha, "alpha", lo=0.0, lo_open=True)
        self.rng = np.random.default_rng(checks.integer(seed, "seed", lo=0))
        self.last: Dict[str, np.ndarray] = {}

    def draw(self, b: int, diameters: np.ndarray) -> Dict[str, np.ndarray]:
        """The parameters of ``b`` images (see :attr:`last`), from the module's generator."""
        p, rng = self.preset, self.rng
        ds = np.ones(b, np.int64)
        down = rng.random(b) < p.p_downsample
        ds[down] = rng.integers(2, p.ds_max + 1, size=int(down.sum()))
        blur = (rng.random(b) < p.p_blur) | (ds > 1)
        u = rng.random(b)
        if p.aniso:
            jitter = rng.random(b) * 0.7 - 0.35
            u = np.where(ds > 1, np.clip(ds / p.gblur + jitter, 0.05, 1.5), u)
            sy = diameters / 30.0 * p.gblur * u
            sx = sy / 10.0
        else:
            u = np.where(ds > 1, ds / 2.0 / max(p.gblur, 1e-12), u)
            sy = diameters / 30.0 * p.gblur * (1.0 / max(p.gblur, 1e-12) + (1.0 - 1.0 / max(p.gblur, 1e-12)) * u)
            sx = sy
        sy, sx = np.where(blur, sy, 0.0), np.where(blur, sx, 0.0)
        noisy = rng.random(b) < p.p_poisson
        scale = np.maximum(rng.gamma(self.alpha, 1.0 / p.beta, size=b), 1.0)
        return {"poisson": np.where(noisy, scale, 0.0), "sigma_y": sy, "sigma_x": sx, "ds": ds,
                "seed": np.array([int(rng.integers(2 ** 62))])}

    def forward(self, x: torch.Tensor, diameters: Number = 30.0) -> torch.Tensor:  # noqa: D102
        x = _check_batch(x).clamp_min(0)
        b = x.shape[0]
        d = _per_image(diameters, b, "diameters", x.device).numpy()
        prm = self.draw(b, d)
        self.last = prm
        y = x
        if (prm["sigma_y"] > 0).any() or (prm["sigma_x"] > 0).any():
            y = gaussian_blur(y, prm["sigma_y"], prm["sigma_x"])
        if (prm["ds"] > 1).any():
            y = downsample(y, prm["ds"], rows_only=self.preset.aniso)
        noisy = prm["poisson"] > 0
        if noisy.any():
            g = torch.Generator(device=x.device).manual_seed(int(prm["seed"][0]))
            idx = torch.from_numpy(np.flatnonzero(noisy)).to(x.device)
            y = y.clone()
            y[idx] = poisson_noise(y[idx], prm["poisson"][noisy], g)
        return renormalize(y)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, {self.preset}"
