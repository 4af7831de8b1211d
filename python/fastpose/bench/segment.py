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
import statistics
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
from ._timing import Timing, bench_images, flops_per_tile, matmul_gflops, report, speedups, time_call

__all__ = ["bench_segment", "mask_agreement", "mosaic_from_folder", "network_floor", "ratios_vs_cellpose",
           "time_cellpose3_eval", "time_cellpose_eval", "time_segment_many", "two_channels"]

log = logging.getLogger("fastpose.bench")


def bench_segment(model: Optional[str] = None, n_images: int = 4, size: int = 1080, repeats: int = 2,
                  device: str = "auto", precision: str = "auto", batch_size: int = 8,
                  cellpose: bool = True, backend: str = "auto", files: Optional[List[str]] = None,
                  mosaic: Optional[str] = None, compare_torch: bool = True,
                  cellpose3_python: Optional[str] = None) -> Dict[str, Any]:
    """End-to-end ``segment_many`` throughput, side by side in one run: fastpose with ``backend`` (default
    "auto", as a user gets it), fastpose with eager PyTorch (``compare_torch``, when ``backend`` resolved to
    something else) and Cellpose 3's ``CellposeModel.eval`` on the same weights file (``cellpose``), with stage
    timings, the network's floor on this CPU and, when there is ground truth, AP@0.5 of each.

    Inputs: synthetic two-channel images, the user's ``files`` (a grey file gets a zero second channel, a
    multichannel one keeps its first two channels; a sibling ``<name>_masks.tif`` of ``<name>_img.tif`` is
    the truth), or ``mosaic``: a folder of ``*_img.tif`` / ``*_masks.tif`` pairs (DSB 2018 layout) tiled into
    one ``size`` x ``size`` image (:func:`mosaic_from_folder`).  Cellpose 3 runs in this Python when
    ``cellpose<4`` is importable, else in the environment of ``cellpose3_python`` /
    ``$FASTPOSE_CELLPOSE3_VENV`` / ``build-cp3`` (see ``scripts/test.sh``).
    """
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
        truths: List[Optional[np.ndarray]] = []
        if mosaic:
            img, truth = mosaic_from_folder(mosaic, size)
            imgs, truths = [two_channels(img)], [truth]
        elif files:
            results.append(time_call("load[files]", "cpu", lambda: [read_image(f) for f in files], 1, warmup=0))
            imgs = [two_channels(read_image(f)) for f in files]
            truths = [_truth_of(f, im.shape[:2]) for f, im in zip(files, imgs)]
        else:
            imgs = bench_images(n_images, size)
        n_images = len(imgs)
        megapixels = sum(im.shape[0] * im.shape[1] for im in imgs) / 1e6
        seg = Segmenter(path, device=device, precision=precision, batch_size=batch_size, backend=backend)
        sync = _sync(seg)
        # every image is (Y, X, 2) here: fastpose's channels [0, 1] and Cellpose's [1, 2] feed the same two planes
        kw = dict(channel_axis=-1, channels=[0, 1], diameter=seg.diam_mean)
        runs: Dict[str, List[np.ndarray]] = {}
        e2e = time_segment_many(seg, imgs, f"e2e, {seg.backend}", repeats, **kw)
        e2e.extra["megapixels_per_s"] = megapixels / e2e.median_s
        results.append(e2e)
        runs[seg.backend] = [r.masks for r in seg.segment_many(imgs, **kw)]
        e2e_torch: Optional[Timing] = None
        if compare_torch and seg.backend != "torch":
            seg_t = Segmenter(path, device=device, precision=precision, batch_size=batch_size, backend="torch")
            e2e_torch = time_segment_many(seg_t, imgs, "e2e, torch", repeats, **kw)
            e2e_torch.extra["megapixels_per_s"] = megapixels / e2e_torch.median_s
            results.append(e2e_torch)
            runs["torch"] = [r.masks for r in seg_t.segment_many(imgs, **kw)]
            del seg_t
        r = seg.segment(imgs[0], return_flows=True, **kw)
        # channel_axis, z_axis, channels, volume, normalize, invert: what segment() prepares the image with
        prep = (-1, None, [0, 1], False, True, False)
        x = seg.prepare(imgs[0], *prep)
        results.append(time_call("normalise[1 image]", "cpu", lambda: seg.prepare(imgs[0], *prep), repeats))
        results.append(time_call("network+blend[1 image]", seg.device.type,
                                 lambda: seg.maps(x, 1.0, False, 0.1), repeats, sync))
        stages = _stage_timings(seg, x, r, repeats, sync)
        results += stages
        results.append(time_call("write masks TIFF[1 image]", "cpu",
                                 lambda: write_tiff_atomic(os.path.join(tmpdir, "m_masks.tif"), r.masks), repeats))
        info: Dict[str, Any] = {
            "images": n_images, "size": [int(s) for s in imgs[0].shape[:2]], "files": bool(files),
            "mosaic": mosaic, "model": model or "random full-width U-Net", "backend": backend,
            "backend_resolved": seg.backend, "masks_first_image": int(r.masks.max()), "precision": seg.precision,
            "batch_size": batch_size, "threads": torch.get_num_threads()}
        net_row = next(t for t in stages if t.name.startswith("network["))
        if seg.device.type == "cpu":
            info["network_floor"] = network_floor(seg, net_row, imgs)
        cp_name = None
        if cellpose:
            # same weights file, so Cellpose's diam_mean is ours: both run at diameter = diam_mean
            cp = time_cellpose3_eval(path, imgs, seg.device.type == "cuda", repeats, "e2e",
                                     diameter=seg.diam_mean, python=cellpose3_python)
            if cp is not None:
                t, masks, version = cp
                results.append(t)
                runs["cellpose3"] = masks
                info["cellpose3"] = version
                cp_name = t.name
        info["masks"] = mask_agreement(runs, truths)
        pairs = [(f"fastpose {seg.backend} vs fastpose torch, end to end", e2e.name,
                  e2e_torch.name if e2e_torch else "")]
        if cp_name:
            pairs.append((f"fastpose {seg.backend} vs Cellpose 3 eval, end to end", e2e.name, cp_name))
            if e2e_torch:
                pairs.append(("fastpose torch vs Cellpose 3 eval, end to end", e2e_torch.name, cp_name))
    return report({"segment": info}, results, speedups(results, pairs))


