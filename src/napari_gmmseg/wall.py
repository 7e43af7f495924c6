"""Stage 1 of the wall-first pipeline: split the LV ROI into blood pool and myocardial wall.

bSSFP-led and spatially regularised, per slice (:func:`split_wall`):

1. threshold bSSFP inside the ROI at Otsu's threshold (blood is about 2.5x brighter
   than myocardium on bSSFP, so the histogram of an LV ROI is bimodal);
2. open the bright set with a disk of :data:`OPEN_RADIUS_MM` (cuts thin bright bridges
   of partial volume and trabeculae) and keep the connected component with the most
   pixels within :data:`CENTRE_FRACTION` of the ROI's equivalent radius from the ROI
   centroid (the cavity sits in the middle of the LV);
3. fill holes (papillary muscles and trabeculae inside the cavity are blood pool in
   MyoPS masks) and close with the same disk;
4. keep the pool at least :data:`MIN_WALL_MM` inside the ROI border, so a wall ring
   always encloses it.

The wall is the ROI minus the pool. A slice without a bright central component
(apex) is all wall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_gmmseg.errors import RoiError

__all__ = [
    "CENTRE_FRACTION",
    "MIN_WALL_MM",
    "OPEN_RADIUS_MM",
    "RIM_MM",
    "T2_POOL_MAX",
    "WallSplit",
    "endocardial_rim",
    "split_wall",
]

#: Radius (mm) of the disk that opens and closes the blood pool: about two pixels at
#: MyoPS resolution, thinner than any compact myocardium yet wide enough to cut
#: one-pixel partial-volume bridges.
OPEN_RADIUS_MM: float = 1.5
#: The pool component must reach within this fraction of the ROI's equivalent radius
#: (sqrt(area / pi)) of the ROI centroid.
CENTRE_FRACTION: float = 0.5
#: The pool stays at least this far (mm) inside the ROI border: no myocardium is thinner
#: than ~2 mm, so the wall is a closed ring.
MIN_WALL_MM: float = 2.0
#: Pool pixels are at most this multiple of the ROI's T2 median: blood is T2-dark (about
#: half of myocardium), edema and scar T2-bright (about 1.3x), and the ROI median lies
#: near myocardium because the wall is more than half of most LV ROIs.
T2_POOL_MAX: float = 1.0
#: Width (mm) of the endocardial rim: wall pixels this close to the pool carry
#: blood/myocardium partial volume (about one and a half pixels at MyoPS resolution).
RIM_MM: float = 1.1


@dataclass
class WallSplit:
    """Blood pool and wall masks of a volume.

    Attributes
    ----------
    blood, wall : numpy.ndarray
        ``(Z, Y, X)`` bool, disjoint, union = ROI.
    threshold : numpy.ndarray
        ``(Z,)`` float64 bSSFP threshold per slice (NaN where the ROI is empty).
    """

    blood: np.ndarray
    wall: np.ndarray
    threshold: np.ndarray


def _disk(radius_px: float) -> np.ndarray:
    """Disk footprint of a radius in pixels, at least the 4-neighbour cross (radius 1)."""
    radius_px = max(float(radius_px), 1.0)
    r = int(np.floor(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy**2 + xx**2) <= radius_px**2 + 1e-9


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of a 1-D sample (vectorised over histogram bins)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _pool_of_slice(
    bright: np.ndarray, roi: np.ndarray, pixel_mm: float, disk: np.ndarray
) -> np.ndarray:
    """The blood pool of one slice from its bright pixels (steps 2-4 of the module docstring)."""
    from scipy import ndimage as ndi

    opened = ndi.binary_opening(bright, structure=disk)
    lab, n = ndi.label(opened)
    if n == 0:
        return np.zeros_like(roi)
    yy, xx = np.nonzero(roi)
    cy, cx = yy.mean(), xx.mean()
    r_eq = np.sqrt(roi.sum() / np.pi)
    gy, gx = np.ogrid[: roi.shape[0], : roi.shape[1]]
    central = (gy - cy) ** 2 + (gx - cx) ** 2 <= (CENTRE_FRACTION * r_eq) ** 2
    score = np.bincount(lab[central], minlength=n + 1)[1:]
    if score.max() == 0:
        return np.zeros_like(roi)
    pool = lab == (int(np.argmax(score)) + 1)
    pool = ndi.binary_fill_holes(ndi.binary_closing(pool, structure=disk))
    inner = ndi.binary_erosion(roi, structure=_disk(MIN_WALL_MM / pixel_mm), border_value=0)
    pool &= inner
    # keep one component after the clip
    lab, n = ndi.label(pool)
    if n > 1:
        pool = lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)
    return ndi.binary_fill_holes(pool)


def split_wall(
    bssfp: np.ndarray,
    roi: np.ndarray,
    spacing_mm: tuple[float, ...],
    t2: np.ndarray | None = None,
) -> WallSplit:
    """Split the ROI of every slice into blood pool and wall (module docstring).

    Parameters
    ----------
    bssfp : numpy.ndarray
        ``(Z, Y, X)`` bSSFP intensities.
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool LV ROI (blood pool + myocardium).
    spacing_mm : tuple of float
        ``(z, y, x)`` voxel spacing in mm (the in-plane mean sets the disk radii).
    t2 : numpy.ndarray, optional
        ``(Z, Y, X)`` T2 on the same grid: pixels above :data:`T2_POOL_MAX` x the slice's
        ROI median of T2 are never pool (blood is T2-dark, edema and scar T2-bright, and both
        are brighter than myocardium on bSSFP too, so bSSFP alone lets them join the pool).

    Returns
    -------
    WallSplit

    Raises
    ------
    RoiError
        Shapes that differ, or an empty ROI.
    """
    bssfp = np.asarray(bssfp)
    roi = np.asarray(roi, dtype=bool)
    if bssfp.shape != roi.shape:
        raise RoiError(f"bSSFP shape {bssfp.shape} differs from the ROI shape {roi.shape}")
    if not roi.any():
        raise RoiError("the region of interest is empty")
    pixel_mm = float(np.mean(spacing_mm[1:]))
    disk = _disk(OPEN_RADIUS_MM / pixel_mm)
    blood = np.zeros_like(roi)
    thr = np.full(roi.shape[0], np.nan)
    for z in np.nonzero(roi.reshape(roi.shape[0], -1).any(1))[0]:  # one small image per slice
        vals = bssfp[z][roi[z]]
        if vals.size < 8 or np.ptp(vals) <= 0:
            continue
        thr[z] = _otsu(vals)
        bright = roi[z] & (bssfp[z] > thr[z])
        if t2 is not None and np.ptp(t2[z][roi[z]]) > 0:
            bright &= t2[z] <= T2_POOL_MAX * np.median(t2[z][roi[z]])
        blood[z] = _pool_of_slice(bright, roi[z], pixel_mm, disk)
    return WallSplit(blood=blood, wall=roi & ~blood, threshold=thr)


def endocardial_rim(
    blood: np.ndarray, wall: np.ndarray, spacing_mm: tuple[float, ...]
) -> np.ndarray:
    """``(Z, Y, X)`` bool wall pixels within :data:`RIM_MM` of the blood pool (in-plane)."""
    from scipy import ndimage as ndi

    pixel_mm = float(np.mean(spacing_mm[1:]))
    st = np.zeros((3, *_disk(RIM_MM / pixel_mm).shape), dtype=bool)
    st[1] = _disk(RIM_MM / pixel_mm)  # in-plane only: never reach into the next slice
    return ndi.binary_dilation(blood, structure=st) & wall
