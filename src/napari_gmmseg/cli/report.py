"""``napari-gmmseg report``: AHA 17-segment burden, transmurality, bullseye and one-page report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _point(text: str | None) -> tuple[float, float, float] | None:
    if text is None:
        return None
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        xyz = tuple(float(p) for p in parts)
    except ValueError:
        xyz = ()
    if len(xyz) != 3:
        raise argparse.ArgumentTypeError(f"--rv-insertion wants x,y,z voxel indices, got {text!r}")
    return xyz  # type: ignore[return-value]


def _read_on_grid(path: str, geometry, what: str, labels: bool):
    """Read a file and check it lies on the label map's grid."""
    from napari_gmmseg.errors import GeometryError
    from napari_gmmseg.io import read_labels, read_volume

    arr, geo = read_labels(path, with_geometry=True) if labels else read_volume(path)
    if not geometry.same_grid(geo):
        raise GeometryError(
            f"{path}: {what} is not on the label map's grid: {geometry.difference(geo)}"
        )
    return arr


def _case_name(path: str) -> str:
    """The case a label file belongs to: its MyoPS id (``myops_training_1001_gd`` -> 1001),
    else the file name without its suffixes."""
    import re

    name = Path(path).name
    found = re.search(r"_(\d+)_", name)
    return found.group(1) if found else name.split(".")[0]


def _run(args: argparse.Namespace) -> int:
    from napari_gmmseg.errors import GeometryError
    from napari_gmmseg.io import check_output, load_case, read_labels
    from napari_gmmseg.report import REPORT_FILES, compute_report, write_report
    from napari_gmmseg.report.writer import check_outputs

    out = Path(args.out)
    names = list(REPORT_FILES) + (["manual_segments.csv"] if args.mask else [])
    inputs = (args.labels, args.case, args.lge, args.bssfp, args.t2, args.mask)
    check_output(out, kind="dir", inputs=inputs)
    for name in names:  # no written file may be an input (even with --force)
        check_output(out / name, force=True, inputs=inputs)
    check_outputs(out, names, args.force)
    labels, geometry = read_labels(args.labels, with_geometry=True)
    point = args.rv_insertion
    if point is not None:
        size = labels.shape[::-1]  # (X, Y, Z)
        if not all(0 <= v <= n - 1 for v, n in zip(point, size, strict=True)):
            raise GeometryError(
                f"--rv-insertion {','.join(f'{v:g}' for v in point)} lies outside the label "
                f"map's grid (x 0..{size[0] - 1}, y 0..{size[1] - 1}, z 0..{size[2] - 1})"
            )
    image = None
    if args.case:
        case = load_case(args.case)
        if not geometry.same_grid(case.geometry):
            raise GeometryError(
                f"{args.case}: not on the label map's grid: {geometry.difference(case.geometry)}"
            )
        name = next((c for c in ("LGE", "bSSFP", "T2") if c in case.channels), case.channels[0])
        image = case.image(name)
    for path in (args.lge, args.bssfp, args.t2):  # LGE shows scar best
        if path and image is None:
            image = _read_on_grid(path, geometry, "the image", labels=False)
    manual = None
    kw = {"rv_insertion_xyz": point, "apex": args.apex}
    ref = None  # with a manual mask both maps are measured on the mask's sectors
    if args.mask:
        mlab = _read_on_grid(args.mask, geometry, "the manual mask", labels=True)
        ref = compute_report(mlab, geometry.spacing_mm, geometry.affine, **kw)
        manual = (ref, mlab)
    from napari_gmmseg.cli._common import step

    with step("AHA segments and report page", quiet=args.quiet):
        rep = compute_report(labels, geometry.spacing_mm, geometry.affine, reference=ref, **kw)
        from napari_gmmseg.report.figures import report_details

        made = _segmentation_record(args.labels, labels, geometry.spacing_mm)
        case_name = made.get("case_id") or _case_name(args.labels)
        title = args.title or f"Case {case_name}: scar and edema, AHA 17 segments"
        details = report_details(
            case_name,
            labels,
            geometry.spacing_mm,
            method=made.get("method"),
            roi=made.get("roi"),
            params=made,
            stated_error=made.get("stated_error"),
        )
        details.insert(1, ("label map", str(args.labels)))
        files = write_report(
            out,
            rep,
            labels,
            geometry,
            image_zyx=image,
            manual=manual,
            title=title,
            overwrite=args.force,
            details=details,
        )
    t = rep.totals
    print(
        f"LV myocardium {t['myocardium_ml']:.1f} mL, scar {t['scar_ml']:.1f} mL "
        f"({t['scar_pct']:.1f} %), edema {t['edema_ml']:.1f} mL ({t['edema_pct']:.1f} %); "
        f"apex at the {rep.meta['apex']} ({rep.meta['apex_rule']})"
    )
    for f in rep.frames:
        if f.source != "rv":
            print(f"slice {f.z}: oriented from {f.source}", file=sys.stderr)
    for p in files:
        print(p)
    return 0


