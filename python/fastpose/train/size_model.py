"""Cellpose's size model: ridge regression from style vectors to log cell diameter.

Fitted after training on styles of randomly rescaled training crops (``scale_range=1``: 0.5x-1.5x, no
diameter normalisation) with targets ``log(diam * scale) - log(diam_mean)``.  Stored in the model file
as ``{"A": list, "smean": list, "ymean": float, "diam_mean": float}``; the estimate for a style ``s`` is
``exp(A @ (s - smean) + log(diam_mean) + ymean)`` (what :meth:`fastpose.Segmenter.estimate_diameter`
computes).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Tuple

import numpy as np

from .. import checks
from .augment import random_affine, warp_sample
from .data import TrainData

__all__ = ["fit_size_model", "predict_diameters", "collect_styles", "train_size_model"]

log = logging.getLogger("fastpose.train")


def fit_size_model(styles: np.ndarray, diams: np.ndarray, diam_mean: float, l2: float = 1.0) -> Dict[str, Any]:
    """Ridge regression ``log(diams) - log(diam_mean) ~ A @ (styles - smean) + ymean``.

    Args:
        styles: [N, S] style vectors.
        diams: [N] diameters (pixels) of the images the styles came from.
        diam_mean: the network's mean diameter.
        l2: ridge penalty (Cellpose: 1.0).
    """
    diam_mean = checks.number(diam_mean, "diam_mean", lo=0.0, lo_open=True)
    l2 = checks.number(l2, "l2", lo=0.0)
    X = np.asarray(styles, np.float64)
    d = np.asarray(diams, np.float64)
    if X.ndim != 2 or d.shape != (X.shape[0],) or X.shape[0] == 0:
        raise ValueError(f"styles must be [N, S] and diams [N] with N >= 1, got {X.shape} and {d.shape}")
    if not (np.isfinite(X).all() and np.isfinite(d).all()):
        raise ValueError("styles and diams must be finite (no NaN or Inf)")
    if np.any(d <= 0):
        raise ValueError("diameters must be positive")
    y = np.log(d) - np.log(diam_mean)
    smean = X.mean(0)
    ymean = float(y.mean())
    Xc = (X - smean).T  # [S, N]
    A = np.linalg.solve(Xc @ Xc.T + l2 * np.eye(Xc.shape[0]), Xc @ (y - ymean))
    return {"A": A.tolist(), "smean": smean.tolist(), "ymean": ymean, "diam_mean": float(diam_mean)}


def predict_diameters(size_model: Dict[str, Any], styles: np.ndarray) -> np.ndarray:
    """Diameters (pixels) predicted for [N, S] styles (or one [S] style -> [1])."""
    s = np.atleast_2d(np.asarray(styles, np.float64))
    A = np.asarray(size_model["A"], np.float64)
    smean = np.asarray(size_model["smean"], np.float64)
    return np.exp((s - smean) @ A + np.log(float(size_model["diam_mean"])) + float(size_model["ymean"]))


def collect_styles(model: Any, data: TrainData, n_epochs: int = 10, batch_size: int = 8, tile: int = 224,
                   seed: int = 0, device: Any = "cpu") -> Tuple[np.ndarray, np.ndarray]:
    """Styles of ``n_epochs`` random crops per training image (scale 0.5-1.5, not diameter-normalised)
    and the diameters of the cells in each crop.  Returns (styles [N, S], diams [N])."""
    import torch

    n_epochs = checks.integer(n_epochs, "n_epochs", lo=1, hi=checks.LIMITS["epochs"])  # 0 is an error
    batch_size = checks.integer(batch_size, "batch_size", lo=1, hi=checks.LIMITS["batch_size"])
    tile = checks.integer(tile, "tile", lo=16, hi=4096)
    seed = checks.integer(seed, "seed", lo=0)
    rng = np.random.default_rng(seed)
    if len(data) == 0:
        raise ValueError("no training images to collect styles from")
    was_training = model.training
    model.eval()
    styles, diams = [], []
    jobs = [i for _ in range(n_epochs) for i in range(len(data))]
    try:
        with torch.inference_mode():
            for b in range(0, len(jobs), batch_size):
                xs = []
                for i in jobs[b:b + batch_size]:
                    aff = random_affine(rng, data.images[i].shape[-2:], tile, 1.0, scale_range=1.0)
                    xs.append(warp_sample(data.images[i], None, None, aff)[0])
                    diams.append(data.diameters[i] * aff.scale)
                _, st = model(torch.from_numpy(np.stack(xs)).to(device))
                styles.append(st.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(styles), np.asarray(diams)


def train_size_model(model: Any, data: TrainData, n_epochs: int = 10, batch_size: int = 8, tile: int = 224,
                     seed: int = 0, device: Any = "cpu", l2: float = 1.0) -> Dict[str, Any]:
    """Fit the size model of a trained network on its training data (see module docstring)."""
    styles, diams = collect_styles(model, data, n_epochs, batch_size, tile, seed, device)
    keep = diams > 0
    sm = fit_size_model(styles[keep], diams[keep], float(model.diam_mean_value), l2)
    pred = predict_diameters(sm, styles[keep])
    cc = float(np.corrcoef(np.log(pred), np.log(diams[keep]))[0, 1]) if keep.sum() > 2 else float("nan")
    log.info("size model: %d training crops, correlation of log diameters %.3f", int(keep.sum()), cc)
    return sm
