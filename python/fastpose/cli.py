"""The ``fastpose`` command line.

Subcommands:
  segment  segment images (files, folders, globs) with a model; write masks and other outputs to --out
  train    train or fine-tune a model on *_img.tif / *_masks.tif folders (or a bundled model's --recipe)
  evaluate-card  score a model on held-out images and write its JSON model card
  export   export a model to ONNX (optionally checked against PyTorch) and/or build a TensorRT engine
  info     what this installation can do (version, backend, CUDA, where the C++ package lives)
  demo     run the native core on the bundled sample: flow targets from its masks -> compute_masks ->
           write ``*_masks.tif`` and report how well the masks came back

Exit status:
  0    everything asked for was done
  1    some inputs failed (each reported; the others' outputs are complete), or export --check mismatched
  2    usage or setup error (a bad flag value, no inputs, colliding output names, an unwritable --out, a
       model that cannot be loaded...): one sentence on stderr, nothing segmented
  70   internal error: a bug in fastpose (one sentence; the traceback with -v)
  130  interrupted by Ctrl-C (SIGINT); 143: terminated (SIGTERM).  Finished inputs are complete, temporary
       files are removed; resume with ``fastpose segment --skip-existing``
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from . import checks
from .outputs import KINDS_2D, OUTPUT_KINDS, RECORD_SUFFIX
from .inference.budget import parse_memory
from .inputs import (InputFile, UsageError, check_out_folder, check_unique_outputs,  # noqa: F401
                     collect_inputs, find_inputs)

log = logging.getLogger("fastpose")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUG, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 70, 130, 143



class Interrupted(BaseException):
    """Raised in the main thread by the SIGTERM handler (a BaseException, like KeyboardInterrupt, so that
    ``except Exception`` does not swallow it and :func:`fastpose.io.atomic_write` removes its temp file)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


# Python parameter names that deeper code puts in its messages, and the flags the user knows them by.
# Names with an underscore never occur in prose and are always replaced; plain words only as ``name=``.
_FLAGS = {"channel_axis": "--channel-axis", "z_axis": "--z-axis", "do_3D": "--do-3d",
          "stitch_threshold": "--stitch-threshold", "flow_threshold": "--flow-threshold",
          "cellprob_threshold": "--cellprob-threshold", "min_size": "--min-size", "batch_size": "--batch-size", "max_memory": "--max-memory",
          "tile_norm": "--tile-norm", "workspace_gb": "--workspace-gb", "channels": "--channels",
          "diameter": "--diameter", "object_size": "--object-size", "anisotropy": "--anisotropy",
          "niter": "--niter", "tile": "--tile",
          "opset": "--opset", "rtol": "--rtol", "precision": "--precision", "device": "--device"}
_FLAG_RE = re.compile(r"(?<![\w/\\.-])(" + "|".join(sorted(_FLAGS, key=len, reverse=True))
                      + r")(?![\w/\\.-])(=(\[[^\]]*\]|[^\s,;:)]*))?")  # not inside a path or a word


def flag_names(message: str) -> str:
    """``message`` with the Python parameter names of :data:`_FLAGS` replaced by their command-line flags:
    ``channel_axis=5 is out of range`` -> ``--channel-axis 5 is out of range``."""

    def sub(m: re.Match) -> str:
        name, eq, value = m.group(1), m.group(2), m.group(3)
        if "_" not in name and not eq:
            return m.group(0)
        flag = _FLAGS[name]
        if not value or (name == "do_3D" and value == "True"):
            return flag
        return f"{flag} {value}"

    return _FLAG_RE.sub(sub, message)


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
    out = Path(args.out)
    check_out_folder(out)
    truth = read_image(mask_path).astype(np.int32)
    log.info("sample %s: %s, %d nuclei; backend %s", img_path.name, truth.shape, truth.max(), fc.backend())
    t0 = time.perf_counter()
    dP = 5.0 * fc.masks_to_flows(truth)
    t1 = time.perf_counter()
    prob = np.where(truth > 0, 5.0, -5.0).astype(np.float32)
    masks = fc.compute_masks(dP, prob)
    t2 = time.perf_counter()
    stem = img_path.name[: -len("_img.tif")]
    write_tiff_atomic(out / f"{stem}_flows.tif", dP.astype(np.float32))
    dest = write_tiff_atomic(out / f"{stem}_masks.tif", masks)
    same = _matched(truth, masks)
    print(f"flow targets: {1e3 * (t1 - t0):.1f} ms, compute_masks: {1e3 * (t2 - t1):.1f} ms ({fc.backend()})")
    print(f"{masks.max()} masks recovered from {truth.max()} true nuclei; {same} match at IoU > 0.9")
    print(f"wrote {dest}")
    return 0


