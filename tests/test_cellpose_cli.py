"""The Cellpose-compatible command line (``fastpose cellpose`` / ``python -m fastpose.cellpose_cli``): the exact
argument lists QuPath's BIOP extension, CellProfiler's RunCellpose (Docker mode) and TrackMate send, Cellpose's
output file names and ``_seg.npy`` layout, input selection, and the errors (unknown flag, --train, the cpsam
default without its file, a corrupt image among good ones).

Small crops of the bundled DSB sample and the bundled ``nuclei`` model on the CPU; the runs are in-process
(:func:`fastpose.cellpose_cli.main`) except QuPath's, replayed as the subprocess QuPath starts, and --help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import List

import numpy as np
import pytest
import tifffile

import fastpose
from fastpose import cellpose_cli
from fastpose.cellpose_cli import find_images, main, remove_edge_masks, resolve_model
from fastpose.io import is_temp_file, read_image, sample_paths
from fastpose.models.files import resolve_model_path

SETTINGS = dict(diameter=30.0, flow_threshold=0.4, cellprob_threshold=0.0, min_size=15)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return read_image(sample_paths()[0])  # 260 x 347 DSB nuclei


@pytest.fixture(scope="module")
def crops(sample) -> List[np.ndarray]:
    return [np.ascontiguousarray(sample[:112, :144]), np.ascontiguousarray(sample[120:232, 180:324])]


@pytest.fixture(scope="module")
def seg() -> fastpose.Segmenter:
    return fastpose.Segmenter("nuclei", device="cpu")


@pytest.fixture(scope="module")
def expected(seg, crops):
    """fastpose's own results for the crops, with the settings the integrations send."""
    return [seg.segment(c, return_flows=True, **SETTINGS) for c in crops]


@pytest.fixture(autouse=True)
def no_cellpose_models(tmp_path_factory, monkeypatch):
    """An empty Cellpose model folder: the cpsam default has no file here, whatever the machine has."""
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path_factory.mktemp("cellpose-models")))


def _images(d: Path, crops, names=("a.tif", "b.tif")) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, c in zip(names, crops):
        tifffile.imwrite(d / name, c)
    return d


def _names(d: Path) -> List[str]:
    files = sorted(q.name for q in d.iterdir() if q.is_file())
    assert not [f for f in files if is_temp_file(f)], files
    return files


def _touches_border(m: np.ndarray) -> set:
    edge = np.concatenate([m[0], m[-1], m[:, 0], m[:, -1]])
    return set(np.unique(edge).tolist()) - {0}


# ---- the integrations' argument lists -------------------------------------------------------------------------

def test_qupath_argument_list(tmp_path, crops, expected):
    """QuPath BIOP: ``python -Xutf8 -W ignore -m cellpose --dir <tmp> ... --save_tif --no_npy --verbose``, then it
    reads ``<tile>_cp_masks.tif``: replayed as that subprocess."""
    d = _images(tmp_path / "tiles", crops)
    r = subprocess.run([sys.executable, "-Xutf8", "-W", "ignore", "-m", "fastpose.cellpose_cli", "--dir", str(d),
                        "--pretrained_model", "nuclei", "--diameter", "30", "--flow_threshold", "0.4",
                        "--cellprob_threshold", "0.0", "--save_tif", "--no_npy", "--verbose"],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ), check=False)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert _names(d) == ["a.tif", "a_cp_masks.tif", "b.tif", "b_cp_masks.tif"]  # no _seg.npy (--no_npy)
    for name, exp in zip("ab", expected):
        got = tifffile.imread(d / f"{name}_cp_masks.tif")
        assert got.dtype == np.uint16 and exp.masks.max() > 5
        np.testing.assert_array_equal(got, exp.masks)


