"""make_tiles / blend_tiles: NumPy port of Cellpose 3, round trips, flip signs, taper, bad inputs, parity."""

from __future__ import annotations

import numpy as np
import pytest

import fastpose.core as fc
from fastpose.core._reference import blend_tiles as cp_blend
from fastpose.core._reference import make_tiles as cp_make_tiles
from fastpose.core._reference import taper_mask as cp_taper_mask
from fastpose.core.tiles import plan_tiles, taper_mask


SHAPES = [(224, 224), (100, 333), (500, 700), (1, 1)]


def _img(shape, c=3, seed=0):
    return np.random.default_rng(seed).standard_normal((c, *shape)).astype(np.float32)


# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("shape", SHAPES + [(225, 1000), (60, 224)])
def test_make_tiles_vs_cellpose(device, shape, augment):
    img = _img(shape)
    tiles, grid = fc.make_tiles(img, bsize=224, augment=augment)
    IMG, ysub, xsub, _, _ = cp_make_tiles(img, 224, augment)
    ny, nx = IMG.shape[:2]
    assert (grid.ny, grid.nx, grid.by, grid.bx) == (ny, nx, IMG.shape[-2], IMG.shape[-1])
    assert (grid.Ly, grid.Lx, grid.augment) == (*shape, augment)
    assert list(grid.ystart) == [int(s[0]) for s in ysub[::nx]]
    assert list(grid.xstart) == [int(s[0]) for s in xsub[:nx]]
    assert tiles.shape == (ny * nx, 3, grid.by, grid.bx) and tiles.dtype == np.float32
    np.testing.assert_array_equal(tiles, IMG.reshape(ny * nx, *IMG.shape[2:]))


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip(device, shape, augment):
    img = _img(shape, seed=1)
    tiles, grid = fc.make_tiles(img, augment=augment)
    out = fc.blend_tiles(tiles, grid, flow_channels=None)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, img, atol=1e-5, rtol=0)


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("shape", [(224, 224), (100, 333), (500, 700), (30, 40)])
def test_blend_vs_cellpose(device, shape, augment):
    """Arbitrary tile contents (not cut from one image): the weighted average itself is checked."""
    img = _img(shape, c=3, seed=2)
    _, grid = fc.make_tiles(img, augment=augment)
    IMG, ysub, xsub, Lyp, Lxp = cp_make_tiles(img, 224, augment)
    rnd = np.random.default_rng(3).standard_normal((grid.count, 3, grid.by, grid.bx)).astype(np.float32)
    out = fc.blend_tiles(rnd, grid, flow_channels=(0, 1))
    ref = cp_blend(rnd, grid.ny, grid.nx, augment, ysub, xsub, Lyp, Lxp, *shape)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(300, 400), (100, 333)])
def test_flow_signs_with_equivariant_network(device, shape):
    """A flip-equivariant 'network': the gradient of the tile's scalar channel.

    On a tile flipped in Y, d/dy of the flipped scalar is minus the flipped true gradient, so only a
    correct un-flip + negation of channel 0 (and 1 for X) gives back the true gradient everywhere.
    """
    Y, X = shape
    yy, xx = np.mgrid[0:Y, 0:X].astype(np.float64)
    s = 1e-4 * ((yy - 0.3 * Y) ** 2 + 0.5 * xx * yy - 0.7 * (xx - 0.6 * X) ** 2)
    dy = 1e-4 * (2 * (yy - 0.3 * Y) + 0.5 * xx)
    dx = 1e-4 * (0.5 * yy - 1.4 * (xx - 0.6 * X))
    img = np.stack([np.zeros_like(s), np.zeros_like(s), s]).astype(np.float32)
    tiles, grid = fc.make_tiles(img, bsize=64, augment=True)
    assert any(f & 1 for f in grid.flips) and any(f & 2 for f in grid.flips)
    net = np.empty_like(tiles)
    for t in range(grid.count):
        st = tiles[t, 2].astype(np.float64)
        gy, gx = np.gradient(st, edge_order=2)
        net[t] = np.stack([gy, gx, st])
    valid = (slice(None), slice(0, Y), slice(0, X))
    out = fc.blend_tiles(net, grid, flow_channels=(0, 1))
    expected = np.stack([dy, dx, s])
    # padded pixels of a tile (beyond the image) read 0 and break the gradient near the padded border
    np.testing.assert_allclose(out[valid][:, :Y - 2, :X - 2], expected[:, :Y - 2, :X - 2], atol=2e-5)
    wrong = fc.blend_tiles(net, grid, flow_channels=None)
    assert np.abs(wrong[0] - dy).max() > 1e-3 and np.abs(wrong[1] - dx).max() > 1e-3
    swapped = fc.blend_tiles(net, grid, flow_channels=(1, 0))
    assert np.abs(swapped[0] - dy).max() > 1e-3