def _check_segment_flags(args: argparse.Namespace) -> None:
    """Cross-flag rules of ``segment``, checked before the model is loaded."""
    if args.do_3d and args.z_axis is None:
        raise UsageError("--do-3d needs --z-axis (the axis of Z in the input volumes)")
    if args.do_3d and args.stitch_threshold > 0:
        raise UsageError("--do-3d (3D segmentation) and --stitch-threshold (2D planes linked across Z) exclude "
                         "each other: give one of them")
    if args.stitch_threshold > 0 and args.z_axis is None:
        raise UsageError("--stitch-threshold needs --z-axis (the axis of Z in the input volumes)")
    if args.z_axis is not None and not (args.do_3d or args.stitch_threshold > 0):
        raise UsageError("--z-axis is given but neither --do-3d nor --stitch-threshold: add --do-3d for 3D "
                         "segmentation or --stitch-threshold T (e.g. 0.5) to link 2D planes")
    if args.anisotropy is not None and not args.do_3d:
        raise UsageError("--anisotropy applies to --do-3d only")
    if args.z_axis is not None and args.channel_axis is not None and args.z_axis == args.channel_axis:
        raise UsageError(f"--channel-axis and --z-axis must differ, both are {args.z_axis}")
    if args.no_norm and args.tile_norm:
        raise UsageError("--no-norm and --tile-norm exclude each other: give one of them")
    if "restored" in args.save and not args.restore:
        raise UsageError("--save restored needs --restore MODEL (a restoration model to run before segmenting)")
    if args.object_size is not None and args.diameter is not None:
        raise UsageError("--diameter (resize the images so their objects are the model's object size) and "
                         "--object-size (cluster a Cellulus model's embeddings at another object size, images not "
                         "resized) exclude each other: give one of them")


def _family_flags(args: argparse.Namespace, seg: Any) -> None:
    """The flags that depend on the model's family, checked once the model is loaded: ``--object-size`` needs a
    family with inference settings of its own (Cellulus; a UsageError otherwise) and overrides the stored one;
    post-processing flags the family does not read (``Family.options``), and ``--augment`` for a family that runs
    its network itself (``Family.run_net``), set away from their defaults are a logged warning (ignored)."""
    fam = seg.family
    if args.object_size is not None:
        if fam.check_settings is None or "object_size" not in seg.spec.settings:
            raise UsageError(f"--object-size applies to Cellulus models only; {args.model} is a "
                             f"{seg.spec.family!r} model (use --diameter for its cell size)")
        seg.update_settings(object_size=args.object_size)
    defaults = getattr(args, "_cellpose_only", {})
    unread = [k for k in defaults if (k == "augment" and fam.run_net is not None)
              or (k != "augment" and k not in fam.options)]
    given = [f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v:g}" if isinstance(v, float) else
                                           f" {v}")
             for k, v in ((k, getattr(args, k)) for k in unread) if v != defaults[k]]
    if given:
        log.warning("%s: Cellpose options that %s models do not use, ignored", ", ".join(given),
                    fam.name.capitalize())
    st = seg.spec.settings
    if "object_size" in st:
        log.info("%s model: object size %g px (bandwidth %g), %s post-processing", fam.name.capitalize(),
                 st["object_size"], st["bandwidth"] if st.get("bandwidth") else 0.5 * st["object_size"],
                 st.get("post_processing"))


# ------------------------------------------------------------------------------------------------
# segment
# ------------------------------------------------------------------------------------------------

@dataclass
class _Batch:
    """What a segment run did, for its summary."""

    total: int = 0
    done: int = 0
    skipped_complete: int = 0
    redone: int = 0
    failed: Optional[List[str]] = None
    finished: Optional[List[str]] = None
    out: Optional[Path] = None  #: --out, once checked
    folders: Optional[List[Path]] = None  #: the folders under --out that outputs go to
    results: Any = None  #: the running stream of results

    def __post_init__(self) -> None:
        self.failed, self.finished, self.folders = [], [], []


