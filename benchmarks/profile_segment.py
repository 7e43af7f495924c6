"""Profile ``napari-gmmseg segment`` end to end, by phase, in fractions of CPU time.

Writes case (b) of ``bench_engine.py`` (one 512x512x15 phantom volume, 3 channels)
as NIfTI once, then runs the ``segment`` command in this process under
:mod:`cProfile` with a CPU-time clock (``time.process_time``: all threads of the
process; less sensitive to other processes on a shared machine than wall time),
and prints the CPU seconds and the share of the total of every phase:

- ``start + imports``: a fresh interpreter importing what the command imports
  (torch, scipy, nibabel, SimpleITK..., measured in a subprocess: the modules are
  imported before the profile so the other phases hold no import time);
- ``load``: reading and checking the three NIfTI files (``io.load_case_from_paths``);
- ``pack``: ``SliceBatch.from_volume`` (normalisation, packing);
- ``init``: the EM initialisation (``em.init.initial_parameters``);
- ``em``: the EM iterations (``mixture.fit_gmm`` minus ``init``);
- ``naming``: components -> tissues (``naming.name_components``);
- ``labels``: label building and scatter to the volume (``segment._build_labels``);
- ``write``: ``io.save_labels`` (NIfTI, gzip);
- ``other``: the rest (argument parsing, validation, small conversions).

Usage::

    python benchmarks/profile_segment.py --max-iter 100 [--out prof.out] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Phase -> (file suffix, function name) whose cumulative time it is.
PHASES: dict[str, tuple[str, str]] = {
    "load": ("io.py", "load_case_from_paths"),
    "pack": ("preprocess.py", "from_volume"),
    "init": ("em/init.py", "initial_parameters"),
    "fit_gmm": ("mixture.py", "fit_gmm"),
    "naming": ("naming.py", "name_components"),
    "labels": ("segment.py", "_build_labels"),
    "write": ("io.py", "save_labels"),
}

#: What ``segment`` imports on its way (imported before profiling, timed apart).
_IMPORTS = (
    "import napari_gmmseg.cli, napari_gmmseg.cli.segment, napari_gmmseg.io, "
    "napari_gmmseg.segment, napari_gmmseg.mixture, napari_gmmseg.naming, "
    "napari_gmmseg.presence, napari_gmmseg.preprocess, torch, nibabel"
)


def write_case_b(folder: Path) -> dict[str, Path]:
    """Case (b) as three NIfTI files in ``folder`` (made once, then reused)."""
    from napari_gmmseg import io
    from napari_gmmseg.phantom import make_case

    paths = {n: folder / f"b_{n}.nii.gz" for n in ("bSSFP", "LGE", "T2")}
    if all(p.exists() for p in paths.values()):
        return paths
    c = make_case(0, n_slices=15, size=512, upsample=1)
    for name in c.channels:
        io.save_volume(c.image(name), c.geometry, paths[name])
    return paths


def phase_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative CPU seconds of every phase."""
    out = dict.fromkeys(PHASES, 0.0)
    for (filename, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        for phase, (suffix, name) in PHASES.items():
            if func == name and filename.endswith(suffix):
                out[phase] += ct
    out["em"] = out.pop("fit_gmm") - out["init"]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "gmmseg_profile")
    p.add_argument("--out", type=Path, default=None, help="also save the raw profile here")
    p.add_argument("--top", type=int, default=0, help="print the N top functions by tottime")
    args = p.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    paths = write_case_b(args.data)

    # The imports of the command in a fresh interpreter (CPU of the child), then here.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", _IMPORTS], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    start_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    exec(_IMPORTS)

    out = args.data / f"labels_{os.getpid()}.nii.gz"
    cmd = ["segment", "--method", "gmm", "--bssfp", str(paths["bSSFP"]), "--lge", str(paths["LGE"])]
    cmd += ["--t2", str(paths["T2"]), "--init", "random", "--tol", "0"]
    cmd += ["--max-iter", str(args.max_iter), "--out", str(out), "--quiet"]
    prof = cProfile.Profile(time.process_time)
    w0 = time.perf_counter()
    prof.enable()
    from napari_gmmseg.cli import main as cli_main

    rc = cli_main(cmd)
    prof.disable()
    wall = time.perf_counter() - w0
    out.unlink(missing_ok=True)
    if rc:
        raise SystemExit(rc)
    stats = pstats.Stats(prof)
    if args.out:
        stats.dump_stats(args.out)
    phases = {"start + imports": start_s, **phase_seconds(stats)}
    phases["other"] = stats.total_tt + start_s - sum(phases.values())
    total = stats.total_tt + start_s
    print(f"segment, 512x512x15x3, --init random --tol 0 --max-iter {args.max_iter}")
    print(f"CPU {total:.2f} s (in-process wall {wall:.2f} s)")
    print("\n| phase | CPU s | share of CPU | share outside EM |\n|---|---|---|---|")
    outside = total - phases["em"]
    for name, sec in phases.items():
        rest = "" if name == "em" else f"{100 * sec / outside:.1f} %"
        print(f"| {name} | {sec:.2f} | {100 * sec / total:.1f} % | {rest} |")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
