"""Behaviour-regression snapshot: segment a fixed set of inputs through the public API and store every output.

    python bench/regression.py snapshot OUT_DIR          # run every case, write OUT_DIR/<case>.npz
    python bench/regression.py compare OLD_DIR NEW_DIR   # bitwise comparison, exit 1 on any difference

Written before the "one data path" restructuring (issue 10) so the tree after it can be checked against the
tree before it: masks, flows, cell probabilities, styles and diameters must be identical (bitwise on the CPU).
The cases only use the public API (``fastpose.segment``, ``Segmenter``, ``segment_many``, the CLI), which the
restructuring keeps.  Cases: the bundled sample (estimated diameter, and at a given diameter), 20 DSB 2018
training images through ``segment_many``, a 3D volume (``do_3D``) and a stitched stack, an RGB image with
``cyto``, ``augment=True``, tile normalisation, an ensemble, a Cellpose-format checkpoint, and every network
backend available here (torch, onnxruntime, compile), plus the CLI's written masks.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DSB = ROOT.parent / "shared" / "data" / "dsb2018" / "train"
CPNET = ROOT / "tests" / "data" / "models" / "cpnet_tiny.pth"


def _pack(results: List[Any]) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for i, r in enumerate(results):
        out[f"{i}_masks"] = np.asarray(r.masks)
        for k in ("flows", "cellprob", "styles"):
            v = getattr(r, k)
            if v is not None:
                out[f"{i}_{k}"] = np.asarray(v)
        out[f"{i}_diameter"] = np.asarray(np.nan if r.diameter is None else r.diameter, np.float64)
    return out


def _sample():
    import tifffile
    d = ROOT / "python" / "fastpose" / "data"
    return tifffile.imread(d / "dsb2018_0402a81e75262469_img.tif")


def _dsb(n: int) -> List[np.ndarray]:
    import tifffile
    files = sorted(DSB.glob("*_img.tif"))[:n]
    if len(files) < n:
        raise SystemExit(f"need {n} DSB images in {DSB}")
    out = []
    for f in files:
        a = tifffile.imread(f)
        out.append(a if a.ndim == 2 else a[..., :3].mean(-1).astype(np.float32))
    return out


def _blobs(shape, n: int, radius: float, seed: int) -> np.ndarray:
    """Bright balls/discs on a noisy background (self-contained: no fastpose helper that may move)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    img = rng.normal(20.0, 5.0, shape).astype(np.float32)
    for _ in range(n):
        c = [rng.uniform(radius, s - radius) for s in shape]
        r2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        img += np.float32(180.0) * (r2 < radius ** 2)
    return img


def _volume() -> np.ndarray:
    return _blobs((24, 80, 80), 14, 8.0, seed=3)


