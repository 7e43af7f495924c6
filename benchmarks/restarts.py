"""How much do EM restarts (``n_init``) reduce the dependence of the result on the seed?

For GMM and SVGMM with ``n_init`` = 1 and 5, on the phantom set (as in
``ablation.py``) and the real MyoPS cases, over seeds 0-4 (ground-truth ROI,
engine defaults otherwise), it reports:

- mean final NLL per slice (lower is a better fit of the model);
- per-class named Dice (mean over slices holding the class) and scar burden
  MAE / bias, averaged over seeds, with the SD across seeds;
- label agreement between seeds: mean fraction of ROI pixels with the same label
  for every pair of seeds;
- seconds per case (mean; the machine is shared, timings are noisy).

Run::

    python benchmarks/restarts.py --out restarts.md
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import CLASS_SHORT, CLASS_VALUES, DEFAULT_REAL, _slice_metrics, _summary

ROI_VALUES = CLASS_VALUES  # the LV ROI: blood pool + myocardium classes


def _datasets(real: str) -> dict[str, list]:
    from napari_gmmseg.phantom import make_case

    out = {"phantom": [make_case(1000 + i, infarct=i < 4) for i in range(6)]}
    if Path(real).is_dir():
        from napari_gmmseg.io import discover_cases

        out["real"] = [src.load() for src in discover_cases(real)]
    return out


def _final_nll(fit) -> np.ndarray:
    hist = np.asarray(fit.nll_history, dtype=np.float64)
    idx = np.maximum(np.asarray(fit.n_iter_) - 1, 0)
    return hist[np.arange(len(hist)), idx]


def run(args) -> str:
    from napari_gmmseg.segment import segment_case

    seeds = [int(s) for s in args.seeds.split(",")]
    lines = [
        "| dataset | method | n_init | final NLL | "
        + " | ".join(f"Dice {c}" for c in CLASS_SHORT)
        + " | scar MAE | scar bias | label agreement between seeds | s/case |",
        "|---|---|---:|---:|" + "---:|" * len(CLASS_SHORT) + "---:|---:|---:|---:|",
    ]
    for dset, cases in _datasets(args.real).items():
        for method in args.methods.split(","):
            for n_init in (1, args.n_init):
                per_seed, nll, secs, labels = [], [], [], {}
                for seed in seeds:
                    parts = []
                    for case in cases:
                        t0 = time.perf_counter()
                        fit = segment_case(case, roi="gt", method=method, seed=seed, n_init=n_init)
                        secs.append(time.perf_counter() - t0)
                        parts.append(_slice_metrics(fit.labels, case.labels, case.spacing_mm))
                        nll.append(_final_nll(fit))
                        labels[(seed, case.case_id)] = fit.labels[np.isin(case.labels, ROI_VALUES)]
                    per_seed.append(_summary(parts, []))
                agree = [
                    float(np.mean(labels[(a, c.case_id)] == labels[(b, c.case_id)]))
                    for a, b in itertools.combinations(seeds, 2)
                    for c in cases
                ]

                def stat(key: str, fmt: str, rows=per_seed) -> str:
                    v = np.array([r[key] for r in rows])
                    return f"{fmt.format(v.mean())} ± {fmt.format(v.std())}"

                cells = [stat(f"dice_{c}", "{:.3f}") for c in CLASS_SHORT]
                lines.append(
                    f"| {dset} | {method} | {n_init} | {np.mean(np.concatenate(nll)):.4f} | "
                    + " | ".join(cells)
                    + f" | {stat('scar_pct_mae', '{:.1f}')} | {stat('scar_pct_bias', '{:+.1f}')}"
                    + f" | {np.mean(agree):.1%} | {np.mean(secs):.2f} |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
    lines.append(
        f"\nSeeds {args.seeds}; mean ± SD across seeds. Dice as named by the method, per slice. "
        "Label agreement: fraction of ground-truth ROI pixels labelled alike by two seeds, "
        "mean over seed pairs and cases."
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", default=str(DEFAULT_REAL))
    p.add_argument("--methods", default="gmm,svgmm")
    p.add_argument("--n-init", type=int, default=5)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cmd = "python benchmarks/restarts.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    md = run(args)
    md = f"Command: `{cmd}` ({time.perf_counter() - t0:.0f} s)\n\n" + md
    print(md)
    if args.out:
        args.out.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
