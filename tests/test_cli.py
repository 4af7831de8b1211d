"""The fastpose CLI end to end on a temporary folder: outputs, a corrupt file, resume, help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from fastpose.cli import find_inputs, main
from fastpose.models import UNet, save_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    p = tmp_path_factory.mktemp("m") / "tiny.pth"
    save_model(p, UNet(nbase=(2, 8, 16, 32, 64)))
    return p


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    tifffile.imwrite(d / "a_img.tif", rng.integers(0, 255, (64, 80), dtype=np.uint8))
    tifffile.imwrite(d / "b_img.tif", rng.integers(0, 255, (50, 50), dtype=np.uint16))
    tifffile.imwrite(d / "a_masks.tif", np.zeros((64, 80), np.uint16))  # an output-like file: ignored
    (d / "broken_img.tif").write_bytes(b"II*\x00 this is not a tiff")
    tifffile.imwrite(d / "sub" / "c_img.tif", rng.integers(0, 255, (40, 40), dtype=np.uint8))
    return d


def test_find_inputs(folder: Path):
    names = [p.name for p in find_inputs([str(folder)], recursive=False)]
    assert names == ["a_img.tif", "b_img.tif", "broken_img.tif"]
    names = [p.name for p in find_inputs([str(folder)], recursive=True)]
    assert "c_img.tif" in names
    assert [p.name for p in find_inputs([str(folder / "b_*.tif")], False)] == ["b_img.tif"]
    with pytest.raises(FileNotFoundError):
        find_inputs([str(folder / "nothing*.tif")], False)


def test_segment_folder_with_a_corrupt_file(folder: Path, tmp_path: Path, model_file: Path, caplog):
    out = tmp_path / "out"
    before = sorted(p.name for p in folder.rglob("*"))
    rc = main(["segment", str(folder), "--model", str(model_file), "--out", str(out), "--device", "cpu",
               "--save", "masks,outlines_png,csv,seg_npy", "-q"])
    assert rc == 1  # one file failed
    assert "broken_img.tif" in caplog.text
    assert sorted(p.name for p in out.glob("*_masks.tif")) == ["a_masks.tif", "b_masks.tif"]
    m = tifffile.imread(out / "a_masks.tif")
    assert m.shape == (64, 80) and m.dtype == np.uint16
    assert (out / "a_outlines.png").exists() and (out / "b_cells.csv").exists() and (out / "a_seg.npy").exists()
    assert not list(out.glob(".*.tmp"))
    assert sorted(p.name for p in folder.rglob("*")) == before  # nothing written next to the inputs


def test_resume_skips_existing(folder: Path, tmp_path: Path, model_file: Path):
    out = tmp_path / "out"
    (folder / "broken_img.tif").unlink()
    assert main(["segment", str(folder), "--model", str(model_file), "--out", str(out), "--device", "cpu", "-q"]) == 0
    first = (out / "a_masks.tif").stat().st_mtime_ns
    assert main(["segment", str(folder), "--model", str(model_file), "--out", str(out), "--device", "cpu", "-q",
                 "--skip-existing"]) == 0
    assert (out / "a_masks.tif").stat().st_mtime_ns == first


def test_unknown_model_is_an_error_listing_models(folder: Path, tmp_path: Path, caplog):
    rc = main(["segment", str(folder), "--model", "nope", "--out", str(tmp_path / "o"), "-q"])
    assert rc == 2 and "available" in caplog.text


def test_help_explains_every_flag():
    r = subprocess.run([sys.executable, "-m", "fastpose.cli", "segment", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for flag in ["--model", "--diameter", "--channels", "--do-3d", "--augment", "--flow-threshold",
                 "--cellprob-threshold", "--batch-size", "--device", "--out", "--save", "--skip-existing"]:
        assert flag in r.stdout


def test_demo_runs(tmp_path: Path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    m = tifffile.imread(tmp_path / "dsb2018_0402a81e75262469_masks.tif")
    assert m.max() > 100
