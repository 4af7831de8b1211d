"""Tests of fastpose.train (data + flow cache, axes, held-out split, augmentation, batches on workers, loop,
time budget, resume, size model, model cards, CLI) and fastpose.synthetic_cells.  Small images and a tiny
U-Net keep the whole file well under a minute on CPU."""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fastpose.core as fc
from fastpose.models import UNet, load_model
from fastpose.synthetic import disc, random_labels
from fastpose.synthetic_cells import make_cyto_dataset, make_cyto_image
from fastpose.train import data as tdata
from fastpose.train import budget_lr, fit_size_model, from_arrays, load_folder, lr_schedule, predict_diameters, train
from fastpose.train.augment import degrade, make_affine, random_affine, sam_augment, warp_sample
from fastpose.train.batches import BatchMaker, batch_tasks, iter_batches
from fastpose.train.data import heldout_by_hash, image_kind, prepare_image, renumber
from fastpose.train.size_model import collect_styles

try:
    fc.masks_to_flows(np.ones((4, 4), np.int32))
except NotImplementedError:  # pragma: no cover - native op not built yet
    pytest.skip("fastpose.core.masks_to_flows is not implemented in this build", allow_module_level=True)

NBASE = [2, 8, 16, 32, 64]
TILE = 64


@pytest.fixture(scope="module")
def cyto():
    return make_cyto_dataset(3, (96, 96), seed=0, diameter=(18.0, 26.0))


def res_data(pairs):
    return from_arrays([p[0] for p in pairs], [p[1] for p in pairs], nchan=2)


def _tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(nbase=NBASE, diam_mean=24.0)


# --------------------------------------------------------------------------------------------------
# synthetic generator
# --------------------------------------------------------------------------------------------------

def test_synthetic_cells_shapes_and_consistency():
    data = make_cyto_dataset(3, (128, 160), seed=1)
    assert len(data) == 3
    for img, masks in data:
        assert img.shape == (2, 128, 160) and img.dtype == np.float32 and np.isfinite(img).all()
        assert masks.shape == (128, 160) and masks.dtype == np.int32
        n = int(masks.max())
        assert n >= 3 and set(np.unique(masks)) == set(range(n + 1))  # labels 1..N, no gaps
        inside = masks > 0
        assert img[0][inside].mean() > 3 * img[0][~inside].mean()  # cytoplasm bright inside cells
        nuc_per_cell = np.bincount(masks[img[1] > 0.3], minlength=n + 1)[1:]
        assert (nuc_per_cell > 0).mean() > 0.8  # almost every cell has a nucleus ...
        assert img[1][~inside].mean() < 0.2  # ... and nuclei stay inside cells
    a, b = make_cyto_dataset(1, (64, 64), seed=5)[0], make_cyto_dataset(1, (64, 64), seed=5)[0]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_synthetic_cells_fast():
    make_cyto_image((256, 256), seed=0)
    t = time.perf_counter()
    for s in range(3):
        make_cyto_image((256, 256), seed=s)
    assert (time.perf_counter() - t) / 3 < 0.5  # ~0.1 s on an idle core; slack for loaded CI machines


# --------------------------------------------------------------------------------------------------
# data + flow-target cache
# --------------------------------------------------------------------------------------------------

