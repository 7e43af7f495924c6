"""Dataset evaluation: segment every case with every method, score, tabulate.

:func:`evaluate_dataset` is what ``napari-gmmseg evaluate`` and ``napari-gmmseg
demo`` run. For every case of a dataset (MyoPS layout or one folder per case,
found by :func:`napari_gmmseg.io.discover_cases`) and every method it

1. segments the case inside the ROI (ground-truth LV by default) with
   :func:`napari_gmmseg.segment.segment_case`, unless ``OUT/<method>/<case>.nii.gz``
   already exists (resumable; ``force=True`` recomputes);
2. writes the label map with MyoPS values on the source geometry
   (:func:`napari_gmmseg.io.save_labels`, atomic) and a small provenance sidecar
   ``OUT/<method>/<case>.json`` (runtime, options);
3. scores the *saved* label map against the ground truth
   (:func:`napari_gmmseg.metrics.evaluate_labels`), so a resumed run gives the
   same tables as a fresh one.

Then it writes ``OUT/metrics.csv`` (one row per case, method, slice or volume and
class), ``OUT/summary.json`` (aggregates, failures with their error message,
runtimes, versions, options) and returns the paper-style table as text.
A case that fails (unreadable file, empty ROI, ...) is recorded in the summary
and the others finish. With ``scheduler`` set, cases run as Dask distributed
tasks (one task per case, all methods) with identical outputs.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg._json import jsonable
from napari_gmmseg._version import __version__
from napari_gmmseg.errors import CaseLoadError, GeometryError, GmmSegError, ModelError, RoiError
from napari_gmmseg.labels import CLASS_NAMES, LV_ROI_VALUES
from napari_gmmseg.metrics import LV_MYOCARDIUM_NAME, SCAR_EDEMA_NAME
from napari_gmmseg.presence import resolve_rule

#: Sub-folder of an evaluation's output with the automatic ROI of every case.
AUTO_ROI_DIR = "auto_roi"
#: Column order of ``metrics.csv``.
CSV_COLUMNS: tuple[str, ...] = (
    "case",
    "method",
    "level",
    "slice",
    "class",
    "dice",
    "dice_named",
    "hd95_mm",
    "pred_ml",
    "gt_ml",
    "pred_pct",
    "gt_pct",
    "pred_ml_matched",
    "pred_pct_matched",
    "gt_present",
    "pred_present",
    "all_classes",
)
#: Columns of ``metrics.csv`` that hold numbers.
_FLOAT_COLUMNS: tuple[str, ...] = (
    "dice",
    "dice_named",
    "hd95_mm",
    "pred_ml",
    "gt_ml",
    "pred_pct",
    "gt_pct",
    "pred_ml_matched",
    "pred_pct_matched",
)
#: Classes aggregated in the Dice blocks: the four classes, the LV myocardium, scar ∪ edema.
TABLE_CLASSES: tuple[str, ...] = (*CLASS_NAMES, LV_MYOCARDIUM_NAME, SCAR_EDEMA_NAME)
#: The MyoPS 2020 per-case scores (plus LV myocardium) of ``summarize``'s ``myops_per_case``.
MYOPS_CLASSES: tuple[str, ...] = ("scar", SCAR_EDEMA_NAME, LV_MYOCARDIUM_NAME)


@dataclass
class CaseOutcome:
    """What happened to one (case, method) pair.

    Attributes
    ----------
    case_id, method : str
        The pair.
    status : str
        ``"segmented"``, ``"skipped"`` (label map already there, re-scored) or ``"failed"``.
    seconds : float or None
        Fit wall time (from the sidecar for skipped cases; None when unknown).
    error : str or None
        ``"ExceptionType: message"`` for a failure.
    label_path : str or None
        The label map written or reused.
    rows : list of dict
        Metric rows (see :func:`napari_gmmseg.metrics.evaluate_labels`) with
        ``case`` and ``method`` added; empty without ground truth.
    info : dict
        Fit provenance (iterations, convergence, options) when known.
    """

    case_id: str
    method: str
    status: str
    seconds: float | None = None
    error: str | None = None
    label_path: str | None = None
    rows: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    """Result of :func:`evaluate_dataset`.

    Attributes
    ----------
    outcomes : list of CaseOutcome
        Sorted by case then method order.
    rows : list of dict
        Every metric row (the content of ``metrics.csv``).
    summary : dict
        The content of ``summary.json``.
    table : str
        The paper-style text table.
    out_dir : Path
        Output folder.
    """

    outcomes: list[CaseOutcome]
    rows: list[dict]
    summary: dict[str, Any]
    table: str
    out_dir: Path

    @property
    def failures(self) -> list[CaseOutcome]:
        """Outcomes that failed."""
        return [o for o in self.outcomes if o.status == "failed"]


# --------------------------------------------------------------------------- helpers
def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary result files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _resolve_roi(
    roi: str | os.PathLike | None, case, out_dir: Path | None = None, force: bool = False
) -> np.ndarray | None:
    """The ROI mask of one case: ground-truth LV, automatic, or read from a file / folder."""
    from napari_gmmseg import io

    if isinstance(roi, str) and roi.lower() == "auto":
        from napari_gmmseg.autoroi import case_roi

        return case_roi(case, Path(out_dir or ".") / AUTO_ROI_DIR, force=force)
    if roi is None or (isinstance(roi, str) and roi.lower() == "gt"):
        if case.labels is None:
            raise RoiError(
                f"case {case.case_id}: no ground-truth mask, so the default ROI (ground-truth LV) "
                "is undefined; give --roi FILE"
            )
        mask = case.roi(LV_ROI_VALUES)
    else:
        path = Path(roi)
        if path.is_dir():
            hits = sorted(
                p
                for p in path.iterdir()
                if io.is_image_path(p)
                and case.case_id in p.name.split(".")[0].replace("-", "_").split("_")
            )
            if not hits:
                raise RoiError(f"case {case.case_id}: no ROI file for it in {path}")
            path = hits[0]
        arr, geometry = io.read_volume(path)
        if tuple(arr.shape) != tuple(case.shape) or not geometry.same_grid(case.geometry):
            raise GeometryError(
                f"case {case.case_id}: ROI {path} is on grid {geometry} but the case is on "
                f"{case.geometry}"
            )
        # the same rule as `segment --roi`: a binary mask, or a label map's LV (an RV-only
        # or foreign-labelled mask is refused, never used as the ROI)
        mask = io.roi_from_mask(np.asarray(arr), LV_ROI_VALUES, name=str(path))
    if not mask.any():
        raise RoiError(f"case {case.case_id}: the ROI is empty")
    return mask


#: Options of :func:`napari_gmmseg.segment.segment` itself, which every method takes.
_SEGMENT_OPTIONS = frozenset(
    {
        "n_classes",
        "covariance_type",
        "init",
        "tol",
        "max_iter",
        "seed",
        "device",
        "per_slice",
        "prior",
        "normalize",
        "return_probabilities",
        "clip_percentiles",
        "extreme",
    }
)


def _method_kwargs(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Options for one method: ``segment``'s own, and those the method's registry entry takes.

    Options of other methods (``n_init`` for a deep method, ``max_epochs`` for EM) are
    left out, so one option set serves a whole ``--methods`` list.
    """
    from napari_gmmseg.methods import get_method

    spec = get_method(method)
    return {
        key: value
        for key, value in options.items()
        if value is not None and (key in _SEGMENT_OPTIONS or spec.accepts(key))
    }