def _summary(b: _Batch, interrupted: Optional[str] = None) -> None:
    assert b.failed is not None and b.finished is not None
    log.info("segmented %d of %d input(s); skipped %d as complete; redid %d incomplete; failed %d",
             b.done, b.total, b.skipped_complete, b.redone, len(b.failed))
    for f in b.failed:
        log.info("failed: %s", f)
    if interrupted:
        left = b.total - b.skipped_complete - b.done - len(b.failed)
        shown = ", ".join(b.finished[:20]) + (f" and {len(b.finished) - 20} more" if len(b.finished) > 20 else "")
        log.error("%s: %d input(s) finished in this run (each complete, with its %s record)%s; %d not done: "
                  "run the same command with --skip-existing to finish them", interrupted, len(b.finished),
                  RECORD_SUFFIX, f": {shown}" if shown else "", left)


_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _cmd_segment(args: argparse.Namespace) -> int:
    """``fastpose segment``: :func:`_segment`, and on Ctrl-C/SIGTERM its temp files removed and a summary of
    what finished."""
    from .io import remove_temp_files

    b = _Batch()
    try:
        return _segment(args, b)
    except (KeyboardInterrupt, Interrupted) as e:
        close = getattr(b.results, "close", None)
        if close is not None:
            close()
        if b.out is not None:
            for d in b.folders or []:
                remove_temp_files(b.out / d)
        _summary(b, "interrupted by Ctrl-C" if isinstance(e, KeyboardInterrupt) else str(e))
        return EXIT_SIGINT if isinstance(e, KeyboardInterrupt) else 128 + e.signum


def _segment(args: argparse.Namespace, b: _Batch) -> int:
    from tqdm import tqdm

    from .inference import Segmenter
    from .io import read_image, remove_temp_files
    from .models.spec import class_names
    from .outputs import record_status, remove_record, write_outputs, write_record

    _check_segment_flags(args)
    kinds: List[str] = list(args.save)
    out = Path(args.out)
    zarrs = [a for a in args.inputs if a.rstrip("/").endswith(".zarr") and Path(a).is_dir()]
    if zarrs:
        if len(zarrs) != len(args.inputs):
            raise UsageError("give .zarr inputs (segmented block by block) and image files in separate runs")
        return _segment_zarr(args, zarrs, b)
    if args.block is not None or args.halo is not None:
        raise UsageError("--block and --halo apply to .zarr inputs (OME-Zarr images and plates)")
    files = collect_inputs(args.inputs, args.recursive, out)
    if not files:
        raise UsageError(f"no input images (.tif, .tiff, .npy) found in {' '.join(args.inputs)}")
    check_unique_outputs(files, out)
    folders = sorted({f.rel for f in files})
    b.total = len(files)
    check_out_folder(out, folders)
    b.out, b.folders = out, folders
    removed = sum(len(remove_temp_files(out / d)) for d in folders)
    if removed:
        log.info("removed %d temporary file(s) a killed run left in --out", removed)

    todo: List[InputFile] = []
    for f in files:
        if args.skip_existing:
            status, why = record_status(out / f.rel, f.stem, kinds, f.path)
            if status == "complete":
                b.skipped_complete += 1
                continue
            if status == "incomplete":
                b.redone += 1
                log.info("%s: redoing, outputs incomplete (%s)", f.path, why)
        todo.append(f)
    if args.skip_existing:
        log.info("--skip-existing: %d input(s) complete, skipped; %d incomplete, redone; %d new",
                 b.skipped_complete, b.redone, len(todo) - b.redone)
    if not todo:
        _summary(b)
        return EXIT_OK

    if args.scheduler is not None:
        return _segment_files_dask(args, todo, kinds, b)
    seg = Segmenter(args.model, device=args.device, precision=args.precision, batch_size=args.batch_size,
                    backend=args.backend, max_memory=args.max_memory, restore=args.restore)
    if seg.is_image_model:
        raise UsageError(f"--model {args.model} is a restoration model (an image in, an image out, no masks): "
                         f"segment with --model nuclei (or another segmentation model) --restore {args.model}, "
                         f"or restore alone with fastpose restore")
    _family_flags(args, seg)
    log.info("%d image(s); model %s%s on %s (core: %s)", len(todo), args.model,
             f" after restoration by {args.restore}" if args.restore else "", seg.device, seg.core_device)
    kw: Dict[str, Any] = {
        "channel_axis": args.channel_axis, "z_axis": args.z_axis, "channels": args.channels,
        "diameter": args.diameter, "do_3D": args.do_3d, "anisotropy": args.anisotropy,
        "stitch_threshold": args.stitch_threshold, "augment": args.augment, "flow_threshold": args.flow_threshold,
        "cellprob_threshold": args.cellprob_threshold, "min_size": args.min_size, "niter": args.niter,
        "invert": args.invert, "normalize": False if args.no_norm else ("tile" if args.tile_norm else True),
        "return_flows": "seg_npy" in kinds}
    # images are read on the stream's worker threads; each is kept here until its outputs are written
    loaded: Dict[Path, np.ndarray] = {}

    def loader(f: Path):
        def load() -> np.ndarray:
            img = read_image(f)
            loaded[f] = img
            return img
        return load

    results: Iterator[Any] = seg.segment_many((loader(f.path) for f in todo), return_errors=True, **kw)
    b.results = results
    for f, res in tqdm(zip(todo, results), total=len(todo), desc="segment", unit="img",
                       disable=args.quiet or None):
        img = loaded.pop(f.path, None)
        if isinstance(res, Exception):  # unreadable or unusable input: reported, the batch goes on
            b.failed.append(str(f.path))
            msg = flag_names(str(res))
            log.error("%s", msg if str(f.path) in msg else f"{f.path}: {msg}")
            continue
        dest = out / f.rel
        try:
            remove_record(dest, f.stem)  # incomplete until the new record is written, last
            written = write_outputs(dest, f.stem, kinds, img, res.masks, str(f.path), res.flows,
                                    res.cellprob, res.diameter, res.classes, class_names(seg.spec),
                                    res.outputs.get("restored"))
            write_record(dest, f.stem, kinds, written, f.path)
        except (ValueError, OSError, RuntimeError) as e:
            b.failed.append(str(f.path))
            log.error("%s: cannot write its outputs: %s", f.path, flag_names(str(e)))
            if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
                log.error("stopping: --out %s cannot take more files (%s)", out, e.strerror)
                b.failed.extend(str(g.path) for g in todo[todo.index(f) + 1:])
                break
            continue
        b.done += 1
        b.finished.append(str(f.path))
        skipped_2d = [k for k in kinds if k in KINDS_2D] if res.masks.ndim != 2 else []
        log.debug("%s: %d masks%s", f.path, int(res.masks.max()),
                  f" (not for volumes: {', '.join(skipped_2d)})" if skipped_2d else "")
    _summary(b)
    return EXIT_FAILED if b.failed else EXIT_OK


