"""The tissue classifier: a small MLP from pixel features to blood pool / myocardium / edema / scar.

:class:`TissueClassifier` holds numbers only (layer weights, the feature standardisation and
how it was trained) and is stored as a ``.npz`` file without pickles, so the package can ship
the one learned on the development set (``napari_gmmseg/data/tissue_classifier.npz``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg.classifier.features import FEATURE_NAMES
from napari_gmmseg.errors import ModelError, OutputExistsError
from napari_gmmseg.labels import CLASS_NAMES

__all__ = ["FORMAT", "TissueClassifier", "default_classifier", "load_classifier"]

#: Tag of the ``.npz`` format (``meta["format"]``).
FORMAT = "napari-gmmseg tissue classifier 1"

_DEFAULT_PATH = Path(__file__).resolve().parent.parent / "data" / "tissue_classifier.npz"


@dataclass(frozen=True)
class TissueClassifier:
    """An MLP over :data:`~napari_gmmseg.classifier.features.FEATURE_NAMES`.

    Attributes
    ----------
    weights : tuple of numpy.ndarray
        ``(out, in)`` float32 matrix of each linear layer (ReLU between layers).
    biases : tuple of numpy.ndarray
        ``(out,)`` float32 bias of each layer; the last layer has one output per class.
    feature_mean, feature_sd : numpy.ndarray
        ``(F,)`` standardisation of the features learned with the weights.
    meta : dict
        ``format``, ``features``, ``classes`` and how it was trained (``cases``, ``seed``,
        ``epochs``, ``hidden``, ``n_pixels``).
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    feature_mean: np.ndarray
    feature_sd: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_in = self.weights[0].shape[1] if self.weights else 0
        if not self.weights or len(self.weights) != len(self.biases):
            raise ModelError("a tissue classifier needs as many bias vectors as weight matrices")
        if n_in != len(FEATURE_NAMES) or self.feature_mean.shape != (n_in,):
            raise ModelError(
                f"the tissue classifier takes {n_in} features; this version computes "
                f"{len(FEATURE_NAMES)} ({', '.join(FEATURE_NAMES)})"
            )
        if self.weights[-1].shape[0] != len(CLASS_NAMES):
            raise ModelError(f"the tissue classifier must have {len(CLASS_NAMES)} outputs")

    def network(self, device: Any = "cpu"):
        """The classifier as a ``torch.nn.Sequential`` (standardisation folded in), no grad."""
        import torch

        layers: list[torch.nn.Module] = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i:
                layers.append(torch.nn.ReLU())
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            w_t, b_t = (
                torch.from_numpy(w.astype(np.float32)),
                torch.from_numpy(b.astype(np.float32)),
            )
            if i == 0:  # fold (x - mean) / sd into the first layer
                sd = torch.from_numpy(self.feature_sd.astype(np.float32))
                mean = torch.from_numpy(self.feature_mean.astype(np.float32))
                w_t, b_t = w_t / sd, b_t - (w_t / sd) @ mean
            with torch.no_grad():
                lin.weight.copy_(w_t)
                lin.bias.copy_(b_t)
            layers.append(lin)
        return torch.nn.Sequential(*layers).to(device).eval().requires_grad_(False)

    def predict_proba(self, features: np.ndarray, device: Any = "cpu", chunk: int = 262_144):
        """``(N, 4)`` float32 class probabilities (class order of ``labels.CLASS_NAMES``).

        ``features``: ``(N, F)`` from :func:`~napari_gmmseg.classifier.features.volume_features`.
        """
        import torch

        net = self.network(device)
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        out = [torch.softmax(net(x[i : i + chunk].to(device)), 1) for i in range(0, len(x), chunk)]
        return (torch.cat(out) if out else torch.zeros((0, 4))).cpu().numpy()

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the classifier as ``.npz`` (atomically; refuses to overwrite unless asked)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise OutputExistsError(
                f"{path} exists (pass overwrite=True, CLI --force, to replace it)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"w{i}": w for i, w in enumerate(self.weights)}
        arrays |= {f"b{i}": b for i, b in enumerate(self.biases)}
        meta = {**self.meta, "format": FORMAT, "features": list(FEATURE_NAMES)}
        meta["classes"] = list(CLASS_NAMES)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        try:
            np.savez(
                tmp,
                feature_mean=self.feature_mean,
                feature_sd=self.feature_sd,
                meta=np.array(json.dumps(meta)),
                **arrays,
            )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TissueClassifier:
        """Read a file written by :meth:`save`.

        Raises
        ------
        ModelError
            Missing, unreadable, foreign or made for other features.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                n = sum(1 for k in z.files if k.startswith("w"))
                weights = tuple(z[f"w{i}"] for i in range(n))
                biases = tuple(z[f"b{i}"] for i in range(n))
                mean, sd = z["feature_mean"], z["feature_sd"]
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read tissue classifier {path}: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise ModelError(f"{path} is not a napari-gmmseg tissue classifier file")
        if meta.get("features") != list(FEATURE_NAMES):
            raise ModelError(f"{path} was trained on other features than this version computes")
        try:
            return cls(weights, biases, mean, sd, meta)
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from exc


_DEFAULT: list[TissueClassifier] = []


def default_classifier() -> TissueClassifier:
    """The classifier shipped in ``napari_gmmseg/data/tissue_classifier.npz`` (myops_dev)."""
    if not _DEFAULT:
        _DEFAULT.append(TissueClassifier.load(_DEFAULT_PATH))
    return _DEFAULT[0]


def load_classifier(model: TissueClassifier | str | os.PathLike | None = None) -> TissueClassifier:
    """A :class:`TissueClassifier` from itself, a ``.npz`` path, or None (the shipped one)."""
    if model is None:
        return default_classifier()
    if isinstance(model, TissueClassifier):
        return model
    if isinstance(model, (str, os.PathLike)):
        return TissueClassifier.load(model)
    raise ModelError(f"a tissue classifier is a .npz file, got {type(model).__name__}")
