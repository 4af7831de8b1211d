"""Fault injection of the batch command line: ``fastpose segment`` on 6 small images with every output kind
is killed (SIGKILL or SIGTERM, seeded) at a random moment, once or twice in a row, then resumed with
--skip-existing; afterwards every output must be there exactly once, complete and readable (TIFF opens and
matches the _seg.npy masks, CSV parses with one row per mask, the ROI zip opens with one ROI per mask, the
PNG and outlines text decode), and no temporary file may be left.  A SIGTERM'd run must exit 143 with its
temp files already gone and say what finished.

A quarter of the kills fall at a random moment before the first output (model loading, segmenting), the
others at a random delay after the first change in --out, within the span a reference run took to write its
outputs (measured here, never asserted on), so most land in the middle of an input's outputs.
"""

from __future__ import annotations

import csv
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import List, Set, Tuple

import numpy as np
import pytest
import tifffile
import torch

from fastpose.io import is_temp_file
from fastpose.models import UNet, save_model
from fastpose.outputs import OUTPUT_FILES, RECORD_SUFFIX, record_status

pytestmark = pytest.mark.slow  # ~40 s of subprocesses on 2 cores

KINDS = [k for k in OUTPUT_FILES if k != "restored"]  # every kind a segmentation model writes ("restored": --restore)
N_IMAGES = 6
TRIALS = 5
TIMEOUT = 60
SEED = 20240617
# a random tiny network makes no masks at the default thresholds: accept every pixel, keep every mask
OPTIONS = ["--cellprob-threshold=-100", "--min-size", "0", "--flow-threshold", "0"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    save_model(d / "tiny.pth", UNet(nbase=(2, 8, 16, 32, 64)))
    (d / "in").mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        tifffile.imwrite(d / "in" / f"im{i}.tif", rng.integers(0, 255, (96, 96), dtype=np.uint8))
    return d


def _start(work: Path, out: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fastpose.cli", "segment", "in", "--model", "tiny.pth", "--out", str(out),
           "--device", "cpu", "-q", "--save", ",".join(KINDS), *OPTIONS, *(["--skip-existing"] if resume else [])]
    env = dict(os.environ, FASTPOSE_CACHE=str(work / "cache"))  # the default backend's ONNX export: here
    return subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def span(work: Path) -> Tuple[float, float]:
    """(seconds until the first output file appeared, seconds from then until the last record appeared) in an
    unkilled run: where the kills are aimed (never asserted on)."""
    out = work / "reference"
    t0 = time.monotonic()
    p = _start(work, out, False)
    first = last = None
    while p.poll() is None:
        names = [q.name for q in out.iterdir()] if out.exists() else []
        if first is None and names:
            first = time.monotonic() - t0
        if sum(n.endswith(RECORD_SUFFIX) for n in names) == N_IMAGES and last is None:
            last = time.monotonic() - t0
        time.sleep(0.005)
    total = time.monotonic() - t0
    assert p.returncode == 0, p.stderr.read() if p.stderr else ""
    check_outputs(out, work)
    first = first if first is not None else 0.8 * total
    return first, max((last or total) - first, 0.05)


def _kill_at_a_random_point(p: subprocess.Popen, out: Path, rng: random.Random, sig: signal.Signals,
                            span: Tuple[float, float]) -> None:
    """A quarter of the kills before any output (model loading, segmenting), the others during the writing:
    a random delay after the first change in ``out``."""
    first, writing = span
    if rng.random() < 0.25:
        time.sleep(rng.uniform(0.0, first))
    else:
        before = sorted(q.name for q in out.iterdir()) if out.exists() else []
        t0 = time.monotonic()
        while p.poll() is None and time.monotonic() - t0 < TIMEOUT:
            if out.exists() and sorted(q.name for q in out.iterdir()) != before:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 1.2 * writing))
    p.send_signal(sig)


