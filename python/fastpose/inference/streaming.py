"""The screen scheduler behind :meth:`Segmenter.segment_many`: images streamed through pooled network batches
with post-processing overlapped, for any model family.

* Preparation (loading, channel selection, normalisation) runs on a few threads a bounded window ahead.
* Consecutive 2D images of the same shape are stacked into a group whose tiles fill about one network batch.
* CPU: while the network runs on group k+1, a worker thread recovers the masks of group k (the native core
  releases the GIL).  GPU: the network of group k+1 is queued on the main stream before group k is
  post-processed on a side stream from the same host thread, so the GPU runs both at once.
* Only a couple of groups are held in memory, so an iterator of any length streams; results come in input
  order.  With ``return_errors`` an item that fails yields its exception and the stream goes on.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import os
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..transforms import LazyImage

__all__ = ["stream"]

log = logging.getLogger("fastpose.inference")

def _load(item: Any) -> Any:
    return item() if callable(item) else item


def stream(seg: Any, images: Iterable[Any], params: Dict[str, Any], return_errors: bool = False) -> Iterator[Any]:
    """Results of ``seg`` for each item of ``images`` (arrays or loaders), in order; see the module docstring.

    ``params`` are :meth:`Segmenter.segment`'s keyword arguments, all of them, already through
    :meth:`Segmenter.check_options` (:meth:`Segmenter.segment_many` checks them once, before the stream starts).
    """
    p = dict(params)
    # volume options, or a diameter to estimate per image: one image at a time
    if p.get("diameter") is None and not seg.estimates_diameter:
        p["diameter"] = 0.0
    per_image = bool(p.get("do_3D") or p.get("stitch_threshold")) or p.get("z_axis") is not None \
        or p.get("diameter") is None
    if per_image:
        yield from _one_by_one(seg, images, p, return_errors)
        return
    yield from _pooled(seg, images, p, return_errors)


def _one_by_one(seg: Any, images: Iterable[Any], p: Dict[str, Any], return_errors: bool) -> Iterator[Any]:
    for item in images:
        try:
            yield seg.segment_checked(_load(item), p)
        except Exception as e:  # noqa: BLE001  (reported per item when asked to)
            if not return_errors:
                raise
            yield e


def _pooled(seg: Any, images: Iterable[Any], p: Dict[str, Any], return_errors: bool) -> Iterator[Any]:
    options = {k: p[k] for k in ("flow_threshold", "cellprob_threshold", "min_size", "niter") if k in p}
    diameter = p["diameter"]
    rescale = seg.spec.rescale(diameter)
    augment, overlap, return_flows = p["augment"], p["tile_overlap"], p["return_flows"]
    on_gpu = seg.core_device == "cuda"
    side = torch.cuda.Stream() if on_gpu else None

    def prepare(item: Any) -> np.ndarray:
        image = _load(item)
        seg.check_input_size(image, p)  # the diameter's resized size, before anything is allocated
        return seg.prepare(image, p["channel_axis"], None, p["channels"], False, p["normalize"], p["invert"])

    def prepared() -> Iterator[Any]:
        # loading + channel selection + normalisation on a few threads (NumPy and tifffile release the GIL),
        # a bounded window ahead of the network so the CPU work overlaps the network's
        workers = max(1, min(4, (os.cpu_count() or 2) - 1))
        with cf.ThreadPoolExecutor(max_workers=workers) as pool:
            window: Deque[cf.Future] = collections.deque()

            def take() -> Any:
                fut = window.popleft()
                try:
                    return fut.result()
                except Exception as e:  # noqa: BLE001
                    if not return_errors:
                        raise
                    return e
            for item in images:
                window.append(pool.submit(prepare, item))
                if len(window) > 2 * workers:
                    yield take()
            while window:
                yield take()

    def groups() -> Iterator[Tuple[Optional[np.ndarray], List[Any]]]:
        # (stacked images or None, per-slot entries: None for an image of the stack, an exception otherwise)
        group: List[np.ndarray] = []
        slots: List[Any] = []
        for x in prepared():
            if isinstance(x, Exception):
                slots.append(x)
                continue
            if isinstance(x, LazyImage):  # over the memory budget: alone, never stacked (materialised)
                if group or slots:
                    yield np.stack(group) if group else None, slots
                    group, slots = [], []
                yield x, [None]
                continue
            if group and (x.shape != group[0].shape or len(group) >= seg.group_size(x.shape)):
                yield np.stack(group), slots
                group, slots = [], []
            group.append(x)
            slots.append(None)
        if group or slots:
            yield (np.stack(group) if group else None), slots

    def network(xb: Optional[np.ndarray]) -> Any:
        if xb is None:
            return None
        try:
            if isinstance(xb, LazyImage):  # one image by the bounded path: given a batch axis of one
                seg.restore_prepared(xb, diameter, overlap)  # (refused there with a restoration model)
                y, st = seg.maps(xb, rescale, augment, overlap)
                return y[None], (None if st is None else st[None]), None
            xin, restored = seg.restore_prepared(xb, diameter, overlap)  # (xb, None) without a restoration model
            return (*seg.maps(xin, rescale, augment, overlap), restored)
        except Exception as e:  # noqa: BLE001
            if not return_errors:
                raise
            return e

    def recover(out: Any, slots: List[Any]) -> List[Any]:
        results: List[Any] = []
        it = iter(range(0 if out is None or isinstance(out, Exception) else out[0].shape[0]))
        for slot in slots:
            if slot is not None:
                results.append(slot)
            elif isinstance(out, Exception):
                results.append(out)
            else:
                i = next(it)
                maps, st, restored = out
                try:
                    res = seg.recover(maps[i], None if st is None else st[i], rescale, diameter, options,
                                      return_flows)
                    if restored is not None:
                        res.outputs["restored"] = restored[i].cpu().numpy()
                    results.append(res)
                except Exception as e:  # noqa: BLE001
                    if not return_errors:
                        raise
                    results.append(e)
        return results

    def recover_on_side(out: Any, slots: List[Any], ready: Any) -> List[Any]:
        with torch.cuda.stream(side):
            side.wait_event(ready)
            return recover(out, slots)

    if on_gpu:
        held: Optional[Tuple[Any, List[Any], Any]] = None
        for xb, slots in groups():
            out = network(xb)
            ready = torch.cuda.Event()
            ready.record()
            if held is not None:
                yield from recover_on_side(*held)
            held = (out, slots, ready)
        if held is not None:
            yield from recover_on_side(*held)
        return
    with cf.ThreadPoolExecutor(max_workers=1) as pool:  # CPU: native mask recovery releases the GIL
        pending: Optional[cf.Future] = None
        for xb, slots in groups():
            out = network(xb)
            fut = pool.submit(recover, out, slots)
            if pending is not None:
                yield from pending.result()
            pending = fut
        if pending is not None:
            yield from pending.result()

