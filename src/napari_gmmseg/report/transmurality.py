"""Scar transmurality along radial chords from the endocardium to the epicardium.

Each slice gets ``n_chords`` rays from its LV centre, evenly spaced in angle.
Every ray is sampled every ``step`` of the in-plane pixel size (nearest voxel).
The wall on a ray is its LV myocardium samples (200, 1220, 2221: from the
endocardium to the epicardium); the chord's transmurality is the share of them
that is scar (2221), in % of the wall thickness, so it lies in 0-100 %.
A segment's transmurality is the mean and the maximum over its chords that
hold scar (0 when none does); ``scar_extent_pct`` is the share of its chords
holding scar (circumferential extent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_gmmseg.labels import SCAR
from napari_gmmseg.report.orientation import MYOCARDIUM_VALUES, SliceFrame
from napari_gmmseg.report.segments import sector_of

__all__ = ["Chords", "chord_transmurality", "summarize_chords"]

#: Rays per slice (one per degree).
N_CHORDS: int = 360
#: Sampling step along a ray as a fraction of the smallest in-plane pixel size.
STEP_FRACTION: float = 0.25


@dataclass(frozen=True)
class Chords:
    """Radial chords of all slices, flattened: ``(N,)`` arrays.

    Attributes
    ----------
    z : numpy.ndarray
        Slice index of each chord.
    segment : numpy.ndarray
        AHA segment of the chord's angle (int16).
    wall_mm : numpy.ndarray
        Myocardium length along the chord (mm); 0 when the ray misses the wall.
    scar_pct : numpy.ndarray
        Scar share of the wall on the chord, 0-100 % (NaN when ``wall_mm == 0``).
    """

    z: np.ndarray
    segment: np.ndarray
    wall_mm: np.ndarray
    scar_pct: np.ndarray


def chord_transmurality(
    labels_zyx: np.ndarray,
    spacing_mm: Sequence[float],
    frames: Sequence[SliceFrame],
    levels: dict[int, str],
    hand: int,
    *,
    n_chords: int = N_CHORDS,
) -> Chords:
    """Sample ``n_chords`` rays per slice and measure the scar share of the wall on each."""
    sy, sx = float(spacing_mm[1]), float(spacing_mm[2])
    step = STEP_FRACTION * min(sy, sx)
    _, ny, nx = labels_zyx.shape
    theta = ((np.arange(n_chords, dtype=np.float32) + 0.5) * (2 * np.pi / n_chords)).astype(
        np.float32
    )  # AHA frame
    raw = hand * theta  # image-frame atan2(row, column)
    out_z, out_seg, out_wall, out_pct = [], [], [], []
    myo_all = np.isin(labels_zyx, MYOCARDIUM_VALUES)
    for f in frames:
        rr, cc = np.nonzero(myo_all[f.z])
        r_max = np.hypot((rr - f.centre_rc[0]) * sy, (cc - f.centre_rc[1]) * sx).max()
        radii = np.arange(step / 2, r_max + 2 * max(sy, sx), step, dtype=np.float32)  # (R,)
        rows = np.rint(f.centre_rc[0] + radii[None, :] * np.sin(raw)[:, None] / sy).astype(int)
        cols = np.rint(f.centre_rc[1] + radii[None, :] * np.cos(raw)[:, None] / sx).astype(int)
        inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
        lab = np.where(
            inside, labels_zyx[f.z][np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)], 0
        )
        n_myo = np.isin(lab, MYOCARDIUM_VALUES).sum(axis=1)
        n_scar = (lab == SCAR.value).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            pct = np.where(n_myo > 0, 100.0 * n_scar / n_myo, np.nan)
        out_z.append(np.full(n_chords, f.z, dtype=np.int32))
        out_seg.append(sector_of(theta, f.anchor_rad, levels[f.z]))
        out_wall.append(n_myo * step)
        out_pct.append(pct)
    if not frames:
        empty = np.zeros(0)
        return Chords(empty.astype(np.int32), empty.astype(np.int16), empty, empty)
    return Chords(
        np.concatenate(out_z),
        np.concatenate(out_seg),
        np.concatenate(out_wall).astype(np.float64),
        np.concatenate(out_pct).astype(np.float64),
    )


def summarize_chords(keys: np.ndarray, pct: np.ndarray, n_keys: int) -> dict[str, np.ndarray]:
    """Mean / max transmurality over scarred chords and % of chords with scar, per key.

    Parameters
    ----------
    keys : numpy.ndarray
        ``(N,)`` key of each chord (segment or slice), ``0..n_keys-1``.
    pct : numpy.ndarray
        ``(N,)`` chord transmurality in %, NaN for chords that miss the wall.
    n_keys : int
        Number of keys.

    Returns
    -------
    dict
        ``scar_transmurality_pct`` (mean), ``scar_transmurality_max_pct`` and
        ``scar_extent_pct``, each ``(n_keys,)``; NaN for keys without wall chords.
    """
    wall = np.isfinite(pct)
    scarred = wall & (pct > 0)
    n_wall = np.bincount(keys[wall], minlength=n_keys)[:n_keys]
    n_sc = np.bincount(keys[scarred], minlength=n_keys)[:n_keys]
    s_sc = np.bincount(keys[scarred], weights=pct[scarred], minlength=n_keys)[:n_keys]
    mx = np.zeros(n_keys)
    np.maximum.at(mx, keys[scarred], pct[scarred])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_sc > 0, s_sc / np.maximum(n_sc, 1), 0.0)
        extent = 100.0 * n_sc / n_wall
    none = n_wall == 0
    return {
        "scar_transmurality_pct": np.where(none, np.nan, mean),
        "scar_transmurality_max_pct": np.where(none, np.nan, mx),
        "scar_extent_pct": np.where(none, np.nan, extent),
    }
