"""``napari-gmmseg segment``: segment one case from its sequence files into a MyoPS label map."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_gmmseg.methods import DEFAULT_METHOD, INITS, METHODS


def register(subparsers) -> None:
    """Add the ``segment`` sub-command."""
    from napari_gmmseg.cli._common import add_mixture_options, add_quiet_option

    p = subparsers.add_parser(
        "segment",
        help="segment blood pool, myocardium, edema and scar of one case",
        description=(
            "Label every pixel inside the ROI (the LV: blood pool and myocardium) of each "
            "slice as blood pool, healthy myocardium, edema or scar, write the label map "
            "(MyoPS values: 500 blood pool, 200 myocardium, 1220 edema, 2221 scar) on the "
            "bSSFP grid and print the burden with its stated error. Without --roi whole "
            "slices are segmented."
        ),
    )
    g = p.add_argument_group("input and output")
    g.add_argument("--bssfp", metavar="F", help="bSSFP (C0) image; the reference grid")
    g.add_argument("--lge", metavar="F", help="LGE (DE) image")
    g.add_argument("--t2", metavar="F", help="T2 image")
    g.add_argument(
        "--roi",
        metavar="MASK",
        help="ROI mask: a MyoPS label map (the --roi-labels values are taken) or a binary "
        "mask; 'auto': found from the bSSFP image (slices failing QC are skipped)",
    )
    g.add_argument(
        "--roi-out",
        metavar="F.nii.gz",
        help="with --roi auto: also write the automatic ROI (500/200/600; edit it, pass it as --roi). "
        "The RV blood pool it finds (600) is written into OUT too, for `report`",
    )
    g.add_argument(
        "--roi-labels",
        default="200,500,1220,2221",
        help="label values of MASK that make up the ROI",
    )
    g.add_argument(
        "--scribbles",
        metavar="F.nii.gz",
        help="tissue strokes on the bSSFP grid (0 nothing, 500 blood pool, 200 myocardium, "
        "1220 edema, 2221 scar): the slices they touch are refitted with the strokes as hard "
        "constraints (napari_gmmseg.refine.refine)",
    )
    g.add_argument(
        "--frame", type=int, default=None, help="time frame of 4-D (cine) images, from 0"
    )
    g.add_argument("--out", required=True, metavar="OUT.nii.gz", help="label map to write")
    g.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    g.add_argument(
        "--allow-resample",
        action="store_true",
        help="resample sequences whose origins differ by more than 5 mm or axes by more than "
        "5 degrees (refused by default: most likely not one study)",
    )
    add_quiet_option(g)
    m = p.add_argument_group("method")
    m.add_argument(
        "--method",
        choices=tuple(METHODS),
        default=DEFAULT_METHOD,
        help=f"default {DEFAULT_METHOD} (best cross-validated); gmm, svgmm, ... are the paper's",
    )
    add_mixture_options(m, classes=4, covariance="diag")
    m.add_argument("--init", choices=INITS, default="kmeans++", help="EM initialisation")
    m.add_argument(
        "--tol", type=float, default=1e-3, help="stop a slice when |dNLL| < tol (0: never)"
    )
    m.add_argument("--max-iter", type=int, default=100, help="EM iteration limit")
    m.add_argument("--seed", type=int, default=0, help="seed of every random step")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    m.add_argument(
        "--per-volume",
        action="store_true",
        help="one mixture for all ROI voxels of the volume instead of one per slice",
    )
    m.add_argument(
        "--prior", metavar="JSON", help="prior table of class means (naming, --init prior)"
    )
    from napari_gmmseg.cli.evaluate import add_extreme_option

    add_extreme_option(m)
    from napari_gmmseg.cli._options import add_method_arguments

    add_method_arguments(p.add_argument_group("options of the methods (each its own default)"))
    from napari_gmmseg.presence import add_cli_arguments

    add_cli_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, segment, write; print a one-line summary."""
    import time

    import numpy as np

    from napari_gmmseg import io
    from napari_gmmseg.errors import ExtremeIntensityError, RoiError
    from napari_gmmseg.labels import RV
    from napari_gmmseg.segment import segment, with_sources

    t0 = time.perf_counter()
    out = args.out
    _check_request(args)  # every output and flag, before anything is read
    from napari_gmmseg.cli._options import options_for

    options = options_for(args, args.method)  # before any loading: a stray flag fails fast
    sequences = {
        name: path
        for name, path in (("bSSFP", args.bssfp), ("LGE", args.lge), ("T2", args.t2))
        if path
    }
    case = io.load_case_from_paths(sequences, frame=args.frame, allow_resample=args.allow_resample)
    scribbles = _read_scribbles(args.scribbles, case) if args.scribbles else None
    roi, rv = None, None
    if args.roi == "auto":
        roi, rv = _auto_roi(case, args)
    elif args.roi:
        try:
            values = [int(v) for v in str(args.roi_labels).split(",") if v.strip()]
        except ValueError as exc:
            raise RoiError(f"--roi-labels must be integers separated by commas: {exc}") from exc
        arr, geom = io.read_volume(args.roi, frame=args.frame)
        arr = np.asarray(arr)
        if not np.all(np.isfinite(arr)):
            raise RoiError(f"{args.roi}: mask holds NaN or Inf")
        if not geom.same_grid(case.geometry):
            print(
                f"warning: {args.roi} is not on the bSSFP grid ({geom.difference(case.geometry)}); "
                "resampled onto it (nearest neighbour)",
                file=sys.stderr,
            )
            arr = io.resample_to(arr, geom, case.geometry, labels=True, name=str(args.roi))
        roi = io.roi_from_mask(arr, values, name=str(args.roi))

    from napari_gmmseg.presence import resolve_rule, rule_from_args

    # Presence decides between LV tissues: it needs the LV ROI.
    presence = resolve_rule(rule_from_args(args)) if roi is not None else None

    def report(p) -> None:
        print(
            f"\r  {p.slices_done}/{p.slices_total} slices finished (iteration {p.iteration})",
            end="",
            file=sys.stderr,
            flush=True,
        )

    from napari_gmmseg.methods import get_method

    if get_method(args.method).accepts("spacing_mm"):
        options["spacing_mm"] = case.spacing_mm  # the wall-first radii are in mm
    if roi is not None and not args.quiet:
        from napari_gmmseg.preprocess import contrast_warnings

        for line in contrast_warnings(case.images, case.channels, roi):
            print(f"warning: {line}", file=sys.stderr)
    import warnings

    if not args.quiet:
        print(f"segmenting with {args.method} ...", file=sys.stderr, flush=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = _segment(
                segment, case, roi, args, presence, report, options, scribbles is not None
            )
    except ExtremeIntensityError as exc:
        raise with_sources(exc, case.sources) from None
    for w in caught:  # one line each, no source line
        if not args.quiet:
            print(f"\nwarning: {w.message}", file=sys.stderr)
    if not args.quiet:
        print(file=sys.stderr)
        clip = fit.params.get("clip", {})
        if any(clip.get("extreme_voxels", {}).values()):
            print(f"warning: clipped extreme voxels {clip['extreme_voxels']}", file=sys.stderr)
    if scribbles is not None:
        from napari_gmmseg.refine import last_summary, refine

        fit = refine(fit, scribbles, case)
        if not args.quiet:
            print(last_summary(fit).message, file=sys.stderr)
    labels = fit.labels
    if rv is not None:  # the RV the automatic ROI found orients `report`'s AHA segments
        labels = np.where(rv & (labels == 0), np.int32(RV.value), labels).astype(labels.dtype)
    path = io.save_labels(labels, case.geometry, out, overwrite=args.force)
    # the summary is the result: printed even with --quiet
    vals, counts = np.unique(labels[labels > 0], return_counts=True)
    summary = ", ".join(f"{int(v)}: {int(c)}" for v, c in zip(vals, counts, strict=True))
    clip = fit.params.get("clip", {})
    n_clip = sum(clip.get("clipped_voxels", {}).values())
    lo, hi = clip.get("percentiles") or (0, 100)
    print(
        f"{args.method}: {len(fit.slice_index)} slices, "
        f"{_iterations_text(fit)}, fit {fit.seconds:.2f} s, total {time.perf_counter() - t0:.2f} s; "
        f"{n_clip} ROI intensities clipped (statistics) to the {lo:g}-{hi:g} percentiles; "
        f"wrote {path} ({summary})"
    )
    roi_source = None if args.roi is None else "auto" if args.roi == "auto" else "manual"
    print(_burden_lines(fit, case.spacing_mm, roi_source))
    _write_sidecar(path, fit, case, roi_source, args.force)
    return 0


def _write_sidecar(path, fit, case, roi_source: str | None, force: bool) -> None:
    """``OUT.json`` beside the labels: what ``report`` needs to state method, ROI and intervals."""
    import datetime

    from napari_gmmseg import io
    from napari_gmmseg.accuracy import ROI_SOURCES, accuracy_note
    from napari_gmmseg.metrics import burden

    io.save_sidecar(
        path,
        {
            "labels": Path(path).name,
            "case_id": case.case_id,
            "sources": {k: str(v) for k, v in case.sources.items()},
            "method": fit.params.get("method"),
            "method_options": fit.params.get("method_options"),
            "roi": ROI_SOURCES.get(roi_source or "", "whole slices"),
            "burden": {k: float(v) for k, v in burden(fit.labels, case.spacing_mm).items()},
            "burden_interval": fit.params.get("burden_interval"),
            "member_burden": fit.params.get("member_burden"),
            "stated_error": accuracy_note(fit.params, roi_source),
            "date": datetime.date.today().isoformat(),
        },
        overwrite=force,
    )


#: Engine flags a pipeline method (its own classes and iterations) does not take, with
#: their defaults: given otherwise, they are refused instead of silently ignored.
_ENGINE_FLAGS = {
    "n_classes": ("--classes", 4),
    "init": ("--init", "kmeans++"),
    "tol": ("--tol", 1e-3),
    "max_iter": ("--max-iter", 100),
    "covariance_type": ("--covariance", "diag"),
    "per_volume": ("--per-volume", False),
}


def _check_request(args: argparse.Namespace) -> None:
    """Every check that needs no image: outputs, flags that do not fit, inputs given.

    Raises
    ------
    GmmSegError
        One line naming the flag or file.
    """
    from napari_gmmseg import io
    from napari_gmmseg.errors import CaseLoadError, ModelError, RoiError
    from napari_gmmseg.labels import DEFAULT_CHANNELS
    from napari_gmmseg.methods import get_method

    inputs = (args.bssfp, args.lge, args.t2, args.roi, args.prior, args.scribbles)
    inputs += tuple(getattr(args, n, None) for n in ("weights", "mu_data", "model"))
    nifti = (".nii.gz", ".nii")
    io.check_output(args.out, suffixes=nifti, force=args.force, inputs=inputs)
    io.check_output(io.sidecar_path(args.out), suffixes=(".json",), force=args.force, inputs=inputs)
    if args.roi_out:
        if args.roi != "auto":
            raise RoiError("--roi-out writes the automatic ROI: it needs --roi auto")
        io.check_output(args.roi_out, suffixes=nifti, force=args.force, inputs=inputs)
        io.check_distinct({"--out": args.out, "--roi-out": args.roi_out})
    given = {"bSSFP": args.bssfp, "LGE": args.lge, "T2": args.t2}
    if not any(given.values()):
        raise CaseLoadError("give at least one of --bssfp, --lge, --t2")
    spec = get_method(args.method)
    if spec.family == "pipeline":
        if args.roi is None:
            raise RoiError(
                f"method {spec.name} segments the LV and needs its ROI: give --roi MASK, or "
                "--roi auto to find it from the bSSFP image"
            )
        missing = [f"--{c.lower()}" for c in DEFAULT_CHANNELS if not given[c]]
        if missing:
            raise CaseLoadError(f"method {spec.name} needs all three sequences; give {missing}")
        stray = [
            flag for name, (flag, default) in _ENGINE_FLAGS.items()
            if getattr(args, name) != default
        ]  # fmt: skip
        if stray:
            raise ModelError(
                f"{', '.join(stray)} does not apply to method {spec.name} (it has its own "
                "classes and iterations); use --method gmm or svgmm for them"
            )
    if args.roi == "auto" and not args.bssfp:
        raise RoiError("--roi auto finds the LV on the bSSFP image: give --bssfp")
    if args.prior:  # a prior that cannot name every tissue: before any image is read
        from napari_gmmseg.naming import load_prior

        load_prior(args.prior)


def _read_scribbles(path: str, case):
    """The ``(Z, Y, X)`` int32 scribble map of ``path``, checked before any fit.

    Raises
    ------
    GeometryError
        Not on the bSSFP grid (what differs is named).
    ModelError
        Values other than 0, 500, 200, 1220, 2221.
    """
    from napari_gmmseg import io
    from napari_gmmseg.errors import GeometryError
    from napari_gmmseg.refine import check_scribbles

    arr, geom = io.read_volume(path)  # drawn on one 3-D grid: no time frame
    if not geom.same_grid(case.geometry):
        raise GeometryError(
            f"{path}: scribbles are not on the bSSFP grid ({geom.difference(case.geometry)})"
        )
    return check_scribbles(arr, case.shape, name=str(path))


def _iterations_text(fit) -> str:
    """``"mean 10.0 EM iterations per slice"``, or nothing to say for a method without any."""
    import numpy as np

    n_iter = np.asarray(fit.n_iter_, dtype=float)
    if n_iter.size == 0 or not np.isfinite(fit.nll_history).any():
        return "no iterations (a single pass)"
    return f"mean {n_iter.mean():.1f} iterations per slice"


def _burden_lines(fit, spacing_mm, roi_source: str | None) -> str:
    """The clinical read-out of the labels and the error stated for it (or that none is)."""
    from napari_gmmseg.accuracy import accuracy_note, attach_interval, burden_readout

    note = accuracy_note(fit.params, roi_source)
    attach_interval(fit, roi_source, spacing_mm)
    return f"burden: {burden_readout(fit.labels, spacing_mm, fit.params)}\n  {note}"


def _segment(segment, case, roi, args, presence, report, options, keep_probabilities=False):
    """The fit itself, with the command-line options (soft maps kept for presence, refine)."""
    return segment(
        case.images,
        roi,
        channels=case.channels,
        method=args.method,
        n_classes=args.n_classes,
        covariance_type=args.covariance_type,
        init=args.init,
        tol=args.tol,
        max_iter=args.max_iter,
        seed=args.seed,
        device=args.device,
        per_slice=not args.per_volume,
        prior=args.prior,
        presence=presence,
        progress=None if args.quiet else report,
        return_probabilities=presence is not None or keep_probabilities,
        extreme=args.extreme,
        **options,
    )


def _auto_roi(case, args: argparse.Namespace):
    """``--roi auto``: the automatic ROI, its QC on stderr, optionally written (--roi-out).

    Returns the ``(Z, Y, X)`` bool LV ROI and the RV blood pool (600) found with it.
    """

    from napari_gmmseg import io
    from napari_gmmseg.autoroi import find_roi, format_qc
    from napari_gmmseg.cli._common import step
    from napari_gmmseg.errors import RoiError
    from napari_gmmseg.labels import RV

    with step("automatic ROI (finding the LV in the bSSFP image)", quiet=args.quiet):
        auto = find_roi(case.images, case.channels, case.spacing_mm)
    if not args.quiet:
        print(f"automatic ROI QC:\n{format_qc(auto.qc)}", file=sys.stderr)
    if args.roi_out:
        io.save_labels(auto.labels, case.geometry, args.roi_out, overwrite=args.force)
    if not auto.roi.any():
        raise RoiError("the automatic ROI fails QC on every slice: draw or give a mask (--roi)")
    return auto.roi, auto.labels == RV.value
