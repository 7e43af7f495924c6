"""Automatic LV ROI: QC rules, cleaning, the shipped network on a phantom and a real case,
``segment --roi auto`` and ``evaluate --roi auto`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_gmmseg import autoroi
from napari_gmmseg.errors import RoiError

SPACING = (10.0, 1.0, 1.0)


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _lv_slice(shape, r_pool, r_epi, *, rv=True, open_ring=False):
    """One MyoPS slice: blood pool disc in a myocardial ring, RV beside it."""
    out = np.zeros(shape, np.int32)
    cy, cx = shape[0] // 2, shape[1] // 2
    out[_disc(shape, cy, cx, r_epi)] = 200
    out[_disc(shape, cy, cx, r_pool)] = 500
    if open_ring:  # cut the ring open on the right: the pool touches background
        out[cy - r_pool // 2 : cy + r_pool // 2, cx : cx + r_epi + 1][
            out[cy - r_pool // 2 : cy + r_pool // 2, cx : cx + r_epi + 1] == 200
        ] = 0
    if rv:
        out[_disc(shape, cy, cx - r_epi - 12, 8) & (out == 0)] = 600
    return out


@pytest.fixture(scope="module")
def qc_volume():
    shape = (96, 96)
    return np.stack(
        [
            _lv_slice(shape, 10, 15),  # 0 fine
            _lv_slice(shape, 10, 15, rv=False),  # 1 no RV: warns only
            _lv_slice(shape, 10, 15, open_ring=True),  # 2 ring open
            np.zeros(shape, np.int32),  # 3 no LV
            _lv_slice(shape, 24, 32),  # 4 area 4.5x its only neighbour with an LV
            _lv_slice(shape, 10, 15),  # 5 fine (one far and one close neighbour)
            _lv_slice(shape, 10, 15),  # 6 fine
        ]
    )


def test_qc_flags_each_rule_and_skips_failing_slices(qc_volume):
    roi, qc = autoroi.qc_roi(qc_volume, SPACING)
    flags = [q.flags for q in qc]
    assert flags == [
        (),
        ("rv_missing",),
        ("ring_open",),
        ("no_lv", "rv_missing"),
        ("area_jump",),
        (),
        (),
    ]
    assert [q.ok for q in qc] == [True, True, False, False, False, True, True]
    assert qc[0].area_mm2 == pytest.approx(np.isin(qc_volume[0], (500, 200)).sum())
    assert qc[0].ring_closed == 1.0 and qc[2].ring_closed < autoroi.MIN_RING_CLOSED
    assert "does not enclose the blood pool" in qc[2].reason
    assert "no LV found" in qc[3].reason and "differs more than" in qc[4].reason
    # the ROI is the LV (500 + 200) of the passing slices only
    lv = np.isin(qc_volume, (500, 200))
    assert roi.dtype == bool and not roi[[2, 3, 4]].any()
    np.testing.assert_array_equal(roi[[0, 1, 5, 6]], lv[[0, 1, 5, 6]])
    text = autoroi.format_qc(qc)
    assert "slice 2: SKIPPED" in text and "slice 0: ok" in text
    assert qc[2].as_row()["flags"] == "ring_open" and qc[2].as_row()["ok"] is False


def test_clean_labels_keeps_largest_lv_fills_holes_and_grows():
    net = np.zeros((2, 64, 64), np.int64)
    net[:, _disc((64, 64), 32, 32, 12)] = 2  # myocardium
    net[:, _disc((64, 64), 32, 32, 7)] = 3  # blood pool
    net[0, 31:34, 31:34] = 0  # a hole in the pool (papillary muscle as background)
    net[1, 29:31, 34:36] = 2  # a papillary muscle labelled myocardium
    net[:, 2:6, 2:6] = 3  # a small stray LV blob
    net[:, 20:44, 50:60] = 1  # RV
    out = autoroi.clean_labels(net, SPACING, grow_mm=0)
    assert set(np.unique(out)) == {0, 200, 500, 600}
    assert not out[:, 2:6, 2:6].any(), "stray blob kept"
    assert (out[0, 31:34, 31:34] == 500).all(), "hole not filled as blood pool"
    assert (out[1, 29:31, 34:36] == 500).all(), "papillary muscle not blood pool"
    np.testing.assert_array_equal(out[1] == 500, _disc((64, 64), 32, 32, 7))  # papillary filled
    grown = autoroi.clean_labels(net, SPACING, grow_mm=2.0)
    added = np.isin(grown, (500, 200)) & ~np.isin(out, (500, 200))
    assert added.any() and (grown[added] == 200).all()  # growth is myocardium
    ring = _disc((64, 64), 32, 32, 13) & ~_disc((64, 64), 32, 32, 12)
    assert np.isin(grown[1][ring], (200, 600)).all()  # grown by >= 1 px all around


def test_network_on_phantom_finds_lv_and_qc_skips_a_bad_case():
    from napari_gmmseg.phantom import make_case
    from napari_gmmseg.segment import segment_case

    case = make_case(0, n_slices=3)  # 128 x 128, 1.25 mm
    auto = autoroi.find_roi(case.images, case.channels, case.spacing_mm)
    assert auto.labels.shape == case.shape and set(np.unique(auto.labels)) <= {0, 200, 500, 600}
    d = autoroi.roi_dice(auto.labels, case.labels)
    assert d["lv"] > 0.85 and d["rv"] > 0.8, d  # measured 0.91 / 0.91 on 5 slices
    assert all(q.ok for q in auto.qc), autoroi.format_qc(auto.qc)
    # a 64-pixel phantom is too coarse for the network: QC catches the open rings
    small = make_case(0, n_slices=3, size=64)
    fit = segment_case(small, roi="auto", method="gmm", seed=0)
    qc = fit.params["roi_qc"]
    skipped = [row["slice"] for row in qc if not row["ok"]]
    assert skipped and all(
        set(qc[z]["flags"].split(";")) & set(autoroi.FAILING_FLAGS) for z in skipped
    )
    assert not np.asarray(fit.labels)[skipped].any(), "a slice failing QC was segmented"
    assert np.asarray(fit.labels).any()
    assert fit.params["roi"] == "auto"


def test_find_roi_errors_name_the_problem():
    images = np.zeros((2, 32, 32, 2), np.float32)
    with pytest.raises(RoiError, match="bSSFP"):
        autoroi.find_roi(images, ("LGE", "T2"), SPACING)
    with pytest.raises(RoiError, match="empty"):
        autoroi.find_roi(images, ("bSSFP", "LGE"), SPACING)


def test_real_case_lv_roi_dice(real_data_dir):
    from napari_gmmseg.io import discover_cases

    src = next(s for s in discover_cases(real_data_dir) if s.case_id == "3001")
    case = src.load()
    auto = autoroi.find_roi(case.images, case.channels, case.spacing_mm)
    d = autoroi.roi_dice(auto.labels, case.labels)
    # measured 0.958 (LV), 0.81 (myocardium), 0.90 (RV); thresholds loose but meaningful
    assert d["lv"] > 0.93 and d["myocardium"] > 0.7 and d["rv"] > 0.8, d
    assert all(q.ok for q in auto.qc), autoroi.format_qc(auto.qc)


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory):
    from napari_gmmseg.phantom import write_dataset

    root = tmp_path_factory.mktemp("ph")
    write_dataset(root, n_cases=1, seed=0, n_slices=3)
    return root


def test_cli_segment_roi_auto_end_to_end(phantom_dataset, tmp_path, capsys):
    from napari_gmmseg import io
    from napari_gmmseg.cli import main
    from napari_gmmseg.phantom import case_paths

    paths = case_paths(phantom_dataset, "1001")
    out, roi_out = tmp_path / "seg.nii.gz", tmp_path / "roi.nii.gz"
    argv = ["segment", "--bssfp", str(paths["bSSFP"]), "--lge", str(paths["LGE"])]
    argv += ["--t2", str(paths["T2"]), "--roi", "auto", "--roi-out", str(roi_out)]
    argv += ["--out", str(out), "--seed", "0"]
    assert main(argv) == 0
    assert "automatic ROI" in capsys.readouterr().err
    seg, geometry = io.read_labels(out, with_geometry=True)
    roi_labels = io.read_labels(roi_out)
    lv, rv = np.isin(roi_labels, (500, 200)), roi_labels == 600
    assert set(np.unique(seg)) == {0, 200, 500, 600, 1220, 2221}
    assert (seg[lv] > 0).all() and (seg[lv] != 600).all()
    np.testing.assert_array_equal(seg == 600, rv)  # the RV found, for the AHA orientation
    assert not seg[~lv & ~rv].any()
    assert geometry.same_grid(io.load_case(paths["bSSFP"]).geometry)
    assert main(argv) != 0  # never overwrites unasked
    # ... so `report` orients from the RV without a manual mask or point (without the
    # RV it refuses); slice 2's RV does not touch its myocardium: from its neighbour
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "slice 2: oriented from slice 1" in capsys.readouterr().err.splitlines()


def test_evaluate_roi_auto_writes_qc_dice_and_reuses_an_edited_roi(phantom_dataset, tmp_path):
    from napari_gmmseg import io
    from napari_gmmseg.batch import evaluate_dataset

    out = tmp_path / "eval"
    ev = evaluate_dataset(phantom_dataset, ["gmm"], out, roi="auto", progress=False, plots=False)
    assert not ev.failures
    info = json.loads((out / "auto_roi" / "1001.json").read_text(encoding="utf-8"))
    assert info["dice"]["lv"] > 0.85 and len(info["qc"]) == 3
    assert info["seconds_per_slice"] > 0
    qc_csv = (out / "auto_roi" / "qc.csv").read_text(encoding="utf-8").splitlines()
    assert qc_csv[0].startswith("case,slice,roi_area_mm2") and len(qc_csv) == 4
    assert "Automatic ROI" in ev.table and "LV ROI Dice" in ev.table
    assert ev.summary["roi"] == "auto"
    # erase the LV of slice 1 in the kept ROI file: a re-run reuses it, QC skips the slice
    roi_file = out / "auto_roi" / "1001.nii.gz"
    labels, geometry = io.read_labels(roi_file, with_geometry=True)
    labels[1] = 0
    io.save_labels(labels, geometry, roi_file, overwrite=True)
    evaluate_dataset(
        phantom_dataset, ["gmm"], out, roi="auto", progress=False, plots=False, force=True
    )
    info = json.loads((out / "auto_roi" / "1001.json").read_text(encoding="utf-8"))
    assert info["skipped_slices"] == []  # force recomputes the ROI from the images
    labels[1] = 0
    io.save_labels(labels, geometry, roi_file, overwrite=True)
    (out / "gmm" / "1001.nii.gz").unlink()
    evaluate_dataset(phantom_dataset, ["gmm"], out, roi="auto", progress=False, plots=False)
    info = json.loads((out / "auto_roi" / "1001.json").read_text(encoding="utf-8"))
    assert info["source"].startswith("reused") and info["skipped_slices"] == [1]
    seg = io.read_labels(out / "gmm" / "1001.nii.gz")
    assert not seg[1].any() and seg[0].any()


def test_shipped_network_is_myoparis_file_with_its_licence():
    import hashlib

    path = autoroi.model_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == autoroi.MODEL_SHA256
    licence = (path.parent / "LICENSE-myopari.txt").read_text(encoding="utf-8")
    assert "MIT License" in licence and "Marcos Antonio Obando" in licence
