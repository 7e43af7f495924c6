"""Command-line interface: ``napari-gmmseg <command> ...``.

Each sub-command lives in its own module under :mod:`napari_gmmseg.cli` with a
``register(subparsers)`` function that adds its parser and sets ``func``.
Modules import heavy dependencies (torch, MONAI, SimpleITK) inside ``func``
only, so ``napari-gmmseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from napari_gmmseg._version import __version__

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "segment",
    "evaluate",
    "report",
    "demo",
    "phantom",
    "train",
    "mu_data",
    "prior",
    "classifier",
    "tissue_net",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command."""
    from napari_gmmseg.cli._common import Parser

    parser = Parser(
        prog="napari-gmmseg",
        description=(
            "Segment LV blood pool, myocardium, edema and scar in multi-sequence cardiac MRI "
            "(bSSFP, LGE, T2) and report infarct size, edema and area at risk per AHA segment. "
            "The default method is trained on labelled cases; the unsupervised mixtures of the "
            "paper (GMM, SVGMM, deepG, deepSVG) are there for comparison."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", parser_class=Parser
    )
    for name in COMMAND_MODULES:
        importlib.import_module(f"napari_gmmseg.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-gmmseg`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    from napari_gmmseg.errors import GmmSegError

    try:
        return int(args.func(args) or 0)
    except GmmSegError as exc:
        print(f"napari-gmmseg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a read-only folder, a full disk...: a user's problem, one line
        print(f"napari-gmmseg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"napari-gmmseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