def _check_options(methods: Sequence[str], options: Mapping[str, Any]) -> None:
    """Refuse, before any case runs, an option no method takes (misspelt) or a bad value.

    An option of another registered method (``max_epochs`` with only ``gmm``) is left
    out for the methods that do not take it, so one option set serves a method list.
    """
    from napari_gmmseg.methods import METHODS, get_method

    specs = [get_method(m) for m in methods]
    given = {k: v for k, v in options.items() if v is not None and k not in _SEGMENT_OPTIONS}
    stray = sorted(k for k in given if not any(spec.accepts(k) for spec in METHODS.values()))
    if stray:
        raise ModelError(f"unknown option(s) {stray}; no method takes them")
    for spec in specs:
        spec.make_options({k: v for k, v in given.items() if spec.accepts(k)})


def evaluate_case(
    source,
    methods: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    roi: str | os.PathLike | None = "gt",
    force: bool = False,
    options: Mapping[str, Any] | None = None,
    with_hd95: bool = False,
    empty: float = float("nan"),
    presence: Any = None,
    on_done: Callable[[CaseOutcome], None] | None = None,
    on_progress: Callable[[str, str, Any], None] | None = None,
    channels: Sequence[str] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[CaseOutcome]:
    """Segment (or reuse) and score one case with every method; never raises for the case.

    Parameters
    ----------
    source : napari_gmmseg.io.CaseSource
        The case (loaded here, once for all methods).
    methods : sequence of str
        Method names (:data:`napari_gmmseg.segment.METHODS`).
    out_dir : path-like
        Output root; label maps go to ``out_dir/<method>/<case>.nii.gz``.
    roi, force, options, with_hd95, empty, presence
        See :func:`evaluate_dataset`.
    on_done : callable, optional
        Called with each :class:`CaseOutcome` as soon as it is known.
    on_progress : callable, optional
        Called with ``(case_id, method, napari_gmmseg.fit.Progress)`` while a method runs.
    channels : sequence of str, optional
        Sequences the case must have (the dataset's); a case without one fails.
    on_step : callable, optional
        Called with a short text (``"1001: loading"``, ``"1001 gmm: segmenting"``) as each
        step of the case starts, so a progress display never sits still on a long step.

    Returns
    -------
    list of CaseOutcome
        One per method, in ``methods`` order.
    """
    from napari_gmmseg import io
    from napari_gmmseg.metrics import evaluate_labels

    out_dir = Path(out_dir)
    options = dict(options or {})
    rule = resolve_rule(presence)
    presence_json = None if rule is None else asdict(rule)
    case_id = source.case_id
    outcomes: list[CaseOutcome] = []

    def done(outcome: CaseOutcome) -> None:
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)

    def say(text: str) -> None:
        if on_step is not None:
            on_step(text)

    try:
        say(f"{case_id}: loading")
        case = source.load(channels=channels)
        if roi is not None and str(roi).lower() == "auto":
            say(f"{case_id}: automatic ROI")
        roi_mask = _resolve_roi(roi, case, out_dir, force)
    except Exception as exc:  # one broken case must not stop the batch
        for method in methods:
            done(CaseOutcome(case_id, method, "failed", error=_error_text(exc)))
        return outcomes

    for method in methods:
        label_path = out_dir / method / f"{case_id}.nii.gz"
        sidecar = label_path.with_name(label_path.name[: -len(".nii.gz")] + ".json")
        requested = _requested(method, options, presence_json, roi)
        try:
            reuse = label_path.exists() and not force and _reusable(label_path, sidecar, requested)
            if reuse:
                status = "skipped"
                labels, geometry = io.read_labels(label_path, with_geometry=True)
                if tuple(labels.shape) != tuple(case.shape) or not geometry.same_grid(
                    case.geometry
                ):
                    raise GeometryError(
                        f"{label_path}: grid {geometry} does not match case {case.case_id} "
                        f"({case.geometry}); rerun with --force"
                    )
                info = json.loads(sidecar.read_text(encoding="utf-8"))
                seconds = info.get("seconds")
            else:
                from napari_gmmseg.segment import segment_case

                status = "segmented"
                say(f"{case_id} {method}: segmenting")
                kwargs = _method_kwargs(method, options)
                if on_progress is not None:
                    kwargs["progress"] = lambda p, m=method: on_progress(case_id, m, p)
                fit = segment_case(case, roi=roi_mask, method=method, presence=rule, **kwargs)
                labels = np.asarray(fit.labels, dtype=np.int32)
                if fit.cancelled:
                    raise ModelError(f"{method} on case {case_id} was cancelled")
                # an existing map here is ours and unreadable (see _reusable): redo it
                io.save_labels(labels, case.geometry, label_path, overwrite=True)
                seconds = float(fit.seconds)
                info = {
                    "case": case_id,
                    "method": method,
                    "seconds": seconds,
                    "n_slices_fitted": len(fit.slice_index),
                    "mean_iterations": float(np.mean(fit.n_iter_)) if len(fit.n_iter_) else 0.0,
                    "converged_fraction": float(np.mean(fit.converged_))
                    if len(fit.converged_)
                    else 0.0,
                    "params": jsonable(fit.params),
                    "requested": requested,
                    "version": __version__,
                }
                _atomic_write_text(sidecar, json.dumps(jsonable(info), indent=1))
            rows = []
            if case.labels is not None:
                for row in evaluate_labels(
                    labels,
                    case.labels,
                    case.spacing_mm,
                    roi=roi_mask,
                    with_hd95=with_hd95,
                    empty=empty,
                ):
                    rows.append({"case": case_id, "method": method, **row})
            done(CaseOutcome(case_id, method, status, seconds, None, str(label_path), rows, info))
        except Exception as exc:  # recorded in the summary; the other methods and cases go on
            done(CaseOutcome(case_id, method, "failed", error=_error_text(exc)))
    return outcomes


