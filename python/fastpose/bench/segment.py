"""``fastpose-bench segment``: end-to-end ``Segmenter.segment_many`` throughput on two-channel images (synthetic,
or the user's files), one image's data path stage by stage, and Cellpose 3's ``CellposeModel.eval`` on the same
weights file when ``cellpose<4`` is importable.

The stages follow :mod:`fastpose.inference`: normalise (``Segmenter.prepare``), network + blend
(``Segmenter.maps``), then each step alone on the device the segmenter runs it on: tiles, network, blend,
tracking, clustering, flow QC, clean-up and the whole mask recovery (``compute_masks``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import fastpose.core as fc

from ..inference import Segmenter
from ..inference.tiled import autocast_dtype
from ..io import read_image, write_tiff_atomic
from ..models import UNet, load_model
from ._timing import Timing, bench_images, report, time_call

__all__ = ["bench_segment", "time_segment_many", "time_cellpose_eval", "ratios_vs_cellpose"]

log = logging.getLogger("fastpose.bench")


def bench_segment(model: Optional[str] = None, n_images: int = 4, size: int = 1080, repeats: int = 2,
                  device: str = "auto", precision: str = "auto", batch_size: int = 8,
                  cellpose: bool = True, backend: str = "torch", files: Optional[List[str]] = None
                  ) -> Dict[str, Any]:
    """End-to-end ``segment`` throughput on two-channel images (synthetic, or the user's ``files``, read
    channels-last) with stage timings (load, normalise, network + blend, masks, write), and Cellpose 3's
    ``CellposeModel.eval`` with the same network weights when ``cellpose<4`` is importable."""
    with tempfile.TemporaryDirectory(prefix="fastpose-bench-") as tmpdir:
        if model is None:
            torch.manual_seed(0)
            net = UNet()
            path = os.path.join(tmpdir, "cpnet_random.pth")
            torch.save(net.state_dict(), path)  # a Cellpose-format file both packages read
            log.warning("no --model given: timing a randomly initialised full-width U-Net")
        else:
            net, _ = load_model(model)
            path = os.path.join(tmpdir, "cpnet.pth")
            torch.save({k: v.float() for k, v in net.state_dict().items()}, path)
        results: List[Timing] = []
        if files:
            results.append(time_call("load[files]", "cpu", lambda: [read_image(f) for f in files], 1, warmup=0))
            imgs = [read_image(f) for f in files]
            imgs = [i if i.ndim == 3 else i[..., None] for i in imgs]
            n_images, size = len(imgs), int(imgs[0].shape[0])
        else:
            imgs = bench_images(n_images, size)
        seg = Segmenter(path, device=device, precision=precision, batch_size=batch_size, backend=backend)
        sync = _sync(seg)
        channels = [0, 1] if imgs[0].shape[-1] > 1 else [0]
        kw = dict(channel_axis=-1, channels=channels, diameter=seg.diam_mean)
        e2e = time_segment_many(seg, imgs, "e2e", repeats, **kw)
        e2e.extra["megapixels_per_s"] = n_images * size * size / 1e6 / e2e.median_s
        results.append(e2e)
        r = seg.segment(imgs[0], return_flows=True, **kw)
        # channel_axis, z_axis, channels, volume, normalize, invert: what segment() prepares the image with
        prep = (-1, None, channels, False, True, False)
        x = seg.prepare(imgs[0], *prep)
        results.append(time_call("normalise[1 image]", "cpu", lambda: seg.prepare(imgs[0], *prep), repeats))
        results.append(time_call("network+blend[1 image]", seg.device.type,
                                 lambda: seg.maps(x, 1.0, False, 0.1), repeats, sync))
        results += _stage_timings(seg, x, r, repeats, sync)
        results.append(time_call("write masks TIFF[1 image]", "cpu",
                                 lambda: write_tiff_atomic(os.path.join(tmpdir, "m_masks.tif"), r.masks), repeats))
        info = {"images": n_images, "size": size, "files": bool(files), "model": model or "random full-width U-Net",
                "backend": backend, "masks_first_image": int(r.masks.max()), "precision": seg.precision,
                "batch_size": batch_size}
        if cellpose:
            # same weights file, so Cellpose's diam_mean is ours: both run at diameter = diam_mean
            results += time_cellpose_eval(path, imgs, seg.device.type == "cuda", repeats, "e2e", channels=[1, 2],
                                          diameter=seg.diam_mean)
    return report({"segment": info}, results, ratios_vs_cellpose(e2e, results))


def _sync(seg: Segmenter) -> Optional[Callable[[], None]]:
    return torch.cuda.synchronize if seg.device.type == "cuda" else None


def time_segment_many(seg: Segmenter, imgs: Sequence[np.ndarray], tag: str, repeats: int, **kw: Any) -> Timing:
    """``seg.segment_many(imgs, **kw)`` timed as ``segment_many[tag]``, with ``extra["images_per_s"]``."""
    t = time_call(f"segment_many[{tag}]", seg.device.type, lambda: list(seg.segment_many(imgs, **kw)), repeats,
                  _sync(seg))
    t.extra["images_per_s"] = len(imgs) / t.median_s
    return t


def ratios_vs_cellpose(ours: Timing, results: Sequence[Timing]) -> Dict[str, float]:
    """``"segment vs cellpose.<op>"``: each Cellpose timing in ``results`` over fastpose's ``ours``."""
    return {f"segment vs {t.name}": t.median_s / ours.median_s for t in results if t.name.startswith("cellpose.")}


