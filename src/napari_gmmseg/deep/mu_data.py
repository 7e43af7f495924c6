"""mu_data: class means of normalised intensities measured on labelled slices (deepSVG_mu).

As in the paper: pick ``n_images`` random labelled slices that contain all four
classes (blood pool, myocardium, edema, scar), normalise each slice the way the
models see it (:class:`~napari_gmmseg.preprocess.SliceBatch`: z-score over the LV
ROI per slice and channel), take the mean of every class on every slice and
average over the slices. The result is a ``(K, M)`` table in the JSON format of
the engine's prior table (:mod:`napari_gmmseg.naming`)::

    {"channels": ["bSSFP", "LGE", "T2"],
     "classes": ["LV blood pool", "myocardium", "edema", "scar"],
     "means": [[...M...], [...], [...], [...]],
     "source": {...provenance...}}
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg.errors import ModelError, OutputExistsError, RoiError
from napari_gmmseg.labels import CLASS_NAMES, CLASS_VALUES, LV_ROI_VALUES

__all__ = [
    "MuData",
    "compute_mu_data",
    "load_mu_data",
    "mu_data_array",
    "mu_from_pool",
    "slice_class_means",
]


@dataclass
class MuData:
    """A ``(K, M)`` table of class means in normalised units.

    Attributes
    ----------
    means : numpy.ndarray
        ``(K, M)`` float64, rows in :data:`napari_gmmseg.labels.CLASSES` order.
    channels : tuple of str
        Column order.
    classes : tuple of str
        Row names.
    source : dict
        Provenance: cases and slices used, seed.
    """

    means: np.ndarray
    channels: tuple[str, ...]
    classes: tuple[str, ...] = CLASS_NAMES
    source: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON dictionary (prior-table format plus ``source``)."""
        return {
            "channels": list(self.channels),
            "classes": list(self.classes),
            "means": np.asarray(self.means, dtype=float).round(6).tolist(),
            "source": self.source,
        }

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the JSON file atomically; refuses to overwrite unless asked."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists; pass overwrite=True (CLI: --force)")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_json(), fh, indent=2)
                fh.write("\n")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def reorder(self, channels: Sequence[str]) -> np.ndarray:
        """``(K, M)`` means with columns in the order of ``channels`` (names, case-insensitive)."""
        from napari_gmmseg.deep._cases import channel_order

        order = channel_order(self.channels, channels)
        if order is None:
            raise ModelError(
                f"mu_data channels {list(self.channels)} do not match the image channels "
                f"{list(channels)}"
            )
        return np.asarray(self.means, dtype=np.float64)[:, order]


