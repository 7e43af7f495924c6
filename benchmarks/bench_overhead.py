"""Warm CPU time of the pieces of ``segment`` outside the EM fit, on case (b).

Case (b) of ``bench_engine.py`` (512x512x15, 3 channels): ``SliceBatch.from_volume``
on whole slices and on a random 30 % ROI, label building with and without soft maps,
and the naming; each called once to warm up, then timed (CPU ms, mean of ``--repeat``)::

    python benchmarks/bench_overhead.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    import torch

    from napari_gmmseg.naming import name_components
    from napari_gmmseg.phantom import make_case
    from napari_gmmseg.preprocess import SliceBatch
    from napari_gmmseg.segment import _build_labels

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    images = make_case(0, n_slices=15, size=512, upsample=1).images
    roi = np.ones(images.shape[:3], bool)
    sparse = np.random.default_rng(0).random(images.shape[:3]) < 0.3

    def cpu_ms(name, fn):
        out = fn()
        c = time.process_time()
        for _ in range(args.repeat):
            fn()
        print(f"| {name} | {(time.process_time() - c) / args.repeat * 1e3:.0f} |")
        return out

    print("| piece | CPU ms |\n|---|---|")
    b = cpu_ms(
        "from_volume, whole slices", lambda: SliceBatch.from_volume(images, roi, device="cpu")
    )
    cpu_ms("from_volume, 30 % ROI", lambda: SliceBatch.from_volume(images, sparse, device="cpu"))
    soft = torch.rand(b.x.shape[0], b.x.shape[1], 4, generator=torch.Generator().manual_seed(0))
    c2c = np.tile(np.arange(4), (b.n_slices, 1))
    done = np.ones(b.n_slices, bool)
    cpu_ms("labels", lambda: _build_labels(b, soft, c2c, done, False))
    cpu_ms("labels + soft maps", lambda: _build_labels(b, soft, c2c, done, True))
    means = np.random.default_rng(0).normal(size=(b.n_slices, 4, 3))
    cpu_ms("naming", lambda: name_components(means, ("bSSFP", "LGE", "T2")))


if __name__ == "__main__":
    main()
