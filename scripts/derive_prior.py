"""Derive the prior table of class means (naming.DEFAULT_PRIOR) from labelled cases.

Every slice is z-scored per sequence over its ground-truth LV ROI (labels 500, 200,
1220, 2221: the default SliceBatch normalisation), class means of the ROI pixels are
taken per case, then averaged over the cases (each case weighted equally).

Usage::

    python scripts/derive_prior.py ../shared/data/myops_real [--out prior.json]
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_gmmseg.io import discover_cases
from napari_gmmseg.labels import CLASS_NAMES, CLASS_VALUES
from napari_gmmseg.naming import PriorTable
from napari_gmmseg.preprocess import SliceBatch


def case_means(case) -> np.ndarray:
    """``(4, C)`` class means of the per-slice z-scored intensities inside the LV ROI."""
    roi = case.roi()
    batch = SliceBatch.from_volume(case.images, roi, channels=case.channels, device="cpu")
    x = batch.x[batch.valid].numpy()  # packed in raster order, as roi's True voxels
    lab = case.labels[roi]
    return np.stack(
        [
            x[lab == v].mean(0) if (lab == v).any() else np.full(x.shape[1], np.nan)
            for v in CLASS_VALUES
        ]
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("--out", default=None, help="write the table as JSON")
    args = p.parse_args(argv)
    per_case, channels = [], None
    for src in discover_cases(args.dataset):
        case = src.load()
        channels = case.channels
        m = case_means(case)
        per_case.append(m)
        print(case.case_id, " ".join("(" + ",".join(f"{v:5.2f}" for v in row) + ")" for row in m))
    means = np.nanmean(np.stack(per_case), axis=0)
    table = PriorTable(tuple(channels), CLASS_NAMES, np.round(means, 3))
    print("mean", table.means.tolist())
    if args.out:
        table.save(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