def test_folder_loading_and_flow_cache(tmp_path, monkeypatch, cyto):
    tifffile = pytest.importorskip("tifffile")
    for i, (img, m) in enumerate(cyto[:2]):
        tifffile.imwrite(tmp_path / f"c{i}_img.tif", img)
        tifffile.imwrite(tmp_path / f"c{i}_masks.tif", (m * 3).astype(np.uint16))  # non-consecutive labels
    tifffile.imwrite(tmp_path / "empty_img.tif", cyto[2][0])
    tifffile.imwrite(tmp_path / "empty_masks.tif", np.zeros(cyto[2][1].shape, np.uint16))

    with pytest.raises(ValueError, match="c0_?.*cannot tell the axes apart.*channel_axis"):
        load_folder(tmp_path, nchan=2)  # a 3D file without channel_axis: never guessed
    d1 = load_folder(tmp_path, nchan=2, channel_axis=0)
    assert len(d1) == 2 and d1.n_computed == 2 and d1.n_cached == 0  # empty image skipped (min_masks=1)
    assert d1.masks[0].max() == cyto[0][1].max()  # renumbered 1..N
    assert np.allclose(d1.flows[0], fc.masks_to_flows(cyto[0][1]))
    assert d1.images[0].shape == (2, 96, 96)
    assert (tmp_path / "c0_masks_flows.npz").is_file()

    calls = []
    orig = tdata.compute_flow_targets
    monkeypatch.setattr(tdata, "compute_flow_targets", lambda m: calls.append(1) or orig(m))
    d2 = load_folder(tmp_path, nchan=2, channel_axis=0)
    assert calls == [] and d2.n_cached == 2
    assert all(np.array_equal(a, b) for a, b in zip(d1.flows, d2.flows))

    m = cyto[1][1].copy()
    m[m == 1] = 0  # edit one mask file: only its flows are recomputed
    tifffile.imwrite(tmp_path / "c1_masks.tif", m.astype(np.uint16))
    d3 = load_folder(tmp_path, nchan=2, channel_axis=0)
    assert len(calls) == 1 and d3.n_cached == 1 and d3.n_computed == 1

    cache = tmp_path / "cache"
    e1 = from_arrays([c[0] for c in cyto], [c[1] for c in cyto], nchan=2, cache_dir=cache)
    e2 = from_arrays([c[0] for c in cyto], [c[1] for c in cyto], nchan=2, cache_dir=cache)
    assert (e1.n_computed, e2.n_cached) == (3, 3)


def test_prepare_image_never_guesses_axes():
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3)).astype(np.uint8)
    with pytest.raises(ValueError, match="cannot tell the axes apart.*channel_axis"):
        prepare_image(rgb, 2)
    x = prepare_image(rgb, 2, channel_axis=-1)
    assert x.shape == (2, 20, 30) and np.array_equal(x[0], rgb[..., 0]) and np.array_equal(x[1], rgb[..., 1])
    g = prepare_image(rgb, 2, channel_axis=-1, grey=True)
    assert np.array_equal(g[0], rgb.astype(np.float32).mean(-1)) and not g[1].any()
    grey = rgb[..., 0]  # a 2D file is (Y, X) whatever channel_axis says (folders mix grey and colour files)
    assert np.array_equal(prepare_image(grey, 2, channel_axis=-1), np.stack([grey, 0 * grey]).astype(np.float32))
    assert np.array_equal(prepare_image(grey, 2, channel_axis=-1, grey=True)[0], grey)
    assert (image_kind(grey, -1), image_kind(rgb, -1), image_kind(np.zeros((2, 8, 8)), 0)) == ("grey", "rgb", "2ch")
    assert renumber(np.array([[0, 5.0], [5, 9]])).tolist() == [[0, 1], [1, 2]]  # float masks holding integers
    with pytest.raises(ValueError, match="integer labels"):
        renumber(np.array([[0.5]]))


def _write_folder(root: Path, ids, rgb_ids=()):
    tifffile = pytest.importorskip("tifffile")
    for j, i in enumerate(ids):
        lab = np.zeros((40, 40), np.uint16)
        lab[disc((40, 40), (12, 12), 6 + j % 3)] = 1
        lab[disc((40, 40), (28, 26), 7)] = 2
        img = (lab > 0).astype(np.uint8) * 200 + 10
        tifffile.imwrite(root / f"{i}_img.tif", np.stack([img] * 3, -1) if i in rgb_ids else img)
        tifffile.imwrite(root / f"{i}_masks.tif", lab)


def test_heldout_split_by_hash_and_sources(tmp_path):
    from fastpose.io import sample_paths
    from fastpose.train.recipes import SAMPLE_ID, load_sources

    assert SAMPLE_ID == sample_paths()[0].name.split("_")[1]
    ids = [f"{k:04x}" for k in range(24)] + [SAMPLE_ID]
    _write_folder(tmp_path, ids, rgb_ids=ids[::3])
    opts = argparse.Namespace(dir=str(tmp_path), val_dir=None, holdout_every=4, exclude=[SAMPLE_ID], synthetic_cyto=0,
                              channel_axis=-1, grey=True, img_filter="_img", mask_filter="_masks", min_masks=1,
                              cache_dir=str(tmp_path / "cache"), limit=None)
    src = load_sources(opts, 2)
    held = {i for i in ids if heldout_by_hash(i, 4)} - {SAMPLE_ID}
    assert 0 < len(held) < 24 and set(src.heldout.names) == held
    assert set(src.train.names) == set(ids) - held - {SAMPLE_ID}  # the excluded sample is in neither
    assert (src.n_train, src.n_heldout) == (len(src.train), len(src.heldout))
    assert "SHA-1" in src.description and SAMPLE_ID in src.description
    assert {k for n, k in zip(src.train.names, src.train.kinds)} == {"grey", "rgb"}
    assert all(k == ("rgb" if n in ids[::3] else "grey") for n, k in zip(src.train.names, src.train.kinds))
    assert all(not x[1].any() for x in src.train.images)  # grey: one channel, the second left zero
    only = load_sources(opts, 2, which=("heldout",))  # the evaluator loads the held-out images only
    assert only.train is None and only.n_train == src.n_train and only.heldout.names == src.heldout.names
    opts.grey, opts.channel_axis = False, None
    with pytest.raises(ValueError, match="cannot tell the axes apart"):
        load_sources(opts, 2)