def two_channels(img: np.ndarray) -> np.ndarray:
    """``img`` as (Y, X, 2) channels-last, as the benchmark feeds both packages: a grey (Y, X) or (Y, X, 1)
    image gets a zero second channel (what both do with a missing channel), more channels keep the first two."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"benchmark images must be 2D, grey (Y, X) or channels-last (Y, X, C); got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.concatenate([a, np.zeros_like(a)], -1)
    return np.ascontiguousarray(a[..., :2])


def _truth_of(path: str, shape: Sequence[int]) -> Optional[np.ndarray]:
    """The ``<name>_masks.tif`` beside ``<name>_img.tif`` when it exists and has the image's shape."""
    p = str(path)
    if not p.endswith("_img.tif"):
        return None
    m = p[: -len("_img.tif")] + "_masks.tif"
    if not os.path.isfile(m):
        return None
    lab = np.asarray(read_image(m))
    return lab if lab.shape == tuple(shape) else None


def mosaic_from_folder(folder: str, size: int = 1080, crop: int = 216) -> Any:
    """(image (Y, X) uint8, labels) of ``size`` x ``size``: ``crop`` x ``crop`` top-left crops of the grey
    images of a DSB 2018-style folder (``*_img.tif`` with ``*_masks.tif``, sorted by name), in a grid.

    Grey: an image whose colour channels are equal (fluorescence nuclei); histology/brightfield RGB images are
    skipped, as are images smaller than a crop.  Labels are renumbered so they are unique across crops.
    """
    import glob

    from ..labels import relabel_sequential

    if size < crop or size % crop:
        raise ValueError(f"mosaic size must be a positive multiple of the crop side {crop}, got {size}")
    n = size // crop
    img = np.zeros((size, size), np.uint8)
    lab = np.zeros((size, size), np.int32)
    k, nxt = 0, 1
    for f in sorted(glob.glob(os.path.join(folder, "*_img.tif"))):
        if k == n * n:
            break
        m = f[: -len("_img.tif")] + "_masks.tif"
        if not os.path.isfile(m):
            continue
        a = np.asarray(read_image(f))
        if a.ndim == 3:
            if a.shape[-1] >= 3 and not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
                continue
            a = a[..., 0]
        if a.dtype != np.uint8 or min(a.shape) < crop:
            continue
        t, _ = relabel_sequential(np.asarray(read_image(m))[:crop, :crop].astype(np.int64))
        y, x = divmod(k, n)
        img[y * crop:(y + 1) * crop, x * crop:(x + 1) * crop] = a[:crop, :crop]
        lab[y * crop:(y + 1) * crop, x * crop:(x + 1) * crop] = np.where(t > 0, t + nxt - 1, 0)
        nxt += int(t.max())
        k += 1
    if k < n * n:
        raise ValueError(f"{folder}: only {k} grey *_img.tif/*_masks.tif pairs of at least {crop}x{crop} pixels; "
                         f"a {size}x{size} mosaic needs {n * n}")
    return img, lab


