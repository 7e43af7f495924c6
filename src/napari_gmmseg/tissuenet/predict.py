"""Class probabilities of a volume from the tissue network ensemble, on the scan's own grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_gmmseg.tissuenet.crops import crop_geometry, from_crops, to_crops
from napari_gmmseg.tissuenet.model import TissueNetEnsemble, network_inputs

__all__ = ["FLIPS", "predict_members"]

#: Test-time views: identity and the three flips of the crop (each undone on the output).
FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


def predict_members(
    ensemble: TissueNetEnsemble,
    images: np.ndarray,
    roi: np.ndarray,
    channels: Sequence[str],
    spacing_mm: Sequence[float],
    *,
    flips: bool = True,
    device: Any = "cpu",
) -> np.ndarray:
    """Softmax of every member (averaged over its test-time views) on the native grid.

    Parameters
    ----------
    ensemble : TissueNetEnsemble
    images : numpy.ndarray
        ``(Z, Y, X, C)`` intensities named by ``channels``.
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool ROI.
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size.
    flips : bool
        Average each member over :data:`FLIPS` (else the identity view only).

    Returns
    -------
    numpy.ndarray
        ``(E, Z, 5, Y, X)`` float32 probabilities of each member (0 on slices without ROI).
    """
    import torch

    roi = np.asarray(roi, dtype=bool)
    geo = crop_geometry(roi, spacing_mm)
    nets = ensemble.networks(device)
    out = np.zeros((len(nets), roi.shape[0], 5, *roi.shape[1:]), dtype=np.float32)
    views = FLIPS if flips else FLIPS[:1]
    if geo.slices.size == 0:
        return out
    x = torch.from_numpy(network_inputs(images, roi, channels)[geo.slices]).to(device)
    theta = torch.as_tensor(geo.theta(), device=device)
    crops = to_crops(x, theta, geo.size)
    crops[:, 3] = (crops[:, 3] > 0.5).float()
    with torch.inference_mode():
        for e, net in enumerate(nets):
            acc = torch.zeros(len(geo.slices), 5, geo.size, geo.size, device=device)
            for dims in views:
                xin = torch.flip(crops, dims) if dims else crops
                p = torch.softmax(net(xin), 1)
                acc += torch.flip(p, dims) if dims else p
            out[e][geo.slices] = from_crops(acc / len(views), geo).cpu().numpy()
    return out
