"""``napari-gmmseg mu-data DATASET --out mu.json``: class means for deepSVG_mu from labelled slices."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``mu-data`` sub-command."""
    p = subparsers.add_parser(
        "mu-data",
        help="class means (normalised units) from random labelled slices, for deepsvg-mu",
        description=(
            "Pick --images random slices of DATASET whose ground truth holds all four classes "
            "(blood pool, myocardium, edema, scar), z-score each slice per sequence over its "
            "LV ROI, average the class means and write them as a prior-table JSON "
            "(channels, classes, means). With fewer qualifying slices all are used (warning). "
            "An existing file is never replaced unless --force is given."
        ),
    )
    p.add_argument("dataset", metavar="DATASET", help="labelled dataset folder")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--images", type=int, default=10, help="number of slices to average")
    p.add_argument("--seed", type=int, default=42, help="seed of the random slice choice")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute, write and print the table."""
    import warnings

    from napari_gmmseg.deep.mu_data import compute_mu_data
    from napari_gmmseg.io import check_output

    check_output(
        args.out,
        suffixes=(".json",),
        force=args.force,
        inputs=(args.dataset,),
        datasets=(args.dataset,),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = compute_mu_data(args.dataset, n_images=args.images, seed=args.seed)
    for w in caught:
        print(f"napari-gmmseg mu-data: warning: {w.message}")
    table.save(args.out, overwrite=args.force)
    print(f"wrote {args.out} ({table.source['n_images']} slices)")
    width = max(len(c) for c in table.classes)
    print(" " * width + "  " + "  ".join(f"{c:>8s}" for c in table.channels))
    for name, row in zip(table.classes, table.means, strict=True):
        print(f"{name:>{width}s}  " + "  ".join(f"{v:8.3f}" for v in row))
    return 0
