"""The tissue network: a 2-D MONAI U-Net from LV-centred crops to five classes, and its ensemble.

Input channels (:data:`INPUT_CHANNELS`): bSSFP, LGE and T2, each z-scored over the slice's
ROI pixels and clipped to ``[-Z_CLIP, Z_CLIP]``, and the ROI itself (1 inside). Outputs
(:data:`OUTPUT_CLASSES`): LV blood pool, healthy myocardium, edema, scar, and ``outside``
(a ROI pixel that is not LV tissue: the automatic ROI is grown, a drawn ROI is loose).

The shipped model (``napari_gmmseg/data/tissue_net.npz``) is an ensemble: the five models of
the committed 5-fold split of the development set, each trained on four folds. Weights are
float16 arrays in a ``.npz`` without pickles, with a JSON ``meta`` (architecture, training
options, the cases each member saw) and a SHA-256 checked on load (:data:`SHIPPED_SHA256`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg.errors import ModelError, OutputExistsError

__all__ = [
    "FORMAT",
    "INPUT_CHANNELS",
    "OUTPUT_CLASSES",
    "NetConfig",
    "TissueNetEnsemble",
    "build_network",
    "load_ensemble",
    "network_inputs",
]

#: Tag of the ``.npz`` format (``meta["format"]``).
FORMAT = "napari-gmmseg tissue network 1"
#: What the network reads, in order.
INPUT_CHANNELS = ("bSSFP", "LGE", "T2", "ROI")
#: What it predicts, in order (the first four in the order of ``labels.CLASS_VALUES``).
OUTPUT_CLASSES = ("blood pool", "myocardium", "edema", "scar", "outside")
#: Normalised intensities are clipped to this many ROI SDs.
Z_CLIP = 8.0
#: The shipped ensemble and its checksum (the file is refused if it differs).
SHIPPED_PATH = Path(__file__).resolve().parent.parent / "data" / "tissue_net.npz"
SHIPPED_SHA256 = "8dcfba8987591851347cabd79afe77d1d0cf2c9a02d327e4f6ae232430a6c5e4"


@dataclass(frozen=True)
class NetConfig:
    """The U-Net's architecture (MONAI ``UNet``, 2-D, instance norm).

    Attributes
    ----------
    features : tuple of int
        Filters per level; every level but the last halves the resolution.
    num_res_units : int
        Residual units per level.
    """

    features: tuple[int, ...] = (16, 32, 64, 128, 256)
    num_res_units: int = 0


def build_network(config: NetConfig = NetConfig()):
    """A fresh MONAI U-Net for :data:`INPUT_CHANNELS` → :data:`OUTPUT_CLASSES` logits."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=len(INPUT_CHANNELS),
        out_channels=len(OUTPUT_CLASSES),
        channels=tuple(config.features),
        strides=(2,) * (len(config.features) - 1),
        num_res_units=config.num_res_units,
        norm="instance",
    )


def network_inputs(images: np.ndarray, roi: np.ndarray, channels: Sequence[str]) -> np.ndarray:
    """``(Z, 4, Y, X)`` float32 network input on the native grid (module docstring).

    Parameters
    ----------
    images : numpy.ndarray
        ``(Z, Y, X, C)`` intensities named by ``channels`` (bSSFP, LGE, T2 among them).
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool ROI; the z-scores are taken over each slice's ROI pixels.

    Raises
    ------
    ModelError
        A sequence the network reads is missing.
    """
    from napari_gmmseg.prior import normalise_zscore

    missing = [c for c in INPUT_CHANNELS[:3] if c not in channels]
    if missing:
        raise ModelError(
            f"the tissue network reads bSSFP, LGE and T2; missing: {', '.join(missing)}"
        )
    cols = [list(channels).index(c) for c in INPUT_CHANNELS[:3]]
    roi = np.asarray(roi, dtype=bool)
    z = normalise_zscore(np.asarray(images)[..., cols], roi)
    out = np.empty((roi.shape[0], 4, *roi.shape[1:]), dtype=np.float32)
    z = np.nan_to_num(z, nan=0.0, posinf=Z_CLIP, neginf=-Z_CLIP)  # only outside the ROI
    out[:, :3] = np.clip(np.moveaxis(z, -1, 1), -Z_CLIP, Z_CLIP)
    out[:, 3] = roi
    return out


@dataclass
class TissueNetEnsemble:
    """One or more trained members of the same architecture.

    Attributes
    ----------
    config : NetConfig
    states : list of dict
        Each member's ``state_dict`` as float32 numpy arrays.
    meta : dict
        ``format``, training options, ``members`` (the cases each saw), ``sha256``.
    """

    config: NetConfig
    states: list[dict[str, np.ndarray]]
    meta: dict[str, Any] = field(default_factory=dict)
    _nets: dict[str, list[Any]] = field(default_factory=dict, repr=False)

    def networks(self, device: Any = "cpu") -> list[Any]:
        """The members as ``torch.nn.Module`` in eval mode on ``device`` (built once)."""
        import torch

        key = str(device)
        if key not in self._nets:
            nets = []
            for state in self.states:
                net = build_network(self.config)
                net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
                nets.append(net.to(device).eval().requires_grad_(False))
            self._nets[key] = nets
        return self._nets[key]

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the ensemble as float16 ``.npz`` (atomic; refuses to overwrite unless asked)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists (use --force to replace it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            f"m{i}/{k}": v.astype(np.float16)
            for i, s in enumerate(self.states)
            for k, v in s.items()
        }
        meta = {**self.meta, "format": FORMAT, "config": asdict(self.config)}
        meta["n_members"] = len(self.states)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        try:
            np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, sha256: str | None = None) -> TissueNetEnsemble:
        """Read a file written by :meth:`save`; with ``sha256``, the file must match it.

        Raises
        ------
        ModelError
            Missing, unreadable, foreign, or a checksum that differs.
        """
        path = Path(path)
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read tissue network {path}: {exc.strerror}") from exc
        digest = hashlib.sha256(blob).hexdigest()
        if sha256 and digest != sha256:
            raise ModelError(f"{path} does not match its checksum (damaged or replaced file)")
        try:
            import io

            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                n = int(meta.get("n_members", 0))
                states: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
                for key in z.files:
                    if key.startswith("m") and "/" in key:
                        i, name = key[1:].split("/", 1)
                        states[int(i)][name] = z[key].astype(np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read tissue network {path}: {exc}") from exc
        if meta.get("format") != FORMAT or not states:
            raise ModelError(f"{path} is not a napari-gmmseg tissue network file")
        config = NetConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
        )
        return cls(config, states, {**meta, "sha256": digest})


_SHIPPED: list[TissueNetEnsemble] = []


def load_ensemble(model: TissueNetEnsemble | str | os.PathLike | None = None) -> TissueNetEnsemble:
    """An ensemble from itself, a ``.npz`` path, or None (the shipped one, checksum checked)."""
    if model is None:
        if not _SHIPPED:
            _SHIPPED.append(TissueNetEnsemble.load(SHIPPED_PATH, sha256=SHIPPED_SHA256 or None))
        return _SHIPPED[0]
    if isinstance(model, TissueNetEnsemble):
        return model
    if isinstance(model, (str, os.PathLike)):
        return TissueNetEnsemble.load(model)
    raise ModelError(f"a tissue network is a .npz file, got {type(model).__name__}")
