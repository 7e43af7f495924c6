"""Metrics: Dice, Hungarian matching, HD95 and burden on synthetic label maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gmmseg import metrics
from napari_gmmseg.labels import CLASS_VALUES


def _phantom(shape=(4, 32, 32), seed=0) -> np.ndarray:
    """Random MyoPS label map with all four classes (and background, RV) in every slice."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([0, 600, *CLASS_VALUES]), size=shape).astype(np.int32)


def test_confusion_matrix_counts_every_pair():
    pred = np.array([[500, 500, 200, 0], [1220, 2221, 7, 500]])
    gt = np.array([[500, 200, 200, 0], [1220, 1220, 0, 600]])
    cm = metrics.confusion_matrix(pred, gt, CLASS_VALUES, CLASS_VALUES)
    assert cm.shape == (5, 5)
    assert cm.sum() == pred.size
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[0, 4] == 1  # 500 vs 500, 200, other(600)
    assert cm[3, 2] == 1 and cm[4, 4] == 2  # scar predicted on edema; 0/7 vs 0 background
    per = metrics.confusion_matrix(pred, gt, CLASS_VALUES, CLASS_VALUES, per_slice=True)
    assert per.shape == (2, 5, 5)
    np.testing.assert_array_equal(per.sum(axis=0), cm)


def test_dice_exact_values_and_groups():
    gt = np.zeros((1, 10, 10), np.int32)
    pred = np.zeros_like(gt)
    gt[0, :5] = 500  # 50 voxels
    pred[0, :4] = 500  # 40 voxels, all inside
    gt[0, 5:] = 200
    pred[0, 4:] = 200  # 60 voxels, 50 correct
    d = metrics.dice(pred, gt, [500, 200, 1220, (500, 200)])
    np.testing.assert_allclose(d[0], 2 * 40 / 90)
    np.testing.assert_allclose(d[1], 2 * 50 / 110)
    assert np.isnan(d[2])  # edema absent from both: NaN by default
    np.testing.assert_allclose(d[3], 1.0)  # the union is identical
    assert metrics.dice(pred, gt, [1220], empty=1.0)[0] == 1.0
    per = metrics.dice(pred, gt, [500], per_slice=True)
    assert per.shape == (1, 1)


