"""Cross-validated quality on a labelled dataset: leave-one-case-out, labels as named.

For every held-out case the tissue prior (:func:`napari_gmmseg.prior.learn_prior`) and the
tissue classifier (:func:`napari_gmmseg.classifier.learn_classifier`) are learned on the
*other* cases only; the held-out case is segmented with the GT LV ROI
(500 + 200 + 1220 + 2221) and scored as named (no matching to the ground truth):

- per case scar Dice and scar ∪ edema Dice (the MyoPS 2020 metrics; a case whose
  prediction and ground truth have no scar scores 1, one of them empty 0);
- per-slice mean Dice: the mean over slices of the mean Dice of the four classes
  (blood pool, myocardium, edema, scar) present in the prediction or the ground truth;
- burden per case (% of LV myocardium): mean absolute error and bias, scar and edema, and
  in a last row the same for a constant (each case given the other cases' mean true
  burden): the error a burden estimate has to beat;
- scar-free slices (ground truth) that get no scar, and scar Dice on the slices with scar;
- seconds per case (fit only, this machine).

Usage::

    python benchmarks/cv_quality.py ../shared/data/myops_dev --out cv_quality.md
    python benchmarks/cv_quality.py ../shared/data/myops_dev --roi auto --configs "tissue-classifier (default)"

The paper's methods (``gmm``, ``svgmm``) run through :func:`napari_gmmseg.segment.segment_case`
with the held-out prior for naming; the wall-first rows differ from the default in one
option each (the ablation).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

#: name -> (method, options): the default pipeline, its ablations and the paper's methods.
CONFIGS: dict[str, tuple[str, dict]] = {
    "tissue-classifier (default)": ("tissue-classifier", {}),
    "tissue-classifier, smoothing off": ("tissue-classifier", {"smoothing_mm": 0.0}),
    "tissue-classifier, presence off": ("tissue-classifier", {"lesion_presence": False}),
    "tissue-classifier, adaptation off": ("tissue-classifier", {"adapt_iterations": 0}),
    "gmm-prior": ("gmm-prior", {}),
    "gmm-prior, prior off (ML EM from prior means)": ("gmm-prior", {"strength": 0.0}),
    "gmm-prior, prior 1.0": ("gmm-prior", {"strength": 1.0}),
    "gmm-prior, presence off": ("gmm-prior", {"lesion_presence": False}),
    "gmm-prior, rim rule off": ("gmm-prior", {"rim_rule": False}),
    "gmm-prior, MRF on (beta 0.5)": ("gmm-prior", {"beta": 0.5}),
    "gmm-prior + wall-first stage 1": ("gmm-prior", {"wall_first": True}),
    "wall-first": ("wall-first", {}),
    "wall-first, prior off (ML EM from prior means)": ("wall-first", {"strength": 0.0}),
    "wall-first, engine gmm as stage 2": ("wall-first", {"mixture": "gmm"}),
    "wall-first, engine svgmm as stage 2": ("wall-first", {"mixture": "svgmm"}),
    "wall-first, MRF on (beta 0.5)": ("wall-first", {"beta": 0.5}),
    "wall-first, strong prior (strength 0.5)": ("wall-first", {"strength": 0.5}),
    "wall-first, presence off": ("wall-first", {"lesion_presence": False}),
    "wall-first, rim rule off": ("wall-first", {"rim_rule": False}),
    "wall-first, T2 veto in stage 1": ("wall-first", {"t2_veto": True}),
    "gmm (paper)": ("gmm", {}),
    "svgmm (paper)": ("svgmm", {}),
}


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two bool masks; 1 when both are empty."""
    s = pred.sum() + gt.sum()
    return 1.0 if s == 0 else float(2 * (pred & gt).sum() / s)


def score_case(labels: np.ndarray, gt: np.ndarray, spacing_mm) -> dict:
    """As-named scores of one case (see the module docstring)."""
    from napari_gmmseg.metrics import burden, dice

    scar_p, scar_g = labels == 2221, gt == 2221
    les_p, les_g = np.isin(labels, (1220, 2221)), np.isin(gt, (1220, 2221))
    per_slice = dice(labels, gt, (500, 200, 1220, 2221), per_slice=True)
    fitted = np.isin(gt, (500, 200, 1220, 2221)).reshape(gt.shape[0], -1).any(1)
    bp, bg = burden(labels, spacing_mm), burden(gt, spacing_mm)
    has_scar = scar_g.reshape(gt.shape[0], -1).any(1) & fitted
    free = ~scar_g.reshape(gt.shape[0], -1).any(1) & fitted
    cleared = ~scar_p.reshape(gt.shape[0], -1).any(1) & free
    scar_slices = [_dice(scar_p[z], scar_g[z]) for z in np.nonzero(has_scar)[0]]
    return {
        "scar_dice": _dice(scar_p, scar_g),
        "lesion_dice": _dice(les_p, les_g),
        "slice_dice": [float(np.nanmean(r)) for r in per_slice[fitted]],
        "scar_err": bp["scar_pct"] - bg["scar_pct"],
        "edema_err": bp["edema_pct"] - bg["edema_pct"],
        "scar_true": bg["scar_pct"],
        "edema_true": bg["edema_pct"],
        "free": int(free.sum()),
        "cleared": int(cleared.sum()),
        "scar_slice_dice": scar_slices,
    }


