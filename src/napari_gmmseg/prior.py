"""Learned tissue priors: per-class intensity statistics from labelled cases.

One JSON format serves naming, ``init="prior"``, ``mu_data`` and the MAP-EM of the
wall-first pipeline. It is a superset of :class:`napari_gmmseg.naming.PriorTable`:
the top-level ``channels`` / ``classes`` / ``means`` are the class means in the
engine's units (per-slice, per-sequence z-score over the LV ROI), so every reader of
a prior table (``--prior``, ``--init prior``, ``mu_data``) takes a learned prior file
unchanged. The ``stats`` block holds, per normalisation, means, covariances, class
proportions and pixel counts:

``"roi-zscore"``
    every slice and sequence z-scored over the LV ROI (what :class:`SliceBatch` does);
``"wall-ratio"``
    every slice and sequence divided by the median of its myocardial wall pixels
    (:func:`normalise_to_wall`). A fit computes this without labels from the wall that
    stage 1 of the wall-first pipeline finds (:mod:`napari_gmmseg.wall`); on labelled
    cases the ground-truth wall (200 + 1220 + 2221) is used. Healthy myocardium is the
    bulk of most walls, so the units read as "multiples of healthy myocardium".

Statistics are computed per slice and class (slices where the class has at least
:data:`MIN_CLASS_PIXELS` pixels), averaged over the slices of a case, then over cases
(each case weighs the same). Proportions are of the ROI (``roi-zscore``) or of the wall
(``wall-ratio``, blood pool 0) and include slices without the class.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg.errors import ModelError
from napari_gmmseg.labels import CLASS_NAMES, CLASS_VALUES, LV_ROI_VALUES
from napari_gmmseg.naming import PriorTable, canonical_channel

__all__ = [
    "MIN_CLASS_PIXELS",
    "NORMALISATIONS",
    "WALL_VALUES",
    "ClassStats",
    "TissuePrior",
    "default_tissue_prior",
    "learn_prior",
    "load_tissue_prior",
    "normalise_to_wall",
    "normalise_zscore",
]

#: The normalisations a :class:`TissuePrior` holds statistics in (see the module docstring).
NORMALISATIONS: tuple[str, ...] = ("roi-zscore", "wall-ratio")
#: MyoPS values of the LV myocardial wall (healthy, edema, scar).
WALL_VALUES: tuple[int, ...] = (200, 1220, 2221)
#: A class contributes a slice's mean/covariance only with at least this many pixels
#: (a 2x2 covariance from fewer is noise).
MIN_CLASS_PIXELS: int = 10
_DEFAULT_PATH = Path(__file__).parent / "data" / "tissue_prior.json"


def normalise_to_wall(images: np.ndarray, wall: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Divide every slice and channel by the median of its wall pixels.

    Parameters
    ----------
    images : numpy.ndarray
        ``(Z, Y, X, C)`` intensities.
    wall : numpy.ndarray
        ``(Z, Y, X)`` bool myocardial wall.

    Returns
    -------
    normalised : numpy.ndarray
        ``(Z, Y, X, C)`` float32 in units of the slice's wall median (1 on slices
        without wall or with a non-positive median, i.e. left unscaled).
    median : numpy.ndarray
        ``(Z, C)`` float64 the divisors used.
    """
    images = np.asarray(images)
    wall = np.asarray(wall, dtype=bool)
    z, _, _, c = images.shape
    median = np.ones((z, c), dtype=np.float64)
    for zi in np.nonzero(wall.reshape(z, -1).any(1))[0]:  # one median per slice
        med = np.median(images[zi][wall[zi]], axis=0)
        median[zi] = np.where(med > 0, med, 1.0)
    return (images / median[:, None, None, :]).astype(np.float32), median


