"""The ``tissue-net`` method (default): tissue network ensemble, adapted per slice by an SVGMM.

1. LV-centred crops of bSSFP, LGE, T2 and the ROI at 0.8 mm (:mod:`.crops`) go through every
   member of the shipped ensemble (:mod:`.model`; test-time flips averaged) and the class
   probabilities come back to the scan's own grid;
2. with ``trim_roi``, ROI pixels the network calls ``outside`` (not LV tissue) leave the ROI
   (off by default: a drawn or edited ROI is the user's statement of where the LV is; the
   cross-validated effect is in ``docs/tissue_net.md``);
3. the ensemble's blood pool / myocardium / edema / scar probabilities are the per-pixel
   mixing weights Pi of a spatially variant GMM fitted by EM on each slice
   (:func:`napari_gmmseg.classifier.adapt.adapt_per_slice`): the scan's own contrast moves
   the borders;
4. each pixel takes the most probable class.

Besides the labels, the fit records each member's burden (``params["member_burden"]``): their
spread widens the burden's 95 % interval (:func:`napari_gmmseg.accuracy.burden_interval`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_gmmseg.classifier.adapt import ADAPT_ITERATIONS
from napari_gmmseg.errors import ModelError
from napari_gmmseg.fit import Fit, Progress
from napari_gmmseg.labels import CLASS_VALUES

__all__ = ["METHOD_NAME", "TissueNetOptions", "fit_pipeline", "labels_from_probabilities"]

#: The registry name of this method.
METHOD_NAME = "tissue-net"


@dataclass(frozen=True)
class TissueNetOptions:
    """Options of ``tissue-net``."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "tissue network .npz (napari-gmmseg tissue-net; default: the shipped one)"
        },
    )
    adapt_iterations: int = field(
        default=ADAPT_ITERATIONS,
        metadata={"help": "per-slice EM iterations with the network as mixing weights (0: off)"},
    )
    flips: bool = field(default=True, metadata={"help": "average over test-time flips"})
    trim_roi: bool = field(
        default=False,
        metadata={"help": "leave out ROI pixels the network calls outside the LV"},
    )
    spacing_mm: tuple[float, float, float] | None = field(
        default=None, metadata={"help": "voxel spacing (z, y, x)", "cli": False}
    )

    def __post_init__(self) -> None:
        if int(self.adapt_iterations) != self.adapt_iterations or self.adapt_iterations < 0:
            raise ModelError(
                f"adapt_iterations must be an integer >= 0, got {self.adapt_iterations}"
            )


