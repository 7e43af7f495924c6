"""One case's AHA report: segment map, per-segment and per-slice tables, totals.

:func:`compute_report` is the one entry point the CLI, the napari dock and
``evaluate --segments`` call.  The rules live in :mod:`.orientation`,
:mod:`.segments` and :mod:`.transmurality`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_gmmseg.report.orientation import CONTACT_MM, SliceFrame, orient_slices
from napari_gmmseg.report.segments import (
    SEGMENT_LEVEL,
    SEGMENT_NAMES,
    assign_levels,
    burden_by,
    percent,
    segment_map,
)
from napari_gmmseg.report.transmurality import Chords, chord_transmurality, summarize_chords

__all__ = ["SEGMENT_COLUMNS", "SLICE_COLUMNS", "CaseReport", "compute_report"]

#: Columns of ``segments.csv`` (one row per AHA segment 1-17).
SEGMENT_COLUMNS: tuple[str, ...] = (
    "segment",
    "name",
    "level",
    "present",
    "myocardium_ml",
    "scar_ml",
    "edema_ml",
    "scar_pct",
    "edema_pct",
    "scar_transmurality_pct",
    "scar_transmurality_max_pct",
    "scar_extent_pct",
)
#: Columns of ``slices.csv`` (one row per slice with LV myocardium).
SLICE_COLUMNS: tuple[str, ...] = (
    "slice",
    "level",
    "orientation",
    "myocardium_ml",
    "scar_ml",
    "edema_ml",
    "scar_pct",
    "edema_pct",
    "scar_transmurality_pct",
    "scar_transmurality_max_pct",
)


@dataclass
class CaseReport:
    """AHA 17-segment report of one label map.

    Attributes
    ----------
    segments_zyx : numpy.ndarray
        ``(Z, Y, X)`` int16: segment 1-17 on every LV myocardium voxel, 0 elsewhere.
    segments : list of dict
        17 rows keyed by :data:`SEGMENT_COLUMNS` (mL, % of the segment, transmurality %).
    slices : list of dict
        One row per slice with myocardium, keyed by :data:`SLICE_COLUMNS`.
    totals : dict
        ``myocardium_ml``, ``scar_ml``, ``edema_ml``, ``scar_pct``, ``edema_pct`` of the case.
    frames : list of SliceFrame
        Orientation of each slice.
    apex_last : bool
        The apex is at the last slice.
    hand : int
        Handedness sign of the angles (see :mod:`.orientation`).
    chords : Chords
        The radial chords behind the transmurality numbers.
    """

    segments_zyx: np.ndarray
    segments: list[dict[str, Any]]
    slices: list[dict[str, Any]]
    totals: dict[str, float]
    frames: list[SliceFrame]
    apex_last: bool
    hand: int
    chords: Chords
    meta: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> np.ndarray:
        """``(17,)`` float array of one segment column, segment 1 first."""
        return np.array([np.nan if r[name] is None else r[name] for r in self.segments], float)


def _frames_from(
    reference: CaseReport, labels_zyx: np.ndarray
) -> tuple[list[SliceFrame], dict[int, str]]:
    """The reference's frames and levels on the slices of ``labels_zyx`` that hold myocardium."""
    from dataclasses import replace

    from napari_gmmseg.report.orientation import MYOCARDIUM_VALUES

    if not reference.frames:
        return [], {}
    ref = {f.z: f for f in reference.frames}
    ref_level = {s["slice"]: s["level"] for s in reference.slices}
    frames, levels = [], {}
    for z in np.flatnonzero(np.isin(labels_zyx, MYOCARDIUM_VALUES).any(axis=(1, 2))):
        near = min(ref, key=lambda k: abs(k - int(z)))
        frames.append(replace(ref[near], z=int(z)))
        levels[int(z)] = ref_level[near]
    return frames, levels


