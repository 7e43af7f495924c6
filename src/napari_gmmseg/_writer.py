"""napari writer: a Labels layer to NIfTI on the geometry of the case it came from.

The reader (and the widgets) put the source grid in
``layer.metadata["gmmseg_geometry"]``; the label map is then written with that
file's affine, qform/sform codes and header (:func:`napari_gmmseg.io.save_labels`).
Without it, the layer's ``scale`` is used as the voxel spacing on an
axis-aligned grid with origin 0, and a warning says so.

napari's save dialog already asks before replacing a file, so this writer
replaces an existing file (the core :func:`~napari_gmmseg.io.save_labels`
refuses unless ``overwrite=True``).  The write itself is atomic.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg._reader import GEOMETRY_KEY


def _geometry_from(meta: dict[str, Any], shape: tuple[int, ...]):
    from napari_gmmseg.io import Geometry

    geometry = (meta.get("metadata") or {}).get(GEOMETRY_KEY)
    if isinstance(geometry, dict):
        geometry = Geometry.from_dict(geometry)
    if isinstance(geometry, Geometry) and tuple(geometry.shape) == tuple(shape):
        return geometry, None
    scale = meta.get("scale")
    spacing = tuple(float(s) for s in scale[-3:]) if scale is not None else (1.0, 1.0, 1.0)
    spacing = (1.0,) * (3 - len(spacing)) + spacing
    why = (
        "its source geometry does not match the layer shape"
        if isinstance(geometry, Geometry)
        else "it carries no source geometry"
    )
    return Geometry.from_spacing(shape, spacing), why


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer as ``.nii.gz`` (or ``.nii``) on its source geometry.

    Parameters
    ----------
    path : str
        Target file; ``.nii.gz`` is appended when it has no NIfTI ending.
    data : array-like
        The layer data, ``(Z, Y, X)`` (a 2-D layer is written as one slice).
    meta : dict
        Layer attributes from napari (``metadata``, ``scale``, ``name``, ...).

    Returns
    -------
    list of str
        The written path.
    """
    from napari_gmmseg.io import save_labels

    target = Path(path)
    if not target.name.lower().endswith((".nii.gz", ".nii")):
        target = target.with_name(target.name + ".nii.gz")
    labels = np.asarray(data)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3:
        raise ValueError(f"{target}: can only write 2-D or 3-D label layers, got {labels.shape}")
    geometry, why = _geometry_from(meta, labels.shape)
    if why is not None:
        warnings.warn(
            f"{target}: layer {meta.get('name', '?')!r}: {why}; written on an axis-aligned grid "
            f"with spacing {geometry.spacing_mm} mm (from the layer scale) and origin 0",
            stacklevel=2,
        )
    save_labels(labels, geometry, target, overwrite=True)
    return [str(target)]
