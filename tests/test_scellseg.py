"""Scellseg in fastpose: the sCSnet's switches and file round trip, the contrastive loss against a plain loop, and
few-shot fine-tuning (:func:`fastpose.finetune`) on tiny networks: deterministic for a seed, never changing the
network it was given, both strategies, any base (U-Net or sCSnet), the shipped contrast styles, clear errors.
(The authors' code and weights are the judges of the network in ``test_scellseg_compat.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastpose
from fastpose.models import UNet, load_model, save_model
from fastpose.scellseg import SCSNet, contrastive_loss, default_contrast, finetune
from fastpose.synthetic import random_labels

TINY = [2, 8, 16, 32]


def _shots(n=2, side=64, nchan=2):
    out = []
    for k in range(n):
        lab = random_labels((side, side), 6, diameter=14, seed=k)
        rng = np.random.default_rng(k)
        img = np.stack([(lab > 0) * 1.0 + rng.normal(0, 0.1, lab.shape)] * nchan).astype(np.float32)
        out.append((img, lab.astype(np.uint16)))
    return out


def _contrast():
    rng = np.random.default_rng(5)
    return {"a": [rng.random((2, 80, 80)).astype(np.float32) for _ in range(2)],
            "b": [rng.random((2, 70, 90)).astype(np.float32) * 3 for _ in range(2)]}


@pytest.mark.parametrize("switches", [(True, True, True), (False, False, False), (True, False, True)])
def test_scsnet_shapes_switches_and_file_round_trip(tmp_path, switches):
    torch.manual_seed(0)
    net = SCSNet(TINY, attention=switches[0], dense=switches[1], hierarchical_style=switches[2]).eval()
    x = torch.randn(2, 2, 32, 48)
    y, s = net(x)
    assert y.shape == (2, 3, 32, 48) and s.shape == (2, 32)
    assert torch.allclose(s.norm(dim=1), torch.ones(2), atol=1e-5)
    assert any("attn" in k for k in net.state_dict()) == switches[0]
    save_model(tmp_path / "m.pth", net)
    back, meta = load_model(tmp_path / "m.pth")
    assert isinstance(back, SCSNet) and meta["arch"] == net.arch()
    torch.testing.assert_close(back.eval()(x)[0], y)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 2, 30, 32))


def test_attention_needs_doubling_widths():
    with pytest.raises(ValueError, match="double"):
        SCSNet([2, 8, 24, 32])
    SCSNet([2, 8, 24, 32], attention=False)  # fine without gates


def test_contrastive_loss_equals_the_authors_double_loop():
    g = torch.Generator().manual_seed(0)
    s, q, c = (torch.randn(n, 16, generator=g) for n in (3, 4, 2))
    mse = torch.nn.MSELoss()
    pos = sum(mse(a, b) for a in s for b in q)
    neg = sum(mse(a, b) for a in s for b in c)
    torch.testing.assert_close(contrastive_loss(s, q, c), pos / (neg + 1e-5))


def _equal_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("strategy", ["contrastive", "classic"])
def test_finetune_is_deterministic_and_leaves_its_input_alone(strategy):
    torch.manual_seed(0)
    base = UNet(TINY, diam_mean=14.0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    kw = dict(strategy=strategy, steps=3, batch_size=2, tile=32, device="cpu", progress=False, seed=4)
    r1 = finetune(base, _shots(), contrast=_contrast(), **kw)
    r2 = finetune(base, _shots(), contrast=_contrast(), **kw)
    assert _equal_weights(r1.model, r2.model) and r1.history == r2.history
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())       # the input unchanged
    assert not _equal_weights(r1.model, base)
    assert len(r1.history) == 3 and r1.seconds_per_step > 0 and not r1.model.training
    assert r1.diameter == pytest.approx(float(r1.model.diam_labels))
    assert r1.model.fastpose_meta["extra"]["finetune"]["strategy"] == strategy
    assert r1.model.fastpose_meta["size_model"] is None
    if strategy == "contrastive":
        assert {"contrast", "alpha"} <= set(r1.history[0]) and r1.info["contrast_styles"] == ["a", "b"]
        assert r1.history[-1]["lr"] == pytest.approx(1e-3)                             # halved every 25 steps
    else:
        assert "contrast" not in r1.history[0]
    r3 = finetune(base, _shots(), contrast=_contrast(), **{**kw, "seed": 5})
    assert not _equal_weights(r1.model, r3.model)


def test_finetune_an_scsnet_base_with_the_shipped_styles_and_a_query_folder(tmp_path):
    import tifffile

    torch.manual_seed(0)
    base = SCSNet(TINY, diam_mean=14.0)
    for k, (img, _) in enumerate(_shots(3, side=96)):
        tifffile.imwrite(tmp_path / f"q{k}.tif", img[0])
    res = finetune(base, _shots(), query=tmp_path, steps=2, batch_size=2, tile=32, device="cpu", progress=False)
    assert isinstance(res.model, SCSNet) and res.info["n_query"] == 3
    assert res.info["contrast_styles"] == ["dsb_fluorescence", "dsb_histology", "synthetic_cells"]
    styles = default_contrast()
    assert [len(v) for v in styles.values()] == [5, 5, 5]
    assert fastpose.finetune is finetune


def test_finetune_errors():
    base = UNet(TINY, diam_mean=14.0)
    with pytest.raises(ValueError, match="strategy"):
        finetune(base, _shots(), strategy="meta")
    with pytest.raises(ValueError, match="tile must be a multiple of 4"):
        finetune(base, _shots(), tile=30, progress=False)
    with pytest.raises(ValueError, match="no shots"):
        finetune(base, [(np.zeros((2, 32, 32), np.float32), np.zeros((32, 32), np.uint16))], progress=False)
    with pytest.raises(ValueError, match="contrast: no style"):
        finetune(base, _shots(), contrast={"a": []}, tile=32, progress=False)
    bad = _shots(1)
    bad[0][0][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        finetune(base, bad, tile=32, progress=False)


def test_cli_finetune_writes_a_model_and_refuses_misuse(tmp_path, caplog):
    import logging

    import tifffile

    from fastpose.cli import main as fastpose_main

    shots = tmp_path / "shots"
    shots.mkdir()
    for k, (img, lab) in enumerate(_shots()):
        tifffile.imwrite(shots / f"s{k}_img.tif", img)
        tifffile.imwrite(shots / f"s{k}_masks.tif", lab)
    torch.manual_seed(0)
    save_model(tmp_path / "base.pth", UNet(TINY, diam_mean=14.0))
    out = tmp_path / "tuned.pth"
    common = ["finetune", "--shots", str(shots), "--model", str(tmp_path / "base.pth"), "--out", str(out), "--steps",
              "2", "--batch-size", "2", "--tile", "32", "--channel-axis", "0", "--device", "cpu", "-q"]
    with caplog.at_level(logging.INFO, logger="fastpose"):
        assert fastpose_main(common + ["--strategy", "classic"]) == 0
    net, meta = load_model(out)
    assert isinstance(net, UNet) and meta["extra"]["finetune"]["strategy"] == "classic"
    assert f"segment with --diameter {meta['diam_labels']:.1f}" in caplog.text
    caplog.clear()
    assert fastpose_main(common + ["--strategy", "classic", "--query", str(shots)]) == 2
    assert "--query and --contrast are for --strategy contrastive" in caplog.text


def test_train_arch_scellseg_pretrains_an_scsnet(tmp_path):
    import tifffile

    from fastpose.cli import main as fastpose_main

    for k, (img, lab) in enumerate(_shots(3)):
        tifffile.imwrite(tmp_path / f"s{k}_img.tif", img)
        tifffile.imwrite(tmp_path / f"s{k}_masks.tif", lab)
    out = tmp_path / "scs.pth"
    assert fastpose_main(["train", "--arch", "scellseg", "--data", str(tmp_path), "--channel-axis", "0", "--nbase",
                          *map(str, TINY), "--epochs", "1", "--batch-size", "2", "--tile", "32", "--no-size-model",
                          "--device", "cpu", "-q", "--out", str(out)]) == 0
    net, meta = load_model(out)
    assert isinstance(net, SCSNet) and meta["arch"]["type"] == "scellseg" and net.attention
    assert fastpose_main(["train", "--arch", "scellseg", "--model", "nuclei", "--data", str(tmp_path), "--out",
                          str(tmp_path / "x.pth")]) == 2


def test_finetune_colour_shots_as_arrays_and_files_agree(tmp_path):
    """Colour images (Y, X, 3) are averaged to grey for a one-channel network, as arrays and as files alike."""
    import tifffile

    from fastpose.scellseg import network_input

    lab = random_labels((64, 64), 6, diameter=14, seed=1).astype(np.uint16)
    rgb = np.stack([(lab > 0) * 150, (lab > 0) * 90, (lab > 0) * 30], -1).astype(np.uint8) + 10
    assert network_input(rgb, 1).shape == (1, 64, 64)
    assert np.allclose(network_input(rgb, 1)[0], rgb.mean(-1))
    tifffile.imwrite(tmp_path / "a_img.tif", rgb)
    tifffile.imwrite(tmp_path / "a_masks.tif", lab)
    torch.manual_seed(0)
    base = UNet([1, 8, 16, 32], diam_mean=14.0)
    kw = dict(strategy="classic", steps=2, batch_size=2, tile=32, device="cpu", progress=False)
    r1 = finetune(base, [(rgb, lab)], **kw)
    r2 = finetune(base, tmp_path, **kw)
    assert _equal_weights(r1.model, r2.model)
    with pytest.raises(ValueError, match="shot 0"):
        finetune(base, [(np.zeros((5, 64, 64, 2)), lab)], **kw)
