"""fastpose-bench distributed on a tiny mosaic: the blocks on a LocalCluster equal the in-memory anchored run, and
the report has every figure RESULTS.md quotes."""

import numpy as np
import pytest
import tifffile

pytest.importorskip("distributed")
pytest.importorskip("zarr")

from fastpose.bench.distributed import bench_distributed, mosaic, same_partition  # noqa: E402
from fastpose.synthetic import random_labels  # noqa: E402


def test_mosaic_and_bench_on_tiny_data(tmp_path):
    for k in range(3):
        lab = random_labels((96, 96), 8, diameter=16, seed=k)
        tifffile.imwrite(tmp_path / f"t{k}_img.tif", ((lab > 0) * 180 + 20).astype(np.uint8))
        tifffile.imwrite(tmp_path / f"t{k}_masks.tif", lab.astype(np.uint16))
    m = mosaic(tmp_path, 200, cell=96)
    assert m.shape == (200, 200) and m.dtype == np.uint8 and m.max() == 255
    assert np.array_equal(m, mosaic(tmp_path, 200, cell=96))                 # seeded
    import torch

    from fastpose.models import UNet, save_model

    torch.manual_seed(0)
    save_model(tmp_path / "tiny.pth", UNet([1, 8, 16, 32], diam_mean=16.0))   # a small network: the test is fast
    res = bench_distributed(tmp_path, sizes=[320], model=str(tmp_path / "tiny.pth"), block=128, workers=1,
                            volume=(6, 28, 30), block3d=16)
    r, v = res["rows"]
    assert v["size"] == "6x28x30" and v["equal_to_anchored_in_memory"] is True
    assert r["equal_to_anchored_in_memory"] is True
    assert 0.0 <= r["ap50"] <= 1.0 and len(r["worker_peak_mb"]) == 1 and r["blocks_seconds"] > 0
    assert res["machine"]["cpu_cores"] >= 1


def test_same_partition_can_fail():
    a = np.array([[1, 1, 2, 0]])
    assert same_partition(a, a * 3) and not same_partition(a, np.array([[1, 1, 1, 0]]))
