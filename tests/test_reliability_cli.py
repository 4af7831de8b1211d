"""Hostile command lines: each run in its own ``python -m fastpose.cli`` subprocess with a timeout, so a crash,
a traceback or a hang fails the test.  Each asserts the documented exit status (0 done, 1 some inputs
failed, 2 usage/setup error), the sentence on stderr naming the flag or file, no "Traceback", and nothing
half-written in --out (no temp file; every output belongs to an input with a complete record).

Every numeric flag x every hostile value is also checked in-process on the parser (cheap), since one
subprocess per pair would take minutes on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import tifffile
import torch

from fastpose.cli import build_parser
from fastpose.io import is_temp_file
from fastpose.models import UNet, save_model
from fastpose.outputs import RECORD_SUFFIX, record_status

TIMEOUT = 60


def fastpose(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FASTPOSE_CACHE=str(cwd / "cache"))  # an ONNX export of the default backend: here
    r = subprocess.run([sys.executable, "-m", "fastpose.cli", *args], capture_output=True, text=True,
                       timeout=TIMEOUT, cwd=cwd, env=env, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def assert_nothing_half_written(out: Path) -> None:
    if not out.exists():
        return
    files = [q for q in out.rglob("*") if q.is_file()]
    assert not [q for q in files if is_temp_file(q)], files
    stems = {q.parent / q.name[: -len(RECORD_SUFFIX)] for q in files if q.name.endswith(RECORD_SUFFIX)}
    for q in files:
        assert any(q.name.startswith(s.name + "_") or q.name == s.name + RECORD_SUFFIX
                   for s in stems if s.parent == q.parent), f"{q} belongs to no complete input"
    for s in stems:
        assert record_status(s.parent, s.name, [])[0] == "complete", s


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("rel")
    torch.manual_seed(0)
    save_model(d / "tiny.pth", UNet(nbase=(2, 8, 16, 32, 64)))
    (d / "in").mkdir()
    tifffile.imwrite(d / "in" / "good.tif", np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8))
    return d


def seg(work: Path, out: str, *extra: str, inputs: Optional[List[str]] = None) -> subprocess.CompletedProcess:
    return fastpose("segment", *(inputs or ["in"]), "--out", out, "--model", "tiny.pth", "--device", "cpu", "-q",
                    *extra, cwd=work)


# ---- numeric flags -----------------------------------------------------------------------------------

#: (subcommand, flag, hostile values) for every numeric flag of cli.py's subcommands
NUMERIC = [
    ("segment", "--diameter", ["nan", "-1", "1e6", "inf", "big"]),
    ("segment", "--niter", ["nan", "0", "1e9", "2.5", "x"]),
    ("segment", "--min-size", ["nan", "-1", "1e99", "1.5", "x"]),
    ("segment", "--flow-threshold", ["nan", "-0.1", "inf", "x"]),
    ("segment", "--cellprob-threshold", ["nan", "inf", "-inf", "x"]),
    ("segment", "--stitch-threshold", ["nan", "-0.5", "1.5", "x"]),
    ("segment", "--anisotropy", ["nan", "0", "-2", "1e9", "x"]),
    ("segment", "--batch-size", ["nan", "0", "5000", "1.5", "x"]),
    ("segment", "--workers", ["nan", "0", "1e9", "1.5", "x"]),
    ("segment", "--block", ["nan", "0", "1e9", "1.5", "x"]),
    ("segment", "--halo", ["nan", "-1", "1e9", "1.5", "x"]),
    ("segment", "--channels", ["nan", "-1", "0.5", "x"]),
    ("segment", "--channel-axis", ["nan", "9", "-9", "1.5", "x"]),
    ("segment", "--z-axis", ["nan", "9", "-9", "1.5", "x"]),
    ("segment", "--max-memory", ["nan", "-1", "0", "8XB", "x"]),
    ("segment", "--object-size", ["nan", "0", "-1", "1e6", "inf", "x"]),
    ("export", "--tile", ["nan", "0", "-16", "1e9", "x"]),
    ("export", "--opset", ["nan", "0", "999", "17.5", "x"]),
    ("export", "--rtol", ["nan", "0", "-1", "2", "x"]),
    ("export", "--batch-size", ["nan", "0", "1e9", "1.5", "x"]),
    ("export", "--workspace-gb", ["nan", "0", "-1", "1e9", "x"]),
    ("restore", "--diameter", ["nan", "-1", "1e6", "inf", "x"]),
    ("restore", "--channel-axis", ["nan", "9", "-9", "1.5", "x"]),
    ("restore", "--z-axis", ["nan", "9", "-9", "1.5", "x"]),
    ("restore", "--channels", ["nan", "-1", "0.5", "x"]),
    ("restore", "--tile-overlap", ["nan", "-0.1", "0.9", "x"]),
    ("restore", "--batch-size", ["nan", "0", "5000", "1.5", "x"]),
    ("train-restore", "--holdout-every", ["nan", "0", "-1", "1.5", "x"]),
    ("train-restore", "--channel-axis", ["nan", "9", "-9", "1.5", "x"]),
    ("train-restore", "--min-masks", ["nan", "-1", "1.5", "x"]),
    ("train-restore", "--limit", ["nan", "0", "-1", "1.5", "x"]),
    ("train-restore", "--nbase", ["nan", "0", "-8", "1.5", "x"]),
    ("train-restore", "--diam-mean", ["nan", "0", "-1", "inf", "x"]),
    ("train-restore", "--lam", ["nan", "-1", "inf", "x"]),
    ("train-restore", "--steps", ["nan", "0", "-1", "1.5", "x"]),
    ("train-restore", "--time-budget", ["nan", "0", "-1", "inf", "x"]),
    ("train-restore", "--lr", ["nan", "0", "-1", "inf", "x"]),
    ("train-restore", "--weight-decay", ["nan", "-1", "inf", "x"]),
    ("train-restore", "--batch-size", ["nan", "0", "5000", "1.5", "x"]),
    ("train-restore", "--tile", ["nan", "0", "-16", "1e9", "x"]),
    ("train-restore", "--val-every", ["nan", "-1", "1.5", "x"]),
    ("train-restore", "--n-val", ["nan", "0", "-1", "1.5", "x"]),
    ("train-restore", "--threads", ["nan", "0", "-1", "1.5", "x"]),
    ("train-restore", "--seed", ["nan", "-1", "1.5", "x"]),
    # the Cellulus options of `fastpose train` (train's other numeric flags are not in this table yet)
    ("train", "--fmaps", ["nan", "0", "-1", "1.5", "x"]),
    ("train", "--crop", ["nan", "0", "38", "63", "1e9", "x"]),
    ("train", "--steps", ["nan", "0", "-1", "1.5", "x"]),
    ("train", "--object-size", ["nan", "0", "-1", "inf", "x"]),
]


def _argv(cmd: str, flag: str, value: str) -> List[str]:
    base = {"segment": ["segment", "in", "--out", "o"], "export": ["export", "nuclei", "--out", "m.onnx"],
            "restore": ["restore", "in", "--out", "o"], "train-restore": ["train-restore", "--out", "o.pth"],
            "train": ["train", "--out", "o.pth"]}[cmd]
    if flag == "--lam":  # three values: the hostile one first
        return base + [flag, value, "1", "0"]
    return base + [f"{flag}={value}"]


def test_every_numeric_flag_of_cli_py_is_in_the_table():
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "cmd").choices
    have = {(c, f) for c, f, _ in NUMERIC}
    for cmd in ("segment", "export", "demo", "info", "restore", "train-restore"):
        for a in subs[cmd]._actions:
            if a.option_strings and a.type is not None and a.dest not in ("save",):
                assert (cmd, max(a.option_strings, key=len)) in have, (cmd, a.option_strings)


@pytest.mark.parametrize("cmd,flag,values", NUMERIC, ids=[f"{c}{f}" for c, f, _ in NUMERIC])
def test_hostile_numbers_are_refused_at_parse_time_naming_the_flag(cmd, flag, values, capsys):
    parser = build_parser()
    for v in values:
        with pytest.raises(SystemExit) as e:
            parser.parse_args(_argv(cmd, flag, v))
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument {flag}: must be" in err and repr(v) in err, (v, err)


# one subprocess per kind of hostile value (NaN, negative, huge, non-numeric, fractional) and subcommand
SUBPROCESS_CASES = [("segment", "--diameter", "nan"), ("segment", "--niter", "-5"),
                    ("segment", "--batch-size", "1e9"), ("segment", "--stitch-threshold", "abc"),
                    ("segment", "--min-size", "2.5"), ("export", "--tile", "nan")]


@pytest.mark.parametrize("cmd,flag,value", SUBPROCESS_CASES, ids=[f"{c}{f}={v}" for c, f, v in SUBPROCESS_CASES])
def test_hostile_number_in_a_subprocess(work, cmd, flag, value):
    r = fastpose(*_argv(cmd, flag, value), cwd=work)
    assert r.returncode == 2 and f"argument {flag}: must be" in r.stderr, r.stderr
    assert not (work / "o").exists() and not (work / "m.onnx").exists()


# ---- --save, --out -------------------------------------------------------------------------------------

@pytest.mark.parametrize("save,says", [("", "argument --save: needs at least 1 item"),
                                       (",", "argument --save: needs at least 1 item"),
                                       ("masks,jpeg", "argument --save: item 'jpeg': must be one of 'masks'")])
def test_bad_save_lists(work, save, says):
    r = seg(work, "o_save", f"--save={save}")
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert not (work / "o_save").exists()


def test_a_file_as_out(work):
    (work / "taken").write_text("x")
    r = seg(work, "taken")
    assert r.returncode == 2 and "--out taken: taken is a file, not a folder" in r.stderr, r.stderr
    assert (work / "taken").read_text() == "x" and "loaded" not in r.stderr  # before the model


def test_a_file_above_out(work):
    (work / "taken2").write_text("x")
    r = seg(work, "taken2/sub/out")
    assert r.returncode == 2 and "taken2 is a file, not a folder" in r.stderr, r.stderr


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc (Linux)")
def test_an_out_that_cannot_be_created(work):
    r = seg(work, "/proc/fastpose-out")
    assert r.returncode == 2 and "--out /proc/fastpose-out: cannot create the folder" in r.stderr, r.stderr


def test_a_read_only_out(work):
    ro = work / "ro"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    try:
        try:
            (ro / "probe").write_text("x")
            (ro / "probe").unlink()
            pytest.skip("writes to a read-only folder succeed here (running as root?)")
        except PermissionError:
            pass
        r = seg(work, "ro")
        assert r.returncode == 2 and "--out ro: cannot write in ro" in r.stderr, r.stderr
        assert "loaded" not in r.stderr and not list(ro.iterdir())
    finally:
        ro.chmod(0o755)


# ---- unreadable inputs ---------------------------------------------------------------------------------

def _bad_files(d: Path) -> dict:
    good = (d.parent / "in" / "good.tif").read_bytes()
    pick = d / "pickled.npy"
    np.save(pick, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "text.npy", np.array(["a", "b"]))
    return {"corrupt.tif": b"II*\x00 this is not a tiff", "empty.tif": b"", "truncated.tif": good[: len(good) // 2],
            "pickled.npy": None, "text.npy": None}


@pytest.mark.parametrize("name,says", [("corrupt.tif", "no image data"), ("empty.tif", "the file is empty"),
                                       ("truncated.tif", "truncated or corrupt"), ("pickled.npy", "pickle"),
                                       ("text.npy", "not a numeric image type")])
def test_an_unreadable_input_is_reported_and_the_batch_goes_on(work, name, says):
    d = work / f"bad_{name.replace('.', '_')}"
    d.mkdir()
    content = _bad_files(d)[name]
    if content is not None:
        (d / name).write_bytes(content)
    for extra in ["pickled.npy", "text.npy"]:
        if extra != name:
            (d / extra).unlink()
    (d / "good.tif").write_bytes((work / "in" / "good.tif").read_bytes())
    (d / "notes.txt").write_text("not an image")
    (d / "preview.png").write_bytes(b"\x89PNG")
    out = work / f"o_{d.name}"
    r = seg(work, str(out), "--save", "masks,csv,rois", inputs=[str(d)])
    assert r.returncode == 1, r.stderr
    assert f"cannot read {d / name}: " in r.stderr and says in r.stderr, r.stderr
    assert "skipped 2 file(s) that are not images (.tif/.tiff/.npy): notes.txt, preview.png" in r.stderr
    assert f"failed: {d / name}" in r.stderr
    assert record_status(out, "good", ["masks", "csv", "rois"])[0] == "complete"
    assert not list(out.glob(f"{Path(name).stem}_*"))
    assert_nothing_half_written(out)


# ---- colliding names, models, cross-flag rules ------------------------------------------------------------

def test_same_stem_in_one_folder_is_refused_before_any_work(work):
    d = work / "clash"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", np.zeros((16, 16), np.uint8))
    np.save(d / "a.npy", np.zeros((16, 16), np.uint8))
    r = seg(work, "o_clash", inputs=[str(d)])
    assert r.returncode == 2 and f"{d / 'a.npy'} and {d / 'a.tif'} would write the same outputs" in r.stderr
    assert "rename or move one" in r.stderr and "loaded" not in r.stderr
    assert not list((work / "o_clash").rglob("*")) if (work / "o_clash").exists() else True


def test_same_name_in_two_folders_is_refused_unless_mirrored(work):
    for sub in ("A", "B"):
        (work / "two" / sub).mkdir(parents=True)
        (work / "two" / sub / "img.tif").write_bytes((work / "in" / "good.tif").read_bytes())
    r = seg(work, "o_two", inputs=["two/A", "two/B"])
    assert r.returncode == 2 and "two/A/img.tif and two/B/img.tif would write the same outputs" in r.stderr
    assert "--recursive" in r.stderr
    r = seg(work, "o_two", "--recursive", inputs=["two"])
    assert r.returncode == 0, r.stderr
    assert sorted(str(q.relative_to(work / "o_two")) for q in (work / "o_two").rglob("*_masks.tif")) == \
        ["A/img_masks.tif", "B/img_masks.tif"]
    assert_nothing_half_written(work / "o_two")


@pytest.mark.parametrize("model,says", [("missing.pth", r"no model file 'missing.pth'.*available built-in models"),
                                        ("garbage.pth", r"cannot load model garbage.pth: ")])
def test_bad_model_files(work, model, says):
    import re
    (work / "garbage.pth").write_bytes(b"\x00not a model\xff" * 10)
    r = fastpose("segment", "in", "--out", "o_model", "--model", model, "--device", "cpu", "-q", cwd=work)
    assert r.returncode == 2 and re.search(says, r.stderr), r.stderr
    assert_nothing_half_written(work / "o_model")
    assert not list((work / "o_model").iterdir())


@pytest.mark.parametrize("extra,says", [
    (["--do-3d"], "--do-3d needs --z-axis"),
    (["--z-axis", "0", "--do-3d", "--stitch-threshold", "0.5"], "exclude each other"),
    (["--z-axis", "0"], "--z-axis is given but neither --do-3d nor --stitch-threshold"),
    (["--anisotropy", "2"], "--anisotropy applies to --do-3d only"),
    (["--no-norm", "--tile-norm"], "--no-norm and --tile-norm exclude each other")])
def test_cross_flag_rules_before_the_model(work, extra, says):
    r = seg(work, "o_cross", *extra)
    assert r.returncode == 2 and says in r.stderr and "loaded" not in r.stderr, r.stderr


def test_no_inputs(work):
    (work / "empty_dir").mkdir()
    r = seg(work, "o_none", inputs=["empty_dir"])
    assert r.returncode == 2 and "no input images (.tif, .tiff, .npy) found in empty_dir" in r.stderr
    r = seg(work, "o_none", inputs=["nothing*.tif"])
    assert r.returncode == 2 and "nothing*.tif: no such file, folder or matching files" in r.stderr
