"""A model family plugs in with a spec, a network and a post-processing function, and no edit of the tiling,
blending, TTA, streaming or 3D code: an identity image-out family must come back through all of them unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastpose.inference import Segmenter
from fastpose.methods import Family, register_family
from fastpose.models import ModelSpec


def _identity_postprocess(maps, *, rescale, options, return_maps):
    return {"masks": None, "outputs": {"image": maps.float().cpu().numpy()}}


register_family(Family("test-identity", _identity_postprocess))

SPEC = ModelSpec(family="test-identity", nchan=2, tile=64, pad_multiple=1, pad_to_tile=True, outputs=("a", "b"),
                 flow_channels=(), rescale_by_diameter=False, diam_mean=30.0)


class Identity(torch.nn.Module):
    """Image-out 'network': returns its input (no style vector)."""

    fastpose_meta = {"spec": SPEC.to_dict()}

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))  # a parameter, so .to(device) has something to move

    def forward(self, x):
        return x * self.w


def _images(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((2, *shape), dtype=np.float32) for _ in range(n)]


@pytest.mark.parametrize("augment", [False, True])
def test_identity_family_through_segment_many(augment):
    seg = Segmenter(Identity(), device="cpu", batch_size=4)
    assert seg.family.name == "test-identity" and seg.spec == SPEC
    imgs = _images(3, (100, 150)) + _images(2, (40, 50), seed=1)  # a pooled group, then images under one tile
    out = list(seg.segment_many(imgs, channel_axis=0, normalize=False, augment=augment))
    assert len(out) == len(imgs)
    for img, r in zip(imgs, out):
        assert r.masks is None and r.styles is None
        np.testing.assert_allclose(r.outputs["image"], img, atol=1e-5)


def test_identity_family_3d_and_errors_in_stream():
    seg = Segmenter(Identity(), device="cpu")
    vol = np.random.default_rng(2).random((2, 12, 70, 80), dtype=np.float32)
    r = seg.segment(vol, channel_axis=0, z_axis=1, do_3D=True, normalize=False)
    np.testing.assert_allclose(r.outputs["image"], vol, atol=1e-5)  # mean of three identical views
    bad = np.zeros((3, 4, 5, 6, 7), np.float32)                      # 5D: not an image
    res = list(seg.segment_many([_images(1, (30, 30))[0], bad, lambda: 1 / 0, _images(1, (30, 30))[0]],
                                channel_axis=0, normalize=False, return_errors=True))
    assert isinstance(res[1], ValueError) and isinstance(res[2], ZeroDivisionError)
    assert res[0].outputs["image"].shape == (2, 30, 30) and res[3].outputs["image"].shape == (2, 30, 30)
    with pytest.raises(ValueError):
        list(seg.segment_many([bad], channel_axis=0, normalize=False))


def test_ensemble_members_must_share_a_spec():
    other = Identity()
    other.fastpose_meta = {"spec": SPEC.with_(tile=32).to_dict()}
    with pytest.raises(ValueError, match="share one model spec.*tile"):
        Segmenter([Identity(), other], device="cpu")


def test_spec_round_trip_and_validation(tmp_path):
    from fastpose.models import UNet, load_model, save_model

    assert ModelSpec.from_dict(SPEC.to_dict()) == SPEC
    with pytest.raises(ValueError, match="unknown fields"):
        ModelSpec.from_dict({**SPEC.to_dict(), "tiel": 3})
    with pytest.raises(ValueError, match="flow_channels"):
        ModelSpec(flow_channels=(1, 2))
    with pytest.raises(ValueError, match="lower < upper"):
        ModelSpec(normalize={"lower": 99.0, "upper": 1.0})
    # a model file stores its spec, with its own normalisation, and the segmenter honours it
    p = save_model(tmp_path / "m.pth", UNet(nbase=(1, 8, 16, 32, 64)),
                   {"diam_mean": 17.0, "normalize": {"lower": 5.0, "upper": 95.0, "invert": True}})
    _, meta = load_model(p)
    spec = ModelSpec.from_dict(meta["spec"])
    assert (spec.family, spec.nchan, spec.tile, spec.diam_mean) == ("cellpose", 1, 224, 17.0)
    assert spec.normalize == {"lower": 5.0, "upper": 95.0, "invert": True}
    seg = Segmenter(str(p), device="cpu")
    img = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)
    x = seg.prepare(img)
    lo, hi = np.percentile(img, [5.0, 95.0])
    np.testing.assert_allclose(x[0], 1 - (img - lo) / (hi - lo), rtol=1e-5, atol=1e-5)


def test_no_family_or_architecture_branches_in_the_generic_path():
    import inspect

    import fastpose.inference.segmenter as a
    import fastpose.inference.streaming as b
    import fastpose.inference.tiled as c
    import fastpose.inference.volume as d

    for mod in (a, b, c, d):
        src = inspect.getsource(mod)
        for word in ('"vit"', '"unet"', "'vit'", "'unet'", "kind ==", '"cellpose"'):
            assert word not in src, f"{mod.__name__} mentions {word}"
