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


def test_f1_and_seg_pooled_hand_computed():
    # image 1: true 1 matched by a prediction shifted by one column (12 px in common, IoU 12 / 20 = 0.6);
    #          true 2 missed; prediction 2 matches nothing
    t1, p1 = _img((0, 4, 0, 4), (10, 14, 10, 14)), _img((0, 4, 1, 5), (16, 18, 0, 2))
    # image 2: the prediction covers exactly half of the true object: IoU 0.5 is no match (IoU > 0.5 needed),
    #          and |P n G| / |G| = 0.5 is no SEG pair either (> 0.5 needed)
    t2, p2 = _img((0, 4, 0, 4)), _img((0, 4, 0, 2))
    # image 3: nothing at all
    t3 = p3 = np.zeros((20, 20), np.int32)
    # image 4: a 6x6 prediction holds the whole 4x4 true object: IoU 16 / 36 < 0.5 (no F1 match) but it covers
    #          all of it, so SEG counts its IoU
    t4, p4 = _img((1, 5, 1, 5)), _img((0, 6, 0, 6))
    r = metrics.f1_seg_pooled([t1, t2, t3, t4], [p1, p2, p3, p4])
    assert (r["tp"], r["fp"], r["fn"], r["n_true"], r["n_pred"], r["n_images"]) == (1, 3, 3, 4, 4, 4)
    assert r["f1"] == pytest.approx(2 * 1 / (2 * 1 + 3 + 3))
    assert r["seg_sum"] == pytest.approx(0.6 + 16 / 36)
    assert r["seg"] == pytest.approx((0.6 + 16 / 36) / 4)
    # pooled, not the mean of per-image values: image 1 alone has SEG 0.3 (seg_score), image 4 alone 16 / 36
    assert metrics.seg_score(t1, p1) == pytest.approx(0.3)
    assert metrics.f1_seg_pooled(t1, p1)["f1"] == pytest.approx(2 / 4)
    # at IoU >= 0.5 (average_precision's rule) image 2 would be a match; f1_seg_pooled is strict
    assert metrics.average_precision(t2, p2, [0.5])[1][0, 0] == 1 and metrics.f1_seg_pooled(t2, p2)["tp"] == 0
    # perfect, and empty everywhere
    perfect = metrics.f1_seg_pooled([t1, t4], [t1, t4])
    assert perfect["f1"] == 1.0 and perfect["seg"] == 1.0
    empty = metrics.f1_seg_pooled(t3, p3)
    assert empty["f1"] == 1.0 and np.isnan(empty["seg"])
    with pytest.raises(ValueError, match="2 true vs 1 predicted"):
        metrics.f1_seg_pooled([t1, t2], [p1])
    with pytest.raises(ValueError, match="threshold"):
        metrics.f1_seg_pooled(t1, p1, threshold=float("nan"))


def test_strict_matching_below_half_uses_the_optimal_assignment():
    # a 4x4 true object and two predictions, each exactly one half of it: IoU 8 / 16 = 0.5 each
    t = _img((0, 4, 0, 4))
    p = np.zeros((20, 20), np.int32)
    p[0:4, 0:2], p[0:4, 2:4] = 1, 2
    ov = metrics.overlap(t, p)
    assert metrics.true_positives(ov, 0.5) == 1                       # IoU >= 0.5: one of the two halves
    assert metrics.true_positives(ov, 0.5, strict=True) == 0          # IoU > 0.5: neither
    assert metrics.true_positives(ov, 0.4, strict=True) == 1          # one-to-one even below 0.5
