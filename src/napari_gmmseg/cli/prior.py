"""``napari-gmmseg prior DATASET --out prior.json``: learn tissue statistics from labelled cases."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``prior`` sub-command."""
    p = subparsers.add_parser(
        "prior",
        help="learn per-class intensity statistics (a tissue prior) from labelled cases",
        description=(
            "Learn, from every labelled case of DATASET, per-class means, covariances, "
            "proportions and pixel counts of blood pool, myocardium, edema and scar, in two "
            "normalisations: per-slice z-score over the LV ROI ('roi-zscore', the engine's "
            "units: naming, --init prior, mu_data) and per-slice division by the wall median "
            "('wall-ratio', the wall-first pipeline). Written as JSON (atomically); an "
            "existing file is never replaced unless --force is given."
        ),
    )
    p.add_argument("dataset", metavar="DATASET", help="labelled dataset folder (MyoPS layout)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--cases", help="comma-separated case ids to use (default: all)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Learn, write and print the prior."""
    from napari_gmmseg.io import check_output
    from napari_gmmseg.prior import learn_prior

    check_output(args.out, suffixes=(".json",), force=args.force, datasets=(args.dataset,))
    prior = learn_prior(select_cases(args.dataset, args.cases))
    prior.save(args.out, overwrite=args.force)
    print(f"wrote {args.out} ({prior.source['n_cases']} cases)")
    for norm, st in prior.stats.items():
        print(f"{norm}: class means ({', '.join(prior.channels)}), proportion")
        for name, row, w in zip(prior.classes, st.means, st.weights, strict=True):
            print(f"  {name:>14s}  " + "  ".join(f"{v:7.3f}" for v in row) + f"  {w:6.3f}")
    return 0


def select_cases(dataset: str, cases: str | None) -> list:
    """The :class:`~napari_gmmseg.io.CaseSource` of ``dataset``, only ``cases`` (comma-separated
    ids) when given.

    Raises
    ------
    ModelError
        A requested case id is not in the dataset.
    """
    from napari_gmmseg.errors import ModelError
    from napari_gmmseg.io import discover_cases

    sources = discover_cases(dataset)
    if cases:
        wanted = {c.strip() for c in cases.split(",") if c.strip()}
        sources = [s for s in sources if s.case_id in wanted]
        missing = wanted - {s.case_id for s in sources}
        if missing:
            raise ModelError(f"cases {sorted(missing)} not found in {dataset}")
    return sources
