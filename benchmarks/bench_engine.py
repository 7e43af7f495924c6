"""EM engine benchmark: this engine vs scikit-learn (slice by slice) vs a vectorised-NumPy EM.

Same data, same initial parameters (seeded random responsibilities + one M-step,
per slice), the same number of iterations (tol = 0), diagonal covariances,
K = 4, the same covariance floor (1e-6 added, scikit-learn's ``reg_covar``):

- (a) 100 slices of 160x160 LV crops (phantom, every crop pixel fitted: the paper's setting),
- (b) one 512x512x15 volume with 3 channels (phantom, whole slices),
- (c) the real cases in ``../shared/data/myops_real`` (LV ROI from the ground truth),
- (cli) ``napari-gmmseg segment`` end to end on (b) written as NIfTI
  (``--init random --tol 0 --max-iter 100``: process start, loading and writing
  included) against scikit-learn's fits alone on (b).

Every engine runs in its own subprocess; "fit peak MB" is the growth of its resident
memory during the fit, over the process holding the input and the packed batch
(sampled every 2 ms). Wall and CPU seconds are both
reported: the CPU time is less sensitive to other processes on a shared machine.

Usage (prints a markdown table)::

    python benchmarks/bench_engine.py                      # everything
    python benchmarks/bench_engine.py --cases a,c --iters 100
    python benchmarks/bench_engine.py --real ../shared/data/myops_real --threads 2
    python benchmarks/bench_engine.py --floor --cases b     # the E-step floor: exp + log
    python benchmarks/bench_engine.py --cases b --engines engine,engine-torch  # E-step kernels
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

K = 4
REG = 1e-6
HERE = Path(__file__).resolve().parent
DEFAULT_REAL = HERE.parent.parent / "shared" / "data" / "myops_real"


# ----------------------------------------------------------------------------- data
def load_data(name: str, real: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(images (Z, Y, X, C), roi (Z, Y, X), info)`` for a benchmark case."""
    from napari_gmmseg.phantom import make_case

    if name == "a":
        cases = [make_case(seed, n_slices=10, size=160, upsample=1) for seed in range(10)]
        images = np.concatenate([c.images for c in cases])
        return images, np.ones(images.shape[:3], bool), {"what": "100 x 160x160 crops"}
    if name == "b":
        c = make_case(0, n_slices=15, size=512, upsample=1)
        return c.images, np.ones(c.images.shape[:3], bool), {"what": "512x512x15, 3 channels"}
    if name == "c":
        from napari_gmmseg.io import discover_cases

        imgs, rois = [], []
        for src in discover_cases(real):
            case = src.load()
            # Pad every case to the largest grid so slices stack (padding is outside the ROI).
            imgs.append(case.images)
            rois.append(case.roi())
        y = max(i.shape[1] for i in imgs)
        x = max(i.shape[2] for i in imgs)
        pad = [((0, 0), (0, y - i.shape[1]), (0, x - i.shape[2]), (0, 0)) for i in imgs]
        images = np.concatenate([np.pad(i, p) for i, p in zip(imgs, pad, strict=True)])
        roi = np.concatenate([np.pad(r, p[:3]) for r, p in zip(rois, pad, strict=True)])
        return images, roi, {"what": f"{len(imgs)} real cases, LV ROI"}
    raise SystemExit(f"unknown case {name!r}")


def initial_params(images: np.ndarray, roi: np.ndarray):
    """Packed batch (z-scored over the ROI) and seeded initial parameters (float64)."""
    import torch

    from napari_gmmseg.mixture import initial_parameters
    from napari_gmmseg.preprocess import SliceBatch

    batch = SliceBatch.from_volume(images, roi, device="cpu")
    s, _, m = batch.x.shape
    reg = torch.full((s, 1, m), REG, dtype=torch.float64)
    w, mu, cov = initial_parameters(
        batch.x, batch.valid, K, init="random", reg=reg, seed=0, reg_mode="add"
    )
    return batch, w, mu, cov


# ----------------------------------------------------------------------------- engines
def run_engine(batch, w, mu, cov, iters: int, estep_kernel: str = "auto") -> None:
    from napari_gmmseg.mixture import fit_gmm

    fit_gmm(
        batch, n_components=K, init_params=(w, mu, cov), tol=0, max_iter=iters,
        reg_covar=REG, reg_covar_relative=False, reg_mode="add", estep_kernel=estep_kernel,
    )  # fmt: skip


