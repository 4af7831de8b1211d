"""The ``fastpose`` command line.

Subcommands:
  segment  segment images (files, folders, globs) with a model; write masks and other outputs to --out
  train    train or fine-tune a model on *_img.tif / *_masks.tif folders (or a bundled model's --recipe)
  evaluate-card  score a model on held-out images and write its JSON model card
  export   export a model to ONNX (optionally checked against PyTorch) and/or build a TensorRT engine
  info     what this installation can do (version, backend, CUDA, where the C++ package lives)
  demo     run the native core on the bundled sample: flow targets from its masks -> compute_masks ->
           write ``*_masks.tif`` and report how well the masks came back
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

log = logging.getLogger("fastpose")


def _cmd_info(args: argparse.Namespace) -> int:
    import fastpose
    import fastpose.core as fc

    print(f"fastpose {fastpose.__version__}")
    print(f"backend: {fc.backend()} (CUDA kernels compiled: {fc.cuda_compiled()}, GPU usable: {fc.cuda_available()})")
    print(f"CMake package: -Dfastpose_DIR={fastpose.cmake_dir()}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import fastpose.core as fc
    from .io import read_image, sample_paths, write_tiff_atomic

    if args.device != "auto":
        fc.set_backend(args.device)
    img_path, mask_path = sample_paths()
    truth = read_image(mask_path).astype(np.int32)
    log.info("sample %s: %s, %d nuclei; backend %s", img_path.name, truth.shape, truth.max(), fc.backend())
    t0 = time.perf_counter()
    dP = 5.0 * fc.masks_to_flows(truth)
    t1 = time.perf_counter()
    prob = np.where(truth > 0, 5.0, -5.0).astype(np.float32)
    masks = fc.compute_masks(dP, prob)
    t2 = time.perf_counter()
    out = Path(args.out)
    stem = img_path.name[: -len("_img.tif")]
    write_tiff_atomic(out / f"{stem}_flows.tif", dP.astype(np.float32))
    dest = write_tiff_atomic(out / f"{stem}_masks.tif", masks)
    same = _matched(truth, masks)
    print(f"flow targets: {1e3 * (t1 - t0):.1f} ms, compute_masks: {1e3 * (t2 - t1):.1f} ms ({fc.backend()})")
    print(f"{masks.max()} masks recovered from {truth.max()} true nuclei; {same} match at IoU > 0.9")
    print(f"wrote {dest}")
    return 0


IMAGE_SUFFIXES = (".tif", ".tiff", ".npy")
OUTPUT_MARKERS = ("_masks", "_flows", "_seg", "_outlines", "_cp_masks")


def find_inputs(inputs: List[str], recursive: bool) -> List[Path]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of image files.

    Files that look like fastpose/Cellpose outputs (``*_masks.tif``, ``*_seg.npy``...) are skipped when
    they come from a folder or glob; a file named explicitly is always taken.
    """
    import glob

    found: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            found.append(p)
            continue
        if p.is_dir():
            it = p.rglob("*") if recursive else p.glob("*")
            cands = [q for q in it if q.is_file()]
        else:
            cands = [Path(q) for q in glob.glob(item, recursive=recursive) if Path(q).is_file()]
            if not cands:
                raise FileNotFoundError(f"{item}: no such file, folder or matching files")
        for q in cands:
            if q.suffix.lower() in IMAGE_SUFFIXES and not any(q.stem.endswith(m) for m in OUTPUT_MARKERS):
                found.append(q)
    seen, out = set(), []
    for q in sorted(found):
        r = q.resolve()
        if r not in seen:
            seen.add(r)
            out.append(q)
    return out


def _stem(p: Path) -> str:
    s = p.name
    for suf in (".tiff", ".tif", ".npy"):
        if s.lower().endswith(suf):
            s = s[: -len(suf)]
            break
    return s[: -len("_img")] if s.endswith("_img") else s


