"""Cellulus from the command line: ``fastpose train --method cellulus`` (and ``--recipe cellulus_nuclei``) on
tiny synthetic images, end to end into a file ``fastpose segment`` runs; the usage errors of the train and
segment flags; ``fastpose-bench cellulus`` on tiny data with a Cellulus and a Cellpose model side by side.

Everything runs in process through the command lines' ``main`` (exit status and the logged sentence are what a
user sees), on 80 px images with f = 4 networks and 2-3 steps: well under 30 s on one thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi

from fastpose.bench import main as bench_main
from fastpose.cellulus import CellulusNet
from fastpose.cli import build_parser
from fastpose.cli import main as fastpose_main
from fastpose.models import load_model
from fastpose.synthetic import random_labels
from fastpose.train.data import heldout_by_hash, image_files, split_images
from fastpose.train.recipes import RECIPES, SAMPLE_ID

TINY = ["--fmaps", "4", "--crop", "64", "--batch-size", "1", "--device", "cpu", "-q"]


def _write(folder: Path, name: str, seed: int, rgb: bool = False, side: int = 80) -> None:
    lab = random_labels((side, side), 8, diameter=14, seed=seed)
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.0) * 800 + rng.normal(100, 10, lab.shape)
    img = np.clip(img, 0, 65535).astype(np.uint16)
    if rgb:  # a colour file, nuclei dark on bright as in histology
        img = np.stack([255 - img // 4, 230 - img // 5, 250 - img // 4], -1).clip(0, 255).astype(np.uint8)
    tifffile.imwrite(folder / f"{name}_img.tif", img)
    tifffile.imwrite(folder / f"{name}_masks.tif", lab.astype(np.uint16))


def _held_out_id() -> str:
    return next(f"im{i}" for i in range(1000) if heldout_by_hash(f"im{i}", 10))


HELD = _held_out_id()  # an id the nuclei recipe's hash holds out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder of 4 tiny images with masks (one colour, one the bundled sample's id, one held out by the nuclei
    recipe's hash) and a Cellulus model trained on it with the recipe, through the command line."""
    threads = torch.get_num_threads()  # one thread here, and PyTorch's own count again for the later tests
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("cellulus_cli")
    data = d / "data"
    data.mkdir()
    _write(data, "aaa", 1)
    _write(data, "bbb", 2, rgb=True)
    _write(data, SAMPLE_ID, 3)
    _write(data, HELD, 4)
    out = d / "cn.pth"
    rc = fastpose_main(["train", "--recipe", "cellulus_nuclei", "--data", str(data), "--out", str(out), "--steps",
                        "2", "--object-size", "12", *TINY])
    assert rc == 0
    yield d, data, out
    torch.set_num_threads(threads)


# ---- train --------------------------------------------------------------------------------------------------

def test_recipe_run_writes_a_model_and_its_card(work):
    d, data, out = work
    net, meta = load_model(out)
    assert isinstance(net, CellulusNet) and net.f == 4 and net.in_channels == 1
    spec = meta["spec"]
    assert spec["family"] == "cellulus" and spec["settings"]["object_size"] == 12.0
    tr = meta["extra"]["training"]
    assert tr["steps_done"] == 2 and tr["lr"] == 5e-4 and tr["weight_decay"] == 0.01 and tr["crop"] == 64
    assert tr["n_images"] == 2 and tr["weights"].startswith("last")          # aaa and bbb; sample and held-out out
    assert (d / "cn_train" / "cellulus_state.pt").is_file()
    card = json.loads(out.with_suffix(".json").read_text())                  # --card: on for the recipe
    assert card["kind"] == "cellulus" and card["model"] == "cellulus_nuclei" and card["diam_mean"] == 12.0
    assert card["reproduce"] == (f"fastpose train --recipe cellulus_nuclei --data {data} --out {out} --batch-size 1 "
                                 "--fmaps 4 --crop 64 --steps 2 --object-size 12 --device cpu")
    assert card["recipe"]["method"] == "cellulus" and card["recipe"]["grey"] is True
    assert card["recipe"]["holdout_every"] == 10 and card["recipe"]["exclude"] == [SAMPLE_ID]
    assert "2 training images, masks not read" in card["data"] and "(1 image, not trained on)" in card["data"]
    assert card["training"]["command"] == card["reproduce"] and card["validation"] == {}
    assert card["settings"]["object_size"] == 12.0 and card["settings"]["post_processing"] == "cell"
    assert meta["extra"]["card"] == card
    assert RECIPES["cellulus_nuclei"].command() == ("fastpose train --recipe cellulus_nuclei --data "
                                                   "/path/to/dsb2018/stage1_train --time-budget 2700 --out "
                                                   "cellulus_nuclei.pth")


