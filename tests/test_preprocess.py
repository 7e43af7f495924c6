"""SliceBatch packing (validation, per-slice z-scores, crop boxes, the maps back to the volume)
and robust intensities (percentile-clipped statistics, extreme voxels refused or clipped)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gmmseg.errors import CaseLoadError, ExtremeIntensityError, ModelError, RoiError
from napari_gmmseg.preprocess import CLIP_PERCENTILES, SliceBatch, check_volume
from napari_gmmseg.segment import segment, segment_case


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
    batch = SliceBatch.from_volume(images, roi, clip_percentiles=None, device="cpu")  # plain z
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


@pytest.fixture(scope="module")
def case():
    from napari_gmmseg.phantom import make_case

    return make_case(2, n_slices=4, size=128)


def _corrupt(images: np.ndarray, roi: np.ndarray, n: int, value: float, channel: int | None):
    """A copy of ``images`` with ``n`` seeded ROI voxels set to ``value`` (all channels: None)."""
    zz, yy, xx = np.nonzero(roi)
    idx = np.random.default_rng(0).choice(zz.size, n, replace=False)
    out = images.copy()
    out[zz[idx], yy[idx], xx[idx], slice(None) if channel is None else channel] = value
    return out


@pytest.mark.parametrize("value", [1e30, 32767.0])
@pytest.mark.parametrize("n", [1, 50])
def test_extreme_voxels_leave_the_normalisation_unchanged(case, n, value):
    roi = case.roi()
    assert 50 / roi.sum() > CLIP_PERCENTILES[0] / 100  # more outliers than the clipped tail
    clean = SliceBatch.from_volume(case.images, roi, channels=case.channels, device="cpu")
    bad = _corrupt(case.images, roi, n, value, channel=None)
    batch = SliceBatch.from_volume(bad, roi, channels=case.channels, device="cpu")
    assert batch.n_extreme.tolist() == [n, n, n]
    np.testing.assert_allclose(batch.loc, clean.loc, rtol=0.02)
    np.testing.assert_allclose(batch.scale, clean.scale, rtol=0.05)
    # the extreme voxels themselves are set to the bounds: every value stays in range
    x = batch.x[batch.valid].numpy()
    assert np.abs(x).max() < 20
    # without the clip the statistics are ruined (the reason for it)
    raw = SliceBatch.from_volume(bad, roi, clip_percentiles=None, device="cpu")
    assert np.max(raw.scale / clean.scale) > 10


def test_clean_data_values_are_kept_and_the_clip_is_reported(case):
    roi = case.roi()
    batch = SliceBatch.from_volume(case.images, roi, channels=case.channels, device="cpu")
    off = SliceBatch.from_volume(case.images, roi, clip_percentiles=None, device="cpu")
    # same values up to the per-slice affine map (only the statistics are robust)
    xa, xb = batch.x[batch.valid].numpy(), off.x[off.valid].numpy()
    assert np.corrcoef(xa[:, 1], xb[:, 1])[0, 1] > 0.9999
    assert batch.n_extreme.tolist() == [0, 0, 0]
    total = int(roi.sum())
    assert np.all((batch.n_clipped > 0) & (batch.n_clipped <= 0.011 * total + 2))
    summary = batch.clip_summary()
    assert summary["percentiles"] == list(CLIP_PERCENTILES)
    assert summary["clipped_voxels"]["LGE"] == int(batch.n_clipped[1])
    with pytest.raises(ModelError, match="clip_percentiles"):
        SliceBatch.from_volume(case.images, roi, clip_percentiles=(99, 1), device="cpu")


@pytest.mark.parametrize("value", [1e30, 32767.0])
def test_segment_refuses_extreme_voxels_by_default_and_clips_when_asked(case, value):
    roi = case.roi()
    bad = _corrupt(case.images, roi, 50, value, channel=1)
    with pytest.raises(ExtremeIntensityError, match="LGE: 50 voxel") as err:
        segment(bad, roi, channels=case.channels, max_iter=5, device="cpu")
    assert err.value.channels == ("LGE",)
    with pytest.warns(UserWarning, match="extreme intensities"):
        fit = segment(
            bad, roi, channels=case.channels, method="gmm", extreme="clip", max_iter=5, device="cpu"
        )
    assert fit.params["clip"]["extreme_voxels"] == {"bSSFP": 0, "LGE": 50, "T2": 0}
    assert set(np.unique(fit.labels[roi])) <= {200, 500, 1220, 2221}
    clean = segment(
        case.images, roi, channels=case.channels, method="gmm", max_iter=5, device="cpu"
    )
    assert sum(clean.params["clip"]["clipped_voxels"].values()) > 0
    assert not any(clean.params["clip"]["extreme_voxels"].values())
    with pytest.raises(ModelError, match="extreme"):
        segment(bad, roi, channels=case.channels, extreme="ignore", device="cpu")


def test_real_case_with_int16_limits_is_refused_naming_the_file(real_data_dir, tmp_path):
    from napari_gmmseg import io
    from napari_gmmseg.cli import main
    from napari_gmmseg.labels import LV_ROI_VALUES

    case = io.load_case(real_data_dir / "train25" / "myops_training_3001_C0.nii.gz")
    roi = np.isin(case.labels, LV_ROI_VALUES)
    for n, value in ((1, 1e30), (50, 32767.0)):
        bad = _corrupt(case.images, roi, n, value, channel=1)
        broken = io.Case(**{**case.__dict__, "images": bad})
        with pytest.raises(ExtremeIntensityError) as err:
            segment_case(broken, method="gmm", device="cpu")
        assert str(case.sources["LGE"]) in str(err.value) and f"LGE: {n} voxel" in str(err.value)
        # real data itself has no extreme voxel: nothing refused
    fit = segment_case(case, method="gmm", max_iter=3, device="cpu")  # clip report: EM path
    assert not any(fit.params["clip"]["extreme_voxels"].values())
    # the command line: a one-line error naming the LGE file, exit 1, nothing written
    lge = tmp_path / "x_DE.nii.gz"
    bad = _corrupt(case.images, roi, 50, 32767.0, channel=1)
    io.save_volume(bad[..., 1], case.geometry, lge)
    gt = case.sources["mask"]
    out = tmp_path / "out.nii.gz"
    args = ["segment", "--bssfp", str(case.sources["bSSFP"]), "--lge", str(lge)]
    args += ["--t2", str(case.sources["T2"]), "--roi", str(gt), "--out", str(out), "--quiet"]
    assert main(args) == 1 and not out.exists()
    clip = [*args, "--extreme", "clip", "--method", "gmm", "--max-iter", "3"]
    assert main(clip) == 0 and out.exists()
