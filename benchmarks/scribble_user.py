"""Simulated user of the scribble refinement (the protocol of interactive segmentation papers).

For every held-out case (automatic ROI, :func:`napari_gmmseg.autoroi.find_roi`) the robot
looks at the current result, finds the largest connected error region (per slice, in-plane,
one truth value: voxels whose label differs from the truth, where the truth is an LV tissue),
and draws one short stroke inside it (up to 11 pixels of the region's skeleton around its
deepest point, 3 pixels wide, clipped to the region) labelled with the truth there; then
Refine (:func:`napari_gmmseg.refine.refine` of the automatic result with every stroke so far,
refitting only the stroke's slice). Up to ``--steps`` strokes per case. The baseline paints
the same strokes into the automatic result without refit (what a user has with a brush); the
whole-region ceiling repaints, at every step, the entire largest error region of its own
result (the best any one-region-per-stroke correction can do).

Reported per case: scar Dice, scar ∪ edema Dice (as named) and scar burden error
(percentage points of LV myocardium) after 0, 1, 3, 5 strokes, for refit and paint-only,
and the seconds of every refine.

    nice -n 19 python benchmarks/scribble_user.py                       # all cases, 5-fold
    nice -n 19 python benchmarks/scribble_user.py --cases 3016,3017 --out scribbles.md
    python benchmarks/scribble_user.py --method tissue-net --model-dir bench_out/tn2500 \
        --folds benchmarks/folds_myops_dev.json --roi-dir bench_out/tn2500/autoroi --fit-cache F

Models: with ``--model-dir DIR`` the case's fold model ``DIR/fold<i>.*`` (``i`` the fold that
holds the case out, from 0) is passed as the method's ``model`` option; otherwise the method's
shipped model is used and the report says so (the shipped ``tissue-classifier`` was trained
on myops_dev 3001-3015: its numbers on those cases are in-sample).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_gmmseg.labels import CLASS_VALUES, EDEMA, SCAR
from napari_gmmseg.metrics import burden
from napari_gmmseg.refine import merge_refined, refine

REPORT_AT = (0, 1, 3, 5)
STROKE_HALF_LENGTH_PX = 5


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else float("nan")


def scores(pred: np.ndarray, gt: np.ndarray, spacing_mm) -> dict[str, float]:
    """Scar Dice, scar ∪ edema Dice and scar burden error (pp) of one label map."""
    lesion = (SCAR.value, EDEMA.value)
    return {
        "scar": _dice(pred == SCAR.value, gt == SCAR.value),
        "lesion": _dice(np.isin(pred, lesion), np.isin(gt, lesion)),
        "burden_err": burden(pred, spacing_mm)["scar_pct"] - burden(gt, spacing_mm)["scar_pct"],
    }


def largest_error_region(pred: np.ndarray, gt: np.ndarray) -> tuple[int, np.ndarray, int] | None:
    """``(z, (Y, X) bool region, truth value)`` of the largest in-plane connected error region.

    Error: the label differs from the truth and the truth is one of the four LV tissues.
    """
    from scipy import ndimage as ndi

    best = None
    for z in range(gt.shape[0]):
        wrong = (pred[z] != gt[z]) & np.isin(gt[z], CLASS_VALUES)
        if not wrong.any():
            continue
        for v in np.unique(gt[z][wrong]):
            comp, n = ndi.label(wrong & (gt[z] == v))
            if n == 0:
                continue
            sizes = np.bincount(comp.ravel())[1:]
            j = int(sizes.argmax())
            if best is None or sizes[j] > best[0]:
                best = (int(sizes[j]), z, comp == j + 1, int(v))
    return None if best is None else best[1:]


def stroke_in(region: np.ndarray) -> np.ndarray:
    """A short stroke inside ``region``: its skeleton near the deepest point, 3 px wide."""
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    depth = ndi.distance_transform_edt(region)
    cy, cx = np.unravel_index(int(depth.argmax()), depth.shape)
    yy, xx = np.indices(region.shape)
    near = (yy - cy) ** 2 + (xx - cx) ** 2 <= STROKE_HALF_LENGTH_PX**2
    line = skeletonize(region) & near
    line[cy, cx] = True
    return ndi.binary_dilation(line, structure=ndi.generate_binary_structure(2, 1)) & region


def _folds(path: str | None, case_ids: list[str]) -> dict[str, int]:
    """case id -> index of the fold that holds it out (-1: no folds given)."""
    if path is None:
        return dict.fromkeys(case_ids, -1)
    data = json.loads(Path(path).read_text())
    folds = data.get("folds", data) if isinstance(data, dict) else data
    if isinstance(folds, dict):
        folds = [folds[k] for k in sorted(folds, key=str)]
    out = {}
    for i, f in enumerate(folds):
        held = f if isinstance(f, list) else f.get("test") or f.get("held_out") or f.get("val")
        if held is None:
            raise SystemExit(f"{path}: fold {i} lists no held-out cases ('test'/'held_out')")
        out.update({str(c): i for c in held})
    return out


def _model_for(model_dir: str | None, fold: int) -> str | None:
    if model_dir is None:
        return None
    found = sorted(Path(model_dir).glob(f"fold{fold}.*"))
    if fold < 0 or not found:
        raise SystemExit(f"{model_dir}: no model fold{fold}.* for this case's fold")
    return str(found[0])


def automatic_roi(case, roi_dir: str | None) -> np.ndarray:
    """The case's automatic ROI: ``roi_dir/<case id>.npz`` (key ``roi``) when given, else
    :func:`napari_gmmseg.autoroi.find_roi`."""
    if roi_dir is None:
        from napari_gmmseg.autoroi import find_roi

        return find_roi(case.images, case.channels, case.spacing_mm).roi
    path = Path(roi_dir) / f"{case.case_id}.npz"
    if not path.exists():
        raise SystemExit(f"{path}: no cached automatic ROI for case {case.case_id}")
    roi = np.load(path)["roi"].astype(bool)
    if roi.shape != case.labels.shape:
        raise SystemExit(f"{path}: ROI of shape {roi.shape} is not the case's {case.labels.shape}")
    return roi


def base_fit(case, method: str, model: str | None, roi: np.ndarray, cache: str | None):
    """``(fit, seconds)``: the method's automatic result, read from / written to
    ``cache/<case id>.pkl`` when a cache folder is given (a local pickle: trusted input)."""
    import pickle

    from napari_gmmseg.methods import get_method
    from napari_gmmseg.segment import segment_case

    path = None if cache is None else Path(cache) / f"{case.case_id}.pkl"
    if path is not None and path.exists():
        with path.open("rb") as fh:
            return pickle.load(fh), float("nan")
    kw = {"method": method}
    if model is not None and get_method(method).accepts("model"):
        kw["model"] = model
    t0 = time.perf_counter()
    fit = segment_case(case, roi=roi, **kw)
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(fit, fh)
        tmp.replace(path)
    return fit, seconds


def run_case(case, base, steps: int, seg_s: float = float("nan")) -> dict:
    """The simulated user on one case from its automatic result ``base``: per-step scores
    for refit and paint-only, timings."""
    gt = case.labels
    strokes = np.zeros(gt.shape, dtype=np.int32)
    current = base
    refit = [scores(base.labels, gt, case.spacing_mm)]
    paint = [refit[0]]
    ceiling, whole = [refit[0]], np.array(base.labels, copy=True)
    seconds, cpu = [], []
    for _ in range(steps):
        found = largest_error_region(current.labels, gt)
        if found is None:
            break
        z, region, value = found
        strokes[z][stroke_in(region)] = value
        only_z = np.zeros_like(strokes)
        only_z[z] = strokes[z]
        t0, c0 = time.perf_counter(), time.process_time()
        current = merge_refined(current, refine(base, only_z, case))
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        refit.append(scores(current.labels, gt, case.spacing_mm))
        painted = np.where(strokes > 0, strokes, base.labels)
        paint.append(scores(painted, gt, case.spacing_mm))
        # ceiling: a user who fixes the whole largest error region of their own result
        found = largest_error_region(whole, gt)
        if found is not None:
            whole[found[0]][found[1]] = found[2]
        ceiling.append(scores(whole, gt, case.spacing_mm))
    while len(refit) <= steps:  # no error left: the result stays
        refit.append(refit[-1])
        paint.append(paint[-1])
        ceiling.append(ceiling[-1])
    return {
        "case": case.case_id,
        "segment_s": seg_s,
        "refit": refit,
        "paint": paint,
        "ceiling": ceiling,
        "refine_s": seconds,
        "refine_cpu_s": cpu,
    }


def _f(v: float, fmt: str = "{:.2f}") -> str:
    return "n/a" if not np.isfinite(v) else fmt.format(v)


def report(rows: list[dict], header: str) -> str:
    """Markdown: per case and mean, scores after 0/1/3/5 strokes, refit vs paint-only."""
    at = [a for a in REPORT_AT if a < len(rows[0]["refit"])]
    cols = " | ".join(f"{a}" for a in at)
    lines = [header, ""]
    for key, title, fmt in (
        ("scar", "scar Dice", "{:.2f}"),
        ("lesion", "scar ∪ edema Dice", "{:.2f}"),
        ("burden_err", "scar burden error (pp)", "{:+.1f}"),
    ):
        lines += [
            f"**{title}** after N strokes (refit / paint-only / whole-region ceiling)",
            "",
            f"| case | {cols} | s per refine: wall; CPU |",
            "|---|" + "---|" * len(at) + "---|",
        ]
        for r in [*rows, None]:
            if r is None:
                refit = [np.nanmean([x["refit"][a][key] for x in rows]) for a in at]
                paint = [np.nanmean([x["paint"][a][key] for x in rows]) for a in at]
                ceil = [np.nanmean([x["ceiling"][a][key] for x in rows]) for a in at]
                secs = [s for x in rows for s in x["refine_s"]]
                cpus = [s for x in rows for s in x["refine_cpu_s"]]
                name = f"mean ({len(rows)})"
            else:
                refit = [r["refit"][a][key] for a in at]
                paint = [r["paint"][a][key] for a in at]
                ceil = [r["ceiling"][a][key] for a in at]
                secs, cpus = r["refine_s"], r["refine_cpu_s"]
                name = r["case"]
            cells = " | ".join(
                _f(a, fmt) if i == 0 else f"{_f(a, fmt)} / {_f(b, fmt)} / {_f(c, fmt)}"
                for i, (a, b, c) in enumerate(zip(refit, paint, ceil, strict=True))
            )
            sec = f"{np.mean(secs):.2f} (max {np.max(secs):.2f})" if secs else "-"
            if cpus:
                sec += f"; CPU {np.mean(cpus):.2f} (max {np.max(cpus):.2f})"
            lines.append(f"| {name} | {cells} | {sec} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from napari_gmmseg.io import discover_cases
    from napari_gmmseg.methods import DEFAULT_METHOD

    repo = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=str(repo.parent / "shared/data/myops_dev"))
    p.add_argument("--method", default=DEFAULT_METHOD)
    default_folds = repo / "benchmarks" / "folds_myops_dev.json"
    p.add_argument(
        "--folds",
        default=str(default_folds) if default_folds.exists() else None,
        help="JSON of the 5 folds' held-out case ids (default: the committed split, if any)",
    )
    p.add_argument("--model-dir", default=None, help="per-fold models fold<i>.* (from 0)")
    p.add_argument(
        "--roi-dir", default=None, help="cached automatic ROIs <id>.npz (key roi); default: found"
    )
    p.add_argument(
        "--fit-cache",
        default=None,
        help="folder of automatic results <id>.pkl, reused/written (one folder per method+model)",
    )
    p.add_argument("--cases", default=None, help="comma-separated case ids (default: all)")
    p.add_argument("--steps", type=int, default=max(REPORT_AT))
    p.add_argument("--out", default=None, help="also write the Markdown report here")
    p.add_argument("--json", default=None, help="also write the per-case numbers here")
    args = p.parse_args(argv)
    if args.model_dir is not None and args.folds is None:
        raise SystemExit("--model-dir needs the folds (--folds FILE) to pick each case's model")
    for out in (args.out, args.json):
        if out and Path(out).exists():
            raise SystemExit(f"{out} exists: not overwritten")

    sources = discover_cases(args.dataset)
    if args.cases:
        wanted = {c.strip() for c in args.cases.split(",")}
        sources = [s for s in sources if s.case_id in wanted]
    fold_of = _folds(args.folds, [s.case_id for s in sources])
    rows = []
    for src in sources:
        case = src.load()
        fold = fold_of.get(case.case_id, -1)
        roi = automatic_roi(case, args.roi_dir)
        fit, seg_s = base_fit(
            case, args.method, _model_for(args.model_dir, fold), roi, args.fit_cache
        )
        row = run_case(case, fit, args.steps, seg_s)
        row["fold"] = fold
        rows.append(row)
        r0, r5 = row["refit"][0], row["refit"][-1]
        print(
            f"{case.case_id}: scar {r0['scar']:.2f} -> {r5['scar']:.2f}, "
            f"scar+edema {r0['lesion']:.2f} -> {r5['lesion']:.2f}, "
            f"refine {np.mean(row['refine_s'] or [0]):.2f} s",
            flush=True,
        )
    model = (
        f"per-fold models from {args.model_dir}"
        if args.model_dir
        else f"the shipped model of {args.method} (not per fold)"
    )
    header = (
        f"Simulated user, {args.method}, automatic ROI, {model}; folds: "
        f"{args.folds or 'none given'}; {len(rows)} cases of {args.dataset}; one stroke per "
        f"step in the largest error region, up to {args.steps} steps."
    )
    text = report(rows, header)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
