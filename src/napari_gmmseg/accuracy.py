"""What a burden from this tool is worth: the cross-validated error stated beside it.

A clinician segmenting a new case has no ground truth, so the scar and edema burden the
tool reports is the product, and its error is what the user needs next to it. The
package ships, for its default pipeline and each kind of ROI, the agreement of the
burden with manual labels measured **leave-one-case-out** on a labelled development set
(``napari_gmmseg/data/stated_accuracy.json``, written by
``python benchmarks/cv_quality.py DATASET --write-accuracy FILE``). The statement applies
only to the settings it was measured with (the method with its default options and the
shipped model, no extra presence rule, all three sequences, an LV ROI); for any other
setting :func:`stated_accuracy_for` returns None and the front ends say that no error
was measured.

The numbers are Bland-Altman statistics of the per-case burden (% of LV myocardium,
prediction minus manual): bias, 95 % limits of agreement and mean absolute error.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg.agreement import BlandAltman
from napari_gmmseg.errors import ModelError

__all__ = [
    "ACCURACY_PATH",
    "INTERVAL_KEYS",
    "NOT_MEASURED",
    "ROI_SOURCES",
    "BurdenSummary",
    "StatedAccuracy",
    "accuracy_note",
    "attach_interval",
    "burden_interval",
    "burden_readout",
    "burden_summary",
    "interval_from_residuals",
    "labels_summary",
    "load_stated_accuracy",
    "stated_accuracy_for",
    "stated_interval",
]

#: The shipped statements (one file, read once).
ACCURACY_PATH = Path(__file__).resolve().parent / "data" / "stated_accuracy.json"

#: ROI kinds a statement is measured for: ``manual`` (an LV ROI from a manual mask, the
#: development set's ground-truth blood pool + myocardium) and ``auto`` (the automatic ROI
#: found from bSSFP, :mod:`napari_gmmseg.autoroi`).
ROI_SOURCES: dict[str, str] = {"manual": "manual LV ROI", "auto": "automatic ROI"}

#: The sequences every statement was measured with.
_CHANNELS = ("bSSFP", "LGE", "T2")


@dataclass(frozen=True)
class StatedAccuracy:
    """Cross-validated agreement of one method's burden with manual labels.

    Attributes
    ----------
    method : str
        Registry name of the method (default options).
    roi : str
        A key of :data:`ROI_SOURCES`.
    dataset : str
        What it was measured on, in words (cases, source).
    protocol : str
        How (e.g. leave-one-case-out, what was re-learned per fold).
    n_cases : int
    scar_pct, edema_pct : BlandAltman
        Per-case burden (% of LV myocardium), prediction minus manual.
    scar_dice, lesion_dice : float
        Mean per-case scar Dice and scar ∪ edema Dice, labels as named (MyoPS 2020).
    command : str
        The command that measured it.
    residual_quantiles : mapping, optional
        ``{quantity: (q_low, q_high)}``: the 2.5 % and 97.5 % quantiles of the cross-validated
        per-case residuals (prediction minus manual, points of % LV myocardium) of
        ``scar_pct``, ``edema_pct`` and ``scar_edema_pct``, from which
        :func:`burden_interval` makes a 95 % interval.
    """

    method: str
    roi: str
    dataset: str
    protocol: str
    n_cases: int
    scar_pct: BlandAltman
    edema_pct: BlandAltman
    scar_dice: float
    lesion_dice: float
    command: str
    residual_quantiles: Mapping[str, Sequence[float]] | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> StatedAccuracy:
        """The entry of the JSON file (see :meth:`to_dict`)."""
        fields = dict(d)
        for key in ("scar_pct", "edema_pct"):
            fields[key] = BlandAltman(**fields[key])  # type: ignore[arg-type]
        return cls(**fields)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (the file's entry)."""
        out: dict[str, object] = dict(self.__dict__)
        out["scar_pct"] = self.scar_pct.to_dict()
        out["edema_pct"] = self.edema_pct.to_dict()
        return out

    def sentence(self) -> str:
        """The statement in words, for a summary line or a status label."""

        def part(name: str, ba: BlandAltman) -> str:
            return (
                f"{name} {ba.loa_low:+.0f} to {ba.loa_high:+.0f} points "
                f"(mean absolute error {ba.mae:.1f}, bias {ba.bias:+.1f})"
            )

        return (
            f"expected burden error ({self.method}, {ROI_SOURCES[self.roi]}; 95 % limits of "
            f"agreement, {self.protocol} on {self.dataset}): "
            f"{part('scar', self.scar_pct)}, {part('edema', self.edema_pct)}; "
            f"per-case scar Dice {self.scar_dice:.2f}, scar ∪ edema {self.lesion_dice:.2f}"
        )


