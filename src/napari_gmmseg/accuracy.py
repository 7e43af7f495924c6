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

import numpy as np

from napari_gmmseg.agreement import BlandAltman
from napari_gmmseg.errors import ModelError

__all__ = [
    "ACCURACY_PATH",
    "NOT_MEASURED",
    "ROI_SOURCES",
    "StatedAccuracy",
    "accuracy_note",
    "burden_readout",
    "load_stated_accuracy",
    "stated_accuracy_for",
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


def burden_readout(labels: np.ndarray, spacing_mm: Sequence[float]) -> str:
    """The clinical read-out of a MyoPS label map in one line.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label map.
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size in mm.

    Returns
    -------
    str
        LV myocardium (mL), scar and edema (mL and % of LV myocardium).
    """
    from napari_gmmseg.metrics import burden

    b = burden(labels, spacing_mm)
    if not b["myocardium_ml"] > 0:
        return "no LV myocardium labelled: no burden"

    def pct(v: float) -> str:
        return "n/a" if not math.isfinite(v) else f"{v:.1f} %"

    return (
        f"LV myocardium {b['myocardium_ml']:.1f} mL; scar {b['scar_ml']:.1f} mL "
        f"({pct(b['scar_pct'])} of LV myocardium); edema {b['edema_ml']:.1f} mL "
        f"({pct(b['edema_pct'])})"
    )
