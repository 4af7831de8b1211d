"""Reliability of the public API under hostile parameters (issue 17): every case runs in a child process with a
memory limit (RLIMIT_AS) and a timeout, so a crash (segfault, abort), a hang or a MemoryError fails that case
instead of the test run.

Each case is an expression and its expected outcome: ``raises=(ExceptionName, regex)`` (the error's type and a
pattern its message must match: the sentence says what was given and what is allowed), or ``check=...`` (an
expression over the result ``r``: the documented result).  The cases of one group run one after the other in
one child (importing torch once); each prints a "start" line before it runs and a JSON result after, so when a
child dies or hangs, the case it was running is reported as crashed and the rest of the group runs in a new
child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import pytest

MEMORY_LIMIT = 4 << 30  # bytes of address space for a child (torch imports under it)
GROUP_TIMEOUT = 120.0  # s for a child running its group's cases (each case takes well under a second)


class Case(NamedTuple):
    group: str
    id: str
    expr: str
    raises: Optional[Tuple[str, str]] = None  # (exception class name, regex over the message)
    check: Optional[str] = None  # expression over the result r that must be true


def R(group: str, id: str, expr: str, exc: str, pattern: str) -> Case:
    return Case(group, id, expr, raises=(exc, pattern))


def OK(group: str, id: str, expr: str, check: str) -> Case:
    return Case(group, id, expr, check=check)


# ---- what each group's child sets up (tiny networks and files in a temporary folder) ---------------------------
SETUP: Dict[str, str] = {
    "segment": """
        import numpy as np, torch
        from fastpose.models import UNet, save_model
        from fastpose.inference import Segmenter, segment
        torch.manual_seed(0)
        MODEL = save_model(TMP / "tiny.pth", UNet(nbase=(2, 8, 16, 32, 64)), {"diam_mean": 17.0})
        seg = Segmenter(str(MODEL), device="cpu")
        img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
        vol = np.random.default_rng(1).random((4, 32, 32)).astype(np.float32)
        def nan_img():
            a = img.copy(); a[3, 4] = np.nan; return a
    """,
    "core": """
        import numpy as np, torch
        import fastpose.core as fc
        from fastpose import metrics
        from fastpose.synthetic import random_labels
        from fastpose.synthetic_cells import make_cyto_image, make_cyto_dataset
        lab = random_labels((48, 48), 6, diameter=12, seed=0)
        dP = fc.masks_to_flows(lab) * 5
        prob = np.where(lab > 0, 4.0, -4.0).astype(np.float32)
        def with_nan(a):
            a = np.array(a, np.float32); a.flat[5] = np.nan; return a
    """,
    "train": """
        import contextlib, io, argparse
        import numpy as np, torch
        from fastpose.models import UNet
        from fastpose.train import train
        from fastpose.train.size_model import train_size_model, fit_size_model
        from fastpose.train.cli import add_parser
        net = UNet(nbase=(2, 8, 16, 32, 64))
        data = [(np.zeros((2, 64, 64), np.float32), np.zeros((64, 64), np.int32))]
        cell = np.zeros((64, 64), np.int32); cell[20:40, 20:40] = 1
        (TMP / "state.txt").write_text("not a train state")
        def t(**kw):
            return train(net, data, device="cpu", progress=False, **kw)
        def resume(path):
            return train(net, [(np.random.default_rng(0).random((2, 64, 64), np.float32), cell)], epochs=1,
                         tile=64, device="cpu", progress=False, resume=path, size_model=False)
        def cli(*argv):
            p = argparse.ArgumentParser(prog="fastpose"); add_parser(p.add_subparsers())
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    p.parse_args(["train", "--out", str(TMP / "o.pth"), *argv])
                except SystemExit as e:
                    return e.code, err.getvalue()
            return 0, err.getvalue()
    """,
    "models": """
        import pickle, zipfile
        import numpy as np, torch
        from fastpose.models import UNet, save_model, load_model
        from fastpose.inference import Segmenter
        good = save_model(TMP / "good.pth", UNet(nbase=(2, 8, 16, 32, 64)))
        (TMP / "text.pth").write_text("this is not a model\\n")
        (TMP / "empty.pth").write_bytes(b"")
        (TMP / "trunc.pth").write_bytes(good.read_bytes()[:1000])
        with zipfile.ZipFile(TMP / "zip.pth", "w") as z:
            z.writestr("readme.txt", "hello")
        torch.save({"a": np.zeros(3)}, TMP / "needs_code.pth")
        with open(TMP / "legacy.pkl", "wb") as f:
            pickle.dump({"a": np.zeros(3)}, f)
        torch.save({"fc.weight": torch.zeros(2, 2)}, TMP / "unknown_sd.pth")
        (TMP / "random.pth").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        nan_net = UNet(nbase=(2, 8, 16, 32, 64))
        with torch.no_grad():
            next(p for p in nan_net.parameters() if p.ndim == 4).fill_(float("nan"))
        save_model(TMP / "nan_weights.pth", nan_net)
        obj = torch.load(good, weights_only=True); obj["diam_mean"] = float("nan"); obj.pop("spec")
        torch.save(obj, TMP / "nan_diam.pth")
        obj = torch.load(good, weights_only=True); obj["arch"] = "unet"
        torch.save(obj, TMP / "bad_arch.pth")
        (TMP / "folder").mkdir()
        def msg_of(path):
            try:
                load_model(str(path))
            except Exception as e:
                return type(e).__name__, str(e)
            return None, ""
        def clean(m):
            return "\\x1b" not in m and "weights_only" not in m and "Traceback" not in m and "\\n" not in m
    """,
}

S, C, T, M = "segment", "core", "train", "models"
CASES: List[Case] = [
    # ---- fastpose.segment / Segmenter: parameters ---------------------------------------------------------
    R(S, "diameter_negative", "seg.segment(img, diameter=-1)", "ValueError", r"diameter must be a finite number in \[0, 10000\], got -1"),
    R(S, "diameter_nan", "seg.segment(img, diameter=float('nan'))", "ValueError", r"diameter must be a finite"),
    R(S, "diameter_inf", "seg.segment(img, diameter=float('inf'))", "ValueError", r"diameter must be a finite"),
    R(S, "diameter_huge", "seg.segment(img, diameter=1e6)", "ValueError", r"diameter must be .*10000"),
    R(S, "diameter_bool", "seg.segment(img, diameter=True)", "ValueError", r"diameter must be a number"),
    R(S, "diameter_complex", "seg.segment(img, diameter=1j)", "ValueError", r"diameter must be a number"),
    R(S, "diameter_tiny_pixels", "seg.segment(img, diameter=1e-6)", "ValueError",
      r"diameter=1e-06 .*implies resizing the 64x64 image to \d+x\d+"),
    R(S, "diameter_tiny_memory", "seg.segment(img, diameter=0.01)", "ValueError",
      r"implies resizing the 64x64 image to 108800x108800.*(GiB|pixels)"),
    OK(S, "diameter_max_is_bounded", "seg.segment(img, diameter=10000)", "r.masks.shape == (64, 64)"),
    OK(S, "diameter_zero_no_resizing", "seg.segment(img, diameter=0)", "r.masks.shape == (64, 64)"),
    R(S, "flow_threshold_negative", "seg.segment(img, flow_threshold=-0.1)", "ValueError", r"flow_threshold"),
    R(S, "flow_threshold_nan", "seg.segment(img, flow_threshold=float('nan'))", "ValueError", r"flow_threshold"),
    R(S, "cellprob_nan", "seg.segment(img, cellprob_threshold=float('nan'))", "ValueError",
      r"cellprob_threshold must be a finite"),
    R(S, "cellprob_inf", "seg.segment(img, cellprob_threshold=float('-inf'))", "ValueError", r"cellprob_threshold"),
    R(S, "min_size_negative", "seg.segment(img, min_size=-1)", "ValueError", r"min_size must be an integer >= 0"),
    R(S, "min_size_fraction", "seg.segment(img, min_size=2.5)", "ValueError", r"min_size must be an integer"),
    R(S, "niter_zero", "seg.segment(img, niter=0)", "ValueError", r"niter must be an integer in \[1, 10000\]"),
    R(S, "niter_huge", "seg.segment(img, niter=10**9)", "ValueError", r"niter must be an integer in \[1"),
    R(S, "niter_nan", "seg.segment(img, niter=float('nan'))", "ValueError", r"niter must be an integer"),
    R(S, "tile_overlap_high", "seg.segment(img, tile_overlap=0.9)", "ValueError", r"tile_overlap .*\[0, 0.5\]"),
    R(S, "tile_overlap_nan", "seg.segment(img, tile_overlap=float('nan'))", "ValueError", r"tile_overlap"),
    R(S, "anisotropy_zero", "seg.segment(vol, z_axis=0, do_3D=True, anisotropy=0)", "ValueError", r"anisotropy"),
    R(S, "anisotropy_negative", "seg.segment(vol, z_axis=0, do_3D=True, anisotropy=-2)", "ValueError",
      r"anisotropy"),
    R(S, "anisotropy_huge", "seg.segment(vol, z_axis=0, do_3D=True, anisotropy=1e4)", "ValueError",
      r"anisotropy must be .*100"),
    R(S, "stitch_above_one", "seg.segment(vol, z_axis=0, stitch_threshold=1.5)", "ValueError",
      r"stitch_threshold must be .*\[0, 1\]"),
    R(S, "stitch_nan", "seg.segment(vol, z_axis=0, stitch_threshold=float('nan'))", "ValueError",
      r"stitch_threshold"),
    R(S, "channels_negative", "seg.segment(img, channels=[-1])", "ValueError", r"channels\[0\] must be .*>= 0"),
    R(S, "channels_float", "seg.segment(img, channels=[0.5])", "ValueError", r"channels\[0\] must be an integer"),
    R(S, "channels_empty", "seg.segment(img, channels=[])", "ValueError", r"channels must have at least 1"),
    R(S, "channels_string", "seg.segment(img, channels='0')", "ValueError", r"channels must be a sequence"),
    R(S, "channel_axis_fraction", "seg.segment(img, channel_axis=1.5)", "ValueError", r"channel_axis"),
    R(S, "channel_axis_out_of_range", "seg.segment(img[None], channel_axis=7)", "ValueError", r"channel_axis"),
    R(S, "normalize_string", "seg.segment(img, normalize='yes')", "ValueError",
      r"normalize must be one of True, False, 'tile'"),
    R(S, "normalize_int", "seg.segment(img, normalize=1)", "ValueError", r"normalize must be one of"),
    R(S, "augment_string", "seg.segment(img, augment='no')", "ValueError", r"augment must be True or False"),
    R(S, "do_3D_int", "seg.segment(vol, z_axis=0, do_3D=1)", "ValueError", r"do_3D must be True or False"),
    R(S, "return_flows_none", "seg.segment(img, return_flows=None)", "ValueError", r"return_flows must be True"),
    R(S, "unknown_kwarg", "segment(img, seg, diamter=30)", "TypeError", r"diamter"),
    # ---- images --------------------------------------------------------------------------------------------
    R(S, "image_empty", "seg.segment(np.zeros((0, 5)))", "ValueError", r"empty"),
    OK(S, "image_one_pixel", "seg.segment(np.ones((1, 1)), diameter=0)", "r.masks.shape == (1, 1)"),
    OK(S, "image_one_pixel_resized", "seg.segment(np.ones((1, 1)), diameter=30)", "r.masks.shape == (1, 1)"),
    R(S, "image_nan", "seg.segment(nan_img())", "ValueError", r"NaN"),
    R(S, "image_all_nan", "seg.segment(np.full((16, 16), np.nan))", "ValueError", r"NaN"),
    R(S, "image_inf", "seg.segment(np.full((16, 16), np.inf), normalize=False)", "ValueError", r"NaN or Inf"),
    R(S, "image_complex", "seg.segment(img.astype(complex))", "ValueError", r"numeric"),
    R(S, "image_object", "seg.segment(np.array([[object()]]))", "ValueError", r"numeric|dtype"),
    R(S, "image_strings", "seg.segment(np.array([['a', 'b']]))", "ValueError", r"numeric|dtype"),
    R(S, "image_none", "seg.segment(None)", "ValueError", r"numeric|dtype|dimensions"),
    OK(S, "image_bool", "seg.segment(img > 0.5, diameter=0)", "r.masks.shape == (64, 64)"),
    OK(S, "image_float16", "seg.segment(img.astype(np.float16), diameter=0)", "r.masks.shape == (64, 64)"),
    OK(S, "image_constant", "seg.segment(np.zeros((32, 32)), diameter=0)", "r.masks.max() == 0"),
    R(S, "image_1d", "seg.segment(np.zeros(10))", "ValueError", r"2 to 4 dimensions"),
    R(S, "image_5d", "seg.segment(np.zeros((2, 2, 2, 2, 2)))", "ValueError", r"2 to 4 dimensions"),
    R(S, "image_3d_without_axes", "seg.segment(vol)", "ValueError", r"cannot tell the axes apart"),
    # ---- Segmenter / segment_many -------------------------------------------------------------------------
    R(S, "batch_size_zero", "Segmenter(str(MODEL), device='cpu', batch_size=0)", "ValueError", r"batch_size"),
    R(S, "batch_size_fraction", "Segmenter(str(MODEL), device='cpu', batch_size=2.5)", "ValueError",
      r"batch_size must be an integer"),
    R(S, "batch_size_huge", "Segmenter(str(MODEL), device='cpu', batch_size=10**6)", "ValueError",
      r"batch_size must be .*1024"),
    R(S, "device_unknown", "Segmenter(str(MODEL), device='gpu')", "ValueError", r"device must be one of"),
    R(S, "precision_unknown", "Segmenter(str(MODEL), device='cpu', precision='fp8')", "ValueError",
      r"precision must be one of"),
    R(S, "backend_unknown", "Segmenter(str(MODEL), device='cpu', backend='bogus')", "ValueError", r"backend"),
    R(S, "model_list_empty", "Segmenter([], device='cpu')", "ValueError", r"model list is empty"),
    R(S, "model_wrong_type", "Segmenter(123, device='cpu')", "TypeError", r"model must be .*got int"),
    R(S, "many_checks_eagerly", "seg.segment_many([img], niter=-1)", "ValueError", r"niter"),
    R(S, "many_not_iterable", "seg.segment_many(5)", "TypeError", r"iterable"),
    R(S, "many_return_errors_str", "seg.segment_many([img], return_errors='yes')", "ValueError",
      r"return_errors must be True or False"),
    OK(S, "many_bad_item_reported", "list(seg.segment_many([img, np.zeros((0, 3)), img], diameter=0, "
       "return_errors=True))", "isinstance(r[1], ValueError) and r[0].masks.shape == (64, 64)"),
    R(S, "many_tiny_diameter", "list(seg.segment_many([img], diameter=1e-6))", "ValueError", r"implies resizing"),

    # ---- core wrappers --------------------------------------------------------------------------------------
    R(C, "compute_masks_nan_flows", "fc.compute_masks(with_nan(dP), prob)", "ValueError", r"dP contains NaN"),
    R(C, "compute_masks_nan_cellprob", "fc.compute_masks(dP, with_nan(prob))", "ValueError",
      r"cellprob contains NaN"),
    R(C, "compute_masks_niter_negative", "fc.compute_masks(dP, prob, niter=-1)", "ValueError", r"niter"),
    R(C, "compute_masks_niter_huge", "fc.compute_masks(dP, prob, niter=10**7)", "ValueError",
      r"niter must be .*10000"),
    R(C, "compute_masks_niter_nan", "fc.compute_masks(dP, prob, niter=float('nan'))", "ValueError", r"niter"),
    R(C, "compute_masks_cellprob_threshold_nan", "fc.compute_masks(dP, prob, cellprob_threshold=float('nan'))",
      "ValueError", r"cellprob_threshold"),
    R(C, "compute_masks_flow_threshold_negative", "fc.compute_masks(dP, prob, flow_threshold=-1)", "ValueError",
      r"flow_threshold"),
    R(C, "compute_masks_fraction_nan", "fc.compute_masks(dP, prob, max_size_fraction=float('nan'))", "ValueError",
      r"max_size_fraction"),
    R(C, "compute_masks_shape_mismatch", "fc.compute_masks(dP[:, :10, :10], prob)", "ValueError",
      r"dP must have shape"),
    R(C, "compute_masks_complex", "fc.compute_masks(dP.astype(complex), prob)", "ValueError", r"real-valued"),
    R(C, "compute_masks_1d", "fc.compute_masks(np.zeros((1, 5)), np.zeros(5))", "ValueError", r"2D or 3D"),
    R(C, "compute_masks_object", "fc.compute_masks(dP, np.array([[None]]))", "ValueError", r"numeric"),
    OK(C, "compute_masks_float16", "fc.compute_masks(dP.astype(np.float16), prob.astype(np.float16))",
       "r.shape == (48, 48) and r.max() > 0"),
    OK(C, "compute_masks_empty", "fc.compute_masks(np.zeros((2, 0, 0), np.float32), np.zeros((0, 0), np.float32))",
       "r.shape == (0, 0)"),
    OK(C, "compute_masks_one_pixel", "fc.compute_masks(np.zeros((2, 1, 1)), np.ones((1, 1)))", "r.shape == (1, 1)"),
    R(C, "compute_masks_bool_flag", "fc.compute_masks(dP, prob, return_positions='yes')", "ValueError",
      r"return_positions must be True or False"),
    R(C, "masks_to_flows_float", "fc.masks_to_flows(lab.astype(float))", "ValueError", r"integer label"),
    R(C, "masks_to_flows_negative", "fc.masks_to_flows(-lab)", "ValueError", r"negative"),
    R(C, "masks_to_flows_bool", "fc.masks_to_flows(lab > 0)", "ValueError", r"integer label"),
    R(C, "masks_to_flows_niter_huge", "fc.masks_to_flows(lab, niter=10**9)", "ValueError", r"niter must be"),
    R(C, "masks_to_flows_niter_bool", "fc.masks_to_flows(lab, niter=True)", "ValueError", r"niter must be a number"),
    R(C, "masks_to_flows_4d", "fc.masks_to_flows(np.zeros((2, 2, 2, 2), np.int32))", "ValueError", r"2D or 3D"),
    R(C, "follow_flows_niter_nan", "fc.follow_flows(dP, lab > 0, niter=float('nan'))", "ValueError", r"niter"),
    R(C, "follow_flows_niter_huge", "fc.follow_flows(dP, lab > 0, niter=2**40)", "ValueError", r"niter"),
    R(C, "follow_flows_nan", "fc.follow_flows(with_nan(dP), lab > 0)", "ValueError", r"NaN"),
    R(C, "follow_flows_float_mask", "fc.follow_flows(dP, prob)", "ValueError", r"mask must be a bool or integer"),
    R(C, "get_masks_fraction_nan", "fc.get_masks(np.zeros((2, 8, 8)), np.ones((8, 8), bool), float('nan'))",
      "ValueError", r"max_size_fraction"),
    R(C, "fill_holes_min_size_str", "fc.fill_holes_and_remove_small_masks(lab, min_size='a')", "ValueError",
      r"min_size must be a number"),
    R(C, "fill_holes_negative", "fc.fill_holes_and_remove_small_masks(-lab)", "ValueError", r"negative"),
    R(C, "flow_errors_shape", "fc.flow_errors(lab, dP[:, :5])", "ValueError", r"dP must have shape"),
    R(C, "remove_bad_threshold_nan", "fc.remove_bad_flow_masks(lab, dP, threshold=float('nan'))", "ValueError",
      r"threshold"),
    R(C, "make_tiles_bsize_zero", "fc.make_tiles(np.zeros((1, 8, 8)), bsize=0)", "ValueError", r"bsize"),
    R(C, "make_tiles_bsize_huge", "fc.make_tiles(np.zeros((1, 8, 8)), bsize=10**6, augment=True)", "ValueError",
      r"bsize"),
    R(C, "make_tiles_overlap_nan", "fc.make_tiles(np.zeros((1, 8, 8)), overlap=float('nan'))", "ValueError",
      r"overlap"),
    # ---- metrics --------------------------------------------------------------------------------------------
    R(C, "ap_threshold_nan", "metrics.average_precision(lab, lab, [float('nan')])", "ValueError",
      r"thresholds\[0\] must be .*\[0, 1\]"),
    R(C, "ap_threshold_above_one", "metrics.average_precision(lab, lab, [0.5, 1.5])", "ValueError",
      r"thresholds\[1\]"),
    R(C, "ap_threshold_negative", "metrics.average_precision(lab, lab, [-0.1])", "ValueError", r"thresholds"),
    R(C, "ap_thresholds_empty", "metrics.average_precision(lab, lab, [])", "ValueError", r"at least one"),
    OK(C, "ap_threshold_scalar", "metrics.average_precision(lab, lab, 0.5)[0]", "r.shape == (1, 1) and r[0, 0] == 1"),
    R(C, "ap_float_labels", "metrics.average_precision(lab.astype(float), lab)", "ValueError",
      r"true must be an integer label image"),
    R(C, "ap_negative_labels", "metrics.average_precision(lab, -lab)", "ValueError", r"pred has negative labels"),
    R(C, "ap_bool_labels", "metrics.average_precision(lab > 0, lab)", "ValueError", r"integer label image.*bool"),
    R(C, "ap_shape_mismatch", "metrics.average_precision(lab, lab[:10])", "ValueError", r"differ in shape"),
    R(C, "ap_count_mismatch", "metrics.average_precision([lab, lab], [lab])", "ValueError", r"2 true vs 1"),
    R(C, "ap_none", "metrics.average_precision(None, lab)", "ValueError", r"true must be a label image"),
    OK(C, "ap_empty_images", "metrics.average_precision(np.zeros((0, 0), int), np.zeros((0, 0), int))[0]",
       "r.tolist() == [[1.0, 1.0, 1.0]]"),
    R(C, "aji_negative", "metrics.aggregated_jaccard_index(-lab, lab)", "ValueError", r"negative"),
    R(C, "evaluate_threshold_nan", "metrics.evaluate([lab], [lab], [float('nan')])", "ValueError", r"thresholds"),
    # ---- synthetic ------------------------------------------------------------------------------------------
    R(C, "synthetic_zero_shape", "random_labels((0, 10), 3)", "ValueError", r"shape\[0\] must be .*>= 1"),
    R(C, "synthetic_huge_shape", "random_labels((10**5, 10**5), 3)", "ValueError", r"pixels, more than the limit"),
    R(C, "synthetic_4d", "random_labels((4, 4, 4, 4), 3)", "ValueError", r"2 or 3 axes"),
    R(C, "synthetic_n_cells_negative", "random_labels((32, 32), -1)", "ValueError", r"n_cells"),
    R(C, "synthetic_n_cells_huge", "random_labels((32, 32), 10**9)", "ValueError", r"n_cells must be .*10000"),
    R(C, "synthetic_diameter_nan", "random_labels((32, 32), 3, diameter=float('nan'))", "ValueError", r"diameter"),
    R(C, "synthetic_diameter_zero", "random_labels((32, 32), 3, diameter=0)", "ValueError", r"diameter must be .*\(0, "),
    R(C, "synthetic_seed_negative", "random_labels((32, 32), 3, seed=-1)", "ValueError", r"seed"),
    OK(C, "synthetic_no_cells", "random_labels((32, 32), 0)", "r.max() == 0 and r.shape == (32, 32)"),
    R(C, "cyto_noise_nan", "make_cyto_image((32, 32), noise=float('nan'))", "ValueError", r"noise"),
    R(C, "cyto_3d_shape", "make_cyto_image((8, 32, 32))", "ValueError", r"2 axes"),
    R(C, "cyto_dataset_n_negative", "make_cyto_dataset(-1)", "ValueError", r"n must be"),
    R(C, "cyto_dataset_range_reversed", "make_cyto_dataset(1, (32, 32), diameter=(40, 20))", "ValueError",
      r"low <= high"),

    # ---- training -------------------------------------------------------------------------------------------
    R(T, "epochs_zero", "t(epochs=0)", "ValueError", r"epochs must be an integer in \[1"),
    R(T, "epochs_negative", "t(epochs=-3)", "ValueError", r"epochs"),
    R(T, "epochs_nan", "t(epochs=float('nan'))", "ValueError", r"epochs must be an integer"),
    R(T, "epochs_fraction", "t(epochs=2.5)", "ValueError", r"epochs must be an integer"),
    R(T, "lr_nan", "t(lr=float('nan'))", "ValueError", r"lr must be a finite number > 0"),
    R(T, "lr_zero", "t(lr=0)", "ValueError", r"lr must be a finite number > 0"),
    R(T, "lr_negative", "t(lr=-0.1)", "ValueError", r"lr"),
    R(T, "time_budget_zero", "t(time_budget=0)", "ValueError", r"time_budget"),
    R(T, "time_budget_inf", "t(time_budget=float('inf'))", "ValueError", r"time_budget must be a finite"),
    R(T, "batch_size_zero", "t(batch_size=0)", "ValueError", r"batch_size"),
    R(T, "batch_size_bool", "t(batch_size=True)", "ValueError", r"batch_size must be a number"),
    R(T, "warmup_fraction_high", "t(time_budget=1, warmup_fraction=2)", "ValueError", r"warmup_fraction"),
    R(T, "anneal_every_zero", "t(time_budget=1, anneal_every=0)", "ValueError", r"anneal_every"),
    R(T, "scale_range_high", "t(scale_range=3)", "ValueError", r"scale_range"),
    R(T, "momentum_one", "t(momentum=1.0)", "ValueError", r"momentum"),
    R(T, "seed_negative", "t(seed=-1)", "ValueError", r"seed"),
    R(T, "optimizer_unknown", "t(optimizer='adam')", "ValueError", r"optimizer must be one of"),
    R(T, "workers_negative", "t(workers=-1)", "ValueError", r"workers"),
    R(T, "tile_tiny", "t(tile=4)", "ValueError", r"tile"),
    R(T, "size_model_epochs_zero", "t(size_model_epochs=0)", "ValueError", r"size_model_epochs"),
    R(T, "resume_not_a_state", "resume(TMP / 'state.txt')", "ValueError", r"cannot resume from .*state.txt"),
    R(T, "size_model_n_epochs_zero", "train_size_model(net, None, n_epochs=0)", "ValueError", r"n_epochs"),
    R(T, "fit_size_model_nan", "fit_size_model(np.full((3, 2), np.nan), np.ones(3), 30.0)", "ValueError",
      r"finite"),
    OK(T, "cli_epochs_zero", "cli('--epochs', '0')", "r[0] == 2 and 'argument --epochs' in r[1] and '[1, ' in r[1]"),
    OK(T, "cli_lr_nan", "cli('--lr', 'nan')", "r[0] == 2 and 'argument --lr' in r[1] and 'finite' in r[1]"),
    OK(T, "cli_batch_size_text", "cli('--batch-size', 'eight')", "r[0] == 2 and 'argument --batch-size' in r[1]"),
    OK(T, "cli_time_budget_negative", "cli('--time-budget', '-5')", "r[0] == 2 and 'argument --time-budget' in r[1]"),
    OK(T, "cli_holdout_one", "cli('--holdout-every', '1')", "r[0] == 2 and 'every image' in r[1]"),
    OK(T, "cli_valid", "cli('--epochs', '3', '--lr', '0.1')", "r[0] == 0"),

    # ---- model files ----------------------------------------------------------------------------------------
    OK(M, "text_file", "msg_of(TMP / 'text.pth')",
       "r[0] == 'ValueError' and r[1].startswith('cannot load model ') and 'text file' in r[1] and clean(r[1])"),
    OK(M, "empty_file", "msg_of(TMP / 'empty.pth')", "r[0] == 'ValueError' and 'empty' in r[1] and clean(r[1])"),
    OK(M, "truncated_file", "msg_of(TMP / 'trunc.pth')",
       "r[0] == 'ValueError' and 'truncated or damaged' in r[1] and clean(r[1])"),
    OK(M, "zip_not_torch", "msg_of(TMP / 'zip.pth')",
       "r[0] == 'ValueError' and 'not a PyTorch file' in r[1] and clean(r[1])"),
    OK(M, "pickle_needs_code", "msg_of(TMP / 'needs_code.pth')",
       "r[0] == 'ValueError' and 'run code' in r[1] and 'numpy' in r[1] and clean(r[1])"),
    OK(M, "legacy_pickle_needs_code", "msg_of(TMP / 'legacy.pkl')",
       "r[0] == 'ValueError' and r[1].startswith('cannot load model') and clean(r[1])"),
    OK(M, "unknown_state_dict", "msg_of(TMP / 'unknown_sd.pth')",
       "r[0] == 'ValueError' and 'unrecognised state dict' in r[1] and clean(r[1])"),
    OK(M, "random_bytes", "msg_of(TMP / 'random.pth')",
       "r[0] == 'ValueError' and r[1].startswith('cannot load model') and clean(r[1])"),
    OK(M, "nan_weights", "msg_of(TMP / 'nan_weights.pth')", "r[0] == 'ValueError' and 'NaN' in r[1]"),
    OK(M, "nan_diam_mean", "msg_of(TMP / 'nan_diam.pth')",
       "r[0] == 'ValueError' and 'diam_mean' in r[1] and clean(r[1])"),
    OK(M, "bad_arch", "msg_of(TMP / 'bad_arch.pth')", "r[0] == 'ValueError' and 'arch' in r[1] and clean(r[1])"),
    OK(M, "missing_file", "msg_of(TMP / 'nope.pth')",
       "r[0] == 'ModelNotFoundError' and 'nope.pth' in r[1] and 'nuclei' in r[1]"),
    R(M, "missing_is_file_not_found", "load_model('no_such_model')", "FileNotFoundError",
      r"no_such_model.*available built-in models: .*nuclei"),
    OK(M, "folder", "msg_of(TMP / 'folder')", "r[0] == 'ValueError' and 'folder' in r[1]"),
    R(M, "segmenter_text_file", "Segmenter(str(TMP / 'text.pth'), device='cpu')", "ValueError",
      r"^cannot load model .*text file"),
    R(M, "model_none", "load_model(None)", "TypeError", r"bundled model name or a model file path"),
    OK(M, "good_file_loads", "load_model(str(good))[1]", "r['format'] == 'fastpose-model'"),
]

CHILD = r'''
import json, os, re, resource, sys, tempfile, textwrap, traceback
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
job = json.loads(sys.stdin.read())
TMP = Path(tempfile.mkdtemp(prefix="fastpose-reliability-"))
ns = {"TMP": TMP}
exec(textwrap.dedent(job["setup"]), ns)
print(json.dumps({"ready": True}), flush=True)
for case in job["cases"]:
    print(json.dumps({"start": case["id"]}), flush=True)
    out = {"id": case["id"]}
    try:
        ns["r"] = eval(case["expr"], ns)
        out["raised"] = None
        if case["check"]:
            try:
                out["check"] = bool(eval(case["check"], ns))
            except Exception as e:
                out["check"] = False
                out["check_error"] = f"{type(e).__name__}: {e}"
            out["result"] = repr(ns["r"])[:300]
    except BaseException as e:  # MemoryError, SystemExit, ... are results too
        out["raised"] = type(e).__name__
        out["mro"] = [c.__name__ for c in type(e).__mro__]
        out["message"] = str(e)
        out["where"] = traceback.format_exc(limit=-2)[-600:]
    print(json.dumps(out), flush=True)
'''


def _run_group(group: str, cases: List[Case]) -> Dict[str, Dict[str, Any]]:
    """Results of ``cases`` by id; a case during which the child crashed or hung gets ``{"crashed": why}`` and
    the cases after it run in a new child."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    results: Dict[str, Dict[str, Any]] = {}
    todo = list(cases)
    while todo:
        job = {"setup": SETUP[group], "cases": [c._asdict() for c in todo]}
        try:
            proc = subprocess.run([sys.executable, "-c", CHILD, str(MEMORY_LIMIT)], input=json.dumps(job),
                                  capture_output=True, text=True, timeout=GROUP_TIMEOUT, env=env,
                                  cwd=str(Path(__file__).resolve().parent))
            stdout, stderr, why = proc.stdout, proc.stderr, f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            why = f"no result within {GROUP_TIMEOUT:g} s (hang?)"
        started: Optional[str] = None
        ready = False
        for line in stdout.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("ready"):
                ready = True
            elif "start" in msg:
                started = msg["start"]
            elif "id" in msg:
                results[msg["id"]] = msg
                started = None
        if not ready:
            raise RuntimeError(f"the {group} group's setup failed ({why}):\n{stderr[-3000:]}")
        if started is not None:
            results[started] = {"id": started, "crashed": f"{why}; stderr: {stderr[-1500:]}"}
        todo = [c for c in todo if c.id not in results]
    return results


