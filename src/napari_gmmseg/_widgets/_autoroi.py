"""The Segment dock's automatic ROI: an editable Labels layer and its QC (napari glue only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_gmmseg._widgets._common import (
    case_layer_name,
    case_of,
    layer_spacing,
    tissue_colormap,
)

#: Text of the ROI combo's entry that finds the ROI from the bSSFP layer.
AUTO_CHOICE = "automatic (from bSSFP)"
#: Name of the Labels layer holding the automatic ROI (500 / 200 / 600).
AUTO_LAYER_NAME = "auto ROI"
#: Metadata key marking that layer.
AUTO_KEY = "gmmseg_auto_roi"


def is_auto_layer(layer: Any) -> bool:
    """True for a Labels layer made by :func:`add_auto_layer` (maybe edited since)."""
    return layer is not None and bool(getattr(layer, "metadata", {}).get(AUTO_KEY))


def add_auto_layer(viewer: Any, images: np.ndarray, channels: tuple[str, ...], reference: Any):
    """Find the automatic ROI and add it as an editable Labels layer.

    Parameters
    ----------
    viewer : napari.Viewer
    images : numpy.ndarray
        ``(Z, Y, X, C)`` channel images.
    channels : tuple of str
        Channel names (one must be ``bSSFP``).
    reference : napari.layers.Image
        Layer whose scale / translate / rotate the new layer copies.

    Returns
    -------
    (napari.layers.Labels, napari_gmmseg.autoroi.AutoRoi)
    """
    from napari_gmmseg._reader import CASE_ID_KEY
    from napari_gmmseg.autoroi import find_roi

    auto = find_roi(images, channels, layer_spacing(reference))
    case = case_of(reference)
    layer = viewer.add_labels(
        auto.labels,
        name=case_layer_name(case, AUTO_LAYER_NAME),
        colormap=tissue_colormap(),
        scale=reference.scale,
        translate=reference.translate,
        rotate=reference.rotate,
        shear=reference.shear,
        opacity=0.4,
        metadata={AUTO_KEY: {"qc": [q.as_row() for q in auto.qc]}, CASE_ID_KEY: case},
    )
    return layer, auto


def roi_of_auto_layer(layer: Any, reference: Any) -> tuple[np.ndarray, list]:
    """The ROI (500 + 200 on slices passing QC) of the (edited) automatic ROI layer.

    Returns
    -------
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool.
    qc : list of napari_gmmseg.autoroi.SliceQC
    """
    from napari_gmmseg.autoroi import qc_roi

    data = np.asarray(layer.data)
    data = data[None] if data.ndim == 2 else data
    roi, qc = qc_roi(data, layer_spacing(reference))
    layer.metadata = {**layer.metadata, AUTO_KEY: {"qc": [q.as_row() for q in qc]}}
    return roi, qc