#: Options that change the labels by float rounding at most (where the arithmetic runs and
#: in which order), left out when a resumed run compares options.
_NOT_COMPARED = frozenset({"device", "num_threads", "chunk_pixels", "check_every", "estep_kernel"})


def _requested(method: str, options: Mapping[str, Any], presence: Any, roi: Any) -> dict[str, Any]:
    """What a label map of ``method`` depends on, as recorded in its sidecar and compared on
    resume: the method's options with defaults filled in (so ``--seed 0`` equals no
    ``--seed``), the presence rule and the ROI."""
    import inspect

    from napari_gmmseg.segment import segment

    defaults = {
        n: p.default
        for n, p in inspect.signature(segment).parameters.items()
        if p.default is not inspect.Parameter.empty and n not in ("progress", "should_stop")
    }
    from napari_gmmseg.methods import get_method

    spec = get_method(method)
    own = {f.name: getattr(spec.make_options({}), f.name) for f in fields(spec.options)}
    defaults.update(own, extreme="refuse", method=spec.name)  # the method run, not the default
    kwargs = {**defaults, **_method_kwargs(method, options)}
    kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_COMPARED and v is not None}
    roi_key = _roi_key(roi)
    return jsonable({"options": kwargs, "presence": presence, "roi": roi_key})


def _roi_key(roi: Any) -> str:
    """How a run records its ROI: ``gt``, ``auto`` (never a path in the current folder), or
    the mask file's absolute path."""
    if roi is None or str(roi).lower() in ("gt", "auto"):
        return "gt" if roi is None else str(roi).lower()
    return str(Path(roi).resolve())