def run(dataset: str, configs: list[str], seed: int = 0, roi: str = "gt") -> dict[str, list[dict]]:
    """Leave-one-case-out scores of every config: ``{config: [case scores]}``.

    ``roi="auto"``: the held-out case is segmented inside the automatic ROI (found once per
    case from bSSFP, :func:`napari_gmmseg.autoroi.find_roi`) and scored against its whole
    ground truth; ``"gt"``: inside the ground-truth LV.
    """
    from napari_gmmseg.classifier import learn_classifier
    from napari_gmmseg.io import discover_cases
    from napari_gmmseg.labels import LV_ROI_VALUES
    from napari_gmmseg.prior import learn_prior
    from napari_gmmseg.segment import segment_case

    cases = [s.load() for s in discover_cases(dataset)]
    out: dict[str, list[dict]] = {c: [] for c in configs}
    tmp = Path(tempfile.mkdtemp(prefix="cv_quality_"))
    for i, case in enumerate(cases):
        train = [c for j, c in enumerate(cases) if j != i]  # training folds only
        prior = learn_prior(train)
        model = None
        if any(CONFIGS[n][0] == "tissue-classifier" for n in configs):
            model = str(learn_classifier(train, seed=seed).save(tmp / f"fold_{case.case_id}.npz"))
        gt = np.where(np.isin(case.labels, LV_ROI_VALUES), case.labels, 0)
        case_roi = "gt"
        if roi == "auto":
            from napari_gmmseg.autoroi import find_roi

            case_roi = find_roi(case.images, case.channels, case.spacing_mm).roi
        for name in configs:
            method, opts = CONFIGS[name]
            if method == "tissue-classifier":
                opts = {"model": model, **opts}
            t0 = time.perf_counter()
            fit = segment_case(
                case, method=method, seed=seed, prior=prior, device="cpu", roi=case_roi, **opts
            )
            sec = time.perf_counter() - t0
            row = score_case(fit.labels, gt, case.spacing_mm)
            row.update(case=case.case_id, seconds=sec)
            out[name].append(row)
        print(f"case {case.case_id} done", flush=True)
    return out


