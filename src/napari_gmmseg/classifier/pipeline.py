"""The ``tissue-classifier`` method: learned pixel classifier, adapted per slice, smoothed.

1. features of every ROI pixel (:mod:`napari_gmmseg.classifier.features`);
2. class probabilities from the learned MLP (:class:`~napari_gmmseg.classifier.model.TissueClassifier`,
   by default the one shipped, learned on the 15 myops_dev cases);
3. per-slice EM with those probabilities as the mixing weights Pi of a spatially variant GMM
   (:mod:`napari_gmmseg.classifier.adapt`): the scan's own contrast moves the class borders;
4. the probability maps are smoothed inside the ROI (Gaussian, ``smoothing_mm``; normalised
   convolution) and each pixel takes the most probable class;
5. the lesion presence rule of the wall-first pipeline: a slice (or case) whose scar (edema)
   covers less than 2 % of its wall has none (:func:`napari_gmmseg.pathology.apply_rules`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_gmmseg.classifier.adapt import ADAPT_ITERATIONS
from napari_gmmseg.errors import ModelError
from napari_gmmseg.fit import Fit, Progress
from napari_gmmseg.labels import CLASS_VALUES

__all__ = ["METHOD_NAME", "SMOOTHING_MM", "ClassifierOptions", "fit_pipeline"]

#: The registry name of this method.
METHOD_NAME = "tissue-classifier"
#: Gaussian smoothing of the class probability maps (mm).
SMOOTHING_MM = 2.0
#: A slice is flagged when its blood pool (wall) is under this share of its ROI.
QC_MIN_SHARE = 0.02
#: ... or its blood pool is less than this many ROI SDs brighter than its wall on bSSFP.
QC_MIN_POOL_CONTRAST = 0.5


@dataclass(frozen=True)
class ClassifierOptions:
    """Options of ``tissue-classifier``."""

    model: str | None = field(
        default=None,
        metadata={"help": "classifier .npz (napari-gmmseg classifier; default: the shipped one)"},
    )
    adapt_iterations: int = field(
        default=ADAPT_ITERATIONS,
        metadata={"help": "per-slice EM iterations with the classifier as mixing weights (0: off)"},
    )
    smoothing_mm: float = field(
        default=SMOOTHING_MM, metadata={"help": "Gaussian smoothing of the class maps (mm)"}
    )
    lesion_presence: bool = field(
        default=True, metadata={"help": "drop scar/edema under 2 percent of the wall (slice, case)"}
    )
    spacing_mm: tuple[float, float, float] | None = field(
        default=None, metadata={"help": "voxel spacing (z, y, x)", "cli": False}
    )

    def __post_init__(self) -> None:
        if not np.isfinite(self.smoothing_mm) or self.smoothing_mm < 0:
            raise ModelError(f"smoothing_mm must be >= 0, got {self.smoothing_mm}")
        if int(self.adapt_iterations) != self.adapt_iterations or self.adapt_iterations < 0:
            raise ModelError(
                f"adapt_iterations must be an integer >= 0, got {self.adapt_iterations}"
            )


def _smooth_in_roi(prob: np.ndarray, roi: np.ndarray, sigma_px: tuple[float, float]) -> np.ndarray:
    """``(Z, Y, X, K)`` probabilities smoothed in-plane inside ``roi`` (normalised convolution)."""
    from napari_gmmseg.classifier.features import masked_gaussian_mean

    if min(sigma_px) <= 0:
        return prob
    out = masked_gaussian_mean(prob, roi.astype(np.float32), (0.0, *sigma_px, 0.0))
    return np.where(roi[..., None], out, 0.0).astype(np.float32)


def classify_volume(
    images: np.ndarray,
    roi: np.ndarray,
    channels: Sequence[str],
    *,
    pixel_mm: tuple[float, float],
    model: Any = None,
    smoothing_mm: float = SMOOTHING_MM,
    adapt_iterations: int = ADAPT_ITERATIONS,
    device: Any = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of the ROI pixels: classifier, per-slice EM adaptation, smoothing.

    Parameters
    ----------
    images : numpy.ndarray
        ``(Z, Y, X, C)`` intensities; ``channels`` names them.
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool ROI.
    pixel_mm : (float, float)
        In-plane ``(y, x)`` pixel size (mm).
    model : TissueClassifier, path or None
        The classifier (None: the shipped one).
    smoothing_mm, adapt_iterations : float, int
        Gaussian smoothing of the final maps; EM iterations of the adaptation (0: off).
    device : str or torch.device

    Returns
    -------
    probabilities : numpy.ndarray
        ``(Z, Y, X, 4)`` float32 in class order (0 outside ``used``).
    used : numpy.ndarray
        ``(Z, Y, X)`` bool, the ROI pixels of slices with at least two ROI pixels.
    """
    from napari_gmmseg.classifier.adapt import adapt_per_slice
    from napari_gmmseg.classifier.features import (
        FEATURE_CHANNELS,
        FEATURE_NAMES,
        feature_columns,
        volume_features,
    )
    from napari_gmmseg.classifier.model import load_classifier

    clf = load_classifier(model)
    x, used = volume_features(images[..., feature_columns(channels)], roi, pixel_mm)
    pi = clf.predict_proba(x, device=device)
    z_cols = [FEATURE_NAMES.index(f"{c} z") for c in FEATURE_CHANNELS]
    slice_id = np.nonzero(used)[0]
    slice_id = np.unique(slice_id, return_inverse=True)[1]
    r = adapt_per_slice(pi, x[:, z_cols], slice_id, iterations=adapt_iterations, device=device)
    prob = np.zeros((*roi.shape, len(CLASS_VALUES)), dtype=np.float32)
    prob[used] = r
    sigma_px = (smoothing_mm / pixel_mm[0], smoothing_mm / pixel_mm[1])
    return _smooth_in_roi(prob, used, sigma_px), used