def _cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .inference import Segmenter
    from .io import read_image
    from .outputs import write_outputs

    kinds = [k.strip() for k in args.save.split(",") if k.strip()]
    files = find_inputs(args.inputs, args.recursive)
    if not files:
        log.error("no input images found in %s", " ".join(args.inputs))
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [f for f in files if not (args.skip_existing and (out / f"{_stem(f)}_masks.tif").exists())]
    skipped = len(files) - len(todo)
    seg = Segmenter(args.model, device=args.device, precision=args.precision, batch_size=args.batch_size,
                    backend=args.backend)
    log.info("%d image(s); model %s on %s (core: %s)", len(todo), args.model, seg.device, seg.core_device)
    kw = dict(channel_axis=args.channel_axis, z_axis=args.z_axis, channels=args.channels,
              diameter=None if args.diameter is None else args.diameter, do_3D=args.do_3d,
              anisotropy=args.anisotropy, stitch_threshold=args.stitch_threshold, augment=args.augment,
              flow_threshold=args.flow_threshold, cellprob_threshold=args.cellprob_threshold,
              min_size=args.min_size, niter=args.niter, invert=args.invert,
              normalize=False if args.no_norm else ("tile" if args.tile_norm else True),
              return_flows="seg_npy" in kinds)
    # images are read on the stream's worker threads; each is kept here until its outputs are written
    loaded: Dict[Path, np.ndarray] = {}

    def loader(f: Path):
        def load() -> np.ndarray:
            img = read_image(f)
            loaded[f] = img
            return img
        return load

    done = 0
    failed: List[str] = []
    results = seg.segment_many((loader(f) for f in todo), return_errors=True, **kw)
    for f, res in tqdm(zip(todo, results), total=len(todo), desc="segment", unit="img",
                       disable=args.quiet or None):
        img = loaded.pop(f, None)
        if isinstance(res, Exception):  # unreadable or unusable input: reported, the batch goes on
            failed.append(str(f))
            log.error("%s: %s", f, res)
            continue
        try:
            write_outputs(out, _stem(f), kinds, img, res.masks, str(f), res.flows, res.cellprob, res.diameter)
            done += 1
            log.debug("%s: %d masks", f, int(res.masks.max()))
        except (ValueError, OSError, RuntimeError) as e:
            failed.append(str(f))
            log.error("%s: %s", f, e)
    log.info("segmented %d, skipped %d (existing), failed %d", done, skipped, len(failed))
    for f in failed:
        log.info("failed: %s", f)
    return 1 if failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    import tempfile

    from .deploy import check_onnx, export_onnx
    from .deploy.trt import export_engine, require_tensorrt
    from .models import load_model

    if not args.out and not args.engine:
        raise ValueError("nothing to do: give --out MODEL.onnx, --engine MODEL.plan, or both")
    if args.engine:
        require_tensorrt()  # fail before the export when TensorRT is missing
    elif args.precision != "fp16" or args.calib:
        raise ValueError("--precision and --calib apply to --engine only")
    net, _ = load_model(args.model)
    with tempfile.TemporaryDirectory(prefix="fastpose-export-") as tmp:
        onnx_path = Path(args.out) if args.out else Path(tmp) / "model.onnx"
        export_onnx(net, onnx_path, tile=args.tile, opset=args.opset, dynamic_batch=not args.fixed_batch)
        print(f"wrote {onnx_path}" if args.out else f"exported {args.model} to ONNX")
        if args.check:
            res = check_onnx(net, onnx_path, rtol=args.rtol, raise_on_error=False)
            print(f"check (onnxruntime vs PyTorch fp32): {res}")
            if not res.ok:
                return 1
        if args.engine:
            if args.fixed_batch:
                raise ValueError("--engine needs the dynamic batch axis (drop --fixed-batch)")
            dest = export_engine(net, args.engine, precision=args.precision, tile=args.tile,
                                 max_batch=args.batch_size, opset=args.opset, calibration=args.calib,
                                 onnx_path=onnx_path, workspace_gb=args.workspace_gb)
            print(f"wrote {dest} (TensorRT, {args.precision}, batch 1..{args.batch_size})")
    return 0


