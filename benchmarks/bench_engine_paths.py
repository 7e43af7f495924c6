"""CPU time of the EM engine's paths on one problem (for before/after comparisons).

30 whole slices of 160x160 phantom crops (3 channels, K = 4, ``init="random"``,
``tol=0``, 50 iterations, one thread); prints the minimum process CPU seconds of three
runs for GMM diag, SVGMM diag, GMM full and GMM + MRF. CPU time rather than wall time:
it is less sensitive to other processes on a shared machine. Run it once per source
tree, alternating, e.g.::

    PYTHONPATH=src python benchmarks/bench_engine_paths.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from napari_gmmseg.mixture import fit_gmm, fit_svgmm
from napari_gmmseg.phantom import make_case
from napari_gmmseg.preprocess import SliceBatch


def main() -> None:
    torch.set_num_threads(1)
    cases = [make_case(s, n_slices=10, size=160, upsample=1) for s in range(3)]
    images = np.concatenate([c.images for c in cases])
    batch = SliceBatch.from_volume(images, np.ones(images.shape[:3], bool), device="cpu")
    paths = (
        ("gmm diag", fit_gmm, {}),
        ("svgmm diag", fit_svgmm, {}),
        ("gmm full", fit_gmm, {"covariance_type": "full"}),
        ("gmm mrf", fit_gmm, {"spatial": "mrf"}),
    )
    for name, fit, kw in paths:
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            fit(batch, init="random", tol=0.0, max_iter=50, seed=0, num_threads=1, **kw)
            best = min(best, time.process_time() - t0)
        print(f"{name}: {best:.3f} s CPU")


if __name__ == "__main__":
    main()