_RESULTS: Dict[str, Dict[str, Dict[str, Any]]] = {}


_SETUP_FAILED: Dict[str, str] = {}


def _result(case: Case) -> Dict[str, Any]:
    if case.group in _SETUP_FAILED:
        pytest.fail(_SETUP_FAILED[case.group])
    if case.group not in _RESULTS:
        try:
            _RESULTS[case.group] = _run_group(case.group, [c for c in CASES if c.group == case.group])
        except RuntimeError as e:  # reported once per case, run once
            _SETUP_FAILED[case.group] = str(e)
            raise
    return _RESULTS[case.group][case.id]


def test_cases_are_unique_and_many():
    ids = [(c.group, c.id) for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 60
    assert all((c.raises is None) != (c.check is None) for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}-{c.id}" for c in CASES])
def test_hostile_input(case: Case):
    res = _result(case)
    assert "crashed" not in res, f"{case.expr}: the process crashed or hung: {res['crashed']}"
    if case.raises is not None:
        exc, pattern = case.raises
        assert res["raised"] is not None, f"{case.expr} returned {res.get('result')} instead of raising {exc}"
        assert exc in res["mro"], f"{case.expr} raised {res['raised']}: {res['message']}\n{res['where']}"
        import re

        assert re.search(pattern, res["message"]), f"{case.expr}: message {res['message']!r} !~ {pattern!r}"
        assert "\x1b" not in res["message"] and "weights_only=False" not in res["message"]
    else:
        assert res["raised"] is None, f"{case.expr} raised {res['raised']}: {res['message']}\n{res['where']}"
        assert res["check"], f"{case.expr}: {case.check} is false for {res.get('result')} " \
                             f"{res.get('check_error', '')}"


def test_child_reports_a_crash_as_that_case():
    """The harness can fail: a case that kills its process is reported as crashed, and the next case still runs."""
    SETUP["_crash"] = "import os"
    cases = [OK("_crash", "dies", "os._exit(3)", "True"), OK("_crash", "after", "1 + 1", "r == 2")]
    try:
        res = _run_group("_crash", cases)
    finally:
        del SETUP["_crash"]
    assert "crashed" in res["dies"] and "exit status 3" in res["dies"]["crashed"]
    assert res["after"]["check"] is True