# --------------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------------

def test_flip_negates_dx():
    lab = random_labels((48, 64), 5, 16, seed=2)
    f = fc.masks_to_flows(lab)
    img = np.stack([lab, lab * 2]).astype(np.float32)
    x, wf, wm = warp_sample(img, f, lab, make_affine(lab.shape, lab.shape, flip_x=True))
    assert np.array_equal(wm, lab[:, ::-1])
    assert np.allclose(x, img[:, :, ::-1], atol=1e-5)
    assert np.allclose(wf[0], f[0][:, ::-1], atol=1e-5)   # dY unchanged
    assert np.allclose(wf[1], -f[1][:, ::-1], atol=1e-5)  # dX negated


@pytest.mark.parametrize("theta,flip,scale", [(0.65, False, 1.0), (2.0, True, 1.3), (4.4, False, 0.8)])
def test_warped_flows_match_recomputed(theta, flip, scale):
    from scipy import ndimage as ndi

    lab = random_labels((128, 128), 12, 30, seed=1)
    f = fc.masks_to_flows(lab)
    aff = make_affine(lab.shape, (128, 128), scale, theta, flip)
    _, wf, wm = warp_sample(lab[None].astype(np.float32), f, lab, aff)
    rf = fc.masks_to_flows(wm)
    # compare away from mask borders, where interpolation mixes neighbouring cells' flows
    inner = ndi.binary_erosion(wm > 0, iterations=2) & (ndi.minimum_filter(wm, 5) == ndi.maximum_filter(wm, 5))
    cos = (wf * rf).sum(0)[inner] / np.maximum(np.linalg.norm(wf, axis=0)[inner] * np.linalg.norm(rf, axis=0)[inner],
                                                1e-6)
    assert inner.sum() > 1000
    assert np.median(cos) > 0.98 and (cos > 0.7).mean() > 0.85


def test_rotated_disc_flows_point_inward():
    lab = disc((80, 80), (40, 40), 25).astype(np.int32)
    f = fc.masks_to_flows(lab)
    rng = np.random.default_rng(0)
    for _ in range(3):
        aff = random_affine(rng, lab.shape, tile=64, base_scale=1.0, scale_range=0.5)
        _, wf, wm = warp_sample(lab[None].astype(np.float32), f, lab, aff)
        yy, xx = np.nonzero(wm)
        cy, cx = yy.mean(), xx.mean()
        far = np.hypot(yy - cy, xx - cx) > 4
        inward = wf[0, yy, xx] * (cy - yy) + wf[1, yy, xx] * (cx - xx)
        assert (inward[far] > 0).mean() > 0.97


def test_sam_augment_and_degradations():
    rng = np.random.default_rng(0)
    img, _ = make_cyto_image((64, 64), seed=3)
    img = np.stack([img[0], img[1], np.zeros_like(img[0])])
    for kind in ("poisson", "blur", "downsample", "aniso"):
        d = degrade(img, rng, kind)
        assert d.shape == img.shape and np.isfinite(d).all() and not np.array_equal(d, img)
        assert np.all(d[2] == 0)  # an empty channel stays empty
    outs = [sam_augment(img, rng) for _ in range(10)]
    assert all(o.shape == img.shape and o.dtype == np.float32 and np.isfinite(o).all() for o in outs)


# --------------------------------------------------------------------------------------------------
# loop
# --------------------------------------------------------------------------------------------------

