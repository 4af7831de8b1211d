"""Metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from fastpose import metrics


def _img(*boxes, shape=(20, 20)):
    m = np.zeros(shape, np.int32)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        m[y0:y1, x0:x1] = k + 1
    return m


def test_perfect_and_empty():
    t = _img((0, 4, 0, 4), (10, 14, 10, 14))
    ap, tp, fp, fn = metrics.average_precision(t, t, [0.5, 0.9])
    assert ap.tolist() == [[1.0, 1.0]] and tp.tolist() == [[2, 2]]
    ap, *_ = metrics.average_precision(np.zeros((5, 5), int), np.zeros((5, 5), int))
    assert (ap == 1).all()
    ap, tp, fp, fn = metrics.average_precision(t, np.zeros_like(t), [0.5])
    assert ap[0, 0] == 0 and fn[0, 0] == 2 and fp[0, 0] == 0


def test_hand_computed_ap():
    # true: two 4x4 squares (16 px). pred: first shifted by one column (IoU 12/20 = 0.6), second missing,
    # plus one false positive.
    t = _img((0, 4, 0, 4), (10, 14, 10, 14))
    p = _img((0, 4, 1, 5), (16, 18, 0, 2))
    ap, tp, fp, fn = metrics.average_precision(t, p, [0.5, 0.6, 0.7])
    assert tp.tolist() == [[1, 1, 0]]
    assert fp.tolist() == [[1, 1, 2]] and fn.tolist() == [[1, 1, 2]]
    np.testing.assert_allclose(ap, [[1 / 3, 1 / 3, 0.0]])


def test_optimal_matching_below_half():
    # one true mask split evenly in two predictions: IoU 0.5 each; at threshold 0.3 only one may match
    t = _img((0, 4, 0, 8))
    p = _img((0, 4, 0, 4), (0, 4, 4, 8))
    ap, tp, fp, fn = metrics.average_precision(t, p, [0.3])
    assert tp[0, 0] == 1 and fp[0, 0] == 1 and fn[0, 0] == 0
    # two true masks, two predictions each overlapping both: Hungarian finds 2 matches
    t = _img((0, 4, 0, 4), (0, 4, 4, 8))
    p = _img((0, 4, 1, 5), (0, 4, 5, 8))
    _, tp, _, _ = metrics.average_precision(t, p, [0.4])
    assert tp[0, 0] == 2


def test_labels_need_not_be_sequential():
    t = _img((0, 4, 0, 4), (10, 14, 10, 14)) * 7
    p = _img((0, 4, 0, 4), (10, 14, 10, 14))
    ap, *_ = metrics.average_precision(t, p)
    assert (ap == 1).all()


def test_aji_and_seg_hand_computed():
    t = _img((0, 4, 0, 4), (10, 14, 10, 14))
    p = _img((0, 4, 1, 5), (16, 18, 0, 2))
    # AJI: true 1 matched to pred 1: C = 12, U = 20; true 2 unmatched: U += 16; pred 2 unused: U += 4
    assert metrics.aggregated_jaccard_index(t, p) == pytest.approx(12 / 40)
    # SEG: true 1 covered 12/16 > 0.5 by pred 1 -> J = 0.6; true 2 -> 0
    assert metrics.seg_score(t, p) == pytest.approx(0.3)


def test_evaluate_pooled_vs_mean_and_error_rate():
    t1 = _img((0, 4, 0, 4), (10, 14, 10, 14))
    t2 = _img((0, 4, 0, 4))
    p1 = t1.copy()
    p2 = np.zeros_like(t2)
    r = metrics.evaluate([t1, t2], [p1, p2], thresholds=[0.5])
    assert r["tp"] == [2] and r["fn"] == [1] and r["fp"] == [0]
    assert r["ap_pooled"][0] == pytest.approx(2 / 3)
    assert r["ap_mean"][0] == pytest.approx(0.5)
    assert r["error_rate_pooled"][0] == pytest.approx(1 / 3)
    assert r["f1_pooled"][0] == pytest.approx(4 / 5)


def test_many_masks_fast():
    yy, xx = np.indices((600, 600))
    t = ((yy // 6) * 100 + xx // 6 + 1).astype(np.int32)
    p = t.copy()
    p[:, :3] = 0
    ap, tp, fp, fn = metrics.average_precision(t, p, [0.5, 0.9])
    assert tp[0, 0] == 10000 and tp[0, 1] == 9900


def test_bad_inputs():
    with pytest.raises(ValueError):
        metrics.average_precision(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError):
        metrics.average_precision(np.zeros((3, 3), float), np.zeros((3, 3), int))
    with pytest.raises(ValueError):
        metrics.average_precision([np.zeros((3, 3), int)], [])