def _rgb() -> np.ndarray:
    """uint8 (Y, X, 3): cytoplasm-like large blobs in red, small nuclei in green, blue empty."""
    cyto = _blobs((256, 256), 30, 15.0, seed=7)
    nuc = _blobs((256, 256), 30, 6.0, seed=7)
    rgb = np.stack([cyto, nuc, np.zeros_like(cyto)], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def cases() -> Dict[str, Callable[[], List[Any]]]:
    import fastpose
    from fastpose import Segmenter

    # every case but the backend_* ones pins the eager PyTorch network, so trees whose default backend differs
    # (issue 18 made it "auto": onnxruntime on the CPU) are still compared like for like
    rf = dict(return_flows=True)

    def seg(*args: Any, **kw: Any) -> Any:
        return fastpose.segment(*args, device="cpu", backend="torch", **kw)

    c: Dict[str, Callable[[], List[Any]]] = {}
    c["sample_estimated"] = lambda: [seg(_sample(), "nuclei", **rf)]
    c["sample_d17"] = lambda: [seg(_sample(), "nuclei", diameter=25.0, **rf)]
    c["sample_augment"] = lambda: [seg(_sample(), "nuclei", diameter=17.0, augment=True, **rf)]
    c["sample_tilenorm"] = lambda: [seg(_sample(), "nuclei", diameter=17.0, normalize="tile", invert=False, **rf)]
    c["dsb20_many"] = lambda: list(Segmenter("nuclei", device="cpu", backend="torch").segment_many(
        _dsb(20), diameter=17.0, **rf))
    c["dsb4_estimated"] = lambda: [seg(x, "nuclei", **rf) for x in _dsb(4)]
    c["volume_3d"] = lambda: [seg(_volume(), "nuclei", z_axis=0, do_3D=True, diameter=16.0, anisotropy=1.5, **rf)]
    c["volume_stitch"] = lambda: [seg(_volume(), "nuclei", z_axis=0, stitch_threshold=0.25, diameter=16.0, **rf)]
    c["rgb_cyto"] = lambda: [seg(_rgb(), "cyto", channel_axis=-1, channels=[0, 1], diameter=30.0, **rf)]
    c["rgb_cyto_estimated"] = lambda: [seg(_rgb(), "cyto", channel_axis=-1, channels=[0, 1], **rf)]
    c["ensemble"] = lambda: [seg(_sample(), ["nuclei", "nuclei"], diameter=17.0, **rf)]
    c["cellpose_ckpt"] = lambda: [seg(_sample(), str(CPNET), diameter=0, **rf)]
    c["backend_onnxruntime"] = lambda: [fastpose.segment(_sample(), "nuclei", device="cpu", diameter=17.0,
                                                         backend="onnxruntime", **rf)]
    c["backend_compile"] = lambda: [fastpose.segment(_sample(), "nuclei", device="cpu", diameter=17.0,
                                                     backend="compile", **rf)]

    def cli() -> List[Any]:
        import tifffile
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in"
            src.mkdir()
            for i, x in enumerate(_dsb(3)):
                tifffile.imwrite(src / f"im{i}_img.tif", x)
            subprocess.run([sys.executable, "-m", "fastpose.cli", "segment", str(src), "--out", f"{tmp}/o",
                            "--diameter", "17", "--device", "cpu", "--backend", "torch", "-q", "--save", "masks"],
                           check=True)
            return [_Res(tifffile.imread(Path(tmp) / "o" / f"im{i}_masks.tif")) for i in range(3)]
    c["cli_masks"] = cli
    return c


class _Res:
    def __init__(self, masks: np.ndarray) -> None:
        self.masks, self.flows, self.cellprob, self.styles, self.diameter = masks, None, None, None, None


def snapshot(out: Path, only: List[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name, fn in cases().items():
        if only and name not in only:
            continue
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001  (a backend missing here is reported, not fatal)
            print(f"{name}: FAILED ({type(e).__name__}: {e})")
            failed += 1
            continue
        np.savez_compressed(out / f"{name}.npz", **_pack(res))
        print(f"{name}: {len(res)} result(s), masks {[int(np.max(r.masks)) for r in res][:6]}")
    return 1 if failed else 0


def compare(a: Path, b: Path) -> int:
    bad = 0
    names = sorted({p.stem for p in a.glob("*.npz")} | {p.stem for p in b.glob("*.npz")})
    for name in names:
        pa, pb = a / f"{name}.npz", b / f"{name}.npz"
        if not (pa.exists() and pb.exists()):
            print(f"{name}: only in {'old' if pa.exists() else 'new'}")
            bad += 1
            continue
        x, y = np.load(pa), np.load(pb)
        diffs = []
        for k in sorted(set(x.files) | set(y.files)):
            if k not in x.files or k not in y.files:
                diffs.append(f"{k} missing")
            elif x[k].dtype != y[k].dtype or x[k].shape != y[k].shape:
                diffs.append(f"{k} {x[k].dtype}{x[k].shape} vs {y[k].dtype}{y[k].shape}")
            elif not np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f"):
                d = np.abs(x[k].astype(np.float64) - y[k].astype(np.float64))
                diffs.append(f"{k} differs (max |d| {np.nanmax(d):.3g}, {int((d > 0).sum())} elements)")
        print(f"{name}: {'identical' if not diffs else '; '.join(diffs)} ({len(x.files)} arrays)")
        bad += bool(diffs)
    print(f"{len(names) - bad} identical, {bad} different")
    return 1 if bad else 0


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot", help="run every case and write OUT/<case>.npz")
    s.add_argument("out", type=Path)
    s.add_argument("--only", nargs="*", default=[], help="run only these cases")
    s = sub.add_parser("compare", help="compare two snapshots bitwise")
    s.add_argument("old", type=Path)
    s.add_argument("new", type=Path)
    args = p.parse_args(argv)
    return snapshot(args.out, args.only) if args.cmd == "snapshot" else compare(args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