def test_lr_schedule():
    s = lr_schedule(500, 0.2, 10)
    assert np.isclose(s[0], 0.02) and np.isclose(s[9], 0.2) and np.isclose(s[399], 0.2)
    assert np.isclose(s[400], 0.1) and np.isclose(s[410], 0.05) and np.isclose(s[499], 0.2 / 2 ** 10)
    s = lr_schedule(120, 1.0, 0)
    assert s[69] == 1.0 and s[70] == 0.5 and s[75] == 0.25
    assert np.all(lr_schedule(30, 0.1, 0) == 0.1)


def test_budget_lr():
    lr = 0.2
    assert budget_lr(0.0, lr) == pytest.approx(0.02 * lr) and budget_lr(0.025, lr) == pytest.approx(lr / 2)
    assert budget_lr(0.05, lr) == budget_lr(0.69, lr) == lr
    assert budget_lr(0.70, lr) == budget_lr(0.75, lr) == lr / 2 and budget_lr(0.77, lr) == lr / 4
    assert budget_lr(0.999, lr) == lr / 32
    v = [budget_lr(f, lr) for f in np.linspace(0.05, 1, 200)]
    assert all(a >= b for a, b in zip(v, v[1:]))
    assert budget_lr(0.5, 1.0, warmup=0.1, anneal_start=0.4, anneal_every=0.05) == 0.25


def test_batches_same_inline_and_on_workers(cyto):
    data = res_data(cyto)
    maker = BatchMaker(data, 24.0, TILE, 0.5, True, False, seed=3)
    tasks = lambda: batch_tasks(3, len(data), 5, 2, end_epoch=2)  # noqa: E731
    ref = list(iter_batches(maker, tasks()))
    assert [(e, k, len(b[0])) for e, k, b in ref] == [(0, 0, 2), (0, 1, 2), (0, 2, 1), (1, 3, 2), (1, 4, 2), (1, 5, 1)]
    for wt in ("process", "thread"):
        got = list(iter_batches(maker, tasks(), workers=2, worker_type=wt, prefetch=3))
        assert [(e, k) for e, k, _ in got] == [(e, k) for e, k, _ in ref]
        assert all(np.array_equal(a, b) for (_, _, x), (_, _, y) in zip(ref, got) for a, b in zip(x, y))
    it = iter_batches(maker, batch_tasks(3, len(data), 5, 2), workers=1)  # endless (time budget): closes cleanly
    next(it)
    it.close()


def test_time_budget_with_workers_channels_last_and_compile(tmp_path, cyto):
    t = time.perf_counter()
    res = train(_tiny_unet(), cyto[:2], time_budget=2.0, lr=0.05, batch_size=2, images_per_epoch=2, tile=TILE,
                size_model=False, compile_backend="eager", channels_last=True, workers=1, save_dir=tmp_path,
                save_every=1000, device="cpu", progress=False)
    info = res.info
    assert 2.0 <= info["seconds"] <= time.perf_counter() - t
    assert info["steps"] == len(res.history) >= 1 and info["samples"] == 2 * info["steps"]  # 1 step per epoch
    assert (info["compile"], info["channels_last"], info["workers"], info["time_budget"]) == ("eager", True, 1, 2.0)
    lrs = [h["lr"] for h in res.history]
    # where in the schedule a step lands depends on the wall clock (budget_lr itself is tested above)
    assert 0 < min(lrs) and max(lrs) <= 0.05 and np.isfinite(info["final_loss"])
    assert all(p.is_contiguous() for p in res.model.parameters())  # back to the plain layout
    net, meta = load_model(res.last_path)
    assert meta["extra"]["training"]["steps"] == info["steps"]
    with pytest.raises(ValueError, match="resume"):
        train(_tiny_unet(), cyto[:2], time_budget=1.0, resume=tmp_path, device="cpu", progress=False)


