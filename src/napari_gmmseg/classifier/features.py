"""Per-pixel features of the tissue classifier: intensity, local context, position in the ROI.

Every feature is computed per slice from the ROI pixels only, in units that do not depend on
the scanner's intensity scale or the pixel size:

- per sequence (bSSFP, LGE, T2): the robust z-score ``(x - median) / IQR`` over the slice's
  ROI, the rank of the pixel among the ROI pixels (0 darkest ... 1 brightest), and the local
  mean of the z-score within the ROI at two scales (Gaussian, 1.5 and 4 mm: normalised
  convolution, so pixels outside the ROI do not leak in);
- position: the distance to the ROI border in cm (the ROI border is the epicardium when the
  ROI is the LV) and the same distance relative to the slice's largest one (a transmural
  position: 0 at the epicardium, 1 at the centre of the blood pool).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "FEATURE_CHANNELS",
    "FEATURE_NAMES",
    "SMOOTHING_SCALES_MM",
    "masked_gaussian_mean",
    "slice_features",
    "volume_features",
]

#: The sequences the features read, in this order.
FEATURE_CHANNELS: tuple[str, ...] = ("bSSFP", "LGE", "T2")
#: Gaussian scales (mm) of the local means.
SMOOTHING_SCALES_MM: tuple[float, ...] = (1.5, 4.0)

#: One name per feature column, in order.
FEATURE_NAMES: tuple[str, ...] = (
    *tuple(
        name
        for ch in FEATURE_CHANNELS
        for name in (
            f"{ch} z",
            f"{ch} rank",
            *(f"{ch} local mean {s:g} mm" for s in SMOOTHING_SCALES_MM),
        )
    ),
    "distance to ROI border (cm)",
    "relative depth in ROI",
)

_MIN_ROI_PIXELS = 2


def masked_gaussian_mean(
    values: np.ndarray, weight: np.ndarray, sigma_px: tuple[float, ...]
) -> np.ndarray:
    """Gaussian mean of ``values`` over the pixels where ``weight`` is 1 (normalised convolution).

    ``values`` and ``weight`` have the same shape (or ``values`` one trailing axis more, with a
    0 in ``sigma_px`` for it); outside the mask the result is meaningless, inside it no value
    from outside leaks in. Zero ``values`` outside the mask first (NaN would spread).
    """
    from scipy import ndimage as ndi

    w = weight if values.ndim == weight.ndim else weight[..., None]
    num = ndi.gaussian_filter(values * w, sigma_px, mode="constant")
    den = ndi.gaussian_filter(w.astype(np.float32), sigma_px, mode="constant")
    return num / np.maximum(den, 1e-6)


def slice_features(
    image: np.ndarray, roi: np.ndarray, pixel_mm: float | tuple[float, float]
) -> np.ndarray:
    """Features of the ROI pixels of one slice.

    Parameters
    ----------
    image : numpy.ndarray
        ``(Y, X, 3)`` intensities of bSSFP, LGE and T2 (:data:`FEATURE_CHANNELS` order).
    roi : numpy.ndarray
        ``(Y, X)`` bool ROI with at least two pixels.
    pixel_mm : float or (float, float)
        In-plane pixel size in mm (one value, or the ``(y, x)`` sizes).

    Returns
    -------
    numpy.ndarray
        ``(n, len(FEATURE_NAMES)) float32, one row per ROI pixel in ``np.nonzero(roi)`` order.
    """
    from scipy import ndimage as ndi

    py, px = (float(pixel_mm),) * 2 if np.isscalar(pixel_mm) else map(float, pixel_mm)
    ys, xs = np.nonzero(roi)
    margin = int(np.ceil(4 * max(SMOOTHING_SCALES_MM) / min(py, px))) + 1
    y0, x0 = max(ys.min() - margin, 0), max(xs.min() - margin, 0)
    crop = (slice(y0, ys.max() + margin + 1), slice(x0, xs.max() + margin + 1))
    img = np.asarray(image[crop], dtype=np.float32)
    mask = roi[crop]
    weight = mask.astype(np.float32)
    columns: list[np.ndarray] = []
    for c in range(img.shape[-1]):
        x = img[..., c]
        values = x[mask]
        q25, q50, q75 = np.percentile(values, [25, 50, 75])
        z = np.where(mask, (x - q50) / max(float(q75 - q25), 1e-6), 0.0)  # outside: no concern
        rank = np.empty(values.size, dtype=np.float32)
        rank[np.argsort(values, kind="stable")] = np.linspace(0.0, 1.0, values.size)
        columns += [z[mask], rank]
        columns += [
            masked_gaussian_mean(z, weight, (s / py, s / px))[mask] for s in SMOOTHING_SCALES_MM
        ]
    depth_mm = ndi.distance_transform_edt(mask, sampling=(py, px))
    columns += [depth_mm[mask] / 10.0, depth_mm[mask] / max(float(depth_mm.max()), 1e-6)]
    return np.stack(columns, axis=1).astype(np.float32)


def volume_features(
    images: np.ndarray, roi: np.ndarray, pixel_mm: float | tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every ROI pixel of a volume, slice by slice.

    Parameters
    ----------
    images : numpy.ndarray
        ``(Z, Y, X, 3)`` bSSFP, LGE, T2.
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool ROI.
    pixel_mm : float or (float, float)
        In-plane pixel size in mm (one value, or the ``(y, x)`` sizes).

    Returns
    -------
    features : numpy.ndarray
        ``(N, F)`` float32, the ROI pixels of the slices with at least two ROI pixels.
    used : numpy.ndarray
        ``(Z, Y, X)`` bool, the pixels the rows describe (``images[used]`` order).
    """
    roi = np.asarray(roi, dtype=bool)
    used = np.zeros_like(roi)
    rows: list[np.ndarray] = []
    for z in range(roi.shape[0]):
        if roi[z].sum() >= _MIN_ROI_PIXELS:
            rows.append(slice_features(images[z], roi[z], pixel_mm))
            used[z] = roi[z]
    if not rows:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32), used
    return np.concatenate(rows), used


def feature_columns(channels: Sequence[str]) -> list[int]:
    """Columns of :data:`FEATURE_CHANNELS` in an image with these channel names.

    Raises
    ------
    ModelError
        A sequence is missing.
    """
    from napari_gmmseg.naming import channel_columns

    return channel_columns(channels, FEATURE_CHANNELS, needed_by="the tissue classifier")