def _reusable(label_path: Path, sidecar: Path, requested: Mapping[str, Any]) -> bool:
    """Whether an existing label map may be reused: True when it was made with the same
    options; False (redo it) when it or its sidecar is unreadable or truncated.

    Raises
    ------
    OutputExistsError
        When it was made with other options (never mixed into this run's results).
    """
    from napari_gmmseg import io
    from napari_gmmseg.errors import OutputExistsError

    try:
        info = json.loads(sidecar.read_text())
        io.read_labels(label_path)
    except (OSError, ValueError, GmmSegError):
        return False  # truncated, unreadable or without provenance: ours to redo
    made = info.get("requested")
    if made == requested:
        return True
    diff = sorted(
        f"{k}={v!r} (now {requested['options'].get(k)!r})"
        for k, v in ((made or {}).get("options") or {}).items()
        if requested["options"].get(k) != v
    )
    for key in ("presence", "roi"):
        if (made or {}).get(key) != requested.get(key):
            diff.append(f"{key}={(made or {}).get(key)!r} (now {requested.get(key)!r})")
    raise OutputExistsError(
        f"{label_path} was made with other options ({', '.join(diff) or made}); "
        "pass --force to redo it or choose another --out"
    )


# --------------------------------------------------------------------------- progress
class _Bar:
    """Terminal progress bar over (case, method) units (tqdm), or a callback."""

    def __init__(self, total: int, progress) -> None:
        self.callback = progress if callable(progress) else None
        self.bar = None
        self.done = 0
        self.total = total
        if progress is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="run", desc="evaluate", file=sys.stderr)

    def running(self, case_id: str, method: str, progress) -> None:
        """Show a running fit's slices and iteration (at most twice a second)."""
        now = time.monotonic()
        if self.bar is None or now - getattr(self, "_last", 0.0) < 0.5:
            return
        self._last = now
        self.bar.set_postfix_str(
            f"{case_id} {method} slices {progress.slices_done}/{progress.slices_total} "
            f"iteration {progress.iteration}"
        )

    def step(self, text: str) -> None:
        """Show the step that just started (at once: it may run for seconds)."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def update(self, outcome: CaseOutcome) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{outcome.case_id} {outcome.method} {outcome.status}")
            self.bar.update(1)
        if self.callback is not None:
            self.callback(self.done, self.total, outcome)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- main entry
def _select_sources(dataset: Path, cases: Sequence[str] | None) -> list:
    """The dataset's cases (only ``cases`` when given; an unknown id is an error)."""
    from napari_gmmseg import io

    sources = io.discover_cases(dataset)
    if cases is not None:
        wanted = [str(c) for c in cases]
        missing = [c for c in wanted if c not in {s.case_id for s in sources}]
        if missing:
            known = ", ".join(s.case_id for s in sources) or "none"
            raise CaseLoadError(f"{dataset}: no case {missing}; the cases are {known}")
        sources = [s for s in sources if s.case_id in set(wanted)]
    if not sources:
        raise CaseLoadError(f"{dataset}: no case found (MyoPS layout or one folder per case)")
    return sources


def evaluate_dataset(
    dataset: str | os.PathLike,
    methods: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    roi: str | os.PathLike | None = "gt",
    force: bool = False,
    scheduler: str | Any | None = None,
    progress: bool | Callable[[int, int, CaseOutcome], None] = True,
    options: Mapping[str, Any] | None = None,
    with_hd95: bool = False,
    empty: float = float("nan"),
    presence: Any = None,
    cases: Sequence[str] | None = None,
    plots: bool = True,
) -> Evaluation:
    """Evaluate segmentation methods on a whole dataset.

    Parameters
    ----------
    dataset : path-like
        Dataset root (MyoPS layout or one folder per case).
    methods : sequence of str
        Methods to run, e.g. ``("gmm", "svgmm", "deepsvg")``.
    out_dir : path-like
        Output folder (created). Existing label maps are reused unless ``force``.
    roi : "gt", "auto", path or None
        ``"gt"`` (default): the ground-truth LV (labels 500, 200, 1220, 2221).
        ``"auto"``: found from the bSSFP image, kept with its QC and ROI Dice in
        ``out_dir/auto_roi/`` (:func:`napari_gmmseg.autoroi.case_roi`). A file:
        a mask on the case grid (LV values if present, else every non-zero voxel);
        a folder: one such file per case, found by case id in its name.
    force : bool
        Re-segment cases whose label map exists (and overwrite it).
    scheduler : str or distributed.Client, optional
        Address of a Dask distributed scheduler (or a client): cases run as tasks
        on its workers, which must see the same paths. Outputs are identical.
    progress : bool or callable
        True: terminal progress bar; a callable gets ``(done, total, outcome)``.
    options : mapping, optional
        Keyword options for :func:`napari_gmmseg.segment.segment_case` (``seed``,
        ``device``, ``max_iter``, ``tol``, ...; ``max_epochs`` and other deep-only
        options are passed to deep methods only).
    with_hd95 : bool
        Also compute HD95 (mm).
    empty : float
        Dice of a class absent from prediction and ground truth (NaN = excluded).
    presence : PresenceRule, str, dict or None
        Per-slice class presence applied to every fit
        (:func:`napari_gmmseg.presence.apply_presence`); None or ``"none"`` keeps the
        paper's fixed K = 4.
    cases : sequence of str, optional
        Only these case ids.
    plots : bool
        Write ``bland_altman.png`` (burden agreement per slice, see
        :func:`napari_gmmseg.agreement.write_bland_altman`) beside the table.

    Returns
    -------
    Evaluation
        Outcomes, rows, summary and table; files written to ``out_dir``.

    Raises
    ------
    CaseLoadError
        The dataset folder holds no case, or none with an id in ``cases``.
    ModelError
        Unknown method name.
    """

    t0 = time.perf_counter()
    methods = list(dict.fromkeys(m.strip().lower() for m in methods if m.strip()))
    if not methods:
        raise ModelError("no method given")
    from napari_gmmseg.methods import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ModelError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    _check_options(methods, options or {})
    dataset = Path(dataset)
    sources = _select_sources(dataset, cases)
    out_dir = Path(out_dir)
    rule = resolve_rule(presence)  # validated before any case runs
    from napari_gmmseg import io

    with io.RunLock(out_dir):  # a second run on OUT is refused while this one lives
        return _evaluate_locked(
            dataset, sources, methods, out_dir, rule, t0,
            roi=roi, force=force, scheduler=scheduler, progress=progress, options=options,
            with_hd95=with_hd95, empty=empty, plots=plots,
        )  # fmt: skip