def _stage_timings(seg: Segmenter, x: np.ndarray, r: Any, repeats: int,
                   sync: Optional[Callable[[], None]]) -> List[Timing]:
    """One image's data path stage by stage: tiling, network, blending, tracking, clustering, flow QC, clean-up,
    and the whole mask recovery (``compute_masks``), each on the device the segmenter uses for it.  ``x`` is
    the prepared image [C, Y, X], ``r`` its result with flows."""
    dev = seg.core_device
    core = torch.device(dev)
    ndev = seg.device.type
    spec = seg.spec
    py, px = (spec.padding(n) for n in x.shape[-2:])  # padded as the tiled path pads: half before, half after
    xt = F.pad(torch.from_numpy(x[None]).to(core), (px // 2, px - px // 2, py // 2, py - py // 2)).contiguous()
    out: List[Timing] = [time_call("tiles[1 image]", dev, lambda: fc.make_tiles(xt, bsize=spec.tile, overlap=0.1),
                                   repeats, sync)]
    tiles, grid = fc.make_tiles(xt, bsize=spec.tile, overlap=0.1)
    flat = tiles.reshape(-1, *tiles.shape[2:])
    nout = spec.n_outputs
    amp = ndev == "cuda" and seg.precision in ("fp16", "bf16")
    dt = autocast_dtype(seg.precision)
    bs = seg.batch_size
    runner = seg.runners[0]

    def network() -> torch.Tensor:
        ys = []
        with torch.inference_mode(), torch.autocast(ndev, dtype=dt, enabled=amp):
            for i in range(0, flat.shape[0], bs):
                y = runner(flat[i:i + bs].to(seg.device))
                y = y[0] if isinstance(y, (tuple, list)) else y  # (maps, style) or maps
                ys.append(y[:, :nout].float().to(core))
        return torch.cat(ys)
    out.append(time_call(f"network[1 image, {flat.shape[0]} tiles]", ndev, network, repeats, sync))
    y = network().reshape(1, tiles.shape[1], nout, *flat.shape[-2:])
    flow_channels = spec.flow_channels or None
    out.append(time_call("blend[1 image]", dev, lambda: fc.blend_tiles(y, grid, flow_channels=flow_channels),
                         repeats, sync))
    to = (lambda a: torch.as_tensor(a).to(core)) if dev == "cuda" else np.asarray  # noqa: E731
    D, P = to(r.flows), to(r.cellprob)
    M = P > 0
    with fc.use_backend(dev):
        pos = fc.follow_flows(D, M)
        lab = fc.get_masks(pos, M)
        out.append(time_call("tracking[1 image]", dev, lambda: fc.follow_flows(D, M), repeats, sync))
        out.append(time_call("clustering[1 image]", dev, lambda: fc.get_masks(pos, M), repeats, sync))
        out.append(time_call("flow QC[1 image]", dev, lambda: fc.remove_bad_flow_masks(lab, D, 0.4), repeats, sync))
        out.append(time_call("fill holes[1 image]", dev, lambda: fc.fill_holes_and_remove_small_masks(lab), repeats,
                             sync))
        out.append(time_call("compute_masks[1 image]", dev, lambda: fc.compute_masks(D, P), repeats, sync))
    return out


def time_cellpose_eval(path: str, imgs: Sequence[np.ndarray], gpu: bool, repeats: int, tag: str,
                       **eval_kw: Any) -> List[Timing]:
    """``cellpose.models.CellposeModel(pretrained_model=path).eval`` over ``imgs``, timed as
    ``cellpose.CellposeModel.eval[tag]``; ``[]`` when cellpose is missing or fails (a broken cellpose install
    must not lose fastpose's own figures)."""
    try:
        from cellpose import models as cpmodels
    except Exception:  # noqa: BLE001
        log.info("cellpose not importable: skipping the side-by-side comparison")
        return []
    sync = torch.cuda.synchronize if gpu else None
    try:
        m = cpmodels.CellposeModel(gpu=gpu, pretrained_model=path)

        def run():
            for img in imgs:
                m.eval(img, channel_axis=-1, flow_threshold=0.4, cellprob_threshold=0.0, **eval_kw)
        t = time_call(f"cellpose.CellposeModel.eval[{tag}]", "cuda" if gpu else "cpu", run, max(1, repeats - 1), sync)
    except Exception as e:  # noqa: BLE001
        log.warning("cellpose comparison failed: %s", e)
        return []
    t.extra["images_per_s"] = len(imgs) / t.median_s
    return [t]
