"""fastpose-bench runs end to end on tiny inputs and reports what it measured (timings are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_bench_segment_on_user_files(tmp_path: Path):
    f = tmp_path / "a_img.tif"
    tifffile.imwrite(f, np.random.default_rng(0).integers(0, 255, (96, 96, 2), dtype=np.uint8))
    out = tmp_path / "seg.json"
    assert main(["segment", "--model", "nuclei", "--files", str(f), "--repeats", "1", "--device", "cpu",
                 "--no-cellpose", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    names = [t["name"] for t in res["timings"]]
    assert names[0] == "load[files]" and "write masks TIFF[1 image]" in names
    for stage in ("normalise", "tiles", "network", "blend", "tracking", "clustering", "flow QC", "fill holes"):
        assert any(n.startswith(stage + "[1 image") for n in names), stage
    assert res["inputs"]["segment"]["files"] is True


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
    assert [t["name"] for t in res["timings"]] == ["segment_many[sam]"]
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
