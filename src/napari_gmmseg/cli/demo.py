"""``napari-gmmseg demo``: every method on the bundled ``sample_data/``, results in ``./results``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_gmmseg.cli.evaluate import (
    KNOWN_METHODS,
    add_method_options,
    add_presence_options,
    method_options,
    presence_rule,
    write_tables,
)

#: What the bundled sample is, said in the demo's output.
SAMPLE_NOTE = (
    "sample: two synthetic short-axis cases (phantom, not patients): 1001 with an infarct "
    "(scar inside edema), 1002 healthy; contrasts, texture and partial volume calibrated on "
    "the statistics of 25 labelled real cases (scripts/calibrate_phantom.py)"
)

#: Options that keep the demo to a minute or two on 2 CPU cores (stated in its output).
DEMO_OPTIONS: dict = {"seed": 0, "max_epochs": 30}


def find_sample_data(explicit: str | None = None) -> Path:
    """``--data``, else ``./sample_data``, else ``sample_data/`` of the source checkout."""
    from napari_gmmseg.errors import CaseLoadError

    if explicit:
        return Path(explicit)
    here = Path(__file__).resolve()
    for cand in (Path.cwd() / "sample_data", here.parents[3] / "sample_data"):
        if cand.is_dir() and any(cand.iterdir()):
            return cand
    raise CaseLoadError(
        "sample_data/ not found: run from the repository root (make demo) or give --data DIR"
    )


def _run(args: argparse.Namespace) -> int:
    from napari_gmmseg.batch import evaluate_dataset
    from napari_gmmseg.cli.evaluate import print_report

    data = find_sample_data(args.data)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    options = {**DEMO_OPTIONS, **method_options(args)}
    print(f"napari-gmmseg demo: methods {', '.join(methods)} on {data}")
    print(SAMPLE_NOTE)
    print("options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    if any(m.startswith("deep") for m in methods):
        print(
            f"(deep methods: at most {options.get('max_epochs')} epochs per slice instead of the "
            "default 200, to keep the demo short on a CPU)"
        )
    out = Path(args.out)
    from napari_gmmseg.io import check_output

    check_output(out, kind="dir", inputs=(data,))
    result = evaluate_dataset(
        data,
        methods,
        out,
        force=not args.resume,
        progress=not args.quiet,
        options=options,
        presence=presence_rule(args),
    )
    print()
    print_report(result, out)
    write_tables(result, out)
    print(f"total wall time {result.summary['wall_seconds']:.1f} s", file=sys.stderr)
    return 1 if result.failures else 0


def register(subparsers) -> None:
    """Add the ``demo`` sub-command."""
    p = subparsers.add_parser(
        "demo",
        help="evaluate every method on the bundled sample cases; writes ./results",
        description="Segment the phantom cases in sample_data/ with every method, score them "
        "against their ground truth and print the tables (see `evaluate`).",
    )
    p.add_argument("--out", default="results", help="output folder (default ./results)")
    p.add_argument("--data", default=None, help="dataset folder (default: the repo's sample_data/)")
    p.add_argument("--methods", default=",".join(KNOWN_METHODS), help="methods to run")
    p.add_argument("--resume", action="store_true", help="reuse label maps already in --out")
    from napari_gmmseg.cli._common import add_quiet_option

    add_quiet_option(p)
    add_method_options(p)
    add_presence_options(p)
    p.set_defaults(func=_run)