def test_training_lowers_loss_validates_and_saves(tmp_path, cyto):
    model = _tiny_unet()
    res = train(model, cyto[:2], cyto[2:], epochs=12, lr=0.05, batch_size=2, images_per_epoch=4, tile=TILE,
                warmup_epochs=0, val_every=100, save_dir=tmp_path, device="cpu", progress=False)
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    assert "ap50" in res.history[-1] and res.best_ap is not None and 0.0 <= res.best_ap <= 1.0
    assert res.best_path.is_file() and res.last_path.is_file() and res.state_path.is_file()
    net, meta = load_model(res.last_path)
    assert meta["arch"]["nbase"] == NBASE and meta["diam_mean"] == 24.0
    assert np.isclose(meta["diam_labels"], res.diam_labels) and res.diam_labels > 10
    sm = meta["size_model"]
    assert set(sm) == {"A", "smean", "ymean", "diam_mean"} and len(sm["A"]) == NBASE[-1]
    assert meta["extra"]["training"]["epochs_done"] == 12
    for a, b in zip(net.state_dict().values(), res.model.state_dict().values()):
        assert torch.equal(a, b.cpu())
    # the fitted size model tracks the scale of fresh random crops
    styles, diams = collect_styles(res.model, res_data(cyto[:2]), n_epochs=4, tile=TILE, seed=1)
    pred = predict_diameters(sm, styles)
    assert np.corrcoef(np.log(pred), np.log(diams))[0, 1] > 0.5


def test_resume_gives_identical_weights(tmp_path, cyto):
    kw = dict(batch_size=2, images_per_epoch=2, tile=TILE, warmup_epochs=4, lr=0.05, size_model=False,
              device="cpu", progress=False, seed=3)
    straight = train(_tiny_unet(1), cyto[:2], epochs=4, save_dir=tmp_path / "a", **kw)
    train(_tiny_unet(1), cyto[:2], epochs=2, save_dir=tmp_path / "b", **kw)
    resumed = train(_tiny_unet(7), cyto[:2], epochs=4, save_dir=tmp_path / "b", resume=tmp_path / "b", **kw)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_vit_finetune_path(tmp_path, cyto):
    from fastpose.models import ViT

    torch.manual_seed(0)
    vit = ViT(img_size=256, patch_size=16, embed_dim=32, depth=1, num_heads=2, out_chans=32)
    res = train(vit, cyto[:2], cyto[2:], epochs=2, batch_size=2, images_per_epoch=2, warmup_epochs=1,
                sam_augment=True, val_every=2, save_dir=tmp_path, device="cpu", progress=False)
    assert res.size_model is None and res.best_ap is not None and np.isfinite(res.history[-1]["loss"])
    _, meta = load_model(res.last_path)
    info = meta["extra"]["training"]
    assert (meta["arch"]["type"], info["optimizer"], info["rescale"], info["tile"]) == ("vit", "adamw", False, 256)


# --------------------------------------------------------------------------------------------------
# size model
# --------------------------------------------------------------------------------------------------

def test_size_model_recovers_diameters():
    rng = np.random.default_rng(0)
    n, dim = 600, 64
    diams = np.exp(rng.uniform(np.log(10), np.log(60), n))
    # unit style vectors turning in a plane with log(diameter), plus noise
    u, v = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T
    a = 0.5 * (np.log(diams) - np.log(25))[:, None]
    styles = np.cos(a) * u + np.sin(a) * v + 0.01 * rng.normal(size=(n, dim))
    styles /= np.linalg.norm(styles, axis=1, keepdims=True)
    sm = fit_size_model(styles[:500], diams[:500], diam_mean=30.0)
    assert set(sm) == {"A", "smean", "ymean", "diam_mean"} and isinstance(sm["A"], list)
    pred = predict_diameters(sm, styles[500:])
    assert np.all(np.abs(pred / diams[500:] - 1) < 0.2)
    # the formula Segmenter.estimate_diameter uses
    s = styles[500]
    d0 = np.exp(np.asarray(sm["A"]) @ (s - np.asarray(sm["smean"])) + np.log(30.0) + sm["ymean"])
    assert np.isclose(d0, pred[0])


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

