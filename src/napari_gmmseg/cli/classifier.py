"""``napari-gmmseg classifier DATASET --out model.npz``: learn the tissue classifier."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``classifier`` sub-command."""
    from napari_gmmseg.classifier.learn import EPOCHS, HIDDEN

    p = subparsers.add_parser(
        "classifier",
        help="learn the tissue classifier (method tissue-classifier) from labelled cases",
        description=(
            "Learn, from the LV ROI pixels of every labelled case of DATASET, the pixel MLP of "
            "--method tissue-classifier (features: robust z-score, rank and local means of "
            "bSSFP, LGE and T2; depth in the ROI). Written as .npz (numbers only, atomically); "
            "an existing file is never replaced unless --force is given. Use it with "
            "'segment --method tissue-classifier --model FILE'."
        ),
    )
    p.add_argument("dataset", metavar="DATASET", help="labelled dataset folder (MyoPS layout)")
    p.add_argument("--out", required=True, help=".npz file to write")
    p.add_argument("--cases", help="comma-separated case ids to use (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and batch order")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="passes over the pixels")
    p.add_argument("--hidden", type=int, default=HIDDEN, help="width of the hidden layers")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Learn, write and summarise the classifier."""
    from napari_gmmseg.classifier.learn import learn_classifier
    from napari_gmmseg.cli.prior import select_cases
    from napari_gmmseg.io import check_output

    check_output(args.out, suffixes=(".npz",), force=args.force, datasets=(args.dataset,))
    sources = select_cases(args.dataset, args.cases)
    clf = learn_classifier(
        sources, seed=args.seed, epochs=args.epochs, hidden=args.hidden, progress=print
    )
    clf.save(args.out, overwrite=args.force)
    print(f"wrote {args.out} ({len(clf.meta['cases'])} cases, {clf.meta['n_pixels']} pixels)")
    return 0