def _client(args: argparse.Namespace) -> Any:
    try:
        from .distributed import make_client
    except ImportError as e:
        raise UsageError(f"--scheduler and .zarr inputs need the distributed extra: pip install "
                         f"'fastpose[distributed]' ({e})") from None
    return None if args.scheduler is None else make_client(args.scheduler, args.workers)


def _close(client: Any) -> None:
    """Close a client and the local cluster it started (``--scheduler local``)."""
    if client is None:
        return
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _segment_zarr(args: argparse.Namespace, zarrs: List[str], b: _Batch) -> int:
    """``fastpose segment X.zarr``: each OME-Zarr image or plate block by block into its labels/ group."""
    unsupported = [f for f, v in (("--diameter", args.diameter not in (None, 0.0)), ("--restore", args.restore),
                                  ("--stitch-threshold", args.stitch_threshold > 0), ("--tile-norm", args.tile_norm),
                                  ("--channel-axis", args.channel_axis is not None),
                                  ("--z-axis", args.z_axis is not None), ("--do-3d", args.do_3d),
                                  ("--object-size", args.object_size is not None)) if v]
    if unsupported:
        raise UsageError(f"{', '.join(unsupported)} do not apply to .zarr inputs: their axes come from the OME "
                         "metadata (z longer than 1: 3D), and they are segmented at the model's scale")
    if args.save != ["masks"]:
        log.info("--save is for image files; a .zarr input gets labels/%s and a CSV in --out", args.labels_name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = _client(args)
    from .distributed import segment_zarr

    b.total = len(zarrs)
    try:
        for z in zarrs:
            try:
                paths = segment_zarr(z, args.model, name=args.labels_name, block=args.block, halo=args.halo,
                                     client=client, overwrite=args.overwrite_labels, table=str(out),
                                     channels=args.channels, augment=args.augment,
                                     flow_threshold=args.flow_threshold, cellprob_threshold=args.cellprob_threshold,
                                     min_size=args.min_size, niter=args.niter, normalize=not args.no_norm,
                                     invert=args.invert, device=args.device, backend=args.backend,
                                     batch_size=args.batch_size, progress=not args.quiet)
            except (ValueError, OSError) as e:
                b.failed.append(z)
                log.error("%s: %s", z, flag_names(str(e)))
                continue
            b.done += 1
            b.finished.append(z)
            log.info("%s: %d label image(s) written: %s", z, len(paths), ", ".join(paths))
    finally:
        _close(client)
    _summary(b)
    return EXIT_FAILED if b.failed else EXIT_OK


def _segment_files_dask(args: argparse.Namespace, todo: List[Any], kinds: List[str], b: _Batch) -> int:
    """``fastpose segment FILES --scheduler ...``: one Dask task per file (outputs as without --scheduler)."""
    if args.restore or args.max_memory is not None or args.object_size is not None:
        raise UsageError("--restore, --max-memory and --object-size are not available with --scheduler")
    from .distributed import segment_files

    client = _client(args)
    kw: Dict[str, Any] = {
        "channel_axis": args.channel_axis, "z_axis": args.z_axis, "channels": args.channels,
        "diameter": args.diameter, "do_3D": args.do_3d, "anisotropy": args.anisotropy,
        "stitch_threshold": args.stitch_threshold, "augment": args.augment, "flow_threshold": args.flow_threshold,
        "cellprob_threshold": args.cellprob_threshold, "min_size": args.min_size, "niter": args.niter,
        "invert": args.invert, "normalize": False if args.no_norm else ("tile" if args.tile_norm else True)}
    try:
        by_dir: Dict[Path, List[Any]] = {}
        for f in todo:
            by_dir.setdefault(Path(args.out) / f.rel, []).append(f)
        for dest, fs in by_dir.items():
            for r in segment_files([f.path for f in fs], args.model, out=dest, client=client, save=kinds,
                                   skip_existing=False, device=args.device, backend=args.backend,
                                   batch_size=args.batch_size, progress=not args.quiet, **kw):
                if r.status == "failed":
                    b.failed.append(r.path)
                else:
                    b.done += 1
                    b.finished.append(r.path)
    finally:
        _close(client)
    _summary(b)
    return EXIT_FAILED if b.failed else EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from .deploy import check_onnx, export_onnx
    from .deploy.trt import export_engine, require_tensorrt
    from .models import load_model

    if not args.out and not args.engine:
        raise UsageError("nothing to do: give --out MODEL.onnx, --engine MODEL.plan, or both")
    if args.engine:
        if args.fixed_batch:
            raise UsageError("--engine needs the dynamic batch axis (drop --fixed-batch)")
        require_tensorrt()  # fail before the export when TensorRT is missing
    elif args.precision != "fp16" or args.calib:
        raise UsageError("--precision and --calib apply to --engine only")
    if args.precision in ("int8", "fp8") and not args.calib:
        raise UsageError(f"--precision {args.precision} needs --calib TILES.npy (a calibration set)")
    for flag, dest in (("--out", args.out), ("--engine", args.engine)):
        if dest:
            if Path(dest).is_dir():
                raise UsageError(f"{flag} {dest} is a folder; give a file name")
            check_out_folder(Path(dest).parent)
    net, _ = load_model(args.model)
    with tempfile.TemporaryDirectory(prefix="fastpose-export-") as tmp:
        onnx_path = Path(args.out) if args.out else Path(tmp) / "model.onnx"
        export_onnx(net, onnx_path, tile=args.tile, opset=args.opset, dynamic_batch=not args.fixed_batch)
        print(f"wrote {onnx_path}" if args.out else f"exported {args.model} to ONNX")
        if args.check:
            res = check_onnx(net, onnx_path, rtol=args.rtol, raise_on_error=False)
            print(f"check (onnxruntime vs PyTorch fp32): {res}")
            if not res.ok:
                return EXIT_FAILED
        if args.engine:
            dest = export_engine(net, args.engine, precision=args.precision, tile=args.tile,
                                 max_batch=args.batch_size, opset=args.opset, calibration=args.calib,
                                 onnx_path=onnx_path, workspace_gb=args.workspace_gb)
            print(f"wrote {dest} (TensorRT, {args.precision}, batch 1..{args.batch_size})")
    return EXIT_OK


def _matched(a: np.ndarray, b: np.ndarray, thr: float = 0.9) -> int:
    """Masks of ``a`` and ``b`` that match with IoU above ``thr``."""
    from .labels import iou_pairs

    return int((iou_pairs(a, b).iou > thr).sum())


# ------------------------------------------------------------------------------------------------
# the parser: every numeric flag checked at parse time, so argparse names the flag
# ------------------------------------------------------------------------------------------------

_num = checks.arg
_SEGMENT_EPILOG = f"""\
Outputs: <stem>_<kind> files in --out (<stem>: the input's name less its suffix and a trailing _img), plus
<stem>{RECORD_SUFFIX}, the completion record written after every requested output: it lists the kinds,
each file and its size, the input and the fastpose version.  Inputs found under a folder (--recursive) or
a glob have their outputs in the same relative folder inside --out (in/A/x.tif -> OUT/A/x_masks.tif);
files named explicitly have theirs in --out itself.  Two inputs that would still write the same names
(a.tif and a.npy, a_img.tif and a.tif, A/x.tif and B/x.tif given as files or as two folders) are refused
before any work, naming both.  Leftover temporary files of a killed run (.<name>.fastpose-*.tmp) are
removed from --out at the start.

--skip-existing resumes: an input is skipped only when its record is there, lists the kinds asked for (or
more), was written for the same input file, and every file it lists has its recorded size; any other
input with outputs (a killed run, a different --save, outputs of fastpose before records existed, i.e.
masks without a record) is redone, and the summary counts both.

Exit status: 0 all done; 1 some inputs failed (each named; the others are complete); 2 usage or setup
error (nothing segmented); 70 a bug in fastpose; 130 Ctrl-C, 143 SIGTERM (finished inputs complete, temp
files removed)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastpose", description="Fast Cellpose-family cell segmentation.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    s = sub.add_parser("segment", help="segment images with a model",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_SEGMENT_EPILOG,
                       description="Segment images (TIFF or .npy files, folders, glob patterns) and write the "
                                   "chosen outputs to --out, never next to the inputs. One unreadable file is "
                                   "reported and skipped; the exit status is 1 when any file failed.")
    s.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders or glob patterns (.tif, .tiff, .npy; other files in a folder are "
                        "skipped and counted in one log line, as are files that look like outputs)")
    s.add_argument("--out", required=True,
                   help="output folder (created if missing; checked writable before the first image)")
    s.add_argument("--model", default="nuclei",
                   help="bundled model (nuclei: one channel, trained on DSB 2018; cyto: cells + optional "
                        "nuclear channel, trained on synthetic images; cellulus_nuclei: unsupervised Cellulus, "
                        "trained on DSB 2018 images without their masks) or a model file (fastpose or Cellpose "
                        "checkpoint, or a Cellulus model from fastpose train --method cellulus); default: nuclei")
    s.add_argument("--diameter", type=_num(checks.number, lo=0.0, hi=checks.LIMITS["diameter"]), default=None,
                   help=f"typical cell diameter in pixels, 0 to {checks.LIMITS['diameter']:g}; default: estimated "
                        "with the model's size model (no resizing for models without one); 0 = no resizing")
    s.add_argument("--object-size", type=_num(checks.number, lo=0.0, lo_open=True, hi=checks.LIMITS["diameter"]),
                   default=None, metavar="PX",
                   help="Cellulus models only: the objects' rough diameter in pixels, which sets the mean-shift "
                        "bandwidth (half of it) and the smallest object kept; the images are not resized "
                        "(default: the model's own, stored at training; not with --diameter)")
    s.add_argument("--restore", default=None, metavar="MODEL",
                   help="restore each channel with this restoration model before segmenting, on the same device "
                        "(bundled oneclick_nuclei, a fastpose restoration file, or a Cellpose3 file such as "
                        "denoise_cyto3: a path, or the name of one in Cellpose's model folder ~/.cellpose/models); "
                        "--save restored writes the restored image; default: none")
    s.add_argument("--channels", type=_num(checks.integer, lo=0), nargs="+", default=None, metavar="C",
                   help="0-based input channels fed to the network, in order (default: the first ones)")
    s.add_argument("--channel-axis", type=_num(checks.axis), default=None,
                   help="axis of the channels, -4 to 3 (default: none)")
    s.add_argument("--z-axis", type=_num(checks.axis), default=None,
                   help="axis of Z for volumes, -4 to 3 (default: none; needs --do-3d or --stitch-threshold)")
    s.add_argument("--do-3d", action="store_true", help="3D segmentation (needs --z-axis)")
    s.add_argument("--anisotropy", type=_num(checks.number, lo=0.0, lo_open=True, hi=checks.LIMITS["anisotropy"]),
                   default=None, help=f"Z step relative to the XY pixel size, > 0 and <= {checks.LIMITS['anisotropy']:g} "
                                      "(with --do-3d; default 1)")
    s.add_argument("--stitch-threshold", type=_num(checks.probability), default=0.0,
                   help="in [0, 1]; > 0: segment planes in 2D and link them across Z by IoU (needs --z-axis; "
                        "not with --do-3d)")
    s.add_argument("--augment", action="store_true", help="flip test-time augmentation (50%% tile overlap)")
    s.add_argument("--flow-threshold", type=_num(checks.number, lo=0.0), default=0.4,
                   help="flow-error QC threshold, >= 0 (default 0.4; 0 = off)")
    s.add_argument("--cellprob-threshold", type=_num(checks.number), default=0.0,
                   help="cell-probability logit threshold, any finite number (default 0)")
    s.add_argument("--min-size", type=_num(checks.integer, lo=0, hi=checks.LIMITS["image_pixels"]), default=15,
                   help="smallest mask kept, pixels, >= 0 (default 15)")
    s.add_argument("--niter", type=_num(checks.integer, lo=1, hi=checks.LIMITS["niter"]), default=None,
                   help=f"Euler steps of mask recovery, 1 to {checks.LIMITS['niter']} (default 200 at the model "
                        "scale)")
    s.add_argument("--no-norm", action="store_true", help="skip 1st/99th percentile normalisation")
    s.add_argument("--tile-norm", action="store_true",
                   help="normalise per block of ~128 px (uneven illumination) instead of per image")
    s.add_argument("--invert", action="store_true", help="invert intensities after normalisation")
    s.add_argument("--batch-size", type=_num(checks.integer, lo=1, hi=checks.LIMITS["batch_size"]), default=8,
                   help=f"tiles per network batch, 1 to {checks.LIMITS['batch_size']} (default 8)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto (default): the GPU when one is usable")
    s.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="network precision (auto: fp16 on GPU, fp32 on CPU)")
    s.add_argument("--max-memory", type=_num(parse_memory), default=None, metavar="SIZE",
                   help="memory budget of one 2D image, bytes or a size such as 8GB or 512MiB (default: 80%% of the "
                        "memory available when the image arrives); an image whose whole-image path would exceed it "
                        "is tiled from the original array into a preallocated result (same masks), and one that "
                        "would exceed it even so is refused with the estimate and what to do")
    s.add_argument("--backend", choices=["auto", "torch", "compile", "onnxruntime", "tensorrt"], default="auto",
                   help="how the network runs: auto (default: onnxruntime on the CPU, ~2.9x eager PyTorch, the ONNX "
                        "export cached after its first use; torch on a GPU), torch (eager), compile (torch.compile), "
                        "onnxruntime (cached ONNX export), tensorrt (cached engine; NVIDIA GPU + pip install "
                        "'fastpose[trt]')")
    s.add_argument("--save", type=checks.arg_list(checks.choice, options=list(OUTPUT_KINDS)), default="masks",
                   help=f"comma-separated outputs, at least one of: {', '.join(OUTPUT_KINDS)} (default: masks; "
                        f"{', '.join(KINDS_2D)} are not written for volumes)")
    s.add_argument("--recursive", action="store_true",
                   help="search folders (and ** in globs) recursively; outputs mirror the subfolders in --out")
    s.add_argument("--skip-existing", action="store_true",
                   help="resume: skip inputs whose outputs are complete (their completion record matches); "
                        "redo incomplete ones, and outputs without a record (fastpose before records); "
                        "see below")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g = s.add_argument_group(
        "beyond one machine (pip install 'fastpose[distributed]')",
        "An OME-Zarr image or HCS plate (a .zarr folder) is segmented block by block into its own labels/ group "
        "(the per-object CSV goes to --out), the labels equal to a whole-image run; with --scheduler, blocks (of "
        ".zarr inputs) or files (of TIFF inputs, one task per file, resumable) run on a Dask cluster.")
    g.add_argument("--scheduler", default=None, metavar="local|ADDRESS",
                   help="run on Dask: 'local' starts a cluster on this machine (--workers), an address such as "
                        "tcp://host:8786 joins a running one (default: this process only)")
    g.add_argument("--workers", type=_num(checks.integer, lo=1, hi=4096), default=None, metavar="N",
                   help="workers of --scheduler local (default: one per 4 cores)")
    g.add_argument("--block", type=_num(checks.integer, lo=16, hi=1 << 20), nargs="+", default=None, metavar="PX",
                   help="block core size of .zarr inputs, one value or one per spatial axis (default 1024 in 2D, "
                        "256 in 3D); each block writes its core only")
    g.add_argument("--halo", type=_num(checks.integer, lo=0, hi=1 << 16), default=None, metavar="PX",
                   help="context around each block, pixels: at least the largest object (default 4 x the model's "
                        "cell diameter, at least 32); an object that reaches it is an error")
    g.add_argument("--labels-name", default="cells", metavar="NAME",
                   help="name of the label image written under a .zarr input's labels/ (default: cells)")
    g.add_argument("--overwrite-labels", action="store_true",
                   help="replace an existing label image of that name (an unfinished one is resumed anyway)")
    # the options only Cellpose-style post-processing reads, with their defaults: set otherwise with a Cellulus
    # model they are a warning (_family_flags)
    s.set_defaults(func=_cmd_segment, _cellpose_only={k: s.get_default(k) for k in (
        "flow_threshold", "cellprob_threshold", "min_size", "niter", "augment")})
    from .train.cli import add_parser as _add_train
    _add_train(sub)
    from .restore.cli import add_parsers as _add_restore
    _add_restore(sub)
    from .scellseg.cli import add_parser as _add_finetune
    _add_finetune(sub)
    from .cellpose_cli import add_parser as _add_cellpose
    _add_cellpose(sub)
    s = sub.add_parser("export", help="export a model to ONNX and/or a TensorRT engine",
                       description="Export MODEL (bundled name or model file) to ONNX with a fixed tile and a "
                                   "dynamic batch axis (outputs flows_cellprob [B,3,T,T] and style), optionally "
                                   "check it against PyTorch with onnxruntime, and/or build a TensorRT engine "
                                   "(needs an NVIDIA GPU and pip install 'fastpose[trt]').")
    s.add_argument("model", metavar="MODEL", help="bundled model name (nuclei, cyto) or a model file")
    s.add_argument("--out", default=None, help="ONNX file to write")
    s.add_argument("--engine", default=None, help="TensorRT engine (plan) file to write")
    s.add_argument("--tile", type=_num(checks.integer, lo=16, hi=4096), default=None,
                   help="tile side, 16 to 4096 (default: 224 for U-Nets, the ViT's input size, 256, for ViTs)")
    s.add_argument("--opset", type=_num(checks.integer, lo=9, hi=25), default=17,
                   help="ONNX opset, 9 to 25 (default 17)")
    s.add_argument("--fixed-batch", action="store_true", help="fixed batch of 1 instead of a dynamic batch axis")
    s.add_argument("--check", action="store_true",
                   help="compare onnxruntime (CPU) with PyTorch fp32 on random tiles; exit 1 on a mismatch")
    s.add_argument("--rtol", type=_num(checks.number, lo=0.0, lo_open=True, hi=1.0), default=1e-4,
                   help="--check tolerance relative to the largest output, in (0, 1] (default 1e-4)")
    s.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8", "fp8"], default="fp16",
                   help="engine precision (default fp16; int8/fp8 need --calib and NVIDIA ModelOpt)")
    s.add_argument("--calib", default=None, metavar="TILES.npy",
                   help="calibration set for int8/fp8: normalised tiles, float32 [N, C, tile, tile]")
    s.add_argument("--batch-size", type=_num(checks.integer, lo=1, hi=checks.LIMITS["batch_size"]), default=8,
                   help=f"largest engine batch (profile 1..N), 1 to {checks.LIMITS['batch_size']} (default 8)")
    s.add_argument("--workspace-gb", type=_num(checks.number, lo=0.0, lo_open=True, hi=1024.0), default=4.0,
                   help="TensorRT builder workspace, GiB, > 0 and <= 1024 (default 4)")
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


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_IGN)  # once: the cleanup that follows is not interrupted again
    raise Interrupted(signum)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line (``argv``: the arguments, default ``sys.argv[1:]``); returns the exit status
    (see the module docstring).  User errors get one logged sentence, never a traceback."""
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: SIGTERM keeps its default
        pass
    # logging first, so that even an interrupt while the parser's imports run is reported; fastpose's own
    # messages from INFO, other libraries' from WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    log.setLevel(logging.INFO)
    verbose = False
    args = None
    try:
        args = build_parser().parse_args(argv)
        verbose = args.verbose
        if verbose:
            log.setLevel(logging.DEBUG)
        return int(args.func(args) or 0)
    except (KeyboardInterrupt, Interrupted) as e:
        what = "interrupted by Ctrl-C" if isinstance(e, KeyboardInterrupt) else str(e)
        log.error("%s%s", what, " while starting: nothing was done" if args is None else "")
        return EXIT_SIGINT if isinstance(e, KeyboardInterrupt) else 128 + e.signum
    except (ValueError, OSError, RuntimeError) as e:
        log.error("%s", flag_names(str(e)) or type(e).__name__)
        if verbose:
            log.debug("details", exc_info=True)
        return EXIT_USAGE
    except Exception as e:  # a bug: one sentence, the traceback with -v
        log.error("internal error (a bug in fastpose, please report it): %s: %s%s", type(e).__name__, e,
                  "" if verbose else "; run with -v for the traceback")
        if verbose:
            log.exception("traceback")
        return EXIT_BUG
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
