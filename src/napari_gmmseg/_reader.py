"""napari reader: open a whole multi-sequence CMR case from one file or a case folder.

Opening any one sequence file of a case (e.g. ``myops_training_101_C0.nii.gz``)
or a folder holding one case loads every sequence found by name plus the mask
(also from the sibling ``train25_myops_gd`` folder of the MyoPS layout), via
:func:`napari_gmmseg.io.load_case`.  Opening a mask file alone (``*_gd*``)
gives just the Labels layer.

Layers: one Image layer per sequence, named ``bSSFP`` / ``LGE`` / ``T2`` (only
the first is visible at first, the others are a click away), ``scale`` = the
voxel spacing in mm, contrast limits at the 1st and 99.5th percentiles; and the
mask as a Labels layer named ``mask`` with the MyoPS class names (``features``)
and fixed colours (:mod:`napari_gmmseg.labels`).  Every layer's ``metadata``
carries the source grid under ``"gmmseg_geometry"`` (an
:class:`napari_gmmseg.io.Geometry`), which :mod:`napari_gmmseg._writer` uses to
write NIfTI on the original affine and header.

This module imports only numpy and the package core at import time (no torch,
no SimpleITK/nibabel until a file is read).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg.labels import COLOR_BY_VALUE, MYOPS_VALUES, NAME_BY_VALUE

#: metadata keys written on every layer the reader creates
GEOMETRY_KEY = "gmmseg_geometry"
CASE_ID_KEY = "gmmseg_case_id"
CHANNEL_KEY = "gmmseg_channel"
SOURCE_KEY = "gmmseg_source"
#: name of the ground-truth Labels layer
MASK_LAYER_NAME = "mask"
#: colour of label values outside the MyoPS table (e.g. painted by hand)
UNKNOWN_LABEL_COLOR = (0.6, 0.6, 0.6, 1.0)

LayerData = tuple[Any, dict[str, Any], str]


def _is_candidate(path: Path) -> bool:
    """A tagged image file, a sequence's DICOM folder, or a folder holding cases."""
    from napari_gmmseg.errors import GmmSegError
    from napari_gmmseg.io import discover_cases, file_role, is_image_path

    if path.is_dir():
        try:
            return file_role(path) is not None or bool(discover_cases(path))
        except (GmmSegError, OSError):
            return False
    return is_image_path(path) and file_role(path) is not None


def napari_get_reader(path: str | Sequence[str]) -> Callable[..., list[LayerData]] | None:
    """Return :func:`read_case` when ``path`` looks like a CMR case, else None.

    Accepted: a folder where :func:`napari_gmmseg.io.discover_cases` finds a case
    (one case folder, or a dataset: reading it then asks for one case), or
    a ``.nii``/``.nii.gz``/``.mha``/``.mhd``/``.nrrd`` file whose name carries a
    sequence tag (``C0``/``bSSFP``, ``DE``/``LGE``, ``T2``) or a mask tag (``gd``,
    ``mask``, ``label``, ``seg``).
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        return None
    if not all(_is_candidate(Path(p)) for p in paths):
        return None
    return read_case


def _percentile_limits(volume: np.ndarray) -> tuple[float, float]:
    data = volume[::2, ::2, ::2] if volume.size > 4_000_000 else volume
    lo, hi = (float(v) for v in np.percentile(data, [1.0, 99.5]))
    if hi <= lo:
        lo, hi = float(volume.min()), float(volume.max())
        if hi <= lo:
            hi = lo + 1.0
    return lo, hi


def label_colormap(values: Sequence[int] | None = None):
    """napari ``DirectLabelColormap`` with the fixed MyoPS colours (0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, tuple[float, ...]] = {
        None: UNKNOWN_LABEL_COLOR,
        0: (0.0, 0.0, 0.0, 0.0),
    }
    colors.update(COLOR_BY_VALUE)
    for v in values or ():
        colors.setdefault(int(v), UNKNOWN_LABEL_COLOR)
    return DirectLabelColormap(color_dict=colors)


def label_features(values: Sequence[int] | None = None) -> dict[str, list]:
    """Features table (``index`` = label value, ``name``) for a Labels layer."""
    vals = sorted(set(MYOPS_VALUES) | {int(v) for v in (values or ())})
    return {
        "index": vals,
        "name": [("background" if v == 0 else NAME_BY_VALUE.get(v, f"label {v}")) for v in vals],
    }


def labels_layer_data(
    labels: np.ndarray,
    geometry,
    *,
    name: str = MASK_LAYER_NAME,
    case_id: str | None = None,
    source: str | None = None,
) -> LayerData:
    """LayerData of a MyoPS label map with class names, fixed colours and the geometry."""
    labels = np.asarray(labels, dtype=np.int32)
    values = np.unique(labels).tolist()
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": tuple(float(s) for s in geometry.spacing_mm),
        "colormap": label_colormap(values),
        "features": label_features(values),
        "opacity": 0.6,
        "metadata": {GEOMETRY_KEY: geometry, CASE_ID_KEY: case_id, SOURCE_KEY: source},
    }
    return labels, kwargs, "labels"


def case_layer_data(case) -> list[LayerData]:
    """LayerData list for a :class:`napari_gmmseg.io.Case`: images, then the mask."""
    scale = tuple(float(s) for s in case.spacing_mm)
    layers: list[LayerData] = []
    for i, name in enumerate(case.channels):
        vol = np.ascontiguousarray(case.images[..., i])
        src = case.sources.get(name)
        kwargs = {
            "name": name,
            "scale": scale,
            "contrast_limits": _percentile_limits(vol),
            "colormap": "gray",
            "visible": i == 0,
            "metadata": {
                GEOMETRY_KEY: case.geometry,
                CASE_ID_KEY: case.case_id,
                CHANNEL_KEY: name,
                SOURCE_KEY: None if src is None else str(src),
            },
        }
        layers.append((vol, kwargs, "image"))
    if case.labels is not None:
        src = case.sources.get("mask")
        layers.append(
            labels_layer_data(
                case.labels,
                case.geometry,
                case_id=case.case_id,
                source=None if src is None else str(src),
            )
        )
    return layers


def read_case(path: str | Sequence[str]) -> list[LayerData]:
    """Read the case(s) behind ``path`` (a file, a case folder, or a list of them).

    Files of the same case given together are loaded once.
    """
    from napari_gmmseg.io import file_role, load_case, read_labels

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[LayerData] = []
    seen: set[tuple[str, str]] = set()
    for p in map(Path, paths):
        role = None if p.is_dir() else file_role(p)
        if role is not None and role[0] == "mask":
            labels, geometry = read_labels(p, with_geometry=True)
            layers.append(labels_layer_data(labels, geometry, source=str(p)))
            continue
        key = (str(p.parent if role is not None else p), role[1] if role is not None else "")
        if key in seen:
            continue
        seen.add(key)
        layers.extend(case_layer_data(load_case(p)))
    return layers
