"""``napari-gmmseg tissue-net DATASET --folds FOLDS --out DIR``: train the default method's ensemble."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``tissue-net`` sub-command."""
    p = subparsers.add_parser(
        "tissue-net",
        help="train the tissue network ensemble (method tissue-net) on labelled cases",
        description=(
            'Train one tissue network per fold of FOLDS (a JSON file {"folds": [[case id, ...], '
            "...]}) on the cases of the other folds of DATASET (MyoPS layout, with masks), and "
            "write DIR/fold<i>.npz (each member, for the cross-validated table: "
            "benchmarks/cv_tissue.py) and DIR/tissue_net.npz (the ensemble: "
            "'segment --model DIR/tissue_net.npz'). Checkpoints are written as it goes; run the "
            "same command again to resume. A run with other options needs another DIR."
        ),
    )
    p.add_argument("dataset", metavar="DATASET", help="labelled dataset folder (MyoPS layout)")
    p.add_argument("--folds", required=True, help="JSON file with the case ids of every fold")
    p.add_argument("--out", required=True, help="output folder (created; resumed if it exists)")
    p.add_argument("--steps", type=int, default=2500, help="optimiser steps per member")
    p.add_argument("--batch", type=int, default=16, help="slices per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle)")
    p.add_argument(
        "--unlabelled",
        metavar="DATASET",
        help="unlabelled scans for the semi-supervised GMM likelihood term (with --unlabelled-weight)",
    )
    p.add_argument(
        "--unlabelled-weight", type=float, default=0.0, help="weight of that term (0: off)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of member 0 (member i: seed + i)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) every member, then write the ensemble."""
    from napari_gmmseg._threads import cpu_threads
    from napari_gmmseg.tissuenet.train import TrainOptions, train_folds

    options = TrainOptions(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        unlabelled_weight=args.unlabelled_weight,
        seed=args.seed,
    )

    def log(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    with cpu_threads(args.threads):
        path = train_folds(
            args.dataset,
            args.folds,
            args.out,
            options,
            unlabelled=args.unlabelled,
            log=log,
        )
    print(f"ensemble: {path}")
    return 0
