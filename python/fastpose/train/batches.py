"""Training batches: which crops each step sees, and where they are augmented (inline or on workers).

Every batch is a pure function of the seed and its position: epoch ``e`` visits the images in the order
``default_rng([seed, 0, e])`` draws, and batch ``k`` (counted over the whole run) is augmented with
``default_rng([seed, 1, k])``.  So the same seed gives the same batches whether they are made inline or
on a pool of worker processes/threads ahead of the step, and a resumed run needs only the epoch to
continue exactly.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from dataclasses import dataclass
from multiprocessing.pool import ThreadPool
from typing import Deque, Iterator, Optional, Tuple

import numpy as np

from .augment import augment_sample, sam_augment
from .data import TrainData

__all__ = ["BatchMaker", "Task", "epoch_order", "batch_tasks", "make_batch", "iter_batches", "auto_workers"]

Batch = Tuple[np.ndarray, np.ndarray, np.ndarray]
Task = Tuple[int, int, np.ndarray]  #: (epoch, batch index over the run, image indices)


def auto_workers() -> int:
    """Augmentation workers for ``workers="auto"``: the CPU count less two (the training process and its
    data loading), at least one."""
    return max(1, (os.cpu_count() or 2) - 2)


def make_batch(data: TrainData, idx: np.ndarray, rng: np.random.Generator, *, diam_mean: float, tile: int,
               scale_range: float, rescale: bool, sam: bool) -> Batch:
    """Augmented crops of images ``idx``: (x [B, C, T, T], flows [B, 2, T, T], masks [B, T, T])."""
    xs, fs, ms = [], [], []
    for i in idx:
        x, f, m, _ = augment_sample(data.images[i], data.flows[i], data.masks[i], rng, diameter=data.diameters[i],
                                    diam_mean=diam_mean, tile=tile, scale_range=scale_range, rescale=rescale)
        if sam:
            x = sam_augment(x, rng)
        xs.append(x)
        fs.append(f)
        ms.append(m)
    return np.stack(xs), np.stack(fs), np.stack(ms)


@dataclass
class BatchMaker:
    """Makes batch ``k`` of image indices ``idx`` (picklable, so it can be sent to spawned workers)."""

    data: TrainData
    diam_mean: float
    tile: int
    scale_range: float
    rescale: bool
    sam: bool
    seed: int

    def __call__(self, k: int, idx: np.ndarray) -> Batch:
        rng = np.random.default_rng([self.seed, 1, k])
        return make_batch(self.data, idx, rng, diam_mean=self.diam_mean, tile=self.tile,
                          scale_range=self.scale_range, rescale=self.rescale, sam=self.sam)


def epoch_order(seed: int, epoch: int, n_images: int, n_per_epoch: int) -> np.ndarray:
    """Image indices of epoch ``epoch``: ``n_per_epoch`` draws, without replacement when they fit."""
    rng = np.random.default_rng([seed, 0, epoch])
    return rng.choice(n_images, n_per_epoch, replace=n_per_epoch > n_images)


def batch_tasks(seed: int, n_images: int, n_per_epoch: int, batch_size: int, start_epoch: int = 0,
                end_epoch: Optional[int] = None) -> Iterator[Task]:
    """(epoch, batch index, image indices) of every step from ``start_epoch`` to ``end_epoch`` (None:
    without end, for a time budget).  The last batch of an epoch may be smaller."""
    per_epoch = -(-n_per_epoch // batch_size)
    e = start_epoch
    while end_epoch is None or e < end_epoch:
        order = epoch_order(seed, e, n_images, n_per_epoch)
        for j, b in enumerate(range(0, n_per_epoch, batch_size)):
            yield e, e * per_epoch + j, order[b:b + batch_size]
        e += 1


# --- worker side -------------------------------------------------------------------------------------

_MAKER: Optional[BatchMaker] = None  # set in each worker process by _init (inherited, not copied, under fork)


def _init(maker: BatchMaker) -> None:
    global _MAKER
    _MAKER = maker
    import torch

    torch.set_num_threads(1)  # one intra-op thread per worker process: the pool is the parallelism


def _run(k: int, idx: np.ndarray) -> Batch:
    assert _MAKER is not None
    return _MAKER(k, idx)


def iter_batches(maker: BatchMaker, tasks: Iterator[Task], workers: int = 0, worker_type: str = "process",
                 prefetch: Optional[int] = None) -> Iterator[Tuple[int, int, Batch]]:
    """Yield ``(epoch, batch index, batch)`` for each task, in order.

    ``workers=0`` makes each batch inline when it is asked for.  Otherwise a pool of ``workers``
    processes (``worker_type="process"``: forked where the platform can fork, else spawned, each receiving
    the training data once) or threads (``"thread"``) keeps ``prefetch`` batches (default
    ``3 * workers``) in flight ahead of the consumer.  The batches are identical in every case.
    """
    if worker_type not in ("process", "thread"):
        raise ValueError(f"worker_type must be 'process' or 'thread', got {worker_type!r}")
    if workers <= 0:
        for e, k, idx in tasks:
            yield e, k, maker(k, idx)
        return
    depth = max(1, int(prefetch if prefetch is not None else 3 * workers))
    if worker_type == "thread":
        pool, func = ThreadPool(workers), maker
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool, func = ctx.Pool(workers, initializer=_init, initargs=(maker,)), _run
    pending: Deque = deque()
    try:
        for task in tasks:
            pending.append((task[0], task[1], pool.apply_async(func, (task[1], task[2]))))
            if len(pending) >= depth:
                e, k, res = pending.popleft()
                yield e, k, res.get()
        while pending:
            e, k, res = pending.popleft()
            yield e, k, res.get()
    finally:
        pool.terminate()
        pool.join()