def register(subparsers) -> None:
    """Add the ``report`` sub-command."""
    p = subparsers.add_parser(
        "report",
        help="AHA 17-segment burden, transmurality, bullseye and a one-page case report",
        description=(
            "From a MyoPS-valued label map (a segmentation or a manual mask) write OUT/segments.csv "
            "(myocardium, scar and edema mL and % per AHA segment, scar transmurality), "
            "OUT/slices.csv, OUT/segments.nii.gz (segment 1-17 on every myocardium voxel, source "
            "geometry), OUT/bullseye.png and OUT/report.pdf + report.png (one page). Slices are "
            "oriented by the RV insertion points found from the RV blood pool (600), else by "
            "--rv-insertion. Existing outputs are refused unless --force."
        ),
    )
    p.add_argument("labels", help="label map (NIfTI, .mha, .nrrd) with MyoPS values")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--case", default=None, help="case (file or folder) whose image goes under the overlays"
    )
    p.add_argument("--lge", default=None, help="LGE image for the overlays (preferred)")
    p.add_argument("--bssfp", default=None, help="bSSFP image for the overlays")
    p.add_argument("--t2", default=None, help="T2 image for the overlays")
    p.add_argument(
        "--mask",
        default=None,
        help="manual mask: its numbers are reported side by side, both maps measured on the "
        "mask's sectors (its LV centres and RV insertion points)",
    )
    p.add_argument(
        "--rv-insertion",
        default=None,
        type=_point,
        metavar="X,Y,Z",
        help="anterior RV insertion point, voxel column,row,slice (0-based), for slices without "
        "RV blood pool (600)",
    )
    p.add_argument(
        "--apex",
        choices=("auto", "first", "last"),
        default="auto",
        help="which end of the stack is the apex (default auto: where the LV is smaller)",
    )
    p.add_argument(
        "--title", default=None, help="report title (default: the case id and what it shows)"
    )
    p.add_argument("--force", action="store_true", help="replace existing outputs")
    from napari_gmmseg.cli._common import add_quiet_option

    add_quiet_option(p)
    p.set_defaults(func=_run)


def _segmentation_record(path, labels, spacing_mm) -> dict:
    """What ``segment`` wrote beside the label map (method, ROI, intervals, stated error).

    Empty when there is none; without its intervals (with a warning) when the labels were
    changed since (their burden differs from the recorded one), since the interval belongs
    to the segmentation it was stated for.
    """
    import math

    from napari_gmmseg.io import read_sidecar
    from napari_gmmseg.metrics import burden

    made = dict(read_sidecar(path) or {})
    recorded = made.get("burden") or {}
    now = burden(labels, spacing_mm)
    same = all(
        isinstance(recorded.get(k), (int, float))
        and math.isclose(recorded[k], now[k], abs_tol=0.05)
        for k in ("scar_pct", "edema_pct")
    )
    if made.get("burden_interval") and not same:
        print(
            "warning: the labels changed since `segment` stated their burden intervals; "
            "the report shows none",
            file=sys.stderr,
        )
        made.pop("burden_interval")
    return made