def _matched(a: np.ndarray, b: np.ndarray, thr: float = 0.9) -> int:
    """Masks of ``a`` and ``b`` that match with IoU above ``thr``."""
    from .labels import iou_pairs

    return int((iou_pairs(a, b).iou > thr).sum())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastpose", description="Fast Cellpose-family cell segmentation.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    s = sub.add_parser("segment", help="segment images with a model",
                       description="Segment images (TIFF or .npy files, folders, glob patterns) and write the "
                                   "chosen outputs to --out, never next to the inputs. One unreadable file is "
                                   "reported and skipped; the exit status is 1 when any file failed.")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    s.add_argument("--out", required=True, help="output folder (created if missing)")
    s.add_argument("--model", default="nuclei",
                   help="bundled model (nuclei: one channel, trained on DSB 2018; cyto: cells + optional "
                        "nuclear channel, trained on synthetic images) or a model file (fastpose or Cellpose "
                        "checkpoint); default: nuclei")
    s.add_argument("--diameter", type=float, default=None,
                   help="typical cell diameter in pixels; default: estimated with the model's size model "
                        "(no resizing for models without one); 0 = no resizing")
    s.add_argument("--channels", type=int, nargs="+", default=None, metavar="C",
                   help="0-based input channels fed to the network, in order (default: the first ones)")
    s.add_argument("--channel-axis", type=int, default=None, help="axis of the channels (default: none)")
    s.add_argument("--z-axis", type=int, default=None, help="axis of Z for volumes (default: none)")
    s.add_argument("--do-3d", action="store_true", help="3D segmentation (needs --z-axis)")
    s.add_argument("--anisotropy", type=float, default=None, help="Z step relative to the XY pixel size")
    s.add_argument("--stitch-threshold", type=float, default=0.0,
                   help="> 0: segment planes in 2D and link them across Z by IoU")
    s.add_argument("--augment", action="store_true", help="flip test-time augmentation (50%% tile overlap)")
    s.add_argument("--flow-threshold", type=float, default=0.4, help="flow-error QC threshold (0 = off)")
    s.add_argument("--cellprob-threshold", type=float, default=0.0, help="cell-probability logit threshold")
    s.add_argument("--min-size", type=int, default=15, help="smallest mask kept, pixels (default 15)")
    s.add_argument("--niter", type=int, default=None, help="Euler steps (default 200 at the model scale)")
    s.add_argument("--no-norm", action="store_true", help="skip 1st/99th percentile normalisation")
    s.add_argument("--tile-norm", action="store_true",
                   help="normalise per block of ~128 px (uneven illumination) instead of per image")
    s.add_argument("--invert", action="store_true", help="invert intensities after normalisation")
    s.add_argument("--batch-size", type=int, default=8, help="tiles per network batch (default 8)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): the GPU when one is usable")
    s.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="network precision (auto: fp16 on GPU, fp32 on CPU)")
    s.add_argument("--backend", choices=["torch", "compile", "onnxruntime", "tensorrt"], default="torch",
                   help="how the network runs: torch (default, eager), compile (torch.compile), onnxruntime "
                        "(cached ONNX export), tensorrt (cached engine; NVIDIA GPU + pip install 'fastpose[trt]')")
    s.add_argument("--save", default="masks",
                   help="comma-separated outputs: masks, outlines_png, outlines_txt, rois, seg_npy, csv "
                        "(default: masks)")
    s.add_argument("--recursive", action="store_true", help="search folders recursively")
    s.add_argument("--skip-existing", action="store_true",
                   help="skip images whose *_masks.tif already exists in --out (resume)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_segment)
    from .train.cli import add_parser as _add_train
    _add_train(sub)
    s = sub.add_parser("export", help="export a model to ONNX and/or a TensorRT engine",
                       description="Export MODEL (bundled name or model file) to ONNX with a fixed tile and a "
                                   "dynamic batch axis (outputs flows_cellprob [B,3,T,T] and style), optionally "
                                   "check it against PyTorch with onnxruntime, and/or build a TensorRT engine "
                                   "(needs an NVIDIA GPU and pip install 'fastpose[trt]').")
    s.add_argument("model", metavar="MODEL", help="bundled model name (nuclei, cyto) or a model file")
    s.add_argument("--out", default=None, help="ONNX file to write")
    s.add_argument("--engine", default=None, help="TensorRT engine (plan) file to write")
    s.add_argument("--tile", type=int, default=None,
                   help="tile side (default: 224 for U-Nets, the ViT's input size, 256, for ViTs)")
    s.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    s.add_argument("--fixed-batch", action="store_true", help="fixed batch of 1 instead of a dynamic batch axis")
    s.add_argument("--check", action="store_true",
                   help="compare onnxruntime (CPU) with PyTorch fp32 on random tiles; exit 1 on a mismatch")
    s.add_argument("--rtol", type=float, default=1e-4, help="--check tolerance relative to the largest output")
    s.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8", "fp8"], default="fp16",
                   help="engine precision (default fp16; int8/fp8 need --calib and NVIDIA ModelOpt)")
    s.add_argument("--calib", default=None, metavar="TILES.npy",
                   help="calibration set for int8/fp8: normalised tiles, float32 [N, C, tile, tile]")
    s.add_argument("--batch-size", type=int, default=8, help="largest engine batch (profile 1..N, default 8)")
    s.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace (GiB, default 4)")
    s.set_defaults(func=_cmd_export)
    s = sub.add_parser("info", help="show version, backend and CUDA support")
    s.set_defaults(func=_cmd_info)
    s = sub.add_parser("demo", help="run the native core on the bundled sample image's masks",
                       description="Compute heat-diffusion flow targets from the bundled sample's masks, recover "
                                   "masks from them with compute_masks, and write <sample>_masks.tif to --out.")
    s.add_argument("--out", default="fastpose_demo", help="output folder (default: ./fastpose_demo)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to run (default auto: the GPU when one is usable)")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