def _dataset_channels(sources: Sequence[Any]) -> tuple[str, ...]:
    """Sequences every case must have: all those any case of the dataset has."""
    found = {c for s in sources for c in s.sequences}
    from napari_gmmseg.labels import DEFAULT_CHANNELS

    return tuple(c for c in DEFAULT_CHANNELS if c in found) + tuple(
        sorted(found - set(DEFAULT_CHANNELS))
    )


def _evaluate_locked(
    dataset: Path,
    sources: list,
    methods: list[str],
    out_dir: Path,
    rule: Any,
    t0: float,
    *,
    roi: Any,
    force: bool,
    scheduler: Any,
    progress: Any,
    options: Mapping[str, Any] | None,
    with_hd95: bool,
    empty: float,
    plots: bool,
) -> Evaluation:
    """:func:`evaluate_dataset` once it holds the lock on ``out_dir``."""
    options = dict(options or {})
    kw = dict(
        roi=roi,
        force=force,
        options=options,
        with_hd95=with_hd95,
        empty=empty,
        presence=rule,
        channels=_dataset_channels(sources),
    )
    bar = _Bar(len(sources) * len(methods), progress)
    outcomes: list[CaseOutcome] = []
    try:
        if scheduler is None:
            for src in sources:
                outcomes += evaluate_case(
                    src,
                    methods,
                    out_dir,
                    on_done=bar.update,
                    on_progress=bar.running,
                    on_step=bar.step,
                    **kw,
                )
        else:
            outcomes = _run_distributed(scheduler, sources, methods, out_dir, kw, bar)
    finally:
        bar.close()
    order = {m: i for i, m in enumerate(methods)}
    outcomes.sort(key=lambda o: (o.case_id, order[o.method]))
    rows = [row for o in outcomes for row in o.rows]
    wall = time.perf_counter() - t0
    aggregates = summarize(rows, outcomes, methods)
    table = format_table(aggregates, methods)
    summary = {
        "dataset": str(dataset.resolve()),
        "out_dir": str(out_dir.resolve()),
        "methods": methods,
        "roi": _roi_key(roi),
        "force": force,
        "options": options,
        "with_hd95": with_hd95,
        "presence": None if rule is None else asdict(rule),
        "empty_class_dice": "nan (excluded from means)" if math.isnan(empty) else empty,
        "scheduler": None if scheduler is None else str(getattr(scheduler, "scheduler", scheduler)),
        "cases": [s.case_id for s in sources],
        "n_cases": len(sources),
        "wall_seconds": wall,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": _versions(),
        "failures": [
            {"case": o.case_id, "method": o.method, "error": o.error}
            for o in outcomes
            if o.status == "failed"
        ],
        "runs": [{k: v for k, v in asdict(o).items() if k != "rows"} for o in outcomes],
        "warnings": [
            f"{o.case_id} {o.method}: {o.info['warning']}" for o in outcomes if "warning" in o.info
        ],
        "aggregates": aggregates,
        "table": table,
    }
    if not any(o.status != "failed" for o in outcomes) and (
        (out_dir / "metrics.csv").exists() or (out_dir / "summary.json").exists()
    ):
        # nothing was segmented or reused: the tables of an earlier run stay as they are
        summary["warnings"].append(
            "every case failed: metrics.csv and summary.json of the earlier run are kept"
        )
        return Evaluation(outcomes, rows, summary, table, out_dir)
    if isinstance(roi, str) and roi.lower() == "auto":
        from napari_gmmseg.autoroi import collect_case_qc, write_qc_csv

        qc_rows, qc_text = collect_case_qc(out_dir / AUTO_ROI_DIR, summary["cases"])
        write_qc_csv(qc_rows, out_dir / AUTO_ROI_DIR / "qc.csv")
        summary["auto_roi"] = qc_rows
        summary["table"] = table = f"{table}\n\n{qc_text}" if qc_text else table
    write_csv(rows, out_dir / "metrics.csv")
    if rows and plots:
        summary["bland_altman"] = _bland_altman(rows, out_dir, summary["warnings"])
    _atomic_write_text(out_dir / "summary.json", json.dumps(jsonable(summary), indent=1))
    return Evaluation(outcomes, rows, summary, table, out_dir)


