"""LV-centred crops at a fixed physical pixel size, and the way back to the scan's grid.

The network sees every slice at :data:`PIXEL_MM` (close to the native 0.7-0.9 mm of
short-axis CMR, so the round trip costs little partial volume), in a square crop centred on
the slice's ROI. Sampling is one batched :func:`torch.nn.functional.grid_sample` per
direction: crops are made by resampling the native slices (bilinear), and class
probabilities go back to the native grid the same way, so labels are decided on the scan's
own pixels (no label resampling).

A crop is described by an affine ``theta`` ``(S, 2, 3)`` in :func:`torch.nn.functional.affine_grid`
convention (normalised coordinates, ``align_corners=True``, ``(x, y)`` order): it maps the
crop's normalised coordinates to the native slice's. Augmentation composes with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CROP_PX", "PIXEL_MM", "CropGeometry", "crop_geometry", "from_crops", "to_crops"]

#: Pixel size of the network's input (mm).
PIXEL_MM = 0.8
#: Smallest crop side (pixels at :data:`PIXEL_MM`): 102 mm, an LV with margin.
CROP_PX = 128
#: Margin around the ROI's extent that a crop always keeps (mm).
MARGIN_MM = 12.0


@dataclass(frozen=True)
class CropGeometry:
    """Where the crops of a volume lie.

    Attributes
    ----------
    slices : numpy.ndarray
        ``(S,)`` int64 slice index of every crop (slices with ROI pixels).
    centre_px : numpy.ndarray
        ``(S, 2)`` float64 ``(y, x)`` crop centre on the native grid (pixels).
    native_shape : (int, int)
        ``(Y, X)`` of the native slices.
    scale : (float, float)
        Native pixels per crop pixel, ``(y, x)``.
    size : int
        Crop side (pixels).
    """

    slices: np.ndarray
    centre_px: np.ndarray
    native_shape: tuple[int, int]
    scale: tuple[float, float]
    size: int

    def theta(self) -> np.ndarray:
        """``(S, 2, 3)`` float32 affine from crop to native normalised coordinates."""
        (ny, nx), (sy, sx), h = self.native_shape, self.scale, self.size
        t = np.zeros((len(self.slices), 2, 3), dtype=np.float32)
        t[:, 0, 0] = (h - 1) * sx / max(nx - 1, 1)
        t[:, 1, 1] = (h - 1) * sy / max(ny - 1, 1)
        t[:, 0, 2] = 2 * self.centre_px[:, 1] / max(nx - 1, 1) - 1
        t[:, 1, 2] = 2 * self.centre_px[:, 0] / max(ny - 1, 1) - 1
        return t

    def inverse_theta(self) -> np.ndarray:
        """``(S, 2, 3)`` float32 affine from native to crop normalised coordinates."""
        t = self.theta().astype(np.float64)
        a, b = t[:, :, :2], t[:, :, 2:]
        inv = np.linalg.inv(a)
        return np.concatenate([inv, -inv @ b], axis=2).astype(np.float32)


def crop_geometry(
    roi: np.ndarray, spacing_mm: Sequence[float], *, pixel_mm: float = PIXEL_MM
) -> CropGeometry:
    """Crops centred on each slice's ROI, one common side for the volume.

    Parameters
    ----------
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool LV ROI.
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size.
    pixel_mm : float
        Crop pixel size.

    Returns
    -------
    CropGeometry
        The side is :data:`CROP_PX`, or larger (a multiple of 16) when a ROI needs it.
    """
    roi = np.asarray(roi, dtype=bool)
    slices = np.nonzero(roi.reshape(roi.shape[0], -1).any(1))[0].astype(np.int64)
    centres = np.zeros((len(slices), 2))
    extent_mm = 0.0
    py, px = float(spacing_mm[1]), float(spacing_mm[2])
    for i, z in enumerate(slices):
        ys, xs = np.nonzero(roi[z])
        lo, hi = np.array([ys.min(), xs.min()]), np.array([ys.max(), xs.max()])
        centres[i] = (lo + hi) / 2.0
        extent_mm = max(extent_mm, (hi[0] - lo[0] + 1) * py, (hi[1] - lo[1] + 1) * px)
    need = math.ceil((extent_mm + 2 * MARGIN_MM) / pixel_mm / 16.0) * 16
    size = max(CROP_PX, need)
    return CropGeometry(
        slices=slices,
        centre_px=centres,
        native_shape=(roi.shape[1], roi.shape[2]),
        scale=(pixel_mm / py, pixel_mm / px),
        size=int(size),
    )


def to_crops(native, theta, size: int, *, mode: str = "bilinear"):
    """Sample ``(S, C, Y, X)`` native slices into ``(S, C, size, size)`` crops.

    ``theta`` is ``(S, 2, 3)`` (:meth:`CropGeometry.theta`, possibly composed with an
    augmentation); pixels outside the native slice read 0. Tensors in, tensor out.
    """
    import torch.nn.functional as F

    grid = F.affine_grid(theta, [native.shape[0], 1, size, size], align_corners=True)
    return F.grid_sample(native, grid, mode=mode, padding_mode="zeros", align_corners=True)


def from_crops(crops, geometry: CropGeometry):
    """Bring ``(S, K, H, W)`` crop maps back to ``(S, K, Y, X)`` on the native grid (bilinear).

    Native pixels outside the crop read 0.
    """
    import torch
    import torch.nn.functional as F

    inv = torch.as_tensor(geometry.inverse_theta(), device=crops.device, dtype=crops.dtype)
    ny, nx = geometry.native_shape
    grid = F.affine_grid(inv, [crops.shape[0], 1, ny, nx], align_corners=True)
    return F.grid_sample(crops, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
