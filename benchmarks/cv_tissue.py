"""5-fold cross-validated quality of the tissue network (default) and its ablations, labels as named.

Every case of the committed split (``benchmarks/folds_myops_dev.json``) is segmented by the
model of its own fold (trained on the other four folds by ``napari-gmmseg tissue-net``), with
the manual LV ROI (``gt``) and with the automatic ROI (``auto``), and scored as named:

- per case scar Dice and scar ∪ edema Dice (MyoPS 2020), per-slice mean Dice;
- per-case burden (% of LV myocardium) of scar (infarct size), edema, and scar ∪ edema
  (area at risk): MAE, bias, 95 % limits of agreement, Lin's CCC, slope of predicted on true,
  and a constant baseline (each case given the other cases' mean true burden);
- 95 % interval coverage: each case's interval is made from the other cases' residuals
  (leave-one-out split-conformal, :func:`napari_gmmseg.accuracy.interval_from_residuals`);
- scar-free slices that get no scar; seconds per case.

``tissue-classifier`` (the previous default, a pixel MLP) is re-learned on the same training
folds, so every row is on the same folds and ROIs.

Usage::

    python benchmarks/cv_tissue.py ../shared/data/myops_dev --models bench_out/tissuenet \\
        --out docs/cv_tissue.md --json bench_out/cv_tissue.json [--write-accuracy]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: name -> (method, options); "{fold}" in a model option is the fold's model file.
CONFIGS: dict[str, tuple[str, dict]] = {
    "tissue-net (default)": ("tissue-net", {}),
    "tissue-net, network alone (no GMM adaptation)": ("tissue-net", {"adapt_iterations": 0}),
    "tissue-net, 3 adaptation iterations": ("tissue-net", {"adapt_iterations": 3}),
    "tissue-net, no test-time flips": ("tissue-net", {"flips": False}),
    "tissue-net, ROI trimmed by the network": ("tissue-net", {"trim_roi": True}),
    "tissue-classifier (previous default, MLP)": ("tissue-classifier", {}),
}
QUANTITIES = {"scar": "scar_pct", "edema": "edema_pct", "area at risk": "scar_edema_pct"}


def score(labels: np.ndarray, gt: np.ndarray, spacing_mm) -> dict:
    """As-named scores of one case (cv_quality's, plus area at risk)."""
    from cv_quality import score_case
    from napari_gmmseg.metrics import burden

    row = score_case(labels, gt, spacing_mm)
    bp, bg = burden(labels, spacing_mm), burden(gt, spacing_mm)
    for key in QUANTITIES.values():
        row[f"{key}_pred"], row[f"{key}_true"] = bp[key], bg[key]
    return row


def run(dataset: str, models: Path, configs: list[str], rois: list[str], seed: int) -> dict:
    """``{roi: {config: [case rows]}}``."""
    from napari_gmmseg.classifier import learn_classifier
    from napari_gmmseg.io import discover_cases
    from napari_gmmseg.labels import LV_ROI_VALUES
    from napari_gmmseg.segment import segment_case
    from napari_gmmseg.tissuenet.train import read_folds

    folds = read_folds(Path(__file__).with_name("folds_myops_dev.json"))
    sources = {s.case_id: s for s in discover_cases(dataset)}
    tmp = Path(tempfile.mkdtemp(prefix="cv_tissue_"))
    out: dict = {r: {c: [] for c in configs} for r in rois}
    for i, held_out in enumerate(folds):
        train_ids = [c for j, f in enumerate(folds) if j != i for c in f]
        mlp = None
        if any(CONFIGS[c][0] == "tissue-classifier" for c in configs):
            train = [sources[c].load() for c in train_ids]
            mlp = str(learn_classifier(train, seed=seed).save(tmp / f"mlp_fold{i}.npz"))
        for cid in held_out:
            case = sources[cid].load()
            gt = np.where(np.isin(case.labels, LV_ROI_VALUES), case.labels, 0)
            for roi in rois:
                case_roi = "gt"
                if roi == "auto":
                    cache = models / "autoroi" / f"{cid}.npz"
                    with np.load(cache) as z:
                        case_roi = z["roi"]
                for name in configs:
                    method, opts = CONFIGS[name]
                    model = str(models / f"fold{i}.npz") if method == "tissue-net" else mlp
                    t0 = time.perf_counter()
                    fit = segment_case(
                        case,
                        method=method,
                        roi=case_roi,
                        seed=seed,
                        device="cpu",
                        model=model,
                        **opts,
                    )
                    row = score(fit.labels, gt, case.spacing_mm)
                    row.update(case=cid, fold=i, seconds=time.perf_counter() - t0)
                    out[roi][name].append(row)
            print(f"fold {i} case {cid} done", flush=True)
    return out


def summarise(rows: list[dict]) -> dict:
    """Pooled figures of one config (module docstring)."""
    from napari_gmmseg.accuracy import interval_from_residuals
    from napari_gmmseg.agreement import bland_altman, concordance

    s: dict = {
        "n_cases": len(rows),
        "scar_dice": float(np.mean([r["scar_dice"] for r in rows])),
        "lesion_dice": float(np.mean([r["lesion_dice"] for r in rows])),
        "slice_dice": float(np.mean([d for r in rows for d in r["slice_dice"]])),
        "free": int(sum(r["free"] for r in rows)),
        "cleared": int(sum(r["cleared"] for r in rows)),
        "seconds": float(np.mean([r["seconds"] for r in rows])),
    }
    for key in QUANTITIES.values():
        p = np.array([r[f"{key}_pred"] for r in rows])
        t = np.array([r[f"{key}_true"] for r in rows])
        res = p - t
        cover, widths = [], []
        for i in range(len(rows)):
            others = np.delete(res, i)
            q_lo, q_hi = np.quantile(others, [0.025, 0.975])
            lo, hi = interval_from_residuals(float(p[i]), float(q_lo), float(q_hi))
            cover.append(lo <= t[i] <= hi)
            widths.append(hi - lo)
        const = np.array([(t.sum() - t[i]) / (len(t) - 1) for i in range(len(t))])
        s[key] = {
            "ba": bland_altman(p, t).to_dict(),
            "conc": concordance(p, t).to_dict(),
            "pred_range": [float(p.min()), float(p.max())],
            "true_range": [float(t.min()), float(t.max())],
            "coverage": float(np.mean(cover)),
            "mean_width": float(np.mean(widths)),
            "quantiles": [float(v) for v in np.quantile(res, [0.025, 0.975])],
            "constant_mae": float(np.abs(const - t).mean()),
            "constant_ccc": concordance(const, t).ccc,
        }
    return s


def table(summaries: dict) -> str:
    """Markdown: one table of Dice and one of burden agreement per ROI."""
    out = []
    for roi, configs in summaries.items():
        label = "manual LV ROI" if roi == "gt" else "automatic ROI"
        out.append(
            f"\n**{label}**, 5-fold by case, labels as named\n\n"
            "| config | scar Dice | scar ∪ edema Dice | per-slice Dice | scar-free slices cleared | s / case |\n"
            "|---|---|---|---|---|---|"
        )
        for name, s in configs.items():
            out.append(
                f"| {name} | {s['scar_dice']:.3f} | {s['lesion_dice']:.3f} | {s['slice_dice']:.3f} "
                f"| {s['cleared']}/{s['free']} | {s['seconds']:.1f} |"
            )
        out.append(
            "\n| config | burden | MAE | bias | 95 % LoA | CCC | slope | predicted range | 95 % interval coverage (mean width) |\n"
            "|---|---|---|---|---|---|---|---|---|"
        )
        for name, s in configs.items():
            for q, key in QUANTITIES.items():
                b, c = s[key]["ba"], s[key]["conc"]
                out.append(
                    f"| {name} | {q} | {b['mae']:.1f} | {b['bias']:+.1f} "
                    f"| {b['loa_low']:+.1f} to {b['loa_high']:+.1f} | {c['ccc']:.2f} | {c['slope']:.2f} "
                    f"| {s[key]['pred_range'][0]:.0f}-{s[key]['pred_range'][1]:.0f} % "
                    f"| {100 * s[key]['coverage']:.0f} % ({s[key]['mean_width']:.0f} points) |"
                )
        first = next(iter(configs.values()))
        consts = ", ".join(f"{q} MAE {first[k]['constant_mae']:.1f}" for q, k in QUANTITIES.items())
        tr = first["scar_pct"]["true_range"]
        out.append(
            f"\nConstant (each case gets the other cases' mean true burden): {consts}. "
            f"True scar burden range {tr[0]:.0f}-{tr[1]:.0f} %."
        )
    return "\n".join(out) + "\n"


def accuracy_entries(summaries: dict, command: str) -> list[dict]:
    """Stated-accuracy entries (with residual quantiles) of the default configs."""
    from napari_gmmseg.accuracy import StatedAccuracy
    from napari_gmmseg.agreement import BlandAltman

    entries = []
    for roi, configs in summaries.items():
        for name, s in configs.items():
            method, opts = CONFIGS[name]
            if opts:
                continue
            entries.append(
                StatedAccuracy(
                    method=method,
                    roi="manual" if roi == "gt" else "auto",
                    dataset="25 MyoPS 2020 training cases (myops_dev: 3001-3025)",
                    protocol="5-fold by case (benchmarks/folds_myops_dev.json; model re-learned per fold)",
                    n_cases=s["n_cases"],
                    scar_pct=BlandAltman(**s["scar_pct"]["ba"]),
                    edema_pct=BlandAltman(**s["edema_pct"]["ba"]),
                    scar_dice=round(s["scar_dice"], 4),
                    lesion_dice=round(s["lesion_dice"], 4),
                    command=command,
                    residual_quantiles={
                        k: [round(v, 3) for v in s[k]["quantiles"]] for k in QUANTITIES.values()
                    },
                ).to_dict()
            )
    return entries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--models", required=True, help="folder with fold<i>.npz and autoroi/")
    ap.add_argument("--configs", default=";".join(CONFIGS), help="';'-separated config names")
    ap.add_argument("--rois", default="gt,auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="markdown file")
    ap.add_argument("--json", help="per-case rows and summaries")
    ap.add_argument("--from-json", help="re-make the tables from a --json file (no segmentation)")
    ap.add_argument(
        "--write-accuracy",
        action="store_true",
        help="replace the default method's entries of napari_gmmseg/data/stated_accuracy.json",
    )
    args = ap.parse_args()
    configs = [c.strip() for c in args.configs.split(";") if c.strip()]
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text(encoding="utf-8"))["rows"]
    else:
        results = run(args.dataset, Path(args.models), configs, args.rois.split(","), args.seed)
    summaries = {r: {c: summarise(rows) for c, rows in cfg.items()} for r, cfg in results.items()}
    md = table(summaries)
    print(md)
    if args.out:
        Path(args.out).write_text(md, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": results, "summaries": summaries}, indent=1))
    if args.write_accuracy:
        from napari_gmmseg.accuracy import ACCURACY_PATH

        command = f"python benchmarks/cv_tissue.py {args.dataset} --models {args.models}"
        doc = json.loads(ACCURACY_PATH.read_text(encoding="utf-8"))
        new = accuracy_entries(summaries, command)
        keys = {(e["method"], e["roi"]) for e in new}
        doc["entries"] = [e for e in doc["entries"] if (e["method"], e["roi"]) not in keys] + new
        ACCURACY_PATH.write_text(
            json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"wrote {len(new)} entries to {ACCURACY_PATH}")


if __name__ == "__main__":
    main()
