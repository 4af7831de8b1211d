"""fastpose-bench runs end to end on tiny inputs and reports what it measured (timings are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fastpose.bench import main


def test_bench_core_small(tmp_path: Path, capsys):
    out = tmp_path / "core.json"
    assert main(["core", "--size", "128", "--cells", "12", "--repeats", "1", "--device", "cpu", "--no-cellpose",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    names = {t["name"] for t in res["timings"]}
    assert {"masks_to_flows[2d]", "follow_flows[2d]", "compute_masks[2d]"} <= names
    assert res["machine"]["cpu_cores"] >= 1 and all(t["median_s"] > 0 for t in res["timings"])


def test_bench_segment_on_user_files(tmp_path: Path, monkeypatch):
    """Two-channel and one-channel files in one run (a grey file used to crash it), the default backend and
    eager torch side by side, AP against the truth beside an ``_img.tif``, and every ratio from its two rows."""
    monkeypatch.setenv("FASTPOSE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    f2, f1 = tmp_path / "a_img.tif", tmp_path / "b_img.tif"
    tifffile.imwrite(f2, rng.integers(0, 255, (96, 96, 2), dtype=np.uint8))
    tifffile.imwrite(f1, rng.integers(0, 255, (96, 96), dtype=np.uint8))               # one channel
    tifffile.imwrite(tmp_path / "b_masks.tif", np.zeros((96, 96), np.uint16))
    out = tmp_path / "seg.json"
    assert main(["segment", "--model", "nuclei", "--files", str(f2), str(f1), "--repeats", "1", "--device", "cpu",
                 "--no-cellpose", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    names = [t["name"] for t in res["timings"]]
    assert names[:3] == ["load[files]", "fastpose segment_many[e2e, onnxruntime]", "fastpose segment_many[e2e, torch]"]
    assert "write masks TIFF[1 image]" in names
    for stage in ("normalise", "tiles", "network", "blend", "tracking", "clustering", "flow QC", "fill holes"):
        assert any(n.startswith(stage + "[1 image") for n in names), stage
    info = res["inputs"]["segment"]
    assert info["files"] is True and info["backend"] == "auto" and info["backend_resolved"] == "onnxruntime"
    assert info["masks"]["torch"]["identical_to_onnxruntime"] == "2/2"
    assert "ap50_vs_truth" not in info["masks"]["torch"]          # a.tif has no truth: no AP over the run
    floor = info["network_floor"]
    assert floor["gflop_per_tile"] > 0 and floor["matmul_peak_gflops"] > 0 and floor["tiles_per_run"] == 2
    row = {t["name"]: t["median_s"] for t in res["timings"]}
    (label,) = res["ratios"]
    assert label == "fastpose onnxruntime vs fastpose torch, end to end"
    ort, eager = row["fastpose segment_many[e2e, onnxruntime]"], row["fastpose segment_many[e2e, torch]"]
    assert res["ratios"][label] == eager / ort


def test_speedups_come_from_the_rows_they_name():
    """The issue-17 table: 'load[files]' 0.095 s, fastpose 3.29 s, Cellpose 7.66 s must give 2.33x, not 80.9x."""
    from fastpose.bench._timing import Timing, speedups
    from fastpose.bench.segment import ratios_vs_cellpose

    def row(name, s):
        return Timing(name, "cpu", s, s, s)

    table = [row("load[files]", 0.0947), row("fastpose segment_many[e2e, onnxruntime]", 3.29),
             row("normalise[1 image]", 0.02), row("fastpose segment_many[e2e, torch]", 7.67),
             row("cellpose3 CellposeModel.eval[e2e]", 7.66)]
    for order in (table, table[::-1], table[1:] + table[:1]):
        ort = "fastpose segment_many[e2e, onnxruntime]"
        r = speedups(order, [("ort vs cp3", ort, "cellpose3 CellposeModel.eval[e2e]"),
                             ("ort vs torch", ort, "fastpose segment_many[e2e, torch]"),
                             ("missing", ort, "cellpose4 eval")])
        assert r == {"ort vs cp3": pytest.approx(7.66 / 3.29), "ort vs torch": pytest.approx(7.67 / 3.29)}
    assert ratios_vs_cellpose(table[1], table) == {
        "fastpose segment_many[e2e, onnxruntime] vs cellpose3 CellposeModel.eval[e2e]": pytest.approx(7.66 / 3.29)}
    with pytest.raises(ValueError, match="two timings"):
        speedups(table + [row("load[files]", 1.0)], [])


def test_two_channels_and_mask_agreement():
    from fastpose.bench.segment import mask_agreement, two_channels

    g = np.arange(12, dtype=np.uint16).reshape(3, 4)
    for a in (g, g[..., None]):
        b = two_channels(a)
        assert b.shape == (3, 4, 2) and np.array_equal(b[..., 0], g) and not b[..., 1].any()
    assert two_channels(np.zeros((3, 4, 3))).shape == (3, 4, 2)
    with pytest.raises(ValueError, match="shape"):
        two_channels(np.zeros((2, 3, 4, 5)))
    t = np.zeros((8, 8), np.int32)
    t[:4, :4], t[4:, 4:] = 1, 2
    half = t.copy()
    half[4:, 4:] = 0
    agree = mask_agreement({"onnxruntime": [t], "torch": [t], "cellpose3": [half]}, [t])
    assert agree["torch"] == {"masks": 2, "ap50_vs_truth": 1.0, "identical_to_onnxruntime": "1/1",
                              "ap50_vs_onnxruntime": 1.0}
    assert agree["cellpose3"]["identical_to_onnxruntime"] == "0/1" and agree["cellpose3"]["ap50_vs_truth"] == 0.5


def test_mosaic_from_folder(tmp_path: Path):
    from fastpose.bench.segment import mosaic_from_folder

    rng = np.random.default_rng(1)
    for i in range(5):
        grey = rng.integers(0, 255, (230, 240), dtype=np.uint8)
        img = np.stack([grey] * 3, -1) if i != 1 else rng.integers(0, 255, (230, 240, 3), dtype=np.uint8)  # 1: colour
        lab = np.zeros((230, 240), np.uint16)
        lab[10:30, 10:30], lab[50:70, 50:70] = 7, 9
        tifffile.imwrite(tmp_path / f"{i}_img.tif", img)
        tifffile.imwrite(tmp_path / f"{i}_masks.tif", lab)
    img, lab = mosaic_from_folder(str(tmp_path), size=432)
    assert img.shape == lab.shape == (432, 432) and img.dtype == np.uint8
    assert sorted(np.unique(lab)) == list(range(9))              # 4 crops x 2 cells, unique labels
    with pytest.raises(ValueError, match="only 4 grey"):
        mosaic_from_folder(str(tmp_path), size=648)
    with pytest.raises(ValueError, match="multiple of the crop"):
        mosaic_from_folder(str(tmp_path), size=500)


def test_bench_net_variants_on_cpu(tmp_path: Path):
    out = tmp_path / "net.json"
    assert main(["net", "--arch", "vit_t", "--batch-sizes", "2", "--repeats", "1", "--device", "cpu",
                 "--backends", "torch", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    (t,) = res["timings"]
    assert t["name"] == "vit_t eager fp32 [batch 2]" and t["extra"]["tiles_per_s"] > 0
    assert t["extra"]["x_eager_fp32"] == 1.0
    assert res["inputs"]["net"] == {"arch": "vit_t", "tile": 256, "channels": 3, "batch_sizes": [2]}


def test_bench_sam_without_cellpose(tmp_path: Path):
    out = tmp_path / "sam.json"
    assert main(["sam", "--arch", "vit_t", "--images", "1", "--size", "200", "--repeats", "1", "--precision", "fp32",
                 "--no-cellpose", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [t["name"] for t in res["timings"]] == ["fastpose segment_many[sam]"]
    assert res["timings"][0]["extra"]["images_per_s"] > 0 and res["ratios"] == {}


def test_import_and_help_do_not_load_torch():
    # `import fastpose.bench` and `--help` stay light: each benchmark module (and PyTorch) loads when it runs
    code = ("import sys, contextlib, io, fastpose.bench as b\n"
            "assert 'torch' not in sys.modules, 'import'\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    b.main(['segment', '--help'])\n"
            "assert 'torch' not in sys.modules, '--help'\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


@pytest.mark.parametrize("argv,flag", [(["segment", "--repeats", "0"], "--repeats"),
                                       (["segment", "--size", "nan"], "--size"),
                                       (["segment", "--images", "-1"], "--images"),
                                       (["core", "--diameter", "inf"], "--diameter"),
                                       (["net", "--batch-sizes", "8", "0"], "--batch-sizes"),
                                       (["memory", "--sizes", "0"], "--sizes")])
def test_bench_flags_are_checked_naming_the_flag(argv, flag, capsys):
    """A benchmark is user-facing: a value that means nothing is refused at parse time with the flag's name
    (before this, --repeats 0 died in statistics.median and --images -1 with an IndexError)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and f"argument {flag}: must be" in capsys.readouterr().err


