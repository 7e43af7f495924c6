"""How often does prior-table naming agree with the Hungarian matching against ground truth?

For every slice of every case: fit the mixture (GMM and SVGMM, default options,
ground-truth LV ROI), name the components with :func:`napari_gmmseg.naming.name_components`
(no ground truth), and independently match components to the ground-truth classes by
the Hungarian assignment maximising pixel overlap. Reports the fraction of slices
whose whole mapping agrees and the fraction of components named the same.

Usage::

    python benchmarks/naming_agreement.py ../shared/data/myops_real [--methods gmm,svgmm]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.optimize import linear_sum_assignment

from napari_gmmseg.io import discover_cases
from napari_gmmseg.labels import CLASS_VALUES
from napari_gmmseg.segment import segment_case


def gt_mapping(components: np.ndarray, gt: np.ndarray, k: int) -> np.ndarray:
    """Component -> class index maximising the overlap with the ground truth (one slice)."""
    overlap = np.zeros((k, len(CLASS_VALUES)))
    for c, v in enumerate(CLASS_VALUES):
        sel = gt == v
        overlap[:, c] = np.bincount(components[sel], minlength=k)[:k]
    rows, cols = linear_sum_assignment(-overlap)
    out = np.full(k, -1)
    out[rows] = cols
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("dataset")
    p.add_argument("--methods", default="gmm,svgmm")
    p.add_argument("--init", default="kmeans++")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(
        "| method | slices | whole mapping agrees | components agree | per case (slices agreeing) |"
    )
    print("|---|---|---|---|---|")
    for method in args.methods.split(","):
        n_slices = n_agree = n_comp = n_comp_agree = 0
        per_case = []
        for src in discover_cases(args.dataset):
            case = src.load()
            fit = segment_case(case, method=method, init=args.init, seed=args.seed)
            agree_case = 0
            for i, z in enumerate(fit.slice_index):
                roi = fit.components[z] >= 0
                comp = fit.components[z][roi].astype(np.int64)
                k = fit.component_to_class.shape[1]
                ref = gt_mapping(comp, case.labels[z][roi], k)
                named = fit.component_to_class[i]
                n_slices += 1
                same = bool(np.all(ref == named))
                n_agree += same
                agree_case += same
                n_comp += k
                n_comp_agree += int((ref == named).sum())
            per_case.append(f"{case.case_id}: {agree_case}/{len(fit.slice_index)}")
        print(
            f"| {method} | {n_slices} | {n_agree}/{n_slices} ({100 * n_agree / n_slices:.0f} %) | "
            f"{n_comp_agree}/{n_comp} ({100 * n_comp_agree / n_comp:.0f} %) | {', '.join(per_case)} |"
        )


if __name__ == "__main__":
    main()
