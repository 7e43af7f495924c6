"""The front door: segment a volume (or a :class:`~napari_gmmseg.io.Case`) into MyoPS labels.

:func:`segment` validates the input, packs the ROI pixels of every slice
(:class:`~napari_gmmseg.preprocess.SliceBatch`), fits the chosen method to all
slices at once (:mod:`napari_gmmseg.mixture` for ``gmm``/``svgmm``,
:mod:`napari_gmmseg.deep` for the deep methods, imported only then), names the
components after the tissue classes (:mod:`napari_gmmseg.naming`) and returns a
:class:`~napari_gmmseg.fit.Fit` whose labels are MyoPS values (500 blood pool,
200 myocardium, 1220 edema, 2221 scar).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_gmmseg._json import jsonable
from napari_gmmseg.errors import ExtremeIntensityError, ModelError, RoiError
from napari_gmmseg.fit import Fit, Progress
from napari_gmmseg.labels import CLASS_VALUES, CLASSES, LV_ROI_VALUES
from napari_gmmseg.methods import (
    COVARIANCE_TYPES,
    DEFAULT_METHOD,
    MethodSpec,
    check_choice,
    get_method,
)
from napari_gmmseg.methods import METHODS as _REGISTRY

if TYPE_CHECKING:
    from napari_gmmseg.preprocess import ClipStatistics

__all__ = [
    "DEEP_METHODS",
    "EM_METHODS",
    "EM_OPTIONS",
    "EXTREME_POLICIES",
    "METHODS",
    "segment",
    "segment_case",
]

#: What :func:`segment` does with extreme ROI intensities (1e30, int16 32767 in a
#: 0-3000 image; see :data:`napari_gmmseg.preprocess.EXTREME_FACTOR`): refuse the input
#: (default; EM from k-means++ is sensitive enough that even 50 moved voxels change many
#: labels) or clip them to the percentiles and warn.
EXTREME_POLICIES: tuple[str, ...] = ("refuse", "clip")

#: Every method name :func:`segment` accepts, in the registry's order
#: (:data:`napari_gmmseg.methods.METHODS`).
METHODS: tuple[str, ...] = tuple(_REGISTRY)
#: Methods fitted by EM in :mod:`napari_gmmseg.mixture`.
EM_METHODS: tuple[str, ...] = tuple(n for n, s in _REGISTRY.items() if s.family == "em")
#: Methods dispatched to :func:`napari_gmmseg.deep.fit_deep`.
DEEP_METHODS: tuple[str, ...] = tuple(n for n, s in _REGISTRY.items() if s.family == "deep")
#: Extra keyword options :func:`segment` passes to the EM methods.
EM_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(_REGISTRY["gmm"].options))


def _name_components(
    means: np.ndarray, channels: Sequence[str], table: Any, known: bool, k: int
) -> np.ndarray:
    """``(S, K)`` class index of every component from its ``(S, K, M)`` means."""
    from napari_gmmseg.naming import name_components

    if known:
        c2c = name_components(means, channels, table)
    else:
        # Channels the prior does not know: order components by the first channel's
        # mean, brightest first (blood is brightest on bSSFP).
        order = np.argsort(-means[:, :, 0], axis=1, kind="stable")
        c2c = np.empty_like(order)
        np.put_along_axis(c2c, order, np.minimum(np.arange(k), len(CLASSES) - 1)[None], axis=1)
    return c2c.astype(np.int64)


def _build_labels(
    batch: Any, soft: Any, c2c: np.ndarray, finished: np.ndarray, return_probabilities: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Named volumes from ``(S, N_max, K)`` soft maps: the ONE place labels are made.

    Returns ``(Z, Y, X)`` int32 MyoPS labels and int16 components of the rows where
    ``finished`` is True (0 / -1 elsewhere), and ``(Z, Y, X, n_classes)`` class-ordered
    soft maps when asked.
    """
    import torch

    from napari_gmmseg.em.result import component_argmax

    k = soft.shape[-1]
    comp = component_argmax(soft).to("cpu").numpy()  # (S, N) int64
    valid = batch.valid.to("cpu").numpy()
    values = np.asarray(CLASS_VALUES, dtype=np.int32)
    cls = np.take_along_axis(c2c, comp, axis=1)  # (S, N) class index
    keep = valid & finished[:, None]
    label_packed = np.where(keep, values[cls], 0).astype(np.int32)
    comp_packed = np.where(keep, comp, -1).astype(np.int16)
    labels = batch.scatter(label_packed, fill=0, dtype=np.int32)
    components = batch.scatter(comp_packed, fill=-1, dtype=np.int16)
    probabilities = None
    if return_probabilities:
        n_cls = len(CLASSES)
        s_rows = soft.shape[0]
        idx = torch.as_tensor(c2c, device=soft.device).unsqueeze(1).expand(s_rows, soft.shape[1], k)
        by_class = torch.zeros(
            s_rows, soft.shape[1], n_cls, dtype=torch.float32, device=soft.device
        )
        by_class.scatter_add_(2, idx, soft.to(torch.float32))
        by_class = by_class * torch.as_tensor(keep, device=soft.device).unsqueeze(-1)
        probabilities = batch.scatter(by_class, fill=0.0, dtype=np.float32)
    return labels, components, probabilities