def test_method_cellulus_resumes_and_segment_runs_the_file(work, tmp_path, caplog):
    _, data, _ = work
    out = tmp_path / "m.pth"
    base = ["train", "--method", "cellulus", "--data", str(data), "--out", str(out), "--exclude", "aaa",
            "--channel-axis", "-1", "--post-processing", "nucleus", *TINY]
    assert fastpose_main([*base, "--steps", "1", "--seed", "3"]) == 0
    assert fastpose_main([*base, "--steps", "3", "--resume", str(tmp_path / "m_train")]) == 0
    caplog.clear()
    assert fastpose_main(["train", "--method", "cellulus", "--data", str(data), "--out", str(out), "--fmaps", "8",
                          "--steps", "4", "--resume", str(tmp_path / "m_train")]) == 2
    assert "--fmaps 8: the network of --resume has f = 4" in caplog.text
    _, meta = load_model(out)
    tr = meta["extra"]["training"]
    # bbb, the sample and the held-out image (no recipe: nothing held out); the network takes the channels of the
    # first image (the sample: grey), so the colour file gives its first channel
    assert tr["steps_done"] == 3 and tr["n_images"] == 3 and tr["nchan"] == 1
    assert meta["spec"]["settings"]["post_processing"] == "nucleus" and not out.with_suffix(".json").exists()
    assert "excluded: aaa" in meta["extra"]["data"]
    # fastpose segment runs it, with its object size overridden and a Cellpose-only flag warned about
    seg_out = tmp_path / "seg"
    caplog.clear()
    assert fastpose_main(["segment", str(data / "aaa_img.tif"), "--out", str(seg_out), "--model", str(out),
                          "--device", "cpu", "-q", "--object-size", "10", "--flow-threshold", "0.2"]) == 0
    masks = tifffile.imread(seg_out / "aaa_masks.tif")
    assert masks.shape == (80, 80)
    assert "--flow-threshold 0.2: Cellpose options that Cellulus models do not use, ignored" in caplog.text
    assert "object size 10 px (bandwidth 5)" in caplog.text


@pytest.mark.parametrize("extra,says", [
    (["--method", "cellulus", "--epochs", "3", "--nbase", "1", "8"], "does not take --nbase, --epochs"),
    (["--method", "cellulus", "--val-dir", "v", "--no-amp"], "does not take --val-dir, --no-amp"),
    (["--fmaps", "4"], "--fmaps is an option of --method cellulus"),
    (["--steps", "2", "--object-size", "9"], "--steps, --object-size are options of --method cellulus"),
    (["--recipe", "nuclei", "--method", "cellulus"], "--recipe nuclei trains with --method cellpose"),
    (["--recipe", "cellulus_nuclei", "--method", "cellpose"], "trains with --method cellulus, not --method cellpose"),
    (["--method", "cellulus", "--model", "nuclei"], "--model nuclei is a UNet, not a Cellulus network"),
    (["--method", "cellulus", "--resume", "nowhere"], "--resume nowhere: no such file"),
    (["--method", "cellulus", "--holdout-every", "10", "--exclude", "aaa", "bbb", SAMPLE_ID],
     "no training images left (4 found, 1 held out by --holdout-every, the rest excluded)"),
])
def test_train_usage_errors(work, tmp_path, caplog, extra, says):
    _, data, _ = work
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "x.pth"), *extra]
    assert fastpose_main(argv) == 2
    assert says in caplog.text and "Traceback" not in caplog.text, caplog.text
    assert not (tmp_path / "x.pth").exists()


def test_train_data_and_card_usage_errors(tmp_path, caplog):
    for argv, says in [
            (["train", "--method", "cellulus", "--out", "x.pth"], "no training images: pass --data FOLDER"),
            (["train", "--method", "cellulus", "--data", str(tmp_path / "none"), "--out", "x.pth"],
             "no such folder"),
            (["train", "--method", "cellulus", "--data", str(tmp_path), "--out", "x.pth"], "no images (.tif"),
            (["evaluate-card", "x.pth", "--recipe", "cellulus_nuclei"], "fastpose-bench cellulus")]:
        caplog.clear()
        assert fastpose_main(argv) == 2, argv
        assert says in caplog.text, (argv, caplog.text)


@pytest.mark.parametrize("flag,value,says", [("--crop", "63", "must be an even integer"),
                                             ("--crop", "36", "must be an integer in [40, 8192]"),
                                             ("--fmaps", "0", "must be an integer"),
                                             ("--steps", "1.5", "must be an integer"),
                                             ("--object-size", "nan", "must be a finite number"),
                                             ("--post-processing", "cells", "invalid choice")])
