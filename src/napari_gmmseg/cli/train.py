"""``napari-gmmseg train DATASET --out model.pt``: Algorithm 4, one network for a whole dataset."""

from __future__ import annotations

import argparse

from napari_gmmseg.deep.losses import DEEP_METHODS


def register(subparsers) -> None:
    """Add the ``train`` sub-command."""
    p = subparsers.add_parser(
        "train",
        help="train one deepSVG/deepG network on a labelled dataset (Algorithm 4)",
        description=(
            "Train one U-Net on the LV-ROI slices of every case of DATASET (any layout "
            "napari-gmmseg reads; the ground-truth masks give the ROI and, for deepsvg-mu "
            "without --mu-data, the class means of 10 random slices) and write weights, "
            "architecture, channel order, normalisation and mu_data to one file. Apply it "
            "with `napari-gmmseg segment ... --method deepsvg-mu --weights model.pt`. "
            "An existing file is never replaced unless --force is given."
        ),
    )
    p.add_argument("dataset", metavar="DATASET", help="labelled dataset folder")
    p.add_argument("--out", required=True, help="model file to write (e.g. model.pt)")
    p.add_argument("--method", default="deepsvg-mu", choices=DEEP_METHODS, help="loss")
    p.add_argument("--mu-data", help="mu_data JSON (napari-gmmseg mu-data); default: computed")
    p.add_argument("--lam", type=float, default=1.0, help="weight of the mean penalty")
    p.add_argument("--epochs", type=int, default=50, help="passes over all training slices")
    p.add_argument("--batch-size", type=int, default=8, help="slices per step")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-3, help="AdamW weight decay")
    p.add_argument(
        "--network",
        default="small",
        help="small, medium, reference, or filters per level such as 8,16,32",
    )
    p.add_argument("--mu-images", type=int, default=10, help="slices averaged for mu_data")
    p.add_argument("--mu-seed", type=int, default=42, help="seed of the mu_data slices")
    p.add_argument(
        "--all-classes-only",
        action="store_true",
        help="train only on slices whose mask holds all four classes (the paper's selection)",
    )
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse, before any work, numbers and a device that cannot train (one line each)."""
    from napari_gmmseg.errors import ModelError

    for flag, value, strict in (
        ("--lr", args.lr, True),
        ("--weight-decay", args.weight_decay, False),
        ("--lam", args.lam, False),
        ("--epochs", args.epochs, True),
        ("--batch-size", args.batch_size, True),
        ("--mu-images", args.mu_images, True),
    ):
        if not (value > 0 if strict else value >= 0):
            raise ModelError(f"{flag} must be {'> 0' if strict else '>= 0'}, got {value}")
    from napari_gmmseg.preprocess import resolve_device

    try:
        import torch

        dev = resolve_device(args.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"--device {args.device}: CUDA is not available on this machine")
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"--device {args.device}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Train, save and summarise."""
    import sys

    from napari_gmmseg.deep.training import train
    from napari_gmmseg.io import check_output

    check_output(
        args.out,
        force=args.force,
        inputs=(args.dataset, getattr(args, "mu_data", None)),
        datasets=(args.dataset,),
    )
    _check_numbers(args)

    def report(p) -> None:
        print(f"epoch {p.iteration}/{args.epochs}  mean NLL {p.nll:.4f}", file=sys.stderr)

    model = train(
        args.dataset,
        method=args.method,
        out=args.out,
        overwrite=args.force,
        network=args.network,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        mu_data=args.mu_data,
        lam=args.lam,
        mu_images=args.mu_images,
        mu_seed=args.mu_seed,
        seed=args.seed,
        device=args.device,
        require_all_classes=args.all_classes_only,
        progress=report,
    )
    t = model.training
    print(
        f"wrote {args.out}: {args.method}, {t['n_slices']} slices from {len(t['cases'])} case(s), "
        f"{t['epochs']} epochs, final loss {t['loss_history'][-1][0]:.4f} ({t['seconds']:.0f} s)"
    )
    return 0
