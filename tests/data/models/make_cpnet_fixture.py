"""Generate the Cellpose CPnet test fixture with the REAL Cellpose code (not fastpose).

Run with the reference Cellpose 3 environment (Cellpose 3.1.1.3 was used):

    /tmp/cpvenv/bin/python tests/data/models/make_cpnet_fixture.py

Writes next to this script:
  cpnet_tiny.pth    -- CPnet(nbase=[2, 4, 8, 16, 32], nout=3, sz=3).state_dict(), as Cellpose saves it
                       (CPnet.save_model == torch.save(state_dict)); diam_mean=17, diam_labels=15.5
  cpnet_tiny_io.npz -- x [1, 2, 64, 64] float32 and CPnet's eval-mode outputs `out` [1, 3, 64, 64] and
                       `style` [1, 32]

Narrow widths keep the file small (< 0.5 MB); the architecture is otherwise Cellpose's default.
BatchNorm running statistics are first calibrated on random data (so activations stay O(1) instead of
growing through the residual stack), then perturbed so that a loader that ignored them would fail.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from cellpose.resnet_torch import CPnet

NBASE = [2, 4, 8, 16, 32]
HERE = Path(__file__).resolve().parent
log = logging.getLogger("make_cpnet_fixture")


def main() -> None:
    torch.manual_seed(1234)
    net = CPnet(list(NBASE), 3, 3, diam_mean=17.0)
    # calibrate BN running stats: cumulative average over a few random batches in train mode
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(4, NBASE[0], 64, 64))
    net.eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.05
                m.running_mean.add_(0.1 * torch.randn_like(m.running_mean))
                m.running_var.mul_(1.0 + 0.2 * torch.rand_like(m.running_var))
                m.weight.add_(0.1 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
        net.diam_labels.fill_(15.5)
    net.save_model(str(HERE / "cpnet_tiny.pth"))

    x = torch.randn(1, NBASE[0], 64, 64)
    with torch.no_grad():
        out, style, _ = net(x)
    np.savez_compressed(HERE / "cpnet_tiny_io.npz", x=x.numpy(), out=out.numpy(), style=style.numpy())
    log.info("out range %.3g..%.3g, wrote %s", float(out.min()), float(out.max()), HERE)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
