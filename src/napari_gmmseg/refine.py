"""Correct a result from tissue scribbles: refit only the slices the strokes touch.

A *scribble* map is a ``(Z, Y, X)`` MyoPS label map on the case's grid: 0 where nothing is
drawn, the tissue value (500 blood pool, 200 healthy myocardium, 1220 edema, 2221 scar)
where a stroke says what the tissue is. :func:`refine` works from what every method leaves
in its :class:`~napari_gmmseg.fit.Fit` (labels, class-ordered probabilities) plus the images,
and for every slice a stroke touches:

1. **what each stroke points at**: the fit's label L under a stroke of class c; a stroke
   that agrees with the labels under it points at nothing. Otherwise the *suspect region* C
   is the in-plane connected component of L that the stroke lies in;
2. **two Gaussians of the slice**: c's from the stroke's intensities shrunk towards c's
   probability-weighted Gaussian in the slice (:data:`STROKE_SHRINKAGE`), L's from the fit's
   probabilities of L outside C (the whole slice when fewer than :data:`MIN_CLASS_PIXELS`);
3. **spatial step**: :func:`skimage.segmentation.random_walker` on C and its rim, seeded with
   every stroke of the slice, every labelled pixel outside C, and the pixels of C whose
   log-likelihood ratio favours L by more than :data:`LLR_MARGIN`;
4. **what changes**: the stroke pixels, and every pixel of C that the walk ties to the stroke
   (most probable seed class c). Everything else keeps the fit's label and probabilities, so
   a stroke that agrees with the result changes nothing, and one short stroke inside a wrong
   region flips the connected, similar-looking part of that region.

Slices no stroke touches keep their labels, probabilities and per-slice parameters
bit for bit. Stroke pixels outside the fit's ROI join the ROI of their slice.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_gmmseg.errors import GeometryError, ModelError
from napari_gmmseg.fit import Fit, Progress
from napari_gmmseg.labels import CLASS_NAMES, CLASS_VALUES

__all__ = [
    "LLR_MARGIN",
    "MIN_CLASS_PIXELS",
    "RW_BETA",
    "SCRIBBLE_VALUES",
    "RefineSummary",
    "check_scribbles",
    "last_summary",
    "merge_refined",
    "refine",
    "touched_slices",
]

#: Values a scribble map may hold: 0 (nothing drawn) and the four tissue values.
SCRIBBLE_VALUES: tuple[int, ...] = (0, *CLASS_VALUES)
#: ``beta`` of :func:`skimage.segmentation.random_walker` (larger: stops harder at edges).
RW_BETA = 130.0
#: Pseudo-count of the slice's class Gaussian in a stroke's Gaussian (pixels).
STROKE_SHRINKAGE = 10.0
#: Log-likelihood ratio (nats) below which a pixel of a stroke's suspect region is clearly
#: its present label and seeds the random walker with it.
LLR_MARGIN = 5.0
#: Fewer pixels of a label outside the suspect region than this: the label's Gaussian is
#: taken over the whole slice.
MIN_CLASS_PIXELS = 30.0


@dataclass(frozen=True)
class RefineSummary:
    """What one :func:`refine` did, also stored in ``fit.params["refine"]`` (as a dict).

    Attributes
    ----------
    slices : tuple of int
        Volume z-indices of the slices a stroke touched (refitted).
    stroke_voxels : dict
        Tissue name -> number of scribbled voxels.
    changed_voxels : int
        Voxels whose label differs from the fit that was refined.
    seconds : float
        Wall time of the refine.
    """

    slices: tuple[int, ...]
    stroke_voxels: dict[str, int]
    changed_voxels: int
    seconds: float

    @property
    def changed(self) -> bool:
        """True when some label changed."""
        return self.changed_voxels > 0

    @property
    def message(self) -> str:
        """One line for a status bar or a log."""
        if not self.slices:
            return "refine: no strokes, nothing to refine"
        where = "slice" + ("s " if len(self.slices) > 1 else " ")
        where += ", ".join(str(z) for z in self.slices)
        if not self.changed:
            return f"refine changed nothing ({where} refitted; the labels already agree)"
        per = self.seconds / len(self.slices)
        return (
            f"refine: {self.changed_voxels} voxels changed on {where} "
            f"({self.seconds:.2f} s, {per:.2f} s per slice)"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record for ``fit.params``."""
        return {
            "slices": list(self.slices),
            "stroke_voxels": dict(self.stroke_voxels),
            "changed_voxels": int(self.changed_voxels),
            "seconds": float(self.seconds),
            "message": self.message,
        }


