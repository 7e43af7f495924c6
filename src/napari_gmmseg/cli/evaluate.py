"""``napari-gmmseg evaluate``: segment and score a whole dataset with one or more methods."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_gmmseg.methods import DEFAULT_METHOD, METHODS

#: Methods known to the engine (the registry; importing it does not import torch).
KNOWN_METHODS = tuple(METHODS)


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """Options passed to :func:`napari_gmmseg.segment.segment_case` (shared with ``demo``)."""
    g = parser.add_argument_group("method options (defaults: those of the methods)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    g.add_argument("--max-iter", type=int, default=None, help="EM iteration limit (gmm, svgmm)")
    g.add_argument("--tol", type=float, default=None, help="NLL gain per iteration to stop at")
    from napari_gmmseg.cli._common import add_mixture_options

    add_mixture_options(g, classes=None, covariance=None)
    from napari_gmmseg.cli._options import add_method_arguments

    add_method_arguments(
        parser.add_argument_group("options of the methods (each applies to those that take it)")
    )
    add_extreme_option(g, default=None)


def add_extreme_option(group, default: str | None = "refuse") -> None:
    """``--extreme``: refuse (default) or clip ROI voxels far outside their channel's range."""
    group.add_argument(
        "--extreme",
        choices=("refuse", "clip"),
        default=default,
        help="ROI voxels far outside their channel's 0.5-99.5 percentile range (1e30, 32767): "
        "refuse the case (default) or clip them and go on",
    )


def add_presence_options(parser: argparse.ArgumentParser) -> None:
    """The class-presence options of :mod:`napari_gmmseg.presence` (default ``none``, fixed K)."""
    from napari_gmmseg.presence import add_cli_arguments

    add_cli_arguments(parser)


def presence_rule(args: argparse.Namespace):
    """The presence rule from the command line, or None for fixed K."""
    from napari_gmmseg.presence import resolve_rule, rule_from_args

    return resolve_rule(rule_from_args(args))


def method_options(args: argparse.Namespace) -> dict:
    """The method options given on the command line (unset ones left out)."""
    from napari_gmmseg.cli._options import given_options

    names = ("seed", "device", "max_iter", "tol", "n_classes", "covariance_type", "extreme")
    common = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return {**common, **given_options(args)}


def parse_methods(args: argparse.Namespace) -> list[str]:
    """``--method`` and ``--methods`` merged, in order, without duplicates."""
    methods: list[str] = []
    for value in [args.method, args.methods]:
        if value:
            methods += [m.strip().lower() for m in value.split(",") if m.strip()]
    return list(dict.fromkeys(methods))


def print_report(result, out: Path) -> None:
    """Print the table, where the files went, and the failures (stderr)."""
    print(result.table)
    print()
    print(f"label maps: {out}/<method>/<case>.nii.gz")
    print(f"metrics:    {out / 'metrics.csv'}")
    print(f"summary:    {out / 'summary.json'}")
    if (out / "bland_altman.png").exists():
        print(f"burden:     {out / 'bland_altman.png'} (Bland-Altman, per slice)")
    for w in result.summary.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    for f in result.failures:
        print(f"FAILED {f.case_id} {f.method}: {f.error}", file=sys.stderr)


def write_tables(result, out: Path) -> Path:
    """Write the printed tables to ``OUT/tables.md`` (atomically) and say where."""
    from napari_gmmseg.batch import _atomic_write_text

    path = out / "tables.md"
    _atomic_write_text(path, f"```\n{result.table.rstrip()}\n```\n")
    print(f"tables:     {path}")
    return path


def _run(args: argparse.Namespace) -> int:
    from napari_gmmseg.batch import evaluate_dataset

    methods = parse_methods(args) or [DEFAULT_METHOD]
    out = Path(args.out)
    from napari_gmmseg.io import check_output

    check_output(out, kind="dir", inputs=(args.dataset,), datasets=(args.dataset,))
    cases = [c.strip() for c in args.cases.split(",")] if args.cases else None
    result = evaluate_dataset(
        args.dataset,
        methods,
        out,
        roi=args.roi,
        force=args.force,
        scheduler=args.scheduler,
        progress=not args.quiet,
        options=method_options(args),
        with_hd95=args.hd95,
        empty=1.0 if args.empty_dice == "one" else float("nan"),
        presence=presence_rule(args),
        cases=cases,
    )
    print_report(result, out)
    write_tables(result, out)
    if args.segments:  # per-AHA-segment burden error against the manual mask
        from napari_gmmseg.io import discover_cases
        from napari_gmmseg.report.compare import write_segment_errors

        path, mae = write_segment_errors(
            result.outcomes, discover_cases(args.dataset), out / "segments.csv", overwrite=True
        )
        print(f"segments:   {path} (per AHA segment, segmentation - manual)")
        for method, m in mae.items():
            print(
                f"  {method}: MAE scar {m['scar_pct']:.1f}, edema {m['edema_pct']:.1f} points of %"
            )
    return 1 if result.failures else 0


def register(subparsers) -> None:
    """Add the ``evaluate`` sub-command."""
    p = subparsers.add_parser(
        "evaluate",
        help="segment and score every case of a dataset; paper-style tables",
        description=(
            "Segment every case of DATASET (MyoPS layout or one folder per case) with each "
            "method inside the ROI, write OUT/<method>/<case>.nii.gz (MyoPS values, source "
            "geometry), OUT/metrics.csv and OUT/summary.json, and print Dice (Hungarian-matched "
            "per slice, and as named) per slice and per volume, the MyoPS 2020 per-case scores "
            "(scar and scar ∪ edema Dice, as named and matched), burden agreement (MAE, bias, "
            "limits of agreement per case and per slice) and runtime. "
            "Cases already segmented are reused unless --force. Exit status 1 when a case failed "
            "(the others are still evaluated and reported)."
        ),
    )
    p.add_argument("dataset", help="dataset folder")
    p.add_argument(
        "--method", help=f"one method (default {DEFAULT_METHOD}): {', '.join(KNOWN_METHODS)}"
    )
    p.add_argument("--methods", help="comma-separated methods, e.g. gmm,svgmm,deepsvg")
    p.add_argument("--out", default="evaluation", help="output folder (default ./evaluation)")
    p.add_argument(
        "--roi",
        default="gt",
        help="gt (ground-truth LV: 500, 200, 1220, 2221; default), auto (found from the "
        "bSSFP image; QC and ROI Dice in OUT/auto_roi/), a mask file on the case "
        "grid, or a folder with one mask per case (case id in the file name)",
    )
    p.add_argument("--force", action="store_true", help="re-segment cases already written")
    p.add_argument(
        "--scheduler",
        default=None,
        help="Dask distributed scheduler address (tcp://host:8786): cases run as tasks; "
        "workers must see the same paths (pip install 'napari-gmmseg[dask]')",
    )
    p.add_argument("--cases", default=None, help="comma-separated case ids (default all)")
    p.add_argument("--hd95", action="store_true", help="also compute HD95 in mm (slower)")
    p.add_argument(
        "--empty-dice",
        choices=("nan", "one"),
        default="nan",
        help="Dice of a class absent from both prediction and GT: nan = excluded from means "
        "(default, counted in the table) or one",
    )
    p.add_argument(
        "--segments",
        action="store_true",
        help="also write OUT/segments.csv: scar and edema burden per AHA segment against the "
        "manual mask (napari-gmmseg report's rules, on the mask's sectors)",
    )
    from napari_gmmseg.cli._common import add_quiet_option

    add_quiet_option(p)
    add_method_options(p)
    add_presence_options(p)
    p.set_defaults(func=_run)