def labels_from_probabilities(
    prob: np.ndarray,
    images: np.ndarray,
    roi: np.ndarray,
    channels: Sequence[str],
    *,
    adapt_iterations: int = ADAPT_ITERATIONS,
    trim_roi: bool = False,
    device: Any = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MyoPS labels from the network's probabilities, adapted per slice.

    Parameters
    ----------
    prob : numpy.ndarray
        ``(Z, 5, Y, X)`` network probabilities (:data:`~.model.OUTPUT_CLASSES` order).
    images : numpy.ndarray
        ``(Z, Y, X, C)`` intensities named by ``channels``.
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool ROI.
    trim_roi : bool
        Leave out the ROI pixels the network calls ``outside`` (else every ROI pixel takes
        its most probable tissue class).

    Returns
    -------
    labels : numpy.ndarray
        ``(Z, Y, X)`` int32 MyoPS values (0 outside the kept ROI).
    tissue : numpy.ndarray
        ``(Z, Y, X, 4)`` float32 adapted class probabilities (0 outside ``kept``).
    kept : numpy.ndarray
        ``(Z, Y, X)`` bool ROI pixels the network calls LV tissue.
    """
    from napari_gmmseg.classifier.adapt import adapt_per_slice
    from napari_gmmseg.prior import normalise_zscore
    from napari_gmmseg.tissuenet.model import INPUT_CHANNELS

    p = np.moveaxis(np.asarray(prob, dtype=np.float32), 1, -1)  # (Z, Y, X, 5)
    kept = np.asarray(roi, dtype=bool)
    if trim_roi:
        kept = kept & (p[..., 4] < p[..., :4].max(-1))
    tissue = np.zeros((*kept.shape, 4), dtype=np.float32)
    if kept.any():
        pi = p[kept][:, :4]
        pi /= pi.sum(1, keepdims=True).clip(1e-8)
        cols = [list(channels).index(c) for c in INPUT_CHANNELS[:3]]
        x = normalise_zscore(np.asarray(images)[..., cols], kept)[kept]
        slice_id = np.unique(np.nonzero(kept)[0], return_inverse=True)[1]
        tissue[kept] = adapt_per_slice(pi, x, slice_id, iterations=adapt_iterations, device=device)
    values = np.asarray(CLASS_VALUES, dtype=np.int32)
    labels = np.where(kept, values[tissue.argmax(-1)], 0).astype(np.int32)
    return labels, tissue, kept


def fit_pipeline(
    images: np.ndarray,
    roi: np.ndarray,
    *,
    channels: Sequence[str],
    options: TissueNetOptions,
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
    options : TissueNetOptions
    seed : int
        Recorded only: inference is deterministic.
    device : str or torch.device
    prior : object
        Unused; accepted for the registry's call.
    progress, should_stop : callable, optional

    Returns
    -------
    Fit
        ``method="tissue-net"``, MyoPS labels, adapted class probabilities;
        ``params["member_burden"]`` holds each member's scar / edema burden.

    Raises
    ------
    ModelError
        Missing sequences, an unreadable model file, or cancelled.
    RoiError
        A ROI of the wrong shape.
    """
    from napari_gmmseg.classifier.pipeline import slice_qc
    from napari_gmmseg.metrics import burden
    from napari_gmmseg.preprocess import resolve_device
    from napari_gmmseg.prior import normalise_zscore
    from napari_gmmseg.tissuenet.model import INPUT_CHANNELS, load_ensemble, network_inputs
    from napari_gmmseg.tissuenet.predict import predict_members
    from napari_gmmseg.wallfirst import class_fit, pipeline_volume

    del prior
    t0 = time.perf_counter()
    images, roi, spacing_mm = pipeline_volume(images, roi, options.spacing_mm, METHOD_NAME)
    network_inputs(images[:1], roi[:1], channels)  # the sequences, before any work
    ensemble = load_ensemble(options.model)
    if should_stop is not None and should_stop():
        raise ModelError("cancelled")
    dev = resolve_device(device)
    members = predict_members(
        ensemble, images, roi, channels, spacing_mm, flips=options.flips, device=dev
    )
    kw = {"adapt_iterations": options.adapt_iterations, "trim_roi": options.trim_roi, "device": dev}
    labels, tissue, kept = labels_from_probabilities(members.mean(0), images, roi, channels, **kw)
    member_burden = []
    if len(members) > 1:
        for m in members:
            lab = labels_from_probabilities(m, images, roi, channels, **kw)[0]
            b = burden(lab, spacing_mm)
            member_burden.append({k: b[k] for k in ("scar_pct", "edema_pct", "scar_edema_pct")})
    blood = labels == CLASS_VALUES[0]
    wall = kept & ~blood
    params: dict[str, Any] = {
        "method": METHOD_NAME,
        "seed": int(seed),
        "device": str(dev),
        "channels": list(channels),
        "adapt_iterations": int(options.adapt_iterations),
        "flips": bool(options.flips),
        "trim_roi": bool(options.trim_roi),
        "spacing_mm": list(spacing_mm),
        "model": {"members": len(members), "sha256": ensemble.meta.get("sha256", "")},
        "member_burden": member_burden,
        "roi_pixels_outside": int((roi & ~kept).sum()),
    }
    cols = [list(channels).index(c) for c in INPUT_CHANNELS[:3]]
    xn = normalise_zscore(images, kept)
    params["slice_qc"] = slice_qc(blood, wall, xn[..., cols[0]], METHOD_NAME)
    fit = class_fit(labels, blood, wall, tissue[..., 1:], xn, params)
    fit.n_iter_[:] = int(options.adapt_iterations)
    fit.seconds = time.perf_counter() - t0
    s = fit.slice_index.size
    if progress is not None:
        progress(Progress(s, s, 1, finished=fit.slice_index.copy(), partial=fit))
    return fit