def test_bench_input_errors_are_one_sentence(tmp_path: Path, capsys, caplog):
    rc = main(["segment", "--files", str(tmp_path / "missing.tif"), "--no-cellpose", "--no-torch"])
    assert rc == 2 and "cannot read" in caplog.text and "missing.tif" in caplog.text


def test_bench_meanshift_small(tmp_path: Path):
    """fastpose beside scikit-learn on a small image: both rows, the speed-up from them, the labels compared."""
    pytest.importorskip("sklearn")
    out = tmp_path / "ms.json"
    assert main(["meanshift", "--size", "128", "--objects", "8", "--repeats", "1", "--device", "cpu",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    row = {t["name"]: t for t in res["timings"]}
    ours, theirs = row["fastpose mean_shift[128x128, bin seeds]"], row["sklearn MeanShift[128x128, bin seeds]"]
    assert res["ratios"]["fastpose cpu vs scikit-learn"] == theirs["median_s"] / ours["median_s"]
    agree = res["inputs"]["meanshift"]["agreement_with_sklearn"]
    assert agree["labels_identical"] and agree["adjusted_rand_index"] == 1.0
    assert res["inputs"]["meanshift"]["fitted_pixels"] == round(0.1 * res["inputs"]["meanshift"]["foreground_pixels"])
