"""``fastpose-bench``: time fastpose's operations (and Cellpose's, side by side, when importable).

Examples::

    fastpose-bench core                       # 2048x2048, ~4700 cells of diameter 30, CPU (+ GPU if present)
    fastpose-bench core --size 1024 --cells 1200 --device cpu --json out.json
    fastpose-bench core --3d                  # adds a 3D case (96x256x256)
    fastpose-bench segment --model nuclei     # end to end on 1080x1080 two-channel images (+ eager torch, Cellpose 3)
    fastpose-bench segment --model nuclei --mosaic /path/to/dsb2018/train   # a 1080x1080 mosaic of real nuclei
    fastpose-bench net --arch unet            # network step: tiles/s per backend and precision
    fastpose-bench sam --arch vit_l           # Cellpose-SAM-style segmentation (+ cellpose 4.x)
    fastpose-bench memory --sizes 2048 5000   # peak memory of 2D segmentation against image size
    fastpose-bench restore --data /path/to/dsb2018/train   # AP won back by restoration on degraded nuclei
    fastpose-bench meanshift                  # mean shift of Cellulus-like embeddings (1024x1024) vs scikit-learn
    fastpose-bench cellulus --data /path/to/dsb2018/train --model cellulus.pth --model nuclei   # F1@0.5 and SEG
    fastpose-bench fewshot --data TARGET/ --model nuclei --shots 1 2 4 8 --png fewshot.png   # Scellseg's shot scale
    fastpose-bench distributed --data /path/to/dsb2018/train --sizes 4096 8192   # blocks on Dask vs in memory

Every figure is the median of ``--repeats`` runs after one warm-up run; GPU timings synchronise the
device.  Peak memory is the growth of the process's peak resident set (Linux) during the call.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Dict, List, Optional

from .. import checks
from ..io import atomic_write

__all__ = ["main", "build_parser", "print_table"]


def _int(lo: int, hi: int) -> Any:
    """An argparse type: an integer in [lo, hi], refused with the flag's name otherwise (``fastpose.checks``)."""
    return checks.arg(checks.integer, lo=lo, hi=hi)


def _write_json(path: Optional[str], res: Dict[str, Any]) -> None:
    """``--json PATH``: the results, atomically (nothing when no path was given)."""
    if path:
        atomic_write(path, lambda f: json.dump(res, f, indent=1), text=True)


