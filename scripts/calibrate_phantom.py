"""Class intensity ratios (class mean / healthy-myocardium mean) per sequence: real vs phantom.

Usage::

    python scripts/calibrate_phantom.py [REAL_DATASET] [--seeds 8] [--noise N] [--texture T]

REAL_DATASET defaults to $GMMSEG_REAL_DATA or ../shared/data/myops_real beside
the repository (MyoPS layout).  Prints two Markdown tables (the real cases
averaged, and phantom cases ``make_case(seed)`` for ``seed < --seeds``
averaged) plus their ratio, for docs/io.md.  "near" is the unlabelled tissue
within 10 mm of the labelled heart (in-plane), a proxy for the surroundings;
"myocardium SD / mean" is the spread inside healthy myocardium (noise, texture,
bias, partial volume).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from napari_gmmseg.io import Case, discover_cases
from napari_gmmseg.phantom import make_case

ROWS = (
    ("LV blood pool", 500),
    ("myocardium", 200),
    ("RV blood pool", 600),
    ("edema", 1220),
    ("scar", 2221),
)


def ratios(case: Case) -> np.ndarray:
    """(rows + near, C) class mean / myocardium mean for one case."""
    from scipy import ndimage as ndi

    lab = case.labels
    heart = lab > 0
    iters = max(1, round(10.0 / case.spacing_mm[1]))
    near = ndi.binary_dilation(heart, structure=np.ones((1, 3, 3), bool), iterations=iters) & ~heart
    out = np.zeros((len(ROWS) + 2, case.images.shape[-1]))
    myo = case.images[lab == 200].mean(axis=0)
    for i, (_, v) in enumerate(ROWS):
        sel = lab == v
        out[i] = case.images[sel].mean(axis=0) / myo if sel.any() else np.nan
    out[-2] = case.images[near].mean(axis=0) / myo
    out[-1] = case.images[lab == 200].std(axis=0) / myo
    return out


def table(title: str, values: np.ndarray, channels) -> str:
    names = [r[0] for r in ROWS] + ["near (unlabelled, <10 mm)", "myocardium SD / mean"]
    lines = [f"**{title}**", "", "| class | " + " | ".join(channels) + " |"]
    lines.append("|---|" + "---|" * len(channels))
    for name, row in zip(names, values, strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines)


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    default = os.environ.get("GMMSEG_REAL_DATA") or str(repo.parent / "shared/data/myops_real")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("real", nargs="?", default=default)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument(
        "--noise", type=float, default=None, help="make_case noise (default: its default)"
    )
    ap.add_argument("--texture", type=float, default=None, help="make_case texture")
    args = ap.parse_args()

    channels = ("bSSFP", "LGE", "T2")
    real = None
    if Path(args.real).is_dir():
        srcs = discover_cases(args.real)
        per_case = [ratios(s.load(channels=channels)) for s in srcs]
        real = np.nanmean(per_case, axis=0)
        print(
            table(
                f"Real MyoPS cases ({', '.join(s.case_id for s in srcs)}), mean of per-case ratios",
                real,
                channels,
            )
        )
        print()
    opts = {k: v for k, v in (("noise", args.noise), ("texture", args.texture)) if v is not None}
    phan = np.nanmean([ratios(make_case(s, **opts)) for s in range(args.seeds)], axis=0)
    label = ", ".join(f"{k}={v}" for k, v in opts.items()) or "defaults"
    title = f"Phantom, make_case(seed) for seed in 0..{args.seeds - 1}, {label}"
    print(table(title, phan, channels))
    if real is not None:
        print()
        print(table("Phantom / real", phan / real, channels))


if __name__ == "__main__":
    main()