@functools.lru_cache(maxsize=4)
def load_stated_accuracy(path: str | None = None) -> tuple[StatedAccuracy, ...]:
    """Every statement in ``path`` (default: the shipped :data:`ACCURACY_PATH`)."""
    text = Path(path or ACCURACY_PATH).read_text(encoding="utf-8")
    return tuple(StatedAccuracy.from_dict(e) for e in json.loads(text)["entries"])


def stated_accuracy_for(params: Mapping[str, object], roi: str | None) -> StatedAccuracy | None:
    """The statement that applies to a fit, or None when none was measured for it.

    Parameters
    ----------
    params : mapping
        ``Fit.params`` of the segmentation (``method``, ``method_options``, ``channels``
        and ``presence`` are read).
    roi : str or None
        A key of :data:`ROI_SOURCES`, or None (whole slices: no statement).

    Returns
    -------
    StatedAccuracy or None
        None unless the method ran with its default options (the shipped model), without
        a presence rule, on bSSFP, LGE and T2, in the kind of ROI of a statement.
    """
    from napari_gmmseg.methods import METHODS

    method = str(params.get("method", ""))
    if roi not in ROI_SOURCES or method not in METHODS:
        return None
    if tuple(params.get("channels") or ()) != _CHANNELS or params.get("presence"):
        return None
    spec = METHODS[method]
    given = dict(params.get("method_options") or {})  # type: ignore[call-overload]
    given.pop("spacing_mm", None)
    try:
        if spec.make_options(given) != spec.make_options({}):
            return None
    except ModelError:  # an option the registry no longer knows: not the measured setting
        return None
    if spec.family != "pipeline":
        defaults = _segment_defaults()
        if defaults is None or any(params.get(n) != v for n, v in defaults.items()):
            return None
    return next((s for s in load_stated_accuracy() if (s.method, s.roi) == (method, roi)), None)


#: What the front ends say where no statement applies.
NOT_MEASURED = "no burden error was measured for these settings (see docs/quality.md)"


def accuracy_note(params: Mapping[str, object], roi: str | None) -> str:
    """The statement that applies to a fit in words, or :data:`NOT_MEASURED`
    (see :func:`stated_accuracy_for`)."""
    accuracy = stated_accuracy_for(params, roi)
    return NOT_MEASURED if accuracy is None else accuracy.sentence()


#: Interval key (:data:`INTERVAL_KEYS`) -> the :func:`napari_gmmseg.metrics.burden` quantity
#: whose cross-validated residuals it is made from (``residual_quantiles`` keys).
INTERVAL_QUANTITIES = {
    "scar_pct": "scar_pct",
    "edema_pct": "edema_pct",
    "area_at_risk_pct": "scar_edema_pct",
}


def interval_from_residuals(
    value: float, q_low: float, q_high: float, spread_sd: float = 0.0
) -> tuple[float, float]:
    """A 95 % interval for the true burden given a predicted ``value``.

    The truth is ``value - residual``; with the residual between its cross-validated
    2.5 % and 97.5 % quantiles ``q_low`` and ``q_high`` (split-conformal), the interval is
    ``[value - q_high, value - q_low]``. ``spread_sd`` (the SD of the ensemble members'
    burdens) widens its half-width in quadrature, ``sqrt(w^2 + (1.96 sd)^2)``. Clipped to
    0-100 %.

    Examples
    --------
    >>> interval_from_residuals(20.0, -5.0, 7.0)
    (13.0, 25.0)
    """
    lo, hi = value - q_high, value - q_low
    half = (hi - lo) / 2.0
    extra = math.hypot(half, 1.96 * spread_sd) - half
    return max(0.0, lo - extra), min(100.0, hi + extra)


