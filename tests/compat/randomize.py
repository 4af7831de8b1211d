"""Non-trivial BatchNorm statistics and affine weights, so a loader that drops them fails the comparison.

Plain PyTorch only: imported by the tests and by ``cellpose3_reference.py`` inside the Cellpose 3 environment.
"""

from __future__ import annotations

import torch


def randomize_bn(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Draw every BatchNorm2d's running mean/var, weight and bias from ``generator`` (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_var.copy_(1.0 + torch.rand(n, generator=generator))
                m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=generator))
                m.bias.copy_(0.1 * torch.randn(n, generator=generator))
    return model
