"""The front door (segment, segment_case) and the ``segment`` CLI."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gmmseg.errors import CaseLoadError, ModelError, OutputExistsError, RoiError
from napari_gmmseg.labels import CLASS_VALUES
from napari_gmmseg.segment import METHODS, segment, segment_case


@pytest.fixture(scope="module")
def case():
    from napari_gmmseg.phantom import make_case

    return make_case(1, n_slices=3, size=96)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.mark.parametrize("method", ["gmm", "svgmm"])
def test_segment_case_labels_the_roi_with_myops_values(case, method):
    fit = segment_case(case, method=method)
    roi = case.roi()
    assert fit.method == method and fit.labels.shape == case.shape
    assert set(np.unique(fit.labels[roi])) <= set(CLASS_VALUES)
    assert np.all(fit.labels[~roi] == 0) and np.all(fit.components[~roi] == -1)
    # Named, not arbitrary: blood pool and myocardium land on the right tissue.
    assert _dice(fit.labels == 500, case.labels == 500) > 0.85
    assert _dice(fit.labels == 200, case.labels == 200) > 0.6
    probs = fit.probabilities
    assert probs.shape == (*case.shape, 4)
    np.testing.assert_allclose(probs[roi].sum(-1), 1.0, atol=1e-5)
    assert np.all(probs[~roi] == 0)
    # Soft maps are in class order: their argmax gives the labels.
    np.testing.assert_array_equal(np.asarray(CLASS_VALUES)[probs[roi].argmax(-1)], fit.labels[roi])
    s = len(fit.slice_index)
    assert fit.means_.shape == (s, 4, 3) and fit.covariances_.shape == (s, 4, 3)
    assert fit.component_to_class.shape == (s, 4) and fit.finished.all()
    assert fit.nll_history.shape[0] == s and np.all(fit.n_iter_ >= 1)
    for key in ("method", "seed", "device", "version", "init", "tol", "case_id"):
        assert key in fit.params


def test_same_seed_same_labels_and_whole_slices(case):
    a = segment(
        case.images, None, channels=case.channels, init="random", seed=3, max_iter=15, method="gmm"
    )
    b = segment(
        case.images, None, channels=case.channels, init="random", seed=3, max_iter=15, method="gmm"
    )
    np.testing.assert_array_equal(a.labels, b.labels)
    assert np.all(a.labels > 0)  # whole slices: every pixel labelled


def test_full_covariance_prior_init_and_volume_mode(case):
    fit = segment_case(case, covariance_type="full", init="prior", method="gmm")
    assert fit.covariances_.shape[-2:] == (3, 3)
    vol = segment_case(case, per_slice=False, method="svgmm")
    assert np.all(vol.means_ == vol.means_[:1])  # one mixture shared by all slices
    assert set(np.unique(vol.labels[case.roi()])) <= set(CLASS_VALUES)


def test_progress_and_cancel(case):
    reports = []
    fit = segment_case(case, tol=0, max_iter=50, progress=reports.append, method="gmm")
    assert reports and reports[-1].slices_done == reports[-1].slices_total == 3
    stopped = segment_case(case, tol=0, max_iter=50, should_stop=lambda: True, method="gmm")
    assert stopped.cancelled and np.all(stopped.labels == 0)
    assert fit.finished.all()


def test_spatial_option_passes_through(case):
    fit = segment_case(case, spatial="mrf", beta=0.5, method="gmm")
    assert fit.params["engine"]["spatial"] == "mrf"


def _final_nll(fit) -> np.ndarray:
    return fit.nll_history[np.arange(len(fit.n_iter_)), fit.n_iter_ - 1]


@pytest.mark.parametrize("method", ["gmm", "svgmm"])
def test_restarts_pass_through_and_never_fit_worse(case, method):
    single = segment_case(case, method=method, seed=2)
    multi = segment_case(case, method=method, seed=2, n_init=4)
    engine = multi.params["engine"]
    assert engine["n_init"] == 4 and engine["seed"] == 2 and engine["init"] == "kmeans++"
    assert len(engine["best_restart"]) == len(multi.slice_index)
    assert np.all(_final_nll(multi) <= _final_nll(single))
    roi = case.roi()
    assert set(np.unique(multi.labels[roi])) <= set(CLASS_VALUES) and not multi.labels[~roi].any()
    np.testing.assert_array_equal(
        segment_case(case, method=method, seed=2, n_init=4).labels, multi.labels
    )


def test_clear_errors(case):
    img, roi = case.images, case.roi()
    bad = img.copy()
    bad[roi.nonzero()[0][0], roi.nonzero()[1][0], roi.nonzero()[2][0], 1] = np.nan
    with pytest.raises(CaseLoadError, match="NaN"):
        segment(bad, roi, method="gmm")
    with pytest.raises(ModelError, match="unknown method"):
        segment(img, roi, method="kmeans")
    with pytest.raises(ModelError, match="unknown init"):
        segment(img, roi, init="zeros", method="gmm")
    with pytest.raises(ModelError, match="unknown option"):
        segment(img, roi, max_epochs=3, method="gmm")
    with pytest.raises(ModelError, match="n_classes"):
        segment(img, roi, n_classes=0, method="gmm")
    with pytest.raises(ModelError, match="channel names"):
        segment(img, roi, channels=("bSSFP", "LGE"), method="gmm")
    with pytest.raises(ModelError, match="prior table has no channel"):
        segment(img, roi, channels=("bSSFP", "LGE", "FLAIR"), init="prior", method="gmm")
    with pytest.raises(RoiError, match="shape"):
        segment(img, roi[:, :-1], method="gmm")
    with pytest.raises(RoiError, match="empty"):
        segment(img, np.zeros_like(roi), method="gmm")
    tiny = np.zeros_like(roi)
    tiny[0, 10, 10:13] = True
    with pytest.raises(RoiError, match="fewer than the 4 classes"):
        segment(img, tiny, method="gmm")
    no_gt = type(case)(images=img, channels=case.channels)
    with pytest.raises(RoiError, match="ground-truth"):
        segment_case(no_gt)


def test_small_slices_are_skipped_not_fatal(case):
    roi = case.roi().copy()
    z_small = int(np.nonzero(roi.any((1, 2)))[0][-1])
    roi[z_small] = False
    roi[z_small, 40, 40:42] = True  # 2 pixels < 4 classes
    fit = segment(case.images, roi, channels=case.channels, method="gmm")
    assert fit.params["skipped_slices"] == [z_small]
    assert z_small not in fit.slice_index and np.all(fit.labels[z_small] == 0)


def test_deep_methods_dispatch_lazily(case, monkeypatch):
    import sys
    import types

    calls = {}

    def fake_fit_deep(batch, *, method, **options):
        from napari_gmmseg.mixture import fit_svgmm

        calls.update(method=method, **options)
        return fit_svgmm(batch, max_iter=3)

    fake = types.ModuleType("napari_gmmseg.deep")
    fake.fit_deep = fake_fit_deep
    monkeypatch.setitem(sys.modules, "napari_gmmseg.deep", fake)
    fit = segment_case(case, method="deepsvg-mu", max_epochs=2)
    assert fit.method == "deepsvg-mu" and calls["method"] == "deepsvg-mu"
    assert calls["max_epochs"] == 2 and calls["mu_data"].shape == (4, 3)
    assert set(np.unique(fit.labels[case.roi()])) <= set(CLASS_VALUES)
    assert set(METHODS) == {
        "gmm",
        "svgmm",
        "deepg",
        "deepsvg",
        "deepsvg-mu",
        "wall-first",
        "gmm-prior",
        "tissue-classifier",
        "tissue-net",
    }


def test_cli_writes_labels_on_the_bssfp_grid(case, tmp_path):
    from napari_gmmseg import io
    from napari_gmmseg.cli import main

    paths = {}
    for name, tag in (("bSSFP", "C0"), ("LGE", "DE"), ("T2", "T2")):
        paths[name] = tmp_path / f"c_{tag}.nii.gz"
        io.save_volume(case.image(name), case.geometry, paths[name])
    gt = tmp_path / "c_gd.nii.gz"
    io.save_labels(case.labels, case.geometry, gt)
    binary = tmp_path / "roi.nii.gz"
    io.save_labels(case.roi().astype(np.int16), case.geometry, binary)
    out = tmp_path / "out.nii.gz"
    args = [
        "segment",
        "--method",
        "gmm",
        "--bssfp",
        str(paths["bSSFP"]),
        "--lge",
        str(paths["LGE"]),
    ]
    args += ["--t2", str(paths["T2"]), "--roi", str(gt), "--out", str(out), "--quiet"]
    assert main(args) == 0
    labels = io.read_labels(out)
    roi = case.roi()
    assert labels.shape == case.shape
    assert set(np.unique(labels[roi])) <= set(CLASS_VALUES) and np.all(labels[~roi] == 0)
    assert main(args) == 1  # exists, no --force: refused
    args_bin = [a if a != str(gt) else str(binary) for a in args] + ["--force"]
    assert main(args_bin) == 0
    np.testing.assert_array_equal(io.read_labels(out), labels)  # same ROI, same seed
    with pytest.raises(OutputExistsError):
        io.save_labels(labels, case.geometry, out)
    restarts = [a if a != str(out) else str(tmp_path / "r.nii.gz") for a in args]
    assert main([*restarts, "--n-init", "3"]) == 0
    assert io.read_labels(tmp_path / "r.nii.gz").shape == case.shape
    deep = [*restarts, "--method", "deepsvg", "--n-init", "3", "--force"]
    assert main(deep) == 1  # refused before any work: restarts are an EM option


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("gmm", {"tol": 1e-6, "check_every": 1}),
        ("svgmm", {"tol": 1e-6, "check_every": 2}),
        ("gmm", {"tol": 1e-6, "spatial": "mrf", "beta": 0.5}),
        ("deepsvg", {"tol": 0.2, "lr": 1e-2, "max_epochs": 12, "min_epochs": 2}),
    ],
)
def test_progress_reports_label_finished_slices_as_the_final_fit(method, options):
    """Live fill: ``Progress.partial`` labels every finished slice exactly as the result."""
    if method.startswith("deep"):
        pytest.importorskip("monai")
    from napari_gmmseg.phantom import make_case

    small = make_case(0, n_slices=4, size=64)
    roi = small.roi()
    reports = []
    fit = segment(
        small.images,
        roi,
        channels=small.channels,
        method=method,
        progress=reports.append,
        **options,
    )
    assert len(set(fit.n_iter_.tolist())) > 1, "slices should finish at different checks"
    done = [r for r in reports if r.partial is not None]
    counts = [int(r.partial.finished.sum()) for r in done]
    assert counts == sorted(counts) and 1 <= counts[0] < len(fit.slice_index) == counts[-1]
    for r in reports:
        assert r.new_rows is None  # consumed by segment
        z_done = np.asarray(r.finished, dtype=np.int64)
        if r.partial is None:
            assert z_done.size == 0
            continue
        partial = r.partial
        np.testing.assert_array_equal(np.sort(partial.slice_index[partial.finished]), z_done)
        np.testing.assert_array_equal(partial.labels[z_done], fit.labels[z_done])
        others = np.setdiff1d(np.arange(small.shape[0]), z_done)
        assert not partial.labels[others].any()
        assert partial.labels[z_done][roi[z_done]].all()