def test_flow_channels_negated_exactly(device):
    img = _img((150, 260), c=4, seed=4)
    tiles, grid = fc.make_tiles(img, bsize=96, augment=True)
    flips = np.array(grid.flips)
    net = tiles.copy()
    net[flips & 1 == 1, 2] *= -1  # an equivariant net negates the Y flow of Y-flipped tiles
    net[flips & 2 == 2, 3] *= -1
    np.testing.assert_allclose(fc.blend_tiles(net, grid, flow_channels=(2, 3)), img, atol=1e-5)
    assert np.abs(fc.blend_tiles(net, grid, flow_channels=(0, 1)) - img).max() > 0.1


def test_flow_channel_disabled_is_identity_on_values(device):
    img = _img((200, 200), c=2, seed=5)
    tiles, grid = fc.make_tiles(img, bsize=80, augment=True)
    np.testing.assert_allclose(fc.blend_tiles(tiles, grid, flow_channels=(-1, -1)), img, atol=1e-5)


@pytest.mark.parametrize("ly, lx", [(224, 224), (100, 224), (1, 1), (300, 250), (101, 57), (224, 333)])
def test_taper_vs_cellpose(ly, lx):
    np.testing.assert_allclose(taper_mask(ly, lx), cp_taper_mask(ly, lx), rtol=1e-12, atol=1e-15)


def test_tile_starts_match_linspace():
    for L in range(1, 800, 7):
        for b in (16, 64, 224):
            for aug in (False, True):
                g = plan_tiles(L, L, b, 0.1, aug)
                E = max(L, b) if aug else L
                ref = np.linspace(0, E - g.by, g.ny).astype(int)
                assert list(g.ystart) == ref.tolist(), (L, b, aug)
    # overlap is clamped to [0.05, 0.5]
    assert plan_tiles(1000, 1000, 224, 5.0, False) == plan_tiles(1000, 1000, 224, 0.5, False)
    assert plan_tiles(1000, 1000, 224, -1.0, False) == plan_tiles(1000, 1000, 224, 0.05, False)


def test_batched_equals_single(device):
    imgs = np.stack([_img((130, 250), c=2, seed=s) for s in range(3)])
    tiles, grid = fc.make_tiles(imgs, bsize=100, overlap=0.2, augment=True)
    assert tiles.shape == (3, grid.count, 2, 100, 100)
    for b in range(3):
        t1, g1 = fc.make_tiles(imgs[b], bsize=100, overlap=0.2, augment=True)
        assert g1 == grid
        np.testing.assert_array_equal(tiles[b], t1)
    out = fc.blend_tiles(tiles * 2, grid)
    assert out.shape == imgs.shape
    np.testing.assert_allclose(out, fc.blend_tiles(tiles, grid) * 2, atol=1e-5)


def test_torch_in_torch_out(device):
    torch = pytest.importorskip("torch")
    img = torch.from_numpy(_img((90, 120), seed=6))
    tiles, grid = fc.make_tiles(img, bsize=64)
    assert isinstance(tiles, torch.Tensor)
    out = fc.blend_tiles(tiles, grid)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), img.numpy(), atol=1e-5)


