"""Segmentation metrics: Dice, optimal label matching, HD95 and clinical burden.

Everything here is plain, vectorised numpy (confusion matrices come from one
:func:`numpy.bincount`; no Python loop visits pixels). MONAI is imported only
inside :func:`hd95`.

Conventions
-----------
* Label maps hold MyoPS values: 500 LV blood pool, 200 healthy myocardium,
  1220 edema, 2221 scar (:data:`napari_gmmseg.labels.CLASS_VALUES`); anything
  else (0, 600, ...) is *background* for these metrics.
* **LV myocardium** is healthy myocardium + edema + scar = values
  ``(200, 1220, 2221)`` (:data:`LV_MYOCARDIUM_VALUES`). Scar and edema burden are
  given in percent of this volume.
* **Empty classes.** Dice of a class absent from both the prediction and the
  ground truth is undefined: by default it is NaN and excluded from every mean
  (tables report how many values were excluded); pass ``empty=1.0`` to count it
  as perfect agreement instead. A class present in only one of them has Dice 0.
  HD95 is NaN whenever the class is empty in the prediction or in the ground truth.
* **Matching.** Unsupervised methods label their components in an arbitrary
  order. :func:`match_components` finds the assignment of predicted components
  to ground-truth classes that maximises the *total* Dice
  (:func:`scipy.optimize.linear_sum_assignment`, optimal, unlike a greedy
  order). A pair that is empty on both sides scores 1 for the matching only, so
  an empty component is paired with an absent class. With more components than
  classes and ``many_to_one=True``, every class first gets one component by the
  optimal assignment, then each remaining component (largest first) joins the
  class whose Dice it increases most. Otherwise unmatched components become
  background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_gmmseg.labels import CLASS_NAMES, CLASS_VALUES

#: MyoPS values that make up the LV myocardium (healthy + edema + scar).
LV_MYOCARDIUM_VALUES: tuple[int, ...] = (200, 1220, 2221)
#: Name of the LV myocardium composite in tables.
LV_MYOCARDIUM_NAME = "LV myocardium"
#: MyoPS values of the lesion, scar ∪ edema (the MyoPS 2020 challenge's second score).
SCAR_EDEMA_VALUES: tuple[int, ...] = (1220, 2221)
#: Name of the scar ∪ edema composite in tables and ``metrics.csv``.
SCAR_EDEMA_NAME = "scar+edema"
#: The four tissue classes plus the LV myocardium and scar ∪ edema composites, as (name, values).
EVAL_GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    *((name, (value,)) for name, value in zip(CLASS_NAMES, CLASS_VALUES, strict=True)),
    (LV_MYOCARDIUM_NAME, LV_MYOCARDIUM_VALUES),
    (SCAR_EDEMA_NAME, SCAR_EDEMA_VALUES),
)
#: Keys of :func:`myops_scores` and the label values each one scores.
MYOPS_SCORES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("scar_dice", (2221,)),
    ("scar_edema_dice", SCAR_EDEMA_VALUES),
    ("lv_myocardium_dice", LV_MYOCARDIUM_VALUES),
)

Group = int | Sequence[int]


# --------------------------------------------------------------------------- confusion
def _index_of(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Index of each voxel's value in ``values``; ``len(values)`` for any other value."""
    values = np.asarray(values, dtype=np.int64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    flat = np.asarray(labels).astype(np.int64, copy=False)
    pos = np.searchsorted(sorted_values, flat)
    pos = np.clip(pos, 0, max(len(values) - 1, 0))
    if len(values) == 0:
        return np.zeros(flat.shape, dtype=np.int64)
    hit = sorted_values[pos] == flat
    return np.where(hit, order[pos], len(values))


def confusion_matrix(
    pred: np.ndarray,
    gt: np.ndarray,
    pred_values: Sequence[int] = CLASS_VALUES,
    gt_values: Sequence[int] = CLASS_VALUES,
    *,
    per_slice: bool = False,
) -> np.ndarray:
    """Count voxels for every (predicted value, ground-truth value) pair.

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Label maps of the same shape; with ``per_slice`` the first axis is z.
    pred_values, gt_values : sequence of int
        Values that get a row / column. Every other value is counted in the last
        row / column ("other", i.e. background).
    per_slice : bool
        Return one matrix per index of the first axis.

    Returns
    -------
    numpy.ndarray
        ``(P + 1, G + 1)`` int64 counts, or ``(Z, P + 1, G + 1)`` with ``per_slice``.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    n_p, n_g = len(pred_values) + 1, len(gt_values) + 1
    code = _index_of(pred, pred_values) * n_g + _index_of(gt, gt_values)
    if not per_slice:
        return np.bincount(code.ravel(), minlength=n_p * n_g).reshape(n_p, n_g)
    n_z = pred.shape[0]
    code = code.reshape(n_z, -1) + (np.arange(n_z, dtype=np.int64) * (n_p * n_g))[:, None]
    return np.bincount(code.ravel(), minlength=n_z * n_p * n_g).reshape(n_z, n_p, n_g)


def _as_groups(labels: Sequence[Group]) -> list[tuple[int, ...]]:
    return [(int(g),) if np.isscalar(g) else tuple(int(v) for v in g) for g in labels]


def _dice_from_counts(tp, n_pred, n_gt, empty: float) -> np.ndarray:
    tp, n_pred, n_gt = (np.asarray(a, dtype=np.float64) for a in (tp, n_pred, n_gt))
    denom = n_pred + n_gt
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 2.0 * tp / denom
    return np.where(denom == 0, empty, d)


def group_counts(cm: np.ndarray, values: Sequence[int], groups: Sequence[Group]) -> np.ndarray:
    """True positives, predicted and ground-truth voxel counts of label groups.

    Parameters
    ----------
    cm : numpy.ndarray
        ``(..., V + 1, V + 1)`` confusion matrix over ``values`` for both axes
        (from :func:`confusion_matrix` with ``pred_values == gt_values == values``).
    values : sequence of int
        Values of the matrix rows / columns.
    groups : sequence of int or tuple of int
        A label value, or a tuple of values counted together (e.g. LV myocardium).

    Returns
    -------
    numpy.ndarray
        ``(..., len(groups), 3)`` int64: TP, predicted count, ground-truth count.
    """
    index = {int(v): i for i, v in enumerate(values)}
    out = np.empty((*cm.shape[:-2], len(groups), 3), dtype=np.int64)
    for j, group in enumerate(_as_groups(groups)):
        idx = [index[v] for v in group]
        out[..., j, 0] = cm[..., idx, :][..., :, idx].sum(axis=(-1, -2))
        out[..., j, 1] = cm[..., idx, :].sum(axis=(-1, -2))
        out[..., j, 2] = cm[..., :, idx].sum(axis=(-1, -2))
    return out


def dice(
    pred: np.ndarray,
    gt: np.ndarray,
    labels: Sequence[Group] = CLASS_VALUES,
    *,
    per_slice: bool = False,
    empty: float = np.nan,
) -> np.ndarray:
    """Dice coefficient ``2|P ∩ G| / (|P| + |G|)`` per label (or label group).

    Parameters
    ----------
    pred, gt : numpy.ndarray
        Label maps of the same shape (MyoPS values).
    labels : sequence of int or tuple of int
        Labels to score; a tuple scores the union of its values (e.g.
        :data:`LV_MYOCARDIUM_VALUES`).
    per_slice : bool
        Score every index of the first axis (z) separately.
    empty : float
        Value when a label is absent from both maps (NaN: excluded from means).

    Returns
    -------
    numpy.ndarray
        ``(L,)`` float64, or ``(Z, L)`` with ``per_slice``.
    """
    groups = _as_groups(labels)
    values = sorted({v for g in groups for v in g})
    cm = confusion_matrix(pred, gt, values, values, per_slice=per_slice)
    counts = group_counts(cm, values, groups)
    return _dice_from_counts(counts[..., 0], counts[..., 1], counts[..., 2], empty)


def myops_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    roi: np.ndarray | None = None,
    empty: float = np.nan,
) -> dict[str, float]:
    """The MyoPS 2020 challenge's per-case scores of one label map.

    The challenge ranks methods by the Dice of **scar** (2221) and of **scar ∪
    edema** (1220 ∪ 2221), each computed over the whole case (not averaged over
    slices). The LV myocardium Dice (200 ∪ 1220 ∪ 2221) is added for context.
    Scores are of the labels exactly as given: pass the map relabelled by
    :func:`match_slices` to score it "after matching".

    Parameters
    ----------
    pred, gt : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label maps of the same shape.
    roi : numpy.ndarray of bool, optional
        ``(Z, Y, X)``; predictions outside it are background (ground truth is taken whole).
    empty : float
        Dice when a region is absent from both maps (NaN: undefined, excluded
        from means; see the module notes).

    Returns
    -------
    dict of str to float
        ``scar_dice``, ``scar_edema_dice``, ``lv_myocardium_dice`` (:data:`MYOPS_SCORES`).
    """
    pred = np.asarray(pred)
    if roi is not None:
        pred = np.where(np.asarray(roi, dtype=bool), pred, 0)
    d = dice(pred, gt, [values for _, values in MYOPS_SCORES], empty=empty)
    return {key: float(v) for (key, _), v in zip(MYOPS_SCORES, d, strict=True)}


# --------------------------------------------------------------------------- matching
@dataclass
class Matching:
    """Assignment of predicted components to ground-truth classes.

    Attributes
    ----------
    components : numpy.ndarray
        ``(P,)`` predicted component values.
    classes : numpy.ndarray
        ``(G,)`` ground-truth class values.
    assignment : numpy.ndarray
        ``(P,)`` class value given to each component, ``background`` when unmatched.
    dice_matrix : numpy.ndarray
        ``(P, G)`` Dice of every component against every class (NaN when both empty).
    background : int
        Value given to unmatched components and to everything outside them.
    """

    components: np.ndarray
    classes: np.ndarray
    assignment: np.ndarray
    dice_matrix: np.ndarray
    background: int = 0
    counts: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), np.int64))

    @property
    def mapping(self) -> dict[int, int]:
        """``{component value: class value}`` of the matched components."""
        return {
            int(c): int(a)
            for c, a in zip(self.components, self.assignment, strict=True)
            if a != self.background
        }

    def apply(self, pred: np.ndarray) -> np.ndarray:
        """Relabel ``pred``: matched components get their class, all else ``background``."""
        lut = np.append(self.assignment, self.background).astype(np.int32)
        return lut[_index_of(pred, self.components)]


def _assign(cm: np.ndarray, many_to_one: bool) -> np.ndarray:
    """Class index (or -1) per component from a ``(P + 1, G + 1)`` confusion matrix."""
    inter = cm[:-1, :-1].astype(np.float64)
    n_pred = cm[:-1, :].sum(axis=1).astype(np.float64)
    n_gt = cm[:, :-1].sum(axis=0).astype(np.float64)
    score = _dice_from_counts(inter, n_pred[:, None], n_gt[None, :], 1.0)
    from scipy.optimize import linear_sum_assignment

    n_comp, n_cls = score.shape
    assign = np.full(n_comp, -1, dtype=np.int64)
    if n_comp == 0 or n_cls == 0:
        return assign
    rows, cols = linear_sum_assignment(score, maximize=True)
    assign[rows] = cols
    if many_to_one and n_comp > n_cls:
        tp = inter[rows, cols].copy()
        tp_all = np.zeros(n_cls)
        p_all = np.zeros(n_cls)
        tp_all[cols] = tp
        p_all[cols] = n_pred[rows]
        rest = np.flatnonzero(assign < 0)
        for j in rest[np.argsort(-n_pred[rest], kind="stable")]:  # loop over components only
            old = _dice_from_counts(tp_all, p_all, n_gt, 1.0)
            new = _dice_from_counts(tp_all + inter[j], p_all + n_pred[j], n_gt, 1.0)
            c = int(np.argmax(new - old))
            assign[j] = c
            tp_all[c] += inter[j, c]
            p_all[c] += n_pred[j]
    return assign


def _matching_inputs(
    pred: np.ndarray,
    classes: Sequence[int],
    components: Sequence[int] | None,
    roi: np.ndarray | None,
    background: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pred`` masked to ``roi``, the components to match (int64) and the classes (int64)."""
    pred = np.asarray(pred)
    if roi is not None:
        pred = np.where(np.asarray(roi, dtype=bool), pred, background)
    if components is None:
        components = np.unique(pred)
        components = components[components != background]
    components = np.asarray(components, dtype=np.int64)
    classes_arr = np.asarray(classes, dtype=np.int64)
    return pred, components, classes_arr


def match_components(
    pred: np.ndarray,
    gt: np.ndarray,
    classes: Sequence[int] = CLASS_VALUES,
    *,
    components: Sequence[int] | None = None,
    roi: np.ndarray | None = None,
    many_to_one: bool = False,
    background: int = 0,
) -> Matching:
    """Optimal (Hungarian) assignment of predicted components to ground-truth classes.

    Parameters
    ----------
    pred : numpy.ndarray
        Component map (any integers, e.g. ``Fit.components`` with ``background=-1``,
        or a label map with ``background=0``).
    gt : numpy.ndarray
        Ground-truth label map (MyoPS values), same shape.
    classes : sequence of int
        Ground-truth classes to match.
    components : sequence of int, optional
        Predicted values to match; default every value of ``pred`` other than
        ``background`` inside the ROI. Listing them lets an empty component be matched.
    roi : numpy.ndarray of bool, optional
        Only predictions inside it count (outside is background); ground truth is
        taken whole.
    many_to_one : bool
        With more components than classes, give the extra components to the class
        whose Dice they increase most instead of making them background.
    background : int
        Value of non-components in ``pred`` and of unmatched components in the output.

    Returns
    -------
    Matching
        The mapping maximising the total Dice, the Dice matrix, and ``apply``.
    """
    pred, components, classes_arr = _matching_inputs(pred, classes, components, roi, background)
    cm = confusion_matrix(pred, gt, components, classes_arr)
    assign = _assign(cm, many_to_one)
    inter = cm[:-1, :-1]
    dm = _dice_from_counts(inter, cm[:-1, :].sum(1)[:, None], cm[:, :-1].sum(0)[None, :], np.nan)
    values = np.where(assign >= 0, classes_arr[np.maximum(assign, 0)], background)
    return Matching(components, classes_arr, values, dm, background, cm)


def match_slices(
    pred: np.ndarray,
    gt: np.ndarray,
    classes: Sequence[int] = CLASS_VALUES,
    *,
    components: Sequence[int] | None = None,
    roi: np.ndarray | None = None,
    many_to_one: bool = False,
    background: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Match components to classes independently in every slice (first axis).

    Per-slice fits label their components independently, so the paper
    rearranges labels per image. Parameters are those of :func:`match_components`.

    Returns
    -------
    matched : numpy.ndarray
        ``pred`` relabelled with ground-truth class values (int32), slice by slice.
    assignment : numpy.ndarray
        ``(Z, P)`` class value of each component in each slice (``background`` if unmatched).
    """
    pred, components, classes_arr = _matching_inputs(pred, classes, components, roi, background)
    cm = confusion_matrix(pred, gt, components, classes_arr, per_slice=True)
    n_z = pred.shape[0]
    assign = np.stack([_assign(cm[z], many_to_one) for z in range(n_z)]) if n_z else None
    if assign is None:
        assign = np.zeros((0, len(components)), np.int64)
    values = np.where(assign >= 0, classes_arr[np.maximum(assign, 0)], background)
    lut = np.concatenate([values, np.full((n_z, 1), background)], axis=1).astype(np.int32)
    idx = _index_of(pred, components).reshape(n_z, -1)
    matched = np.take_along_axis(lut, idx, axis=1).reshape(pred.shape)
    return matched, values


# --------------------------------------------------------------------------- HD95
def hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    labels: Sequence[Group] = CLASS_VALUES,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    per_slice: bool = False,
    percentile: float = 95.0,
) -> np.ndarray:
    """95th-percentile symmetric Hausdorff distance in mm per label (MONAI).

    Parameters
    ----------
    pred, gt : numpy.ndarray
        ``(Z, Y, X)`` label maps.
    labels : sequence of int or tuple of int
        Labels (or unions of labels) to score.
    spacing_mm : sequence of float
        Voxel spacing ``(z, y, x)`` in mm.
    per_slice : bool
        2-D distances within each slice (in-plane spacing) instead of 3-D.
    percentile : float
        Percentile of the surface distances (95 for HD95).

    Returns
    -------
    numpy.ndarray
        ``(L,)`` or ``(Z, L)`` float64 mm; NaN where the label is empty in the
        prediction or in the ground truth.
    """
    import warnings

    from monai.metrics import compute_hausdorff_distance

    groups = _as_groups(labels)
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    p1 = np.stack([np.isin(pred, g) for g in groups])  # (L, Z, Y, X), one pass per label
    g1 = np.stack([np.isin(gt, g) for g in groups])
    if per_slice:
        p1, g1 = p1.transpose(1, 0, 2, 3), g1.transpose(1, 0, 2, 3)
        spacing = [float(s) for s in spacing_mm[1:]]
    else:
        p1, g1 = p1[None], g1[None]
        spacing = [float(s) for s in spacing_mm]
    empty = ~p1.any(axis=(2, 3) if per_slice else (2, 3, 4)) | ~g1.any(
        axis=(2, 3) if per_slice else (2, 3, 4)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compute_hausdorff_distance(
            p1, g1, include_background=True, percentile=percentile, spacing=spacing
        )
    out = np.asarray(out, dtype=np.float64)
    out[empty] = np.nan
    return out if per_slice else out[0]


# --------------------------------------------------------------------------- burden
#: Keys of :func:`burden`'s result.
BURDEN_KEYS: tuple[str, ...] = (
    "blood_ml",
    "healthy_ml",
    "edema_ml",
    "scar_ml",
    "myocardium_ml",
    "edema_pct",
    "scar_pct",
    "scar_edema_ml",
    "scar_edema_pct",
)


def burden(
    labels: np.ndarray, spacing_mm: Sequence[float], *, per_slice: bool = False
) -> dict[str, np.ndarray | float]:
    """Clinical volumes (mL) and scar / edema burden (% of LV myocardium).

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label map.
    spacing_mm : sequence of float
        Voxel spacing ``(z, y, x)`` in mm (slice thickness or slice spacing for z).
    per_slice : bool
        Give one value per slice instead of per volume.

    Returns
    -------
    dict
        ``blood_ml``, ``healthy_ml`` (200), ``edema_ml`` (1220), ``scar_ml`` (2221),
        ``myocardium_ml`` (LV myocardium = 200 + 1220 + 2221), ``edema_pct`` and
        ``scar_pct`` (100 · volume / LV myocardium volume; NaN without myocardium),
        ``scar_edema_ml`` and ``scar_edema_pct`` (their sum, the lesion).
        Floats, or ``(Z,)`` arrays with ``per_slice`` (:data:`BURDEN_KEYS`).
    """
    labels = np.asarray(labels)
    values = (500, 200, 1220, 2221)
    idx = _index_of(labels, values)
    if per_slice:
        n_z = labels.shape[0]
        code = idx.reshape(n_z, -1) + 5 * np.arange(n_z)[:, None]
        counts = np.bincount(code.ravel(), minlength=5 * n_z).reshape(n_z, 5)
    else:
        counts = np.bincount(idx.ravel(), minlength=5)
    ml = counts[..., :4] * (float(np.prod(np.asarray(spacing_mm, dtype=np.float64))) / 1000.0)
    myo = ml[..., 1] + ml[..., 2] + ml[..., 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        edema_pct = np.where(myo > 0, 100.0 * ml[..., 2] / myo, np.nan)
        scar_pct = np.where(myo > 0, 100.0 * ml[..., 3] / myo, np.nan)
    out = {
        "blood_ml": ml[..., 0],
        "healthy_ml": ml[..., 1],
        "edema_ml": ml[..., 2],
        "scar_ml": ml[..., 3],
        "myocardium_ml": myo,
        "edema_pct": edema_pct,
        "scar_pct": scar_pct,
        "scar_edema_ml": ml[..., 2] + ml[..., 3],
        "scar_edema_pct": edema_pct + scar_pct,
    }
    if not per_slice:
        out = {k: float(v) for k, v in out.items()}
    return out


def salvage_index(scar_pct: float, area_at_risk_pct: float) -> float:
    """Myocardial salvage index: the share of the area at risk that is not infarcted.

    Parameters
    ----------
    scar_pct : float
        Infarct size (scar, 2221) in % of LV myocardium.
    area_at_risk_pct : float
        Area at risk (scar ∪ edema, 2221 + 1220) in % of LV myocardium.

    Returns
    -------
    float
        ``(area at risk - infarct) / area at risk`` in 0-1; NaN without an area at risk.
    """
    aar, scar = float(area_at_risk_pct), float(scar_pct)
    if not (math.isfinite(aar) and math.isfinite(scar)) or aar <= 0:
        return float("nan")
    return max(0.0, (aar - scar) / aar)


# --------------------------------------------------------------------------- per case
#: Which burden value sits in the ``*_ml`` / ``*_pct`` columns of each group's rows.
_GROUP_ML = {
    "LV blood pool": "blood_ml",
    "myocardium": "healthy_ml",
    "edema": "edema_ml",
    "scar": "scar_ml",
    LV_MYOCARDIUM_NAME: "myocardium_ml",
    SCAR_EDEMA_NAME: "scar_edema_ml",
}
_GROUP_PCT = {"edema": "edema_pct", "scar": "scar_pct", SCAR_EDEMA_NAME: "scar_edema_pct"}


def evaluate_labels(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    roi: np.ndarray | None = None,
    with_hd95: bool = False,
    empty: float = np.nan,
    many_to_one: bool = False,
) -> list[dict]:
    """All metrics of one predicted label map against its ground truth, as table rows.

    The prediction is scored twice: *as named* by the method (``dice_named``, no
    ground truth used) and after optimal per-slice matching of its four class
    values to the ground-truth classes (``dice``, the paper's protocol). Per-volume
    rows use the slice-wise matched map. Volumes and burden are those of the
    prediction as named (``pred_ml``, ``pred_pct``) and of the matched map
    (``pred_ml_matched``, ``pred_pct_matched``), side by side with the ground
    truth. The volume rows of ``scar`` and ``scar+edema`` hold the MyoPS 2020
    per-case scores (:func:`myops_scores` of the named and the matched map).

    Parameters
    ----------
    pred, gt : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label maps.
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel spacing.
    roi : numpy.ndarray of bool, optional
        Predictions outside it are ignored (background).
    with_hd95 : bool
        Also compute HD95 in mm (slower; MONAI).
    empty : float
        Dice when a class is absent from both maps (NaN = excluded from means).
    many_to_one : bool
        Passed to :func:`match_slices`.

    Returns
    -------
    list of dict
        One row per (slice or volume, class) with keys ``level`` ("slice" or
        "volume"), ``slice`` (z index, -1 for volume), ``class``, ``dice``,
        ``dice_named``, ``hd95_mm`` (NaN unless asked), ``pred_ml``, ``gt_ml``,
        ``pred_pct``, ``gt_pct`` (edema, scar and scar+edema only; NaN otherwise),
        ``pred_ml_matched``, ``pred_pct_matched``, ``gt_present``,
        ``pred_present``, ``all_classes`` (the ground truth holds all four classes
        there, the paper's slice selection). Slices where both maps are empty are
        left out.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if roi is not None:
        pred = np.where(np.asarray(roi, dtype=bool), pred, 0)
    values = list(CLASS_VALUES)
    matched, _ = match_slices(pred, gt, values, components=values, many_to_one=many_to_one)
    names = [name for name, _ in EVAL_GROUPS]
    groups = [g for _, g in EVAL_GROUPS]
    rows: list[dict] = []
    for level in ("slice", "volume"):
        per_slice = level == "slice"
        cm_named = confusion_matrix(pred, gt, values, values, per_slice=per_slice)
        cm_match = confusion_matrix(matched, gt, values, values, per_slice=per_slice)
        c_named = group_counts(cm_named, values, groups)
        c_match = group_counts(cm_match, values, groups)
        d_named = _dice_from_counts(c_named[..., 0], c_named[..., 1], c_named[..., 2], empty)
        d_match = _dice_from_counts(c_match[..., 0], c_match[..., 1], c_match[..., 2], empty)
        b_pred = burden(pred, spacing_mm, per_slice=per_slice)
        b_gt = burden(gt, spacing_mm, per_slice=per_slice)
        b_match = burden(matched, spacing_mm, per_slice=per_slice)
        h = (
            hd95(matched, gt, groups, spacing_mm, per_slice=per_slice)
            if with_hd95
            else np.full(d_match.shape, np.nan)
        )
        if per_slice:
            gt_present = c_named[..., 2] > 0
            pred_present = c_named[..., 1] > 0
            keep = np.flatnonzero(gt_present.any(axis=1) | pred_present.any(axis=1))
            index = [(int(z), z) for z in keep]
        else:
            d_named, d_match, h = d_named[None], d_match[None], h[None]
            gt_present = (c_named[..., 2] > 0)[None]
            pred_present = (c_named[..., 1] > 0)[None]
            b_pred = {k: np.asarray([v]) for k, v in b_pred.items()}
            b_gt = {k: np.asarray([v]) for k, v in b_gt.items()}
            b_match = {k: np.asarray([v]) for k, v in b_match.items()}
            index = [(-1, 0)]
        for z, i in index:
            all_classes = bool(gt_present[i, :4].all())
            for j, name in enumerate(names):
                pct_key = _GROUP_PCT.get(name)
                rows.append(
                    {
                        "level": level,
                        "slice": z,
                        "class": name,
                        "dice": float(d_match[i, j]),
                        "dice_named": float(d_named[i, j]),
                        "hd95_mm": float(h[i, j]),
                        "pred_ml": float(b_pred[_GROUP_ML[name]][i]),
                        "gt_ml": float(b_gt[_GROUP_ML[name]][i]),
                        "pred_pct": float(b_pred[pct_key][i]) if pct_key else np.nan,
                        "gt_pct": float(b_gt[pct_key][i]) if pct_key else np.nan,
                        "pred_ml_matched": float(b_match[_GROUP_ML[name]][i]),
                        "pred_pct_matched": float(b_match[pct_key][i]) if pct_key else np.nan,
                        "gt_present": bool(gt_present[i, j]),
                        "pred_present": bool(pred_present[i, j]),
                        "all_classes": all_classes,
                    }
                )
    return rows
