"""The fastpose CLI end to end on a temporary folder: outputs, a corrupt file, resume from completion records,
mirrored output folders, name clashes, the --out check, flag names in messages, help.  (Hostile command
lines in subprocesses: test_reliability_cli.py; killed runs: test_cli_faults.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from fastpose.cli import InputFile, UsageError, check_unique_outputs, collect_inputs, find_inputs, flag_names, main
from fastpose.models import UNet, save_model


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    # the default backend may cache an ONNX export: in this session's temp folder, not ~/.cache
    monkeypatch.setenv("FASTPOSE_CACHE", str(tmp_path_factory.getbasetemp() / "fastpose-cache"))


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


def test_find_inputs(folder: Path, caplog):
    (folder / "notes.txt").write_text("x")
    (folder / "a.fastpose.json").write_text("{}")
    with caplog.at_level("INFO", logger="fastpose"):
        names = [p.name for p in find_inputs([str(folder)], recursive=False)]
    assert names == ["a_img.tif", "b_img.tif", "broken_img.tif"]
    assert "skipped 1 file(s) that are not images (.tif/.tiff/.npy): notes.txt" in caplog.text
    assert "skipped 2 file(s) that look like segmentation outputs: a.fastpose.json, a_masks.tif" in caplog.text
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


def _run(folder, out, model_file, *extra):
    return main(["segment", str(folder), "--model", str(model_file), "--out", str(out), "--device", "cpu", "-q",
                 *extra])


def test_resume_skips_complete_and_redoes_incomplete(folder: Path, tmp_path: Path, model_file: Path, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "out"
    (folder / "broken_img.tif").unlink()
    assert _run(folder, out, model_file, "--save", "masks,csv") == 0
    assert sorted(p.name for p in out.glob("*.fastpose.json")) == ["a.fastpose.json", "b.fastpose.json"]
    first = (out / "a_masks.tif").stat().st_mtime_ns
    caplog.clear()
    assert _run(folder, out, model_file, "--skip-existing") == 0  # masks only: a subset of what is there
    assert (out / "a_masks.tif").stat().st_mtime_ns == first
    assert "skipped 2 as complete; redid 0 incomplete" in caplog.text
    # a killed run: csv missing for a; b's record gone (outputs without a record, as before records existed)
    (out / "a_cells.csv").unlink()
    (out / "b.fastpose.json").unlink()
    caplog.clear()
    assert _run(folder, out, model_file, "--skip-existing", "--save", "masks,csv") == 0
    assert "a_img.tif: redoing, outputs incomplete (a_cells.csv is missing)" in caplog.text
    assert "b_img.tif: redoing, outputs incomplete (no completion record" in caplog.text
    assert "segmented 2 of 2 input(s); skipped 0 as complete; redid 2 incomplete" in caplog.text
    assert (out / "a_cells.csv").exists() and (out / "b.fastpose.json").exists()
    # more kinds than recorded: redone
    caplog.clear()
    assert _run(folder, out, model_file, "--skip-existing", "--save", "masks,rois") == 0
    assert "redid 2 incomplete" in caplog.text and (out / "a_rois.zip").exists()


def test_leftover_temp_files_are_removed_at_the_start(folder: Path, tmp_path: Path, model_file: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a_masks.tif.fastpose-k1ll3d.tmp").write_bytes(b"half")
    (out / ".mine.tmp").write_bytes(b"not ours")
    (folder / "broken_img.tif").unlink()
    assert _run(folder, out, model_file) == 0
    assert not list(out.glob(".*fastpose-*")) and (out / ".mine.tmp").exists()


def test_recursive_outputs_mirror_subfolders(tmp_path: Path, model_file: Path):
    d = tmp_path / "in"
    rng = np.random.default_rng(1)
    for sub in ["A", "B", "B/deep"]:
        (d / sub).mkdir(parents=True)
        tifffile.imwrite(d / sub / "img.tif", rng.integers(0, 255, (40, 40), dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["segment", str(d), "--recursive", "--model", str(model_file), "--out", str(out), "--device", "cpu",
                 "-q"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*_masks.tif")) == [
        "A/img_masks.tif", "B/deep/img_masks.tif", "B/img_masks.tif"]
    assert [f.rel for f in collect_inputs([str(d / "*" / "img.tif")], False)] == [Path("A"), Path("B")]


def test_name_clashes_are_refused_naming_both(tmp_path: Path):
    a, b = tmp_path / "A" / "img.tif", tmp_path / "B" / "img.tif"
    with pytest.raises(UsageError, match=f"{a} and {b} would write the same outputs"):
        check_unique_outputs([InputFile(a), InputFile(b)])
    with pytest.raises(UsageError, match="x.npy and .*x_img.tif would write"):
        check_unique_outputs([InputFile(tmp_path / "x.npy"), InputFile(tmp_path / "x_img.tif")])
    check_unique_outputs([InputFile(a, Path("A")), InputFile(b, Path("B"))])  # mirrored: no clash


def test_clashing_inputs_stop_before_any_work(folder: Path, tmp_path: Path, model_file: Path, caplog):
    tifffile.imwrite(folder / "a.tif", np.zeros((8, 8), np.uint8))  # a.tif beside a_img.tif
    out = tmp_path / "out"
    assert _run(folder, out, model_file) == 2
    assert "a.tif and" in caplog.text and "a_img.tif would write the same outputs" in caplog.text
    assert not out.exists() or not list(out.iterdir())


def test_out_that_is_a_file_is_refused_before_any_work(folder: Path, tmp_path: Path, model_file: Path, caplog):
    caplog.set_level("INFO")
    f = tmp_path / "taken"
    f.write_text("x")
    assert _run(folder, f / "sub", model_file) == 2
    assert f"{f} is a file, not a folder" in caplog.text and "loaded" not in caplog.text


def test_python_names_become_flags():
    assert flag_names("channel_axis=5 is out of range for a 2D image") == "--channel-axis 5 is out of range for a 2D image"
    assert flag_names("a volume (z_axis given) needs do_3D=True or stitch_threshold > 0") == \
        "a volume (--z-axis given) needs --do-3d or --stitch-threshold > 0"
    assert flag_names("channels=[0, 3]: the image has only 2 channel(s)") == \
        "--channels [0, 3]: the image has only 2 channel(s)"
    assert flag_names("pass diameter= (or 0)") == "pass --diameter (or 0)"
    assert flag_names("the image has 3 channels; diameter is fine") == "the image has 3 channels; diameter is fine"
    assert flag_names("cannot read /data/channel_axis/z_axis.tif: x") == "cannot read /data/channel_axis/z_axis.tif: x"


def test_bad_channel_axis_is_reported_with_the_flag(folder: Path, tmp_path: Path, model_file: Path, caplog):
    (folder / "broken_img.tif").unlink()
    assert _run(folder, tmp_path / "o", model_file, "--channel-axis", "3") == 1
    assert "--channel-axis 3 is out of range" in caplog.text and "channel_axis=" not in caplog.text


def test_unknown_model_is_an_error_listing_models(folder: Path, tmp_path: Path, caplog):
    rc = main(["segment", str(folder), "--model", "nope", "--out", str(tmp_path / "o"), "-q"])
    assert rc == 2 and "available" in caplog.text


def test_help_explains_every_flag():
    r = subprocess.run([sys.executable, "-m", "fastpose.cli", "segment", "--help"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0
    from fastpose.cli import build_parser
    seg = next(a for a in build_parser()._actions if a.dest == "cmd").choices["segment"]
    flags = [max(a.option_strings, key=len) for a in seg._actions if a.option_strings]
    assert len(flags) > 20
    for a in seg._actions:
        assert a.help and len(a.help) > 10, a.option_strings  # every flag explained
    for flag in flags:
        assert flag in r.stdout
    text = " ".join(r.stdout.split())
    assert "masks without a record) is redone" in text  # --skip-existing and outputs of older versions
    assert "refused before any work" in text and "130 Ctrl-C, 143 SIGTERM" in text


def test_demo_runs(tmp_path: Path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    m = tifffile.imread(tmp_path / "dsb2018_0402a81e75262469_masks.tif")
    assert m.max() > 100


def test_unwritable_out_is_refused_before_any_work(folder: Path, tmp_path: Path, model_file: Path, caplog,
                                                   monkeypatch):
    # a read-only folder cannot be made as root (test_reliability_cli.py chmods one when not root): the
    # probe's failure is simulated where it happens
    from fastpose import cli

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(cli.tempfile, "mkstemp", refuse)
    caplog.set_level("INFO")
    out = tmp_path / "ro"
    assert _run(folder, out, model_file) == 2
    assert f"--out {out}: cannot write in {out} (Permission denied)" in caplog.text
    assert "loaded" not in caplog.text and not list(out.iterdir())


def test_an_out_inside_the_inputs_is_not_read_back(folder: Path, model_file: Path, caplog):
    caplog.set_level("INFO")
    (folder / "broken_img.tif").unlink()
    out = folder / "sub" / "results"
    for _ in range(2):
        assert main(["segment", str(folder), "--recursive", "--model", str(model_file), "--out", str(out),
                     "--device", "cpu", "-q", "--save", "masks,csv"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*_masks.tif")) == [
        "a_masks.tif", "b_masks.tif", "sub/c_masks.tif"]
    assert "segmented 3 of 3 input(s)" in caplog.text


def test_a_full_disk_stops_the_batch_and_names_what_is_missing(folder: Path, tmp_path: Path, model_file: Path,
                                                               caplog, monkeypatch):
    import errno

    from fastpose import outputs

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(outputs, "write_outputs", full)
    caplog.set_level("INFO")
    (folder / "broken_img.tif").unlink()
    out = tmp_path / "out"
    assert _run(folder, out, model_file) == 1
    assert "stopping: --out" in caplog.text and "No space left on device" in caplog.text
    assert "failed: " + str(folder / "a_img.tif") in caplog.text and "failed: " + str(folder / "b_img.tif") in caplog.text
    assert not list(out.glob("*.fastpose.json"))
