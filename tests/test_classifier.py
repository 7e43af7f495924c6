"""The learned tissue classifier: features, the .npz model, per-slice adaptation, the method, the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gmmseg.classifier import (
    FEATURE_NAMES,
    ClassifierOptions,
    TissueClassifier,
    default_classifier,
    learn_classifier,
    volume_features,
)
from napari_gmmseg.classifier.adapt import adapt_per_slice
from napari_gmmseg.classifier.learn import case_training_pixels
from napari_gmmseg.cli import main
from napari_gmmseg.errors import ModelError, OutputExistsError
from napari_gmmseg.labels import CLASS_VALUES, LV_ROI_VALUES
from napari_gmmseg.phantom import make_case, write_dataset
from napari_gmmseg.segment import segment_case


@pytest.fixture(scope="module")
def cases():
    return [make_case(seed=s, n_slices=3, size=80, noise=0.2, texture=0.1) for s in (0, 1, 2)]


@pytest.fixture(scope="module")
def phantom_model(cases):
    return learn_classifier(cases[:2], seed=0, epochs=4)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def test_features_do_not_depend_on_the_intensity_scale(cases):
    case = cases[0]
    roi = np.isin(case.labels, LV_ROI_VALUES)
    x, used = volume_features(case.images, roi, 1.25)
    assert x.shape == (roi.sum(), len(FEATURE_NAMES)) and used.sum() == roi.sum()
    x2, _ = volume_features(case.images * 7.5 + 100.0, roi, 1.25)
    np.testing.assert_allclose(x2, x, atol=1e-4)
    depth = x[:, FEATURE_NAMES.index("relative depth in ROI")]
    assert depth.min() > 0 and depth.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(volume_features(case.images, roi, (1.25, 1.25))[0], x)
    # non-square pixels: depth in cm follows each axis' size
    cm = FEATURE_NAMES.index("distance to ROI border (cm)")
    wide = volume_features(case.images, roi, (1.25, 2.5))[0][:, cm]
    assert x[:, cm].max() < wide.max() < 2 * x[:, cm].max()


def test_learning_is_seeded_and_the_file_round_trips(cases, phantom_model, tmp_path):
    import torch

    from napari_gmmseg._threads import cpu_threads

    with cpu_threads(2 if torch.get_num_threads() == 1 else 1):  # another core count
        again = learn_classifier(cases[:2], seed=0, epochs=4)
    for a, b in zip(phantom_model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    path = phantom_model.save(tmp_path / "m.npz")
    with pytest.raises(OutputExistsError):
        phantom_model.save(path)
    loaded = TissueClassifier.load(path)
    x, _ = case_training_pixels(cases[2])
    np.testing.assert_allclose(loaded.predict_proba(x), phantom_model.predict_proba(x), atol=1e-6)
    assert loaded.meta["cases"] == [cases[0].case_id, cases[1].case_id]
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="cannot read tissue classifier"):
        TissueClassifier.load(tmp_path / "bad.npz")


def test_a_model_for_other_features_is_refused(phantom_model):
    with pytest.raises(ModelError, match="takes 3 features"):
        TissueClassifier(
            (np.zeros((4, 3), np.float32),), (np.zeros(4, np.float32),), np.zeros(3), np.ones(3)
        )
    assert len(phantom_model.weights) == 3


def test_adaptation_follows_the_slice_contrast():
    """The classifier puts the class border at x = 0.75; this slice's classes meet at x = 1.5."""
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 2000)
    x = np.where(truth == 0, rng.normal(0.0, 0.5, truth.size), rng.normal(3.0, 0.5, truth.size))
    p1 = 1 / (1 + np.exp(-1.5 * (x - 0.75)))
    pi = np.stack([1 - p1, p1, np.zeros_like(p1), np.zeros_like(p1)], 1) * 0.98 + 0.005
    slice_id = np.zeros(truth.size, dtype=np.int64)
    r = adapt_per_slice(pi, x[:, None], slice_id)

    def border(p):
        return x[p.argmax(1) == 1].min()

    assert border(pi) == pytest.approx(0.75, abs=0.05)
    assert 1.2 < border(r) < 1.8
    assert (r.argmax(1) == truth).mean() > (pi.argmax(1) == truth).mean()
    np.testing.assert_array_equal(
        adapt_per_slice(pi, x[:, None], slice_id, iterations=0), pi.astype(np.float32)
    )
    # two slices at once give what each gives alone
    both = adapt_per_slice(
        np.concatenate([pi, pi[::-1]]),
        np.concatenate([x, x[::-1]])[:, None],
        np.repeat([0, 1], truth.size),
    )
    np.testing.assert_allclose(both[: truth.size], r, atol=1e-5)
    np.testing.assert_allclose(both[truth.size :], r[::-1], atol=1e-5)


