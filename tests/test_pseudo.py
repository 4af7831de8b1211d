"""Bootstrapping a U-Net from pseudo-labels (:mod:`fastpose.train.pseudo`, ``fastpose train --pseudo-labels``):
the merge of pseudo-labels with sparse annotations against a plain reference, the cache keyed by the teacher, the
half-and-half batches and mixed loss of the training loop, and the command line end to end on tiny images (the
bundled ``nuclei`` model as the teacher: the path takes any model), with its usage errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi

from fastpose.cli import main as fastpose_main
from fastpose.models import UNet, load_model
from fastpose.synthetic import random_labels
from fastpose.train import loop
from fastpose.train.data import from_arrays, heldout_by_hash
from fastpose.train.pseudo import annotated_ids, merge_labels, pseudo_labels


def _merge_reference(pseudo: np.ndarray, ann: np.ndarray, margin: float) -> np.ndarray:
    """The rule spelled out object by object: keep every annotation; keep a pseudo object when all of its pixels
    lie farther than ``margin`` from every annotated pixel; number annotations first, then pseudo objects."""
    yy, xx = np.nonzero(ann)
    out = np.zeros(ann.shape, np.int32)
    k = 0
    for v in np.unique(ann)[1:]:
        k += 1
        out[ann == v] = k
    for v in np.unique(pseudo)[1:]:
        py, px = np.nonzero(pseudo == v)
        d = np.sqrt((py[:, None] - yy[None]) ** 2 + (px[:, None] - xx[None]) ** 2)
        if yy.size and d.min() <= margin:
            continue
        k += 1
        out[pseudo == v] = k
    return out


@pytest.mark.parametrize("margin", [0.0, 5.0, 30.0])
def test_merge_labels_matches_the_rule_spelled_out(margin):
    pseudo = random_labels((64, 64), 10, diameter=10, seed=1).astype(np.int32)
    ann = np.zeros((64, 64), np.uint16)
    ann[5:15, 5:15] = 7                                     # overlaps some pseudo objects, not all
    ann[40:50, 50:60] = 3
    got = merge_labels(pseudo, ann, margin)
    ref = _merge_reference(pseudo, ann, margin)
    assert got.dtype == np.int32 and np.array_equal(got, ref)
    assert (got[ann > 0] > 0).all() and len(np.unique(got[ann > 0])) == 2   # the annotations, whole
    if margin == 0.0:
        assert got.max() > 2                                 # far pseudo objects stay


def test_merge_labels_without_annotations_and_bad_inputs():
    pseudo = random_labels((32, 32), 3, diameter=8, seed=2)
    assert np.array_equal(merge_labels(pseudo, np.zeros_like(pseudo)) > 0, pseudo > 0)
    with pytest.raises(ValueError, match="differ in shape"):
        merge_labels(pseudo, np.zeros((8, 8), np.int32))
    with pytest.raises(ValueError, match="integer label image"):
        merge_labels(pseudo.astype(np.float32), pseudo)
    with pytest.raises(ValueError, match="margin"):
        merge_labels(pseudo, pseudo, margin=-1)


def _image(seed: int, side: int = 96) -> tuple:
    lab = random_labels((side, side), 9, diameter=16, seed=seed)
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter((lab > 0).astype(np.float32), 1.0) * 800 + rng.normal(100, 10, lab.shape)
    return np.clip(img, 0, 65535).astype(np.uint16), lab.astype(np.uint16)


def test_pseudo_labels_are_cached_per_teacher_and_options(tmp_path, monkeypatch):
    from fastpose.inference import Segmenter

    imgs = [_image(s)[0] for s in (1, 2)]
    calls = []
    orig = Segmenter.segment

    def counting(self, image, **kw):
        calls.append(kw.get("diameter"))
        return orig(self, image, **kw)

    monkeypatch.setattr(Segmenter, "segment", counting)
    first = pseudo_labels("nuclei", imgs, ["a", "b"], cache_dir=tmp_path, diameter=16.0, device="cpu",
                          progress=False)
    assert len(calls) == 2 and all(m.max() > 0 for m in first)
    assert (tmp_path / "a_masks.tif").is_file() and (tmp_path / "pseudo_labels.json").is_file()
    again = pseudo_labels("nuclei", imgs, ["a", "b"], cache_dir=tmp_path, diameter=16.0, device="cpu",
                          progress=False)
    assert len(calls) == 2 and all(np.array_equal(x, y) for x, y in zip(first, again))   # read back
    pseudo_labels("nuclei", imgs, ["a", "b"], cache_dir=tmp_path, diameter=20.0, device="cpu", progress=False)
    assert len(calls) == 4                                   # other options: computed again
    with pytest.raises(ValueError, match="unique"):
        pseudo_labels("nuclei", imgs, ["a", "a"], device="cpu", progress=False)


def test_training_mixes_half_and_half_batches_with_alpha(monkeypatch):
    pairs = [_image(s, 64) for s in range(3)]
    main = from_arrays([p[0] for p in pairs], [p[1] for p in pairs], nchan=1)
    ann = from_arrays([pairs[0][0]], [pairs[0][1]], nchan=1)
    seen = []
    orig = loop.seg_loss

    def recording(y, flows, masks):
        out = orig(y, flows, masks)
        seen.append((len(y), float(out.detach())))
        return out

    monkeypatch.setattr(loop, "seg_loss", recording)
    torch.manual_seed(0)
    net = UNet(nbase=[1, 8, 16], diam_mean=16.0)
    res = loop.train(net, main, epochs=1, batch_size=4, tile=32, size_model=False, progress=False, device="cpu",
                     annotated=ann, alpha=0.25)
    # 3 pseudo-labelled crops per epoch, 2 per batch: two steps, each two losses on 2 + 2 crops (1 + 2 the last)
    assert [n for n, _ in seen] == [2, 2, 1, 2]
    assert res.info["n_annotated"] == 1 and res.info["alpha"] == 0.25 and res.info["annotated_per_batch"] == 2
    # the epoch's loss: each step's mixed loss weighted by its crops (4, then 3)
    assert res.history[0]["loss"] == pytest.approx(
        (4 * (0.25 * seen[0][1] + 0.75 * seen[1][1]) + 3 * (0.25 * seen[2][1] + 0.75 * seen[3][1])) / 7, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 with annotated"):
        loop.train(net, main, epochs=1, batch_size=1, tile=32, progress=False, device="cpu", annotated=ann)
    with pytest.raises(ValueError, match="alpha"):
        loop.train(net, main, epochs=1, batch_size=2, tile=32, progress=False, device="cpu", annotated=ann,
                   alpha=1.5)


def _held_out_id() -> str:
    return next(f"im{i}" for i in range(1000) if heldout_by_hash(f"im{i}", 10))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("pseudo")
    data, few = d / "data", d / "few"
    data.mkdir()
    few.mkdir()
    for k, name in enumerate(["aaa", "bbb", "ccc", _held_out_id()]):
        img, lab = _image(10 + k)
        tifffile.imwrite(data / f"{name}_img.tif", img)
        tifffile.imwrite(data / f"{name}_masks.tif", lab)
    tifffile.imwrite(few / "bbb_masks.tif", tifffile.imread(data / "bbb_masks.tif"))
    return d, data, few


TINY = ["--nbase", "1", "8", "16", "--diam-mean", "16", "--epochs", "1", "--batch-size", "2", "--tile", "32",
        "--no-size-model", "--device", "cpu", "-q"]


def test_cli_bootstraps_a_unet_from_pseudo_labels_and_a_few_masks(folder):
    d, data, few = folder
    out = d / "boot.pth"
    rc = fastpose_main(["train", "--pseudo-labels", "nuclei", "--data", str(data), "--holdout-every", "10",
                        "--masks-dir", str(few), "--alpha", "0.5", "--out", str(out), *TINY])
    assert rc == 0
    net, meta = load_model(out)
    tr, rec = meta["extra"]["training"], meta["extra"]["recipe"]
    assert isinstance(net, UNet) and tr["n_annotated"] == 1 and tr["n_train"] == 2 and tr["alpha"] == 0.5
    assert rec["pseudo_labels"] == "nuclei" and rec["masks_dir"] == str(few)
    assert "pseudo-labelled by nuclei" in meta["extra"]["data"] and "1 with true masks" in meta["extra"]["data"]
    cache = d / "boot_train" / "pseudo_labels"
    labelled = sorted(p.name for p in cache.glob("*_masks.tif"))
    assert labelled == ["aaa_masks.tif", "bbb_masks.tif", "ccc_masks.tif"]       # the held-out image is not
    # pseudo-labels alone (0 % of the masks), the cache read back
    out0 = d / "boot0.pth"
    assert fastpose_main(["train", "--pseudo-labels", "nuclei", "--data", str(data), "--holdout-every", "10",
                          "--pseudo-cache", str(cache), "--out", str(out0), *TINY]) == 0
    assert "n_annotated" not in load_model(out0)[1]["extra"]["training"]


@pytest.mark.parametrize("extra, message", [
    (["--masks-dir", "X"], "--masks-dir goes with --pseudo-labels"),
    (["--alpha", "0.3", "--masks-fraction", "0.5"], "--masks-fraction, --alpha go with --pseudo-labels"),
    (["--pseudo-labels", "nuclei", "--synthetic-cyto", "4"], "does not combine with"),
    (["--pseudo-labels", "nuclei", "--teacher-setting", "n_noise=4"], "has no inference settings to override"),
])
def test_cli_usage_errors(folder, extra, message, caplog):
    d, data, _ = folder
    argv = ["train", "--out", str(d / "x.pth"), *TINY, *extra]
    if "--synthetic-cyto" not in extra:
        argv += ["--data", str(data)]
    assert fastpose_main(argv) == 2
    assert message in caplog.text


def test_annotations_skip_held_out_images_and_draw_a_fraction(folder, tmp_path):
    _, data, _ = folder
    held = _held_out_id()
    # the training folder itself: the held-out image's masks are never used
    assert [i for i, _ in annotated_ids(data, ["aaa", "bbb", "ccc"], [held])] == ["aaa", "bbb", "ccc"]
    tifffile.imwrite(tmp_path / f"{held}_masks.tif", np.ones((8, 8), np.uint16))
    with pytest.raises(ValueError, match="no \\*_masks.tif file of a training image"):
        annotated_ids(tmp_path, ["aaa", "bbb"], [held])
    for i in "abcdefghij":
        tifffile.imwrite(tmp_path / f"{i}_masks.tif", np.ones((8, 8), np.uint16))
    picked = annotated_ids(tmp_path, list("abcdefghij"), [], fraction=0.2, seed=3)
    assert len(picked) == 2 and picked == annotated_ids(tmp_path, list("abcdefghij"), [], fraction=0.2, seed=3)
    assert len(annotated_ids(tmp_path, list("abcdefghij"), [], fraction=0.01)) == 1   # at least one


def test_a_cellulus_teacher_with_its_settings_overridden(tmp_path):
    from fastpose.cellulus import CellulusNet
    from fastpose.cellulus.network import save_cellulus
    from fastpose.inference import Segmenter
    from fastpose.train.pseudo import teacher_key

    torch.manual_seed(0)
    save_cellulus(tmp_path / "t.pth", CellulusNet(1, f=4).eval(), {"object_size": 12.0})
    seg = Segmenter(str(tmp_path / "t.pth"), device="cpu")
    seg.update_settings(n_noise=1)                            # 2 noisy predictions instead of 32
    key = teacher_key(seg, {})
    imgs = [_image(s, 64)[0] for s in (1, 2)]
    masks = pseudo_labels(seg, imgs, ["a", "b"], cache_dir=tmp_path / "c", progress=False)
    assert [m.shape for m in masks] == [(64, 64), (64, 64)] and all(m.dtype.kind == "u" for m in masks)
    seg.update_settings(n_noise=2)
    assert teacher_key(seg, {}) != key                        # other settings: another cache key
