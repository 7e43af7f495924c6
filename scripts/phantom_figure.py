"""Figure of a phantom case: bSSFP, LGE, T2 and the MyoPS labels, one row per slice.

Usage::

    python scripts/phantom_figure.py [OUT.png] [--case 1001]

Writes docs/phantom.png by default (the bundled sample case 1001).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from napari_gmmseg.labels import COLOR_BY_VALUE, NAME_BY_VALUE
    from napari_gmmseg.phantom import make_sample_case

    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(repo / "docs" / "phantom.png"))
    ap.add_argument("--case", default="1001")
    args = ap.parse_args()

    case = make_sample_case(args.case)
    values = sorted(COLOR_BY_VALUE)
    index = np.zeros(case.labels.max() + 1, dtype=int)
    for i, v in enumerate(values, start=1):
        index[v] = i
    cmap = ListedColormap([(0, 0, 0, 1), *[COLOR_BY_VALUE[v] for v in values]])
    n = case.n_slices
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n), squeeze=False)
    for z in range(n):
        for c in range(len(case.channels)):
            vol = case.images[..., c]
            lo, hi = np.percentile(vol, [1, 99.5])
            axes[z, c].imshow(vol[z], cmap="gray", vmin=lo, vmax=hi)
        axes[z, 3].imshow(
            index[case.labels[z]], cmap=cmap, vmin=0, vmax=len(values), interpolation="nearest"
        )
    for c, title in enumerate([*case.channels, "labels"]):
        axes[0, c].set_title(title)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for z in range(n):
        axes[z, 0].set_ylabel(f"slice {z}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOR_BY_VALUE[v]) for v in values]
    fig.legend(
        handles,
        [NAME_BY_VALUE[v] for v in values],
        loc="lower center",
        ncol=len(values),
        fontsize=8,
    )
    fig.suptitle(f"phantom case {case.case_id} (base = slice 0, apex = slice {n - 1})")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
