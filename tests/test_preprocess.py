"""SliceBatch packing: validation, per-slice z-scores, crop boxes, the maps back to the volume."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gmmseg.errors import CaseLoadError, ModelError, RoiError
from napari_gmmseg.preprocess import SliceBatch, check_volume


def _volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.normal(100.0, 20.0, size=(3, 40, 50, 2)).astype(np.float32)
    images[..., 1] *= 3.0
    roi = np.zeros((3, 40, 50), dtype=bool)
    roi[0, 5:15, 10:30] = True
    roi[2, 20:38, 30:49] = True  # slice 1 empty, slice 2 at the image border
    return images, roi


def test_check_volume_names_the_problem():
    images, roi = _volume()
    out, mask, channels = check_volume(images[..., 0], roi)
    assert out.shape == (3, 40, 50, 1) and mask.dtype == bool and channels == ("ch0",)
    assert check_volume(np.zeros((1, 4, 4, 3)))[2] == ("bSSFP", "LGE", "T2")
    with pytest.raises(CaseLoadError, match=r"\(Z, Y, X\) or \(Z, Y, X, C\)"):
        check_volume(images[0, 0])
    with pytest.raises(CaseLoadError, match="real numbers"):
        check_volume(images.astype(np.complex64))
    with pytest.raises(ModelError, match="1 channel names"):
        check_volume(images, roi, channels=["T2"])
    with pytest.raises(RoiError, match="differs from the image grid"):
        check_volume(images, roi[:, :-1])
    with pytest.raises(RoiError, match="empty"):
        check_volume(images, np.zeros_like(roi))
    bad = images.copy()
    bad[0, 6, 11, 1] = np.nan
    with pytest.raises(CaseLoadError, match="NaN or Inf inside the region of interest"):
        check_volume(bad, roi)
    bad[0, 0, 0, 1] = np.nan  # outside the ROI: allowed
    bad[0, 6, 11, 1] = 1.0
    check_volume(bad, roi)


def test_rows_are_z_scored_per_slice_and_scatter_back_to_their_voxels():
    images, roi = _volume()
    batch = SliceBatch.from_volume(images, roi, device="cpu")
    assert batch.slice_index.tolist() == [0, 2]  # empty slices get no row
    x, valid = batch.x.numpy(), batch.valid.numpy()
    assert x.shape == (2, 18 * 19, 2) and valid.sum(1).tolist() == [200, 18 * 19]
    for r in range(2):
        v = x[r][valid[r]].astype(np.float64)
        np.testing.assert_allclose(v.mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(v.std(0), 1.0, atol=1e-5)
    # packed values go back to exactly the ROI voxels, in the original units
    restored = batch.scatter(x * batch.scale[:, None] + batch.loc[:, None], fill=0.0)
    np.testing.assert_allclose(restored[roi], images[roi], rtol=1e-5)
    assert not restored[~roi].any()


def test_crop_boxes_cover_the_roi_and_are_unet_sized():
    images, roi = _volume()
    batch = SliceBatch.from_volume(images, roi, device="cpu", crop_margin=2, crop_multiple=16)
    h, w = batch.crop_shape
    assert h % 16 == 0 and w % 16 == 0 and h >= 18 + 4 and w >= 20 + 4
    for (y0, x0, bh, bw), z in zip(batch.boxes, batch.crop_slices, strict=True):
        ys, xs = np.nonzero(roi[z])
        assert y0 <= ys.min() and ys.max() < y0 + bh and x0 <= xs.min() and xs.max() < x0 + bw
    assert batch.crops.shape == (2, 2, h, w)
    with pytest.raises(RoiError, match="smaller than the ROI"):
        SliceBatch.from_volume(images, roi, device="cpu", crop_size=8)


def test_whole_volume_mode_packs_one_row_and_none_keeps_the_units():
    images, roi = _volume()
    batch = SliceBatch.from_volume(images, roi, per_slice=False, normalize="none", device="cpu")
    assert batch.x.shape[0] == 1 and int(batch.valid.sum()) == int(roi.sum())
    assert batch.slice_index.tolist() == [-1]
    np.testing.assert_array_equal(np.sort(batch.x[0, :, 0].numpy()), np.sort(images[roi][:, 0]))