def _temp_files(out: Path) -> List[Path]:
    return [q for q in out.rglob("*") if is_temp_file(q)] if out.exists() else []


def _complete(out: Path, work: Path) -> Set[str]:
    return {f"im{i}" for i in range(N_IMAGES)
            if record_status(out, f"im{i}", KINDS, work / "in" / f"im{i}.tif")[0] == "complete"}


def _png_shape(data: bytes) -> Tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        n, tag = struct.unpack(">I4s", data[pos:pos + 8])
        if tag == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    assert len(zlib.decompress(idat)) == h * (1 + 3 * w)
    return h, w


def check_outputs(out: Path, work: Path) -> None:
    names = sorted(q.name for q in out.iterdir())
    expected = sorted([f"im{i}{OUTPUT_FILES[k]}" for i in range(N_IMAGES) for k in KINDS]
                      + [f"im{i}{RECORD_SUFFIX}" for i in range(N_IMAGES)])
    assert names == expected, set(names) ^ set(expected)  # none missing, none extra, no temp file
    for i in range(N_IMAGES):
        s = out / f"im{i}"
        assert record_status(out, s.name, KINDS, work / "in" / f"im{i}.tif") == ("complete", "")
        masks = tifffile.imread(f"{s}_masks.tif")
        labels = set(np.unique(masks)) - {0}
        assert masks.shape == (96, 96) and labels
        seg = np.load(f"{s}_seg.npy", allow_pickle=True).item()
        np.testing.assert_array_equal(seg["masks"], masks)
        with open(f"{s}_cells.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert sorted(int(r["label"]) for r in rows) == sorted(labels)
        with zipfile.ZipFile(f"{s}_rois.zip") as z:
            assert z.testzip() is None and len(z.namelist()) == len(labels)
        assert _png_shape(Path(f"{s}_outlines.png").read_bytes()) == masks.shape
        lines = Path(f"{s}_outlines.txt").read_text().splitlines()
        assert len(lines) == len(labels) and all(len(ln.split(",")) % 2 == 0 for ln in lines)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_killed_runs_resume_to_complete_outputs(work: Path, span, trial: int):
    rng = random.Random(SEED + trial)
    sig = (signal.SIGKILL, signal.SIGTERM)[trial % 2]
    out = work / f"trial{trial}"
    for k in range(rng.choice([1, 2])):  # half the time the resumed run is killed too
        p = _start(work, out, resume=k > 0)
        _kill_at_a_random_point(p, out, rng, sig, span)
        try:
            _, err = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(f"run did not end {TIMEOUT} s after {sig.name}")
        assert "Traceback" not in err, err
        if sig == signal.SIGKILL:
            assert p.returncode in (-signal.SIGKILL, 0), (p.returncode, err)
        else:
            # 143: the handler ran; -15: killed before it was installed (interpreter start); 0: finished first
            assert p.returncode in (143, -signal.SIGTERM, 0), (p.returncode, err)
            if p.returncode == 143:
                assert not _temp_files(out), _temp_files(out)
                assert "terminated by SIGTERM" in err, err
                # the summary of what finished, unless the signal came while the command line was parsed
                assert "while starting: nothing was done" in err or (
                    re.search(r"\d+ input\(s\) finished in this run", err) and "--skip-existing" in err), err
    before = _complete(out, work) if out.exists() else set()
    r = _start(work, out, resume=True)
    _, err = r.communicate(timeout=TIMEOUT)
    assert r.returncode == 0 and "Traceback" not in err, err
    m = re.search(r"segmented (\d+) of 6 input\(s\); skipped (\d+) as complete; redid (\d+) incomplete; failed 0",
                  err)
    assert m is not None, err
    segmented, skipped, redone = map(int, m.groups())
    assert skipped == len(before) and segmented == N_IMAGES - skipped, (before, err)
    assert redone <= segmented
    check_outputs(out, work)
    assert not _temp_files(out)
