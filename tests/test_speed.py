"""The speed work changes no result: packing, naming, labels and E-step threads bit for bit.

Each fast path is checked against the code it replaced (kept here as the reference):
``np.add.at`` statistics and three-array fancy packing in ``SliceBatch.from_volume``,
SciPy's ``linear_sum_assignment`` in the naming, and the whole ``segment`` pipeline
built from those references.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_gmmseg.errors import CaseLoadError
from napari_gmmseg.naming import min_cost_assignment
from napari_gmmseg.preprocess import SliceBatch
from napari_gmmseg.segment import segment


def _reference_pack(images: np.ndarray, roi: np.ndarray, per_slice: bool, normalize: str):
    """The packing of ``SliceBatch.from_volume`` before the speed work (x, valid, loc, scale, idx)."""
    _z_dim, y_dim, x_dim, n_ch = images.shape
    zz, yy, xx = np.nonzero(roi)
    raw = images[zz, yy, xx, :].astype(np.float64)
    crop_slices, first = np.unique(zz, return_index=True)
    counts = np.diff(np.append(first, zz.size))
    srow = np.repeat(np.arange(crop_slices.size), counts)
    if per_slice:
        rows, row_counts = srow, counts
    else:
        rows, row_counts = np.zeros(zz.size, dtype=np.int64), np.array([zz.size])
    n_rows, n_max = int(row_counts.size), int(row_counts.max())
    row_start = np.concatenate([[0], np.cumsum(row_counts)[:-1]])
    pos = np.arange(zz.size) - row_start[rows]
    if normalize == "roi":
        sums = np.zeros((n_rows, n_ch))
        np.add.at(sums, rows, raw)
        loc = sums / row_counts[:, None]
        sq = np.zeros((n_rows, n_ch))
        np.add.at(sq, rows, (raw - loc[rows]) ** 2)
        std = np.sqrt(sq / row_counts[:, None])
    else:
        loc, std = np.zeros((n_rows, n_ch)), np.ones((n_rows, n_ch))
    tiny = 1e-6 * np.maximum(np.abs(loc), 1.0)
    scale = np.where(std > tiny, std, 1.0)
    x = np.zeros((n_rows, n_max, n_ch), dtype=np.float32)
    x[rows, pos] = (raw - loc[rows]) / scale[rows]
    valid = np.zeros((n_rows, n_max), dtype=bool)
    valid[rows, pos] = True
    volume_index = np.full((n_rows, n_max), -1, dtype=np.int64)
    volume_index[rows, pos] = (zz.astype(np.int64) * y_dim + yy) * x_dim + xx
    return x, valid, loc, scale, volume_index


def _volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = (rng.gamma(2.0, 50.0, size=(4, 40, 36, 3)) + 7.0).astype(np.float32)
    roi = rng.random((4, 40, 36)) < 0.4
    roi[2] = False  # an empty slice
    roi[3, :20] = True  # slices of different sizes: padding
    return images, roi


@pytest.mark.parametrize("per_slice", [True, False])
@pytest.mark.parametrize("normalize", ["roi", "none"])
def test_packing_is_bit_identical_to_the_reference(per_slice, normalize):
    images, roi = _volume()
    # the reference is the plain z-score (the robust statistics: tests/test_preprocess.py)
    b = SliceBatch.from_volume(
        images, roi, per_slice=per_slice, normalize=normalize, clip_percentiles=None, device="cpu"
    )  # fmt: skip
    x, valid, loc, scale, volume_index = _reference_pack(images, roi, per_slice, normalize)
    assert b.x.numpy().tobytes() == x.tobytes()
    np.testing.assert_array_equal(b.valid.numpy(), valid)
    assert b.loc.tobytes() == loc.tobytes() and b.scale.tobytes() == scale.tobytes()
    np.testing.assert_array_equal(b.volume_index, volume_index)
    # The packed -> volume map still inverts the packing.
    back = b.scatter(b.valid.numpy().astype(np.int8), fill=0)
    np.testing.assert_array_equal(back.astype(bool), roi)


def test_packing_without_padding_is_a_reshape():
    images, _ = _volume()
    roi = np.ones(images.shape[:3], dtype=bool)
    b = SliceBatch.from_volume(images, roi, clip_percentiles=None, device="cpu")
    x, _valid, _loc, _scale, _volume_index = _reference_pack(images, roi, True, "roi")
    assert b.x.numpy().tobytes() == x.tobytes() and bool(b.valid.all())
    np.testing.assert_array_equal(b.volume_index.ravel(), np.arange(roi.size))


def test_nan_inside_the_roi_is_still_refused():
    images, roi = _volume()
    images[1][roi[1]] = np.nan
    with pytest.raises(CaseLoadError, match="NaN or Inf"):
        SliceBatch.from_volume(images, roi, device="cpu")
    with pytest.raises(CaseLoadError, match="NaN or Inf"):
        segment(images, roi, max_iter=2)
    # Outside the ROI a NaN is no concern of the fit.
    images, roi = _volume()
    images[0][~roi[0]] = np.nan
    assert segment(images, roi, max_iter=2, init="random").labels.shape == roi.shape


def test_nan_in_a_skipped_slice_is_refused():
    images, roi = _volume()
    roi[0] = False
    roi[0, 0, :2] = True  # 2 pixels < 4 classes: the slice is skipped, yet checked
    images[0, 0, 0] = np.inf
    with pytest.raises(CaseLoadError, match="NaN or Inf"):
        segment(images, roi, max_iter=2)


@pytest.mark.parametrize("shape", [(4, 4), (3, 4), (5, 4), (6, 4), (2, 5), (1, 4), (4, 1)])
def test_min_cost_assignment_matches_scipy(shape):
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(sum(shape))
    for _ in range(200):
        cost = rng.normal(size=shape) ** 2
        rows, cols = min_cost_assignment(cost)
        r_ref, c_ref = linear_sum_assignment(cost)
        np.testing.assert_array_equal(rows, r_ref)
        np.testing.assert_array_equal(cols, c_ref)


def test_segment_labels_are_bit_identical_to_the_reference_pipeline():
    """segment() == reference packing + the same EM + SciPy naming + the old label build."""
    from scipy.optimize import linear_sum_assignment

    from napari_gmmseg.labels import CLASS_VALUES
    from napari_gmmseg.mixture import fit_gmm
    from napari_gmmseg.naming import DEFAULT_PRIOR
    from napari_gmmseg.phantom import make_case

    case = make_case(2, n_slices=3, size=64)
    roi = case.roi()
    fit = segment(
        case.images,
        roi,
        channels=case.channels,
        method="gmm",
        seed=1,
        device="cpu",
        clip_percentiles=None,
    )

    x, valid, _loc, _scale, volume_index = _reference_pack(case.images, roi, True, "roi")
    fast = SliceBatch.from_volume(
        case.images, roi, channels=case.channels, clip_percentiles=None, device="cpu"
    )
    ref = SliceBatch(
        **{**fast.__dict__, "x": torch.from_numpy(x), "valid": torch.from_numpy(valid)},
    )
    res = fit_gmm(ref, n_components=4, seed=1, tol=1e-3, max_iter=100)
    means = res.means.detach().double().numpy()
    table = DEFAULT_PRIOR.for_channels(case.channels)
    c2c = np.empty((means.shape[0], 4), dtype=np.int64)
    for s in range(means.shape[0]):
        cost = ((means[s][:, None, :] - table[None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        c2c[s, rows] = cols
    comp = res.responsibilities.argmax(-1).numpy().astype(np.int64)
    labels_packed = np.where(valid, np.asarray(CLASS_VALUES)[np.take_along_axis(c2c, comp, 1)], 0)
    labels = np.zeros(roi.size, dtype=np.int32)
    labels[volume_index[valid]] = labels_packed[valid]
    np.testing.assert_array_equal(fit.labels, labels.reshape(roi.shape))
    np.testing.assert_array_equal(fit.component_to_class, c2c)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_estep_workers_give_the_single_thread_result_bit_for_bit(covariance_type):
    """Tiles shared among threads (issue 17) add up in tile order: the same numbers."""
    from napari_gmmseg.em.estep import EStep, features

    gen = torch.Generator().manual_seed(0)
    s, n, m, k = 3, 5000, 3, 4
    x = torch.randn(s, n, m, generator=gen)
    valid = torch.ones(s, n)
    valid[2, 4000:] = 0  # a padded row
    x[2, 4000:] = 0
    feat = features(x, valid, covariance_type)
    wk = {"f": feat, "n": valid.sum(1).double()}
    w = torch.full((s, k), 1.0 / k, dtype=torch.float64)
    mu = torch.randn(s, k, m, generator=gen, dtype=torch.float64)
    eye = torch.eye(m, dtype=torch.float64)
    cov = (
        torch.ones(s, k, m, dtype=torch.float64)
        if covariance_type == "diag"
        else eye.expand(s, k, m, m)
    )
    upd = torch.tensor([True, False, True])

    def run(workers: int, svgmm: bool, nb: torch.Tensor | None):
        est = EStep(k, m, covariance_type, torch.float32, torch.device("cpu"), chunk_pixels=700)
        est.workers = workers
        log_pi = torch.full((s, k, n), -float(np.log(k))) if svgmm else None
        resp = torch.zeros(s, k, n)
        out = est.run(
            w, mu, cov, wk, log_pi=log_pi, upd=upd if svgmm else None, nb=nb, resp_out=resp
        )
        return [*out, resp] + ([log_pi] if svgmm else [])

    mrf = torch.rand(s, k, n, generator=gen)
    for svgmm, nb in ((False, None), (True, None), (False, mrf)):
        one, three = run(1, svgmm, nb), run(3, svgmm, nb)
        for a, b in zip(one, three, strict=True):
            assert torch.equal(a, b), (svgmm, nb is not None)
    assert torch.equal(one[-1][2, :, 4000:], torch.zeros(k, 1000))  # padding gets no resp


def _reference_clip_bounds(raw: np.ndarray, low: float, high: float) -> np.ndarray:
    """The clip bounds as computed before the speed work (percentiles along axis 0)."""
    from napari_gmmseg.preprocess import EXTREME_FACTOR

    q1, q3 = np.percentile(raw, [5.0, 95.0], axis=0)
    spread = EXTREME_FACTOR * np.maximum(q3 - q1, 1e-12 * np.maximum(np.abs(q3), 1.0))
    extreme = (raw < q1 - spread) | (raw > q3 + spread)
    kept = np.where(extreme, np.nan, raw) if extreme.any() else raw
    return np.nanpercentile(kept, [low, high], axis=0)


def test_clip_bounds_are_the_reference_order_statistics():
    from napari_gmmseg.preprocess import _clip_channels

    rng = np.random.default_rng(1)
    raw = rng.gamma(2.0, 50.0, size=(20001, 3))
    for case in ("plain", "extreme"):
        if case == "extreme":
            raw[::997, 1] = 1e30  # far outliers in one channel only
        _, clipped, bounds, n_clipped, n_extreme = _clip_channels(raw, (0.5, 99.5))
        assert n_clipped.min() > 0  # 1 % of every channel lies outside the bounds
        np.testing.assert_array_equal(bounds, _reference_clip_bounds(raw, 0.5, 99.5))
        assert (n_extreme > 0).tolist() == [False, case == "extreme", False]
        assert clipped.max(0).tolist() == bounds[1].tolist()


def test_clip_statistics_of_a_first_pass_give_the_same_clip():
    """segment() partitions the ROI once (the up-front extreme check) and the packing
    reuses those statistics: the same values, bounds and counts as computing them again,
    whatever the order of the voxels."""
    from napari_gmmseg.preprocess import _clip_channels, clip_bounds

    rng = np.random.default_rng(3)
    raw = rng.gamma(2.0, 50.0, size=(20001, 3))
    raw[::991, 2] = 1e30  # extreme voxels in one channel
    _, _, stats = clip_bounds(raw[rng.permutation(raw.shape[0])], (0.5, 99.5))
    again = _clip_channels(raw, (0.5, 99.5))
    reused = _clip_channels(raw, (0.5, 99.5), stats)
    for a, b in zip(again, reused, strict=True):
        np.testing.assert_array_equal(a, b)
    other = _clip_channels(raw, (1.0, 99.0), stats)  # other percentiles: not reused
    np.testing.assert_array_equal(other[2], _clip_channels(raw, (1.0, 99.0))[2])


def test_component_argmax_is_torch_argmax_with_ties():
    from napari_gmmseg.em.result import component_argmax

    gen = torch.Generator().manual_seed(2)
    storage = torch.rand(3, 4, 1000, generator=gen).round(decimals=1)  # many ties
    soft = storage.transpose(1, 2)  # (S, N, K) view of (S, K, N), as the engine keeps it
    assert torch.equal(component_argmax(soft), soft.argmax(-1))
    assert torch.equal(component_argmax(soft.contiguous()), soft.argmax(-1))


def test_estep_in_one_tile_as_on_cuda_matches_the_tiled_pass():
    """CUDA takes all pixels as one tile (``chunk_pixels`` 2**62): the SVGMM path's buffer
    is sized by the tile, not by the nominal tile size."""
    from napari_gmmseg.em.estep import EStep, features

    gen = torch.Generator().manual_seed(0)
    s, n, m, k = 3, 500, 3, 4
    x = torch.randn(s, n, m, generator=gen)
    valid = torch.ones(s, n)
    wk = {"f": features(x, valid, "diag"), "n": valid.sum(1).double()}
    w = torch.full((s, k), 1.0 / k, dtype=torch.float64)
    mu = torch.randn(s, k, m, generator=gen, dtype=torch.float64)
    cov = torch.ones(s, k, m, dtype=torch.float64)
    outs = []
    for chunk in (100, 1 << 62):
        est = EStep(k, m, "diag", torch.float32, torch.device("cpu"), chunk_pixels=chunk)
        log_pi = torch.full((s, k, n), -float(np.log(k)))
        res = est.run(w, mu, cov, wk, log_pi=log_pi, upd=torch.tensor([True, True, False]))
        outs.append([*res, log_pi])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
