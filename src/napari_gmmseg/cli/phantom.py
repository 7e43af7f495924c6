"""``napari-gmmseg phantom OUT``: write a synthetic multi-sequence CMR dataset (MyoPS layout)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``phantom`` sub-command."""
    p = subparsers.add_parser(
        "phantom",
        help="write synthetic bSSFP/LGE/T2 cases with MyoPS ground truth",
        description=(
            "Write N deterministic phantom cases in the MyoPS layout: "
            "OUT/train25/myops_training_<id>_{C0,DE,T2}.nii.gz and "
            "OUT/train25_myops_gd/myops_training_<id>_gd.nii.gz (ids from --first-id). "
            "Existing files are never replaced unless --force is given."
        ),
    )
    p.add_argument("out", metavar="OUT", help="dataset folder to write")
    p.add_argument("--cases", type=int, default=3, help="number of cases")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the first case (case i uses seed+i)"
    )
    p.add_argument("--slices", type=int, default=5, help="short-axis slices per case")
    p.add_argument("--size", type=int, default=128, help="in-plane matrix size (pixels)")
    p.add_argument(
        "--healthy", type=int, default=0, help="how many cases (the last ones) have no infarct"
    )
    p.add_argument(
        "--noise", type=float, default=0.10, help="Rician noise sigma / myocardial signal"
    )
    p.add_argument(
        "--contrast", type=float, default=1.0, help="tissue contrast scale (1 = calibrated)"
    )
    p.add_argument("--bias", type=float, default=0.2, help="bias-field amplitude")
    p.add_argument("--pixel-mm", type=float, default=1.25, help="in-plane pixel size (mm)")
    p.add_argument("--slice-mm", type=float, default=10.0, help="slice spacing (mm)")
    p.add_argument("--first-id", type=int, default=1001, help="id of the first case")
    p.add_argument(
        "--sample",
        action="store_true",
        help="write the bundled sample cases (phantom.SAMPLE_CASES) instead; other options ignored",
    )
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset and list the cases."""
    from napari_gmmseg.io import check_output
    from napari_gmmseg.phantom import write_dataset, write_sample_data

    check_output(args.out, kind="dir")
    if args.sample:
        written = write_sample_data(args.out, overwrite=args.force)
        print(f"wrote {len(written)} sample case(s) to {args.out}")
        return 0
    if args.cases < 1:
        raise SystemExit("napari-gmmseg phantom: error: --cases must be >= 1")
    if not 0 <= args.healthy <= args.cases:
        raise SystemExit("napari-gmmseg phantom: error: --healthy must be between 0 and --cases")
    written = write_dataset(
        args.out,
        args.cases,
        args.seed,
        healthy=args.healthy,
        overwrite=args.force,
        first_id=args.first_id,
        n_slices=args.slices,
        size=args.size,
        noise=args.noise,
        contrast=args.contrast,
        bias=args.bias,
        pixel_mm=args.pixel_mm,
        slice_mm=args.slice_mm,
    )
    for paths in written:
        print(paths["bSSFP"].name.replace("_C0.nii.gz", ""), "->", paths["bSSFP"].parent)
    print(f"wrote {len(written)} case(s) to {args.out}")
    return 0