def test_the_method_segments_a_held_out_phantom_case(cases, phantom_model, tmp_path):
    path = str(phantom_model.save(tmp_path / "m.npz"))
    case = cases[2]
    fit = segment_case(case, method="tissue-classifier", model=path, roi="gt")
    roi = np.isin(case.labels, LV_ROI_VALUES)
    assert set(np.unique(fit.labels[roi])) <= set(CLASS_VALUES)
    assert not fit.labels[~roi].any()
    for value in (500, 2221):
        assert _dice(fit.labels == value, case.labels == value) > 0.6, value
    assert fit.params["classifier"]["cases"] == [cases[0].case_id, cases[1].case_id]
    assert fit.params["method_options"]["model"] == path
    assert fit.probabilities.shape == (*roi.shape, 4)
    assert (fit.n_iter_ == 10).all() and fit.n_iter_.shape == (3,)
    again = segment_case(case, method="tissue-classifier", model=path, roi="gt")
    np.testing.assert_array_equal(again.labels, fit.labels)


def test_it_is_reachable_by_name(cases, phantom_model, tmp_path):
    """The previous default stays reachable, unchanged, as ``tissue-classifier``."""
    path = str(phantom_model.save(tmp_path / "m.npz"))
    fit = segment_case(cases[2], method="tissue-classifier", model=path, roi="gt")
    assert fit.method == fit.params["method"] == "tissue-classifier"
    assert "ignored_arguments" not in fit.params


def test_engine_arguments_a_pipeline_ignores_are_warned(cases, phantom_model, tmp_path):
    """``max_iter``/``init`` mean nothing to the classifier: said, recorded, not silent."""
    path = str(phantom_model.save(tmp_path / "m.npz"))
    kw = {"method": "tissue-classifier", "model": path, "roi": "gt"}
    plain = segment_case(cases[2], **kw)
    with pytest.warns(UserWarning, match=r"ignores init='random', max_iter=5; its options"):
        fit = segment_case(cases[2], init="random", max_iter=5, **kw)
    assert fit.params["ignored_arguments"] == {"init": "random", "max_iter": 5}
    np.testing.assert_array_equal(fit.labels, plain.labels)


def test_implausible_slices_are_flagged(cases, phantom_model, tmp_path):
    from napari_gmmseg.classifier.pipeline import slice_qc

    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    blood, wall = np.stack([r < 8] * 3), np.stack([(r >= 8) & (r < 14)] * 3)
    z = np.where(blood, 2.0, np.where(wall, -0.5, 0.0))
    z[1] = np.where(blood[1], -0.5, z[1])  # slice 1: the "pool" is as dark as the wall
    blood[2] = False  # slice 2: no pool at all
    with pytest.warns(UserWarning, match="slice 1: low_pool_contrast, slice 2: no_blood_pool"):
        flags = slice_qc(blood, wall, z)
    assert flags == [
        {"slice": 1, "flag": "low_pool_contrast"},
        {"slice": 2, "flag": "no_blood_pool"},
    ]
    path = str(phantom_model.save(tmp_path / "m.npz"))
    ok = segment_case(cases[2], method="tissue-classifier", model=path, roi="gt")
    assert ok.params["slice_qc"] == []


def test_options_are_checked():
    with pytest.raises(ModelError, match="smoothing_mm"):
        ClassifierOptions(smoothing_mm=-1.0)
    with pytest.raises(ModelError, match="adapt_iterations"):
        ClassifierOptions(adapt_iterations=-2)


def test_the_shipped_classifier_is_the_documented_one():
    clf = default_classifier()
    assert clf.meta["cases"] == [str(i) for i in range(3001, 3016)]
    assert clf.meta["seed"] == 0 and clf.meta["hidden"] == 64 and clf.meta["epochs"] == 30


def test_real_case_with_the_shipped_classifier(real_data_dir):
    """In-sample (3003 is among the 15 training cases): a floor against regressions only."""
    from napari_gmmseg.io import discover_cases

    src = next(s for s in discover_cases(real_data_dir) if s.case_id == "3003")
    case = src.load()
    fit = segment_case(case, method="tissue-classifier", roi="gt")
    lesion = np.isin(fit.labels, (1220, 2221)), np.isin(case.labels, (1220, 2221))
    assert _dice(*lesion) > 0.5
    assert _dice(fit.labels == 500, case.labels == 500) > 0.85


def test_cli_learns_and_segments(tmp_path, capsys):
    files = write_dataset(tmp_path / "ds", n_cases=2, n_slices=2, size=64)
    model = tmp_path / "m.npz"
    assert main(["classifier", str(tmp_path / "ds"), "--out", str(model), "--epochs", "2"]) == 0
    assert model.is_file() and "wrote" in capsys.readouterr().out
    assert main(["classifier", str(tmp_path / "ds"), "--out", str(model), "--epochs", "2"]) != 0
    assert "exists" in capsys.readouterr().err
    out = tmp_path / "seg.nii.gz"
    f = files[0]
    args = ["segment", "--bssfp", str(f["bSSFP"]), "--lge", str(f["LGE"]), "--t2", str(f["T2"]),
            "--roi", str(f["mask"]), "--out", str(out), "--quiet"]  # fmt: skip
    assert main([*args, "--method", "tissue-classifier", "--model", str(model)]) == 0
    assert out.is_file()
