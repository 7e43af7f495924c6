"""ROI and channel helpers of the Segment dock: layer names to sequences, shapes to masks."""

from __future__ import annotations

import re

import numpy as np

from napari_gmmseg.errors import RoiError

__all__ = ["channel_name", "roi_from_shapes"]


def channel_name(layer) -> str:
    """Sequence name of an image layer: the reader's metadata, else guessed from the layer name."""
    from napari_gmmseg._reader import CHANNEL_KEY

    meta = layer.metadata.get(CHANNEL_KEY)
    if isinstance(meta, str) and meta:
        return meta
    from napari_gmmseg.naming import CHANNEL_ALIASES

    for token in re.split(r"[^a-z0-9]+", layer.name.lower()):
        if token in CHANNEL_ALIASES:
            return CHANNEL_ALIASES[token]
    return layer.name


def roi_from_shapes(shapes, reference, shape_zyx: tuple[int, int, int], all_slices: bool):
    """Rasterise the polygons/rectangles/ellipses of a Shapes layer on an image layer's grid.

    Vertices are mapped data -> world (shapes layer) -> data (reference image
    layer), so a polygon drawn on a scaled image lands on the right voxels. A
    shape drawn on one slice covers that slice only unless ``all_slices``; shapes
    of a 2-D Shapes layer cover every slice.
    """
    import napari

    kinds = [k for k in shapes.shape_type if k in ("polygon", "rectangle", "ellipse")]
    if not kinds:
        raise RoiError(
            f"Shapes layer '{shapes.name}' has no polygon, rectangle or ellipse: draw one "
            "around the left ventricle first"
        )
    datas, types = [], []
    for verts, kind in zip(shapes.data, shapes.shape_type, strict=True):
        if kind not in ("polygon", "rectangle", "ellipse"):
            continue
        verts = np.asarray(verts, dtype=float)
        if verts.shape[1] == 2:
            verts = np.column_stack([np.zeros(len(verts)), verts])
            world = np.array([shapes.data_to_world(v[1:]) for v in verts])
            world = np.column_stack([np.zeros(len(world)), world])
            flat = True
        else:
            world = np.array([shapes.data_to_world(v) for v in verts])[:, -3:]
            flat = False
        data = np.array([reference.world_to_data(w) for w in world])[:, -3:]
        data[:, 0] = np.round(data[:, 0]) if not flat else 0
        datas.append((data, flat))
        types.append(kind)
    roi = np.zeros(shape_zyx, dtype=bool)
    for (data, flat), kind in zip(datas, types, strict=True):
        z = int(data[0, 0])
        if np.ptp(data[:, 0]) > 0:
            raise RoiError(f"a shape in '{shapes.name}' is not drawn on a single slice")
        tmp = napari.layers.Shapes([data[:, 1:]], shape_type=kind, ndim=2)
        mask2d = tmp.to_masks(mask_shape=shape_zyx[1:])[0].astype(bool)
        if flat or all_slices:
            roi |= mask2d[None]
        elif 0 <= z < shape_zyx[0]:
            roi[z] |= mask2d
    return roi
