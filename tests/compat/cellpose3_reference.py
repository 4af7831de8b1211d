"""Reference outputs from the real Cellpose 3, for ``tests/test_compat_cellpose.py``.

Runs with the Python of the Cellpose 3 environment (``build-cp3``, made by ``scripts/test.sh``) and imports
nothing from fastpose; the test compares fastpose with what this script writes:

    build-cp3/bin/python tests/compat/cellpose3_reference.py OUT_DIR MODEL.pth IMAGE.tif

* ``cpnet_<k>.pth`` / ``cpnet_<k>.npz``: fresh ``resnet_torch.CPnet`` networks with non-trivial BatchNorm
  statistics, saved by ``CPnet.save_model`` (Cellpose's own writer), with an input ``x`` and the network's
  eval-mode ``out`` and ``style``;
* ``eval_d<diameter>.npz``: ``models.CellposeModel(gpu=False, pretrained_model=MODEL).eval`` of the 2D image
  at each diameter (``masks``, image-scale flows ``dP``, ``cellprob``, ``styles``).

Prints one JSON line: the Cellpose version, the networks written and the mask counts.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
from cellpose import models, version
from cellpose.resnet_torch import CPnet
from randomize import randomize_bn  # beside this script

NETS = {"default": [2, 32, 64, 128, 256], "narrow": [1, 8, 16, 32]}
DIAMETERS = (17.0, 25.0)


def fresh_cpnets(out: Path) -> list:
    written = []
    for k, (name, nbase) in enumerate(NETS.items()):
        torch.manual_seed(3 + k)
        net = CPnet(list(nbase), 3, 3, diam_mean=21.0)
        g = torch.Generator().manual_seed(5 + k)
        randomize_bn(net, g)  # BatchNorm statistics a loader must not drop
        with torch.no_grad():
            net.diam_labels.fill_(19.5)
        net.eval()
        net.save_model(str(out / f"cpnet_{name}.pth"))
        x = torch.randn(2, nbase[0], 64, 48, generator=g)
        with torch.no_grad():
            o, s, _ = net(x)
        np.savez(out / f"cpnet_{name}.npz", x=x.numpy(), out=o.numpy(), style=s.numpy(), nbase=np.array(nbase))
        written.append(name)
    return written


def evaluate(out: Path, model: str, image: str) -> dict:
    img = tifffile.imread(image)
    m = models.CellposeModel(gpu=False, pretrained_model=model)
    counts = {}
    for d in DIAMETERS:
        masks, flows, styles = m.eval(img, diameter=d, channels=[0, 0], flow_threshold=0.4, cellprob_threshold=0.0)
        np.savez(out / f"eval_d{d:g}.npz", masks=masks, dP=flows[1], cellprob=flows[2], styles=styles)
        counts[f"{d:g}"] = int(masks.max())
    return {"diam_mean": float(m.diam_mean), "masks": counts}


def main() -> None:
    out, model, image = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    info = {"cellpose": str(version), "torch": torch.__version__, "nets": fresh_cpnets(out)}
    info.update(evaluate(out, model, image))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
