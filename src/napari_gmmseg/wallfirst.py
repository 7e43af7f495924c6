"""The wall-first anatomical pipeline: stage 1 finds the wall, stage 2 the lesions inside it.

:func:`fit_wall_first` takes a volume and an LV ROI and returns a normal
:class:`~napari_gmmseg.fit.Fit` with MyoPS labels (500 blood pool, 200 healthy
myocardium, 1220 edema, 2221 scar):

1. :func:`napari_gmmseg.wall.split_wall` splits the ROI into one hole-free blood pool
   and the wall ring around it, from bSSFP;
2. every slice and sequence is divided by its wall median
   (:func:`napari_gmmseg.prior.normalise_to_wall`, the prior's ``wall-ratio`` units);
3. :func:`napari_gmmseg.pathology.fit_pathology` fits healthy / edema / scar on LGE and
   T2 inside the wall, anchored to the learned prior (MAP-EM by default, MRF on);
4. :func:`napari_gmmseg.pathology.apply_rules` removes partial-volume scar on the
   endocardial rim and lesion classes too small to be present in a slice or the case.

Options: :class:`WallFirstOptions` (``mixture``, ``strength``, ``beta``, ``rim_rule``,
``lesion_presence``, ``wall_first``, ``t2_veto``, ``spacing_mm``). It is the
``"pipeline"`` family entry ``wall-first`` of :data:`napari_gmmseg.methods.METHODS`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_gmmseg.errors import ModelError, RoiError
from napari_gmmseg.fit import Fit, Progress
from napari_gmmseg.labels import CLASS_NAMES, CLASS_VALUES
from napari_gmmseg.pathology import MIXTURES, MRF_BETA, PRIOR_STRENGTH

__all__ = [
    "DEFAULT_PRIOR_STRENGTH",
    "METHOD_NAME",
    "WALL_FIRST_OPTIONS",
    "PriorGMMOptions",
    "WallFirstOptions",
    "class_fit",
    "fit_pipeline",
    "fit_wall_first",
    "pipeline_volume",
]

#: The name :func:`napari_gmmseg.segment.segment` dispatches to this pipeline.
METHOD_NAME = "wall-first"


@dataclass(frozen=True)
class WallFirstOptions:
    """Options of the wall-first pipeline (defaults: :mod:`napari_gmmseg.pathology` constants)."""

    mixture: str = field(
        default="map-em",
        metadata={"help": "stage-2 mixture", "choices": MIXTURES},
    )
    strength: float = field(
        default=PRIOR_STRENGTH,
        metadata={"help": "prior weight (fraction of a slice's wall pixels)"},
    )
    beta: float = field(default=MRF_BETA, metadata={"help": "MRF weight inside the wall (0: off)"})
    rim_rule: bool = field(
        default=True, metadata={"help": "no partial-volume scar on the endocardial rim"}
    )
    lesion_presence: bool = field(
        default=True, metadata={"help": "drop scar/edema under 2 percent of the wall (slice, case)"}
    )
    wall_first: bool = field(
        default=True, metadata={"help": "stage 1 (False: 4-class MAP-EM in the whole ROI)"}
    )
    t2_veto: bool = field(default=False, metadata={"help": "T2-bright pixels are never pool"})
    spacing_mm: Any = field(
        default=None, metadata={"help": "voxel spacing (z, y, x)", "cli": False}
    )

    def __post_init__(self) -> None:
        if self.mixture not in MIXTURES:
            raise ModelError(f"unknown stage-2 mixture {self.mixture!r}; choose one of {MIXTURES}")
        if self.strength < 0 or self.beta < 0:
            raise ModelError(f"strength and beta must be >= 0, got {self.strength}, {self.beta}")


#: Prior strength of the default method ``gmm-prior`` (pseudo-pixels as a fraction of
#: each slice's ROI). 0.5 and 1.0 scored alike leave-one-case-out on myops_dev
#: (docs/quality.md, section 6); 0.05, the wall-first default, anchors less.
DEFAULT_PRIOR_STRENGTH: float = 0.5


@dataclass(frozen=True)
class PriorGMMOptions(WallFirstOptions):
    """Options of ``gmm-prior``: :class:`WallFirstOptions` with the anatomical stage off.

    One 4-class MAP-EM on bSSFP, LGE and T2 in the whole ROI, anchored to the learned
    tissue prior with strength :data:`DEFAULT_PRIOR_STRENGTH`: the best configuration by
    the as-named metrics, cross-validated leave-one-case-out on myops_dev.
    """

    strength: float = field(
        default=DEFAULT_PRIOR_STRENGTH,
        metadata={"help": "prior weight (fraction of a slice's ROI pixels)"},
    )
    wall_first: bool = field(
        default=False, metadata={"help": "stage 1: fit the lesions inside a bSSFP wall only"}
    )


#: Keyword options :func:`fit_wall_first` accepts.
WALL_FIRST_OPTIONS: tuple[str, ...] = tuple(WallFirstOptions.__dataclass_fields__)


def _per_slice_stats(
    x: np.ndarray, labels: np.ndarray, slices: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(S, 4)`` class fractions, ``(S, 4, M)`` class means and variances of ``x`` per slice."""
    values = np.asarray(CLASS_VALUES)
    s, m = slices.size, x.shape[-1]
    w, mu, var = np.zeros((s, 4)), np.zeros((s, 4, m)), np.zeros((s, 4, m))
    for i, z in enumerate(slices):  # one bincount per slice
        lab = labels[z].ravel()
        inside = lab > 0
        cls = np.argmax(lab[inside][:, None] == values[None], axis=1)
        xi = x[z].reshape(-1, m)[inside].astype(np.float64)
        cnt = np.bincount(cls, minlength=4).astype(np.float64)
        w[i] = cnt / max(cnt.sum(), 1)
        for j in range(m):
            sm = np.bincount(cls, xi[:, j], minlength=4)
            sq = np.bincount(cls, xi[:, j] ** 2, minlength=4)
            mu[i, :, j] = sm / np.maximum(cnt, 1)
            var[i, :, j] = np.maximum(sq / np.maximum(cnt, 1) - mu[i, :, j] ** 2, 0)
    return w, mu, var


