"""Train the bundled models (``nuclei`` on DSB 2018, ``cyto`` on synthetic cells) within a time budget.

    python scripts/train_bundled.py nuclei --data ../shared/data/dsb2018/train --minutes 5 --out python/fastpose/weights
    python scripts/train_bundled.py cyto --minutes 3 --out python/fastpose/weights

Augmented crops are produced by a pool of worker processes (the single-threaded augmentation is the
bottleneck on a GPU), the network trains with SGD (lr 0.2, momentum 0.9, weight decay 1e-5, linear
warm-up, halving late in training: Cellpose's recipe laid over a wall-clock budget) in bf16 autocast on a
GPU.  Afterwards the size model is fitted, the held-out split is scored, and the model is written in
half precision with a JSON card next to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fastpose.io import read_image, sample_paths
from fastpose.metrics import average_precision
from fastpose.models import UNet, save_model
from fastpose.pipeline import Segmenter
from fastpose.train.augment import augment_sample
from fastpose.train.data import from_arrays
from fastpose.train.loop import seg_loss
from fastpose.train.size_model import train_size_model

log = logging.getLogger("train_bundled")
_DATA = None  # inherited by forked workers


def is_val(name: str) -> bool:
    """Fixed held-out split: 10% of the images by a hash of their id."""
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 10 == 0


def load_dsb(folder: Path):
    sample_id = sample_paths()[0].name.split("_")[1]
    tr, va = ([], [], []), ([], [], [])
    for p in sorted(folder.glob("*_img.tif")):
        name = p.name[:-len("_img.tif")]
        if name == sample_id:
            continue  # the bundled sample image stays out of training and validation
        img = read_image(p).astype(np.float32)
        if img.ndim == 3:
            img = img[..., :3].mean(-1)  # RGB -> grey: the nuclei model takes one channel
        m = read_image(p.with_name(f"{name}_masks.tif"))
        dst = va if is_val(name) else tr
        dst[0].append(img)
        dst[1].append(m)
        dst[2].append(name)
    return tr, va


def _gen(args):
    seed, n, diam_mean, tile = args
    rng = np.random.default_rng(seed)
    d = _DATA
    xs, fs, ms = [], [], []
    for _ in range(n):
        i = int(rng.integers(len(d.images)))
        x, f, m, _ = augment_sample(d.images[i], d.flows[i], d.masks[i], rng, diameter=d.diameters[i],
                                    diam_mean=diam_mean, tile=tile)
        xs.append(x.astype(np.float16))
        fs.append(f.astype(np.float16))
        ms.append((m > 0).astype(np.uint8))
    return np.stack(xs), np.stack(fs), np.stack(ms)


def lr_at(frac: float, lr: float) -> float:
    if frac < 0.05:
        return lr * max(frac / 0.05, 0.02)
    if frac < 0.7:
        return lr
    return lr / 2.0 ** (int((frac - 0.7) / 0.06) + 1)


def train_timed(data, diam_mean: float, minutes: float, device: torch.device, nbase, batch: int = 8,
                workers: int = 8, seed: int = 0, lr: float = 0.2, compile_backend: str = ""):
    global _DATA
    _DATA = data
    torch.manual_seed(seed)
    net = UNet(nbase=nbase, diam_mean=diam_mean).to(device)
    cl = device.type == "cuda"  # channels-last: cuDNN's tensor-core convolutions want NHWC
    if cl:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-5)
    # torch.compile fuses batch-norm / ReLU / residual adds into the convolutions for the training step (the
    # first steps pay for the compilation inside the time budget); the plain module is what gets saved
    fwd = torch.compile(net, backend=compile_backend, dynamic=False) if compile_backend else net
    amp = device.type == "cuda"
    ctx = mp.get_context("fork")
    budget = minutes * 60.0
    t0 = time.time()
    steps = seen = 0
    waited = 0.0  # seconds spent waiting on the augmentation workers (tells whether the data side is the limit)
    losses: list = []  # mean loss of every 200 steps
    recent: list = []
    torch.backends.cudnn.benchmark = True
    with ctx.Pool(workers) as pool:
        pending = [pool.apply_async(_gen, ((seed * 100003 + k, 32, diam_mean, 224),)) for k in range(3 * workers)]
        k = len(pending)
        while time.time() - t0 < budget:
            tw = time.time()
            x, f, m = pending.pop(0).get()
            waited += time.time() - tw
            pending.append(pool.apply_async(_gen, ((seed * 100003 + k, 32, diam_mean, 224),)))
            k += 1
            for b in range(0, len(x), batch):
                frac = (time.time() - t0) / budget
                for g in opt.param_groups:
                    g["lr"] = lr_at(frac, lr)
                xb = torch.from_numpy(x[b:b + batch]).to(device).float()
                if cl:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                fb = torch.from_numpy(f[b:b + batch]).to(device).float()
                mb = torch.from_numpy(m[b:b + batch]).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    y, _ = fwd(xb)
                loss = seg_loss(y, fb, mb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                seen += len(xb)
                recent.append(loss.detach())  # no host sync per step: read back every 200 steps
                if steps % 200 == 0:
                    losses.append(float(torch.stack(recent).mean()))
                    recent = []
                    log.info("%.0fs step %d (%.0f samples/s) loss %.4f lr %.4f, %.0f%% of the time waiting for data",
                             time.time() - t0, steps, seen / (time.time() - t0), losses[-1],
                             opt.param_groups[0]["lr"], 100 * waited / (time.time() - t0))
    net.eval()
    return net, {"steps": steps, "samples": seen, "seconds": round(time.time() - t0, 1),
                 "data_wait_seconds": round(waited, 1),
                 "final_loss": losses[-1] if losses else None}


def score(net, meta, images, masks, diameters, device):
    net.fastpose_meta = meta
    seg = Segmenter(net, device=device.type)
    out = {}
    for mode in ("label_diameter", "estimated_diameter"):
        preds = []
        for img, d in zip(images, diameters):
            preds.append(seg.segment(img, channel_axis=0, normalize=False,
                                     diameter=d if mode == "label_diameter" else None).masks)
        ap, tp, fp, fn = average_precision(list(masks), preds, [0.5, 0.75, 0.9])
        TP, FP, FN = tp.sum(0), fp.sum(0), fn.sum(0)
        out[mode] = {"ap50_mean": float(ap[:, 0].mean()), "ap75_mean": float(ap[:, 1].mean()),
                     "ap90_mean": float(ap[:, 2].mean()),
                     "error_rate50_pooled": float((FN[0] + FP[0]) / max(TP[0] + FN[0], 1))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", choices=["nuclei", "cyto"])
    p.add_argument("--data", default="../shared/data/dsb2018/train", help="DSB 2018 folder (nuclei)")
    p.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget")
    p.add_argument("--out", default="python/fastpose/weights", help="output folder")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--nbase", type=int, nargs="+", default=[2, 32, 64, 128, 256])
    p.add_argument("--batch", type=int, default=8, help="crops per SGD step (Cellpose: 8)")
    p.add_argument("--lr", type=float, default=0.2, help="peak SGD learning rate (Cellpose: 0.2)")
    p.add_argument("--compile", default="", metavar="BACKEND",
                   help="torch.compile the training step with this backend (inductor on a GPU; aot_eager for a "
                        "quick check); default: eager")
    p.add_argument("--limit", type=int, default=0, help="use only this many training images (smoke tests)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.which == "nuclei":
        (ti, tm, tn), (vi, vm, vn) = load_dsb(Path(args.data))
        if args.limit:
            ti, tm, vi, vm = ti[:args.limit], tm[:args.limit], vi[:max(2, args.limit // 4)], vm[:max(2, args.limit // 4)]
        diam_mean, source = 17.0, f"DSB 2018 stage-1 train ({len(ti)} train / {len(vi)} held-out images)"
    else:
        from fastpose.synthetic_cells import make_cyto_dataset
        n = args.limit or 400
        ds = make_cyto_dataset(n + n // 8, (256, 256), seed=0)
        ti, tm = [d[0] for d in ds[:n]], [d[1] for d in ds[:n]]
        vi, vm = [d[0] for d in ds[n:]], [d[1] for d in ds[n:]]
        diam_mean, source = 30.0, f"synthetic cells, fastpose.synthetic_cells ({len(ti)} train / {len(vi)} held-out)"
    train = from_arrays(ti, tm, nchan=2)
    val = from_arrays(vi, vm, nchan=2)
    log.info("%s: %d train, %d val images; diam_labels %.1f", args.which, len(train), len(val), train.diam_labels)
    net, info = train_timed(train, diam_mean, args.minutes, device, args.nbase, batch=args.batch,
                            workers=args.workers, lr=args.lr, compile_backend=args.compile)
    net = net.to(memory_format=torch.contiguous_format)
    info.update(batch=args.batch, lr=args.lr, compile=args.compile or None)
    sm = train_size_model(net, train, n_epochs=2, device=device)
    meta = {"arch": net.arch() if hasattr(net, "arch") else {"type": "unet"}, "nchan": 2, "diam_mean": diam_mean,
            "size_model": sm}
    scores = score(net, meta, val.images, val.masks, val.diameters, device)
    card = {"model": args.which, "data": source, "diam_mean": diam_mean, "diam_labels": train.diam_labels,
            "nbase": args.nbase, "training": info, "device": torch.cuda.get_device_name() if device.type == "cuda"
            else "cpu", "validation": scores, "recipe": f"SGD lr {args.lr} momentum 0.9 wd 1e-5, 5% warm-up, halving every "
            "6% of the budget after 70%, bf16 autocast on GPU, " f"224 crops, batch {args.batch}, Cellpose augmentations"}
    log.info("validation: %s", json.dumps(scores))
    save_model(out / f"{args.which}.pth", net, {"diam_mean": diam_mean, "diam_labels": train.diam_labels,
                                                 "size_model": sm, "extra": {"card": card}}, half=True)
    tmp = out / f".{args.which}.json.tmp"
    tmp.write_text(json.dumps(card, indent=1))
    os.replace(tmp, out / f"{args.which}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
