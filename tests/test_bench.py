"""fastpose-bench runs end to end on tiny inputs and reports what it measured (timings are not asserted)."""

from __future__ import annotations

import json
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
    assert res["inputs"]["segment"]["files"] is True
