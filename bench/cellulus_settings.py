"""Choose a Cellulus model's inference settings (object size, post-processing) on a few *training* images.

The paper tuned its post-processing per dataset (shrink in 0-6 px, the bandwidth by line search); fastpose does
the same, openly, on images of the training split only (never the held-out ones that ``fastpose-bench cellulus``
scores), and records the choice on the model card.  The embeddings (the noise ensemble, the expensive part) are
computed once per image; each candidate is then only the mean-shift and the post-processing::

    python bench/cellulus_settings.py --data DSB/train --model cellulus_nuclei.pth --n 12 [--write]

``--write`` stores the best candidate (pooled F1@0.5 over the images) in the model file's settings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from fastpose.cellulus.inference import embedding_maps, postprocess_maps
from fastpose.cellulus.network import save_cellulus
from fastpose.cellulus.settings import check_settings
from fastpose.io import read_image
from fastpose.metrics import f1_seg_pooled
from fastpose.models import load_model
from fastpose.train.data import folder_ids, heldout_by_hash, prepare_image
from fastpose.train.card import write_card
from fastpose.train.recipes import SAMPLE_ID
from fastpose.transforms import normalize_percentile

log = logging.getLogger("fastpose.bench")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder of *_img.tif / *_masks.tif (DSB 2018 stage-1 train)")
    ap.add_argument("--model", required=True, help="a Cellulus model file")
    ap.add_argument("--n", type=int, default=12, help="training-split images to score (default 12: every k-th)")
    ap.add_argument("--holdout-every", type=int, default=10, help="the split's held-out images are never used")
    ap.add_argument("--sizes", type=float, nargs="+", default=[14, 17, 20, 25, 30, 35, 40, 50, 60], help="object sizes, px")
    ap.add_argument("--post", nargs="+", default=["cell", "nucleus"], help="post-processings")
    ap.add_argument("--write", action="store_true", help="store the best candidate in the model file")
    ap.add_argument("--json", default=None, help="write the table as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    net, meta = load_model(args.model, device="cpu")
    base = check_settings(meta["spec"]["settings"])
    ids = [t for t in folder_ids(args.data) if t[2] != SAMPLE_ID and not heldout_by_hash(t[2], args.holdout_every)]
    step = max(1, len(ids) // args.n)
    pick = ids[::step][:args.n]
    maps, truth, names = [], [], []
    t0 = time.time()
    for img_p, mask_p, name in pick:
        x = normalize_percentile(prepare_image(read_image(img_p), 1, -1 if read_image(img_p).ndim == 3 else None,
                                               None, True), 1.0, 99.8)
        maps.append(embedding_maps([net], x, base).cpu().numpy())
        truth.append(read_image(mask_p))
        names.append(name)
    log.info("embeddings of %d training images in %.0f s", len(pick), time.time() - t0)
    rows = []
    for size, post in itertools.product(args.sizes, args.post):
        s = {**base, "object_size": float(size), "post_processing": post}
        preds = [postprocess_maps(m, s)["masks"] for m in maps]
        sc = f1_seg_pooled(truth, preds)
        rows.append({"object_size": size, "post_processing": post, "f1": sc["f1"], "seg": sc["seg"]})
        log.info("object size %4.1f  %-8s F1@0.5 %.3f  SEG %.3f", size, post, sc["f1"], sc["seg"])
    best = max(rows, key=lambda r: (r["f1"], r["seg"]))
    log.info("best: object size %g, %s (F1 %.3f, SEG %.3f) on %d training images", best["object_size"],
             best["post_processing"], best["f1"], best["seg"], len(pick))
    out = {"model": args.model, "images": names, "rows": rows, "best": best,
           "note": "training-split images only (the held-out split is never used); embeddings computed once"}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if args.write:
        chosen = check_settings({**base, "object_size": best["object_size"],
                                 "post_processing": best["post_processing"]})
        extra = dict(meta.get("extra") or {})
        extra["settings_choice"] = out
        card = extra.get("card")
        if isinstance(card, dict):
            card["settings"] = {**card.get("settings", {}), "object_size": chosen["object_size"],
                                "post_processing": chosen["post_processing"]}
            card["diam_mean"] = card["diam_labels"] = chosen["object_size"]  # the spec's diam_mean follows it
            card["settings_choice"] = {k: out[k] for k in ("rows", "best", "note")} | {"n_images": len(names)}
        save_cellulus(args.model, net.eval(), chosen, extra=extra)
        log.info("wrote the settings into %s", args.model)
        side = Path(args.model).with_suffix(".json")
        if isinstance(card, dict) and side.is_file():
            on_disk = json.loads(side.read_text())  # keeps what was merged there since (validation)
            for k in ("settings", "diam_mean", "diam_labels", "settings_choice"):
                on_disk[k] = card[k]
            write_card(side, on_disk)
            log.info("and into its card %s", side)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
