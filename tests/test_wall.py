"""Stage 1 of the wall-first pipeline: one hole-free blood pool inside a wall ring."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_gmmseg.errors import RoiError
from napari_gmmseg.labels import LV_ROI_VALUES
from napari_gmmseg.metrics import dice
from napari_gmmseg.phantom import make_case
from napari_gmmseg.wall import endocardial_rim, split_wall


@pytest.fixture(scope="module")
def phantom_split():
    case = make_case(seed=3, n_slices=4, size=96)
    roi = np.isin(case.labels, LV_ROI_VALUES)
    return case, roi, split_wall(case.images[..., 0], roi, case.spacing_mm)


def test_pool_is_one_hole_free_component_inside_a_ring(phantom_split):
    _case, roi, split = phantom_split
    assert not (split.blood & split.wall).any()
    assert np.array_equal(split.blood | split.wall, roi)
    for z in range(roi.shape[0]):
        if not split.blood[z].any():
            continue
        _, n = ndi.label(split.blood[z])
        assert n == 1
        assert np.array_equal(ndi.binary_fill_holes(split.blood[z]), split.blood[z])
        # ring: the pool never touches the ROI border, the wall surrounds it
        border = roi[z] & ~ndi.binary_erosion(roi[z])
        assert not (split.blood[z] & border).any()
        _, n_wall = ndi.label(split.wall[z], structure=np.ones((3, 3)))
        assert n_wall == 1


def test_pool_and_wall_match_the_phantom_truth(phantom_split):
    case, roi, split = phantom_split
    pred = np.where(split.blood, 500, np.where(split.wall, 200, 0))
    gt = np.where(case.labels == 500, 500, np.where(roi, 200, 0))
    d_blood, d_wall = dice(pred, gt, (500, 200))
    assert d_blood > 0.9
    assert d_wall > 0.8


def test_rim_is_wall_next_to_the_pool(phantom_split):
    case, _roi, split = phantom_split
    rim = endocardial_rim(split.blood, split.wall, case.spacing_mm)
    assert rim.any() and not (rim & ~split.wall).any()
    assert rim.sum() < 0.6 * split.wall.sum()
    cross = ndi.generate_binary_structure(2, 1)[None]  # 4-neighbours, in-plane
    grown = ndi.binary_dilation(split.blood, structure=cross)
    assert (grown & split.wall & ~rim).sum() == 0


def test_bad_input_is_refused():
    with pytest.raises(RoiError, match="empty"):
        split_wall(np.ones((2, 8, 8)), np.zeros((2, 8, 8), bool), (10.0, 1.0, 1.0))
    with pytest.raises(RoiError, match="differs"):
        split_wall(np.ones((2, 8, 8)), np.ones((2, 8, 9), bool), (10.0, 1.0, 1.0))
