"""Robust intensities (issue 16): effect of the percentile-clipped statistics on clean data,
and how much EM's labels move when 50 ROI voxels change at all.

    python benchmarks/robust_intensities.py clean     # 15 dev cases, GMM + SVGMM, seeds 0-2
    python benchmarks/robust_intensities.py perturb   # 3 real cases, 50 voxels moved

Nothing here is tuned: the percentiles are fixed (preprocess.CLIP_PERCENTILES).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np

DEV = Path(__file__).resolve().parents[2] / "shared/data/myops_dev"
REAL = Path(__file__).resolve().parents[2] / "shared/data/myops_real"
CLASSES = ("LV blood pool", "myocardium", "edema", "scar")


def _volume_dice(out: Path) -> dict[tuple[str, str, str], tuple[float, float]]:
    rows = {}
    with open(out / "metrics.csv") as fh:
        for r in csv.DictReader(fh):
            if r["slice"] == "volume" and r["class"] in CLASSES:
                key = (r["method"], r["case"], r["class"])
                rows[key] = (float(r["dice"] or "nan"), float(r["dice_named"] or "nan"))
    return rows


def clean(dataset: Path, seeds: tuple[int, ...]) -> None:
    import napari_gmmseg.preprocess as pp
    from napari_gmmseg.batch import evaluate_dataset

    default = pp.CLIP_PERCENTILES
    runs: dict[str, list] = {"robust": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, clip in (("robust", default), ("plain", None)):
            pp.CLIP_PERCENTILES = clip  # what segment() reads as its default
            for seed in seeds:
                out = Path(tmp) / f"{name}_{seed}"
                evaluate_dataset(
                    dataset, ["gmm", "svgmm"], out, options={"seed": seed, "device": "cpu"},
                    progress=False, plots=False,
                )  # fmt: skip
                runs[name].append(_volume_dice(out))
        pp.CLIP_PERCENTILES = default
    print("| | plain z-score | robust statistics (default) | difference (SD) |")
    print("|---|---|---|---|")
    for method in ("gmm", "svgmm"):
        for i, kind in enumerate(("matched", "as named")):
            a = np.array([v[i] for r in runs["robust"] for k, v in r.items() if k[0] == method])
            b = np.array([v[i] for r in runs["plain"] for k, v in r.items() if k[0] == method])
            d = a - b
            print(
                f"| {method.upper()}, {kind} | {np.nanmean(b):.3f} | {np.nanmean(a):.3f} | "
                f"{np.nanmean(d):+.3f} ({np.nanstd(d):.3f}) |"
            )


def perturb(dataset: Path, n: int = 50) -> None:
    from napari_gmmseg.io import Case, discover_cases
    from napari_gmmseg.labels import LV_ROI_VALUES
    from napari_gmmseg.segment import segment_case

    for source in discover_cases(dataset):
        case = source.load()
        roi = np.isin(case.labels, LV_ROI_VALUES)
        zz, yy, xx = np.nonzero(roi)
        rng = np.random.default_rng(0)
        dst, src = rng.choice(zz.size, n, replace=False), rng.choice(zz.size, n)
        images = case.images.copy()
        images[zz[dst], yy[dst], xx[dst]] = case.images[zz[src], yy[src], xx[src]]
        moved = Case(**{**case.__dict__, "images": images})
        line = []
        for clip in ((0.5, 99.5), None):
            a = segment_case(case, method="gmm", seed=0, device="cpu", clip_percentiles=clip)
            b = segment_case(moved, method="gmm", seed=0, device="cpu", clip_percentiles=clip)
            line.append(
                f"{'robust' if clip else 'plain'} {np.mean(a.labels[roi] == b.labels[roi]):.3f}"
            )
        print(f"case {case.case_id}: labels agreeing after {n} voxels moved: {', '.join(line)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=("clean", "perturb"))
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    if args.study == "clean":
        clean(args.dataset or DEV, tuple(int(s) for s in args.seeds.split(",")))
    else:
        perturb(args.dataset or REAL)


if __name__ == "__main__":
    main()
