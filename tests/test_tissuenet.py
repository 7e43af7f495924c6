"""The tissue network (default method): crops, model files, training, pipeline, intervals."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_gmmseg.errors import ModelError, OutputExistsError
from napari_gmmseg.labels import LV_ROI_VALUES
from napari_gmmseg.phantom import make_case


@pytest.fixture(scope="module")
def case():
    return make_case(3, n_slices=3, size=96)


@pytest.fixture(scope="module")
def roi(case):
    return np.isin(case.labels, LV_ROI_VALUES)


def test_crops_round_trip_keeps_values_inside_the_roi(case, roi):
    """Native -> crop (0.8 mm) -> native returns a smooth image inside the ROI."""
    import torch

    from napari_gmmseg.tissuenet.crops import crop_geometry, from_crops, to_crops

    z, y, x = roi.shape
    yy, xx = np.mgrid[0:y, 0:x].astype(np.float32)
    smooth = np.broadcast_to(np.sin(yy / 9.0) + np.cos(xx / 7.0), (z, y, x))[:, None].copy()
    geo = crop_geometry(roi, case.spacing_mm)
    assert geo.size % 16 == 0 and geo.size >= 128
    assert list(geo.slices) == [i for i in range(z) if roi[i].any()]
    crops = to_crops(torch.from_numpy(smooth[geo.slices]), torch.from_numpy(geo.theta()), geo.size)
    back = from_crops(crops, geo).numpy()[:, 0]
    inside = roi[geo.slices]
    np.testing.assert_allclose(back[inside], smooth[geo.slices, 0][inside], atol=0.05)


def test_network_inputs_need_the_three_sequences(case, roi):
    from napari_gmmseg.tissuenet.model import network_inputs

    x = network_inputs(case.images, roi, case.channels)
    assert x.shape == (roi.shape[0], 4, *roi.shape[1:]) and x.dtype == np.float32
    assert np.array_equal(x[:, 3] > 0, roi)
    inside = x[:, 1][roi]
    assert abs(inside.mean()) < 1e-3  # z-scored over the ROI
    with pytest.raises(ModelError, match="missing: T2"):
        network_inputs(case.images[..., :2], roi, case.channels[:2])


def _tiny_options(**kw):
    from napari_gmmseg.tissuenet.model import NetConfig
    from napari_gmmseg.tissuenet.train import TrainOptions

    return TrainOptions(batch=2, crop_px=64, config=NetConfig(features=(4, 8, 16)), **kw)


def test_training_is_deterministic_and_resumes_exactly(case, tmp_path):
    from napari_gmmseg.tissuenet.train import make_training_set, train_member

    data = make_training_set([case])
    assert data.inputs.shape[1:] == (4, 176, 176) and data.targets.shape[1] == 5
    in_roi = data.targets.sum(1)
    assert np.all(in_roi <= 1 + 1e-5) and in_roi.max() > 0.99
    whole = train_member(data, _tiny_options(steps=4), tmp_path / "a.ckpt")
    again = train_member(data, _tiny_options(steps=4), tmp_path / "b.ckpt", checkpoint_every=2)
    for k in whole:
        np.testing.assert_array_equal(whole[k], again[k])
    # Interrupted after 2 steps, then resumed to 4: the same weights as in one go.
    with pytest.raises(KeyboardInterrupt):
        train_member(
            data,
            _tiny_options(steps=4),
            tmp_path / "c.ckpt",
            checkpoint_every=2,
            progress=_stop_at(2),
        )
    resumed = train_member(data, _tiny_options(steps=4), tmp_path / "c.ckpt")
    for k in whole:
        np.testing.assert_allclose(whole[k], resumed[k], rtol=1e-6, atol=1e-7)
    with pytest.raises(ModelError, match="other options"):
        train_member(data, _tiny_options(steps=4, lr=1e-3), tmp_path / "c.ckpt")


def _stop_at(n):
    """A progress callback that interrupts training after step ``n`` (as Ctrl+C would)."""

    def progress(step, steps, loss):
        assert np.isfinite(loss)
        if step == n:
            raise KeyboardInterrupt

    return progress


@pytest.fixture
def tiny_ensemble(case):
    import torch

    from napari_gmmseg.tissuenet.model import NetConfig, TissueNetEnsemble, build_network

    torch.manual_seed(0)
    cfg = NetConfig(features=(4, 8, 16))
    states = [
        {k: v.numpy().copy() for k, v in build_network(cfg).state_dict().items()} for _ in range(2)
    ]
    return TissueNetEnsemble(cfg, states, {"members": [{"fold": 0}, {"fold": 1}]})


def test_ensemble_file_round_trip_checksum_and_no_overwrite(tiny_ensemble, tmp_path):
    from napari_gmmseg.tissuenet.model import TissueNetEnsemble

    path = tiny_ensemble.save(tmp_path / "net.npz")
    loaded = TissueNetEnsemble.load(path)
    assert len(loaded.states) == 2 and loaded.config == tiny_ensemble.config
    for a, b in zip(loaded.states, tiny_ensemble.states, strict=True):
        for k in a:
            np.testing.assert_allclose(a[k], b[k].astype(np.float16).astype(np.float32))
    assert TissueNetEnsemble.load(path, sha256=loaded.meta["sha256"]).states
    with pytest.raises(ModelError, match="checksum"):
        TissueNetEnsemble.load(path, sha256="0" * 64)
    with pytest.raises(OutputExistsError):
        tiny_ensemble.save(path)
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"junk\.npz"):
        TissueNetEnsemble.load(tmp_path / "junk.npz")


def test_shipped_model_matches_its_checksum():
    import hashlib

    from napari_gmmseg.tissuenet.model import SHIPPED_PATH, SHIPPED_SHA256, load_ensemble

    assert hashlib.sha256(SHIPPED_PATH.read_bytes()).hexdigest() == SHIPPED_SHA256
    ens = load_ensemble()
    assert len(ens.states) == 5 and len(ens.meta["members"]) == 5
    held_out = [set(m["train_cases"]) for m in ens.meta["members"]]
    assert len(set.union(*held_out)) == 25  # the five folds of myops_dev between them


def test_pipeline_labels_only_inside_the_roi_and_deterministic(case, roi, tiny_ensemble, tmp_path):
    from napari_gmmseg.segment import segment_case

    model = str(tiny_ensemble.save(tmp_path / "net.npz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = segment_case(case, method="tissue-net", model=model)
        b = segment_case(case, method="tissue-net", model=model)
    assert np.array_equal(a.labels, b.labels)
    assert set(np.unique(a.labels)) <= {0, 200, 500, 1220, 2221}
    assert not a.labels[~roi].any()
    assert len(a.params["member_burden"]) == 2
    assert a.params["burden_interval"] is None  # a model of one's own: no stated error


def test_default_method_on_a_real_case_states_an_interval(real_data_dir):
    """The shipped ensemble on a real case: a plausible burden inside its 95 % interval."""
    from napari_gmmseg.io import discover_cases
    from napari_gmmseg.metrics import burden
    from napari_gmmseg.segment import segment_case

    case = discover_cases(real_data_dir)[0].load()
    fit = segment_case(case)
    assert fit.params["method"] == "tissue-net"
    b = burden(fit.labels, case.spacing_mm)
    ci = fit.params["burden_interval"]
    for key, q in (("scar_pct", "scar_pct"), ("edema_pct", "edema_pct")):
        assert 0 <= ci[key][0] <= b[q] <= ci[key][1] <= 100
    assert ci["area_at_risk_pct"][0] <= b["scar_edema_pct"] <= ci["area_at_risk_pct"][1]
    gt = burden(np.where(np.isin(case.labels, LV_ROI_VALUES), case.labels, 0), case.spacing_mm)
    assert abs(b["scar_edema_pct"] - gt["scar_edema_pct"]) < 25


def test_concordance_and_interval_arithmetic():
    from napari_gmmseg.accuracy import interval_from_residuals
    from napari_gmmseg.agreement import concordance

    ref = np.array([0.0, 10.0, 20.0, 30.0])
    c = concordance(0.5 * ref + 10.0, ref)  # a compressed range: the default's old failure
    assert c.slope == pytest.approx(0.5) and c.intercept == pytest.approx(10.0)
    assert c.pearson == pytest.approx(1.0) and c.ccc < 0.8
    assert concordance(ref, ref).ccc == pytest.approx(1.0)
    assert np.isnan(concordance([1.0], [1.0]).ccc)
    assert interval_from_residuals(20.0, -5.0, 7.0) == (13.0, 25.0)
    lo, hi = interval_from_residuals(20.0, -5.0, 7.0, spread_sd=3.0)
    assert lo < 13.0 and hi > 25.0 and (hi - lo) / 2 == pytest.approx(np.hypot(6.0, 5.88))
    assert interval_from_residuals(1.0, -5.0, 7.0)[0] == 0.0


def test_folds_file_is_a_partition_of_the_development_set(repo_root):
    folds = json.loads((repo_root / "benchmarks" / "folds_myops_dev.json").read_text())["folds"]
    ids = [c for f in folds for c in f]
    assert len(folds) == 5 and sorted(ids) == [str(i) for i in range(3001, 3026)]


def test_segment_writes_what_report_needs_and_report_drops_a_stale_interval(
    sample_data_dir, tmp_path, capsys
):
    """``segment`` leaves ``OUT.json`` (method, ROI, intervals); ``report`` states them, but
    not for labels edited since."""
    from napari_gmmseg import io
    from napari_gmmseg.cli import main
    from napari_gmmseg.cli.report import _segmentation_record

    t = sample_data_dir / "train25"
    out = tmp_path / "seg.nii.gz"
    args = ["segment", "--bssfp", str(t / "myops_training_1001_C0.nii.gz")]
    args += ["--lge", str(t / "myops_training_1001_DE.nii.gz")]
    args += ["--t2", str(t / "myops_training_1001_T2.nii.gz")]
    args += ["--roi", str(sample_data_dir / "train25_myops_gd/myops_training_1001_gd.nii.gz")]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    record = io.read_sidecar(out)
    assert record["method"] == "tissue-net" and record["roi"] == "manual LV ROI"
    ci = record["burden_interval"]
    assert ci["scar_pct"][0] <= record["burden"]["scar_pct"] <= ci["scar_pct"][1]
    assert f"95 % interval {ci['scar_pct'][0]:.1f}-{ci['scar_pct'][1]:.1f}" in printed
    assert main([*args, "--out", str(out), "--quiet"]) == 1  # the sidecar is not replaced either
    assert "exists" in capsys.readouterr().err
    labels = io.read_labels(out)
    spacing = io.read_volume(out)[1].spacing_mm
    assert _segmentation_record(out, labels, spacing)["burden_interval"] == ci
    edited = np.where(labels == 200, 2221, labels)
    assert "burden_interval" not in _segmentation_record(out, edited, spacing)
    assert "labels changed" in capsys.readouterr().err
