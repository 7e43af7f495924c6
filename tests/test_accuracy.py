"""The burden read-out and the cross-validated error stated beside it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_gmmseg.accuracy import (
    ACCURACY_PATH,
    ROI_SOURCES,
    burden_readout,
    load_stated_accuracy,
    stated_accuracy_for,
)
from napari_gmmseg.methods import DEFAULT_METHOD

_DEFAULT_PARAMS = {
    "method": DEFAULT_METHOD,
    "method_options": {},
    "channels": ["bSSFP", "LGE", "T2"],
}


def test_the_shipped_statements_cover_the_default_for_both_kinds_of_roi():
    entries = {(s.method, s.roi): s for s in load_stated_accuracy()}
    for roi in ROI_SOURCES:
        s = entries[(DEFAULT_METHOD, roi)]
        assert s.n_cases == 25 and "5-fold by case" in s.protocol
        for ba in (s.scar_pct, s.edema_pct):
            assert ba.n == s.n_cases
            assert ba.loa_low < ba.bias < ba.loa_high
            assert 0 < ba.mae < 30 and ba.sd > 0
        assert 0 < s.scar_dice < 1 and 0 < s.lesion_dice < 1
        assert "cv_tissue.py" in s.command
        for q in ("scar_pct", "edema_pct", "scar_edema_pct"):
            q_low, q_high = s.residual_quantiles[q]
            assert q_low < 0 < q_high
    # the file is the one home of the numbers: the sentence quotes them
    s = entries[(DEFAULT_METHOD, "manual")]
    text = s.sentence()
    assert f"{s.scar_pct.mae:.1f}" in text and f"{s.edema_pct.loa_high:+.0f}" in text
    assert "manual LV ROI" in text and "5-fold by case" in text
    raw = json.loads(ACCURACY_PATH.read_text(encoding="utf-8"))
    assert len(raw["entries"]) == len(entries)  # one entry per (method, ROI)


def test_the_statement_applies_only_to_the_settings_it_was_measured_with():
    assert stated_accuracy_for(_DEFAULT_PARAMS, "manual").roi == "manual"
    assert stated_accuracy_for(_DEFAULT_PARAMS, "auto").roi == "auto"
    # the geometry the CLI passes is not an option of the measurement
    with_spacing = {**_DEFAULT_PARAMS, "method_options": {"spacing_mm": [8.0, 1.0, 1.0]}}
    assert stated_accuracy_for(with_spacing, "manual") is not None
    # an option spelled out at its default value is still the default
    spelled = {**_DEFAULT_PARAMS, "method_options": {"adapt_iterations": 10}}
    assert stated_accuracy_for(spelled, "manual") is not None
    not_measured = [
        ({**_DEFAULT_PARAMS, "method_options": {"flips": False}}, "manual"),
        ({**_DEFAULT_PARAMS, "method_options": {"model": "mine.npz"}}, "manual"),
        ({**_DEFAULT_PARAMS, "presence": {"rule": "pv-contrast"}}, "manual"),
        ({**_DEFAULT_PARAMS, "channels": ["bSSFP", "LGE"]}, "manual"),
        ({**_DEFAULT_PARAMS, "method": "deepsvg"}, "manual"),
        ({**_DEFAULT_PARAMS, "method": "no-such-method"}, "manual"),
        (_DEFAULT_PARAMS, None),  # whole slices
        (_DEFAULT_PARAMS, "drawn somehow"),
    ]
    for params, roi in not_measured:
        assert stated_accuracy_for(params, roi) is None, (params, roi)


def test_em_statements_need_the_engine_defaults_too():
    entries = {(s.method, s.roi) for s in load_stated_accuracy()}
    if ("gmm", "manual") not in entries:
        pytest.skip("no gmm statement shipped")
    em = {
        "method": "gmm",
        "method_options": {},
        "channels": ["bSSFP", "LGE", "T2"],
        "n_classes": 4,
        "covariance_type": "diag",
        "init": "kmeans++",
        "tol": 1e-3,
        "max_iter": 100,
        "per_slice": True,
    }
    assert stated_accuracy_for(em, "manual").method == "gmm"
    for change in ({"n_classes": 5}, {"max_iter": 10}, {"covariance_type": "full"}):
        assert stated_accuracy_for({**em, **change}, "manual") is None, change


def test_burden_readout_gives_volumes_and_percent_of_lv_myocardium():
    labels = np.zeros((2, 10, 10), dtype=np.int32)
    labels[0, :5] = 200  # 50 healthy
    labels[0, 5:7] = 2221  # 20 scar
    labels[1, :3] = 1220  # 30 edema
    labels[1, 3:8] = 500  # blood: not myocardium
    text = burden_readout(labels, (10.0, 2.0, 2.0))  # 40 uL per voxel
    # myocardium 100 voxels = 4.0 mL; scar 0.8 mL = 20 %; edema 1.2 mL = 30 %
    # area at risk = scar ∪ edema = 50 %; salvage index (50 - 20) / 50 = 60 %
    assert text == (
        "LV myocardium 4.0 mL; scar 0.8 mL, 20.0 % of LV myocardium; edema 1.2 mL, 30.0 %; "
        "area at risk 50.0 %; salvage index 60 % of the area at risk"
    )
    assert "no burden" in burden_readout(np.zeros((1, 4, 4), dtype=np.int32), (1, 1, 1))


def test_burden_readout_shows_a_reported_interval_and_nothing_without_one():
    from napari_gmmseg.accuracy import burden_summary

    labels = np.zeros((1, 10, 10), dtype=np.int32)
    labels[0, :5] = 200
    labels[0, 5:7] = 2221
    labels[0, 7:] = 1220
    interval = {"scar_pct": [15.0, 25.5], "edema_pct": [20, 40], "area_at_risk_pct": [40, 60]}
    with_ci = burden_summary(labels, (1, 1, 1), {"burden_interval": interval})
    assert with_ci.pct("scar_pct") == "20.0 % (95 % interval 15.0-25.5)"
    assert "95 % interval 20.0-40.0" in with_ci.headline()
    assert "95 % interval 40.0-60.0" in burden_readout(labels, (1, 1, 1), with_ci_params(interval))
    plain = burden_summary(labels, (1, 1, 1), {"method": "gmm"})
    assert plain.interval == {} and "interval" not in plain.line()
    assert plain.headline() == "scar 20.0 %   edema 30.0 %"
    # a malformed entry is ignored, not shown
    assert burden_summary(labels, (1, 1, 1), {"burden_interval": {"scar_pct": "x"}}).interval == {}


def with_ci_params(interval):
    return {"burden_interval": interval}


def test_salvage_index_is_the_unscarred_share_of_the_area_at_risk():
    from napari_gmmseg.metrics import salvage_index

    assert salvage_index(20.0, 50.0) == pytest.approx(0.6)
    assert salvage_index(0.0, 30.0) == 1.0
    assert np.isnan(salvage_index(0.0, 0.0))
    assert np.isnan(salvage_index(float("nan"), 10.0))


def test_segment_cli_prints_the_burden_and_its_stated_error(real_data_dir, tmp_path, capsys):
    from napari_gmmseg.cli import main
    from napari_gmmseg.io import discover_cases

    src = next(s for s in discover_cases(real_data_dir) if s.case_id == "3003")
    out = tmp_path / "seg.nii.gz"
    args = ["segment", "--bssfp", str(src.sequences["bSSFP"]), "--lge", str(src.sequences["LGE"])]
    args += ["--t2", str(src.sequences["T2"]), "--roi", str(src.mask), "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    burden_line = next(line for line in printed.splitlines() if line.startswith("burden: "))
    assert "LV myocardium" in burden_line and "% of LV myocardium" in burden_line
    assert "95 % interval" in burden_line
    stated = stated_accuracy_for(_DEFAULT_PARAMS, "manual")
    assert stated.sentence() in printed
    # another setting: the same read-out, and no error claimed for it
    assert main([*args[:-1], str(tmp_path / "b.nii.gz"), "--adapt-iterations", "3"]) == 0
    printed = capsys.readouterr().out
    assert "burden: LV myocardium" in printed and "no burden error was measured" in printed
    assert "95 % interval" not in printed
    assert stated.sentence() not in printed