def _bland_altman(rows: list[dict], out_dir: Path, warnings: list[str]) -> dict | None:
    """Burden Bland-Altman plot ``bland_altman.png`` (per slice) and its statistics."""
    try:
        from napari_gmmseg.agreement import write_bland_altman
    except ImportError:  # pragma: no cover - optional module
        return None
    try:
        return write_bland_altman(rows, out_dir / "bland_altman.png", overwrite=True)
    except Exception as exc:  # a plot must not lose the metrics already written
        warnings.append(f"bland_altman.png not written: {_error_text(exc)}")
        return None


def _run_distributed(scheduler, sources, methods, out_dir, kw, bar) -> list[CaseOutcome]:
    """One Dask task per case; results gathered as they complete."""
    try:
        from distributed import Client, as_completed
    except ImportError as exc:  # pragma: no cover - optional extra
        raise ModelError(
            "--scheduler needs dask distributed: pip install 'napari-gmmseg[dask]'"
        ) from exc
    own = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler, timeout="20s") if own else scheduler
    except (OSError, TimeoutError) as exc:
        raise GmmSegError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
    try:
        futures = [
            client.submit(
                evaluate_case,
                src,
                methods,
                out_dir,
                pure=False,  # a fresh task every call, even for the same case
                **kw,
            )
            for src in sources
        ]
        outcomes: list[CaseOutcome] = []
        for fut in as_completed(futures):
            try:
                result = fut.result()
            except Exception as exc:  # a worker died: report the case, go on
                idx = futures.index(fut)
                result = [
                    CaseOutcome(sources[idx].case_id, m, "failed", error=_error_text(exc))
                    for m in methods
                ]
            for outcome in result:
                bar.update(outcome)
            outcomes += result
        return outcomes
    finally:
        if own:
            client.close()


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"napari-gmmseg": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "torch", "monai", "nibabel", "SimpleITK", "dask", "distributed"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# --------------------------------------------------------------------------- CSV
def _fmt(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, float | np.floating):
        return "nan" if not math.isfinite(float(value)) else f"{float(value):.6g}"
    return str(value)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write metric rows to ``path`` (atomic) with :data:`CSV_COLUMNS`; volume rows get slice "volume"."""
    buf = _stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = []
        for col in CSV_COLUMNS:
            v = row.get(col, "")
            if col == "slice" and row.get("level") == "volume":
                v = "volume"
            values.append(_fmt(v))
        writer.writerow(values)
    path = Path(path)
    _atomic_write_text(path, buf.getvalue())
    return path


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``metrics.csv`` back (numbers as float, flags as bool, slice as int or "volume")."""
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            r: dict[str, Any] = dict(row)
            for col in _FLOAT_COLUMNS:
                if col in r:  # a metrics.csv from before the matched burden columns
                    r[col] = float(r[col])
            for col in ("gt_present", "pred_present", "all_classes"):
                r[col] = r[col] == "1"
            r["slice"] = r["slice"] if r["slice"] == "volume" else int(r["slice"])
            out.append(r)
    return out