def slice_qc(
    blood: np.ndarray, wall: np.ndarray, bssfp_z: np.ndarray, method: str = METHOD_NAME
) -> list[dict[str, Any]]:
    """Implausible slices, named in a warning: ``[{"slice": z, "flag": ...}]``.

    Flags: ``no_blood_pool`` / ``no_wall`` (under :data:`QC_MIN_SHARE` of the slice's ROI),
    ``low_pool_contrast`` (the blood pool is less than :data:`QC_MIN_POOL_CONTRAST` ROI SDs
    brighter than the wall on bSSFP; 1.0-2.1 on the 59 LV slices of myops_dev). Such a slice
    is not what an LV ROI looks like (a ROI off the heart or inside the pool, a failed fit):
    the labels are kept and the slice is reported.

    Parameters
    ----------
    blood, wall : numpy.ndarray
        ``(Z, Y, X)`` bool masks of the result.
    bssfp_z : numpy.ndarray
        ``(Z, Y, X)`` bSSFP z-scored over each slice's ROI.
    method : str
        The method named in the warning.
    """
    z = blood.shape[0]
    n_blood, n_wall = blood.reshape(z, -1).sum(1), wall.reshape(z, -1).sum(1)
    n_roi = n_blood + n_wall
    flags = []
    for zi in np.nonzero(n_roi)[0]:
        share = {"no_blood_pool": n_blood[zi], "no_wall": n_wall[zi]}
        found = [f for f, n in share.items() if n < QC_MIN_SHARE * n_roi[zi]]
        if not found:
            contrast = bssfp_z[zi][blood[zi]].mean() - bssfp_z[zi][wall[zi]].mean()
            if contrast < QC_MIN_POOL_CONTRAST:
                found.append("low_pool_contrast")
        flags += [{"slice": int(zi), "flag": f} for f in found]
    if flags:
        listed = ", ".join(f"slice {f['slice']}: {f['flag']}" for f in flags)
        warnings.warn(f"{method}: implausible slices ({listed})", stacklevel=3)
    return flags