def _slice_rows(batch: Any, per_slice: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """z-index of every per-slice entry of the Fit, and the batch row of each (whole volume)."""
    if per_slice:
        return np.asarray(batch.slice_index, dtype=np.int64), None
    slice_index = np.asarray(batch.crop_slices, dtype=np.int64)
    return slice_index, np.zeros(slice_index.size, dtype=np.int64)


class _LiveLabels:
    """Progress callback wrapper: turns ``Progress.new_rows`` into ``Progress.partial``.

    Keeps the final soft maps and means of the rows finished so far (on the CPU) and,
    when more rows finished, labels them with :func:`_build_labels`, so the caller's
    callback sees labels for every finished slice (0 elsewhere) while the fit runs.
    """

    def __init__(
        self,
        progress: Callable[[Progress], Any],
        batch: Any,
        method: str,
        per_slice: bool,
        channels: tuple[str, ...],
        table: Any,
        known: bool,
        k: int,
        t0: float,
    ) -> None:
        self.progress, self.batch, self.method, self.per_slice = progress, batch, method, per_slice
        self.channels, self.table, self.known, self.k, self.t0 = channels, table, known, k, t0
        s = int(batch.valid.shape[0])
        self.done = np.zeros(s, dtype=bool)
        self.c2c = np.zeros((s, k), dtype=np.int64)
        self.means = np.zeros((s, k, int(batch.x.shape[-1])), dtype=np.float64)
        self.soft: Any = None
        self.partial: Fit | None = None

    def __call__(self, p: Progress) -> Any:
        upd = p.new_rows
        if upd is not None and len(upd.rows):
            self._add(upd)
        return self.progress(dataclasses.replace(p, partial=self.partial, new_rows=None))

    def _add(self, upd: Any) -> None:
        import torch

        rows = np.asarray(upd.rows, dtype=np.int64)
        resp = torch.as_tensor(upd.responsibilities).to("cpu", torch.float32)
        means = torch.as_tensor(upd.means).to("cpu", torch.float64).numpy()
        if self.soft is None:
            s, n = self.batch.valid.shape
            self.soft = torch.zeros(int(s), int(n), self.k, dtype=torch.float32)
        self.soft[torch.as_tensor(rows)] = resp
        self.means[rows] = means
        self.c2c[rows] = _name_components(means, self.channels, self.table, self.known, self.k)
        self.done[rows] = True
        labels, components, _ = _build_labels(self.batch, self.soft, self.c2c, self.done, False)
        slice_index, rep = _slice_rows(self.batch, self.per_slice)
        means_, c2c, done = self.means, self.c2c, self.done
        if rep is not None:
            means_, c2c, done = means_[rep], c2c[rep], done[rep]
        s = slice_index.size
        self.partial = Fit(
            method=self.method,
            labels=labels,
            components=components,
            probabilities=None,
            slice_index=slice_index,
            weights_=np.zeros((s, self.k)),
            means_=means_.copy(),
            covariances_=np.zeros_like(means_),
            component_to_class=c2c.copy(),
            nll_history=np.zeros((s, 0)),
            n_iter_=np.zeros(s, dtype=np.int64),
            converged_=np.zeros(s, dtype=bool),
            finished=done.copy(),
            seconds=time.perf_counter() - self.t0,
            params={"method": self.method, "partial": True},
        )


def segment(
    images: np.ndarray,
    roi: np.ndarray | None = None,
    *,
    channels: Sequence[str] | None = None,
    method: str = DEFAULT_METHOD,
    n_classes: int = 4,
    covariance_type: str = "diag",
    init: str = "kmeans++",
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    device: Any = "auto",
    per_slice: bool = True,
    prior: Any = None,
    presence: Any = None,
    progress: Callable[[Progress], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **method_options: Any,
) -> Fit:
    """Segment blood pool, myocardium, edema and scar inside a region of interest.

    Parameters
    ----------
    images : numpy.ndarray
        ``(Z, Y, X, C)`` (or ``(Z, Y, X)``) intensities, one channel per sequence.
    roi : numpy.ndarray or None
        ``(Z, Y, X)`` bool region of interest (the LV: blood pool + myocardium); None
        segments whole slices. Slices with fewer ROI pixels than ``n_classes`` are
        skipped (listed in ``params["skipped_slices"]``).
    channels : sequence of str, optional
        Sequence name of every channel (``bSSFP``/``C0``, ``LGE``/``DE``, ``T2``); default
        ``("bSSFP", "LGE", "T2")`` for three channels. Used to name the components.
    method : str, default "tissue-classifier"
        One of :data:`METHODS` (:data:`napari_gmmseg.methods.DEFAULT_METHOD`: the best
        cross-validated method; ``"gmm"`` etc. are the paper's, unchanged).
    n_classes : int, default 4
        Mixture components K.
    covariance_type : {"diag", "full"}, default "diag"
        Covariance structure (the paper's is diagonal).
    init : str, default "kmeans++"
        EM initialisation, one of :data:`napari_gmmseg.mixture.INITS`.
    tol : float, default 1e-3
        Stop a slice when its mean NLL changes by less than this between iterations
        (EM) or epochs (deep methods, after ``min_epochs``).
    max_iter : int, default 100
        EM iteration limit.
    seed : int, default 0
        Seed of every random step.
    device : str, default "auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    per_slice : bool, default True
        One mixture per slice (the paper) or one for all ROI voxels of the volume.
    prior : PriorTable, dict, path or None
        Class means used for naming, ``init="prior"`` and deepSVG_mu (default
        :data:`napari_gmmseg.naming.DEFAULT_PRIOR`).
    presence : PresenceRule, str, dict or None
        Per-slice class presence applied after the fit
        (:func:`napari_gmmseg.presence.apply_presence`): classes judged absent get no
        labels. None or ``"none"`` keeps K fixed, as the paper.
    progress : callable, optional
        Receives :class:`~napari_gmmseg.fit.Progress` reports.
    should_stop : callable, optional
        Returns True to cancel (checked every iteration/epoch); finished slices are kept
        and the others left unlabelled (``Fit.finished`` False).
    **method_options
        For every method ``normalize`` (``"roi"``, ``"crop"``, ``"none"``),
        ``clip_percentiles`` (default :data:`napari_gmmseg.preprocess.CLIP_PERCENTILES`,
        None: no robust clip; the count of clipped voxels is in ``params["clip"]``),
        ``extreme`` (one of :data:`EXTREME_POLICIES`, default ``"refuse"``) and
        ``return_probabilities`` (default True); the others are the fields of the
        method's options dataclass in :data:`napari_gmmseg.methods.METHODS`
        (:class:`~napari_gmmseg.methods.EMOptions`: ``reg_covar``, ``spatial``, ``beta``,
        ``n_init``...; :class:`~napari_gmmseg.methods.DeepOptions`: ``max_epochs``,
        ``lr``, ``mu_data``, ``weights``...). Any other name is refused.

    Returns
    -------
    Fit
        Labels as MyoPS values, components, class-ordered soft maps and per-slice
        parameters.

    Raises
    ------
    CaseLoadError
        Images with NaN/Inf or of the wrong shape;
        :class:`~napari_gmmseg.errors.ExtremeIntensityError` for extreme ROI intensities
        unless ``extreme="clip"``.
    RoiError
        ROI of the wrong shape, empty, or with fewer pixels than ``n_classes``.
    ModelError
        Unknown method, option, init or covariance type, a bad option value,
        ``n_classes < 1``, channel names that do not fit the prior table, unavailable
        device.
    """
    t0 = time.perf_counter()
    spec = get_method(method)
    req = _check_request(
        spec,
        images,
        roi,
        channels,
        n_classes,
        covariance_type,
        init,
        tol,
        max_iter,
        per_slice,
        prior,
        presence,
        device,
        method_options,
    )
    if spec.family == "pipeline":
        ignored = _ignored_by_pipeline(
            spec,
            n_classes=n_classes,
            covariance_type=covariance_type,
            init=init,
            tol=tol,
            max_iter=max_iter,
            per_slice=per_slice,
        )
        fit = _run_pipeline(spec, req, seed, progress, should_stop)
        if ignored:
            fit.params["ignored_arguments"] = ignored
    else:
        fit = _fit_and_name(spec, req, init, tol, max_iter, seed, progress, should_stop, t0)
    if req.rule is not None:
        from napari_gmmseg.presence import apply_presence

        fit = apply_presence(fit, req.rule, channels=req.channels, images=req.images)
    fit.seconds = time.perf_counter() - t0
    return fit


def _ignored_by_pipeline(spec: MethodSpec, **given: Any) -> dict[str, Any]:
    """The engine arguments of :func:`segment` a pipeline does not use, set to non-defaults.

    A pipeline (``tissue-classifier``, ``gmm-prior``, ``wall-first``) carries its own
    iteration counts and classes in its options; a different ``max_iter`` or ``init``
    would otherwise be dropped silently. They are warned here (before the fit) and
    recorded in ``params["ignored_arguments"]``; not refused, so that one ``evaluate``
    run can compare the paper's methods at ``--max-iter 50`` with a pipeline.
    """
    import inspect
    import warnings

    defaults = inspect.signature(segment).parameters
    ignored = {k: v for k, v in given.items() if v != defaults[k].default}
    if ignored:
        listing = ", ".join(f"{k}={v!r}" for k, v in ignored.items())
        warnings.warn(
            f"method {spec.name!r} is a pipeline with its own settings and ignores {listing}; "
            f"its options are {', '.join(f.name for f in dataclasses.fields(spec.options))}",
            UserWarning,
            stacklevel=3,
        )
    return ignored


def _run_pipeline(
    spec: MethodSpec,
    req: _Request,
    seed: int,
    progress: Callable[[Progress], Any] | None,
    should_stop: Callable[[], bool] | None,
) -> Fit:
    """Run a ``"pipeline"`` method on the validated volume; fill in the params every fit has.

    The robust clip applies here as in :class:`~napari_gmmseg.preprocess.SliceBatch`:
    extreme ROI voxels (already refused unless ``extreme="clip"``) are set to the clip
    bounds before the pipeline sees them, and the counts go to ``params["clip"]``.
    """
    import warnings

    from napari_gmmseg import __version__
    from napari_gmmseg.errors import CaseLoadError
    from napari_gmmseg.preprocess import _clip_channels

    if not np.isfinite(req.images[req.roi]).all():  # as SliceBatch refuses for the EM methods
        raise CaseLoadError("images contain NaN or Inf inside the region of interest")
    images, clip = req.images, {"percentiles": None}
    if req.clip_percentiles is not None:
        pixels = images[req.roi].astype(np.float64)
        values, _, bounds, n_clipped, n_extreme = _clip_channels(
            pixels, req.clip_percentiles, req.clip_statistics
        )
        if n_extreme.any():
            images = images.astype(np.float32, copy=True)
            images[req.roi] = values
            warnings.warn(f"{int(n_extreme.sum())} extreme ROI voxels clipped", stacklevel=3)
        names = req.channels
        clip = {
            "percentiles": list(req.clip_percentiles),
            "bounds": bounds.T.tolist(),
            "clipped_voxels": dict(zip(names, n_clipped.tolist(), strict=True)),
            "extreme_voxels": dict(zip(names, n_extreme.tolist(), strict=True)),
        }
    fit = spec.load_fit()(
        images,
        req.roi,
        channels=req.channels,
        options=req.options,
        seed=seed,
        device=req.device,
        prior=req.table,
        progress=progress,
        should_stop=should_stop,
    )
    given = {k: v for k, v in req.given_options.items() if k != "spacing_mm"}  # geometry
    fit.method = spec.name  # one pipeline may serve several registry entries
    fit.params.update(
        method=spec.name,
        seed=int(seed),
        clip=clip,
        method_options=jsonable(given),
        skipped_slices=req.skipped,
        version=__version__,
    )
    return fit


@dataclasses.dataclass
class _Request:
    """A :func:`segment` call after validation: everything checked once, here."""

    images: np.ndarray  # (Z, Y, X, C)
    roi: np.ndarray  # (Z, Y, X) bool, slices with fewer than K pixels removed
    channels: tuple[str, ...]
    k: int
    covariance_type: str
    per_slice: bool
    normalize: str
    return_probabilities: bool
    rule: Any
    table: Any
    prior_means: np.ndarray | None
    device: Any
    options: Any  # the method's options dataclass
    given_options: dict[str, Any]
    skipped: list[int]
    clip_percentiles: tuple[float, float] | None = None
    extreme: str = "refuse"
    # of ``roi`` exactly, from the up-front check (None when it did not run or slices
    # were removed since)
    clip_statistics: ClipStatistics | None = None


def _check_request(
    spec: MethodSpec,
    images: Any,
    roi: Any,
    channels: Sequence[str] | None,
    n_classes: int,
    covariance_type: str,
    init: str,
    tol: float,
    max_iter: int,
    per_slice: bool,
    prior: Any,
    presence: Any,
    device: Any,
    method_options: dict[str, Any],
) -> _Request:
    """Validate every argument of :func:`segment` before any long work (the one place)."""
    from napari_gmmseg.mixture import INITS
    from napari_gmmseg.naming import check_n_components, load_prior
    from napari_gmmseg.preprocess import (
        CLIP_PERCENTILES,
        NORMALIZATIONS,
        check_volume,
        resolve_device,
    )
    from napari_gmmseg.presence import resolve_rule

    k = int(n_classes)
    if k < 1:
        raise ModelError(f"n_classes must be >= 1, got {n_classes}")
    check_choice("covariance_type", covariance_type, COVARIANCE_TYPES)
    if spec.family == "em":
        check_choice("init", init, INITS)
    if tol < 0:
        raise ModelError(f"tol must be >= 0, got {tol}")
    if max_iter < 1:
        raise ModelError(f"max_iter must be >= 1, got {max_iter}")
    given = dict(method_options)
    normalize = check_choice("normalize", given.pop("normalize", "roi"), NORMALIZATIONS)
    return_probabilities = bool(given.pop("return_probabilities", True))
    clip_percentiles = given.pop("clip_percentiles", CLIP_PERCENTILES)
    extreme = check_choice("extreme", given.pop("extreme", "refuse"), EXTREME_POLICIES)
    options = spec.make_options(given)
    rule = resolve_rule(presence)
    if roi is None and spec.family == "pipeline":
        raise RoiError(
            f"method {spec.name!r} segments the LV and needs its ROI (blood pool + myocardium): "
            "give a mask, or find it automatically (--roi auto, segment_case(roi='auto'))"
        )
    images, roi_mask, channels = check_volume(images, roi, channels)
    no_data = _slices_without_data(images, roi_mask)
    if no_data:
        import warnings

        roi_mask = roi_mask.copy()
        roi_mask[no_data] = False
        if not roi_mask.any():
            raise RoiError(f"no slice has data in every sequence (slices {no_data} are empty)")
        warnings.warn(
            f"slices {no_data} have no data in some sequence (constant, e.g. outside its "
            "grid): not segmented",
            UserWarning,
            stacklevel=3,
        )
    clip_statistics = None
    if clip_percentiles is not None and extreme == "refuse":  # every method family, up front
        clip_statistics = _refuse_extreme(images[roi_mask], channels, clip_percentiles)
    z_dim = images.shape[0]
    counts = roi_mask.reshape(z_dim, -1).sum(1)
    total = int(counts.sum())
    if total < k:
        raise RoiError(f"the region of interest has {total} pixels, fewer than the {k} classes")
    skipped: list[int] = list(no_data)
    if per_slice:
        small = np.nonzero((counts > 0) & (counts < k))[0]
        if small.size:
            skipped = sorted({*skipped, *(int(z) for z in small)})
            roi_mask = roi_mask.copy()
            roi_mask[small] = False
            clip_statistics = None  # of the ROI before these slices were removed
    table = load_prior(prior)
    note = check_n_components(k, len(table.classes))
    if note is not None:
        import warnings

        warnings.warn(note, UserWarning, stacklevel=3)
    prior_means = None
    try:
        prior_means = table.for_channels(channels)
    except ModelError:
        if init == "prior" or spec.prior_means_as_mu_data:
            raise
    if init == "prior" and spec.family == "em" and prior_means.shape[0] != k:
        raise ModelError(
            f"init='prior' needs n_classes={prior_means.shape[0]} (rows of the prior table), got {k}"
        )
    try:
        import torch

        dev = resolve_device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelError("device 'cuda' requested but CUDA is not available")
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"invalid device {device!r}: {exc}") from exc
    return _Request(
        images,
        roi_mask,
        channels,
        k,
        covariance_type,
        bool(per_slice),
        normalize,
        return_probabilities,
        rule,
        table,
        prior_means,
        dev,
        options,
        given,
        skipped,
        clip_percentiles,
        extreme,
        clip_statistics,
    )


def _slices_without_data(images: np.ndarray, roi: np.ndarray) -> list[int]:
    """z of the slices whose ROI is constant in some channel (all zero, outside its grid).

    Such a slice has no information in that sequence; a fit there would invent tissue.
    """
    out = []
    for z in np.nonzero(roi.reshape(len(roi), -1).any(1))[0]:
        values = images[z][roi[z]]  # (P, C)
        if np.any(values.max(0) == values.min(0)):
            out.append(int(z))
    return out


def _refuse_extreme(
    pixels: np.ndarray, channels: tuple[str, ...], percentiles: tuple[float, float]
) -> ClipStatistics:
    """Raise :class:`ExtremeIntensityError` for extreme ``(P, C)`` ROI intensities; else
    return their :class:`~napari_gmmseg.preprocess.ClipStatistics` for the packing."""
    from types import SimpleNamespace

    from napari_gmmseg.preprocess import SliceBatch, clip_bounds

    # as the fit sees them
    bounds, extreme, stats = clip_bounds(pixels.astype(np.float64), percentiles)
    n_extreme = extreme.sum(0).astype(np.int64)
    view = SimpleNamespace(
        clip_bounds=bounds, n_extreme=n_extreme, clip_percentiles=percentiles, channels=channels
    )
    message = SliceBatch.extreme_message(view)
    if message is not None:
        names = tuple(c for c, n in zip(channels, n_extreme, strict=True) if n)
        raise ExtremeIntensityError(
            f"{message}; refused (pass extreme='clip', CLI --extreme clip, to clip them and go on)",
            names,
        )
    return stats


def _run_method(
    spec: MethodSpec,
    req: _Request,
    batch: Any,
    init: str,
    tol: float,
    max_iter: int,
    seed: int,
    progress: Callable[[Progress], Any] | None,
    should_stop: Callable[[], bool] | None,
) -> Any:
    """Call the method's fit function on the batch, as its family prescribes."""
    fit_fn = spec.load_fit()
    kwargs = req.options.fit_kwargs()
    common = {"covariance_type": req.covariance_type, "seed": seed, "tol": tol}
    common.update(progress=progress, should_stop=should_stop)
    if spec.family == "em":
        return fit_fn(
            batch,
            n_components=req.k,
            init=init,
            max_iter=max_iter,
            prior_means=req.prior_means if init == "prior" else None,
            **common,
            **kwargs,
        )
    if spec.prior_means_as_mu_data and kwargs.get("mu_data") is None:
        kwargs["mu_data"] = req.prior_means
    return fit_fn(
        batch,
        method=spec.name,
        n_classes=req.k,
        device=req.device,
        channels=req.channels,
        **common,
        **kwargs,
    )


def _fit_and_name(
    spec: MethodSpec,
    req: _Request,
    init: str,
    tol: float,
    max_iter: int,
    seed: int,
    progress: Callable[[Progress], Any] | None,
    should_stop: Callable[[], bool] | None,
    t0: float,
) -> Fit:
    """Pack the batch, fit an ``em``/``deep`` method, name the components: the Fit."""
    import torch

    from napari_gmmseg import __version__
    from napari_gmmseg.preprocess import SliceBatch

    method, k, channels, table = spec.name, req.k, req.channels, req.table
    if spec.family == "em":  # numba's import and the kernel load, while the pixels pack
        from napari_gmmseg.em.estep import prefetch_fused

        prefetch_fused(
            k, len(channels), req.covariance_type, req.options, req.device, method == "svgmm"
        )
    batch = SliceBatch.from_volume(
        req.images,
        req.roi,
        channels=channels,
        normalize=req.normalize,
        per_slice=req.per_slice,
        clip_percentiles=req.clip_percentiles,
        device=req.device,
        validate=False,
        clip_statistics=req.clip_statistics,
    )
    extreme = batch.extreme_message()
    if extreme is not None and req.extreme == "refuse":
        names = tuple(c for c, n in zip(channels, batch.n_extreme, strict=True) if n)
        raise ExtremeIntensityError(
            f"{extreme}; refused (pass extreme='clip', CLI --extreme clip, to clip them and go on)",
            names,
        )
    if extreme is not None:
        import warnings

        warnings.warn(extreme, UserWarning, stacklevel=3)
    if progress is not None:
        known = req.prior_means is not None
        progress = _LiveLabels(
            progress, batch, method, req.per_slice, channels, table, known, k, t0
        )
    res = _run_method(spec, req, batch, init, tol, max_iter, seed, progress, should_stop)

    # ---------------------------------------------------------------- naming
    means = res.means.detach().to("cpu", torch.float64).numpy()
    c2c = _name_components(means, channels, table, req.prior_means is not None, k)
    finished = res.finished.detach().to("cpu").numpy().astype(bool)
    labels, components, probabilities = _build_labels(
        batch, res.responsibilities.detach(), c2c, finished, req.return_probabilities
    )

    # ---------------------------------------------------------------- per-slice arrays
    weights = res.weights.detach().to("cpu", torch.float64).numpy()
    covs = res.covariances.detach().to("cpu", torch.float64).numpy()
    hist = res.nll_history.detach().to("cpu", torch.float64).numpy()
    n_iter = res.n_iter.detach().to("cpu").numpy().astype(np.int64)
    converged = res.converged.detach().to("cpu").numpy().astype(bool)
    slice_index, rep = _slice_rows(batch, req.per_slice)
    if rep is not None:
        # One mixture for the volume: every fitted slice shares its parameters.
        weights, means, covs, c2c, hist = (a[rep] for a in (weights, means, covs, c2c, hist))
        n_iter, converged, finished = n_iter[rep], converged[rep], finished[rep]

    given = req.given_options
    params = {
        "method": method,
        "n_classes": k,
        "covariance_type": req.covariance_type,
        "init": init if spec.family == "em" else None,
        "tol": tol,
        "max_iter": max_iter,
        "seed": seed,
        "device": str(req.device),
        "per_slice": req.per_slice,
        "normalize": req.normalize,
        "clip": batch.clip_summary(),
        "channels": list(channels),
        "prior": table.to_dict(),
        "method_options": jsonable({k_: v for k_, v in given.items() if k_ != "weights"}),
        "skipped_slices": req.skipped,
        "engine": jsonable(dict(getattr(res, "info", {}) or {})),
        "version": __version__,
        "torch_version": torch.__version__,
    }
    if "weights" in given:
        params["method_options"]["weights"] = str(given["weights"])
    return Fit(
        method=method,
        labels=labels,
        components=components,
        probabilities=probabilities,
        slice_index=slice_index,
        weights_=weights,
        means_=means,
        covariances_=covs,
        component_to_class=c2c,
        nll_history=hist,
        n_iter_=n_iter,
        converged_=converged,
        finished=finished,
        seconds=time.perf_counter() - t0,
        params=params,
    )


def with_sources(exc: ExtremeIntensityError, sources: dict[str, Any]) -> ExtremeIntensityError:
    """The same error with the files of its channels (``sources``: channel -> path) in front."""
    files = [str(sources[c]) for c in exc.channels if c in sources]
    if not files:
        return exc
    return ExtremeIntensityError(f"{', '.join(files)}: {exc}", exc.channels)


def segment_case(
    case: Any,
    *,
    roi: str | np.ndarray | None = "gt",
    roi_labels: Sequence[int] = LV_ROI_VALUES,
    **kw: Any,
) -> Fit:
    """Segment a :class:`~napari_gmmseg.io.Case`.

    Parameters
    ----------
    case : napari_gmmseg.io.Case
        The loaded case (images, channel names, optional ground-truth labels).
    roi : "gt", "auto", None or numpy.ndarray, default "gt"
        ``"gt"``: the LV ROI from the case's ground-truth mask (``roi_labels``);
        ``"auto"``: found from the bSSFP image (:func:`napari_gmmseg.autoroi.find_roi`;
        slices failing its QC are not segmented, the QC goes to
        ``params["roi_qc"]``); None: whole slices; an array: a ``(Z, Y, X)`` bool
        mask, or a label map from which ``roi_labels`` are taken when it is not boolean.
    roi_labels : sequence of int, default (500, 200, 1220, 2221)
        Label values that make up the ROI.
    **kw
        Options of :func:`segment`.

    Returns
    -------
    Fit
        With ``params["case_id"]``.

    Raises
    ------
    RoiError
        ``roi="gt"`` on a case without ground truth, or an unusable ROI.
    """
    qc = None
    if isinstance(roi, str) and roi == "auto":
        from napari_gmmseg.autoroi import find_roi

        auto = find_roi(case.images, case.channels, case.spacing_mm)
        if not auto.roi.any():
            raise RoiError(f"case {case.case_id}: the automatic ROI fails QC on every slice")
        roi_mask, qc = auto.roi, [q.as_row() for q in auto.qc]
    elif isinstance(roi, str):
        if roi != "gt":
            raise RoiError(f"roi must be 'gt', 'auto', None or an array, got {roi!r}")
        if case.labels is None:
            raise RoiError(
                f"case {case.case_id} has no ground-truth mask for roi='gt'; pass roi=None "
                "(whole slices) or a mask"
            )
        roi_mask = np.isin(case.labels, np.asarray(roi_labels))
    elif roi is None:
        roi_mask = None
    else:
        roi_arr = np.asarray(roi)
        roi_mask = roi_arr if roi_arr.dtype == bool else np.isin(roi_arr, np.asarray(roi_labels))
    kw.setdefault("channels", case.channels)
    if get_method(kw.get("method", DEFAULT_METHOD)).accepts("spacing_mm"):
        kw.setdefault("spacing_mm", case.spacing_mm)  # pipelines with radii in mm
    try:
        fit = segment(case.images, roi_mask, **kw)
    except ExtremeIntensityError as exc:
        raise with_sources(exc, case.sources) from None
    fit.params["case_id"] = case.case_id
    fit.params["roi"] = roi if isinstance(roi, str) or roi is None else "array"
    if qc is not None:
        fit.params["roi_qc"] = qc
    if isinstance(roi, str) or roi is not None:
        fit.params["roi_labels"] = [int(v) for v in roi_labels]
    from napari_gmmseg.accuracy import attach_interval

    source = None if roi is None else "auto" if isinstance(roi, str) and roi == "auto" else "manual"
    attach_interval(fit, source, case.spacing_mm)
    return fit