def check_scribbles(scribbles: Any, shape: Sequence[int], *, name: str = "scribbles") -> np.ndarray:
    """A scribble map as ``(Z, Y, X)`` int32, or a one-line error naming ``name``.

    Raises
    ------
    GeometryError
        Not of the labels' shape.
    ModelError
        Values other than :data:`SCRIBBLE_VALUES` (listed), or fractional / non-finite values.
    """
    arr = np.asarray(scribbles)
    if arr.shape != tuple(shape):
        raise GeometryError(f"{name}: shape {arr.shape} is not the case's grid {tuple(shape)}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or np.any(arr != np.round(arr)):
            raise ModelError(f"{name}: holds non-integer values; tissue values are needed")
    elif arr.dtype.kind not in "biu":
        raise ModelError(f"{name}: unsupported type {arr.dtype}")
    arr = arr.astype(np.int32)
    bad = sorted(set(np.unique(arr).tolist()) - set(SCRIBBLE_VALUES))
    if bad:
        raise ModelError(
            f"{name}: holds values {bad[:6]}; a scribble map holds 0 (nothing) or "
            "500 blood pool, 200 myocardium, 1220 edema, 2221 scar"
        )
    return arr


def touched_slices(scribbles: np.ndarray) -> np.ndarray:
    """``(n,)`` int64 z-indices of the slices with at least one stroke voxel."""
    s = np.asarray(scribbles)
    return np.nonzero(s.reshape(s.shape[0], -1).any(1))[0].astype(np.int64)


def _class_index(values: np.ndarray) -> np.ndarray:
    """MyoPS values -> class index (into CLASS_VALUES), -1 for 0 / others."""
    out = np.full(values.shape, -1, dtype=np.int64)
    for j, v in enumerate(CLASS_VALUES):
        out[values == v] = j
    return out


def _fit_roi(fit: Fit) -> np.ndarray:
    """The ROI a fit labelled: labelled voxels and voxels with a fitted component."""
    roi = np.asarray(fit.labels) > 0
    if fit.components is not None and np.shape(fit.components) == roi.shape:
        roi |= np.asarray(fit.components) >= 0
    return roi


def _gaussian(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean ``(M,)`` and covariance ``(M, M)`` of ``x`` ``(n, M)``."""
    sw = max(float(w.sum()), 1e-9)
    mu = (w[:, None] * x).sum(0) / sw
    d = x - mu
    return mu, (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0) / sw


def _random_walk(
    x_img: np.ndarray,
    region: np.ndarray,
    seeds: np.ndarray,
    pixel_mm: tuple[float, float],
) -> np.ndarray:
    """``(Y, X, K)`` random-walker class probabilities (0 outside ``region``).

    ``seeds`` holds the class index + 1 of the seed pixels, 0 elsewhere.
    """
    from skimage.segmentation import random_walker

    k = len(CLASS_VALUES)
    out = np.zeros((*region.shape, k))
    present = np.unique(seeds[seeds > 0])
    if present.size == 0:
        return out
    if present.size == 1:  # one class seeded: the walk has nothing to decide
        out[region, present[0] - 1] = 1.0
        return out
    lab = np.where(region, seeds, -1).astype(np.int32)
    if not (lab == 0).any():
        for c in present:
            out[lab == c, c - 1] = 1.0
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isolated unseeded pixels: their probability is 0
        prob = random_walker(
            x_img,
            lab,
            beta=RW_BETA,
            mode="bf",
            return_full_prob=True,
            spacing=pixel_mm,
            channel_axis=-1,
        )
    for i, c in enumerate(present):
        out[..., c - 1] = np.where(region, prob[i], 0.0)
    return out


def _stroke_targets(
    stroke_cls: np.ndarray, orig: np.ndarray, region: np.ndarray
) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """The wrong regions the strokes point at, one per (stroke component, label under it).

    Returns a list of ``(stroke class c, fit label L, (Y, X) stroke pixels, (Y, X) region C)``:
    C is the in-plane connected component (4-connected) of the fit's label L that the stroke
    pixels labelled L lie in, for every stroke component whose class differs from L. A
    stroke that agrees with the labels under it points at nothing.
    """
    from scipy import ndimage as ndi

    out = []
    comps, n = ndi.label(stroke_cls >= 0, structure=np.ones((3, 3)))
    for i in range(1, n + 1):
        on = comps == i
        c = int(np.bincount(stroke_cls[on]).argmax())
        under = orig[on & region]
        for lab in np.unique(under):
            lab = int(lab)
            if lab < 0 or lab == c:
                continue
            same, _ = ndi.label(region & (orig == lab))
            ids = np.unique(same[on & (orig == lab)])
            target = np.isin(same, ids[ids > 0])
            out.append((c, lab, on & (stroke_cls == c), target))
    return out


def _log_gauss(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``(n,)`` log density (up to the shared constant) of ``x`` ``(n, M)``."""
    from napari_gmmseg.classifier.adapt import COVARIANCE_FLOOR

    cov = cov + COVARIANCE_FLOOR * np.eye(len(mu))
    d = x - mu
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) + logdet)


