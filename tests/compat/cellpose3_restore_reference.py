"""Reference outputs of Cellpose 3's image restoration (``denoise.DenoiseModel``), for
``tests/test_restore_compat.py``.

Runs with the Python of the Cellpose 3 environment (``build-cp3``, made by ``scripts/test.sh``) and imports
nothing from fastpose; the test compares fastpose with what this script writes:

    build-cp3/bin/python tests/compat/cellpose3_restore_reference.py OUT_DIR IMAGE.tif

* ``denoise_test_nuclei`` (diam_mean 17) and ``upsample_test_cyto`` (diam_mean 30): fresh restoration networks
  ``resnet_torch.CPnet([1, 32, 64, 128, 256], nout=1, sz=3)`` with non-trivial BatchNorm statistics, saved by
  ``CPnet.save_model`` (Cellpose's own writer).  The names matter: ``DenoiseModel.eval`` interpolates the
  image first only when the file's path contains ``"upsample"``.
* ``<case>.npz``: ``DenoiseModel(gpu=False, pretrained_model=FILE, nchan=1, diam_mean=...).eval`` of an image
  (``img``, as given to ``eval``) at a diameter (``diameter``), what ``eval`` returns (``out``: float32
  [Y, X, C], channels last) and, for the upsampling model, ``interp``: the image as Cellpose interpolates it
  before the network (``transforms.resize_image`` by ``diam_mean / diameter``, float32 [Y', X']).

The diameters are chosen so that every resized size ``n * diam_mean / diameter`` has a fractional part well
inside (0, 0.5): Cellpose truncates sizes (``int``), fastpose rounds them, and there the two agree.

Prints one JSON line: the Cellpose and torch versions, the networks and the cases written.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
from cellpose import denoise, transforms, version
from cellpose.resnet_torch import CPnet
from randomize import randomize_bn  # beside this script

NETS = {"denoise_test_nuclei": 17.0, "upsample_test_cyto": 30.0}

# (case, network, image, diameter, eval keywords)
#   gray: the 2D sample; two: a 2-channel [Y, X, 2] image made from it (channel 1 flipped and inverted)
CASES = [
    ("denoise_d17", "denoise_test_nuclei", "gray", 17.0, {"channels": None}),       # diam_mean: no resizing
    ("denoise_d25.5", "denoise_test_nuclei", "gray", 25.5, {"channels": [0, 0]}),  # 260x347 -> 173x231
    ("denoise2ch_d25.5", "denoise_test_nuclei", "two", 25.5, {"channels": None, "channel_axis": 2}),
    ("upsample_d30", "upsample_test_cyto", "gray", 30.0, {"channels": None}),      # diam_mean: no interpolation
    ("upsample_d24.2", "upsample_test_cyto", "gray", 24.2, {"channels": None}),    # 260x347 -> 322x430 -> 399x533
]


def fresh_net(out: Path, name: str, diam_mean: float, seed: int, probe: np.ndarray) -> Path:
    """A random restoration network whose output on ``probe`` (a normalised crop) has mean 0.5 and standard
    deviation 0.25, about what a trained one gives (a fresh one's output varies by only ~0.01)."""
    torch.manual_seed(seed)
    net = CPnet([1, 32, 64, 128, 256], 1, 3, diam_mean=diam_mean)
    randomize_bn(net, torch.Generator().manual_seed(seed + 100))  # BatchNorm statistics a loader must not drop
    net.eval()
    with torch.no_grad():
        y = net(torch.from_numpy(probe)[None, None])[0]
        s = 0.25 / float(y.std())
        conv = net.output[2]
        conv.weight.mul_(s)
        conv.bias.copy_(s * (conv.bias - float(y.mean())) + 0.5)
    path = out / name
    net.save_model(str(path))
    return path


def images(path: str) -> dict:
    img = tifffile.imread(path)
    assert img.ndim == 2, img.shape
    # 257 rows: at diameter 25.5 both channels' sizes (x 17/25.5 and, for channel 1, x 30/25.5: see the test)
    # truncate and round alike
    g = img[:257].astype(np.float32)
    two = np.stack([g, 300.0 - g[::-1, ::-1]], axis=-1)
    return {"gray": img, "two": two}


def interpolated(img: np.ndarray, diam_mean: float, diameter: float) -> np.ndarray:
    """What ``DenoiseModel.eval`` does to the image of an ``upsample`` model before ``_eval`` (the same calls)."""
    x = transforms.convert_image(img, None, nchan=None)[np.newaxis]
    ratio = diam_mean / diameter
    Ly, Lx = x.shape[-3:-1]
    return transforms.resize_image(x, Ly=int(Ly * ratio), Lx=int(Lx * ratio))[0, ..., 0]


def main() -> None:
    out, image = Path(sys.argv[1]), sys.argv[2]
    out.mkdir(parents=True, exist_ok=True)
    # DenoiseModel.eval interpolates first when "upsample" is anywhere in the model's path
    assert "upsample" not in str(out.resolve()), f"the output folder's path must not contain 'upsample': {out}"
    torch.set_num_threads(2)
    imgs = images(image)
    probe = imgs["gray"][:224, :224].astype(np.float32)
    probe = (probe - np.percentile(probe, 1)) / (np.percentile(probe, 99) - np.percentile(probe, 1))
    paths = {name: fresh_net(out, name, dm, 11 + k, probe) for k, (name, dm) in enumerate(NETS.items())}
    cases = {}
    for case, name, which, diameter, kw in CASES:
        dm = NETS[name]
        model = denoise.DenoiseModel(gpu=False, pretrained_model=str(paths[name]), nchan=1, diam_mean=dm)
        img = imgs[which]
        res = np.asarray(model.eval(img.copy(), diameter=diameter, **kw), np.float32)
        extra = {}
        if name.startswith("upsample") and diameter < dm:
            extra["interp"] = interpolated(img, dm, diameter)
        np.savez(out / f"{case}.npz", img=img, out=res, diameter=np.float64(diameter), diam_mean=np.float64(dm),
                 **extra)
        cases[case] = {"shape": list(res.shape), "std": float(res.std()), "ratio": float(model.ratio)}
    print(json.dumps({"cellpose": str(version), "torch": torch.__version__, "nets": list(paths), "cases": cases}))


if __name__ == "__main__":
    main()
