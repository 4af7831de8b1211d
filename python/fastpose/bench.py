"""``fastpose-bench``: time fastpose's operations (and Cellpose's, side by side, when importable).

Examples::

    fastpose-bench core                       # 2048x2048, ~4700 cells of diameter 30, CPU (+ GPU if present)
    fastpose-bench core --size 1024 --cells 1200 --device cpu --json out.json
    fastpose-bench core --3d                  # adds a 3D case (96x256x256)
    fastpose-bench segment --model nuclei     # end to end on 1080x1080 two-channel images (+ cellpose 3.x)
    fastpose-bench net --arch unet            # network step: tiles/s per backend and precision
    fastpose-bench sam --arch vit_l           # Cellpose-SAM-style segmentation (+ cellpose 4.x)

Every figure is the median of ``--repeats`` runs after one warm-up run; GPU timings synchronise the
device.  Peak memory is the growth of the process's peak resident set (Linux) during the call.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

log = logging.getLogger("fastpose.bench")


@dataclass
class Timing:
    name: str
    device: str
    median_s: float
    min_s: float
    max_s: float
    peak_mem_mb: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _rss_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def time_call(name: str, device: str, fn: Callable[[], Any], repeats: int = 3, sync: Optional[Callable[[], None]] = None,
              warmup: int = 1) -> Timing:
    """Median/min/max wall time of ``fn`` after ``warmup`` runs; peak RSS growth of one run (CPU)."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times: List[float] = []
    peak = None
    for i in range(repeats):
        measure_mem = i == 0 and _reset_peak_rss()
        base = _rss_mb() if measure_mem else None
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
        if measure_mem and base is not None:
            hw = _peak_rss_mb()
            peak = None if hw is None else max(0.0, hw - base)
    return Timing(name, device, statistics.median(times), min(times), max(times), peak)


