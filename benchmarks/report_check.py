"""Check the AHA report on the real MyoPS masks: sums, septum next to the RV, transmurality range.

For every case of a MyoPS-layout dataset (default ``../shared/data/myops_dev``) the
manual mask is reported and checked:

* the per-segment mL of myocardium, scar and edema add up to the case totals (within 2 %);
* the LV myocardium next to the RV blood pool (within the contact distance, 3 mm) falls in
  the septal segments 2, 3, 8, 9, 14 (share printed; every case must reach ``--min-septal``);
* every chord's transmurality and every segment's mean/max lie in 0-100 %;
* the orientation agrees with the scanner geometry: the apex end found from the LV area
  is the one the slice axis points to in world (RAS) coordinates (the apex points left,
  anterior, inferior), segment 1 (anterior) points anterior-superior in the world
  (the handedness check: a mirrored frame would put it inferior) and the septum points
  to the patient's right (where the RV is).  Nothing is fitted to these cases.

Usage (one command, ~10 s)::

    python benchmarks/report_check.py [DATASET] [--save-case 3001 --docs docs]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_gmmseg.io import discover_cases, read_labels  # noqa: E402
from napari_gmmseg.labels import RV  # noqa: E402
from napari_gmmseg.report import SEPTAL_SEGMENTS, compute_report  # noqa: E402
from napari_gmmseg.report.orientation import (  # noqa: E402
    APEX_RAS,
    CONTACT_MM,
    MYOCARDIUM_VALUES,
    apex_at_last,
)

ANT_SUP_RAS = np.array([0.0, 1.0, 1.0]) / np.sqrt(2.0)
RIGHT_RAS = np.array([1.0, 0.0, 0.0])


def rv_adjacent(labels: np.ndarray, spacing_mm) -> np.ndarray:
    """Myocardium voxels within CONTACT_MM of the RV blood pool, ``(Z, Y, X)`` bool."""
    from scipy.ndimage import distance_transform_edt

    out = np.zeros(labels.shape, dtype=bool)
    myo = np.isin(labels, MYOCARDIUM_VALUES)
    for z in range(labels.shape[0]):
        rv = labels[z] == RV.value
        if rv.any():
            d = distance_transform_edt(~rv, sampling=spacing_mm[1:])
            out[z] = myo[z] & (d <= CONTACT_MM)
    return out


def world_dir(angle_aha: float, hand: int, affine: np.ndarray) -> np.ndarray:
    """Unit world vector of an AHA-frame angle in the slice plane."""
    raw = hand * angle_aha
    a = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    v = a[:, 0] * np.cos(raw) + a[:, 1] * np.sin(raw)
    return v / np.linalg.norm(v)


def check_case(path: Path) -> dict:
    labels, geo = read_labels(path, with_geometry=True)
    rep = compute_report(labels, geo.spacing_mm, geo.affine)
    seg = rep.column
    tot = rep.totals
    sums = {
        q: abs(np.nansum(seg(f"{q}_ml")) - tot[f"{q}_ml"]) / max(tot[f"{q}_ml"], 1e-9) * 100
        for q in ("myocardium", "scar", "edema")
    }
    adj = rv_adjacent(labels, geo.spacing_mm)
    septal = np.isin(rep.segments_zyx[adj], SEPTAL_SEGMENTS).mean() * 100 if adj.any() else np.nan
    tm = rep.chords.scar_pct[np.isfinite(rep.chords.scar_pct)]
    seg_tm = np.concatenate([seg("scar_transmurality_pct"), seg("scar_transmurality_max_pct")])
    seg_tm = seg_tm[np.isfinite(seg_tm)]
    ak = geo.affine[:3, 2] / np.linalg.norm(geo.affine[:3, 2])
    world_apex_last = bool(ak @ APEX_RAS > 0)
    ant = np.mean(
        [
            world_dir(f.anchor_rad - np.pi / 2, rep.hand, geo.affine) @ ANT_SUP_RAS
            for f in rep.frames
        ]
    )
    sep = np.mean([world_dir(f.anchor_rad, rep.hand, geo.affine) @ RIGHT_RAS for f in rep.frames])
    return {
        "sum_err_pct": max(sums.values()),
        "septal_pct": septal,
        "tm_min": float(min(tm.min(), seg_tm.min())) if tm.size else 0.0,
        "tm_max": float(max(tm.max(), seg_tm.max())) if tm.size else 0.0,
        "apex_agrees": rep.apex_last == world_apex_last,
        "area_agrees": apex_at_last(labels, "auto", None)[0] == world_apex_last,
        "seg1_ant_sup": ant,
        "septum_right": sep,
        "n_slices": len(rep.frames),
        "sources": sorted({f.source for f in rep.frames}),
        "rep": rep,
        "labels": labels,
        "geometry": geo,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", nargs="?", default=str(ROOT.parent / "shared/data/myops_dev"))
    p.add_argument("--min-septal", type=float, default=80.0, help="%% required per case")
    p.add_argument("--save-case", default=None, help="case id whose bullseye goes to --docs")
    p.add_argument("--docs", default=str(ROOT / "docs"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    sources = [s for s in discover_cases(args.dataset) if s.mask is not None]
    hdr = "case  slices  sum err %  RV-adjacent myo in septal %  transmurality min-max %  area rule=world  seg1.ant-sup  septum.right"
    print(hdr)
    ok = True
    results = {}
    for s in sources:
        r = check_case(Path(s.mask))
        results[s.case_id] = r
        good = (
            r["sum_err_pct"] <= 2.0
            and (not np.isfinite(r["septal_pct"]) or r["septal_pct"] >= args.min_septal)
            and r["tm_min"] >= 0.0
            and r["tm_max"] <= 100.0
        )
        ok &= good
        print(
            f"{s.case_id:>5} {r['n_slices']:>6} {r['sum_err_pct']:>10.2e} {r['septal_pct']:>28.1f} "
            f"{r['tm_min']:>12.1f}-{r['tm_max']:<5.1f}      {r['area_agrees']!s:>11} "
            f"{r['seg1_ant_sup']:>13.2f} {r['septum_right']:>13.2f}  {'ok' if good else 'FAIL'}"
        )
    sep = np.array([r["septal_pct"] for r in results.values()])
    print(
        f"\n{len(results)} cases, {time.perf_counter() - t0:.1f} s: max sum error "
        f"{max(r['sum_err_pct'] for r in results.values()):.1e} %, RV-adjacent myocardium in "
        f"septal segments {np.nanmean(sep):.1f} % mean (min {np.nanmin(sep):.1f} %), the LV+RV "
        f"area rule agrees with the world axis in {sum(r['area_agrees'] for r in results.values())}/"
        f"{len(results)}, segment 1 points anterior-superior in "
        f"{sum(r['seg1_ant_sup'] > 0 for r in results.values())}/{len(results)}, the septum "
        f"to the patient's right in {sum(r['septum_right'] > 0 for r in results.values())}/"
        f"{len(results)}: {'all checks pass' if ok else 'SOME CHECKS FAIL'}"
    )
    if args.save_case:
        save_docs(args.save_case, results[args.save_case], Path(args.docs))
    return 0 if ok else 1


def save_docs(case_id: str, r: dict, docs: Path) -> None:
    """Write docs/bullseye_real.png for one case (manual mask)."""
    from napari_gmmseg.report.figures import bullseye_figure

    fig = bullseye_figure([(f"MyoPS case {case_id}, manual mask", r["rep"])])
    fig.savefig(docs / "bullseye_real.png", dpi=90)
    print(f"wrote {docs / 'bullseye_real.png'}")


if __name__ == "__main__":
    sys.exit(main())