def mask_agreement(runs: Dict[str, List[np.ndarray]], truths: Sequence[Optional[np.ndarray]]) -> Dict[str, Any]:
    """Per run: mask count, AP@0.5 against the truth (when every image has one) and, for each run other than
    the first, how many images have masks identical to the first run's and its AP@0.5 against them."""
    from ..metrics import average_precision

    out: Dict[str, Any] = {}
    names = list(runs)
    have_truth = bool(truths) and all(t is not None for t in truths)
    for name in names:
        m = runs[name]
        d: Dict[str, Any] = {"masks": int(sum(int(x.max()) for x in m))}
        if have_truth:
            d["ap50_vs_truth"] = float(np.mean(average_precision(list(truths), m, [0.5])[0]))
        if name != names[0]:
            ref = runs[names[0]]
            d[f"identical_to_{names[0]}"] = f"{sum(np.array_equal(a, b) for a, b in zip(ref, m))}/{len(m)}"
            d[f"ap50_vs_{names[0]}"] = float(np.mean(average_precision(ref, m, [0.5])[0]))
        out[name] = d
    return out


def network_floor(seg: Segmenter, net_row: Timing, imgs: Sequence[np.ndarray]) -> Dict[str, float]:
    """The network's floor on this CPU: FLOPs per tile over the measured fp32 matmul peak (tiles/s the FLOPs
    allow), against what the ``network[...]`` row (the first image's tiles) achieved, and the seconds the
    network's FLOPs of a whole ``segment_many`` run over ``imgs`` take at that peak."""
    from ..core.tiles import plan_tiles

    flops: Dict[Any, float] = {}

    def tiles(im: np.ndarray) -> Any:
        ly, lx = (s + seg.spec.padding(s) for s in im.shape[:2])
        g = plan_tiles(ly, lx, seg.spec.tile)
        key = (int(g.by), int(g.bx))
        if key not in flops:
            flops[key] = flops_per_tile(seg.nets[0], seg.nchan, key)
        return g.count, flops[key]

    peak = matmul_gflops() * 1e9
    n0, f0 = tiles(imgs[0])
    run_flops, run_tiles = 0.0, 0
    for im in imgs:
        n, f = tiles(im)
        run_flops += n * f
        run_tiles += n
    achieved = n0 / net_row.median_s
    floor_tps = peak / f0
    net_row.extra["tiles_per_s"] = achieved
    net_row.extra["fraction_of_floor"] = achieved / floor_tps
    return {"gflop_per_tile": f0 / 1e9, "matmul_peak_gflops": peak / 1e9, "floor_tiles_per_s": floor_tps,
            "achieved_tiles_per_s": achieved, "fraction_of_floor": achieved / floor_tps,
            "tiles_per_run": run_tiles, "network_floor_s_per_run": run_flops / peak}


def _sync(seg: Segmenter) -> Optional[Callable[[], None]]:
    return torch.cuda.synchronize if seg.device.type == "cuda" else None


def time_segment_many(seg: Segmenter, imgs: Sequence[np.ndarray], tag: str, repeats: int, **kw: Any) -> Timing:
    """``seg.segment_many(imgs, **kw)`` timed as ``fastpose segment_many[tag]``, with ``extra["images_per_s"]``."""
    t = time_call(f"fastpose segment_many[{tag}]", seg.device.type, lambda: list(seg.segment_many(imgs, **kw)), repeats,
                  _sync(seg))
    t.extra["images_per_s"] = len(imgs) / t.median_s
    return t


def ratios_vs_cellpose(ours: Timing, results: Sequence[Timing]) -> Dict[str, float]:
    """``"<ours> vs <cellpose row>"``: each Cellpose row in ``results`` over ``ours`` (:func:`speedups`)."""
    return speedups(results, [(f"{ours.name} vs {t.name}", ours.name, t.name) for t in results
                              if t.name.startswith("cellpose")])


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


