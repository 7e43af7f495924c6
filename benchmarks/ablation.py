"""Ablation of the quality options: class presence, spatial MRF, clinical baselines.

For every method (GMM, SVGMM, and the deep ones with ``--deep``), with and
without each option (presence rule, the engine's spatial prior), on the phantom
set (drawn in memory with :func:`napari_gmmseg.phantom.make_case`) and on a
MyoPS dataset (default ``../shared/data/myops_real``), it reports per slice:

- Dice per class *as named by the method* (no ground truth used, what a user
  gets), averaged over the slices where the ground truth holds the class;
- ``no-scar ok``: the fraction of scar-free slices where no scar is labelled;
- scar and edema burden (% of LV myocardium) error against the ground truth:
  mean absolute error and bias (mean of method - truth) over all slices;
- runtime per case (fit + presence; the machine is shared, timings are noisy).

Clinical baselines (LGE n-SD for n = 2..6, FWHM, with T2 2-SD edema) run
inside the ground-truth myocardium and inside the myocardium of the default
pipeline (``gmm`` + presence). Prints a markdown table (and writes it with
``--out``)::

    python benchmarks/ablation.py --out docs/ablation.md

Nothing is tuned per case; every variant uses the package defaults except the
option it switches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REAL = REPO.parent / "shared" / "data" / "myops_real"
CLASS_VALUES = (500, 200, 1220, 2221)
CLASS_SHORT = ("blood", "myo", "edema", "scar")


def _cases(args):
    from napari_gmmseg.phantom import make_case

    sets = []
    n, healthy = args.phantom_cases, args.phantom_healthy
    phantom = [
        make_case(1000 + i, infarct=i < n - healthy, n_slices=args.phantom_slices) for i in range(n)
    ]
    sets.append(("phantom", phantom))
    if args.real and Path(args.real).is_dir():
        from napari_gmmseg.io import discover_cases

        sets.append(("real", [src.load() for src in discover_cases(args.real)]))
    else:
        print(f"# real data not found at {args.real}: skipped", file=sys.stderr)
    return sets


def _slice_metrics(pred: np.ndarray, gt: np.ndarray, spacing) -> dict[str, np.ndarray]:
    """Per-slice named Dice per class, class presence, burden for pred and gt."""
    from napari_gmmseg.metrics import burden, dice

    zs = np.flatnonzero(np.isin(gt, CLASS_VALUES).any(axis=(1, 2)))
    pred, gt = pred[zs], gt[zs]
    d = dice(pred, gt, list(CLASS_VALUES), per_slice=True)  # (Z, 4), NaN when both empty
    bp = burden(pred, spacing, per_slice=True)
    bg = burden(gt, spacing, per_slice=True)
    vp, vg = burden(pred, spacing), burden(gt, spacing)
    return {
        "case_scar_pct": np.array([[vp["scar_pct"], vg["scar_pct"]]]),
        "dice": np.asarray(d, dtype=np.float64),
        "gt_has": np.stack([(gt == v).any(axis=(1, 2)) for v in CLASS_VALUES], 1),
        "pred_has": np.stack([(pred == v).any(axis=(1, 2)) for v in CLASS_VALUES], 1),
        "scar_pct": np.stack([bp["scar_pct"], bg["scar_pct"]], 1),
        "edema_pct": np.stack([bp["edema_pct"], bg["edema_pct"]], 1),
    }


def _summary(parts: list[dict[str, np.ndarray]], seconds: list[float]) -> dict[str, float]:
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out_cases = len(parts)
    out: dict[str, float] = {}
    for j, name in enumerate(CLASS_SHORT):
        has = cat["gt_has"][:, j]
        vals = np.nan_to_num(cat["dice"][has, j], nan=0.0)
        out[f"dice_{name}"] = float(vals.mean()) if vals.size else float("nan")
    free = ~cat["gt_has"][:, 3]
    out["n_scar_free"] = int(free.sum())
    out["no_scar_ok"] = float((~cat["pred_has"][free, 3]).mean()) if free.any() else float("nan")
    for q in ("scar_pct", "edema_pct", "case_scar_pct"):
        p, g = cat[q][:, 0], cat[q][:, 1]
        ok = np.isfinite(p) & np.isfinite(g)
        diff = p[ok] - g[ok]
        out[f"{q}_mae"] = float(np.abs(diff).mean())
        out[f"{q}_bias"] = float(diff.mean())
    out["n_slices"] = int(cat["dice"].shape[0])
    out["n_cases"] = out_cases
    out["s_per_case"] = float(np.mean(seconds)) if seconds else float("nan")
    return out


def _raw_fit(segment_case, case, method, seed, opts):
    """Fixed-K fit (presence off) whether or not ``segment`` applies presence itself."""
    try:
        return segment_case(case, roi="gt", method=method, seed=seed, presence=None, **opts)
    except TypeError:
        return segment_case(case, roi="gt", method=method, seed=seed, **opts)


def run(args) -> tuple[str, dict]:
    from napari_gmmseg.clinical import clinical_labels
    from napari_gmmseg.presence import PresenceRule, apply_presence
    from napari_gmmseg.segment import segment_case

    presence_variants = {
        "fixed K (paper)": PresenceRule(rule="none"),
        "presence + gate (default)": PresenceRule(),
        "presence only": PresenceRule(scar_gate_n_sd=None),
        "gate only": PresenceRule(rule="weight", min_weight=0.0),
    }
    study = {
        "contrast-only (3 SD)": PresenceRule(
            rule="contrast", scar_threshold=3.0, scar_gate_n_sd=None
        ),
        "weight-only (2 %)": PresenceRule(rule="weight", scar_gate_n_sd=None),
        "presence edema+scar": PresenceRule(optional=("edema", "scar")),
    }
    if args.study:
        presence_variants.update(study)
    methods = [m for m in args.methods.split(",") if m]
    # Warm-up (imports, first-call overheads) so the first case's time is not inflated.
    from napari_gmmseg.phantom import make_case

    for method in methods:
        _raw_fit(segment_case, make_case(0, n_slices=1, size=64), method, args.seed, {})
    spatials = [s for s in args.spatial.split(",") if s]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for dset, cases in _cases(args):
        parts: dict[str, list] = defaultdict(list)
        secs: dict[str, list] = defaultdict(list)
        for case in cases:
            gt = case.labels
            spacing = case.spacing_mm
            default_myo_labels = None
            for method in methods:
                for spatial in spatials:
                    opts = {} if spatial == "none" else {"spatial": spatial}
                    t0 = time.perf_counter()
                    fit = _raw_fit(segment_case, case, method, args.seed, opts)
                    t_fit = time.perf_counter() - t0
                    base = f"{method}" + ("" if spatial == "none" else f" + {spatial}")
                    for pname, rule in presence_variants.items():
                        t1 = time.perf_counter()
                        f = apply_presence(fit, rule, channels=case.channels, images=case.images)
                        dt = time.perf_counter() - t1
                        key = f"{base} · {pname}"
                        parts[key].append(_slice_metrics(f.labels, gt, spacing))
                        secs[key].append(t_fit + dt)
                        if method == methods[0] and spatial == "none" and rule == PresenceRule():
                            default_myo_labels = f.labels
            clin = [("n-SD", n) for n in args.nsd] + [("FWHM", None)]
            for where, lab in (("GT myo", gt), (f"{methods[0]}+presence myo", default_myo_labels)):
                if lab is None:
                    continue
                for rule, n in clin:
                    t0 = time.perf_counter()
                    out = clinical_labels(
                        case.images,
                        lab,
                        case.channels,
                        scar_rule="nsd" if rule == "n-SD" else "fwhm",
                        n_sd=n or 5.0,
                    )
                    dt = time.perf_counter() - t0
                    name = f"{rule} {n}" if n else rule
                    key = f"clinical {name} (+T2 2-SD) · in {where}"
                    parts[key].append(_slice_metrics(out, gt, spacing))
                    secs[key].append(dt)
        results[dset] = {k: _summary(v, secs[k]) for k, v in parts.items()}
    return _markdown(results), results


def _markdown(results) -> str:
    cols = [
        ("Dice blood", "dice_blood", "{:.3f}"),
        ("Dice myo", "dice_myo", "{:.3f}"),
        ("Dice edema", "dice_edema", "{:.3f}"),
        ("Dice scar", "dice_scar", "{:.3f}"),
        ("no-scar ok", "no_scar_ok", "{:.0%}"),
        ("scar MAE", "scar_pct_mae", "{:.1f}"),
        ("scar bias", "scar_pct_bias", "{:+.1f}"),
        ("edema MAE", "edema_pct_mae", "{:.1f}"),
        ("edema bias", "edema_pct_bias", "{:+.1f}"),
        ("case scar MAE", "case_scar_pct_mae", "{:.1f}"),
        ("case scar bias", "case_scar_pct_bias", "{:+.1f}"),
        ("s/case", "s_per_case", "{:.2f}"),
    ]
    lines = []
    for dset, rows in results.items():
        any_row = next(iter(rows.values()))
        lines.append(
            f"\n### {dset}: {any_row['n_cases']} cases, {any_row['n_slices']} slices, "
            f"{any_row['n_scar_free']} without scar\n"
        )
        lines.append("| variant | " + " | ".join(c for c, _, _ in cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for name, r in rows.items():
            cells = [("–" if not np.isfinite(r[k]) else fmt.format(r[k])) for _, k, fmt in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "\nDice: per slice, as named by the method, mean over slices whose ground truth holds "
        "the class. Burden: % of LV myocardium per slice, method - ground truth "
        "(MAE and bias); case: the same per case. s/case: fit + presence (clinical: thresholds only); shared 2-core "
        "machine, timings are noisy."
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", default=os.environ.get("GMMSEG_REAL_DATA", str(DEFAULT_REAL)))
    p.add_argument("--phantom-cases", type=int, default=6)
    p.add_argument("--phantom-healthy", type=int, default=2)
    p.add_argument("--phantom-slices", type=int, default=5)
    p.add_argument("--methods", default="gmm,svgmm")
    p.add_argument("--spatial", default="none,mrf", help="engine spatial options to compare")
    p.add_argument("--nsd", type=float, nargs="*", default=[2, 3, 4, 5, 6])
    p.add_argument(
        "--study", action="store_true", help="also the contrast-only and weight-only rules"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the markdown table here")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    args = p.parse_args(argv)
    cmd = "python benchmarks/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    md, results = run(args)
    md = f"Command: `{cmd}` ({time.perf_counter() - t0:.0f} s)\n" + md
    print(md)
    if args.out:
        args.out.write_text(md + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