def stated_interval(
    params: Mapping[str, object],
    roi: str | None,
    labels: np.ndarray,
    spacing_mm: Sequence[float],
) -> dict[str, list[float]] | None:
    """95 % intervals of the burden of a fit, or None where no error was measured for it.

    Parameters
    ----------
    params : mapping
        ``Fit.params`` (the statement is looked up as in :func:`stated_accuracy_for`;
        ``member_burden``, the ensemble members' burdens, widens the interval).
    roi : str or None
        A key of :data:`ROI_SOURCES`.
    labels : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label map.
    spacing_mm : sequence of float

    Returns
    -------
    dict or None
        ``{key: [low, high]}`` for the keys of :data:`INTERVAL_KEYS` (% of LV myocardium),
        the format of ``Fit.params["burden_interval"]`` (:func:`burden_interval`).
    """
    from napari_gmmseg.metrics import burden

    accuracy = stated_accuracy_for(params, roi)
    if accuracy is None or not accuracy.residual_quantiles:
        return None
    b = burden(labels, spacing_mm)
    members = list(params.get("member_burden") or [])  # type: ignore[call-overload]
    out = {}
    for key, q in INTERVAL_QUANTITIES.items():
        if q not in accuracy.residual_quantiles or not math.isfinite(b[q]):
            continue
        sd = float(np.std([m[q] for m in members], ddof=1)) if len(members) > 1 else 0.0
        q_low, q_high = accuracy.residual_quantiles[q]
        out[key] = [round(v, 2) for v in interval_from_residuals(b[q], q_low, q_high, sd)]
    return out or None


def attach_interval(
    fit: Any, roi: str | None, spacing_mm: Sequence[float]
) -> dict[str, list[float]] | None:
    """Set and return ``fit.params["burden_interval"]`` (:func:`stated_interval`; None when
    no error was measured for the fit's settings)."""
    interval = stated_interval(fit.params, roi, fit.labels, spacing_mm)
    fit.params["burden_interval"] = interval
    return interval


def _segment_defaults() -> dict[str, object] | None:
    """The engine settings of :func:`napari_gmmseg.segment.segment` at their defaults (the
    one place they are written), as ``Fit.params`` records them; None when ``segment`` has
    been replaced by something without them (no statement can be checked then)."""
    import inspect

    from napari_gmmseg import segment as core

    sig = inspect.signature(core.segment).parameters
    names = ("n_classes", "covariance_type", "init", "tol", "max_iter", "per_slice")
    if not all(n in sig for n in names):
        return None
    return {name: sig[name].default for name in names}


#: Keys of ``Fit.params["burden_interval"]`` (a method that reports its uncertainty):
#: each maps to ``[low, high]``, the 95 % interval of that burden in % of LV myocardium.
INTERVAL_KEYS: tuple[str, ...] = ("scar_pct", "edema_pct", "area_at_risk_pct")


@dataclass(frozen=True)
class BurdenSummary:
    """The clinical read-out of one label map: what the docks, the CLI and the report show.

    Attributes
    ----------
    myocardium_ml, scar_ml, edema_ml : float
        LV myocardium (200 + 1220 + 2221), scar (2221) and edema (1220) volumes in mL.
    scar_pct, edema_pct : float
        Infarct size and edema in % of LV myocardium (NaN without myocardium).
    area_at_risk_pct : float
        Area at risk, scar ∪ edema, in % of LV myocardium.
    salvage_index : float
        Myocardial salvage index, (area at risk - infarct) / area at risk, 0-1 (NaN
        without an area at risk; :func:`napari_gmmseg.metrics.salvage_index`).
    interval : dict
        ``{key: (low, high)}`` 95 % intervals (% of LV myocardium) for the keys of
        :data:`INTERVAL_KEYS` the method reported; empty when it reports none.
    """

    myocardium_ml: float
    scar_ml: float
    edema_ml: float
    scar_pct: float
    edema_pct: float
    area_at_risk_pct: float
    salvage_index: float
    interval: dict[str, tuple[float, float]]

    @property
    def has_myocardium(self) -> bool:
        """Whether any LV myocardium is labelled (else there is no burden)."""
        return self.myocardium_ml > 0

    def pct(self, key: str, of: str = "") -> str:
        """``"12.3 %"`` or ``"12.3 % (95 % interval 8.1-15.0)"`` for a key of
        :data:`INTERVAL_KEYS` (``of``, e.g. ``" of LV myocardium"``, before the interval);
        ``"n/a"`` when not finite."""
        value = float(getattr(self, key))
        if not math.isfinite(value):
            return "n/a"
        text = f"{value:.1f} %{of}"
        if key in self.interval:
            lo, hi = self.interval[key]
            text += f" (95 % interval {lo:.1f}-{hi:.1f})"
        return text

    def salvage(self) -> str:
        """The salvage index in words (``"60 % of the area at risk"`` or ``"n/a"``)."""
        v = self.salvage_index
        return "n/a" if not math.isfinite(v) else f"{100 * v:.0f} % of the area at risk"

    def headline(self) -> str:
        """Scar and edema burden in one short line (the dock's large-type read-out)."""
        if not self.has_myocardium:
            return "no LV myocardium labelled: no burden"
        return f"scar {self.pct('scar_pct')}   edema {self.pct('edema_pct')}"

    def rows(self) -> list[tuple[str, str]]:
        """``(name, value)`` rows in the clinic's words, for tables and the report page."""
        if not self.has_myocardium:
            return [("burden", "no LV myocardium labelled")]
        return [
            ("infarct size (scar)", f"{self.pct('scar_pct')} · {self.scar_ml:.1f} mL"),
            ("edema", f"{self.pct('edema_pct')} · {self.edema_ml:.1f} mL"),
            ("area at risk (scar ∪ edema)", self.pct("area_at_risk_pct")),
            ("myocardial salvage index", self.salvage()),
            ("LV myocardium", f"{self.myocardium_ml:.1f} mL"),
        ]

    def line(self) -> str:
        """Everything in one line (the CLI's read-out)."""
        if not self.has_myocardium:
            return "no LV myocardium labelled: no burden"
        return (
            f"LV myocardium {self.myocardium_ml:.1f} mL; scar {self.scar_ml:.1f} mL, "
            f"{self.pct('scar_pct', ' of LV myocardium')}; edema {self.edema_ml:.1f} mL, "
            f"{self.pct('edema_pct')}; area at risk {self.pct('area_at_risk_pct')}; "
            f"salvage index {self.salvage()}"
        )


