"""Clinical threshold baselines inside a given myocardium: LGE n-SD and FWHM, T2 2-SD.

These are the rules clinicians use in practice to quantify scar and edema, so
users can compare the mixtures with them. All work per slice, inside the LV
myocardium of any label map (a method's output or the ground truth):

- **remote myocardium** (:func:`remote_myocardium`), found without user clicks:
  the myocardium is split into ``n_sectors`` equal angular sectors around the
  LV centre (centroid of the blood pool, or of the myocardium ring when there
  is no blood pool), and the sector with the lowest mean LGE is remote (method
  ``"sector"``, default, 6 sectors as the AHA mid-ventricular segments).
  Sectors with fewer than half the pixels of an even share are not candidates.
  Method ``"percentile"`` takes instead the myocardium pixels whose LGE is at or
  below the ``percentile``-th percentile of the slice.
- **LGE scar by n-SD** (:func:`threshold_nsd`): LGE > mean + n·SD of remote.
- **LGE scar by FWHM** (:func:`threshold_fwhm`): LGE >= half of the maximal LGE
  in the myocardium of the slice; a slice is thresholded only when that maximum
  is at least ``gate_n_sd`` remote SDs above the remote mean (otherwise half of
  the maximum of a healthy slice would still label half its wall).
- **T2 edema by 2-SD**: T2 > mean + 2·SD of the same remote region.

:func:`clinical_labels` combines them into a MyoPS label map (scar wins over
edema; blood pool is kept). Everything is vectorised numpy over slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_gmmseg.errors import ModelError, RoiError
from napari_gmmseg.labels import BLOOD, DEFAULT_CHANNELS, EDEMA, MYOCARDIUM, SCAR

__all__ = [
    "REMOTE_METHODS",
    "SCAR_RULES",
    "clinical_labels",
    "remote_myocardium",
    "remote_statistics",
    "threshold_fwhm",
    "threshold_nsd",
]

REMOTE_METHODS: tuple[str, ...] = ("sector", "percentile")
SCAR_RULES: tuple[str, ...] = ("nsd", "fwhm")
#: MyoPS values that make up the LV myocardium (healthy, edema, scar).
MYOCARDIUM_VALUES: tuple[int, ...] = (MYOCARDIUM.value, EDEMA.value, SCAR.value)


def _check(image: np.ndarray, mask: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if image.ndim != 3 or image.shape != mask.shape:
        raise RoiError(
            f"{what}: image {image.shape} and mask {mask.shape} must be the same (Z, Y, X) shape"
        )
    return image, mask


def _per_slice_mean_sd(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) SD of ``image`` inside ``mask``, per slice; NaN where empty."""
    n = mask.sum(axis=(1, 2)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(mask, image, 0.0).sum(axis=(1, 2)) / n
        var = np.where(mask, (image - mean[:, None, None]) ** 2, 0.0).sum(axis=(1, 2)) / n
    return mean, np.sqrt(var)


def remote_myocardium(
    lge: np.ndarray,
    myocardium: np.ndarray,
    *,
    blood: np.ndarray | None = None,
    method: str = "sector",
    n_sectors: int = 6,
    percentile: float = 30.0,
) -> np.ndarray:
    """Remote (healthy-looking) myocardium of every slice, found from the LGE alone.

    Parameters
    ----------
    lge : numpy.ndarray
        ``(Z, Y, X)`` LGE intensities.
    myocardium : numpy.ndarray
        ``(Z, Y, X)`` bool LV myocardium (healthy + edema + scar).
    blood : numpy.ndarray, optional
        ``(Z, Y, X)`` bool LV blood pool; its centroid is the sector centre.
    method : {"sector", "percentile"}
        Lowest-mean-LGE angular sector (default) or lowest LGE percentile.
    n_sectors : int
        Number of equal angular sectors (``"sector"``).
    percentile : float
        Percentile of the slice's myocardial LGE (``"percentile"``).

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` bool remote mask (empty on slices without myocardium).
    """
    lge, myo = _check(lge, myocardium, "remote_myocardium")
    if method not in REMOTE_METHODS:
        raise ModelError(f"remote method must be one of {REMOTE_METHODS}, got {method!r}")
    z, ny, nx = lge.shape
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise ModelError(f"percentile must be in (0, 100], got {percentile}")
        vals = np.where(myo, lge, np.nan).reshape(z, -1)
        has = myo.reshape(z, -1).any(axis=1)
        cut = np.full(z, -np.inf)
        if has.any():
            cut[has] = np.nanpercentile(vals[has], percentile, axis=1)
        return myo & (lge <= cut[:, None, None])
    if n_sectors < 1:
        raise ModelError(f"n_sectors must be >= 1, got {n_sectors}")
    centre_mask = myo if blood is None else np.asarray(blood, dtype=bool)
    # Fall back to the myocardium centroid on slices without blood pool.
    centre_mask = np.where(centre_mask.any(axis=(1, 2))[:, None, None], centre_mask, myo)
    yy, xx = np.mgrid[0:ny, 0:nx]
    n_c = np.maximum(centre_mask.sum(axis=(1, 2)), 1)
    cy = (centre_mask * yy).sum(axis=(1, 2)) / n_c
    cx = (centre_mask * xx).sum(axis=(1, 2)) / n_c
    angle = np.arctan2(yy[None] - cy[:, None, None], xx[None] - cx[:, None, None])
    sector = np.minimum(((angle + np.pi) / (2 * np.pi) * n_sectors).astype(np.int64), n_sectors - 1)
    code = sector + n_sectors * np.arange(z)[:, None, None]
    cnt = np.bincount(code[myo], minlength=z * n_sectors).reshape(z, n_sectors)
    tot = np.bincount(code[myo], weights=lge[myo], minlength=z * n_sectors).reshape(z, n_sectors)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = tot / cnt
    share = cnt.sum(axis=1, keepdims=True) / n_sectors
    mean = np.where(cnt >= np.maximum(0.5 * share, 1), mean, np.inf)
    best = np.argmin(mean, axis=1)  # (Z,)
    return myo & (sector == best[:, None, None])


def remote_statistics(image: np.ndarray, remote: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice mean and SD of ``image`` in the remote mask (NaN on slices without remote).

    Parameters
    ----------
    image : numpy.ndarray
        ``(Z, Y, X)`` intensities.
    remote : numpy.ndarray
        ``(Z, Y, X)`` bool remote myocardium.

    Returns
    -------
    mean, sd : numpy.ndarray
        ``(Z,)`` each.
    """
    image, remote = _check(image, remote, "remote_statistics")
    return _per_slice_mean_sd(image, remote)


def threshold_nsd(
    image: np.ndarray, myocardium: np.ndarray, remote: np.ndarray, n_sd: float = 5.0
) -> np.ndarray:
    """Enhanced myocardium by the n-SD rule: ``image > mean_remote + n_sd * sd_remote``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(Z, Y, X)`` LGE (scar) or T2 (edema) intensities.
    myocardium : numpy.ndarray
        ``(Z, Y, X)`` bool LV myocardium to threshold in.
    remote : numpy.ndarray
        ``(Z, Y, X)`` bool remote myocardium (e.g. :func:`remote_myocardium`).
    n_sd : float
        Number of remote SDs (clinical practice: 2 to 6; 2 for T2 edema).

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` bool; empty on slices without remote myocardium.
    """
    image, myo = _check(image, myocardium, "threshold_nsd")
    mean, sd = remote_statistics(image, remote)
    cut = np.where(np.isfinite(mean), mean + n_sd * sd, np.inf)
    return myo & (image > cut[:, None, None])


def threshold_fwhm(
    image: np.ndarray,
    myocardium: np.ndarray,
    remote: np.ndarray | None = None,
    *,
    gate_n_sd: float | None = 5.0,
) -> np.ndarray:
    """Enhanced myocardium by full width at half maximum: ``image >= max / 2``, per slice.

    Parameters
    ----------
    image : numpy.ndarray
        ``(Z, Y, X)`` LGE intensities (non-negative MR magnitudes).
    myocardium : numpy.ndarray
        ``(Z, Y, X)`` bool LV myocardium; the maximum is taken inside it.
    remote : numpy.ndarray, optional
        ``(Z, Y, X)`` bool remote myocardium, needed for the gate.
    gate_n_sd : float or None
        A slice is thresholded only when its myocardial maximum exceeds
        ``mean_remote + gate_n_sd * sd_remote``; None thresholds every slice.

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` bool.
    """
    image, myo = _check(image, myocardium, "threshold_fwhm")
    has = myo.any(axis=(1, 2))
    peak = np.where(has, np.where(myo, image, -np.inf).max(axis=(1, 2)), np.inf)
    enabled = has.copy()
    if gate_n_sd is not None:
        if remote is None:
            raise ModelError("threshold_fwhm: gate_n_sd needs the remote myocardium mask")
        mean, sd = remote_statistics(image, remote)
        enabled &= np.isfinite(mean) & (peak > mean + gate_n_sd * sd)
    cut = np.where(enabled, 0.5 * peak, np.inf)
    return myo & (image >= cut[:, None, None])


def _find(channels: Sequence[str], names: Sequence[str]) -> int | None:
    low = [str(c).lower() for c in channels]
    for n in names:
        if n in low:
            return low.index(n)
    return None


def clinical_labels(
    images: np.ndarray,
    labels: np.ndarray,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    *,
    scar_rule: str = "nsd",
    n_sd: float = 5.0,
    edema_n_sd: float = 2.0,
    remote_method: str = "sector",
    fwhm_gate_n_sd: float | None = 5.0,
) -> np.ndarray:
    """Scar and edema by clinical thresholds inside the myocardium of a label map.

    Parameters
    ----------
    images : numpy.ndarray
        ``(Z, Y, X, C)`` images.
    labels : numpy.ndarray
        ``(Z, Y, X)`` MyoPS label map (any method's output or the ground truth); its
        LV myocardium (200, 1220, 2221) is re-labelled, its blood pool (500) kept.
    channels : sequence of str
        Channel names; LGE (or ``DE``) is required, T2 optional (no edema without it).
    scar_rule : {"nsd", "fwhm"}
        LGE scar rule.
    n_sd : float
        n of the LGE n-SD rule.
    edema_n_sd : float
        n of the T2 rule (2 in clinical practice).
    remote_method : {"sector", "percentile"}
        See :func:`remote_myocardium`.
    fwhm_gate_n_sd : float or None
        See :func:`threshold_fwhm`.

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` int32 MyoPS labels: 500 blood pool, 2221 scar, 1220 edema (not
        scar), 200 other myocardium, 0 elsewhere.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[:3] != labels.shape:
        raise RoiError(
            f"clinical_labels: images {images.shape} must be (Z, Y, X, C) on the grid of labels {labels.shape}"
        )
    if scar_rule not in SCAR_RULES:
        raise ModelError(f"scar_rule must be one of {SCAR_RULES}, got {scar_rule!r}")
    lge_i = _find(channels, ("lge", "de", "psir"))
    if lge_i is None:
        raise ModelError(f"clinical thresholds need an LGE channel; channels are {tuple(channels)}")
    t2_i = _find(channels, ("t2", "t2w"))
    out = np.zeros(labels.shape, dtype=np.int32)
    inside = np.isin(labels, (BLOOD.value, *MYOCARDIUM_VALUES))
    if not inside.any():
        return out
    # Work in the in-plane bounding box of the LV only (slices are often 10x larger).
    ys, xs = np.nonzero(inside.any(axis=0))
    box = (slice(None), slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    labels, images = labels[box], images[box]
    myo = np.isin(labels, MYOCARDIUM_VALUES)
    blood = labels == BLOOD.value
    lge = images[..., lge_i]
    remote = remote_myocardium(lge, myo, blood=blood, method=remote_method)
    if scar_rule == "nsd":
        scar = threshold_nsd(lge, myo, remote, n_sd)
    else:
        scar = threshold_fwhm(lge, myo, remote, gate_n_sd=fwhm_gate_n_sd)
    edema = np.zeros_like(myo)
    if t2_i is not None:
        edema = threshold_nsd(images[..., t2_i], myo, remote, edema_n_sd) & ~scar
    crop = np.zeros(labels.shape, dtype=np.int32)
    crop[blood] = BLOOD.value
    crop[myo] = MYOCARDIUM.value
    crop[edema] = EDEMA.value
    crop[scar] = SCAR.value
    out[box] = crop
    return out