def pipeline_volume(
    images: np.ndarray, roi: np.ndarray, spacing_mm: Sequence[float] | None, method: str
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A pipeline's ``(Z, Y, X, C)`` images, ``(Z, Y, X)`` bool ROI and ``(z, y, x)`` spacing.

    A missing spacing is 1 mm, with a warning naming ``method``.

    Raises
    ------
    RoiError
        The ROI does not fit the images.
    """
    images, roi = np.asarray(images), np.asarray(roi, dtype=bool)
    if images.ndim != 4 or roi.shape != images.shape[:3]:
        raise RoiError(f"ROI shape {roi.shape} does not fit images of shape {images.shape}")
    if spacing_mm is None:
        warnings.warn(f"{method} without spacing_mm: assuming 1 mm pixels", stacklevel=3)
        spacing_mm = (1.0, 1.0, 1.0)
    return images, roi, tuple(float(v) for v in spacing_mm)


def class_fit(
    labels: np.ndarray,
    blood: np.ndarray,
    wall: np.ndarray,
    soft: np.ndarray,
    xn: np.ndarray,
    params: dict,
) -> Fit:
    """A finished :class:`Fit` from the ``(Z, Y, X)`` MyoPS labels, pool and wall masks, the
    ``(Z, Y, X, 3)`` wall-class soft maps and the ``(Z, Y, X, M)`` normalised intensities."""
    roi = blood | wall
    probabilities = np.zeros((*roi.shape, 4), dtype=np.float32)
    probabilities[..., 0] = blood
    probabilities[..., 1:] = soft * wall[..., None]
    slices = np.nonzero(roi.reshape(roi.shape[0], -1).any(1))[0].astype(np.int64)
    weights, means, covs = _per_slice_stats(xn, labels, slices)
    s = slices.size
    components = np.full(roi.shape, -1, dtype=np.int16)
    for j, value in enumerate(CLASS_VALUES):
        components[labels == value] = j
    return Fit(
        method=params["method"],
        labels=labels,
        components=components,
        probabilities=probabilities,
        slice_index=slices,
        weights_=weights,
        means_=means,
        covariances_=covs,
        component_to_class=np.tile(np.arange(4, dtype=np.int64), (s, 1)),
        nll_history=np.zeros((s, 0)),
        n_iter_=np.zeros(s, dtype=np.int64),
        converged_=np.ones(s, dtype=bool),
        finished=np.ones(s, dtype=bool),
        seconds=0.0,
        params=params,
    )


def fit_wall_first(
    images: np.ndarray,
    roi: np.ndarray,
    *,
    channels: Sequence[str] = ("bSSFP", "LGE", "T2"),
    seed: int = 0,
    device: Any = "cpu",
    prior: Any = None,
    progress: Callable[[Progress], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> Fit:
    """Segment blood pool, myocardium, edema and scar wall-first (module docstring).

    Parameters
    ----------
    images : numpy.ndarray
        ``(Z, Y, X, C)`` intensities with bSSFP, LGE and T2 among ``channels``.
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool LV ROI (blood pool + myocardium).
    channels : sequence of str
        Sequence name of every channel.
    seed : int
        Seed of the engine mixtures (MAP-EM is deterministic).
    device : str or torch.device
        Where the stage-2 fit runs.
    prior : TissuePrior, dict, path or None
        Learned prior (default: the one shipped, learned on myops_dev).
    progress, should_stop : callable, optional
        Progress report at the end; ``should_stop`` is checked between the stages.
    **options
        See :data:`WALL_FIRST_OPTIONS` and the module docstring.

    Returns
    -------
    Fit
        ``method="wall-first"``, MyoPS labels, class-ordered probabilities.

    Raises
    ------
    ModelError
        Unknown option or mixture, missing sequences, a prior without learned statistics.
    RoiError
        Empty ROI or a ROI of the wrong shape.
    """
    import torch

    from napari_gmmseg.naming import channel_columns
    from napari_gmmseg.pathology import (
        PATHOLOGY_CHANNELS,
        PATHOLOGY_CLASSES,
        WallBatch,
        apply_rules,
        fit_pathology,
    )
    from napari_gmmseg.preprocess import resolve_device
    from napari_gmmseg.prior import load_tissue_prior, normalise_to_wall, normalise_zscore
    from napari_gmmseg.wall import endocardial_rim, split_wall

    t0 = time.perf_counter()
    unknown = sorted(set(options) - set(WALL_FIRST_OPTIONS))
    if unknown:
        raise ModelError(
            f"unknown option(s) {unknown} for 'wall-first'; options are {WALL_FIRST_OPTIONS}"
        )
    opts = WallFirstOptions(**options)
    images, roi, spacing_mm = pipeline_volume(images, roi, opts.spacing_mm, METHOD_NAME)
    wall_first, mixture = bool(opts.wall_first), opts.mixture
    strength, beta = float(opts.strength), float(opts.beta)
    table = load_tissue_prior(prior)
    cols = channel_columns(
        channels, ("bSSFP", *PATHOLOGY_CHANNELS), needed_by="the wall-first pipeline"
    )
    dev = resolve_device(device)

    if wall_first:
        t2 = images[..., cols[2]] if opts.t2_veto else None
        split = split_wall(images[..., cols[0]], roi, spacing_mm, t2=t2)
        blood, wall = split.blood, split.wall
        model_region, classes, use_cols = wall, PATHOLOGY_CLASSES, cols[1:]
    else:  # ablation: no anatomical stage, 4 classes on all sequences in the whole ROI
        blood = np.zeros_like(roi)
        wall = roi
        model_region, classes, use_cols = roi, CLASS_NAMES, cols
    if should_stop is not None and should_stop():
        raise ModelError("cancelled")
    norm = "wall-ratio" if wall_first else "roi-zscore"
    if wall_first:
        xn, _ = normalise_to_wall(images[..., use_cols], wall)
    else:
        xn = normalise_zscore(images[..., use_cols], roi)
    stats = table.select(norm, classes, [channels[c] for c in use_cols])
    wb = WallBatch.from_volume(xn, model_region, device=dev)
    with torch.no_grad():
        soft_c = fit_pathology(wb, stats, mixture=mixture, strength=strength, beta=beta, seed=seed)
    soft = wb.scatter(soft_c, roi.shape, fill=0.0)  # (Z, Y, X, K)
    if not wall_first:  # stage 1 from the 4-class fit: blood is its own class
        blood = model_region & (np.argmax(soft, -1) == 0)
        wall = roi & ~blood
        soft = soft[..., 1:]
    cls = np.where(wall, np.argmax(soft, -1), -1)
    rim = endocardial_rim(blood, wall, spacing_mm)
    cls = apply_rules(
        cls,
        soft,
        wall,
        rim,
        rim_rule=bool(opts.rim_rule),
        presence=bool(opts.lesion_presence),
        t2=xn[..., -1] if wall_first else None,
    )
    wall_values = np.asarray([CLASS_VALUES[CLASS_NAMES.index(c)] for c in PATHOLOGY_CLASSES])
    labels = np.where(blood, 500, np.where(wall, wall_values[np.maximum(cls, 0)], 0)).astype(
        np.int32
    )
    params = {
        "method": METHOD_NAME,
        "seed": int(seed),
        "device": str(dev),
        "channels": list(channels),
        "normalize": norm,
        "mixture": mixture,
        "strength": strength,
        "beta": beta,
        "rim_rule": bool(opts.rim_rule),
        "lesion_presence": bool(opts.lesion_presence),
        "wall_first": wall_first,
        "spacing_mm": list(spacing_mm),
        "prior_source": dict(table.source),
    }
    fit = class_fit(labels, blood, wall, soft, xn, params)
    fit.seconds = time.perf_counter() - t0
    s = fit.slice_index.size
    if progress is not None:
        progress(Progress(s, s, 1, finished=fit.slice_index.copy(), partial=fit))
    return fit


def fit_pipeline(
    images: np.ndarray,
    roi: np.ndarray,
    *,
    channels: Sequence[str],
    options: WallFirstOptions,
    seed: int = 0,
    device: Any = "cpu",
    prior: Any = None,
    progress: Callable[[Progress], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Fit:
    """The registry's ``"pipeline"`` entry point: :func:`fit_wall_first` with typed options.

    ``prior``: a :class:`~napari_gmmseg.prior.TissuePrior` (or its file); the engine's
    default prior table (no learned statistics) stands for the shipped tissue prior.
    """
    import dataclasses

    from napari_gmmseg.naming import DEFAULT_PRIOR

    if prior is DEFAULT_PRIOR:
        prior = None
    kw = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    return fit_wall_first(
        images,
        roi,
        channels=channels,
        seed=seed,
        device=device,
        prior=prior,
        progress=progress,
        should_stop=should_stop,
        **kw,
    )