def test_train_flags_are_checked_at_parse_time(flag, value, says, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "--method", "cellulus", "--out", "x.pth", f"{flag}={value}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}: " in err and says in err, err


def test_image_listing_and_split(tmp_path):
    for n in ("a_img.tif", "a_masks.tif", "b.npy", "c_labels.tif", "d_flows.tif", "notes.txt"):
        (tmp_path / n).write_bytes(b"")
    files = image_files(tmp_path, mask_filter="_labels")
    assert [(p.name, i) for p, i in files] == [("a_img.tif", "a"), ("b.npy", "b")]
    held = HELD
    assert not heldout_by_hash("aaa", 10)
    tr, ho = split_images([(Path("a"), "aaa"), (Path(held), held), (Path("s"), SAMPLE_ID)], 10, [SAMPLE_ID])
    assert tr == [Path("a")] and ho == [held]
    assert split_images([(Path("a"), "aaa"), (Path(held), held)])[0] == [Path("a"), Path(held)]


# ---- segment ------------------------------------------------------------------------------------------------

def test_segment_object_size_rules(work, tmp_path, caplog):
    _, data, out = work
    img = str(data / "aaa_img.tif")
    for argv, says in [
            (["--model", str(out), "--object-size", "10", "--diameter", "20"], "exclude each other"),
            (["--model", "nuclei", "--object-size", "10"], "--object-size applies to Cellulus models only; nuclei "
                                                           "is a 'cellpose' model")]:
        caplog.clear()
        assert fastpose_main(["segment", img, "--out", str(tmp_path / "o"), "--device", "cpu", "-q", *argv]) == 2
        assert says in caplog.text, caplog.text
    assert not list(tmp_path.rglob("*_masks.tif"))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", img, "--out", "o", "--object-size=-3"])


# ---- fastpose-bench cellulus ------------------------------------------------------------------------------------

def test_bench_scores_cellulus_and_cellpose_side_by_side(work, tmp_path):
    from fastpose.metrics import f1_seg_pooled

    _, data, out = work
    card = out.with_suffix(".json")
    res_path = tmp_path / "res.json"
    rc = bench_main(["cellulus", "--data", str(data), "--model", str(out), "--model", "nuclei", "--holdout-every",
                     "1", "--device", "cpu", "--backend", "torch", "--json", str(res_path)])
    assert rc == 0
    res = json.loads(res_path.read_text())
    i = res["inputs"]
    ids = sorted(["aaa", "bbb", HELD])
    assert i["images"] == 3 and i["grey_images"] == 2 and sorted(i["image_ids"]) == ids   # the sample excluded
    cel, cp = res["models"]
    assert (cel["family"], cp["family"]) == ("cellulus", "cellpose") and cel["settings"]["object_size"] == 12.0
    assert "goal_met" in cel and "goal_met" not in cp
    assert cp["scores"]["all"]["f1"] > 0.5                        # the bundled nuclei model finds synthetic nuclei
    for e in (cel, cp):
        per = e["per_image"]
        for sub, keep in (("all", {"grey", "rgb"}), ("grey", {"grey"})):
            s = e["scores"][sub]
            tp, fp, fn = (sum(p[k] for p in per if p["kind"] in keep) for k in ("tp", "fp", "fn"))
            assert (s["tp"], s["fp"], s["fn"]) == (tp, fp, fn)
            assert s["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
            assert s["seg"] == pytest.approx(sum(p["seg_sum"] for p in per if p["kind"] in keep) /
                                             sum(p["n_true"] for p in per if p["kind"] in keep))
    # --label-diameter, --object-size, --limit, and the card merge (one model)
    rc = bench_main(["cellulus", "--data", str(data), "--model", str(out), "--holdout-every", "1", "--limit", "1",
                     "--label-diameter", "--object-size", "9", "--device", "cpu", "--card", str(card)])
    assert rc == 0
    v = json.loads(card.read_text())["validation"]["f1_seg_heldout"]
    assert v["inputs"]["images"] == 1 and v["inputs"]["label_diameter"] and v["settings"]["object_size"] == 9.0
    assert v["scores"]["all"]["n_images"] == 1 and "goal_met" in v
    # the metric is the one fastpose.metrics computes
    assert f1_seg_pooled(np.zeros((4, 4), int), np.zeros((4, 4), int))["f1"] == 1.0


def test_bench_usage_errors(work, tmp_path, caplog):
    _, data, out = work
    for argv, says in [
            (["--model", str(out), "--model", "nuclei", "--card", str(out.with_suffix(".json"))],
             "--card merges the results of one --model, got 2"),
            (["--model", str(out), "--card", str(tmp_path / "none.json")], "no such file"),
            (["--model", str(out), "--holdout-every", "1000000"], "no held-out images")]:
        caplog.clear()
        assert bench_main(["cellulus", "--data", str(data), "--device", "cpu", *argv]) == 2
        assert says in caplog.text and "Traceback" not in caplog.text, caplog.text
    with pytest.raises(SystemExit):
        bench_main(["cellulus", "--data", str(data)])                     # --model is required
