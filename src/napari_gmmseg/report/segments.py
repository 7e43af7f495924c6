"""AHA 17-segment model: levels, segment map and per-segment / per-slice burden.

Rules (also in ``docs/report.md``):

* **Cap slices.**  Slices at the apical end that hold LV myocardium but no LV
  blood pool (500) are the apical cap: all their myocardium is segment 17.
  Segment 17 exists only when such a slice does.
* **Levels.**  The remaining LV slices, ordered base to apex, cover a slab
  split in thirds along the long axis; slice ``i`` of ``n`` (its centre at
  ``(i + 0.5) / n`` of the slab) is basal below 1/3, mid below 2/3, apical
  otherwise.  Three slices give one per level; two give basal and apical.
* **Sectors.**  Angles are measured counter-clockwise viewed from the apex
  from the septal anchor of :mod:`.orientation`.  Basal and mid levels have six
  60-degree sectors with the 2|3 (8|9) border on the anchor: 1 anterior,
  2 anteroseptal, 3 inferoseptal, 4 inferior, 5 inferolateral, 6 anterolateral
  (+6 at mid level).  The apical level has four 90-degree sectors, 14 (septal)
  centred on the anchor: 13 anterior, 14 septal, 15 inferior, 16 lateral.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_gmmseg.labels import BLOOD, EDEMA, SCAR
from napari_gmmseg.report.orientation import MYOCARDIUM_VALUES, SliceFrame, slice_angles

__all__ = [
    "LEVELS",
    "SEGMENT_LEVEL",
    "SEGMENT_NAMES",
    "SEPTAL_SEGMENTS",
    "assign_levels",
    "segment_map",
]

#: Level names, base to apex.
LEVELS: tuple[str, ...] = ("basal", "mid", "apical", "apex")
_WALLS6 = ("anterior", "anteroseptal", "inferoseptal", "inferior", "inferolateral", "anterolateral")
_WALLS4 = ("anterior", "septal", "inferior", "lateral")
#: AHA name of segments 1-17 (index 0 unused).
SEGMENT_NAMES: tuple[str, ...] = (
    "",
    *(f"basal {w}" for w in _WALLS6),
    *(f"mid {w}" for w in _WALLS6),
    *(f"apical {w}" for w in _WALLS4),
    "apex",
)
#: Level of segments 1-17 (index 0 unused).
SEGMENT_LEVEL: tuple[str, ...] = ("", *["basal"] * 6, *["mid"] * 6, *["apical"] * 4, "apex")
#: Segments of the interventricular septum.
SEPTAL_SEGMENTS: tuple[int, ...] = (2, 3, 8, 9, 14)
#: First segment number of each level and its sector count.
_LEVEL_FIRST = {"basal": (1, 6), "mid": (7, 6), "apical": (13, 4), "apex": (17, 1)}


def assign_levels(labels_zyx: np.ndarray, zs: Sequence[int], apex_last: bool) -> dict[int, str]:
    """Level of each slice ``zs`` (slices with myocardium) by the module rule."""
    order = sorted(int(z) for z in zs)
    if not apex_last:
        order = order[::-1]  # base first
    has_blood = (labels_zyx == BLOOD.value).any(axis=(1, 2))
    cap: list[int] = []
    for z in reversed(order):  # contiguous blood-free run at the apical end
        if has_blood[z]:
            break
        cap.append(z)
    ring = [z for z in order if z not in cap]
    n = len(ring)
    levels = {z: "apex" for z in cap}
    for i, z in enumerate(ring):
        levels[z] = LEVELS[min(int(3 * (i + 0.5) / n), 2)]
    return levels


def sector_of(theta: np.ndarray, anchor_rad: float, level: str) -> np.ndarray:
    """Segment number (int16) of AHA-frame angles ``theta`` (rad) on one level."""
    first, n = _LEVEL_FIRST[level]
    if n == 1:
        return np.full(np.shape(theta), first, dtype=np.int16)
    width = 2 * np.pi / n
    # offset so that the septal anchor is the 2|3 border (6 sectors) or 14's centre (4)
    offset = 2 * width if n == 6 else 1.5 * width
    phi = np.mod(theta - anchor_rad + offset, 2 * np.pi)
    k = np.minimum((phi // width).astype(np.int16), n - 1)
    return (first + k).astype(np.int16)


def segment_map(
    labels_zyx: np.ndarray,
    spacing_mm: Sequence[float],
    frames: Sequence[SliceFrame],
    levels: dict[int, str],
    hand: int,
) -> np.ndarray:
    """``(Z, Y, X)`` int16 map: AHA segment 1-17 on every LV myocardium voxel, 0 elsewhere."""
    out = np.zeros(labels_zyx.shape, dtype=np.int16)
    myo = np.isin(labels_zyx, MYOCARDIUM_VALUES)
    sp_yx = (float(spacing_mm[1]), float(spacing_mm[2]))
    for f in frames:
        theta, _ = slice_angles(labels_zyx.shape[1:], f.centre_rc, sp_yx, hand)
        seg = sector_of(theta, f.anchor_rad, levels[f.z])
        out[f.z] = np.where(myo[f.z], seg, 0)
    return out


def burden_by(
    labels_zyx: np.ndarray, keys_zyx: np.ndarray, n_keys: int, voxel_ml: float
) -> dict[str, np.ndarray]:
    """Myocardium, scar and edema mL per key ``0..n_keys-1`` (``bincount``, vectorised).

    ``keys_zyx`` holds the key of every voxel (negative = not counted).
    """
    keys = keys_zyx.ravel()
    lab = labels_zyx.ravel()
    myo = np.isin(lab, MYOCARDIUM_VALUES) & (keys >= 0)
    k = keys[myo]
    lab_m = lab[myo]

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(k[mask], minlength=n_keys)[:n_keys].astype(np.float64) * voxel_ml

    return {
        "myocardium_ml": count(np.ones_like(k, dtype=bool)),
        "scar_ml": count(lab_m == SCAR.value),
        "edema_ml": count(lab_m == EDEMA.value),
    }


def percent(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """``100 * part / whole``, NaN where ``whole`` is 0."""
    whole = np.asarray(whole, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(whole > 0, 100.0 * np.asarray(part) / whole, np.nan)
