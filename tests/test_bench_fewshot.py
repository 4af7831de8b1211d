"""``fastpose-bench fewshot`` (Scellseg's shot-scale harness) on tiny data: the draws are shared by the strategies and
seeded, every level and draw is scored, the hyperbola fit recovers a known curve, the table, JSON and PNG come out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from fastpose.bench import main as bench_main
from fastpose.bench.fewshot import bench_fewshot, draw_shots, fit_hyperbola
from fastpose.models import UNet, save_model
from fastpose.synthetic import random_labels


def test_fit_recovers_a_hyperbola_and_refuses_one_level():
    x = np.array([1, 2, 4, 8, 10], float)
    fit = fit_hyperbola(x, 0.8 * x / (1.5 + x))
    assert fit["bmax"] == pytest.approx(0.8, rel=1e-4) and fit["kd"] == pytest.approx(1.5, rel=1e-3)
    assert fit_hyperbola([2, 2], [0.1, 0.2]) is None


def test_harness_end_to_end_on_tiny_data(tmp_path, capsys):
    data = tmp_path / "target"
    data.mkdir()
    for k in range(4):
        lab = random_labels((64, 64), 6, diameter=14, seed=k)
        img = ((lab > 0) * 200 + np.random.default_rng(k).normal(20, 5, lab.shape)).clip(0, 255).astype(np.uint8)
        tifffile.imwrite(data / f"t{k}_img.tif", img)
        tifffile.imwrite(data / f"t{k}_masks.tif", lab.astype(np.uint16))
    torch.manual_seed(0)
    save_model(tmp_path / "base.pth", UNet([1, 8, 16, 32], diam_mean=14.0))
    res = bench_fewshot(data, str(tmp_path / "base.pth"), shots=[1, 2], draws=1, steps=1, batch_size=2, tile=32,
                        device="cpu")
    assert [(r["shots"], r["draw"]) for r in res["rows"]] == [(1, 0), (2, 0)]
    for r in res["rows"]:
        assert len(r["shot_ids"]) == r["shots"] and r["n_test"] == 4 - r["shots"]
        for s in ("contrastive", "classic", "base"):
            assert 0.0 <= r[s]["map"] <= 1.0 and 0.0 <= r[s]["aji"] <= 1.0
            assert 0.0 <= r[s]["ap75"] <= r[s]["ap50"] <= 1.0
    assert set(res["summary"]) == {"contrastive", "classic", "base"}
    assert [r["shot_ids"] for r in res["rows"]] == [[f"t{j}" for j in draw_shots(4, k, 0)] for k in (1, 2)]
    assert draw_shots(50, 4, 1) == draw_shots(50, 4, 1) != draw_shots(50, 4, 2)     # seeded, per draw
    out, png = tmp_path / "f.json", tmp_path / "f.png"
    assert bench_main(["fewshot", "--data", str(data), "--model", str(tmp_path / "base.pth"), "--shots", "1",
                       "--draws", "1", "--steps", "1", "--batch-size", "2", "--tile", "32", "--device", "cpu",
                       "--strategies", "classic", "--json", str(out), "--png", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "classic" in printed and "AP@0.5" in printed and json.loads(out.read_text())["benchmark"] == "fewshot"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="too few"):
        bench_fewshot(data, str(tmp_path / "base.pth"), shots=[4], draws=1, steps=1, device="cpu")
    # a separate test set (the query images too), and the contrast styles other than the target's
    test = tmp_path / "test"
    test.mkdir()
    for k in range(2):
        lab = random_labels((64, 64), 5, diameter=14, seed=10 + k)
        img = ((lab > 0) * 200 + 20).astype(np.uint8)
        tifffile.imwrite(test / f"u{k}_img.tif", np.stack([img] * 3, -1))     # colour: averaged to grey
        tifffile.imwrite(test / f"u{k}_masks.tif", lab.astype(np.uint16))
    res = bench_fewshot(data, str(tmp_path / "base.pth"), test=test, shots=[4], draws=1, steps=1, batch_size=2,
                        tile=32, device="cpu", contrast_styles=["synthetic_cells"])
    assert res["rows"][0]["n_test"] == 2 and res["n_test_images"] == 2
    assert res["protocol"]["contrast_styles"] == ["synthetic_cells"] and res["protocol"]["halve_every"] == 1
    with pytest.raises(ValueError, match="no style"):
        bench_fewshot(data, str(tmp_path / "base.pth"), test=test, shots=[1], steps=1, contrast_styles=["x"])