def machine_header() -> Dict[str, Any]:
    import fastpose
    import fastpose.core as fc
    info: Dict[str, Any] = {
        "fastpose": fastpose.__version__, "python": platform.python_version(), "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
        "cuda_compiled": fc.cuda_compiled(), "cuda_available": fc.cuda_available(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        if fc.cuda_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["cuda_runtime"] = torch.version.cuda
            try:
                import subprocess
                info["driver"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                    text=True, timeout=10).stdout.strip().splitlines()[0]
            except Exception:  # noqa: BLE001 - no nvidia-smi: leave the driver out
                pass
    except ImportError:
        pass
    try:
        import cellpose  # noqa: F401
        from importlib.metadata import version
        info["cellpose"] = version("cellpose")
    except Exception:  # noqa: BLE001
        pass
    return info


def _core_cases(size: int, cells: int, diameter: float, do3d: bool):
    from .synthetic import random_labels
    cases = [("2d", random_labels((size, size), cells, diameter=diameter, seed=0))]
    if do3d:
        cases.append(("3d", random_labels((96, 256, 256), 600, diameter=24, seed=0)))
    return cases


def bench_core(size: int = 2048, cells: int = 4700, diameter: float = 30.0, repeats: int = 3,
               devices: Optional[List[str]] = None, cellpose: bool = True, do3d: bool = False) -> Dict[str, Any]:
    """Time every core operation on synthetic label images; Cellpose's functions too when importable."""
    import fastpose.core as fc

    if devices is None:
        devices = ["cpu"] + (["cuda"] if fc.cuda_available() else [])
    results: List[Timing] = []
    inputs: Dict[str, Any] = {}
    for case, labels in _core_cases(size, cells, diameter, do3d):
        nd = labels.ndim
        dP = 5.0 * fc.masks_to_flows(labels)
        rng = np.random.default_rng(0)
        dP_noisy = (dP + rng.normal(0, 0.2, dP.shape)).astype(np.float32)
        prob = np.where(labels > 0, 4.0, -4.0).astype(np.float32)
        mask = prob > 0
        inputs[case] = {"shape": list(labels.shape), "cells": int(labels.max()),
                        "foreground_pixels": int(mask.sum())}
        log.info("case %s: shape %s, %d cells", case, labels.shape, labels.max())
        for dev in devices:
            if dev == "cuda":
                import torch
                sync = torch.cuda.synchronize
                to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda()  # noqa: E731
            else:
                sync = None
                to = lambda a: a  # noqa: E731
            L, D, P, M = to(labels), to(dP_noisy), to(prob), to(mask.astype(np.uint8))
            with fc.use_backend(dev):
                pos = fc.follow_flows(D, M)
                lab = fc.get_masks(pos, M)
                tag = f"{case}"
                results.append(time_call(f"masks_to_flows[{tag}]", dev, lambda: fc.masks_to_flows(L), repeats, sync))
                results.append(time_call(f"follow_flows[{tag}]", dev, lambda: fc.follow_flows(D, M), repeats, sync))
                results.append(time_call(f"get_masks[{tag}]", dev, lambda: fc.get_masks(pos, M), repeats, sync))
                results.append(time_call(f"flow_errors[{tag}]", dev, lambda: fc.flow_errors(lab, D), repeats, sync))
                results.append(time_call(f"fill_holes[{tag}]", dev,
                                         lambda: fc.fill_holes_and_remove_small_masks(lab), repeats, sync))
                qc = nd == 2
                results.append(time_call(f"compute_masks[{tag}]", dev,
                                         lambda: fc.compute_masks(D, P, flow_qc_3d=qc), repeats, sync))
        if cellpose:
            results += _bench_cellpose(case, labels, dP_noisy, prob, repeats, devices)
    return {"machine": machine_header(), "inputs": inputs, "timings": [asdict(t) for t in results],
            "ratios": _ratios(results)}


def _bench_cellpose(case: str, labels: np.ndarray, dP: np.ndarray, prob: np.ndarray, repeats: int,
                    devices: Optional[List[str]] = None) -> List[Timing]:
    try:
        import torch
        from cellpose import dynamics
    except Exception:  # noqa: BLE001 - cellpose missing or broken: nothing to compare with
        log.info("cellpose not importable: skipping the side-by-side comparison")
        return []
    out: List[Timing] = []
    devs = [("cpu", torch.device("cpu"), None)]
    if torch.cuda.is_available():
        devs.append(("cuda", torch.device("cuda"), torch.cuda.synchronize))
    for name, tdev, sync in devs:
        if devices is not None and name not in devices:
            continue
        r = 1 if name == "cpu" else repeats
        w = 0 if name == "cpu" else 1
        qc = 0.4 if labels.ndim == 2 else 0.0
        try:
            out.append(time_call(f"cellpose.masks_to_flows[{case}]", name,
                                 lambda: dynamics.masks_to_flows(labels, device=tdev), r, sync, warmup=w))
            out.append(time_call(f"cellpose.compute_masks[{case}]", name,
                                 lambda: dynamics.compute_masks(dP, prob, flow_threshold=qc, device=tdev,
                                                                do_3D=labels.ndim == 3), r, sync, warmup=w))
        except Exception as e:  # noqa: BLE001 - a broken cellpose install must not lose fastpose's own figures
            log.warning("cellpose comparison failed on %s: %s", name, e)
    return out


def _ratios(results: List[Timing]) -> Dict[str, float]:
    by = {(t.name, t.device): t.median_s for t in results}
    ratios = {}
    for (name, dev), s in by.items():
        if name.startswith("cellpose."):
            ours = by.get((name[len("cellpose."):], dev))
            if ours:
                ratios[f"{name[len('cellpose.'):]}@{dev}"] = s / ours
    return ratios


def _bench_images(n: int, size: int, seed: int = 0) -> List[np.ndarray]:
    """Two-channel (Y, X, 2) uint16 images of nuclei-like blobs: channel 0 cytoplasm-like, 1 nuclei."""
    from scipy import ndimage as ndi

    from .synthetic import random_labels
    out = []
    for i in range(n):
        lab = random_labels((size, size), int(size * size / 1400), diameter=30, seed=seed + i)
        rng = np.random.default_rng(seed + i)
        cyto = ndi.gaussian_filter((lab > 0).astype(np.float32), 2) * rng.uniform(200, 800)
        nuc = ndi.gaussian_filter(ndi.binary_erosion(lab > 0, iterations=6).astype(np.float32), 1.5) * 1000
        img = np.stack([cyto, nuc], -1) + rng.normal(100, 20, (size, size, 2))
        out.append(np.clip(img, 0, 65535).astype(np.uint16))
    return out


def bench_segment(model: Optional[str] = None, n_images: int = 4, size: int = 1080, repeats: int = 2,
                  device: str = "auto", precision: str = "auto", batch_size: int = 8,
                  cellpose: bool = True, backend: str = "torch", files: Optional[List[str]] = None
                  ) -> Dict[str, Any]:
    """End-to-end ``segment`` throughput on two-channel images (synthetic, or the user's ``files``, read
    channels-last) with stage timings (load, normalise, network + blend, masks, write), and Cellpose 3's
    ``CellposeModel.eval`` with the same network weights when ``cellpose<4`` is importable."""
    import tempfile

    import torch

    from .models import UNet, load_model
    from .pipeline import Segmenter

    tmpdir = tempfile.mkdtemp(prefix="fastpose-bench-")
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
    from .io import read_image, write_tiff_atomic

    results: List[Timing] = []
    if files:
        results.append(time_call("load[files]", "cpu", lambda: [read_image(f) for f in files], 1, warmup=0))
        imgs = [read_image(f) for f in files]
        imgs = [i if i.ndim == 3 else i[..., None] for i in imgs]
        n_images, size = len(imgs), int(imgs[0].shape[0])
    else:
        imgs = _bench_images(n_images, size)
    seg = Segmenter(path, device=device, precision=precision, batch_size=batch_size, backend=backend)
    dev = seg.core_device
    sync = torch.cuda.synchronize if seg.device.type == "cuda" else None
    kw = dict(channel_axis=-1, channels=[0, 1] if imgs[0].shape[-1] > 1 else [0], diameter=seg.diam_mean)
    t = time_call("segment_many[e2e]", seg.device.type, lambda: list(seg.segment_many(imgs, **kw)), repeats, sync)
    t.extra["images_per_s"] = n_images / t.median_s
    t.extra["megapixels_per_s"] = n_images * size * size / 1e6 / t.median_s
    results.append(t)
    r = seg.segment(imgs[0], return_flows=True, **kw)
    x = seg._prepare(imgs[0], -1, None, [0, 1], False, True, False)
    results.append(time_call("normalise[1 image]", "cpu", lambda: seg._prepare(imgs[0], -1, None, [0, 1], False,
                                                                               True, False), repeats))
    results.append(time_call("network+blend[1 image]", seg.device.type,
                             lambda: seg._flows_2d(x, 1.0, False, 0.1), repeats, sync))
    results += _stage_timings(seg, x, r, repeats, sync)
    results.append(time_call("write masks TIFF[1 image]", "cpu",
                             lambda: write_tiff_atomic(os.path.join(tmpdir, "m_masks.tif"), r.masks), repeats))
    info = {"images": n_images, "size": size, "files": bool(files), "model": model or "random full-width U-Net", "backend": backend,
            "masks_first_image": int(r.masks.max()), "precision": seg.precision, "batch_size": batch_size}
    if cellpose:
        results += _bench_cellpose_eval(path, imgs, seg.device.type == "cuda", repeats)
    ours = results[0].median_s
    ratios = {f"segment vs {t.name}": t.median_s / ours for t in results if t.name.startswith("cellpose.")}
    return {"machine": machine_header(), "inputs": {"segment": info}, "timings": [asdict(t) for t in results],
            "ratios": ratios}


def _stage_timings(seg: Any, x: np.ndarray, r: Any, repeats: int, sync: Optional[Callable[[], None]]) -> List[Timing]:
    """One image's pipeline stage by stage: tiling, network, blending, tracking, clustering, flow QC, clean-up,
    and the whole mask recovery (``compute_masks``), each on the device the pipeline uses for it."""
    import torch

    import fastpose.core as fc
    dev = seg.core_device
    core = torch.device("cuda" if dev == "cuda" else "cpu")
    ndev = seg.device.type
    pad = [(-n) % 16 for n in x.shape[-2:]]
    xt = torch.nn.functional.pad(torch.from_numpy(x[None]).to(core), (0, pad[1], 0, pad[0])).contiguous()
    out: List[Timing] = [time_call("tiles[1 image]", dev, lambda: fc.make_tiles(xt, bsize=seg.bsize, overlap=0.1),
                                   repeats, sync)]
    tiles, grid = fc.make_tiles(xt, bsize=seg.bsize, overlap=0.1)
    flat = tiles.reshape(-1, *tiles.shape[2:])
    amp = ndev == "cuda" and seg.precision in ("fp16", "bf16")
    dt = torch.float16 if seg.precision == "fp16" else torch.bfloat16
    bs = seg.batch_size

    def network() -> torch.Tensor:
        ys = []
        with torch.inference_mode(), torch.autocast(ndev, dtype=dt, enabled=amp):
            for i in range(0, flat.shape[0], bs):
                ys.append(seg.runners[0](flat[i:i + bs].to(seg.device))[0][:, :3].float().to(core))
        return torch.cat(ys)
    out.append(time_call(f"network[1 image, {flat.shape[0]} tiles]", ndev, network, repeats, sync))
    y = network().reshape(1, tiles.shape[1], 3, *flat.shape[-2:])
    out.append(time_call("blend[1 image]", dev, lambda: fc.blend_tiles(y, grid, flow_channels=(0, 1)), repeats, sync))
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


def _time_cellpose_eval(path: str, imgs: List[np.ndarray], gpu: bool, repeats: int, tag: str,
                        **eval_kw: Any) -> List[Timing]:
    """``cellpose.models.CellposeModel(pretrained_model=path).eval`` over ``imgs``, timed as
    ``cellpose.CellposeModel.eval[tag]``; ``[]`` when cellpose is missing or fails (a broken cellpose install
    must not lose fastpose's own figures).  A callable keyword value is called with the loaded model."""
    try:
        import torch
        from cellpose import models as cpmodels
    except Exception:  # noqa: BLE001
        log.info("cellpose not importable: skipping the side-by-side comparison")
        return []
    sync = torch.cuda.synchronize if gpu else None
    try:
        m = cpmodels.CellposeModel(gpu=gpu, pretrained_model=path)
        kw = {k: v(m) if callable(v) else v for k, v in eval_kw.items()}

        def run():
            for img in imgs:
                m.eval(img, channel_axis=-1, flow_threshold=0.4, cellprob_threshold=0.0, **kw)
        t = time_call(f"cellpose.CellposeModel.eval[{tag}]", "cuda" if gpu else "cpu", run, max(1, repeats - 1), sync)
    except Exception as e:  # noqa: BLE001
        log.warning("cellpose comparison failed: %s", e)
        return []
    t.extra["images_per_s"] = len(imgs) / t.median_s
    return [t]


def _bench_cellpose_eval(path: str, imgs: List[np.ndarray], gpu: bool, repeats: int) -> List[Timing]:
    return _time_cellpose_eval(path, imgs, gpu, repeats, "e2e", channels=[1, 2],
                               diameter=lambda m: float(m.diam_mean))


def _print_table(res: Dict[str, Any]) -> None:
    m = res["machine"]
    print("# " + ", ".join(f"{k}={v}" for k, v in m.items()))
    for case, info in res["inputs"].items():
        print(f"# input {case}: {info}")
    print(f"{'operation':40s} {'device':6s} {'median ms':>10s} {'min ms':>9s} {'max ms':>9s} {'peak MB':>8s}")
    for t in res["timings"]:
        pm = "" if t["peak_mem_mb"] is None or t["device"] != "cpu" else f"{t['peak_mem_mb']:.0f}"
        print(f"{t['name']:40s} {t['device']:6s} {1e3 * t['median_s']:10.1f} {1e3 * t['min_s']:9.1f} "
              f"{1e3 * t['max_s']:9.1f} {pm:>8s}")
    for t in res["timings"]:
        if t.get("extra"):
            print(f"{t['name']}: " + ", ".join(f"{k}={v:.3g}" for k, v in t["extra"].items()))
    for k, v in res["ratios"].items():
        print(f"speed-up vs cellpose {k}: {v:.1f}x")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="fastpose-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("core", help="time the native core operations (flows, tracking, clustering, QC, clean-up)")
    c.add_argument("--size", type=int, default=2048, help="image side in pixels (default 2048)")
    c.add_argument("--cells", type=int, default=4700, help="number of cells (default 4700)")
    c.add_argument("--diameter", type=float, default=30.0, help="mean cell diameter in pixels (default 30)")
    c.add_argument("--repeats", type=int, default=3, help="timed runs per operation after a warm-up (default 3)")
    c.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CPU and, when present, the GPU")
    c.add_argument("--3d", dest="do3d", action="store_true", help="also time a 3D volume (96x256x256)")
    c.add_argument("--no-cellpose", action="store_true", help="skip the side-by-side Cellpose timings")
    c.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    g = sub.add_parser("segment", help="end-to-end segmentation throughput on 1080x1080 two-channel images")
    g.add_argument("--model", default=None, help="model file or name (default: random full-width U-Net)")
    g.add_argument("--images", type=int, default=4, help="images per timed run (default 4)")
    g.add_argument("--size", type=int, default=1080, help="image side (default 1080)")
    g.add_argument("--repeats", type=int, default=2, help="timed runs after a warm-up (default 2)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--backend", choices=["torch", "compile", "onnxruntime", "tensorrt"], default="torch",
                   help="network backend (default torch)")
    g.add_argument("--no-cellpose", action="store_true", help="skip Cellpose 3's CellposeModel.eval")
    g.add_argument("--files", nargs="+", metavar="IMAGE", help="time these images (channels last) instead of synthetic ones")
    g.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    n = sub.add_parser("net", help="network-step throughput (tiles/s): eager fp32/fp16/bf16, compile + CUDA graphs, "
                                   "onnxruntime, TensorRT")
    n.add_argument("--arch", default="unet", help="unet (224 tiles) or a ViT preset: vit_l, vit_s, vit_t (256 tiles)")
    n.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32], help="tiles per call (default 8 32)")
    n.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    n.add_argument("--repeats", type=int, default=20, help="timed calls per variant after warm-up (default 20)")
    n.add_argument("--backends", nargs="+", default=["torch", "compile", "onnxruntime", "tensorrt"],
                   help="which backends to time (default: all; those not installed are skipped with a warning)")
    n.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    s = sub.add_parser("sam", help="Cellpose-SAM-style ViT segmentation of 1200x1200 images, side by side with "
                                   "cellpose 4.x when importable")
    s.add_argument("--arch", default="vit_l", help="ViT preset (default vit_l, Cellpose-SAM's size)")
    s.add_argument("--images", type=int, default=4, help="images per timed run (default 4)")
    s.add_argument("--size", type=int, default=1200, help="image side (default 1200)")
    s.add_argument("--repeats", type=int, default=2, help="timed runs after a warm-up (default 2)")
    s.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="bf16")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--backend", choices=["torch", "compile", "onnxruntime", "tensorrt"], default="torch")
    s.add_argument("--no-cellpose", action="store_true", help="skip cellpose 4.x's CellposeModel.eval")
    s.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "net":
        from .bench_net import bench_net
        res = bench_net(args.arch, args.batch_sizes, args.device, args.repeats, args.backends)
    elif args.cmd == "sam":
        from .bench_net import bench_sam
        res = bench_sam(args.arch, args.images, args.size, args.repeats, args.precision, args.batch_size,
                        args.backend, not args.no_cellpose)
    elif args.cmd == "segment":
        res = bench_segment(args.model, args.images, args.size, args.repeats, args.device, args.precision,
                            args.batch_size, not args.no_cellpose, args.backend, args.files)
    else:
        devices = None if args.device == "auto" else [args.device]
        res = bench_core(args.size, args.cells, args.diameter, args.repeats, devices, not args.no_cellpose,
                         args.do3d)
    _print_table(res)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
