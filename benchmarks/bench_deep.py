"""Benchmarks of the deep mixture models (deepG, deepSVG, deepSVG_mu).

Two sub-commands (CPU timings on a shared machine are noisy: repeat on a quiet one):

``speed``  batched per-volume optimisation (Algorithm 3, all slices together) against
           the one-slice-at-a-time loop, in the same run, on the same slices and seeds;
           prints the ratio and seconds per slice for deepG and deepSVG::

               python benchmarks/bench_deep.py speed --dataset sample_data --epochs 30

``dice``   per-slice Dice with the paper's protocol (slices containing all four
           classes, ROI = ground-truth LV, Hungarian-matched labels per slice) for
           GMM, SVGMM, deepG, deepSVG and deepSVG_mu (mu_data from the *other* cases,
           10 slices, seed 42; deepSVG_mu is also scored without matching, its
           components being in class order), ``deepsvg-mu-trained`` (Algorithm 4:
           one network trained on the other cases, ``--train-epochs``, applied in one
           forward pass), plus seconds per slice::

               python benchmarks/bench_deep.py dice --dataset ../shared/data/myops_real
               python benchmarks/bench_deep.py dice --dataset sample_data

``--json FILE`` writes the raw per-slice numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_gmmseg.labels import CLASS_NAMES, CLASS_VALUES, LV_ROI_VALUES

ALL_METHODS = ("gmm", "svgmm", "deepg", "deepsvg", "deepsvg-mu", "deepsvg-mu-trained")


def _load(dataset):
    from napari_gmmseg.io import discover_cases

    return [src.load() for src in discover_cases(dataset)]


def _eval_roi(case):
    """GT LV ROI restricted to slices that contain all four classes (paper protocol)."""
    lab = case.labels
    roi = np.isin(lab, LV_ROI_VALUES)
    present = np.stack([(lab == v).any(axis=(1, 2)) for v in CLASS_VALUES], axis=1)
    keep = present.all(axis=1)
    roi[~keep] = False
    return roi, np.flatnonzero(keep)


def _fit(method, batch, args, mu=None, weights=None):
    from napari_gmmseg import mixture
    from napari_gmmseg.deep import fit_deep

    if method == "deepsvg-mu-trained":
        return fit_deep(batch, method="deepsvg-mu", weights=weights, device="cpu")

    if method == "gmm":
        return mixture.fit_gmm(batch, seed=args.seed, tol=args.tol)
    if method == "svgmm":
        return mixture.fit_svgmm(batch, seed=args.seed, tol=args.tol)
    return fit_deep(
        batch,
        method=method,
        seed=args.seed,
        lr=args.lr,
        network=args.network,
        max_epochs=args.max_epochs,
        min_epochs=args.min_epochs,
        tol=args.tol,
        mu_data=mu,
        lam=args.lam,
        device="cpu",
        num_threads=args.threads,
    )


def cmd_dice(args) -> dict:
    from napari_gmmseg import metrics
    from napari_gmmseg.deep import compute_mu_data
    from napari_gmmseg.errors import RoiError
    from napari_gmmseg.preprocess import SliceBatch

    cases = _load(args.dataset)
    if args.cases:
        wanted = args.cases.split(",")
        eval_ids = [c.case_id for c in cases if c.case_id in wanted]
    else:
        eval_ids = [c.case_id for c in cases]
    methods = args.methods.split(",")
    rows = {m: [] for m in methods}
    fixed: dict[str, list] = {}
    secs = {m: 0.0 for m in methods}
    train_secs: list[float] = []
    n_slices = 0
    for i, case in enumerate(cases):
        roi, zs = _eval_roi(case)
        if zs.size == 0 or case.case_id not in eval_ids:
            continue
        n_slices += zs.size
        batch = SliceBatch.from_volume(case.images, roi, channels=case.channels, device="cpu")
        mu = weights = None
        others = [c for j, c in enumerate(cases) if j != i] or cases
        if any(m.startswith("deepsvg-mu") for m in methods):
            try:
                mu = compute_mu_data(others, n_images=10, seed=42, channels=case.channels)
            except RoiError:  # no other case has a slice with all four classes
                print(
                    f"case {case.case_id}: mu_data from ALL cases (incl. this one)", file=sys.stderr
                )
                mu = compute_mu_data(cases, n_images=10, seed=42, channels=case.channels)
        if "deepsvg-mu-trained" in methods:
            # Algorithm 4, leave-one-case-out: train on the other cases (all LV-ROI slices).
            from napari_gmmseg.deep.training import train

            t = time.perf_counter()
            weights = Path(args.work) / f"model_without_{case.case_id}.pt"
            train(
                others,
                method="deepsvg-mu",
                mu_data=mu,
                network=args.network,
                epochs=args.train_epochs,
                lr=args.lr,
                seed=args.seed,
                device="cpu",
                out=weights,
                overwrite=True,
            )
            train_secs.append(time.perf_counter() - t)
        for m in methods:
            t = time.perf_counter()
            res = _fit(m, batch, args, mu if m == "deepsvg-mu" else None, weights)
            secs[m] += time.perf_counter() - t
            comp = batch.scatter(res.responsibilities.argmax(-1) + 1, fill=0, dtype=np.int64)
            comp = comp[zs]
            gt = case.labels[zs]
            matched, _ = metrics.match_slices(
                comp, gt, CLASS_VALUES, components=np.arange(1, 5), background=0
            )
            d = metrics.dice(matched, gt, CLASS_VALUES, per_slice=True)
            rows[m].extend(d.tolist())
            if m.startswith("deepsvg-mu"):
                lut = np.array([0, *CLASS_VALUES])
                d_fixed = metrics.dice(lut[comp], gt, CLASS_VALUES, per_slice=True)
                fixed.setdefault(m, []).extend(d_fixed.tolist())
            print(
                f"case {case.case_id} {m:11s} {np.nanmean(d, axis=0).round(3)} "
                f"({time.perf_counter() - t:.1f} s, {zs.size} slices, "
                f"iterations {res.n_iter.tolist()})",
                file=sys.stderr,
            )
    print(f"\nPer-slice Dice (mean ± std), {n_slices} slices with all four classes, ROI = GT LV")
    header = "| method | " + " | ".join(CLASS_NAMES) + " | mean | s/slice |"
    print(header)
    print("|" + "---|" * (len(CLASS_NAMES) + 3))
    table = {}
    if train_secs:
        print(f"(training, leave-one-case-out: {np.mean(train_secs):.0f} s per model)")
    for m in [*methods, *[f"{k} (no matching)" for k in fixed]]:
        d = np.asarray(
            fixed[m.split(" ")[0]] if m.endswith("(no matching)") else rows[m], dtype=float
        )
        per_slice_mean = np.nanmean(d, axis=1)
        cells = [f"{np.nanmean(d[:, k]):.2f} ± {np.nanstd(d[:, k]):.2f}" for k in range(4)]
        s = secs.get(m.split(" ")[0], float("nan")) / max(n_slices, 1)
        print(
            f"| {m} | "
            + " | ".join(cells)
            + f" | {per_slice_mean.mean():.2f} ± {per_slice_mean.std():.2f} | {s:.2f} |"
        )
        table[m] = {"dice": d.tolist(), "seconds_per_slice": s}
    return {
        "dataset": str(args.dataset),
        "n_slices": n_slices,
        "methods": table,
        "args": vars(args),
    }


def cmd_speed(args) -> dict:
    import torch

    from napari_gmmseg.deep.optimize import default_cpu_threads, optimize_slices, slice_seeds
    from napari_gmmseg.preprocess import SliceBatch

    case = _load(args.dataset)[args.case]
    roi = np.isin(case.labels, LV_ROI_VALUES)
    batch = SliceBatch.from_volume(case.images, roi, channels=case.channels, device="cpu")
    seeds = slice_seeds(args.seed, batch.slice_index)
    kw = dict(
        network=args.network,
        max_epochs=args.epochs,
        min_epochs=args.epochs,
        tol=0.0,
        lr=args.lr,
        num_threads=args.threads,
    )
    out = {"slices": batch.n_slices, "crop": list(batch.crop_shape), "epochs": args.epochs}
    print(
        f"case {case.case_id}: {batch.n_slices} slices, crop {batch.crop_shape}, "
        f"{args.epochs} epochs each, threads {args.threads or default_cpu_threads()} "
        f"(torch default {torch.get_num_threads()})"
    )
    # Warm-up (one-time kernel and vmap set-up costs are not per-epoch costs).
    warm = {**kw, "max_epochs": 2, "min_epochs": 2}
    one = slice(0, 1)
    optimize_slices(batch.x, batch.valid, batch.crops, batch.flat_index, seeds=seeds, **warm)
    optimize_slices(
        batch.x[one],
        batch.valid[one],
        batch.crops[one],
        batch.flat_index[one],
        seeds=seeds[:1],
        **warm,
    )
    for method in args.methods.split(","):
        if method not in ("deepg", "deepsvg"):
            continue
        t, c = time.perf_counter(), time.process_time()
        st = optimize_slices(
            batch.x, batch.valid, batch.crops, batch.flat_index, method=method, seeds=seeds, **kw
        )
        t_batched, c_batched = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        loop = []
        for s in range(batch.n_slices):
            sl = slice(s, s + 1)
            loop.append(
                optimize_slices(
                    batch.x[sl],
                    batch.valid[sl],
                    batch.crops[sl],
                    batch.flat_index[sl],
                    method=method,
                    seeds=seeds[s : s + 1],
                    **kw,
                )
            )
        t_loop, c_loop = time.perf_counter() - t, time.process_time() - c
        diff = max(float((st.resp[s : s + 1] - r.resp).abs().max()) for s, r in enumerate(loop))
        per = 1e3 / (batch.n_slices * args.epochs)  # ms per slice-epoch
        print(
            f"{method:8s} batched {t_batched:7.2f} s ({t_batched / batch.n_slices:.2f} s/slice)  "
            f"loop {t_loop:7.2f} s ({t_loop / batch.n_slices:.2f} s/slice)  "
            f"loop/batched = {t_loop / t_batched:.2f}x  max |resp diff| {diff:.1e}\n"
            f"{'':8s} CPU ms per slice-epoch: batched {c_batched * per:.1f}, loop "
            f"{c_loop * per:.1f}, loop/batched (CPU) = {c_loop / c_batched:.2f}x"
        )
        out[method] = {
            "batched_s": t_batched,
            "loop_s": t_loop,
            "batched_cpu_s": c_batched,
            "loop_cpu_s": c_loop,
            "max_resp_diff": diff,
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("dice", "speed"):
        q = sub.add_parser(name)
        q.add_argument("--dataset", type=Path, default=Path("sample_data"))
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--lr", type=float, default=1e-3)
        q.add_argument("--network", default="small")
        q.add_argument(
            "--threads", type=int, default=None, help="CPU threads (default: half the cores)"
        )
        q.add_argument("--json", type=Path)
    d = sub.choices["dice"]
    d.add_argument("--methods", default=",".join(ALL_METHODS))
    d.add_argument("--max-epochs", type=int, default=200)
    d.add_argument("--min-epochs", type=int, default=10)
    d.add_argument("--tol", type=float, default=1e-3)
    d.add_argument("--lam", type=float, default=1.0)
    d.add_argument("--train-epochs", type=int, default=50)
    d.add_argument("--work", default="/tmp", help="folder for the trained models")
    d.add_argument("--cases", default="", help="comma-separated case ids to score (default all)")
    s = sub.choices["speed"]
    s.add_argument("--methods", default="deepg,deepsvg")
    s.add_argument("--epochs", type=int, default=30)
    s.add_argument("--case", type=int, default=0)
    args = p.parse_args(argv)
    out = cmd_dice(args) if args.cmd == "dice" else cmd_speed(args)
    if args.json:
        args.json.write_text(json.dumps(out, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