#: Run by the Cellpose 3 environment's Python (imports nothing from fastpose): times
#: ``CellposeModel.eval`` over the images of an .npz (one warm-up pass, then ``repeats`` timed passes),
#: writes the masks of the last pass and prints one JSON line.
_CELLPOSE3_SCRIPT = r"""
import json, sys, time
import numpy as np
import torch
from cellpose import models, version
model, images, repeats, gpu, diameter, out = sys.argv[1:7]
d = np.load(images)
imgs = [d[f"arr_{i}"] for i in range(len(d.files))]
m = models.CellposeModel(gpu=gpu == "1", pretrained_model=model)
def run():
    return [m.eval(im, channel_axis=-1, channels=[1, 2], diameter=float(diameter), flow_threshold=0.4,
                   cellprob_threshold=0.0)[0] for im in imgs]
masks = run()
times = []
for _ in range(int(repeats)):
    t0 = time.perf_counter()
    masks = run()
    times.append(time.perf_counter() - t0)
np.savez_compressed(out, *masks)
print(json.dumps({"version": version, "times": times, "threads": torch.get_num_threads()}))
"""


def cellpose3_python(python: Optional[str] = None) -> Optional[str]:
    """The Python of a Cellpose 3 environment: ``python``, else ``$FASTPOSE_CELLPOSE3_VENV/bin/python``, else
    ``build-cp3/bin/python`` of the source tree (made by ``scripts/test.sh``); None when there is none."""
    from pathlib import Path

    cands = [Path(python)] if python else []
    if os.environ.get("FASTPOSE_CELLPOSE3_VENV"):
        cands.append(Path(os.environ["FASTPOSE_CELLPOSE3_VENV"]) / "bin" / "python")
    cands.append(Path(__file__).resolve().parents[3] / "build-cp3" / "bin" / "python")
    return next((str(c) for c in cands if c.is_file()), None)


def time_cellpose3_eval(path: str, imgs: Sequence[np.ndarray], gpu: bool, repeats: int, tag: str,
                        diameter: float, python: Optional[str] = None, timeout: float = 3600
                        ) -> Optional[Any]:
    """Cellpose 3's ``CellposeModel(pretrained_model=path).eval`` over ``imgs`` (channels [1, 2], flow
    threshold 0.4, cell probability threshold 0), as ``(Timing "cellpose3 CellposeModel.eval[tag]", masks,
    version)``; in this Python when ``cellpose<4`` is importable, else in a Cellpose 3 environment
    (:func:`cellpose3_python`) by subprocess.  None when there is none or it fails (with a warning: a broken
    Cellpose must not lose fastpose's own figures)."""
    import json
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    name = f"cellpose3 CellposeModel.eval[{tag}]"
    try:
        local = int(version("cellpose").split(".")[0]) == 3
    except (PackageNotFoundError, ValueError):
        local = False
    if local:
        from cellpose import models as cpmodels

        m = cpmodels.CellposeModel(gpu=gpu, pretrained_model=path)
        out: List[np.ndarray] = []

        def run() -> None:
            out[:] = [m.eval(im, channel_axis=-1, channels=[1, 2], diameter=diameter, flow_threshold=0.4,
                             cellprob_threshold=0.0)[0] for im in imgs]
        t = time_call(name, "cuda" if gpu else "cpu", run, repeats, torch.cuda.synchronize if gpu else None)
        t.extra["images_per_s"] = len(imgs) / t.median_s
        return t, list(out), version("cellpose")
    py = cellpose3_python(python)
    if py is None:
        log.warning("no Cellpose 3 to compare with: install cellpose<4 here, or make build-cp3 as scripts/test.sh "
                    "does (or set FASTPOSE_CELLPOSE3_VENV)")
        return None
    with tempfile.TemporaryDirectory(prefix="fastpose-cp3-") as d:
        script, data, res = (os.path.join(d, n) for n in ("cp3_eval.py", "images.npz", "masks.npz"))
        with open(script, "w") as f:
            f.write(_CELLPOSE3_SCRIPT)
        np.savez(data, *imgs)
        env = dict(os.environ, CELLPOSE_LOCAL_MODELS_PATH=os.path.join(d, "models"))
        try:
            p = subprocess.run([py, script, path, data, str(max(1, repeats)), "1" if gpu else "0", str(diameter),
                                res], capture_output=True, text=True, timeout=timeout, env=env)
            if p.returncode != 0:
                raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}")
            info = json.loads(p.stdout.strip().splitlines()[-1])
            z = np.load(res)
            masks = [z[f"arr_{i}"] for i in range(len(z.files))]
        except Exception as e:  # noqa: BLE001 - any failure of the other environment: say so, keep our figures
            log.warning("Cellpose 3 comparison (%s) failed: %s", py, e)
            return None
    ts = [float(v) for v in info["times"]]
    t = Timing(name, "cuda" if gpu else "cpu", statistics.median(ts), min(ts), max(ts))
    t.extra["images_per_s"] = len(imgs) / t.median_s
    t.extra["threads"] = info.get("threads")
    return t, masks, str(info["version"])
