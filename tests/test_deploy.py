"""Deployment: ONNX export + check (U-Net, ViT), atomic writes, the network backends of the Segmenter (torch,
onnxruntime, compile agree), the ONNX cache, and the TensorRT code paths that run without TensorRT or a GPU
(clear errors, argument checks, cache keys, the engine builder against a mocked ``tensorrt`` module)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

import fastpose.deploy.onnx_export as ox
from _helpers import ap_at
from fastpose.cli import main
from fastpose.deploy import (BACKENDS, CompiledNet, check_onnx, engine_cache_key, export_onnx, model_hash)
from fastpose.deploy import trt as fptrt
from fastpose.models import UNet, ViT, save_model
from fastpose.inference import Segmenter, segment
from fastpose.synthetic import random_labels

ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'fastpose[onnx]')")


def _tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(nbase=(2, 8, 16, 32, 64)).eval()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test gets its own fastpose cache folder."""
    monkeypatch.setenv("FASTPOSE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def images():
    """Two noisy 'cell' images: one tiles into 224x224 tiles, the smaller one into 160x224 tiles."""
    rng = np.random.default_rng(0)
    out = []
    for shape, seed in (((240, 260), 3), ((150, 300), 4)):
        lab = random_labels(shape, 30, diameter=20, seed=seed)
        out.append((lab > 0) * 100.0 + rng.normal(0, 10, shape))
    return out


def _compile_works(backend: str = "aot_eager") -> bool:
    try:
        return bool(torch.compile(lambda x: x + 1, backend=backend)(torch.ones(2)).sum() == 4)
    except Exception:  # noqa: BLE001 - any failure means: cannot compile here
        return False


# --------------------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------------------

def test_export_and_check_unet(tmp_path):
    net = _tiny_unet()
    net.train()  # export must use eval mode and leave the caller's module alone
    p = export_onnx(net, tmp_path / "unet.onnx")
    assert net.training and p.is_file()
    net.eval()
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    (inp,), outs = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "image" and inp.shape[1:] == [2, 224, 224] and not isinstance(inp.shape[0], int)
    assert [o.name for o in outs] == ["flows_cellprob", "style"]
    assert outs[0].shape[1:] == [3, 224, 224] and outs[1].shape[1:] == [64]
    res = check_onnx(net, p, rtol=1e-4, batch=3)
    assert res.ok and max(res.rel.values()) <= 1e-4
    # tile 256, fixed batch
    p2 = export_onnx(net, tmp_path / "unet256.onnx", tile=256, dynamic_batch=False)
    shape = ort.InferenceSession(str(p2), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    assert shape == [1, 2, 256, 256]
    assert check_onnx(net, p2, batch=1).ok


def test_export_and_check_vit(tmp_path):
    torch.manual_seed(1)
    net = ViT.from_preset("vit_t").eval()
    p = export_onnx(net, tmp_path / "vit.onnx")  # default tile: the ViT's 256
    res = check_onnx(net, p, rtol=1e-4)
    assert res.ok and max(res.rel.values()) <= 1e-4
    assert ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[1:] == [3, 256, 256]
    with pytest.raises(ValueError, match="256x256"):
        export_onnx(net, tmp_path / "bad.onnx", tile=224)


def test_check_onnx_detects_a_mismatch(tmp_path):
    p = export_onnx(_tiny_unet(0), tmp_path / "a.onnx")
    with pytest.raises(RuntimeError, match="does not match"):
        check_onnx(_tiny_unet(1), p)
    assert not check_onnx(_tiny_unet(1), p, raise_on_error=False).ok


def test_export_is_atomic(tmp_path, monkeypatch):
    dest = tmp_path / "m.onnx"
    dest.write_bytes(b"previous")

    def broken_export(model, args, f, **kw):
        Path(f).write_bytes(b"half a model")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(RuntimeError, match="disk full"):
        export_onnx(_tiny_unet(), dest)
    assert dest.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["m.onnx"]  # no temporary file left behind


def test_export_argument_checks(tmp_path):
    net = _tiny_unet()
    with pytest.raises(ValueError, match="multiple of 8"):
        export_onnx(net, tmp_path / "x.onnx", tile=100)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(net, tmp_path / "x.onnx", opset=3)
    with pytest.raises(ValueError, match="tile"):
        export_onnx(net, tmp_path / "x.onnx", tile=(224, 224, 3))
    assert not (tmp_path / "x.onnx").exists()


def test_model_hash_tracks_weights():
    a, b = _tiny_unet(0), _tiny_unet(0)
    assert model_hash(a) == model_hash(b)
    with torch.no_grad():
        b.output[2].bias += 1e-3
    assert model_hash(a) != model_hash(b)


# --------------------------------------------------------------------------------------------------
# backends through the Segmenter
# --------------------------------------------------------------------------------------------------

def _segment_all(net, backend, images, thresholds=None, **kw):
    seg = Segmenter(net, device="cpu", batch_size=3, backend=backend, **kw)
    out = []
    for i, im in enumerate(images):
        thr = 0.0 if thresholds is None else thresholds[i]
        out.append(seg.segment(im, diameter=0, return_flows=True, cellprob_threshold=thr, flow_threshold=0.0))
    return seg, out


@pytest.fixture(scope="module")
def torch_reference(images):
    """The tiny U-Net's segmentations with the ``torch`` backend, the reference for the other backends."""
    net = _tiny_unet()
    _, ref = _segment_all(net, "torch", images)
    # the random network's cell probability is nearly flat: threshold at its median so there are masks
    thr = [float(np.median(r.cellprob)) for r in ref]
    _, ref = _segment_all(net, "torch", images, thr)
    assert all(r.masks.max() >= 20 for r in ref)
    return net, thr, ref


@pytest.mark.parametrize("backend", [b if b != "tensorrt" else pytest.param(b, marks=pytest.mark.cuda)
                                     for b in BACKENDS if b != "torch"])
def test_backend_agrees_with_torch(backend, torch_reference, images, monkeypatch):
    """Each backend vs torch on a tiny U-Net: flows and probabilities within 1e-3, masks AP@0.5 >= 0.99."""
    net, thr, ref = torch_reference
    opts = {"device": "cpu"}
    if backend == "compile":
        if not _compile_works():
            pytest.skip("torch.compile cannot run here")
        # inductor's first CPU compile takes minutes on 2 cores; aot_eager exercises the same wrapper
        # (inductor itself: test_compile_backend_inductor)
        monkeypatch.setenv("FASTPOSE_COMPILE_BACKEND", "aot_eager")
    elif backend == "tensorrt":
        try:
            fptrt.require_tensorrt()
        except RuntimeError as e:
            pytest.skip(str(e))
        opts = {"device": "cuda", "precision": "fp32"}
    seg = Segmenter(net, batch_size=3, backend=backend, **opts)
    # "auto" on the CPU resolves to onnxruntime (a fastpose U-Net, fp32, onnxruntime installed)
    assert seg.backend == (backend if backend != "auto" else "onnxruntime") and seg.runners[0] is not net
    for i, (im, a) in enumerate(zip(images, ref)):
        b = seg.segment(im, diameter=0, return_flows=True, cellprob_threshold=thr[i], flow_threshold=0.0)
        np.testing.assert_allclose(b.flows, a.flows, atol=1e-3)
        np.testing.assert_allclose(b.cellprob, a.cellprob, atol=1e-3)
        np.testing.assert_allclose(b.styles, a.styles, atol=1e-4)
        assert ap_at(a.masks, b.masks, 0.5) >= 0.99


def test_onnxruntime_backend_on_the_bundled_model():
    """A real model end to end: the bundled nuclei model on the bundled sample, onnxruntime vs PyTorch."""
    from fastpose.io import read_image, sample_paths

    img = read_image(sample_paths()[0])
    a = segment(img, "nuclei", device="cpu", diameter=17.0, backend="torch")
    b = segment(img, "nuclei", device="cpu", diameter=17.0, backend="onnxruntime")
    assert a.masks.max() >= 50
    assert ap_at(a.masks, b.masks, 0.5) >= 0.99


def test_onnxruntime_cache(images, tmp_path, monkeypatch):
    net = _tiny_unet()
    seg = Segmenter(net, device="cpu", backend="onnxruntime")
    seg.segment(images[0], diameter=0)
    files = sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(files) == 1 and files[0].name.endswith("-224x224.onnx")

    def no_export(*a, **k):
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr(ox, "export_onnx", no_export)
    Segmenter(net, device="cpu", backend="onnxruntime").segment(images[0], diameter=0)   # cache hit
    changed = _tiny_unet(5)
    with pytest.raises(AssertionError, match="reused"):   # other weights: another key, a new export
        Segmenter(changed, device="cpu", backend="onnxruntime").segment(images[0], diameter=0)


def test_auto_backend_resolution(caplog):
    """"auto" (the default): onnxruntime on the CPU for fastpose U-Nets/ViTs in fp32, eager torch on a GPU, for
    reduced precision, for other networks and without onnxruntime; the choice is logged."""
    import logging

    from fastpose.deploy import resolve_backend
    from fastpose.deploy import backends as fpb

    net = _tiny_unet()
    assert Segmenter(net, device="cpu").backend == "onnxruntime"
    assert resolve_backend("auto", "cpu", "fp32", [net]) == "onnxruntime"
    assert resolve_backend("auto", "cpu", "fp32", [ViT.from_preset("vit_t")]) == "onnxruntime"
    assert resolve_backend("auto", "cuda", "fp16", [net]) == "torch"          # no GPU needed to decide
    assert resolve_backend("auto", "cpu", "bf16", [net]) == "torch"
    assert resolve_backend("auto", "cpu", "fp32", [torch.nn.Conv2d(2, 3, 1)]) == "torch"
    assert resolve_backend("torch", "cpu", "fp32", [net]) == "torch"           # explicit names pass through
    with pytest.raises(ValueError, match="unknown backend.*auto"):
        resolve_backend("fast", "cpu")
    fpb._logged.clear()

    def missing():
        raise RuntimeError("no onnxruntime")

    with mock.patch.object(fpb, "require_onnxruntime", missing), caplog.at_level(logging.INFO, "fastpose.deploy"):
        seg = Segmenter(net, device="cpu")
    assert seg.backend == "torch" and seg.runners[0] is net
    assert "not installed" in caplog.text


def test_auto_backend_same_masks_as_torch(torch_reference, images):
    """The default backend gives the torch reference's masks (bitwise) on the tiny U-Net."""
    net, thr, ref = torch_reference
    seg = Segmenter(net, device="cpu", batch_size=3)
    for i, (im, a) in enumerate(zip(images, ref)):
        b = seg.segment(im, diameter=0, return_flows=True, cellprob_threshold=thr[i], flow_threshold=0.0)
        np.testing.assert_array_equal(b.masks, a.masks)


def test_auto_backend_falls_back_to_torch_when_the_export_fails(images, caplog):
    """A tile shape onnxruntime cannot serve runs on PyTorch under "auto" (with a warning); an explicit
    backend="onnxruntime" raises instead."""
    import logging

    from fastpose.deploy import backends as fpb

    net = _tiny_unet()
    ref = Segmenter(net, device="cpu", backend="torch").segment(images[0], diameter=0, return_flows=True)

    def broken(*a, **k):
        raise RuntimeError("exporter exploded")

    with mock.patch.object(fpb, "cached_ort_session", broken), caplog.at_level(logging.WARNING, "fastpose.deploy"):
        got = Segmenter(net, device="cpu").segment(images[0], diameter=0, return_flows=True)
        assert "exporter exploded" in caplog.text and "PyTorch" in caplog.text
        np.testing.assert_array_equal(got.flows, ref.flows)
        with pytest.raises(RuntimeError, match="exploded"):
            Segmenter(net, device="cpu", backend="onnxruntime").segment(images[0], diameter=0)


def test_onnx_cache_rebuilds_a_corrupt_entry(images, tmp_path, caplog):
    import logging

    net = _tiny_unet()
    ref = Segmenter(net, device="cpu", backend="onnxruntime").segment(images[0], diameter=0).masks
    (f,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    good = f.read_bytes()
    f.write_bytes(good[: len(good) // 3])                   # truncated, as by a full disk
    with caplog.at_level(logging.WARNING, "fastpose.deploy"):
        got = Segmenter(net, device="cpu", backend="onnxruntime").segment(images[0], diameter=0).masks
    assert "cannot be loaded" in caplog.text and "exporting it again" in caplog.text
    np.testing.assert_array_equal(got, ref)
    assert f.stat().st_size == len(good)                    # rebuilt in place (atomically)


def test_onnx_cache_unwritable_falls_back_to_a_temp_dir(images, tmp_path, monkeypatch, caplog):
    import logging
    import tempfile

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FASTPOSE_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    ox._warned_unwritable.clear()
    with caplog.at_level(logging.WARNING, "fastpose.deploy"):
        r = Segmenter(_tiny_unet(), device="cpu", backend="onnxruntime").segment(images[0], diameter=0)
    assert r.masks.shape == images[0].shape
    assert "not writable" in caplog.text and str(blocker / "cache") in caplog.text
    assert list((tmp_path / "tmp").glob("fastpose-cache-*/onnx/*-224x224.onnx"))


def test_onnx_cache_key_tracks_the_runtimes(monkeypatch):
    args = ("d" * 64, (224, 224), 17)
    k = ox.onnx_cache_key(*args)
    assert k == ox.onnx_cache_key(*args)
    monkeypatch.setattr(ox, "_runtime_versions", lambda: "torch=9.9|ort=1.0")
    assert ox.onnx_cache_key(*args) != k
    for other in (("e" * 64, (224, 224), 17), ("d" * 64, (160, 224), 17), ("d" * 64, (224, 224), 18)):
        assert ox.onnx_cache_key(*other) != ox.onnx_cache_key(*args)


def test_compiled_net_pads_to_fixed_batches():
    if not _compile_works():
        pytest.skip("torch.compile cannot run here")
    net = _tiny_unet()
    calls = []

    cn = CompiledNet(net, batch_size=4, device="cpu", compile_backend="aot_eager")
    inner = cn.fn
    cn.fn = lambda x: (calls.append(tuple(x.shape)), inner(x))[1]
    x = torch.randn(6, 2, 64, 64)
    with torch.inference_mode():
        y, s = cn(x)
        y0, s0 = net(x)
    assert calls == [(4, 2, 64, 64), (4, 2, 64, 64)]   # 6 tiles: a full batch, then 2 padded to 4
    torch.testing.assert_close(y, y0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, s0, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # inductor's first CPU compile takes ~1 min on 2 cores
def test_compile_backend_inductor(images):
    if not _compile_works("inductor"):
        pytest.skip("torch.compile (inductor) cannot run here")
    net = _tiny_unet()
    _, ref = _segment_all(net, "torch", images[:1])
    _, got = _segment_all(net, "compile", images[:1])
    np.testing.assert_allclose(got[0].flows, ref[0].flows, atol=1e-3)


def test_unknown_backend_lists_the_choices():
    with pytest.raises(ValueError) as e:
        Segmenter(_tiny_unet(), device="cpu", backend="tensorflow")
    for name in BACKENDS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="unknown backend"):
        segment(np.zeros((32, 32)), _tiny_unet(), device="cpu", backend="")


# --------------------------------------------------------------------------------------------------
# TensorRT without TensorRT
# --------------------------------------------------------------------------------------------------

@pytest.fixture()
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # import tensorrt -> ImportError


def test_tensorrt_missing_gives_the_install_command(no_tensorrt):
    with pytest.raises(RuntimeError, match=r'pip install "fastpose\[trt\]"'):
        Segmenter(_tiny_unet(), device="cpu", backend="tensorrt")
    with pytest.raises(RuntimeError, match="NVIDIA GPU"):
        fptrt.build_engine("x.onnx", "x.plan")
    with pytest.raises(RuntimeError, match="fastpose\\[trt\\]"):
        fptrt.TensorRTNet(_tiny_unet())


def test_cli_export_engine_without_tensorrt(no_tensorrt, tmp_path, capsys, caplog):
    model = tmp_path / "tiny.pth"
    save_model(model, _tiny_unet())
    assert main(["export", str(model), "--engine", str(tmp_path / "m.plan"), "--precision", "fp16"]) == 2
    assert "fastpose[trt]" in caplog.text
    assert not (tmp_path / "m.plan").exists()


def test_engine_cache_key():
    base = dict(digest="abc", tile=224, precision="fp16", gpu_name="NVIDIA H100", trt_version="10.3.0")
    k = engine_cache_key(**base)
    assert k == engine_cache_key(**base) and len(k) == 32
    assert engine_cache_key(**base) == engine_cache_key(**{**base, "tile": (224, 224)})
    for change in (dict(precision="fp32"), dict(precision="int8"), dict(tile=256), dict(digest="abd"),
                   dict(gpu_name="NVIDIA A100"), dict(trt_version="10.4.0")):
        assert engine_cache_key(**{**base, **change}) != k, change
    assert engine_cache_key(**base, max_batch=16) != k
    assert engine_cache_key(**base, calibration_digest="c0ffee") != k
    # a different model hashes to a different key
    ka = engine_cache_key(**{**base, "digest": model_hash(_tiny_unet(0))})
    kb = engine_cache_key(**{**base, "digest": model_hash(_tiny_unet(1))})
    assert ka != kb
    with pytest.raises(ValueError, match="fp16"):
        engine_cache_key(**{**base, "precision": "fp64"})
    with pytest.raises(ValueError, match="max_batch"):
        engine_cache_key(**base, max_batch=0)


def _fake_trt(version: str = "10.3.0", parse_ok: bool = True, flags: bool = True) -> mock.MagicMock:
    trt = mock.MagicMock(name="tensorrt")
    trt.__version__ = version
    if not flags:
        trt.BuilderFlag = types.SimpleNamespace()
    builder = trt.Builder.return_value
    inp = builder.create_network.return_value.get_input.return_value
    inp.name, inp.shape = "image", (-1, 2, 224, 224)
    parser = trt.OnnxParser.return_value
    parser.parse_from_file.return_value = parse_ok
    parser.num_errors = 0 if parse_ok else 1
    parser.get_error.return_value = "Unsupported op Foo"
    builder.build_serialized_network.return_value = b"PLAN"
    builder.create_builder_config.return_value.get_timing_cache.return_value.serialize.return_value = b"TIMING"
    return trt


def test_build_engine_with_mocked_tensorrt(tmp_path, monkeypatch):
    trt = _fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    out = fptrt.build_engine(onnx_path, tmp_path / "e" / "m.plan", precision="fp16", max_batch=6,
                             workspace_gb=2, timing_cache=tmp_path / "timing.cache")
    assert out.read_bytes() == b"PLAN" and (tmp_path / "timing.cache").read_bytes() == b"TIMING"
    builder = trt.Builder.return_value
    builder.create_network.assert_called_once_with(0)   # TensorRT 10: explicit batch is the only mode
    trt.OnnxParser.return_value.parse_from_file.assert_called_once_with(str(onnx_path))
    config = builder.create_builder_config.return_value
    config.set_memory_pool_limit.assert_called_once_with(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    profile = builder.create_optimization_profile.return_value
    profile.set_shape.assert_called_once_with("image", (1, 2, 224, 224), (6, 2, 224, 224), (6, 2, 224, 224))
    config.add_optimization_profile.assert_called_once_with(profile)
    config.set_flag.assert_called_once_with(trt.BuilderFlag.FP16)
    config.create_timing_cache.assert_called_once_with(b"")
    builder.build_serialized_network.assert_called_once_with(builder.create_network.return_value, config)

    # fp32: no precision flags; an existing timing cache is read back
    trt2 = _fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt2)
    fptrt.build_engine(onnx_path, tmp_path / "m32.plan", precision="fp32", timing_cache=tmp_path / "timing.cache")
    cfg2 = trt2.Builder.return_value.create_builder_config.return_value
    cfg2.set_flag.assert_not_called()
    cfg2.create_timing_cache.assert_called_once_with(b"TIMING")


def test_build_engine_errors_with_mocked_tensorrt(tmp_path, monkeypatch):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(parse_ok=False))
    with pytest.raises(RuntimeError, match="Unsupported op Foo"):
        fptrt.build_engine(onnx_path, tmp_path / "m.plan")
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt(flags=False, version="11.0.0"))
    with pytest.raises(RuntimeError, match="TensorRT 10"):
        fptrt.build_engine(onnx_path, tmp_path / "m.plan", precision="fp16")
    failed = _fake_trt()
    failed.Builder.return_value.build_serialized_network.return_value = None
    monkeypatch.setitem(sys.modules, "tensorrt", failed)
    with pytest.raises(RuntimeError, match="failed to build"):
        fptrt.build_engine(onnx_path, tmp_path / "m.plan")
    assert not (tmp_path / "m.plan").exists()
    with pytest.raises(ValueError, match="precision"):
        fptrt.build_engine(onnx_path, tmp_path / "m.plan", precision="int4")
    with pytest.raises(ValueError, match="max_batch"):
        fptrt.build_engine(onnx_path, tmp_path / "m.plan", max_batch=0)


def test_export_engine_cache_with_mocked_tensorrt(tmp_path, monkeypatch):
    """ONNX export -> (int8: ModelOpt Q/DQ) -> build -> engine cache, with TensorRT, CUDA and ModelOpt mocked."""
    trt = _fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    net = _tiny_unet()
    p1 = fptrt.export_engine(net, None, precision="fp16", max_batch=4)
    assert p1.parent == tmp_path / "cache" / "trt" and p1.read_bytes() == b"PLAN"
    parsed = Path(trt.OnnxParser.return_value.parse_from_file.call_args[0][0])
    assert parsed.parent == tmp_path / "cache" / "onnx" and parsed.name.endswith("-224x224.onnx")
    assert list((tmp_path / "cache" / "trt").glob("timing-*.cache"))
    n = trt.Builder.return_value.build_serialized_network.call_count
    assert fptrt.export_engine(net, None, precision="fp16", max_batch=4) == p1      # cache hit: no rebuild
    assert trt.Builder.return_value.build_serialized_network.call_count == n
    assert fptrt.export_engine(net, None, precision="fp32", max_batch=4) != p1      # another precision
    # int8: calibration required; Q/DQ inserted by ModelOpt before the build
    with pytest.raises(ValueError, match="calibration"):
        fptrt.export_engine(net, None, precision="int8")
    seen = {}

    def quantize(onnx_path, quantize_mode, calibration_data, output_path):
        seen.update(mode=quantize_mode, n=len(calibration_data))
        Path(output_path).write_bytes(Path(onnx_path).read_bytes())

    mo = types.ModuleType("modelopt.onnx.quantization")
    mo.quantize = quantize
    for name in ("modelopt", "modelopt.onnx"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "modelopt.onnx.quantization", mo)
    calib = np.random.default_rng(0).normal(size=(5, 2, 224, 224)).astype(np.float32)
    p8 = fptrt.export_engine(net, tmp_path / "int8.plan", precision="int8", calibration=calib)
    assert p8.read_bytes() == b"PLAN" and seen == {"mode": "int8", "n": 5}
    cfg = trt.Builder.return_value.create_builder_config.return_value
    cfg.set_flag.assert_any_call(trt.BuilderFlag.INT8)


def test_tensorrt_argument_checks_with_mocked_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_trt())
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only errors")
    with pytest.raises(RuntimeError, match="device='cuda'"):
        Segmenter(_tiny_unet(), device="cpu", backend="tensorrt")
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        fptrt.TensorRTNet(_tiny_unet())
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        fptrt.export_engine(_tiny_unet(), None, precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        fptrt.TensorRTNet(_tiny_unet(), precision="fp4")
    with pytest.raises(ValueError, match="calibration"):
        fptrt._calibration_array(np.zeros((4, 1, 224, 224)), 2, (224, 224))
    assert fptrt._calibration_array(np.zeros((4, 2, 224, 224)), 2, (224, 224)).dtype == np.float32


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

def test_cli_export_and_check(tmp_path, capsys):
    model = tmp_path / "tiny.pth"
    save_model(model, _tiny_unet())
    out = tmp_path / "m.onnx"
    assert main(["export", str(model), "--out", str(out), "--tile", "256", "--check"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "OK" in text
    shape = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    assert shape[1:] == [2, 256, 256]
    assert main(["export", str(model)]) == 2                       # neither --out nor --engine
    assert main(["export", str(model), "--out", str(out), "--precision", "int8"]) == 2   # engine-only option


def test_cli_segment_backend(tmp_path, images):
    import tifffile

    model = tmp_path / "tiny.pth"
    save_model(model, _tiny_unet())
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "a_img.tif", images[1].astype(np.float32))
    for be in ("torch", "onnxruntime"):
        assert main(["segment", str(d), "--out", str(tmp_path / be), "--model", str(model), "--device", "cpu",
                     "--diameter", "0", "--backend", be, "-q"]) == 0
    a = tifffile.imread(tmp_path / "torch" / "a_masks.tif")
    b = tifffile.imread(tmp_path / "onnxruntime" / "a_masks.tif")
    np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit):
        main(["segment", str(d), "--out", str(tmp_path / "x"), "--backend", "jax"])