def fit_pipeline(
    images: np.ndarray,
    roi: np.ndarray,
    *,
    channels: Sequence[str],
    options: ClassifierOptions,
    seed: int = 0,
    device: Any = "cpu",
    prior: Any = None,
    progress: Callable[[Progress], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Fit:
    """The registry's ``"pipeline"`` entry point (module docstring).

    Parameters
    ----------
    images : numpy.ndarray
        ``(Z, Y, X, C)`` intensities with bSSFP, LGE and T2 among ``channels``.
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool LV ROI (blood pool + myocardium).
    options : ClassifierOptions
    seed : int
        Recorded only: inference is deterministic.
    device : str or torch.device
        Where the MLP runs.
    prior : object
        Unused (the classifier carries what it learned); accepted for the registry's call.
    progress, should_stop : callable, optional
        Progress report at the end; ``should_stop`` is checked before the classifier runs.

    Returns
    -------
    Fit
        ``method="tissue-classifier"``, MyoPS labels, smoothed class probabilities.

    Raises
    ------
    ModelError
        Missing sequences, an unreadable classifier file, or cancelled.
    RoiError
        A ROI of the wrong shape.
    """
    from napari_gmmseg.classifier.features import feature_columns
    from napari_gmmseg.classifier.model import load_classifier
    from napari_gmmseg.pathology import PATHOLOGY_CLASSES, apply_rules
    from napari_gmmseg.preprocess import resolve_device
    from napari_gmmseg.prior import normalise_zscore
    from napari_gmmseg.wallfirst import class_fit, pipeline_volume

    del prior
    t0 = time.perf_counter()
    images, roi, spacing_mm = pipeline_volume(images, roi, options.spacing_mm, METHOD_NAME)
    if should_stop is not None and should_stop():
        raise ModelError("cancelled")
    dev = resolve_device(device)
    clf = load_classifier(options.model)
    prob, used = classify_volume(
        images,
        roi,
        channels,
        pixel_mm=spacing_mm[1:],
        model=clf,
        smoothing_mm=options.smoothing_mm,
        adapt_iterations=options.adapt_iterations,
        device=dev,
    )
    k = np.where(used, prob.argmax(-1), -1)
    blood = used & (k == 0)
    wall = used & ~blood
    cls = np.where(wall, k - 1, -1)  # index into PATHOLOGY_CLASSES
    cls = apply_rules(
        cls,
        prob[..., 1:],
        wall,
        np.zeros_like(wall),
        rim_rule=False,
        presence=bool(options.lesion_presence),
    )
    wall_values = np.asarray([CLASS_VALUES[1 + i] for i in range(len(PATHOLOGY_CLASSES))])
    labels = np.where(blood, CLASS_VALUES[0], np.where(wall, wall_values[np.maximum(cls, 0)], 0))
    params = {
        "method": METHOD_NAME,
        "seed": int(seed),
        "device": str(dev),
        "channels": list(channels),
        "smoothing_mm": float(options.smoothing_mm),
        "adapt_iterations": int(options.adapt_iterations),
        "lesion_presence": bool(options.lesion_presence),
        "spacing_mm": list(spacing_mm),
        "classifier": {k_: v for k_, v in clf.meta.items() if k_ not in ("features", "classes")},
    }
    xn = normalise_zscore(images, roi)
    bssfp = feature_columns(channels)[0]
    params["slice_qc"] = slice_qc(blood, wall, xn[..., bssfp])
    fit = class_fit(labels.astype(np.int32), blood, wall, prob[..., 1:], xn, params)
    fit.n_iter_[:] = int(options.adapt_iterations)  # EM iterations of the adaptation
    fit.seconds = time.perf_counter() - t0
    s = fit.slice_index.size
    if progress is not None:
        progress(Progress(s, s, 1, finished=fit.slice_index.copy(), partial=fit))
    return fit
