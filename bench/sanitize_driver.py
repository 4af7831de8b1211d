"""Run every core operation on the GPU over realistic and edge-case inputs (2D, 3D, empty, tiny, >65535
labels); meant to run under compute-sanitizer (memcheck, racecheck, initcheck), see scripts/gpu_check.sh.
Exits non-zero when a GPU result differs from the CPU result.  ``--small`` leaves out the >65535-label case
(racecheck instruments every shared-memory access and takes minutes on it)."""

import sys

import numpy as np
import torch

import fastpose.core as fc
from fastpose.synthetic import random_labels


def cases(small: bool = False):
    yield "2d", random_labels((256, 256), 60, 24, seed=1)
    yield "3d", random_labels((32, 48, 48), 12, 14, seed=2)
    yield "empty", np.zeros((40, 30), np.int32)
    yield "tiny", np.ones((1, 1), np.int32)
    yield "line", np.ones((1, 50), np.int32)
    sq = np.zeros((200, 200), np.int32)
    for k, (y, x, s) in enumerate([(2, 2, 70), (2, 100, 76), (100, 2, 90)]):  # every shared-memory path
        sq[y:y + s, x:x + s] = k + 1
    yield "big masks", sq
    if small:
        return
    n = 264
    yy, xx = np.indices((6 * n, 6 * n))
    yield "many", np.where((yy % 6 < 5) & (xx % 6 < 5), (yy // 6) * n + (xx // 6) + 1, 0).astype(np.int32)


def main() -> int:
    bad = 0
    for name, lab in cases("--small" in sys.argv[1:]):
        dP = 5.0 * fc.masks_to_flows(lab)
        prob = np.where(lab > 0, 5.0, -5.0).astype(np.float32)
        with fc.use_backend("cpu"):
            ref = fc.compute_masks(dP, prob, min_size=0 if name == "many" else 15)
            ref_flows = fc.masks_to_flows(lab)
        D, P, L = (torch.from_numpy(a).cuda() for a in (dP, prob, lab))
        flows = fc.masks_to_flows(L)
        out = fc.compute_masks(D, P, min_size=0 if name == "many" else 15)
        img = torch.rand((2, *lab.shape[-2:]), device="cuda") if lab.ndim == 2 else None
        if img is not None:
            for aug in (False, True):
                tiles, grid = fc.make_tiles(img, bsize=224, augment=aug)
                fc.blend_tiles(tiles, grid)
        fc.fill_holes_and_remove_small_masks(L)
        torch.cuda.synchronize()
        same = np.array_equal(out.cpu().numpy(), ref.astype(np.int32))
        fl = float(np.abs(flows.cpu().numpy() - ref_flows).max()) if lab.size else 0.0
        print(f"{name}: masks {int(ref.max())}, labels identical: {same}, max flow diff {fl:.2e}")
        bad += (not same) or fl > 1e-5
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
