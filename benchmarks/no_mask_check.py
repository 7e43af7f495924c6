"""The no-mask workflow on scans without labels (another acquisition): QC, burden, runtime.

For every case of DATASET: the automatic ROI (:func:`napari_gmmseg.autoroi.find_roi`, QC per
slice), then the method inside it (default: the package default), timed apart; the burden
with its 95 % interval. Prints a markdown table and the pooled figures.

Usage::

    python benchmarks/no_mask_check.py ../shared/data/myops_unlabelled [--method tissue-net]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def main() -> None:
    from napari_gmmseg.accuracy import attach_interval
    from napari_gmmseg.autoroi import find_roi
    from napari_gmmseg.io import discover_cases
    from napari_gmmseg.methods import DEFAULT_METHOD
    from napari_gmmseg.metrics import burden
    from napari_gmmseg.segment import segment_case

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--method", default=DEFAULT_METHOD)
    args = ap.parse_args()
    print(
        "| case | slices passing QC | ROI s | method s | scar % (95 % interval) | edema % | scar + edema % |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    for src in discover_cases(args.dataset):
        case = src.load()
        t0 = time.perf_counter()
        auto = find_roi(case.images, case.channels, case.spacing_mm)
        t_roi = time.perf_counter() - t0
        n_ok = sum(q.ok for q in auto.qc)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = segment_case(case, method=args.method, roi=auto.roi)
        t_fit = time.perf_counter() - t0
        ci = attach_interval(fit, "auto", case.spacing_mm) or {}
        b = burden(fit.labels, case.spacing_mm)
        rows.append((n_ok, len(auto.qc), t_roi, t_fit, b["scar_pct"], b["edema_pct"]))
        scar_ci = ci.get("scar_pct")
        scar = f"{b['scar_pct']:.1f}" + (f" ({scar_ci[0]:.0f}-{scar_ci[1]:.0f})" if scar_ci else "")
        print(
            f"| {src.case_id} | {n_ok}/{len(auto.qc)} | {t_roi:.1f} | {t_fit:.1f} | {scar} "
            f"| {b['edema_pct']:.1f} | {b['scar_edema_pct']:.1f} |",
            flush=True,
        )
    r = np.array(rows)
    print(
        f"\n{len(r)} cases: {int(r[:, 0].sum())}/{int(r[:, 1].sum())} slices pass QC; "
        f"{args.method} {r[:, 3].mean():.1f} s per case (max {r[:, 3].max():.1f}), automatic ROI "
        f"{r[:, 2].mean():.1f} s; scar {r[:, 4].min():.1f}-{r[:, 4].max():.1f} %, edema "
        f"{r[:, 5].min():.1f}-{r[:, 5].max():.1f} %"
    )


if __name__ == "__main__":
    main()