def table(results: dict[str, list[dict]]) -> str:
    """Markdown table of the per-config summary."""
    head = (
        "| leave-one-case-out, as named | scar Dice per case | scar ∪ edema Dice per case "
        "| per-slice mean Dice | scar burden MAE / bias | edema burden MAE / bias "
        "| scar-free slices cleared | scar Dice, slices with scar | s per case |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, rows in results.items():
        se = np.array([r["scar_err"] for r in rows])
        ee = np.array([r["edema_err"] for r in rows])
        free = sum(r["free"] for r in rows)
        cleared = sum(r["cleared"] for r in rows)
        lines.append(
            f"| {name} | {np.mean([r['scar_dice'] for r in rows]):.3f} "
            f"| {np.mean([r['lesion_dice'] for r in rows]):.3f} "
            f"| {np.mean([d for r in rows for d in r['slice_dice']]):.3f} "
            f"| {np.abs(se).mean():.1f} / {se.mean():+.1f} | {np.abs(ee).mean():.1f} / {ee.mean():+.1f} "
            f"| {cleared}/{free} ({100 * cleared / max(free, 1):.0f} %) "
            f"| {np.mean([d for r in rows for d in r['scar_slice_dice']]):.3f} "
            f"| {np.mean([r['seconds'] for r in rows]):.2f} |"
        )
    rows = next(iter(results.values()), [])
    if rows and "scar_true" in rows[0]:
        errs = []
        for what in ("scar_true", "edema_true"):
            true = np.array([r[what] for r in rows])
            others = (true.sum() - true) / (len(true) - 1)  # the mean of the other cases
            errs.append(others - true)
        (se, ee), blank = errs, " | " * 2
        lines.append(
            "| *constant: each case gets the mean true burden of the other cases*"
            + blank
            + f"| | {np.abs(se).mean():.1f} / {se.mean():+.1f} "
            f"| {np.abs(ee).mean():.1f} / {ee.mean():+.1f} | | | |"
        )
    return head + "\n".join(lines) + "\n"


def accuracy_entries(
    results: dict[str, list[dict]], roi: str, dataset: str, command: str
) -> list[dict]:
    """The stated-accuracy entries (:mod:`napari_gmmseg.accuracy`) of the configs run with
    their method's default options: per-case burden agreement and lesion Dice."""
    from napari_gmmseg.accuracy import StatedAccuracy
    from napari_gmmseg.agreement import bland_altman

    entries = []
    for name, rows in results.items():
        method, opts = CONFIGS[name]
        if opts:  # an ablation: not what a user runs
            continue
        ids = sorted(r["case"] for r in rows)
        ba = {
            q: bland_altman(
                [r[f"{q}_err"] + r[f"{q}_true"] for r in rows], [r[f"{q}_true"] for r in rows]
            )
            for q in ("scar", "edema")
        }
        entries.append(
            StatedAccuracy(
                method=method,
                roi="manual" if roi == "gt" else "auto",
                dataset=f"{len(rows)} MyoPS 2020 training cases ({Path(dataset).name}: "
                f"{ids[0]}-{ids[-1]})",
                protocol="leave-one-case-out ("
                + (
                    "classifier and tissue prior"
                    if method == "tissue-classifier"
                    else "the naming prior"
                )
                + f" learned on the other {len(rows) - 1} cases)",
                n_cases=len(rows),
                scar_pct=ba["scar"],
                edema_pct=ba["edema"],
                scar_dice=float(np.mean([r["scar_dice"] for r in rows])),
                lesion_dice=float(np.mean([r["lesion_dice"] for r in rows])),
                command=command,
            ).to_dict()
        )
    return [_rounded(e) for e in entries]


def _rounded(value: object, digits: int = 4) -> object:
    """``value`` with every float rounded (a readable file; far below the noise)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return value


def write_accuracy(path: Path, entries: list[dict]) -> None:
    """Merge ``entries`` into the statement file ``path`` (same method and ROI replaced),
    written atomically."""
    import os

    doc = {
        "about": "Cross-validated per-case burden agreement (% of LV myocardium, prediction "
        "minus manual; Bland-Altman) and lesion Dice of methods at their default options: "
        "what napari_gmmseg.accuracy states beside a burden. Written by "
        "benchmarks/cv_quality.py --write-accuracy; do not edit by hand.",
        "entries": [],
    }
    if path.exists():
        doc = json.loads(path.read_text(encoding="utf-8"))
    keys = {(e["method"], e["roi"]) for e in entries}
    kept = [e for e in doc["entries"] if (e["method"], e["roi"]) not in keys]
    doc["entries"] = sorted(kept + entries, key=lambda e: (e["method"], e["roi"]))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--configs", default=";".join(CONFIGS), help="';'-separated config names")
    ap.add_argument("--out", help="markdown file to write (with a JSON of the per-case rows)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--roi", choices=("gt", "auto"), default="gt", help="ROI of the held-out case")
    ap.add_argument(
        "--write-accuracy",
        type=Path,
        metavar="JSON",
        help="merge the default-option configs' burden agreement into this stated-accuracy "
        "file (the package's is src/napari_gmmseg/data/stated_accuracy.json)",
    )
    ap.add_argument(
        "--load", type=Path, metavar="JSON", help="score a previous --out JSON instead of running"
    )
    args = ap.parse_args()
    configs = [c for c in args.configs.split(";") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    if args.load:
        results = {c: r for c, r in json.loads(args.load.read_text()).items() if c in configs}
    else:
        results = run(args.dataset, configs, args.seed, args.roi)
    md = table(results)
    print(md)
    if args.out:
        Path(args.out).write_text(md)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))
    if args.write_accuracy:
        roi_flag = "" if args.roi == "gt" else " --roi auto"
        command = (
            f"python benchmarks/cv_quality.py {args.dataset}{roi_flag} "
            f'--configs "{";".join(configs)}" --seed {args.seed}'
        )
        entries = accuracy_entries(results, args.roi, args.dataset, command)
        write_accuracy(args.write_accuracy, entries)
        print(f"stated accuracy of {[e['method'] for e in entries]} -> {args.write_accuracy}")


if __name__ == "__main__":
    main()