def build_parser() -> argparse.ArgumentParser:
    """The ``fastpose-bench`` argument parser: one subcommand per benchmark."""
    p = argparse.ArgumentParser(prog="fastpose-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("core", help="time the native core operations (flows, tracking, clustering, QC, clean-up)")
    c.add_argument("--size", type=_int(16, 32768), default=2048, help="image side in pixels (default 2048)")
    c.add_argument("--cells", type=_int(1, 10_000_000), default=4700, help="number of cells (default 4700)")
    c.add_argument("--diameter", type=checks.arg(checks.number, lo=2.0, hi=1000.0), default=30.0, help="mean cell diameter in pixels (default 30)")
    c.add_argument("--repeats", type=_int(1, 1000), default=3, help="timed runs per operation after a warm-up (default 3)")
    c.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CPU and, when present, the GPU")
    c.add_argument("--3d", dest="do3d", action="store_true", help="also time a 3D volume (96x256x256)")
    c.add_argument("--no-cellpose", action="store_true", help="skip the side-by-side Cellpose timings")
    c.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    g = sub.add_parser("segment", help="end-to-end segmentation throughput on 1080x1080 two-channel images")
    g.add_argument("--model", default=None, help="model file or name (default: random full-width U-Net)")
    g.add_argument("--images", type=_int(1, 10_000), default=4, help="images per timed run (default 4)")
    g.add_argument("--size", type=_int(16, 32768), default=1080, help="image side (default 1080)")
    g.add_argument("--repeats", type=_int(1, 1000), default=2, help="timed runs after a warm-up (default 2)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    g.add_argument("--batch-size", type=_int(1, checks.LIMITS["batch_size"]), default=8)
    g.add_argument("--backend", choices=["auto", "torch", "compile", "onnxruntime", "tensorrt"], default="auto",
                   help="network backend (default auto, as fastpose segment: onnxruntime on the CPU, torch on a GPU)")
    g.add_argument("--no-torch", action="store_true",
                   help="skip the side-by-side run with eager PyTorch (made when --backend resolves to another one)")
    g.add_argument("--no-cellpose", action="store_true", help="skip Cellpose 3's CellposeModel.eval")
    g.add_argument("--cellpose3-python", metavar="PYTHON",
                   help="Python of a Cellpose 3 environment (default: cellpose<4 in this one, else "
                        "$FASTPOSE_CELLPOSE3_VENV or build-cp3, made by scripts/test.sh)")
    g.add_argument("--files", nargs="+", metavar="IMAGE",
                   help="time these images (grey or channels last; <name>_masks.tif beside <name>_img.tif is "
                        "the truth) instead of synthetic ones")
    g.add_argument("--mosaic", metavar="DIR",
                   help="time one --size x --size mosaic of the grey *_img.tif/*_masks.tif pairs in DIR (DSB 2018)")
    g.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    n = sub.add_parser("net", help="network-step throughput (tiles/s): eager fp32/fp16/bf16, compile + CUDA graphs, "
                                   "onnxruntime, TensorRT")
    n.add_argument("--arch", default="unet", help="unet (224 tiles) or a ViT preset: vit_l, vit_s, vit_t (256 tiles)")
    n.add_argument("--batch-sizes", type=_int(1, checks.LIMITS["batch_size"]), nargs="+", default=[8, 32], help="tiles per call (default 8 32)")
    n.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    n.add_argument("--repeats", type=_int(1, 10_000), default=20, help="timed calls per variant after warm-up (default 20)")
    n.add_argument("--backends", nargs="+", default=["torch", "compile", "onnxruntime", "tensorrt"],
                   help="which backends to time (default: all; those not installed are skipped with a warning)")
    n.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    s = sub.add_parser("sam", help="Cellpose-SAM-style ViT segmentation of 1200x1200 images, side by side with "
                                   "cellpose 4.x when importable")
    s.add_argument("--arch", default="vit_l", help="ViT preset (default vit_l, Cellpose-SAM's size)")
    s.add_argument("--images", type=_int(1, 10_000), default=4, help="images per timed run (default 4)")
    s.add_argument("--size", type=_int(16, 32768), default=1200, help="image side (default 1200)")
    s.add_argument("--repeats", type=_int(1, 1000), default=2, help="timed runs after a warm-up (default 2)")
    s.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="bf16")
    s.add_argument("--batch-size", type=_int(1, checks.LIMITS["batch_size"]), default=8)
    s.add_argument("--backend", choices=["torch", "compile", "onnxruntime", "tensorrt"], default="torch")
    s.add_argument("--no-cellpose", action="store_true", help="skip cellpose 4.x's CellposeModel.eval")
    s.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    m = sub.add_parser("memory", help="peak memory (RSS) of 2D segmentation against image size, one fresh process "
                                      "per size (cheap network of the U-Net's spec unless --model)")
    m.add_argument("--sizes", type=_int(16, 200_000), nargs="+", default=[2048, 5000, 10000], help="image sides (default "
                   "2048 5000 10000)")
    m.add_argument("--model", default="cheap", help="'cheap' (one 3x3 convolution, default) or a model name/file")
    m.add_argument("--max-memory", default="auto", help="memory budget passed to the Segmenter (default: its own)")
    m.add_argument("--phases", choices=["all", "maps"], default="all", help="'maps': skip mask recovery")
    m.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    r = sub.add_parser("restore", help="Cellpose-SAM's degradation benchmark on held-out nuclei: AP@0.5 of clean, "
                                       "degraded and restored-then-segmented images, and restoration throughput")
    r.add_argument("--data", required=True, metavar="DIR",
                   help="folder of *_img.tif / *_masks.tif pairs (DSB 2018 stage-1 train for the nuclei recipe's "
                        "split)")
    r.add_argument("--restore", default="oneclick_nuclei", metavar="MODEL",
                   help="restoration model: bundled name or file (default oneclick_nuclei)")
    r.add_argument("--model", default="nuclei", help="segmentation model: bundled name or file (default nuclei)")
    r.add_argument("--holdout-every", type=_int(1, 1_000_000), default=10, metavar="N",
                   help="the held-out images: ids whose SHA-1 is 0 mod N, the bundled sample excluded (default 10, "
                        "the nuclei recipe's split)")
    r.add_argument("--limit", type=_int(1, 10_000_000), default=None, metavar="N",
                   help="only the first N held-out images (smoke runs)")
    r.add_argument("--conditions", nargs="+", default=None, metavar="NAME",
                   help="degradation conditions (default all nine: poisson_5 poisson_2.5 poisson_0.5 blur_2 blur_4 "
                        "blur_8 downsample_2 downsample_5 downsample_10)")
    r.add_argument("--seed", type=_int(0, 2 ** 62), default=0, help="base of the per-image noise seeds (default 0)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where segmentation and restoration run (auto: the GPU when present); the throughput is "
                        "timed there (auto: the CPU and, when present, the GPU)")
    r.add_argument("--backend", choices=["auto", "torch", "compile", "onnxruntime", "tensorrt"], default="auto",
                   help="network backend (default auto: onnxruntime on the CPU, torch on a GPU)")
    r.add_argument("--batch-size", type=_int(1, checks.LIMITS["batch_size"]), default=8)
    r.add_argument("--repeats", type=_int(0, 1000), default=3,
                   help="timed restorations per device after a warm-up (default 3; 0: no throughput)")
    r.add_argument("--size", type=_int(16, 32768), default=1024, help="side of the throughput image (default 1024)")
    r.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    r.add_argument("--card", metavar="PATH",
                   help="merge the results into this model card (JSON) as validation.degradation_benchmark, "
                        "atomically")
    ms = sub.add_parser("meanshift", help="mean-shift clustering of Cellulus-like embeddings of the foreground of a "
                                          "synthetic image, fastpose beside scikit-learn's MeanShift")
    ms.add_argument("--size", type=_int(16, 32768), default=1024, help="image side (default 1024)")
    ms.add_argument("--objects", type=_int(1, checks.LIMITS["synthetic_cells"]), default=400,
                    help="objects in the image (default 400)")
    ms.add_argument("--diameter", type=checks.arg(checks.number, lo=2.0, hi=1000.0), default=30.0,
                    help="mean object diameter in pixels (default 30)")
    ms.add_argument("--sigma", type=checks.arg(checks.number, lo=0.0, hi=1000.0), default=2.0,
                    help="embedding noise around each object's centre, pixels (default 2)")
    ms.add_argument("--bandwidth", type=checks.arg(checks.number, lo=0.0, lo_open=True, hi=1e6), default=15.0,
                    help="mean-shift bandwidth (default 15: Cellulus' 0.5 x object size 30)")
    ms.add_argument("--fraction", type=checks.arg(checks.probability, open_low=True), default=0.1,
                    help="fraction of the foreground pixels the centres are fitted on (default 0.1, as Cellulus)")
    ms.add_argument("--seeds", choices=["bin", "all"], default="bin",
                    help="bin: bin seeding (scikit-learn bin_seeding=True, default); all: every fitted pixel")
    ms.add_argument("--repeats", type=_int(1, 1000), default=3, help="timed runs after a warm-up (default 3)")
    ms.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: CPU and, when present, the GPU")
    ms.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn's MeanShift")
    ms.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    fs = sub.add_parser("fewshot", help="Scellseg's shot-scale experiment: mAP and AJI of few-shot fine-tuning "
                                        "(contrastive and classic) against the number of annotated images")
    fs.add_argument("--data", required=True, metavar="DIR", help="the target set: *_img.tif + *_masks.tif")
    fs.add_argument("--model", default="nuclei", help="base model: bundled name or file (default nuclei)")
    fs.add_argument("--test", default=None, metavar="DIR",
                    help="score on this folder of *_img.tif + *_masks.tif (its images are also the query images) "
                         "instead of on the --data images not drawn")
    fs.add_argument("--shots", type=_int(1, 100_000), nargs="+", default=[1, 2, 4, 8],
                    help="shot levels (default 1 2 4 8)")
    fs.add_argument("--draws", type=_int(1, 1000), default=3,
                    help="random draws per level, shared by every strategy (default 3; the paper 10)")
    fs.add_argument("--strategies", nargs="+", choices=["contrastive", "classic"],
                    default=["contrastive", "classic"], help="fine-tuning strategies (default both)")
    fs.add_argument("--steps", type=_int(1, 1_000_000), default=100, help="fine-tuning steps (default 100)")
    fs.add_argument("--halve-every", type=_int(1, 1_000_000), default=None, metavar="N",
                    help="halve the learning rate every N steps (default a quarter of --steps)")
    fs.add_argument("--batch-size", type=_int(1, checks.LIMITS["batch_size"]), default=8,
                    help="crops per step (default 8)")
    fs.add_argument("--tile", type=_int(16, 4096), default=224, help="crop side (default 224)")
    fs.add_argument("--channel-axis", type=checks.arg(checks.axis), default=None,
                    help="channel axis of multichannel images")
    fs.add_argument("--max-test", type=_int(1, 10_000_000), default=None, metavar="N",
                    help="score at most N of the images not drawn (default all)")
    fs.add_argument("--contrast", default=None, metavar="DIR",
                    help="contrast styles (a folder of style folders; default the shipped ones)")
    fs.add_argument("--contrast-styles", nargs="+", default=None, metavar="STYLE",
                    help="keep only these contrast styles (e.g. those other than the target's: dsb_fluorescence "
                         "synthetic_cells)")
    fs.add_argument("--seed", type=_int(0, 2 ** 31 - 1), default=0, help="seed of the draws and fine-tuning")
    fs.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    fs.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    fs.add_argument("--png", metavar="PATH", help="also plot mAP against shots (needs matplotlib)")
    ds = sub.add_parser("distributed", help="blockwise segmentation on a Dask LocalCluster against the in-memory "
                                             "path: time, peak memory per worker, agreement of the masks")
    ds.add_argument("--data", required=True, metavar="DIR", help="DSB 2018 train folder (its one-channel images "
                                                                 "make the mosaics)")
    ds.add_argument("--sizes", type=_int(256, 1 << 20), nargs="+", default=[4096, 8192],
                    help="mosaic sides, pixels (default 4096 8192)")
    ds.add_argument("--model", default="nuclei", help="model (default nuclei)")
    ds.add_argument("--block", type=_int(64, 1 << 16), default=1024, help="block core side (default 1024)")
    ds.add_argument("--workers", type=_int(1, 1024), default=2, help="worker processes (default 2)")
    ds.add_argument("--threads", type=_int(1, 1024), default=1, help="threads per worker (default 1)")
    ds.add_argument("--no-memory", action="store_true", help="skip the in-memory runs")
    ds.add_argument("--volume", type=_int(16, 1 << 16), nargs=3, default=None, metavar=("Z", "Y", "X"),
                    help="also a 3D volume of synthetic nuclei of this shape (blocks of --block3d)")
    ds.add_argument("--block3d", type=_int(16, 4096), default=128, help="block side in 3D (default 128)")
    ds.add_argument("--halo", type=_int(0, 4096), default=None,
                    help="halo of the 2D blocks, pixels (default: 4 x the model's diameter)")
    ds.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    cl = sub.add_parser("cellulus", help="F1@0.5 and SEG (Cellulus' metrics, pooled) of Cellulus and Cellpose models "
                                         "on the nuclei recipe's held-out DSB images, fluorescence and all")
    cl.add_argument("--data", required=True, metavar="DIR",
                    help="folder of *_img.tif / *_masks.tif pairs (DSB 2018 stage-1 train for the nuclei recipe's "
                         "split)")
    cl.add_argument("--model", action="append", required=True, metavar="MODEL",
                    help="a model to score: bundled name (nuclei) or file (a Cellulus model from fastpose train "
                         "--method cellulus, a Cellpose model); repeat it to put models side by side")
    cl.add_argument("--holdout-every", type=_int(1, 1_000_000), default=10, metavar="N",
                    help="the held-out images: ids whose SHA-1 is 0 mod N, the bundled sample excluded (default 10, "
                         "the nuclei recipe's split)")
    cl.add_argument("--limit", type=_int(1, 10_000_000), default=None, metavar="N",
                    help="only the first N held-out images (smoke runs)")
    cl.add_argument("--label-diameter", action="store_true",
                    help="segment at each image's true median diameter (default: each model at its own scale: "
                         "Cellpose at its estimated diameter, Cellulus unresized at its object size)")
    cl.add_argument("--object-size", type=checks.arg(checks.number, lo=0.0, lo_open=True,
                                                     hi=checks.LIMITS["diameter"]), default=None, metavar="PX",
                    help="object size of the Cellulus models (default: the one stored in each)")
    cl.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto (default): the GPU when present")
    cl.add_argument("--backend", choices=["auto", "torch", "compile", "onnxruntime", "tensorrt"], default="auto",
                    help="network backend of Cellpose models (default auto: onnxruntime on the CPU, torch on a GPU; "
                         "Cellulus models run their network themselves)")
    cl.add_argument("--batch-size", type=_int(1, checks.LIMITS["batch_size"]), default=8)
    cl.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    cl.add_argument("--card", metavar="PATH",
                    help="merge the results (one --model) into this model card (JSON) as "
                         "validation.f1_seg_heldout, atomically")
    return p


def print_table(res: Dict[str, Any]) -> None:
    """A benchmark result (see :func:`fastpose.bench._timing.report`) as a table on stdout."""
    m = res["machine"]
    print("# " + ", ".join(f"{k}={v}" for k, v in m.items()))
    for case, info in res["inputs"].items():
        print(f"# input {case}: {info}")
    print(f"{'operation':40s} {'device':6s} {'median ms':>10s} {'min ms':>9s} {'max ms':>9s} {'peak MB':>8s}")
    for t in res["timings"]:
        pm = "" if t["peak_mem_mb"] is None or t["device"] != "cpu" else f"{t['peak_mem_mb']:.0f}"
        print(f"{t['name']:40s} {t['device']:6s} {1e3 * t['median_s']:10.1f} {1e3 * t['min_s']:9.1f} "
              f"{1e3 * t['max_s']:9.1f} {pm:>8s}")
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    for t in res["timings"]:
        if t.get("extra"):
            print(f"{t['name']}: " + ", ".join(f"{k}={fmt(v)}" for k, v in t["extra"].items()))
    for k, v in res["ratios"].items():
        print(f"speed-up, {k}: {v:.2f}x")


def main(argv: Optional[List[str]] = None) -> int:
    """Run one benchmark (``argv`` or the command line), print its table and write ``--json`` atomically.

    Exit status: 0 done, 2 a usage or input error (one sentence on stderr, no traceback)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return _run(args)
    except (ValueError, OSError, RuntimeError) as e:
        logging.getLogger("fastpose.bench").error("fastpose-bench %s: %s", args.cmd, e)
        return 2


def _run(args: argparse.Namespace) -> int:
    # each benchmark module is imported on use, so --help and `import fastpose.bench` do not load PyTorch
    if args.cmd == "memory":
        from .memory import bench_memory, print_memory_table
        res = bench_memory(args.sizes, args.model, args.max_memory, args.phases)
        print_memory_table(res)
        _write_json(args.json, res)
        return 0
    if args.cmd == "restore":
        from ..train.card import check_card
        from .restore import bench_restore, merge_into_card, print_restore_table
        if args.card:
            check_card(args.card)  # a bad --card fails before the benchmark runs
        res = bench_restore(args.data, args.restore, args.model, holdout_every=args.holdout_every, limit=args.limit,
                            conditions=args.conditions, seed=args.seed, device=args.device, backend=args.backend,
                            repeats=args.repeats, throughput_size=args.size, batch_size=args.batch_size)
        print_restore_table(res)
        _write_json(args.json, res)
        if args.card:
            merge_into_card(args.card, res)
        return 0
    if args.cmd == "distributed":
        from .distributed import bench_distributed, print_distributed_table

        res = bench_distributed(args.data, args.sizes, args.model, args.block, args.workers, args.threads,
                                not args.no_memory, volume=args.volume, block3d=args.block3d, halo=args.halo)
        print_distributed_table(res)
        _write_json(args.json, res)
        return 0
    if args.cmd == "fewshot":
        from .fewshot import bench_fewshot, plot_fewshot, print_fewshot_table
        res = bench_fewshot(args.data, args.model, test=args.test, shots=args.shots, draws=args.draws,
                            strategies=args.strategies, steps=args.steps, halve_every=args.halve_every,
                            batch_size=args.batch_size, tile=args.tile, channel_axis=args.channel_axis,
                            max_test=args.max_test, contrast=args.contrast, contrast_styles=args.contrast_styles,
                            seed=args.seed, device=args.device)
        print_fewshot_table(res)
        _write_json(args.json, res)
        if args.png:
            plot_fewshot(res, args.png)
        return 0
    if args.cmd == "cellulus":
        from ..train.card import check_card
        from .cellulus import bench_cellulus, merge_into_card, print_cellulus_table
        if args.card:
            if len(args.model) != 1:
                raise ValueError(f"--card merges the results of one --model, got {len(args.model)}")
            check_card(args.card)  # a bad --card fails before the benchmark runs
        res = bench_cellulus(args.data, args.model, holdout_every=args.holdout_every, limit=args.limit,
                             label_diameter=args.label_diameter, object_size=args.object_size, device=args.device,
                             backend=args.backend, batch_size=args.batch_size)
        print_cellulus_table(res)
        _write_json(args.json, res)
        if args.card:
            merge_into_card(args.card, res)
        return 0
    if args.cmd == "net":
        from .net import bench_net
        res = bench_net(args.arch, args.batch_sizes, args.device, args.repeats, args.backends)
    elif args.cmd == "sam":
        from .net import bench_sam
        res = bench_sam(args.arch, args.images, args.size, args.repeats, args.precision, args.batch_size,
                        args.backend, not args.no_cellpose)
    elif args.cmd == "meanshift":
        from .meanshift import bench_meanshift
        devices = None if args.device == "auto" else [args.device]
        res = bench_meanshift(args.size, args.objects, args.diameter, args.sigma, args.bandwidth, args.fraction,
                              args.seeds, args.repeats, devices, not args.no_sklearn)
    elif args.cmd == "segment":
        from .segment import bench_segment
        res = bench_segment(args.model, args.images, args.size, args.repeats, args.device, args.precision,
                            args.batch_size, not args.no_cellpose, args.backend, args.files, args.mosaic,
                            not args.no_torch, args.cellpose3_python)
    else:
        from .core import bench_core
        devices = None if args.device == "auto" else [args.device]
        res = bench_core(args.size, args.cells, args.diameter, args.repeats, devices, not args.no_cellpose,
                         args.do3d)
    print_table(res)
    _write_json(args.json, res)
    return 0