def load_mu_data(path: str | os.PathLike) -> MuData:
    """Read a mu_data / prior-table JSON file.

    Raises
    ------
    ModelError
        Missing file, bad JSON, or a table that is not ``(K, M)`` with matching names.
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"mu_data file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read mu_data file {path}: {exc}") from exc
    try:
        means = np.asarray(d["means"], dtype=np.float64)
        channels = tuple(str(c) for c in d["channels"])
        classes = tuple(str(c) for c in d.get("classes", CLASS_NAMES))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: expected keys 'channels' and 'means' ({exc})") from exc
    if means.ndim != 2 or means.shape[1] != len(channels) or means.shape[0] != len(classes):
        raise ModelError(
            f"{path}: means of shape {means.shape} do not match {len(classes)} classes x "
            f"{len(channels)} channels"
        )
    if not np.all(np.isfinite(means)):
        raise ModelError(f"{path}: means contain NaN or Inf")
    return MuData(means, channels, classes, dict(d.get("source", {})))


def mu_data_array(mu_data: Any, channels: Sequence[str], n_classes: int) -> np.ndarray:
    """``(K, M)`` float64 array from a :class:`MuData`, a prior table, a JSON path or an array.

    Named tables are reordered to ``channels``; a bare array must already be ``(K, M)``
    in that order.
    """
    if isinstance(mu_data, (str, os.PathLike)):
        mu_data = load_mu_data(mu_data)
    if hasattr(mu_data, "means") and hasattr(mu_data, "channels"):
        if isinstance(mu_data, MuData):
            arr = mu_data.reorder(channels)
        else:  # e.g. naming.PriorTable
            arr = MuData(np.asarray(mu_data.means), tuple(mu_data.channels)).reorder(channels)
    else:
        if hasattr(mu_data, "detach"):
            mu_data = mu_data.detach().cpu().numpy()
        arr = np.asarray(mu_data, dtype=np.float64)
    if arr.shape != (int(n_classes), len(channels)):
        raise ModelError(
            f"mu_data has shape {arr.shape}, expected (K, M) = ({n_classes}, {len(channels)})"
        )
    if not np.all(np.isfinite(arr)):
        raise ModelError("mu_data contains NaN or Inf")
    return arr


def slice_class_means(case: Any, *, normalize: str = "roi") -> tuple[np.ndarray, np.ndarray]:
    """Per-slice class means of the normalised intensities of one labelled case.

    Parameters
    ----------
    case : napari_gmmseg.io.Case
        With ground-truth labels.
    normalize : str, default "roi"
        SliceBatch normalisation (the ROI is the ground-truth LV).

    Returns
    -------
    z : numpy.ndarray
        ``(S,)`` z-indices of the slices that contain all four classes.
    means : numpy.ndarray
        ``(S, K, M)`` class means on those slices.
    """
    from napari_gmmseg.preprocess import SliceBatch

    if case.labels is None:
        raise RoiError(f"case {case.case_id} has no ground-truth labels")
    roi = np.isin(case.labels, LV_ROI_VALUES)
    if not roi.any():
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4, case.images.shape[-1]))
    batch = SliceBatch.from_volume(
        case.images, roi, channels=case.channels, normalize=normalize, device="cpu"
    )
    x = batch.x.numpy().astype(np.float64)  # (S, N, M)
    valid = batch.volume_index >= 0
    lab = np.full(valid.shape, -1, dtype=np.int64)
    flat_labels = case.labels.reshape(-1)
    vals = flat_labels[batch.volume_index[valid]]
    class_values = np.asarray(CLASS_VALUES)
    order = np.argsort(class_values)
    pos = np.clip(np.searchsorted(class_values[order], vals), 0, len(order) - 1)
    hit = class_values[order][pos] == vals
    lab[valid] = np.where(hit, order[pos], -1)
    onehot = (lab[..., None] == np.arange(len(CLASS_VALUES))).astype(np.float64)  # (S, N, K)
    counts = onehot.sum(1)  # (S, K)
    keep = np.all(counts > 0, axis=1)
    sums = np.einsum("snk,snm->skm", onehot, x)
    means = sums[keep] / counts[keep][..., None]
    return batch.slice_index[keep], means


def compute_mu_data(
    cases: Any,
    *,
    n_images: int = 10,
    seed: int = 42,
    channels: Sequence[str] | None = None,
    normalize: str = "roi",
) -> MuData:
    """mu_data from ``n_images`` random labelled slices that contain all four classes.

    Parameters
    ----------
    cases : path-like, Case, CaseSource or iterable of them
        A labelled dataset (e.g. a MyoPS root) or cases.
    n_images : int, default 10
        Number of slices to average over (all of them, with a warning, when fewer
        qualify).
    seed : int, default 42
        Seed of the random choice of slices.
    channels : sequence of str, optional
        Channel order of the table (default: the first case's).
    normalize : str, default "roi"
        Normalisation (must match the models': SliceBatch's default).

    Returns
    -------
    MuData

    Raises
    ------
    RoiError
        No labelled slice contains all four classes.
    """
    from napari_gmmseg.deep._cases import iter_cases, reorder_channels

    if int(n_images) < 1:
        raise ModelError(f"n_images must be >= 1, got {n_images}")
    pool: list[tuple[str, int, np.ndarray]] = []
    for case in iter_cases(cases):
        if channels is None:
            channels = tuple(case.channels)
        images = reorder_channels(case.images, tuple(case.channels), tuple(channels), case.case_id)
        if images is not case.images:
            case = type(case)(
                images=images,
                channels=tuple(channels),
                spacing_mm=case.spacing_mm,
                labels=case.labels,
                case_id=case.case_id,
            )
        z, means = slice_class_means(case, normalize=normalize)
        pool.extend((str(case.case_id), int(zz), m) for zz, m in zip(z, means, strict=True))
    return mu_from_pool(pool, n_images=n_images, seed=seed, channels=channels, normalize=normalize)


def mu_from_pool(
    pool: list[tuple[str, int, np.ndarray]],
    *,
    n_images: int,
    seed: int,
    channels: Sequence[str],
    normalize: str = "roi",
) -> MuData:
    """Average the class means of ``n_images`` slices drawn (seeded) from ``pool``.

    ``pool`` holds ``(case_id, z, (K, M) means)`` of every eligible slice in a fixed
    order; fewer than ``n_images`` -> all of them, with a warning.
    """
    if not pool:
        raise RoiError(
            "no labelled slice contains all four classes (blood, myocardium, edema, scar)"
        )
    rng = np.random.default_rng(int(seed))
    if len(pool) < n_images:
        warnings.warn(
            f"only {len(pool)} labelled slices contain all four classes (asked for {n_images}); "
            "using all of them",
            stacklevel=3,
        )
        chosen = np.arange(len(pool))
    else:
        chosen = np.sort(rng.choice(len(pool), size=int(n_images), replace=False))
    means = np.mean([pool[i][2] for i in chosen], axis=0)
    source = {
        "n_images": len(chosen),
        "seed": int(seed),
        "normalize": normalize,
        "slices": [[pool[i][0], pool[i][1]] for i in chosen],
        "n_candidates": len(pool),
    }
    return MuData(means, tuple(channels), CLASS_NAMES, source)