def test_bad_inputs(device):
    img = _img((50, 60))
    with pytest.raises(ValueError, match="channel axis"):
        fc.make_tiles(img[0])
    with pytest.raises(ValueError, match="bsize"):
        fc.make_tiles(img, bsize=0)
    with pytest.raises(ValueError, match="bsize"):
        fc.make_tiles(img, bsize=2.5)
    bad = img.copy()
    bad[1, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fc.make_tiles(bad)
    with pytest.raises(ValueError, match="overlap"):
        fc.make_tiles(img, overlap=float("nan"))
    tiles, grid = fc.make_tiles(img, bsize=32)
    with pytest.raises(ValueError, match="do not match"):
        fc.blend_tiles(tiles[:-1], grid)
    with pytest.raises(ValueError, match="do not match"):
        fc.blend_tiles(tiles[:, :, :-1], grid)
    with pytest.raises(ValueError, match="ntiles"):
        fc.blend_tiles(tiles[0], grid)
    with pytest.raises(ValueError, match="TileGrid"):
        fc.blend_tiles(tiles, (1, 2, 3))
    with pytest.raises(ValueError, match="flow channel"):
        fc.blend_tiles(tiles, grid, flow_channels=(0, 3))
    with pytest.raises(ValueError, match="pair"):
        fc.blend_tiles(tiles, grid, flow_channels=(0,))
    t2 = tiles.copy()
    t2[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN"):
        fc.blend_tiles(t2, grid)
    with pytest.raises(ValueError, match="numeric"):
        fc.make_tiles(np.array([["a"]]))


@pytest.mark.cuda
@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("shape", [(500, 700), (100, 333), (1, 1)])
def test_cpu_cuda_parity(shape, augment):
    img = _img(shape, c=3, seed=7)
    with fc.use_backend("cpu"):
        ta, ga = fc.make_tiles(img, augment=augment)
        rnd = np.random.default_rng(8).standard_normal(ta.shape).astype(np.float32)
        oa = fc.blend_tiles(rnd, ga)
    with fc.use_backend("cuda"):
        tb, gb = fc.make_tiles(img, augment=augment)
        ob = fc.blend_tiles(rnd, gb)
    assert ga == gb
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_allclose(oa, ob, atol=1e-6, rtol=0)


@pytest.mark.cuda
def test_cuda_tensors_stay_on_device():
    torch = pytest.importorskip("torch")
    img = torch.from_numpy(_img((150, 260), seed=9)).cuda()
    tiles, grid = fc.make_tiles(img, bsize=96, augment=True)
    assert tiles.is_cuda
    out = fc.blend_tiles(tiles, grid, flow_channels=None)
    assert out.is_cuda
    np.testing.assert_allclose(out.cpu().numpy(), img.cpu().numpy(), atol=1e-5)


@pytest.mark.parametrize("shape,augment,overlap", [((300, 500), False, 0.1), ((300, 500), True, 0.5),
                                                   ((224, 224), False, 0.1), ((100, 700), True, 0.5),
                                                   ((1000, 240), False, 0.3), ((90, 60), True, 0.5)])
@pytest.mark.parametrize("flow_channels", [(0, 1), None])
def test_tile_blender_equals_blend_tiles_bitwise(shape, augment, overlap, flow_channels):
    """The bounded path's row-band blender (fastpose.core.tiles.TileBlender) gives blend_tiles' values bit
    for bit, emitting every row exactly once, in order."""
    from fastpose.core.tiles import TileBlender

    rng = np.random.default_rng(7)
    img = rng.normal(size=(3, *shape)).astype(np.float32)
    tiles, grid = fc.make_tiles(img, bsize=224, overlap=overlap, augment=augment)
    out = rng.normal(size=(tiles.shape[0], 3, *tiles.shape[-2:])).astype(np.float32) * 10
    want = fc.blend_tiles(out, grid, flow_channels=flow_channels)
    got = np.full((3, *shape), np.nan, np.float32)
    rows = []

    def emit(row0, block):
        rows.extend(range(row0, row0 + block.shape[1]))
        got[:, row0:row0 + block.shape[1]] = block

    blender = TileBlender(grid, 3, flow_channels, emit)
    for t in out:
        blender.add(t)
    assert blender.done
    assert rows == list(range(shape[0]))
    np.testing.assert_array_equal(got, want)