def burden_interval(params: Mapping[str, object] | None) -> dict[str, tuple[float, float]]:
    """The 95 % burden intervals a method put in ``Fit.params["burden_interval"]``.

    Returns ``{key: (low, high)}`` for the keys of :data:`INTERVAL_KEYS` present with two
    finite numbers; empty for a method that reports none (or a malformed entry).
    """
    raw = (params or {}).get("burden_interval")
    out: dict[str, tuple[float, float]] = {}
    if not isinstance(raw, Mapping):
        return out
    for key in INTERVAL_KEYS:
        pair = raw.get(key)
        try:
            lo, hi = (float(v) for v in pair)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            continue
        if math.isfinite(lo) and math.isfinite(hi):
            out[key] = (lo, hi)
    return out


def burden_summary(
    labels: np.ndarray, spacing_mm: Sequence[float], params: Mapping[str, object] | None = None
) -> BurdenSummary:
    """The clinical read-out of a MyoPS label map (the one place it is computed).

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label map.
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size in mm.
    params : mapping, optional
        ``Fit.params`` of the segmentation: its ``burden_interval``, when the method
        reports one, is carried along (:func:`burden_interval`).

    Returns
    -------
    BurdenSummary
    """
    from napari_gmmseg.metrics import burden, salvage_index

    b = burden(labels, spacing_mm)
    return BurdenSummary(
        myocardium_ml=b["myocardium_ml"],
        scar_ml=b["scar_ml"],
        edema_ml=b["edema_ml"],
        scar_pct=b["scar_pct"],
        edema_pct=b["edema_pct"],
        area_at_risk_pct=b["scar_edema_pct"],
        salvage_index=salvage_index(b["scar_pct"], b["scar_edema_pct"]),
        interval=burden_interval(params),
    )


def labels_summary(
    labels: np.ndarray, spacing_mm: Sequence[float], params: Mapping[str, object], roi: str | None
) -> BurdenSummary:
    """The read-out of the labels shown now (possibly edited) for the fit that made them.

    The stated interval (:func:`stated_interval`) is centred on these labels' burden, so a
    dock that follows edits shows the same numbers as a fresh ``segment`` of them would.
    """
    interval = stated_interval(params, roi, labels, spacing_mm)
    return burden_summary(labels, spacing_mm, {**params, "burden_interval": interval})


def burden_readout(
    labels: np.ndarray, spacing_mm: Sequence[float], params: Mapping[str, object] | None = None
) -> str:
    """The clinical read-out of a MyoPS label map in one line (:meth:`BurdenSummary.line`).

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label map.
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size in mm.
    params : mapping, optional
        ``Fit.params``; a reported ``burden_interval`` is shown beside each burden.

    Returns
    -------
    str
        LV myocardium (mL), scar and edema (mL and % of LV myocardium), area at risk and
        myocardial salvage index.
    """
    return burden_summary(labels, spacing_mm, params).line()