def test_cellprofiler_docker_argument_list(tmp_path, crops, expected, monkeypatch, caplog):
    """CellProfiler RunCellpose, Docker mode, custom model: ``cellpose --verbose --dir /data/img --pretrained_model
    /data/model/f --diameter D --cellprob_threshold C --min_size M --anisotropy A --flow_threshold F
    --stitch_threshold S --use_gpu``, then ``np.load(<name>_seg.npy, allow_pickle=True).item()`` and its
    ``masks`` and ``flows`` (``flows[1]``: the probability image)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --use_gpu without a GPU: the CPU, a warning
    img_dir = _images(tmp_path / "data" / "img", crops[:1], ["0b6f2c1e-uuid.tiff"])
    model = tmp_path / "data" / "model" / "nuclei_copy.pth"
    model.parent.mkdir()
    shutil.copyfile(resolve_model_path("nuclei"), model)
    code = main(["--verbose", "--dir", str(img_dir), "--pretrained_model", str(model), "--use_gpu", "--diameter",
                 "30.0", "--cellprob_threshold", "0.0", "--min_size", "15", "--anisotropy", "1.0",
                 "--flow_threshold", "0.4", "--stitch_threshold", "0.0"])
    assert code == 0
    assert "no CUDA GPU" in caplog.text
    assert _names(img_dir) == ["0b6f2c1e-uuid.tiff", "0b6f2c1e-uuid_seg.npy"]
    dat = np.load(img_dir / "0b6f2c1e-uuid_seg.npy", allow_pickle=True).item()
    exp = expected[0]
    assert {"masks", "outlines", "flows", "filename", "ismanual", "chan_choose", "diameter"} <= set(dat)
    np.testing.assert_array_equal(dat["masks"], exp.masks)
    assert dat["masks"].dtype == np.uint16 and dat["filename"].endswith("0b6f2c1e-uuid.tiff")
    assert len(dat["ismanual"]) == exp.masks.max() and not dat["ismanual"].any()
    assert set(np.unique(dat["outlines"])) <= set(np.unique(dat["masks"])) and dat["outlines"].any()
    # Cellpose 4's io.masks_flows_to_seg layout
    flows = dat["flows"]
    Y, X = exp.masks.shape
    assert isinstance(flows, list) and len(flows) == 5
    assert flows[0].shape == (1, Y, X, 3) and flows[0].dtype == np.uint8 and flows[0].any()
    assert flows[1].shape == (1, Y, X) and flows[1].dtype == np.uint8
    assert flows[2].shape == (1, Y, X, 3) and not flows[2].any()
    assert len(flows[3]) == 0
    assert flows[4].shape == (3, Y, X) and flows[4].dtype == np.float32
    np.testing.assert_allclose(flows[4][:2], exp.flows, atol=1e-5)
    np.testing.assert_allclose(flows[4][2], exp.cellprob, atol=1e-5)
    prob = np.squeeze(flows[1], axis=0)  # what RunCellpose shows as the probability image (0-255)
    assert prob[exp.masks > 0].mean() > prob[exp.masks == 0].mean() + 100


def test_trackmate_argument_list_with_cellpose3_channels(tmp_path, crops, expected):
    """TrackMate: ``--dir DIR --pretrained_model M --diameter D --save_tif --no_npy --verbose --chan 1 --chan2 0``
    (Cellpose 3's channels): channel 1 is the first, whichever axis holds the channels; --chan 2 the second."""
    noise = np.random.default_rng(0).integers(0, 255, crops[0].shape, dtype=np.uint8)
    d1 = tmp_path / "first"
    d1.mkdir()
    tifffile.imwrite(d1 / "t.tif", np.stack([crops[0], noise], -1))  # (Y, X, 2)
    d2 = tmp_path / "second"
    d2.mkdir()
    tifffile.imwrite(d2 / "t.tif", np.stack([noise, crops[0]], 0))  # (2, Y, X)
    for d, chan in ((d1, "1"), (d2, "2")):
        assert main(["--dir", str(d), "--pretrained_model", "nuclei", "--diameter", "30", "--save_tif", "--no_npy",
                     "--verbose", "--chan", chan, "--chan2", "0"]) == 0
        np.testing.assert_array_equal(tifffile.imread(d / "t_cp_masks.tif"), expected[0].masks)


# ---- outputs and inputs ---------------------------------------------------------------------------------------

def test_savedir_png_txt_rois_and_exclude_on_edges_via_fastpose_cellpose(tmp_path, crops, expected, caplog):
    """``fastpose cellpose ...`` passes its flags through; --savedir holds every output; --exclude_on_edges leaves
    no mask on the border, numbered 1..N; the accepted-and-ignored flags are logged at INFO."""
    from fastpose.cli import main as fastpose_main

    PIL = pytest.importorskip("PIL.Image")
    d = _images(tmp_path / "in", crops[1:], ["b.tif"])
    out = tmp_path / "out"
    out.mkdir()
    code = fastpose_main(["cellpose", "--dir", str(d), "--pretrained_model", "nuclei", "--diameter", "30",
                          "--savedir", str(out), "--save_png", "--save_txt", "--save_rois", "--exclude_on_edges",
                          "--no_npy", "--verbose", "--bsize", "224", "--gpu_device", "1", "--flow3D_smooth", "2"])
    assert code == 0
    assert _names(d) == ["b.tif"]  # nothing next to the image
    assert _names(out) == ["b_cp_masks.png", "b_cp_outlines.txt", "b_rois.zip"]
    full = expected[1].masks
    assert _touches_border(full), "the crop must have masks on its border for this test to mean anything"
    with PIL.open(out / "b_cp_masks.png") as im:
        png = np.asarray(im).astype(np.int64)
    assert png.shape == full.shape
    n = int(png.max())
    assert not _touches_border(png) and sorted(set(np.unique(png).tolist())) == list(range(n + 1))
    assert n == int(full.max()) - len(_touches_border(full))
    for k in range(1, n + 1):  # every kept mask is one of fastpose's, unchanged
        old = np.unique(full[png == k])
        assert len(old) == 1 and np.array_equal(full == old[0], png == k)
    np.testing.assert_array_equal(png, remove_edge_masks(full))
    assert len((out / "b_cp_outlines.txt").read_text().strip().splitlines()) == n
    with zipfile.ZipFile(out / "b_rois.zip") as z:
        assert len(z.namelist()) == n
    for flag in ("--bsize", "--flow3D_smooth"):
        assert any(r.levelname == "INFO" and flag in r.getMessage() and "ignores" in r.getMessage()
                   for r in caplog.records), flag


def test_image_selection_img_filter_look_one_level_down_and_outputs_skipped(tmp_path, crops):
    d = _images(tmp_path / "in", crops, ["a_img.tif", "b.tif"])
    tifffile.imwrite(d / "a_img_cp_masks.tif", np.zeros((4, 4), np.uint16))  # an earlier run's output
    tifffile.imwrite(d / "old_img_masks.tif", np.zeros((4, 4), np.uint16))
    np.save(d / "a_img_seg.npy", np.zeros(3))
    (d / "notes.txt").write_text("x")
    _images(d / "sub", crops[:1], ["c_img.tif"])
    tifffile.imwrite(d / "sub" / "c_img_flows.tif", np.zeros((4, 4), np.float32))
    assert find_images(d) == [d / "a_img.tif", d / "b.tif"]
    assert find_images(d, img_filter="_img") == [d / "a_img.tif"]
    assert find_images(d, look_one_level_down=True) == [d / "a_img.tif", d / "b.tif", d / "sub" / "c_img.tif"]
    assert find_images(d, mask_filter="_img") == [d / "b.tif"]
    code = main(["--dir", str(d), "--img_filter", "_img", "--look_one_level_down", "--pretrained_model", "nuclei",
                 "--diameter", "30", "--save_tif", "--no_npy"])
    assert code == 0
    assert _names(d) == ["a_img.tif", "a_img_cp_masks.tif", "a_img_seg.npy", "b.tif", "notes.txt",
                         "old_img_masks.tif"]
    assert tifffile.imread(d / "a_img_cp_masks.tif").shape == crops[0].shape  # rewritten, not taken as input
    assert _names(d / "sub") == ["c_img.tif", "c_img_cp_masks.tif", "c_img_flows.tif"]


# ---- errors ---------------------------------------------------------------------------------------------------

def test_unknown_flag_is_exit_2_naming_it(tmp_path, capsys):
    assert main(["--dir", str(tmp_path), "--foo", "3", "--save_tif"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown flag --foo" in err and "Cellpose" in err, err


@pytest.mark.parametrize("flag,value", [("--diameter", "nan"), ("--min_size", "1.5"), ("--niter", "-1"),
                                        ("--flow_threshold", "-0.1"), ("--batch_size", "0"),
                                        ("--stitch_threshold", "2"), ("--channel_axis", "9")])
def test_hostile_numbers_are_exit_2_naming_the_flag(flag, value, capsys):
    assert main(["--dir", ".", flag, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be" in err and repr(value) in err, err


def test_train_is_refused_pointing_at_fastpose_train(tmp_path, capsys):
    assert main(["--train", "--dir", str(tmp_path), "--test_dir", str(tmp_path), "--pretrained_model", "nuclei"]) == 2
    err = capsys.readouterr().err
    assert "--train" in err and "fastpose train" in err, err


def test_cpsam_default_without_its_file_is_exit_2(tmp_path, crops, capsys):
    d = _images(tmp_path / "in", crops[:1])
    assert main(["--dir", str(d), "--save_tif"]) == 2  # no --pretrained_model: Cellpose's default, cpsam
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cpsam" in err and "--pretrained_model nuclei" in err, err
    assert _names(d) == ["a.tif"]


def test_model_names(tmp_path, monkeypatch):
    assert resolve_model("nuclei")[0] == "nuclei"
    for name in ("cyto", "cyto2", "cyto3"):
        assert resolve_model(name)[0] == "cyto"
    with pytest.raises(cellpose_cli.UsageError, match="Cellpose-SAM"):
        resolve_model(None)
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    (tmp_path / "cpsam").write_bytes(b"x")
    (tmp_path / "cyto3").write_bytes(b"x")
    assert resolve_model("cpsam")[0] == str(tmp_path / "cpsam")  # a downloaded file is used
    assert resolve_model("cyto3")[0] == str(tmp_path / "cyto3")
    with pytest.raises(cellpose_cli.UsageError, match="tissuenet_cp3"):
        resolve_model("tissuenet_cp3")


def test_a_corrupt_tiff_among_good_ones_is_exit_1_and_the_others_are_written(tmp_path, crops, expected, caplog):
    d = _images(tmp_path / "in", crops)
    (d / "bad.tif").write_bytes(b"II*\x00" + b"\x00garbage" * 8)
    assert main(["--dir", str(d), "--pretrained_model", "nuclei", "--diameter", "30", "--save_tif"]) == 1
    assert _names(d) == ["a.tif", "a_cp_masks.tif", "a_seg.npy", "b.tif", "b_cp_masks.tif", "b_seg.npy", "bad.tif"]
    np.testing.assert_array_equal(tifffile.imread(d / "b_cp_masks.tif"), expected[1].masks)
    assert any(r.levelname == "ERROR" and "bad.tif" in r.getMessage() for r in caplog.records)


def test_help_of_python_m_fastpose_cellpose_cli():
    r = subprocess.run([sys.executable, "-m", "fastpose.cellpose_cli", "--help"], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ), check=False)
    assert r.returncode == 0, r.stderr
    for flag in ("--pretrained_model", "--save_tif", "--no_npy", "--exclude_on_edges", "--chan2", "--train"):
        assert flag in r.stdout
    assert "accepted and ignored" in r.stdout
