"""Per-segment burden error of a segmentation against a manual mask (``evaluate --segments``).

Both maps are measured on the **manual mask's** sectors: its slice frames (LV
centre, septal anchor from its RV blood pool) and levels are reused for the
segmentation (:func:`napari_gmmseg.report.compute_report` with ``reference``), so
an error is a burden difference in the same piece of the heart, not a
different segmentation of the ring.  Errors are segmentation minus manual.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SEGMENT_ERROR_COLUMNS", "segment_errors", "write_segment_errors"]

_QUANTITIES = (
    "myocardium_ml",
    "scar_ml",
    "edema_ml",
    "scar_pct",
    "edema_pct",
    "scar_transmurality_pct",
)
#: Columns of ``segments.csv`` written by ``evaluate --segments``.
SEGMENT_ERROR_COLUMNS: tuple[str, ...] = (
    "case",
    "method",
    "segment",
    "name",
    "level",
    *(f"{k}_{q}" for q in _QUANTITIES for k in ("pred", "gt", "error")),
)


def segment_errors(
    pred_zyx: np.ndarray, gt_zyx: np.ndarray, spacing_mm: Sequence[float], affine: np.ndarray
) -> list[dict[str, Any]]:
    """One row per AHA segment present in the manual mask: pred, gt and error per quantity.

    Parameters
    ----------
    pred_zyx, gt_zyx : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label maps (segmentation, manual mask) on one grid.
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size in mm.
    affine : numpy.ndarray
        4x4 NIfTI affine of the grid.
    """
    from napari_gmmseg.report.case import compute_report

    gt = compute_report(gt_zyx, spacing_mm, affine)
    pred = compute_report(pred_zyx, spacing_mm, affine, reference=gt)
    rows = []
    for g, p in zip(gt.segments, pred.segments, strict=True):
        if not g["present"]:
            continue
        row: dict[str, Any] = {"segment": g["segment"], "name": g["name"], "level": g["level"]}
        for q in _QUANTITIES:
            pv, gv = float(p[q]), float(g[q])
            row[f"pred_{q}"], row[f"gt_{q}"] = pv, gv
            row[f"error_{q}"] = pv - gv if math.isfinite(pv) and math.isfinite(gv) else math.nan
        rows.append(row)
    return rows


def write_segment_errors(
    outcomes: Iterable[Any],
    sources: Iterable[Any],
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> tuple[Path, dict[str, dict[str, float]]]:
    """Per-segment errors of every (case, method) label map against the case's mask.

    Parameters
    ----------
    outcomes : iterable of napari_gmmseg.batch.CaseOutcome
        Evaluation outcomes (failed ones and cases without a mask are skipped).
    sources : iterable of napari_gmmseg.io.CaseSource
        The dataset's cases (their ``mask`` files).
    path : path-like
        CSV to write (:data:`SEGMENT_ERROR_COLUMNS`, atomic).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    path : Path
    mae : dict
        ``method -> {"scar_pct": MAE, "edema_pct": MAE}`` over segments (points of %).
    """
    from napari_gmmseg.io import read_labels
    from napari_gmmseg.report.writer import write_csv_rows

    masks = {s.case_id: s.mask for s in sources if s.mask is not None}
    rows: list[dict[str, Any]] = []
    for o in outcomes:
        if o.status == "failed" or o.label_path is None or o.case_id not in masks:
            continue
        pred, geo = read_labels(o.label_path, with_geometry=True)
        gt = read_labels(masks[o.case_id])
        for r in segment_errors(pred, gt, geo.spacing_mm, geo.affine):
            rows.append({"case": o.case_id, "method": o.method, **r})
    out = write_csv_rows(rows, SEGMENT_ERROR_COLUMNS, path, overwrite=overwrite)
    mae: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        mae[method] = {
            q: float(np.nanmean([abs(r[f"error_{q}"]) for r in mine]))
            for q in ("scar_pct", "edema_pct")
        }
    return out, mae