def test_dice_one_sided_empty_is_zero():
    gt = np.full((1, 4, 4), 500)
    pred = np.full((1, 4, 4), 200)
    np.testing.assert_array_equal(metrics.dice(pred, gt, [500, 200]), [0.0, 0.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_recovers_arbitrary_permutation(seed):
    gt = _phantom(seed=seed)
    rng = np.random.default_rng(seed + 10)
    comps = rng.permutation(np.arange(7, 11))  # arbitrary component ids 7..10
    truth = dict(zip(comps.tolist(), CLASS_VALUES, strict=True))
    pred = np.full(gt.shape, -1, np.int64)
    for c, v in truth.items():
        pred[gt == v] = c
    m = metrics.match_components(pred, gt, background=-1)
    assert m.mapping == truth
    np.testing.assert_array_equal(m.apply(pred), np.where(np.isin(gt, CLASS_VALUES), gt, -1))
    np.testing.assert_allclose(np.diag(m.dice_matrix[np.argsort(m.assignment)][[1, 0, 2, 3]]), 1)
    # the same, slice by slice with a different permutation in every slice
    pred2 = np.full(gt.shape, -1, np.int64)
    for z in range(gt.shape[0]):
        perm = rng.permutation(4)
        for k, v in enumerate(CLASS_VALUES):
            pred2[z][gt[z] == v] = perm[k]
    matched, assign = metrics.match_slices(pred2, gt, background=-1, components=range(4))
    np.testing.assert_array_equal(matched, np.where(np.isin(gt, CLASS_VALUES), gt, -1))
    assert assign.shape == (gt.shape[0], 4)


def test_matching_is_optimal_where_greedy_is_not():
    # component A overlaps blood best, but giving A to myocardium maximises the total
    gt = np.zeros((1, 1, 100), np.int32)
    gt[0, 0, :50] = 500
    gt[0, 0, 50:] = 200
    pred = np.zeros_like(gt)
    pred[0, 0, :30] = 1  # A: 30 blood
    pred[0, 0, 30:50] = 2  # B: 20 blood ...
    pred[0, 0, 50:100] = 2  # ... and 50 myocardium
    m = metrics.match_components(pred, gt, classes=[500, 200])
    # greedy by best single pair would give B->200 (2*50/150=0.67) then A->500 (0.75):
    # total 1.42; Hungarian finds the same or better
    total = sum(m.dice_matrix[i, [500, 200].index(v)] for i, v in enumerate(m.assignment) if v != 0)
    assert total == pytest.approx(max(2 * 30 / 80 + 2 * 50 / 120, 2 * 0 / 100 + 2 * 20 / 120))
    assert m.mapping == {1: 500, 2: 200}


def test_empty_prediction_scores_zero_and_matching_still_defined():
    gt = _phantom()
    pred = np.zeros_like(gt)
    m = metrics.match_components(pred, gt, components=CLASS_VALUES)
    assert sorted(m.mapping.values()) == sorted(CLASS_VALUES)
    np.testing.assert_array_equal(metrics.dice(m.apply(pred), gt), np.zeros(4))
    rows = metrics.evaluate_labels(pred, gt, (8.0, 1.0, 1.0))
    vol = [r for r in rows if r["level"] == "volume" and r["class"] in ("scar", "edema")]
    assert all(r["dice"] == 0.0 and r["pred_ml"] == 0.0 for r in vol)


def test_class_missing_in_ground_truth_is_excluded_not_zero():
    gt = _phantom()
    gt[gt == 1220] = 200  # no edema anywhere
    pred = gt.copy()
    rows = metrics.evaluate_labels(pred, gt, (8.0, 1.0, 1.0))
    edema = [r for r in rows if r["class"] == "edema"]
    assert edema and all(np.isnan(r["dice"]) for r in edema)
    assert not any(r["all_classes"] for r in rows)
    others = [r for r in rows if r["class"] != "edema"]
    assert all(r["dice"] == 1.0 for r in others)
    # an empty predicted component is matched to the absent class, not to a present one
    m = metrics.match_components(pred, gt, components=CLASS_VALUES)
    assert m.mapping == {v: v for v in CLASS_VALUES}


def test_more_components_than_classes_many_to_one():
    gt = _phantom(seed=3)
    # split every class into two components: ids 2k and 2k+1 by column parity
    parity = (np.indices(gt.shape)[2] % 2).astype(np.int64)
    pred = np.full(gt.shape, -1, np.int64)
    for k, v in enumerate(CLASS_VALUES):
        pred[gt == v] = 2 * k + parity[gt == v]
    one = metrics.match_components(pred, gt, background=-1)
    assert len(one.mapping) == 4  # one-to-one: 4 of the 8 components matched
    assert np.all(metrics.dice(one.apply(pred), gt) < 0.75)
    many = metrics.match_components(pred, gt, background=-1, many_to_one=True)
    assert many.mapping == {2 * k + p: v for k, v in enumerate(CLASS_VALUES) for p in (0, 1)}
    np.testing.assert_allclose(metrics.dice(many.apply(pred), gt), 1.0)
    matched, _ = metrics.match_slices(pred, gt, background=-1, many_to_one=True)
    np.testing.assert_allclose(metrics.dice(matched, gt), 1.0)


def test_burden_volumes_exact_with_known_spacing():
    spacing = (10.0, 1.25, 1.5)  # voxel = 18.75 mm^3
    lab = np.zeros((3, 20, 20), np.int32)
    lab[0, :10, :10] = 500  # 100
    lab[0, 10:, :] = 200  # 200
    lab[1, :4, :5] = 2221  # 20
    lab[1, 4:8, :5] = 1220  # 20
    lab[1, 8:14, :10] = 200  # 60
    lab[2] = 600  # RV: not counted
    b = metrics.burden(lab, spacing)
    v = 18.75 / 1000.0
    assert b["blood_ml"] == pytest.approx(100 * v)
    assert b["healthy_ml"] == pytest.approx(260 * v)
    assert b["scar_ml"] == pytest.approx(20 * v)
    assert b["edema_ml"] == pytest.approx(20 * v)
    assert b["myocardium_ml"] == pytest.approx(300 * v)
    assert b["scar_pct"] == pytest.approx(100 * 20 / 300)
    ps = metrics.burden(lab, spacing, per_slice=True)
    np.testing.assert_allclose(ps["scar_pct"][:2], [0.0, 20.0])
    assert np.isnan(ps["scar_pct"][2])  # no myocardium in slice 2
    np.testing.assert_allclose(ps["myocardium_ml"].sum(), b["myocardium_ml"])


def test_hd95_in_mm_uses_spacing():
    gt = np.zeros((1, 20, 20), np.int32)
    pred = np.zeros_like(gt)
    gt[0, 5:10, 5:10] = 500
    pred[0, 7:12, 5:10] = 500  # shifted by 2 rows (y)
    h = metrics.hd95(pred, gt, [500, 2221], (5.0, 3.0, 1.0), per_slice=True)
    assert h.shape == (1, 2)
    assert h[0, 0] == pytest.approx(6.0)  # 2 voxels * 3 mm
    assert np.isnan(h[0, 1])  # empty class


def test_evaluate_labels_rows_volume_and_slices():
    gt = _phantom()
    gt[2] = 0  # an empty slice is left out
    pred = gt.copy()
    rows = metrics.evaluate_labels(pred, gt, (8.0, 1.0, 1.0), with_hd95=True)
    slices = {r["slice"] for r in rows if r["level"] == "slice"}
    assert slices == {0, 1, 3}
    vol = [r for r in rows if r["level"] == "volume"]
    assert [r["class"] for r in vol] == [name for name, _ in metrics.EVAL_GROUPS]
    assert all(r["dice"] == 1.0 and r["dice_named"] == 1.0 for r in vol)
    assert all(r["pred_ml"] == r["gt_ml"] for r in vol)
    assert all(r["hd95_mm"] == 0.0 for r in vol)


def test_myops_scores_known_overlaps():
    """Per case scar and scar ∪ edema Dice, the MyoPS 2020 challenge's scores, on known counts."""
    gt = np.zeros((2, 10, 10), np.int32)
    pred = np.zeros_like(gt)
    gt[0, :5] = 200  # 50 healthy myocardium
    gt[0, 5:8] = 1220  # 30 edema
    gt[1, :2] = 2221  # 20 scar, in another slice
    pred[0, :5] = 200
    pred[0, 5:8] = 2221  # the edema called scar: scar 0 TP, lesion right
    pred[1, :2] = 2221  # 20 scar right
    pred[1, 2:4] = 1220  # 20 edema where GT is background
    s = metrics.myops_scores(pred, gt)
    assert list(s) == ["scar_dice", "scar_edema_dice", "lv_myocardium_dice"]
    assert s["scar_dice"] == pytest.approx(2 * 20 / (50 + 20))  # one Dice over the whole case
    assert s["scar_edema_dice"] == pytest.approx(2 * 50 / (70 + 50))
    assert s["lv_myocardium_dice"] == pytest.approx(2 * 100 / (120 + 100))
    # ROI: predictions outside it are background
    roi = np.ones(gt.shape, bool)
    roi[1, 2:4] = False
    assert metrics.myops_scores(pred, gt, roi=roi)["scar_edema_dice"] == pytest.approx(1.0)


def test_myops_scores_empty_regions():
    gt = np.zeros((1, 6, 6), np.int32)
    gt[0, :3] = 200
    healthy = metrics.myops_scores(gt.copy(), gt)  # no scar, no edema anywhere
    assert np.isnan(healthy["scar_dice"]) and np.isnan(healthy["scar_edema_dice"])
    assert healthy["lv_myocardium_dice"] == 1.0
    assert metrics.myops_scores(gt.copy(), gt, empty=1.0)["scar_dice"] == 1.0
    pred = gt.copy()
    pred[0, 0, 0] = 2221  # scar called where there is none: 0, not undefined
    s = metrics.myops_scores(pred, gt)
    assert s["scar_dice"] == 0.0 and s["scar_edema_dice"] == 0.0


def _swapped_lesion_case() -> tuple[np.ndarray, np.ndarray]:
    """One slice: 60 healthy, 20 scar, 20 edema; the prediction names scar and edema swapped."""
    gt = np.zeros((1, 10, 10), np.int32)
    gt[0, :6], gt[0, 6:8], gt[0, 8:] = 200, 2221, 1220
    pred = gt.copy()
    pred[0, 6:8], pred[0, 8:] = 1220, 2221
    return pred, gt


def test_evaluate_labels_scar_edema_rows_and_matched_burden():
    pred, gt = _swapped_lesion_case()
    pred[0, 9, :5] = 200  # 5 edema pixels missed: burden differs between named and matched
    rows = metrics.evaluate_labels(pred, gt, (2.0, 1.0, 1.0))
    vol = {r["class"]: r for r in rows if r["level"] == "volume"}
    assert vol["scar"]["dice_named"] == 0.0 and vol["scar"]["dice"] == 1.0
    lesion = vol[metrics.SCAR_EDEMA_NAME]
    assert lesion["dice_named"] == pytest.approx(2 * 35 / (35 + 40))  # named = matched: a union
    assert lesion["dice"] == pytest.approx(lesion["dice_named"])
    # the MyoPS scores are these volume rows
    s = metrics.myops_scores(pred, gt)
    assert s["scar_dice"] == vol["scar"]["dice_named"]
    assert s["scar_edema_dice"] == pytest.approx(lesion["dice_named"])
    # burden: as named (scar 15 px) and matched (scar 20 px), 2 mm³ voxels, LV myo 100 px
    assert vol["scar"]["pred_ml"] == pytest.approx(15 * 2 / 1000)
    assert vol["scar"]["pred_ml_matched"] == pytest.approx(20 * 2 / 1000)
    assert vol["scar"]["pred_pct"] == pytest.approx(15.0)
    assert vol["scar"]["pred_pct_matched"] == pytest.approx(20.0)
    assert vol["edema"]["pred_pct_matched"] == pytest.approx(15.0)
    assert lesion["pred_pct"] == pytest.approx(35.0) and lesion["gt_pct"] == pytest.approx(40.0)
    assert lesion["pred_ml"] == pytest.approx(35 * 2 / 1000)
    assert np.isnan(vol["myocardium"]["pred_pct_matched"])  # % only for scar / edema / lesion
