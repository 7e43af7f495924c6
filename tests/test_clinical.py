"""Clinical thresholds (n-SD, FWHM, T2 2-SD) on synthetic myocardium with known remote statistics."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gmmseg.clinical import (
    clinical_labels,
    remote_myocardium,
    remote_statistics,
    threshold_fwhm,
    threshold_nsd,
)
from napari_gmmseg.errors import ModelError, RoiError

N = 41
C = 20  # centre pixel


def _ring(z: int = 2):
    """A myocardial ring around a blood pool centred on (C, C), and pixel angles."""
    yy, xx = np.mgrid[0:N, 0:N]
    r = np.hypot(yy - C, xx - C)
    myo = (r >= 8) & (r < 14)
    blood = r < 8
    angle = np.arctan2(yy - C, xx - C)
    return np.repeat(myo[None], z, 0), np.repeat(blood[None], z, 0), angle


def test_remote_is_the_darkest_sector_and_percentile():
    myo, blood, angle = _ring(2)
    lge = np.full(myo.shape, 100.0)
    dark = (angle >= np.pi / 3) & (angle < 2 * np.pi / 3)  # one of 6 sectors
    lge[0][dark] = 60.0  # slice 0: darkest sector is `dark`
    lge[1][angle < -2 * np.pi / 3] = 50.0  # slice 1: the first sector
    remote = remote_myocardium(lge, myo, blood=blood)
    np.testing.assert_array_equal(remote[0], myo[0] & dark)
    np.testing.assert_array_equal(remote[1], myo[1] & (angle < -2 * np.pi / 3))
    # Without blood pool the ring's own centroid is used: same answer.
    np.testing.assert_array_equal(remote_myocardium(lge, myo), remote)
    low = remote_myocardium(lge, myo, method="percentile", percentile=10)
    np.testing.assert_array_equal(low[0], myo[0] & (lge[0] <= 60.0))
    # Empty slices give empty remote masks, not errors.
    empty = remote_myocardium(lge, np.zeros_like(myo))
    assert not empty.any()
    with pytest.raises(ModelError):
        remote_myocardium(lge, myo, method="clicks")
    with pytest.raises(RoiError):
        remote_myocardium(lge[0], myo)


def test_nsd_exact_masks_for_n_2_to_6():
    myo, _, _ = _ring(1)
    rng = np.random.default_rng(0)
    img = np.where(myo, rng.uniform(0, 100, myo.shape), 0.0)
    remote = np.zeros_like(myo)
    idx = np.argwhere(myo[0])[:4]
    remote[0][tuple(idx.T)] = True
    img[0][tuple(idx.T)] = [100.0, 100.0, 110.0, 110.0]  # remote mean 105, SD 5
    mean, sd = remote_statistics(img, remote)
    assert (mean[0], sd[0]) == (105.0, 5.0)
    img[0][myo[0] & ~remote[0]] = np.linspace(100, 140, (myo[0] & ~remote[0]).sum())
    for n in range(2, 7):
        got = threshold_nsd(img, myo, remote, n)
        np.testing.assert_array_equal(got, myo & (img > 105.0 + 5.0 * n))
        assert got.sum() > 0
    # A value exactly at the threshold is not enhanced (strictly greater).
    img[0][tuple(idx[0])] = 105.0 + 5.0 * 3
    remote[0][tuple(idx[0])] = False
    assert not threshold_nsd(img, myo, remote, 100.0).any()


def test_fwhm_exact_and_gate():
    myo, _, _ = _ring(2)
    img = np.zeros(myo.shape)
    remote = np.zeros_like(myo)
    idx = np.argwhere(myo[0])[:4]
    for z in (0, 1):
        remote[z][tuple(idx.T)] = True
        img[z][tuple(idx.T)] = [40.0, 40.0, 50.0, 50.0]  # mean 45, SD 5 -> gate(5) = 70
    rest = myo[0] & ~remote[0]
    img[0][rest] = np.linspace(41, 200, rest.sum())  # max 200 -> half max 100
    img[1][rest] = np.linspace(41, 69, rest.sum())  # max 69 < 70: no enhancement
    got = threshold_fwhm(img, myo, remote)
    np.testing.assert_array_equal(got[0], myo[0] & (img[0] >= 100.0))
    assert got[0].sum() > 0 and not got[1].any()
    ungated = threshold_fwhm(img, myo, gate_n_sd=None)
    np.testing.assert_array_equal(ungated[1], myo[1] & (img[1] >= 34.5))
    with pytest.raises(ModelError):
        threshold_fwhm(img, myo)  # the gate needs a remote mask


def test_clinical_labels_combines_rules_inside_the_given_myocardium():
    myo, blood, angle = _ring(1)
    lge = np.where(myo, 100.0, 300.0)
    t2 = np.where(myo, 100.0, 50.0)
    infarct = myo & (angle >= 0) & (angle < np.pi / 2)
    border = myo & (angle >= np.pi / 2) & (angle < np.pi)
    dark = myo & (angle < -2 * np.pi / 3)
    lge[infarct] = 400.0
    checker = (np.add.outer(np.arange(N), np.arange(N)) % 2 == 0)[None]
    lge[dark] = np.where(checker, 60.0, 80.0)[dark]  # remote: mean ~70, SD ~10
    t2[dark] = np.where(checker, 90.0, 110.0)[dark]  # remote T2: mean ~100, SD ~10
    t2[infarct | border] = 180.0
    labels = np.where(myo, 200, np.where(blood, 500, 0)).astype(np.int32)
    labels[0, 0, 0] = 600  # RV and background stay background
    images = np.stack([np.zeros_like(lge), lge, t2], -1)
    out = clinical_labels(images, labels, ("bSSFP", "LGE", "T2"))
    expected = np.zeros_like(labels)
    expected[blood] = 500
    expected[myo] = 200
    expected[border] = 1220  # T2-bright but not LGE-bright: edema
    expected[infarct] = 2221  # scar wins over edema
    np.testing.assert_array_equal(out, expected)
    fwhm = clinical_labels(images, labels, ("C0", "DE", "T2"), scar_rule="fwhm")
    np.testing.assert_array_equal(fwhm, expected)  # 400 >= 200, others are below
    no_t2 = clinical_labels(images[..., :2], labels, ("bSSFP", "LGE"))
    assert not (no_t2 == 1220).any() and (no_t2 == 2221).sum() == infarct.sum()
    with pytest.raises(ModelError, match="LGE"):
        clinical_labels(images, labels, ("bSSFP", "X", "T2"))
    with pytest.raises(RoiError):
        clinical_labels(images[0], labels)


def test_clinical_nsd_on_phantom_ground_truth_myocardium():
    from napari_gmmseg.metrics import dice
    from napari_gmmseg.phantom import make_case

    case = make_case(0, n_slices=3, size=96)
    out = clinical_labels(case.images, case.labels, case.channels, n_sd=5)
    d = dice(out, case.labels, [2221])
    assert float(np.ravel(d)[0]) > 0.6
    assert set(np.unique(out)) <= {0, 200, 500, 1220, 2221}