def compute_report(
    labels_zyx: np.ndarray,
    spacing_mm: Sequence[float],
    affine: np.ndarray,
    *,
    rv_insertion_xyz: Sequence[float] | None = None,
    rv_zyx: np.ndarray | None = None,
    apex: str = "auto",
    contact_mm: float = CONTACT_MM,
    reference: CaseReport | None = None,
) -> CaseReport:
    """AHA segments, burden and transmurality of a MyoPS label map.

    Parameters
    ----------
    labels_zyx : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label map (a segmentation or a manual mask).
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size in mm.
    affine : numpy.ndarray
        4x4 NIfTI affine (``Geometry.affine``): fixes the handedness.
    rv_insertion_xyz : sequence of float, optional
        Anterior RV insertion point, voxel ``(x, y, z)``, for slices without label 600.
    rv_zyx : numpy.ndarray, optional
        ``(Z, Y, X)`` bool RV blood pool from another map (the manual mask), used when
        ``labels_zyx`` holds no label 600 (segmentations do not).
    apex : {"auto", "first", "last"}
        Apex end of the stack (default: from the LV area trend).
    contact_mm : float
        RV contact distance in mm.
    reference : CaseReport, optional
        Reuse this report's slice frames, levels and handedness (the manual mask's,
        so a segmentation is measured on the same sectors); a slice the reference
        lacks takes the frame and level of its nearest reference slice.

    Returns
    -------
    CaseReport
    """
    labels_zyx = np.asarray(labels_zyx)
    if labels_zyx.ndim != 3:
        raise ValueError(f"labels must be (Z, Y, X), got shape {labels_zyx.shape}")
    if reference is None:
        frames, apex_last, hand, apex_rule = orient_slices(
            labels_zyx,
            spacing_mm,
            affine,
            rv_insertion_xyz=rv_insertion_xyz,
            rv_zyx=rv_zyx,
            apex=apex,
            contact_mm=contact_mm,
        )
        levels = assign_levels(labels_zyx, [f.z for f in frames], apex_last)
    else:
        frames, levels = _frames_from(reference, labels_zyx)
        apex_last, hand = reference.apex_last, reference.hand
        apex_rule = str(reference.meta.get("apex_rule", "reference"))
    seg = segment_map(labels_zyx, spacing_mm, frames, levels, hand)
    voxel_ml = float(np.prod(np.asarray(spacing_mm, dtype=np.float64))) / 1000.0
    chords = chord_transmurality(labels_zyx, spacing_mm, frames, levels, hand)

    per_seg = burden_by(labels_zyx, seg.astype(np.int64) - 1, 17, voxel_ml)
    tm_seg = summarize_chords(chords.segment.astype(np.int64) - 1, chords.scar_pct, 17)
    present = set(int(s) for s in np.unique(seg) if s > 0)
    segments = []
    for i in range(17):
        s = i + 1
        myo = per_seg["myocardium_ml"][i]
        row = {
            "segment": s,
            "name": SEGMENT_NAMES[s],
            "level": SEGMENT_LEVEL[s],
            "present": s in present,
            "myocardium_ml": float(myo),
            "scar_ml": float(per_seg["scar_ml"][i]),
            "edema_ml": float(per_seg["edema_ml"][i]),
            "scar_pct": float(percent(per_seg["scar_ml"][i], myo)),
            "edema_pct": float(percent(per_seg["edema_ml"][i], myo)),
        }
        row.update({k: float(v[i]) for k, v in tm_seg.items()})
        segments.append(row)

    nz = labels_zyx.shape[0]
    zkey = np.broadcast_to(np.arange(nz)[:, None, None], labels_zyx.shape)
    per_z = burden_by(labels_zyx, np.asarray(zkey, dtype=np.int64), nz, voxel_ml)
    tm_z = summarize_chords(chords.z.astype(np.int64), chords.scar_pct, nz)
    slices = []
    for f in frames:
        myo = per_z["myocardium_ml"][f.z]
        slices.append(
            {
                "slice": f.z,
                "level": levels[f.z],
                "orientation": f.source,
                "myocardium_ml": float(myo),
                "scar_ml": float(per_z["scar_ml"][f.z]),
                "edema_ml": float(per_z["edema_ml"][f.z]),
                "scar_pct": float(percent(per_z["scar_ml"][f.z], myo)),
                "edema_pct": float(percent(per_z["edema_ml"][f.z], myo)),
                "scar_transmurality_pct": float(tm_z["scar_transmurality_pct"][f.z]),
                "scar_transmurality_max_pct": float(tm_z["scar_transmurality_max_pct"][f.z]),
            }
        )
    tot = {k: float(v.sum()) for k, v in per_z.items()}
    tot["scar_pct"] = float(percent(tot["scar_ml"], tot["myocardium_ml"]))
    tot["edema_pct"] = float(percent(tot["edema_ml"], tot["myocardium_ml"]))
    meta = {
        "apex": "last slice" if apex_last else "first slice",
        "apex_rule": apex_rule,
        "handedness": hand,
    }
    return CaseReport(seg, segments, slices, tot, frames, apex_last, hand, chords, meta)