def normalise_zscore(images: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """``(Z, Y, X, C)`` float32 z-scores of every slice and channel over its ROI pixels.

    The engine's normalisation (``roi-zscore``); slices without ROI are returned as 0.
    """
    images = np.asarray(images, dtype=np.float64)
    roi = np.asarray(roi, dtype=bool)
    out = np.zeros(images.shape, dtype=np.float32)
    for zi in np.nonzero(roi.reshape(roi.shape[0], -1).any(1))[0]:
        x = images[zi][roi[zi]]
        sd = x.std(0)
        out[zi] = (images[zi] - x.mean(0)) / np.where(sd > 0, sd, 1.0)
    return out


@dataclass(frozen=True)
class ClassStats:
    """Per-class statistics in one normalisation.

    Attributes
    ----------
    means : numpy.ndarray
        ``(K, M)`` class means.
    covariances : numpy.ndarray
        ``(K, M, M)`` within-slice class covariances.
    weights : numpy.ndarray
        ``(K,)`` mean class proportion (of the ROI or of the wall).
    counts : numpy.ndarray
        ``(K,)`` int64 pixels of each class in the training cases.
    """

    means: np.ndarray
    covariances: np.ndarray
    weights: np.ndarray
    counts: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready lists."""
        return {
            "means": np.asarray(self.means, dtype=float).tolist(),
            "covariances": np.asarray(self.covariances, dtype=float).tolist(),
            "weights": np.asarray(self.weights, dtype=float).tolist(),
            "counts": np.asarray(self.counts, dtype=np.int64).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict, k: int, m: int) -> ClassStats:
        """Parse and check shapes ``(K, M)``, ``(K, M, M)``, ``(K,)``, ``(K,)``."""
        out = cls(
            np.asarray(d["means"], dtype=np.float64),
            np.asarray(d["covariances"], dtype=np.float64),
            np.asarray(d["weights"], dtype=np.float64),
            np.asarray(d["counts"], dtype=np.int64),
        )
        shapes = (out.means.shape, out.covariances.shape, out.weights.shape, out.counts.shape)
        if shapes != ((k, m), (k, m, m), (k,), (k,)):
            raise ModelError(f"prior statistics have shapes {shapes}, expected K={k}, M={m}")
        if not all(np.all(np.isfinite(a)) for a in (out.means, out.covariances, out.weights)):
            raise ModelError("prior statistics contain NaN or Inf")
        return out


@dataclass(frozen=True)
class TissuePrior(PriorTable):
    """A :class:`~napari_gmmseg.naming.PriorTable` with learned statistics per normalisation.

    ``means`` (inherited) are the ``roi-zscore`` means, so the object works wherever a
    prior table does. :attr:`stats` maps a normalisation name to :class:`ClassStats`.
    """

    stats: dict[str, ClassStats] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def select(
        self, normalisation: str, classes: Sequence[str], channels: Sequence[str]
    ) -> ClassStats:
        """Statistics of some classes and channels (by name) in one normalisation.

        Raises
        ------
        ModelError
            Unknown normalisation, class or channel.
        """
        if normalisation not in self.stats:
            raise ModelError(
                f"the prior has no {normalisation!r} statistics (it has {sorted(self.stats)})"
            )
        st = self.stats[normalisation]
        mine = [canonical_channel(c) for c in self.channels]
        try:
            cols = [mine.index(canonical_channel(c)) for c in channels]
            rows = [self.classes.index(c) for c in classes]
        except ValueError as exc:
            raise ModelError(
                f"prior lacks a class of {list(classes)} or a channel of {list(channels)} "
                f"(it has {list(self.classes)}, {list(self.channels)})"
            ) from exc
        return ClassStats(
            st.means[np.ix_(rows, cols)],
            st.covariances[np.ix_(rows, cols, cols)],
            st.weights[rows],
            st.counts[rows],
        )

    def to_dict(self) -> dict:
        """The prior-table dict plus ``stats`` and ``source``."""
        d = super().to_dict()
        d["stats"] = {name: st.to_dict() for name, st in self.stats.items()}
        d["source"] = dict(self.source)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> TissuePrior:
        """Parse a learned-prior dict (``channels``, ``classes``, ``means``, ``stats``)."""
        try:
            table = PriorTable(
                tuple(data["channels"]), tuple(data["classes"]), np.asarray(data["means"])
            )
            k, m = table.means.shape
            stats = {str(n): ClassStats.from_dict(s, k, m) for n, s in data["stats"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"not a learned tissue prior: {exc!r}") from exc
        return cls(table.channels, table.classes, table.means, stats, dict(data.get("source", {})))


def _slice_stats(x: np.ndarray, cls: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Per-class mean ``(K, M)``, covariance ``(K, M, M)``, count ``(K,)`` of ``(N, M)`` pixels."""
    m = x.shape[1]
    counts = np.bincount(cls, minlength=k).astype(np.float64)
    onehot = np.eye(k)[cls]  # (N, K)
    sums = onehot.T @ x
    means = sums / np.maximum(counts, 1)[:, None]
    centred = x[:, None, :] - means[cls][:, None, :]  # (N, 1, M)
    outer = centred[:, 0, :, None] * centred[:, 0, None, :]  # (N, M, M)
    covs = np.einsum("nk,nij->kij", onehot, outer) / np.maximum(counts - 1, 1)[:, None, None]
    return means, covs.reshape(k, m, m), counts


def _case_stats(images: np.ndarray, labels: np.ndarray, norm: str) -> tuple[np.ndarray, ...]:
    """Case-level (slice-averaged) means, covariances, proportions, counts in one normalisation."""
    k = len(CLASS_VALUES)
    roi = np.isin(labels, LV_ROI_VALUES)
    wall = np.isin(labels, WALL_VALUES)
    region = roi if norm == "roi-zscore" else wall
    if norm == "wall-ratio":
        images, _ = normalise_to_wall(images, wall)
    values = np.asarray(CLASS_VALUES)
    m = images.shape[-1]
    sm, sc, sw, sn = [], [], [], []
    for z in np.nonzero(region.reshape(region.shape[0], -1).any(1))[0]:
        sel = roi[z]
        x = images[z][sel].astype(np.float64)
        if norm == "roi-zscore":
            x = normalise_zscore(images[z : z + 1], roi[z : z + 1])[0][sel].astype(np.float64)
        cls = np.argmax(labels[z][sel][:, None] == values[None], axis=1)  # (N,) class index
        means, covs, counts = _slice_stats(x, cls, k)
        ok = counts >= MIN_CLASS_PIXELS
        sm.append(np.where(ok[:, None], means, np.nan))
        sc.append(np.where(ok[:, None, None], covs, np.nan))
        in_region = counts * (np.isin(values, WALL_VALUES) if norm == "wall-ratio" else 1)
        sw.append(in_region / max(in_region.sum(), 1))
        sn.append(counts)
    if not sm:
        nan = np.full((k, m), np.nan)
        return nan, np.full((k, m, m), np.nan), np.zeros(k), np.zeros(k)
    # classes absent from every slice stay NaN here and are skipped across cases
    return np.nanmean(sm, 0), np.nanmean(sc, 0), np.mean(sw, 0), np.sum(sn, 0)


def learn_prior(
    cases: Iterable[Any], *, channels: Sequence[str] = ("bSSFP", "LGE", "T2")
) -> TissuePrior:
    """Learn per-class statistics from labelled cases in every normalisation.

    Parameters
    ----------
    cases : iterable of Case (or CaseSource)
        Labelled cases (``labels`` with MyoPS values); sources are loaded one at a time.
    channels : sequence of str
        Sequences to use, by name (each case must have them).

    Returns
    -------
    TissuePrior
        Classes in :data:`napari_gmmseg.labels.CLASSES` order.

    Raises
    ------
    ModelError
        No labelled case, a case without a required channel, or a class never seen.
    """
    import warnings

    per_norm: dict[str, list[tuple[np.ndarray, ...]]] = {n: [] for n in NORMALISATIONS}
    ids = []
    for case in cases:
        if hasattr(case, "load") and not hasattr(case, "images"):
            case = case.load()
        if case.labels is None:
            raise ModelError(f"case {case.case_id} has no ground-truth mask to learn a prior from")
        have = [canonical_channel(c) for c in case.channels]
        try:
            cols = [have.index(canonical_channel(c)) for c in channels]
        except ValueError as exc:
            raise ModelError(
                f"case {case.case_id} lacks one of the channels {list(channels)} "
                f"(it has {list(case.channels)})"
            ) from exc
        images = np.asarray(case.images)[..., cols]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # classes absent from a case
            for norm in NORMALISATIONS:
                per_norm[norm].append(_case_stats(images, case.labels, norm))
        ids.append(str(case.case_id))
    if not ids:
        raise ModelError("no labelled cases to learn a prior from")
    stats = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN classes are checked below
        for norm, rows in per_norm.items():
            means = np.nanmean(np.array([r[0] for r in rows]), 0)
            covs = np.nanmean(np.array([r[1] for r in rows]), 0)
            if not (np.all(np.isfinite(means)) and np.all(np.isfinite(covs))):
                missing = [CLASS_NAMES[i] for i in np.nonzero(~np.isfinite(means).all(1))[0]]
                raise ModelError(f"classes {missing} never seen in cases {ids}")
            weights = np.mean([r[2] for r in rows], 0)
            counts = np.sum([r[3] for r in rows], 0).astype(np.int64)
            stats[norm] = ClassStats(means, covs, weights, counts)
    return TissuePrior(
        tuple(channels),
        CLASS_NAMES,
        stats["roi-zscore"].means,
        stats,
        {"cases": ids, "n_cases": len(ids), "min_class_pixels": MIN_CLASS_PIXELS},
    )


def load_tissue_prior(prior: Any = None) -> TissuePrior:
    """A :class:`TissuePrior` from itself, a dict, a JSON path, or None (the shipped default).

    Raises
    ------
    ModelError
        Unreadable file, or a plain prior table without learned statistics.
    """
    if prior is None:
        return default_tissue_prior()
    if isinstance(prior, TissuePrior):
        return prior
    if isinstance(prior, dict):
        return TissuePrior.from_dict(prior)
    if isinstance(prior, (str, os.PathLike)):
        return TissuePrior.load(prior)
    raise ModelError(
        f"the wall-first pipeline needs a learned tissue prior (napari-gmmseg prior), "
        f"got {type(prior).__name__}"
    )


_DEFAULT: list[TissuePrior] = []


def default_tissue_prior() -> TissuePrior:
    """The prior shipped in ``napari_gmmseg/data/tissue_prior.json`` (learned on myops_dev)."""
    if not _DEFAULT:
        _DEFAULT.append(TissuePrior.load(_DEFAULT_PATH))
    return _DEFAULT[0]
