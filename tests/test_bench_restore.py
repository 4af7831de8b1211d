"""``fastpose-bench restore`` (fastpose.bench.restore): the degradation benchmark runs end to end on two tiny
synthetic images with a random restoration network, its JSON holds what the protocol says, the won-back fraction
comes from the APs, and a bad condition name is a one-sentence error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi

from fastpose.bench import main
from fastpose.bench.restore import condition_seed, degrade_image, to_model_scale, won_back
from fastpose.synthetic import random_labels
from fastpose.train.recipes import SAMPLE_ID

CONDITIONS = ["poisson_2.5", "blur_4"]


def _write_pair(folder: Path, name: str, seed: int, diameter: float = 12.0, side: int = 96) -> None:
    lab = random_labels((side, side), 14, diameter=diameter, seed=seed)
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.0) * 800 + rng.normal(100, 10, lab.shape)
    tifffile.imwrite(folder / f"{name}_img.tif", np.clip(img, 0, 65535).astype(np.uint16))
    tifffile.imwrite(folder / f"{name}_masks.tif", lab.astype(np.uint16))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One benchmark run through the command line's main, in process: (result JSON, card JSON)."""
    from fastpose.models import UNet, save_model

    threads = torch.get_num_threads()  # one thread here, PyTorch's own count again for the later tests
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("bench_restore")
    data = d / "data"
    data.mkdir()
    _write_pair(data, "aaa", 1)
    _write_pair(data, "bbb", 2, diameter=10.0)
    _write_pair(data, SAMPLE_ID, 3)                    # the bundled sample: never in the held-out split
    torch.manual_seed(0)
    net = d / "restore_random.pth"
    save_model(net, UNet([1, 8, 16, 32, 64], nout=1, diam_mean=17.0))
    card = d / "card.json"
    card.write_text(json.dumps({"card_version": 1, "model": "x", "validation": {"label_diameter": {"ap50_mean": 0.5}}}))
    out = d / "res.json"
    rc = main(["restore", "--data", str(data), "--restore", str(net), "--model", "nuclei", "--holdout-every", "1",
               "--conditions", *CONDITIONS, "--device", "cpu", "--backend", "torch", "--repeats", "1",
               "--size", "64", "--json", str(out), "--card", str(card)])
    assert rc == 0
    yield json.loads(out.read_text()), json.loads(card.read_text())
    torch.set_num_threads(threads)


def test_json_structure(run):
    res, _ = run
    assert res["benchmark"] == "restore" and res["machine"]["cpu_cores"] >= 1
    i = res["inputs"]
    assert i["images"] == 2 and i["image_ids"] == ["aaa", "bbb"]         # SAMPLE_ID excluded
    assert i["conditions"] == CONDITIONS and i["diam_mean"] == 17.0 and i["backend_resolved"] == "torch"
    assert i["scale_factors"][0] > 1 and all(len(s) == 2 for s in i["shapes"])
    a = res["accuracy"]
    assert list(a["conditions"]) == CONDITIONS
    for k in ("clean", "restored"):
        per = a["clean"]["ap50_per_image"][k]
        assert len(per) == 2 and a["clean"]["ap50_mean"][k] == pytest.approx(np.mean(per))
        c = a["clean"]["counts50"][k]
        tot = c["tp"] + c["fp"] + c["fn"]
        assert a["clean"]["ap50_pooled"][k] == pytest.approx(c["tp"] / tot if tot else 1.0)
    assert a["clean"]["ap50_mean"]["clean"] > 0.3      # the bundled nuclei model finds synthetic nuclei
    for c, d in a["conditions"].items():
        assert set(d["ap50_mean"]) == {"clean", "degraded", "restored"}
        assert d["ap50_mean"]["clean"] == a["clean"]["ap50_mean"]["clean"]
        for k in ("degraded", "restored"):
            assert d["ap50_mean"][k] == pytest.approx(np.mean(d["ap50_per_image"][k]))
            assert 0.0 <= d["ap50_pooled"][k] <= 1.0
    (t,) = res["throughput"]
    assert t["name"] == "restore[64x64, torch]" and t["device"] == "cpu" and t["extra"]["megapixels_per_s"] > 0


def test_won_back_comes_from_the_aps(run):
    res, _ = run
    a = res["accuracy"]
    fracs = []
    for d in a["conditions"].values():
        for key, ap in (("won_back", d["ap50_mean"]), ("won_back_pooled", d["ap50_pooled"])):
            lost = ap["clean"] - ap["degraded"]
            want = (ap["restored"] - ap["degraded"]) / lost if lost > 0 else None
            assert (d[key] is None) == (want is None)
            if want is not None:
                assert d[key] == pytest.approx(want)
        fracs.append(d["won_back"])
    defined = [f for f in fracs if f is not None]
    assert a["won_back_defined"] == len(defined)
    if defined:
        assert a["won_back_mean"] == pytest.approx(float(np.mean(defined)))
        assert a["goal_met"] == (a["won_back_mean"] >= 0.5)
    else:
        assert a["won_back_mean"] is None and a["goal_met"] is None


def test_won_back_formula():
    assert won_back(0.8, 0.4, 0.6) == pytest.approx(0.5)
    assert won_back(0.8, 0.4, 0.8) == pytest.approx(1.0)
    assert won_back(0.8, 0.4, 0.3) == pytest.approx(-0.25)
    assert won_back(0.5, 0.5, 0.9) is None and won_back(0.5, 0.6, 0.9) is None


def test_card_merged_keeping_other_validation(run):
    res, card = run
    assert card["model"] == "x" and card["validation"]["label_diameter"] == {"ap50_mean": 0.5}
    e = card["validation"]["degradation_benchmark"]
    assert e["won_back_mean"] == res["accuracy"]["won_back_mean"]
    assert set(e["conditions"]) == set(CONDITIONS) and "ap50_per_image" not in e["conditions"]["blur_4"]
    assert e["throughput_megapixels_per_s"]["cpu (torch)"] > 0


def test_protocol_pieces():
    lab = random_labels((80, 80), 10, diameter=10.0, seed=0)
    img = (lab > 0).astype(np.float32) * 50 + 10
    x, m, f = to_model_scale(img, lab, 17.0)
    assert x.shape == m.shape and f > 1 and x.min() >= 0 and m.dtype == np.int32
    assert math.isclose(np.percentile(x, 99), 1.0, rel_tol=1e-4)
    s = condition_seed(0, "aaa", "poisson_5")
    assert s == condition_seed(0, "aaa", "poisson_5") != condition_seed(0, "aaa", "poisson_2.5")
    a, b = degrade_image(x, "poisson_5", s), degrade_image(x, "poisson_5", s)
    assert np.array_equal(a, b) and not np.array_equal(a, x)


def test_bad_condition_is_a_clear_error(tmp_path: Path, caplog):
    rc = main(["restore", "--data", str(tmp_path), "--conditions", "poisson_5", "noise_9"])
    assert rc == 2
    assert "noise_9" in caplog.text and "poisson_5, poisson_2.5" in caplog.text and "Traceback" not in caplog.text


def test_data_is_required(capsys):
    with pytest.raises(SystemExit) as e:
        main(["restore"])
    assert e.value.code == 2 and "--data" in capsys.readouterr().err