def _class_gaussian(
    x_img: np.ndarray, weight: np.ndarray, stroke: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """A class's Gaussian in the slice: the stroke's pixels shrunk towards ``weight``'s.

    ``weight`` ``(Y, X)`` is the class's probability on the slice's pixels (the region it
    is looked for in); ``stroke`` ``(Y, X)`` bool, the stroke pixels (None: no stroke).
    """
    x = x_img.reshape(-1, x_img.shape[-1]).astype(np.float64)
    w = weight.ravel().astype(np.float64)
    if w.sum() < 1.0:  # the class is absent from the slice: the region's spread
        w = (weight.ravel() >= 0).astype(np.float64)
    mu_c, cov_c = _gaussian(x, w)
    if stroke is None or not stroke.any():
        return mu_c, cov_c
    xs = x_img[stroke].astype(np.float64)
    n = float(len(xs))
    mu_s, cov_s = _gaussian(xs, np.ones(len(xs)))
    mu = (n * mu_s + STROKE_SHRINKAGE * mu_c) / (n + STROKE_SHRINKAGE)
    cov = (n * cov_s + STROKE_SHRINKAGE * cov_c) / (n + STROKE_SHRINKAGE)
    return mu, cov


def _refine_slice(
    prob: np.ndarray | None,
    orig: np.ndarray,
    region: np.ndarray,
    strokes: np.ndarray,
    x_img: np.ndarray,
    pixel_mm: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Refined class indices and probabilities of one (cropped) slice.

    Parameters
    ----------
    prob : ``(Y, X, K)`` the fit's class probabilities, or None.
    orig : ``(Y, X)`` the fit's class index, -1 outside its ROI.
    region : ``(Y, X)`` bool, the ROI plus the stroke pixels.
    strokes : ``(Y, X)`` MyoPS values of the strokes, 0 elsewhere.
    x_img : ``(Y, X, M)`` intensities z-scored over ``region``.

    Returns
    -------
    cls : ``(Y, X)`` int64 class index, -1 outside ``region``.
    prob : ``(Y, X, K)`` float64 class probabilities (the fit's where the class is kept).

    For every stroke that disagrees with the label L under it, the connected region C of L
    it lies in is the suspect: a pixel of C takes the stroke's class c when the slice's
    Gaussian of c (the stroke's intensities shrunk towards c's) explains it better than L's,
    and the random walker seeded with the stroke, the clearly-L pixels of C and every label
    outside C connects it to the stroke. Nothing outside the strokes' regions changes.
    """
    k = len(CLASS_VALUES)
    eye = np.eye(k)
    stroke_cls = _class_index(strokes)
    cls = np.where(region, orig, -1)
    cls = np.where(stroke_cls >= 0, stroke_cls, cls)
    base = np.where(cls >= 0, cls, 0)
    p_fit = eye[base] if prob is None else np.asarray(prob, dtype=np.float64)
    p_fit = np.where(region[..., None], p_fit, 0.0)
    out = p_fit.copy()
    for c, lab, on, target in _stroke_targets(stroke_cls, orig, region):
        mu_c, cov_c = _class_gaussian(x_img, np.where(region, p_fit[..., c], 0.0), on)
        w_l = np.where(region & ~target, p_fit[..., lab], 0.0)
        if w_l.sum() < MIN_CLASS_PIXELS:  # the suspect region is all of L in the slice
            w_l = np.where(region, p_fit[..., lab], 0.0)
        mu_l, cov_l = _class_gaussian(x_img, w_l, None)
        xt = x_img[target].astype(np.float64)
        llr = np.zeros(region.shape)
        llr[target] = _log_gauss(xt, mu_c, cov_c) - _log_gauss(xt, mu_l, cov_l)
        seeds = np.where(region & ~target & (cls >= 0), cls + 1, 0)
        seeds = np.where(target & (llr < -LLR_MARGIN), lab + 1, seeds)
        seeds = np.where(stroke_cls >= 0, stroke_cls + 1, seeds)  # every stroke of the slice
        box = _crop(target | on)  # the walk decides C only: C and its seeded rim
        walk = np.zeros((*region.shape, k))
        walk[box] = _random_walk(x_img[box], region[box], seeds[box], pixel_mm)
        # C's pixels the walk ties to the stroke (a stroke pixel keeps its own class)
        flip = target & (walk.argmax(-1) == c)
        flip &= stroke_cls < 0
        cls[flip] = c
        out[flip] = walk[flip]
    out[stroke_cls >= 0] = eye[stroke_cls[stroke_cls >= 0]]
    return cls, np.where(region[..., None], out, 0.0)


def _crop(region: np.ndarray, margin: int = 3) -> tuple[slice, slice]:
    """The bounding box of ``region`` grown by ``margin`` pixels (clipped to the slice)."""
    ys, xs = np.nonzero(region)
    return (
        slice(max(int(ys.min()) - margin, 0), int(ys.max()) + margin + 1),
        slice(max(int(xs.min()) - margin, 0), int(xs.max()) + margin + 1),
    )


def _as_images(
    images: Any, channels: Sequence[str] | None, spacing_mm: Sequence[float] | None, fit: Fit
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``(Z, Y, X, C)`` images and ``(z, y, x)`` spacing from an array or a Case."""
    if hasattr(images, "images") and hasattr(images, "spacing_mm"):  # a Case
        spacing_mm = images.spacing_mm if spacing_mm is None else spacing_mm
        images = images.images
    del channels  # every channel is used: the strokes say which ones separate the tissues
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[:3] != fit.labels.shape:
        raise GeometryError(
            f"images of shape {arr.shape} do not fit the labels' grid {fit.labels.shape}"
        )
    if spacing_mm is None:
        spacing_mm = fit.params.get("spacing_mm") or (1.0, 1.0, 1.0)
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ModelError(f"spacing_mm must be three positive sizes (z, y, x), got {spacing_mm}")
    return arr, spacing  # type: ignore[return-value]


def refine(
    fit: Fit,
    scribbles: np.ndarray,
    images: Any,
    *,
    roi: np.ndarray | None = None,
    channels: Sequence[str] | None = None,
    spacing_mm: Sequence[float] | None = None,
    progress: Callable[[Progress], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Fit:
    """Refit the slices the strokes touch, the strokes as hard constraints (module docstring).

    Parameters
    ----------
    fit : Fit
        The result to correct (any method: its labels and class-ordered probabilities are
        used; without probabilities, the labels).
    scribbles : numpy.ndarray
        ``(Z, Y, X)`` int scribble map on the fit's grid: 0 nothing drawn, 500 blood pool,
        200 healthy myocardium, 1220 edema, 2221 scar.
    images : numpy.ndarray or napari_gmmseg.io.Case
        ``(Z, Y, X, C)`` intensities the fit was made from (any channels), or the case.
    roi : numpy.ndarray, optional
        ``(Z, Y, X)`` bool ROI; default: the voxels the fit labelled (plus the stroke voxels).
    channels : sequence of str, optional
        Accepted for symmetry with :func:`~napari_gmmseg.segment.segment`; all channels
        are used.
    spacing_mm : sequence of float, optional
        ``(z, y, x)`` voxel size (mm); default: the case's, ``fit.params["spacing_mm"]``,
        else 1 mm.
    progress : callable, optional
        Receives a :class:`~napari_gmmseg.fit.Progress` after every refitted slice.
    should_stop : callable, optional
        Returns True to cancel between slices (:class:`~napari_gmmseg.errors.ModelError`).

    Returns
    -------
    Fit
        A new Fit (the input is not modified): labels, components, probabilities and
        per-slice parameters changed only on the touched slices; ``params["refine"]`` lists
        every refine applied so far (:meth:`RefineSummary.as_dict`), the last one first
        to read as ``params["refine"][-1]["message"]``.

    Raises
    ------
    GeometryError
        Scribbles, images or ROI not on the fit's grid.
    ModelError
        Scribble values other than 0/500/200/1220/2221; cancelled.
    """
    from napari_gmmseg.prior import normalise_zscore

    t0 = time.perf_counter()
    shape = np.shape(fit.labels)
    strokes = check_scribbles(scribbles, shape)
    arr, spacing = _as_images(images, channels, spacing_mm, fit)
    base_roi = _fit_roi(fit) if roi is None else np.asarray(roi, dtype=bool)
    if base_roi.shape != shape:
        raise GeometryError(f"ROI of shape {base_roi.shape} is not the labels' grid {shape}")
    slices = touched_slices(strokes)
    out = _copy_fit(fit)
    k = len(CLASS_VALUES)
    if out.probabilities is None or np.shape(out.probabilities)[3] != k:
        out.probabilities = np.zeros((*shape, k), dtype=np.float32)
        cls = _class_index(np.asarray(fit.labels))
        for j in range(k):
            out.probabilities[..., j] = cls == j
    for i, z in enumerate(slices):
        if should_stop is not None and should_stop():
            raise ModelError("refine cancelled")
        z = int(z)
        region = base_roi[z] | (strokes[z] > 0)
        crop = _crop(region)
        x_img = normalise_zscore(arr[z][crop][None], region[crop][None])[0]
        prob_z = None if fit.probabilities is None else fit.probabilities[z][crop]
        orig = _class_index(np.asarray(fit.labels[z])[crop])
        cls_c, prob = _refine_slice(
            prob_z, orig, region[crop], strokes[z][crop], x_img, spacing[1:]
        )
        cls = np.full(region.shape, -1, dtype=np.int64)
        cls[crop] = cls_c
        out.labels[z] = np.where(region, np.asarray(CLASS_VALUES)[np.maximum(cls, 0)], 0)
        out.components[z] = np.where(region, cls, out.components[z]).astype(out.components.dtype)
        out.probabilities[z][crop] = prob.astype(np.float32)
        x_full = np.zeros((*region.shape, arr.shape[-1]), dtype=np.float32)
        x_full[crop] = x_img
        _update_slice_params(out, z, x_full, cls)
        if progress is not None:
            progress(Progress(i + 1, len(slices), i + 1, finished=slices[: i + 1].copy()))
    changed = int(np.count_nonzero(out.labels != np.asarray(fit.labels)))
    s_cls = _class_index(strokes)
    summary = RefineSummary(
        slices=tuple(int(z) for z in slices),
        stroke_voxels={
            CLASS_NAMES[j]: int(np.count_nonzero(s_cls == j))
            for j in range(k)
            if np.any(s_cls == j)
        },
        changed_voxels=changed,
        seconds=time.perf_counter() - t0,
    )
    out.params = {**out.params, "refine": [*fit.params.get("refine", []), summary.as_dict()]}
    return out


def last_summary(fit: Fit) -> RefineSummary | None:
    """The :class:`RefineSummary` of the last refine applied to ``fit`` (None if none)."""
    rec = fit.params.get("refine") or []
    if not rec:
        return None
    r = rec[-1]
    return RefineSummary(
        tuple(r["slices"]), dict(r["stroke_voxels"]), int(r["changed_voxels"]), r["seconds"]
    )


def merge_refined(current: Fit, refined: Fit) -> Fit:
    """``current`` with the slices of ``refined``'s last refine copied in.

    Every slice is refined independently from the fit and that slice's strokes, so
    ``refine(fit, all_strokes)`` equals refining ``fit`` with the strokes of the slices that
    changed since the last refine and merging the result into the last one: the dock and the
    simulated user refit only the slices whose strokes changed.

    Parameters
    ----------
    current : Fit
        The result so far (not modified).
    refined : Fit
        A :func:`refine` of the same base fit.

    Returns
    -------
    Fit
        A new Fit; ``params["refine"]`` gains ``refined``'s last record.
    """
    summary = last_summary(refined)
    out = _copy_fit(current)
    if summary is None:
        return out
    if out.probabilities is None and refined.probabilities is not None:
        out.probabilities = np.zeros_like(refined.probabilities)
    for z in summary.slices:
        out.labels[z] = refined.labels[z]
        out.components[z] = refined.components[z]
        if out.probabilities is not None and refined.probabilities is not None:
            out.probabilities[z] = refined.probabilities[z]
        rows_out = np.nonzero(np.asarray(out.slice_index) == z)[0]
        rows_in = np.nonzero(np.asarray(refined.slice_index) == z)[0]
        if rows_out.size and rows_in.size:
            for name in ("weights_", "means_", "covariances_", "component_to_class"):
                getattr(out, name)[rows_out[0]] = getattr(refined, name)[rows_in[0]]
    out.params["refine"] = [*current.params.get("refine", []), refined.params["refine"][-1]]
    return out


def _copy_fit(fit: Fit) -> Fit:
    """A copy of ``fit`` whose arrays can be written without touching the original."""
    out = copy.copy(fit)
    out.labels = np.array(fit.labels, dtype=np.int32, copy=True)
    comps = fit.components
    if comps is None or np.shape(comps) != out.labels.shape:
        comps = np.full(out.labels.shape, -1, dtype=np.int16)
    out.components = np.array(comps, copy=True)
    out.probabilities = None if fit.probabilities is None else np.array(fit.probabilities)
    for name in ("weights_", "means_", "covariances_", "component_to_class"):
        setattr(out, name, np.array(getattr(fit, name), copy=True))
    out.params = dict(fit.params)
    return out


def _update_slice_params(out: Fit, z: int, x_img: np.ndarray, cls: np.ndarray) -> None:
    """Per-slice weights / means / covariances of a refined slice, from its new labels.

    The refined slice's components are the class indices, so its row of
    ``component_to_class`` becomes the identity; a fit whose per-slice tables have another
    number of components keeps them (they describe the original fit).
    """
    k = len(CLASS_VALUES)
    rows = np.nonzero(np.asarray(out.slice_index) == z)[0]
    if rows.size == 0 or np.shape(out.weights_)[1:] != (k,):
        return
    i, m = int(rows[0]), x_img.shape[-1]
    if np.shape(out.means_)[1:] != (k, m):
        return
    inside = cls >= 0
    xi, ci = x_img[inside].astype(np.float64), cls[inside]
    cnt = np.bincount(ci, minlength=k).astype(np.float64)
    out.weights_[i] = cnt / max(cnt.sum(), 1.0)
    full = np.ndim(out.covariances_) == 4
    for j in range(k):
        if cnt[j] == 0:
            continue
        mu, cov = _gaussian(xi[ci == j], np.ones(int(cnt[j])))
        out.means_[i, j] = mu
        out.covariances_[i, j] = cov if full else np.diag(cov)
    if np.shape(out.component_to_class)[1:] == (k,):
        out.component_to_class[i] = np.arange(k)