def test_cli_train_and_finetune(tmp_path, cyto):
    tifffile = pytest.importorskip("tifffile")
    from fastpose.train.cli import add_parser, run

    parser = argparse.ArgumentParser(prog="fastpose")
    sub = parser.add_subparsers(dest="cmd")
    p = add_parser(sub)
    assert all(a.help for a in p._actions)
    for i, (img, m) in enumerate(cyto):
        tifffile.imwrite(tmp_path / f"s{i}_img.tif", img)
        tifffile.imwrite(tmp_path / f"s{i}_masks.tif", m)
    out = tmp_path / "m.pth"
    common = ["--dir", str(tmp_path), "--channel-axis", "0", "--epochs", "2", "--batch-size", "2", "--tile", str(TILE), "--device", "cpu",
              "-q", "--no-size-model"]
    args = parser.parse_args(["train", "--out", str(out), "--nbase", *map(str, NBASE), *common])
    assert args.func(args) == 0 and args.func is run
    _, meta = load_model(out)
    assert meta["extra"]["training"]["optimizer"] == "sgd" and (tmp_path / "m_train" / "train_state.pt").is_file()
    out2 = tmp_path / "ft.pth"
    args = parser.parse_args(["train", "--model", str(out), "--out", str(out2), *common])
    assert run(args) == 0
    _, meta2 = load_model(out2)
    assert meta2["extra"]["training"]["optimizer"] == "adamw"
    assert meta2["extra"]["training"]["fine_tuned_from"] == str(out)


def _parser():
    from fastpose.train.cli import add_parser

    parser = argparse.ArgumentParser(prog="fastpose")
    add_parser(parser.add_subparsers(dest="cmd"))
    return parser


def test_recipe_run_writes_model_and_card_and_evaluate_card_rewrites_it(tmp_path):
    from fastpose.train.card import read_card
    from fastpose.train.recipes import RECIPES

    parser = _parser()
    out = tmp_path / "cyto.pth"
    argv = ["train", "--recipe", "cyto", "--synthetic-cyto", "4", "--time-budget", "1.5", "--nbase", *map(str, NBASE),
            "--tile", str(TILE), "--card-modes", "label_diameter", "--device", "cpu", "-q", "--out", str(out)]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    card = read_card(out.with_suffix(".json"))
    net, meta = load_model(out)
    assert meta["extra"]["card"] == card  # the same card inside the model file
    sd = torch.load(out, weights_only=True)["state_dict"]
    assert sd["downsample.down.res_down_0.conv.conv_0.0.weight"].dtype == torch.float16  # --half (recipe)
    assert card["model"] == "cyto" and card["nbase"] == NBASE and card["diam_mean"] == 30.0
    assert card["diam_labels"] == pytest.approx(meta["diam_labels"]) and card["data"].startswith("synthetic cells")
    # the reproduce command is the command that ran, recipe first (options left at the recipe's values omitted)
    assert card["reproduce"] == (f"fastpose train --recipe cyto --synthetic-cyto 4 --out {out} --nbase "
                                 f"{' '.join(map(str, NBASE))} --time-budget 1.5 --tile {TILE} --card-modes "
                                 f"label_diameter --device cpu")
    assert RECIPES["cyto"].command() == "fastpose train --recipe cyto --time-budget 228 --out cyto.pth"
    rec = card["recipe"]
    assert (rec["name"], rec["batch_size"], rec["lr"], rec["time_budget"], rec["synthetic_cyto"]) == \
        ("cyto", 8, 0.2, 1.5, 4)
    tr = card["training"]
    assert tr["trainer"].startswith("fastpose train") and tr["time_budget"] == 1.5 and tr["steps"] >= 1
    assert tr["workers"] >= 1 and re.match(r"SGD lr 0.2 momentum 0.9 wd 1e-05, 1.5 s wall-clock", tr["recipe"])
    v = card["validation"]
    assert set(v) == {"label_diameter", "evaluated"} and v["evaluated"]["device"] == "cpu"
    assert {"images", "ap50_mean", "ap75_mean", "ap90_mean", "error_rate50_pooled", "tp50"} <= set(v["label_diameter"])
    assert v["label_diameter"]["images"] == 1 and "by_kind" not in v["label_diameter"]  # one kind of image

    # evaluate-card: validation recomputed, training record and reproduce command copied from the model file
    card2_path = tmp_path / "card2.json"
    args = parser.parse_args(["evaluate-card", str(out), "--recipe", "cyto", "--synthetic-cyto", "4", "--modes",
                              "label_diameter", "--device", "cpu", "--out", str(card2_path)])
    assert args.func(args) == 0
    card2 = read_card(card2_path)
    assert card2["training"] == tr and card2["reproduce"] == card["reproduce"] and card2["recipe"] == rec
    assert card2["written_by"].startswith("fastpose evaluate-card")
    assert card2["validation"]["evaluated"]["command"].startswith(f"fastpose evaluate-card {out} --recipe cyto")
    assert set(card2["validation"]["label_diameter"]) == set(v["label_diameter"])
    assert json.loads(card2_path.read_text()) == card2
