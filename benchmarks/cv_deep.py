"""deepSVG_mu trained on a labelled dataset (Algorithm 4), cross-validated by case.

Five folds by case (case ``i`` of the sorted ids is held out in fold ``i % 5``): for each
fold the tissue prior is learned on the training cases only, its ROI z-score class means are
``mu_data``, and one network is trained on every LV-ROI slice of the training cases
(:func:`napari_gmmseg.deep.train`); the held-out cases are segmented in one forward pass per
slice (GT LV ROI) and scored as named, with the scores of ``benchmarks/cv_quality.py``.

Usage::

    python benchmarks/cv_deep.py ../shared/data/myops_dev --epochs 30 --out cv_deep.md
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from cv_quality import score_case, table

FOLDS = 5


def run(dataset: str, *, epochs: int, seed: int = 0) -> dict[str, list[dict]]:
    """``{"deepsvg-mu, trained (Alg. 4)": [case scores]}`` over the held-out cases."""
    from napari_gmmseg.deep import train
    from napari_gmmseg.io import discover_cases
    from napari_gmmseg.labels import LV_ROI_VALUES
    from napari_gmmseg.prior import learn_prior
    from napari_gmmseg.segment import segment_case

    cases = [s.load() for s in discover_cases(dataset)]
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="cv_deep_"))
    for fold in range(FOLDS):
        test = [c for i, c in enumerate(cases) if i % FOLDS == fold]
        training = [c for i, c in enumerate(cases) if i % FOLDS != fold]
        prior = learn_prior(training)
        t0 = time.perf_counter()
        path = tmp / f"fold{fold}.pt"
        train(training, method="deepsvg-mu", mu_data=prior, epochs=epochs, seed=seed,
              device="cpu", out=path)  # fmt: skip
        print(f"fold {fold}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
        for case in test:
            gt = np.where(np.isin(case.labels, LV_ROI_VALUES), case.labels, 0)
            t1 = time.perf_counter()
            fit = segment_case(case, method="deepsvg-mu", weights=str(path), seed=seed,
                               device="cpu", prior=prior)  # fmt: skip
            row = score_case(fit.labels, gt, case.spacing_mm)
            row.update(case=case.case_id, seconds=time.perf_counter() - t1)
            rows.append(row)
    return {f"deepsvg-mu, trained (Alg. 4, {epochs} epochs, 5-fold)": rows}


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="markdown file to write (with a JSON of the per-case rows)")
    args = ap.parse_args()
    results = run(args.dataset, epochs=args.epochs, seed=args.seed)
    md = table(results)
    print(md)
    if args.out:
        Path(args.out).write_text(md, encoding="utf-8")
        Path(args.out).with_suffix(".json").write_text(
            json.dumps(results, indent=1, default=float), encoding="utf-8"
        )


if __name__ == "__main__":
    main()
