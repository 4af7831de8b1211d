"""Objects cut or merged at block seams: blockwise labels against a whole-image run of the same model (issue 15's
side-by-side with ``cellpose.contrib.distributed_segmentation``).

    python bench/seams.py REF.npy BLOCKS.npy BLOCK [--json OUT]

For every object of the whole-image labels ``REF`` that crosses a block boundary (its pixels on both sides of a
multiple of ``BLOCK`` along an axis): **cut** when two or more blockwise labels each cover at least 20% of it;
**merged** when the blockwise label covering most of it covers at least half of another reference object too.
Also AP at IoU 0.5 and 0.9 over all objects (``fastpose.metrics.average_precision``, REF as the truth).
"""

import argparse
import json

import numpy as np


def seam_report(ref: np.ndarray, lab: np.ndarray, block: int) -> dict:
    from fastpose.metrics import average_precision

    ref = ref.astype(np.int64)
    lab = lab.astype(np.int64)
    n = int(ref.max())
    coords = np.nonzero(ref)
    ids = ref[coords]
    crossing = set()
    for ax in range(ref.ndim):
        c = coords[ax] // block
        lo = np.full(n + 1, np.iinfo(np.int64).max)
        hi = np.full(n + 1, -1)
        np.minimum.at(lo, ids, c)
        np.maximum.at(hi, ids, c)
        crossing |= set(np.nonzero(hi > lo)[0].tolist()) - {0}
    fg = (ref > 0) & (lab > 0)
    pairs, inter = np.unique(np.stack([ref[fg], lab[fg]]), axis=1, return_counts=True)
    area_ref = np.bincount(ref.ravel(), minlength=n + 1)
    by_ref: dict = {}
    for (r, l), k in zip(pairs.T.tolist(), inter.tolist()):
        by_ref.setdefault(r, []).append((k, l))
    main_label = {r: max(v)[1] for r, v in by_ref.items()}
    covers: dict = {}
    for (r, l), k in zip(pairs.T.tolist(), inter.tolist()):
        if k >= 0.5 * area_ref[r]:
            covers.setdefault(l, set()).add(r)
    cut = sum(1 for r in crossing if sum(1 for k, _ in by_ref.get(r, []) if k >= 0.2 * area_ref[r]) >= 2)
    merged = sum(1 for r in crossing if r in main_label and len(covers.get(main_label[r], ())) >= 2)
    ap = average_precision([ref], [lab], [0.5, 0.9])[0]
    return {"objects": n, "crossing_seams": len(crossing), "cut": cut, "merged": merged,
            "ap50": round(float(ap[0, 0]), 4), "ap90": round(float(ap[0, 1]), 4), "objects_blocks": int(len(np.unique(lab)) - 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref")
    p.add_argument("blocks")
    p.add_argument("block", type=int)
    p.add_argument("--json")
    a = p.parse_args()
    r = seam_report(np.load(a.ref), np.load(a.blocks), a.block)
    print(json.dumps(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