# --------------------------------------------------------------------------- tables
def _stat(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    ok = arr[np.isfinite(arr)]
    return {
        "mean": float(ok.mean()) if ok.size else None,
        "std": float(ok.std()) if ok.size else None,
        "n": int(ok.size),
        "excluded": int(arr.size - ok.size),
    }


def _dice_block(rows: list[dict], key: str, keep: Callable[[dict], bool]) -> dict[str, Any]:
    """Mean ± std per class and of the per-unit class mean, over the units kept."""
    units: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if keep(r):
            units.setdefault((r["case"], r["slice"]), {})[r["class"]] = r[key]
    block: dict[str, Any] = {"n_units": len(units)}
    for name in TABLE_CLASSES:
        block[name] = _stat([u.get(name, np.nan) for u in units.values()])
    means = []
    for u in units.values():
        vals = np.asarray([u.get(n, np.nan) for n in CLASS_NAMES], dtype=np.float64)
        means.append(float(np.nanmean(vals)) if np.isfinite(vals).any() else np.nan)
    block["mean"] = _stat(means)
    return block


def summarize(
    rows: Sequence[Mapping[str, Any]], outcomes: Sequence[CaseOutcome], methods: Sequence[str]
) -> dict[str, Any]:
    """Aggregate metric rows per method (the numbers behind the printed table).

    For each method: ``slice_paper`` (matched Dice over slices whose ground truth
    holds all four classes, the paper's protocol), ``slice_all`` (matched, every
    slice with ground truth), ``volume`` (matched per slice, scored per volume),
    ``volume_named`` (as labelled by the method), ``burden`` (per case: mean
    predicted and true scar / edema % of LV myocardium and volume in mL, bias =
    mean(pred - GT), MAE = mean |pred - GT|), ``hd95_mm`` per volume when computed,
    and ``runtime`` (cases segmented / skipped / failed, mean fit seconds per case).
    ``myops_per_case`` holds the MyoPS 2020 challenge's scores (Dice per case of
    scar and of scar ∪ edema, plus LV myocardium) ``named`` and ``matched`` (views of
    ``volume_named`` and ``volume``); ``burden_agreement`` the MAE, bias and 95 %
    limits of agreement of scar / edema burden (% and mL) per ``case`` and per
    ``slice``, ``named`` and ``matched``
    (:func:`napari_gmmseg.agreement.agreement_summary`).
    Each statistic carries ``n`` (values used) and ``excluded`` (NaN values left out).
    """
    from napari_gmmseg.agreement import agreement_summary, bland_altman

    out: dict[str, Any] = {}
    for method in methods:
        mrows = [r for r in rows if r["method"] == method]
        vol = [r for r in mrows if r["level"] == "volume"]
        sl = [r for r in mrows if r["level"] == "slice"]
        agg: dict[str, Any] = {
            "slice_paper": _dice_block(sl, "dice", lambda r: bool(r["all_classes"])),
            "slice_all": _dice_block(sl, "dice", lambda r: True),
            "volume": _dice_block(vol, "dice", lambda r: True),
            "volume_named": _dice_block(vol, "dice_named", lambda r: True),
        }
        if any(np.isfinite(r["hd95_mm"]) for r in vol):
            agg["hd95_mm"] = _dice_block(vol, "hd95_mm", lambda r: True)
        burden: dict[str, Any] = {}
        for name, unit in (("scar", "pct"), ("edema", "pct"), ("scar", "ml"), ("edema", "ml")):
            pairs = np.asarray(
                [(r[f"pred_{unit}"], r[f"gt_{unit}"]) for r in vol if r["class"] == name],
                dtype=np.float64,
            ).reshape(-1, 2)
            ba = bland_altman(pairs[:, 0], pairs[:, 1])
            burden[f"{name}_{unit}"] = {
                "pred": _stat(pairs[:, 0]),
                "gt": _stat(pairs[:, 1]),
                "bias": ba.bias if ba.n else None,
                "mae": ba.mae if ba.n else None,
                "n": ba.n,
            }
        agg["burden"] = burden
        agg["myops_per_case"] = {
            flavour: {name: agg[block][name] for name in MYOPS_CLASSES}
            for flavour, block in (("named", "volume_named"), ("matched", "volume"))
        }
        agg["burden_agreement"] = agreement_summary(mrows).get(method, {})
        mo = [o for o in outcomes if o.method == method]
        secs = [o.seconds for o in mo if o.status != "failed" and o.seconds is not None]
        agg["runtime"] = {
            "segmented": sum(o.status == "segmented" for o in mo),
            "skipped": sum(o.status == "skipped" for o in mo),
            "failed": sum(o.status == "failed" for o in mo),
            "seconds_per_case": _stat(secs),
        }
        out[method] = agg
    return out


def _pm(stat: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:+.{digits}f}" if digits < 0 else f"{v:.{digits}f}"


def _myops_lines(aggregates: Mapping[str, Any], methods: Sequence[str], w: int) -> list[str]:
    """The MyoPS 2020 per-case Dice block, as named and matched side by side."""
    present = [m for m in methods if "myops_per_case" in aggregates.get(m, {})]
    if not present:
        return []
    cols = [
        (f"{flavour} {head}", flavour, name)
        for flavour in ("named", "matched")
        for head, name in (("scar", "scar"), ("scar+edema", SCAR_EDEMA_NAME))
    ]
    cols.append(("named LV myo", "named", LV_MYOCARDIUM_NAME))
    lines = [
        "MyoPS 2020 scores: Dice per case (whole volume), mean ± std over cases; "
        "named = labels as the method named them, matched = after per-slice matching",
        f"{'method':<{w}}{'n':>5}  " + "".join(f"{h:>20}" for h, _, _ in cols),
    ]
    excluded = []
    for m in present:
        b = aggregates[m]["myops_per_case"]
        n = aggregates[m]["volume"]["n_units"]
        lines.append(f"{m:<{w}}{n:>5}  " + "".join(f"{_pm(b[f][k]):>20}" for _, f, k in cols))
        ex = {h: b[f][k]["excluded"] for h, f, k in cols if b[f][k]["excluded"]}
        if ex:
            excluded.append(f"{m}: " + ", ".join(f"{h} {c}" for h, c in ex.items()))
    if excluded:
        lines.append("  excluded (no scar / edema in prediction nor GT): " + "; ".join(excluded))
    return [*lines, ""]


def _agreement_lines(aggregates: Mapping[str, Any], methods: Sequence[str], w: int) -> list[str]:
    """Burden MAE, bias and 95 % limits of agreement per case and per slice, named and matched."""
    lines = [
        "Burden agreement with ground truth, points of % LV myocardium: MAE, bias = mean(pred - GT), "
        "95 % limits of agreement = bias ± 1.96 SD, Lin's CCC, slope of pred on GT",
        f"{'method':<{w}}{'labels':>8}{'level':>7}{'n':>5}"
        + "".join(
            f"{h:>{cw}}"
            for q in ("scar", "edema")
            for h, cw in ((f"{q} MAE", 11), ("bias", 8), ("LoA", 18), ("CCC", 7), ("slope", 7))
        ),
    ]
    found = False
    for m in methods:
        agr = aggregates.get(m, {}).get("burden_agreement") or {}
        for flavour in ("named", "matched"):
            for level in ("case", "slice"):
                stats = agr.get(level, {}).get(flavour)
                if not stats:
                    continue
                found = True
                cells = ""
                for q in ("scar_pct", "edema_pct"):
                    e = stats.get(q) or {}
                    loa = (
                        "-"
                        if e.get("loa_low") is None
                        else f"[{e['loa_low']:+.1f}, {e['loa_high']:+.1f}]"
                    )
                    bias = "-" if e.get("bias") is None else f"{e['bias']:+.1f}"
                    cells += f"{_num(e.get('mae')):>11}{bias:>8}{loa:>18}"
                    cells += "".join(
                        f"{'-' if e.get(k) is None else format(e[k], '.2f'):>7}"
                        for k in ("ccc", "slope")
                    )
                n = (stats.get("scar_pct") or {}).get("n", 0)
                lines.append(f"{m:<{w}}{flavour:>8}{level:>7}{n:>5}{cells}")
    return [*lines, ""] if found else []


def format_table(aggregates: Mapping[str, Any], methods: Sequence[str]) -> str:
    """Paper-style text table: Dice mean ± std per class, methods side by side, burden, runtime."""
    lines: list[str] = []
    heads = ["blood", "myocardium", "edema", "scar", "mean", "LV myo"]
    keys = [*CLASS_NAMES, "mean", LV_MYOCARDIUM_NAME]
    w = max(12, *(len(m) + 1 for m in methods))

    def block(title: str, name: str, digits: int = 2) -> None:
        present = [m for m in methods if name in aggregates.get(m, {})]
        if not present:
            return
        lines.append(title)
        lines.append(f"{'method':<{w}}{'n':>5}  " + "".join(f"{h:>14}" for h in heads))
        excluded = []
        for m in present:
            b = aggregates[m][name]
            cells = "".join(f"{_pm(b.get(k), digits):>14}" for k in keys)
            lines.append(f"{m:<{w}}{b['n_units']:>5}  {cells}")
            ex = {h: b[k]["excluded"] for h, k in zip(heads, keys, strict=True) if b[k]["excluded"]}
            if ex:
                excluded.append(f"{m}: " + ", ".join(f"{h} {n}" for h, n in ex.items()))
        if excluded:
            lines.append(
                "  excluded (class empty in both prediction and GT): " + "; ".join(excluded)
            )
        lines.append("")

    block(
        "Dice per slice (paper protocol: slices holding all 4 classes, labels matched per slice)",
        "slice_paper",
    )
    block("Dice per slice (every slice with ground truth, matched per slice)", "slice_all")
    block("Dice per volume (labels matched per slice)", "volume")
    block("Dice per volume, labels as named by the method (no ground truth used)", "volume_named")
    block("HD95 per volume in mm (matched labels)", "hd95_mm", digits=1)
    lines.append("Burden per case, % of LV myocardium (prediction as named vs ground truth)")
    lines.append(
        f"{'method':<{w}}"
        + "".join(
            f"{h:>12}"
            for h in (
                "scar pred",
                "scar GT",
                "bias",
                "MAE",
                "edema pred",
                "edema GT",
                "bias",
                "MAE",
            )
        )
    )
    for m in methods:
        b = aggregates.get(m, {}).get("burden")
        if not b:
            continue
        cells = []
        for key in ("scar_pct", "edema_pct"):
            e = b[key]
            cells += [
                _num(e["pred"]["mean"]),
                _num(e["gt"]["mean"]),
                "-" if e["bias"] is None else f"{e['bias']:+.1f}",
                _num(e["mae"]),
            ]
        lines.append(f"{m:<{w}}" + "".join(f"{c:>12}" for c in cells))
    lines.append("")
    lines += _myops_lines(aggregates, methods, w)
    lines += _agreement_lines(aggregates, methods, w)
    lines.append("Runtime")
    lines.append(f"{'method':<{w}}{'segmented':>10}{'reused':>8}{'failed':>8}{'s/case':>16}")
    for m in methods:
        r = aggregates.get(m, {}).get("runtime")
        if not r:
            continue
        lines.append(
            f"{m:<{w}}{r['segmented']:>10}{r['skipped']:>8}{r['failed']:>8}"
            f"{_pm(r['seconds_per_case'], 1):>16}"
        )
    return "\n".join(lines)