def run_engine_torch(batch, w, mu, cov, iters: int) -> None:
    """The engine with the torch E-step (``estep_kernel="torch"``) instead of the fused one."""
    run_engine(batch, w, mu, cov, iters, estep_kernel="torch")


def run_sklearn(batch, w, mu, cov, iters: int) -> None:
    from sklearn.mixture import GaussianMixture

    x, valid = batch.x.numpy(), batch.valid.numpy()
    for s in range(x.shape[0]):
        xs = x[s, valid[s]].astype(np.float64)
        gm = GaussianMixture(
            K, covariance_type="diag", weights_init=w[s].numpy(), means_init=mu[s].numpy(),
            precisions_init=1.0 / cov[s].numpy(), tol=0.0, max_iter=iters, reg_covar=REG,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(xs)
        gm.predict(xs)


def numpy_em(x: np.ndarray, w: np.ndarray, mu: np.ndarray, var: np.ndarray, iters: int):
    """Faithful vectorised EM (diag), float64, log-sum-exp E-step; returns labels."""
    n, m = x.shape
    x2 = x * x
    for _ in range(iters):
        prec = 1.0 / var
        log_prob = -0.5 * (
            m * np.log(2 * np.pi)
            + np.log(var).sum(1)
            + (mu**2 * prec).sum(1)
            - 2.0 * x @ (mu * prec).T
            + x2 @ prec.T
        )
        log_joint = log_prob + np.log(w)
        amax = log_joint.max(1, keepdims=True)
        lse = np.log(np.exp(log_joint - amax).sum(1, keepdims=True)) + amax
        resp = np.exp(log_joint - lse)
        nk = resp.sum(0) + 10 * np.finfo(float).eps
        w = nk / n
        mu = resp.T @ x / nk[:, None]
        var = resp.T @ x2 / nk[:, None] - mu**2 + REG
    return resp.argmax(1)


def run_numpy(batch, w, mu, cov, iters: int) -> None:
    x, valid = batch.x.numpy(), batch.valid.numpy()
    for s in range(x.shape[0]):
        numpy_em(
            x[s, valid[s]].astype(np.float64), w[s].numpy(), mu[s].numpy(), cov[s].numpy(), iters
        )


ENGINES = {
    "engine": run_engine,
    "engine-torch": run_engine_torch,
    "sklearn": run_sklearn,
    "numpy": run_numpy,
}


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakRss:
    """The peak resident set size in MiB while the block runs.

    On Linux the kernel's own high-water mark (``VmHWM``), reset on entry by writing ``5``
    to ``/proc/self/clear_refs``: exact, no sampling. Elsewhere a thread samples the RSS
    every 2 ms (it can miss a short peak).
    """

    def __init__(self) -> None:
        import threading

        self.peak = _rss_mb()
        self._exact = _reset_hwm()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> PeakRss:
        self._exact = _reset_hwm()
        if not self._exact:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._exact:
            self.peak = _status_mb("VmHWM:")
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0
    raise OSError(f"no {field} in /proc/self/status")


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
        return _status_mb("VmHWM:") <= _rss_mb() + 1.0
    except OSError:
        return False


def _cached(case: str, real: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    cache = Path(tempfile.gettempdir()) / f"gmmseg_bench_{case}.npz"
    if cache.exists():
        d = np.load(cache)
        return d["images"], d["roi"], {"what": str(d["what"])}
    images, roi, info = load_data(case, real)
    tmp = cache.with_suffix(f".{os.getpid()}.npz")
    np.savez(tmp, images=images, roi=roi, what=info["what"])
    os.replace(tmp, cache)
    return images, roi, info


def worker(engine: str, case: str, iters: int, real: Path, slices: int | None = None) -> dict:
    images, roi, info = _cached(case, real)
    if slices:
        images, roi = images[:slices], roi[:slices]
        info = {"what": f"{info['what']} (first {slices} slices)"}
    batch, w, mu, cov = initial_params(images, roi)
    n_pix = int(batch.valid.sum())
    input_mb = images.nbytes / 2**20
    del images, roi
    # One-time loading (numba's compiler and the cached fused kernel, torch's kernels) is
    # the library's, like its import: a fit on 8 slices of 16x16 first, its growth reported.
    before_warmup = _rss_mb()
    if engine.startswith("engine"):
        tiny = np.random.default_rng(0).normal(size=(8, 16, 16, mu.shape[-1]))
        ENGINES[engine](*initial_params(tiny, np.ones(tiny.shape[:3], bool)), 2)
    base = _rss_mb()
    with PeakRss() as rss:
        t0, c0 = time.perf_counter(), time.process_time()
        ENGINES[engine](batch, w, mu, cov, iters)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "engine": engine,
        "case": case,
        "what": info["what"],
        "pixels": n_pix,
        "iters": iters,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_extra_mb": rss.peak - base,
        "warmup_mb": base - before_warmup,
        "batch_mb": (batch.x.numel() * 4 + batch.valid.numel()) / 2**20,
        "input_mb": input_mb,
    }


def spawn(
    engine: str, case: str, iters: int, real: Path, threads: int | None, slices: int | None
) -> dict:
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    cmd = [sys.executable, __file__, "--worker", engine, "--cases", case, "--iters", str(iters)]
    cmd += ["--real", str(real)] + (["--slices", str(slices)] if slices else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


_CLI_SHIM = "import sys; from napari_gmmseg.cli import main; sys.exit(main(sys.argv[1:]))"


def run_cli(iters: int, threads: int | None) -> dict:
    """``napari-gmmseg segment`` end to end on (b), written as NIfTI first."""
    from napari_gmmseg import io
    from napari_gmmseg.phantom import make_case

    c = make_case(0, n_slices=15, size=512, upsample=1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name in c.channels:
            paths[name] = Path(tmp) / f"b_{name}.nii.gz"
            io.save_volume(c.image(name), c.geometry, paths[name])
        out = Path(tmp) / "labels.nii.gz"
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        script = Path(sys.executable).with_name("napari-gmmseg")
        cmd = [str(script)] if script.exists() else [sys.executable, "-c", _CLI_SHIM]
        cmd += ["segment", "--method", "gmm"]  # the EM engine (the default is a pipeline)
        cmd += [
            "--bssfp",
            str(paths["bSSFP"]),
            "--lge",
            str(paths["LGE"]),
            "--t2",
            str(paths["T2"]),
        ]
        cmd += ["--init", "random", "--tol", "0", "--max-iter", str(iters), "--out", str(out)]
        cmd += ["--quiet"]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        wall = time.perf_counter() - t0
    return {"engine": "cli", "case": "b", "wall_s": wall}


def floor_ms(case: str, real: Path, repeats: int = 10, tile: int = 1 << 16) -> dict:
    """The E-step's arithmetic floor on ``case``: ms per pass of one ``exp`` per pixel and
    component plus one ``log`` per pixel, float32, nothing else (best of ``repeats``).

    Two implementations, on 1 and 2 threads (the tiles shared out, each thread on its own
    buffers): torch's
    ``exp``/``log`` in place on a cache-resident tile of the torch E-step's size, and the
    fused kernel's own polynomial ``exp``/``log`` (:mod:`napari_gmmseg.em.fused`) in a
    compiled loop over blocks of its size. No E-step does less transcendental work; the
    floor is the faster of the two.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from napari_gmmseg.em.fused import exp_log_loop

    _, roi, _ = _cached(case, real)
    n_pix = int(roi.sum())
    n_tiles = -(-n_pix // tile)
    poly = exp_log_loop()

    def buffers(seed: int) -> tuple[torch.Tensor, ...]:
        """A thread's own tile: arguments and outputs of K exps and one log per pixel."""
        gen = torch.Generator().manual_seed(seed)
        a, e = -10.0 * torch.rand(K, tile, generator=gen), torch.empty(K, tile)
        s, t = torch.rand(tile, generator=gen) + 0.5, torch.empty(tile)
        return a, e, s, t

    per_thread = [buffers(seed) for seed in range(2)]
    per_thread_np = [tuple(b.numpy().ravel() for b in bufs) for bufs in per_thread]

    def torch_tiles(count: int, j: int) -> None:
        a, e, s, t = per_thread[j]
        for _ in range(count):
            torch.exp(a, out=e)
            torch.log(s, out=t)

    def poly_tiles(count: int, j: int) -> None:
        a, e, s, t = per_thread_np[j]
        for _ in range(count):
            poly(a, e, s, t)

    poly_tiles(1, 0)
    out = {"case": case, "pixels": n_pix}
    torch.set_num_threads(1)
    for threads in (1, 2):
        pool = ThreadPoolExecutor(threads)
        for name, fn in (("torch", torch_tiles), ("fused_poly", poly_tiles)):
            best = float("inf")
            share = [n_tiles // threads + (i < n_tiles % threads) for i in range(threads)]
            for _ in range(repeats):
                t0 = time.perf_counter()
                for f in [pool.submit(fn, c, i) for i, c in enumerate(share)]:
                    f.result()
                best = min(best, time.perf_counter() - t0)
            out[f"{name}_ms_{threads}_thread{'s' if threads > 1 else ''}"] = best * 1e3
        pool.shutdown()
    for threads in ("1_thread", "2_threads"):
        out[f"floor_ms_{threads}"] = min(
            out[f"torch_ms_{threads}"], out[f"fused_poly_ms_{threads}"]
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default="a,b,c,cli", help="comma list of a, b, c, cli")
    p.add_argument("--engines", default="engine,sklearn,numpy")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--real", type=Path, default=DEFAULT_REAL)
    p.add_argument("--threads", type=int, default=None, help="OMP/MKL threads of every run")
    p.add_argument("--slices", type=int, default=None, help="use only the first N slices")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--floor", action="store_true", help="print the E-step floor (exp + log) of --cases"
    )
    args = p.parse_args(argv)
    if args.floor:
        for case in [c for c in args.cases.split(",") if c in ("a", "b", "c")]:
            print(json.dumps(floor_ms(case, args.real)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.cases, args.iters, args.real, args.slices)))
        return
    cases = [c for c in args.cases.split(",") if c]
    engines = [e for e in args.engines.split(",") if e]
    results: dict[tuple[str, str], dict] = {}
    for case in cases:
        if case != "cli":
            _cached(case, args.real)  # generate once, before the timed subprocesses
        if case == "cli":
            continue
        if case == "c" and not (args.real / "train25").is_dir():
            print(f"(c) skipped: no real cases at {args.real}", file=sys.stderr)
            continue
        for eng in engines:
            r = spawn(eng, case, args.iters, args.real, args.threads, args.slices)
            results[(case, eng)] = r
            print(
                f"  {case} {eng}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s cpu", file=sys.stderr
            )
    print(f"\nthreads: {args.threads or 'default'}; iterations: {args.iters}; K = {K}; diag\n")
    print(
        "| case | engine | pixels | wall s | CPU s | M pixel-it/s (wall) | fit peak MB | "
        "input MB | sklearn/engine (wall) | sklearn/engine (CPU) | numpy/engine (wall) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (case, eng), r in results.items():
        mine = results.get((case, "engine"))
        skl = results.get((case, "sklearn"))
        npy = results.get((case, "numpy"))
        rate = r["pixels"] * r["iters"] / r["wall_s"] / 1e6
        ratios = ["", "", ""]
        if eng == "engine" and skl:
            ratios[0] = f"{skl['wall_s'] / mine['wall_s']:.1f}x"
            ratios[1] = f"{skl['cpu_s'] / mine['cpu_s']:.1f}x"
        if eng == "engine" and npy:
            ratios[2] = f"{npy['wall_s'] / mine['wall_s']:.1f}x"
        print(
            f"| {case}: {r['what']} | {eng} | {r['pixels']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
            f"{rate:.1f} | {r['peak_extra_mb']:.0f} | {r['input_mb']:.0f} | "
            + " | ".join(ratios)
            + " |"
        )
    if "cli" in cases:
        cli = run_cli(args.iters, args.threads)
        skl = results.get(("b", "sklearn"))
        ratio = f"{skl['wall_s'] / cli['wall_s']:.1f}x" if skl else "(run case b with sklearn)"
        print(
            f"\nCLI `napari-gmmseg segment` end to end on (b): {cli['wall_s']:.2f} s wall; "
            f"sklearn fits alone on (b) / CLI: {ratio}"
        )


if __name__ == "__main__":
    main()
