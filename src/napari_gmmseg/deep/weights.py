"""Trained deep models on disk: one file with weights, architecture, channels, normalisation, mu_data.

The file is a plain ``torch.save`` dictionary of tensors, strings, numbers and
lists, so it loads with ``torch.load(path, weights_only=True)`` (no pickled
code)::

    {
      "format": "napari-gmmseg-deep", "version": 1,
      "method": "deepsvg-mu", "n_classes": 4,
      "network": {"features": [16, 32, 64, 128], "num_res_units": 0, ...},
      "channels": ["bSSFP", "LGE", "T2"],
      "normalize": "roi",                   # SliceBatch normalisation used in training
      "mu_data": tensor (K, M) or None,     # class means of the penalty, channel order above
      "lam": 1.0,
      "state_dict": {name: tensor, ...},
      "training": {"epochs": ..., "seed": ..., "cases": [...], "loss_history": [...], ...}
    }
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_gmmseg.errors import ModelError, OutputExistsError

__all__ = ["FORMAT", "VERSION", "DeepModel", "load_model", "save_model"]

FORMAT = "napari-gmmseg-deep"
VERSION = 1


@dataclass
class DeepModel:
    """A trained network (Algorithm 4) and everything needed to apply it.

    Attributes
    ----------
    state_dict : dict of str to torch.Tensor
        Network weights.
    network : NetworkConfig
        Architecture.
    n_classes : int
        Output components ``K``.
    channels : tuple of str
        Input channel order.
    method : str
        Loss the network was trained with (``deepg``, ``deepsvg``, ``deepsvg-mu``).
    normalize : str
        :class:`~napari_gmmseg.preprocess.SliceBatch` normalisation of the inputs.
    mu_data : torch.Tensor or None
        ``(K, M)`` class means of the penalty (channel order of :attr:`channels`).
    lam : float
        Weight of the penalty.
    training : dict
        Provenance (epochs, seed, cases, loss history...).
    """

    state_dict: dict
    network: Any
    n_classes: int
    channels: tuple[str, ...]
    method: str = "deepsvg-mu"
    normalize: str = "roi"
    mu_data: Any = None
    lam: float = 1.0
    training: dict = field(default_factory=dict)

    def build(self, device: Any = "cpu") -> Any:
        """The network with these weights, in eval mode on ``device``."""
        from napari_gmmseg.deep.networks import build_network

        net = build_network(len(self.channels), self.n_classes, self.network)
        try:
            net.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"weights do not fit the stored architecture: {exc}") from exc
        return net.to(device).eval()

    def to_dict(self) -> dict[str, Any]:
        """The on-disk dictionary (weights_only-loadable)."""
        import torch

        return {
            "format": FORMAT,
            "version": VERSION,
            "method": str(self.method),
            "n_classes": int(self.n_classes),
            "network": self.network.to_dict(),
            "channels": [str(c) for c in self.channels],
            "normalize": str(self.normalize),
            "mu_data": None
            if self.mu_data is None
            else torch.as_tensor(self.mu_data, dtype=torch.float32).detach().cpu().clone(),
            "lam": float(self.lam),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict.items()},
            "training": _plain(self.training),
        }


def _plain(obj: Any) -> Any:
    """Convert numpy scalars/arrays and tuples to plain Python types for weights_only files."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_model(model: DeepModel, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a model file atomically (temporary file + ``os.replace``).

    Parameters
    ----------
    model : DeepModel
    path : path-like
        Destination (conventionally ``*.pt``).
    overwrite : bool, default False
        Replace an existing file.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    import torch

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(model.to_dict(), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_model(path: str | os.PathLike) -> DeepModel:
    """Read a model file written by :func:`save_model` (``torch.load(weights_only=True)``).

    Raises
    ------
    ModelError
        Missing, unreadable or not a napari-gmmseg model file.
    """
    import torch

    from napari_gmmseg.deep.networks import NetworkConfig

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / foreign pickle
        raise ModelError(f"cannot read model file {path}: {exc}") from exc
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ModelError(f"{path} is not a napari-gmmseg deep model file")
    if int(d.get("version", 0)) > VERSION:
        raise ModelError(
            f"{path} has model format version {d.get('version')}; this napari-gmmseg reads "
            f"up to {VERSION}"
        )
    try:
        return DeepModel(
            state_dict=dict(d["state_dict"]),
            network=NetworkConfig.from_dict(dict(d["network"])),
            n_classes=int(d["n_classes"]),
            channels=tuple(d["channels"]),
            method=str(d.get("method", "deepsvg")),
            normalize=str(d.get("normalize", "roi")),
            mu_data=d.get("mu_data"),
            lam=float(d.get("lam", 1.0)),
            training=dict(d.get("training", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path} is an incomplete model file: {exc}") from exc
