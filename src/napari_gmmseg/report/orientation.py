"""Orientation of short-axis slices: apex end, handedness, LV centre and RV insertion points.

Rules (written once here and in ``docs/report.md``):

* **Apex end.**  The LV long axis points from the base to the apex towards the
  patient's left, anterior and inferior: ``APEX_RAS = (-1, 1, -1) / sqrt(3)`` in
  NIfTI RAS world coordinates.  When the slice axis of the affine is within 45
  degrees of that line (``|a_z . APEX_RAS| >= 0.7``, true of a scanner
  short-axis stack: 0.90-1.00 on the 15 MyoPS development cases) its sign says
  which end is the apex.  Otherwise (an axis-aligned affine, 0.58, often a
  placeholder, or a synthetic one: 0.15-0.43 on the phantom) the
  anatomy decides: the LV and RV cross-sections (labels 500, 200, 1220, 2221 and
  600) shrink towards the apex, so a negative slope of a least-squares line of
  their area against slice index puts the apex at the last slice.
  ``apex="first"`` or ``"last"`` overrides both.
* **Handedness.**  AHA segments are numbered counter-clockwise *as viewed from
  the apex* (looking from the apex towards the base).  That is a positive
  rotation about the base-to-apex axis ``u``.  With the NIfTI affine columns
  ``a_x`` (column axis), ``a_y`` (row axis) and ``a_z`` (slice axis) in world
  (RAS) mm, the angle ``atan2(row, column)`` turns counter-clockwise from the
  apex when ``(a_x x a_y) . u > 0``, i.e. ``hand = sign(det A) * (+1 if the
  apex is at the last slice else -1)``.  Every angle below is measured in that
  frame, ``theta = hand * atan2(dy_mm, dx_mm)``, so it increases in the AHA
  numbering direction whatever the voxel order of the file.
* **RV insertion points.**  LV myocardium within ``contact_mm`` of the RV blood
  pool (600) forms the RV/LV contact arc.  Going counter-clockwise (viewed from
  the apex), the arc begins at the **anterior** insertion point and ends at the
  **inferior** one (anterior -> anteroseptal -> inferoseptal -> inferior is the
  AHA order).  The arc is the circle minus its largest angular gap without
  contact (1 degree bins).
* **Septal anchor.**  The septal centre is the bisector of the two insertion
  points; it is the border of segments 2|3 and 8|9 and the centre of segment
  14.  A single user point (``--rv-insertion``) is read as the *anterior*
  insertion point; the anchor is then 60 degrees counter-clockwise of it (the
  AHA 2002 septum spans 120 degrees).  Per slice: the slice's own RV contact
  arc, else the user's point, else the anchor of the nearest slice that has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_gmmseg.errors import OrientationError
from napari_gmmseg.labels import LV_ROI_VALUES, RV

__all__ = [
    "MYOCARDIUM_VALUES",
    "SliceFrame",
    "apex_at_last",
    "handedness",
    "orient_slices",
    "slice_angles",
]

#: Label values counted as LV myocardium (healthy, edema, scar).
MYOCARDIUM_VALUES: tuple[int, ...] = (200, 1220, 2221)
#: Default distance (mm) from the RV blood pool within which myocardium touches the RV.
CONTACT_MM: float = 3.0
#: Septal span (degrees) between the insertion points assumed for a single user point.
SEPTUM_DEG: float = 120.0
#: World (RAS) direction from the base to the apex: left, anterior, inferior.
APEX_RAS: np.ndarray = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3.0)
#: Smallest ``|cos|`` between the slice axis and ``APEX_RAS`` for the world rule.
WORLD_AXIS_MIN_COS: float = 0.7


@dataclass(frozen=True)
class SliceFrame:
    """Polar frame of one short-axis slice.

    Attributes
    ----------
    z : int
        Slice index in the label map.
    centre_rc : tuple of float
        LV centre ``(row, column)`` in voxel units (centroid of labels 500/200/1220/2221).
    anchor_rad : float
        Septal centre angle in the AHA frame (radians, counter-clockwise from the apex).
    source : str
        Where the anchor came from: ``"rv"``, ``"point"`` or ``"slice <k>"``.
    anterior_rad, inferior_rad : float
        Insertion-point angles (NaN unless ``source == "rv"``).
    """

    z: int
    centre_rc: tuple[float, float]
    anchor_rad: float
    source: str
    anterior_rad: float = float("nan")
    inferior_rad: float = float("nan")


def apex_at_last(
    labels_zyx: np.ndarray,
    apex: str = "auto",
    affine: np.ndarray | None = None,
    rv_zyx: np.ndarray | None = None,
) -> tuple[bool, str]:
    """Whether the apex is at the last slice, and the rule that said so (module docstring).

    Parameters
    ----------
    labels_zyx : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label map.
    apex : {"auto", "first", "last"}
        ``auto`` applies the world rule, else the anatomy rule; the others force the answer.
    affine : numpy.ndarray, optional
        4x4 NIfTI affine (world rule).
    rv_zyx : numpy.ndarray, optional
        ``(Z, Y, X)`` bool RV blood pool (default: label 600 of ``labels_zyx``).

    Returns
    -------
    apex_last : bool
    rule : str
        ``"given"``, ``"world axis"`` or ``"LV+RV area"``.
    """
    if apex not in ("auto", "first", "last"):
        raise ValueError(f"apex must be auto, first or last, not {apex!r}")
    if apex != "auto":
        return apex == "last", "given"
    if affine is not None:
        a_z = np.asarray(affine, dtype=np.float64)[:3, 2]
        cos = float(a_z @ APEX_RAS / max(np.linalg.norm(a_z), 1e-12))
        if abs(cos) >= WORLD_AXIS_MIN_COS:
            return cos > 0, "world axis"
    rv = (labels_zyx == RV.value) if rv_zyx is None else np.asarray(rv_zyx, dtype=bool)
    area = (np.isin(labels_zyx, LV_ROI_VALUES) | rv).sum(axis=(1, 2)).astype(np.float64)
    z = np.flatnonzero(np.isin(labels_zyx, LV_ROI_VALUES).any(axis=(1, 2)))
    if z.size < 2:
        return True, "LV+RV area"
    slope = np.polyfit(z.astype(np.float64), area[z], 1)[0]
    return bool(slope <= 0), "LV+RV area"


def handedness(affine: np.ndarray, apex_last: bool) -> int:
    """+1 when ``atan2(row, column)`` turns counter-clockwise viewed from the apex, else -1.

    Parameters
    ----------
    affine : numpy.ndarray
        4x4 NIfTI affine (voxel ``(x, y, z)`` -> RAS mm).
    apex_last : bool
        The apex lies towards increasing slice index.
    """
    det = float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))
    if det == 0.0:
        raise OrientationError("the affine is singular; the slice orientation is undefined")
    return int(np.sign(det)) * (1 if apex_last else -1)


def slice_angles(
    shape_yx: tuple[int, int],
    centre_rc: tuple[float, float],
    spacing_yx_mm: tuple[float, float],
    hand: int,
) -> tuple[np.ndarray, np.ndarray]:
    """AHA-frame angle (radians) and radius (mm) of every pixel of a slice, ``(Y, X)`` each."""
    rows = (np.arange(shape_yx[0], dtype=np.float32) - np.float32(centre_rc[0])) * np.float32(
        spacing_yx_mm[0]
    )
    cols = (np.arange(shape_yx[1], dtype=np.float32) - np.float32(centre_rc[1])) * np.float32(
        spacing_yx_mm[1]
    )
    dy, dx = rows[:, None], cols[None, :]
    theta = np.float32(hand) * np.arctan2(dy, dx)
    return theta.astype(np.float32), np.hypot(dy, dx).astype(np.float32)


def _contact_arc(theta: np.ndarray) -> tuple[float, float] | None:
    """Anterior and inferior insertion angles of contact pixels at angles ``theta`` (rad)."""
    if theta.size < 3:
        return None
    bins = np.floor(np.degrees(np.mod(theta, 2 * np.pi))).astype(np.int64) % 360
    occupied = np.zeros(360, dtype=bool)
    occupied[bins] = True
    idx = np.flatnonzero(occupied)
    # gap after each occupied bin up to the next one (circular)
    gaps = np.diff(np.concatenate([idx, idx[:1] + 360]))
    k = int(np.argmax(gaps))
    start = idx[(k + 1) % idx.size]  # first bin after the largest gap: anterior end
    end = idx[k]  # last bin before the gap: inferior end
    return np.radians(start), np.radians(end + 1)


def _wrap(angle: float) -> float:
    return float(np.angle(np.exp(1j * angle)))


def orient_slices(
    labels_zyx: np.ndarray,
    spacing_mm: Sequence[float],
    affine: np.ndarray,
    *,
    rv_insertion_xyz: Sequence[float] | None = None,
    rv_zyx: np.ndarray | None = None,
    apex: str = "auto",
    contact_mm: float = CONTACT_MM,
) -> tuple[list[SliceFrame], bool, int, str]:
    """Polar frame of every slice holding LV myocardium.

    Parameters
    ----------
    labels_zyx : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label map.
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size in mm.
    affine : numpy.ndarray
        4x4 NIfTI affine of the label map.
    rv_insertion_xyz : sequence of float, optional
        Anterior RV insertion point as voxel ``(x, y, z)`` = (column, row, slice), used
        on slices without RV blood pool.
    rv_zyx : numpy.ndarray, optional
        ``(Z, Y, X)`` bool RV blood pool from another map on the same grid (a manual
        mask), used when ``labels_zyx`` has no label 600 (a segmentation).
    apex : {"auto", "first", "last"}
        Apex end (see :func:`apex_at_last`).
    contact_mm : float
        Myocardium within this distance of the RV blood pool touches the RV.

    Returns
    -------
    frames : list of SliceFrame
        One per slice with myocardium, in slice order.
    apex_last : bool
        The apex is at the last slice.
    hand : int
        Handedness sign (:func:`handedness`).
    apex_rule : str
        The rule that fixed the apex end.

    Raises
    ------
    OrientationError
        No myocardium, or no slice with an RV blood pool and no user point.
    """
    from scipy.ndimage import distance_transform_edt

    labels_zyx = np.asarray(labels_zyx)
    rv_all = labels_zyx == RV.value
    if not rv_all.any() and rv_zyx is not None:
        rv_all = np.asarray(rv_zyx, dtype=bool)
        if rv_all.shape != labels_zyx.shape:
            raise OrientationError(
                f"the RV mask has shape {rv_all.shape}, the label map {labels_zyx.shape}"
            )
    apex_last, apex_rule = apex_at_last(labels_zyx, apex, affine, rv_all)
    hand = handedness(affine, apex_last)
    sp_yx = (float(spacing_mm[1]), float(spacing_mm[2]))
    myo = np.isin(labels_zyx, MYOCARDIUM_VALUES)
    lv = np.isin(labels_zyx, LV_ROI_VALUES)
    zs = np.flatnonzero(myo.any(axis=(1, 2)))
    if zs.size == 0:
        raise OrientationError("the label map holds no LV myocardium (200, 1220, 2221)")
    point_rc = None
    if rv_insertion_xyz is not None:
        if len(rv_insertion_xyz) != 3:
            raise OrientationError("the RV insertion point needs three coordinates x,y,z")
        point_rc = (float(rv_insertion_xyz[1]), float(rv_insertion_xyz[0]))
    partial: list[tuple[int, tuple[float, float], tuple[float, float] | None]] = []
    for z in zs:
        rr, cc = np.nonzero(lv[z])
        centre = (float(rr.mean()), float(cc.mean()))
        arc = None
        rv = rv_all[z]
        if rv.any():
            dist = distance_transform_edt(~rv, sampling=sp_yx)
            touch = myo[z] & (dist <= contact_mm)
            theta, _ = slice_angles(rv.shape, centre, sp_yx, hand)
            arc = _contact_arc(theta[touch])
        partial.append((int(z), centre, arc))
    with_arc = [p for p in partial if p[2] is not None]
    if not with_arc and point_rc is None:
        raise OrientationError(
            "no slice has LV myocardium touching an RV blood pool (label 600); "
            "give the anterior RV insertion point (--rv-insertion x,y,z)"
        )
    frames: dict[int, SliceFrame] = {}
    for z, centre, arc in partial:
        if arc is not None:
            ant, inf = arc
            span = np.mod(inf - ant, 2 * np.pi)
            frames[z] = SliceFrame(z, centre, _wrap(ant + span / 2), "rv", _wrap(ant), _wrap(inf))
        elif point_rc is not None:
            dy = (point_rc[0] - centre[0]) * sp_yx[0]
            dx = (point_rc[1] - centre[1]) * sp_yx[1]
            ant = hand * np.arctan2(dy, dx)
            frames[z] = SliceFrame(z, centre, _wrap(ant + np.radians(SEPTUM_DEG / 2)), "point")
    for z, centre, _arc in partial:
        if z not in frames:
            near = min(with_arc, key=lambda p: abs(p[0] - z))[0]
            frames[z] = SliceFrame(z, centre, frames[near].anchor_rad, f"slice {near}")
    return [frames[z] for z in sorted(frames)], apex_last, hand, apex_rule
