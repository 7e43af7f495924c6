"""Scribble refinement: only touched slices change, strokes are hard constraints, no-op says so,
the CLI's --scribbles equals the Python API."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_gmmseg.errors import GeometryError, ModelError
from napari_gmmseg.labels import SCAR
from napari_gmmseg.refine import check_scribbles, last_summary, merge_refined, refine


@pytest.fixture(scope="module")
def case_fit():
    from napari_gmmseg.phantom import make_case
    from napari_gmmseg.segment import segment_case

    case = make_case(1, n_slices=3, size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = segment_case(case, roi="gt", method="tissue-classifier")
    return case, fit


def _scar_stroke(fit, z: int, n: int = 8) -> np.ndarray:
    """A scar stroke on ``n`` healthy-myocardium pixels of slice ``z``."""
    s = np.zeros(fit.labels.shape, np.int32)
    ys, xs = np.nonzero(fit.labels[z] == 200)
    s[z, ys[:n], xs[:n]] = SCAR.value
    return s


def test_only_touched_slices_change_and_strokes_are_clamped(case_fit):
    case, fit = case_fit
    before = fit.labels.copy()
    strokes = _scar_stroke(fit, 1)
    out = refine(fit, strokes, case)
    np.testing.assert_array_equal(fit.labels, before)  # the input is not modified
    for z in (0, 2):
        np.testing.assert_array_equal(out.labels[z], fit.labels[z])
        np.testing.assert_array_equal(out.probabilities[z], fit.probabilities[z])
    assert np.all(out.labels[strokes > 0] == SCAR.value)
    assert not np.all(fit.labels[strokes > 0] == SCAR.value)
    summary = last_summary(out)
    assert summary.slices == (1,) and summary.changed and summary.stroke_voxels == {"scar": 8}
    assert summary.changed_voxels == int((out.labels != fit.labels).sum())
    assert "changed on slice 1" in summary.message


def test_refine_without_strokes_or_agreeing_says_so(case_fit):
    case, fit = case_fit
    out = refine(fit, np.zeros(fit.labels.shape, np.int32), case)
    np.testing.assert_array_equal(out.labels, fit.labels)
    assert last_summary(out).message == "refine: no strokes, nothing to refine"
    # strokes that repeat the fit's labels over a whole slice
    s = np.zeros(fit.labels.shape, np.int32)
    s[1] = fit.labels[1]
    same = refine(fit, s, case)
    np.testing.assert_array_equal(same.labels, fit.labels)
    assert last_summary(same).message.startswith("refine changed nothing")


def test_merging_per_slice_refines_equals_one_refine(case_fit):
    case, fit = case_fit
    a, b = _scar_stroke(fit, 0), _scar_stroke(fit, 2)
    both = refine(fit, a + b, case)
    step = merge_refined(refine(fit, a, case), refine(fit, b, case))
    np.testing.assert_array_equal(step.labels, both.labels)
    assert [r["slices"] for r in step.params["refine"]] == [[0], [2]]


def test_bad_scribbles_are_refused_in_one_line(case_fit):
    case, fit = case_fit
    bad = np.zeros(fit.labels.shape, np.int32)
    bad[0, 0, 0] = 600
    with pytest.raises(ModelError, match=r"strokes.nii.gz: holds values \[600\]"):
        check_scribbles(bad, fit.labels.shape, name="strokes.nii.gz")
    with pytest.raises(GeometryError, match="not the case's grid"):
        refine(fit, bad[:2], case)


@pytest.mark.slow
def test_cli_scribbles_equals_the_api(case_fit, tmp_path, capsys):
    from napari_gmmseg import io
    from napari_gmmseg.cli import main
    from napari_gmmseg.segment import segment_case

    case, _ = case_fit
    paths = {}
    for name, tag in (("bSSFP", "C0"), ("LGE", "DE"), ("T2", "T2")):
        paths[name] = tmp_path / f"c_{tag}.nii.gz"
        io.save_volume(case.image(name), case.geometry, paths[name])
    io.save_labels(case.labels, case.geometry, tmp_path / "gd.nii.gz")
    loaded = io.load_case_from_paths({k: paths[k] for k in ("bSSFP", "LGE", "T2")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = segment_case(loaded, roi=case.labels)  # the LV values, as --roi
    strokes = _scar_stroke(fit, 1)
    io.save_labels(strokes, case.geometry, tmp_path / "scribbles.nii.gz")
    argv = ["segment", "--bssfp", str(paths["bSSFP"]), "--lge", str(paths["LGE"]),
            "--t2", str(paths["T2"]), "--roi", str(tmp_path / "gd.nii.gz"),
            "--scribbles", str(tmp_path / "scribbles.nii.gz"), "--quiet"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "out.nii.gz")]) == 0
    expected = refine(fit, strokes, loaded).labels
    np.testing.assert_array_equal(io.read_labels(tmp_path / "out.nii.gz"), expected)
    # a value that is no tissue: one line naming the file, before any fit
    bad = strokes.copy()
    bad[0, 0, 0] = 600
    io.save_labels(bad, case.geometry, tmp_path / "bad.nii.gz")
    argv[-2] = str(tmp_path / "bad.nii.gz")
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "out2.nii.gz")]) == 1
    err = capsys.readouterr().err.strip()
    assert "bad.nii.gz: holds values [600]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out2.nii.gz").exists()


def _wrong_region_fit(case, fit, z: int, truth: int, shown: int):
    """``fit`` with its labels set to the truth, except that the largest in-plane region of
    tissue ``truth`` on slice ``z`` is shown as ``shown`` (one-hot probabilities)."""
    from scipy import ndimage as ndi

    from napari_gmmseg.labels import CLASS_VALUES
    from napari_gmmseg.refine import _copy_fit

    out = _copy_fit(fit)
    out.labels = np.where(fit.labels > 0, case.labels, 0).astype(np.int32)
    comp, n = ndi.label(out.labels[z] == truth)
    assert n > 0
    wrong = comp == np.bincount(comp.ravel())[1:].argmax() + 1
    out.labels[z][wrong] = shown
    out.probabilities = np.stack([out.labels == v for v in CLASS_VALUES], -1).astype(np.float32)
    return out, wrong


def test_a_short_stroke_flips_the_wrong_region_and_nothing_else(case_fit):
    """Edema shown as healthy myocardium: a 5-pixel edema stroke inside it flips most of the
    region (not only the pixels near the stroke) and no pixel outside it; a stroke that agrees
    with the labels changes nothing but its own pixels (already right)."""
    from napari_gmmseg.labels import EDEMA, MYOCARDIUM

    case, fit = case_fit
    wfit, wrong = _wrong_region_fit(case, fit, 1, EDEMA.value, MYOCARDIUM.value)
    ys, xs = np.nonzero(wrong)
    mid = len(ys) // 2
    s = np.zeros(fit.labels.shape, np.int32)
    s[1, ys[mid : mid + 5], xs[mid : mid + 5]] = EDEMA.value
    out = refine(wfit, s, case)
    flipped = (out.labels[1] == EDEMA.value) & wrong
    assert flipped.sum() >= 0.8 * wrong.sum() > 5 * 5
    np.testing.assert_array_equal(out.labels[1][~wrong], wfit.labels[1][~wrong])
    # a stroke that agrees: healthy myocardium drawn on healthy myocardium
    agree = np.zeros(fit.labels.shape, np.int32)
    ys, xs = np.nonzero((wfit.labels[1] == MYOCARDIUM.value) & ~wrong)
    agree[1, ys[:8], xs[:8]] = MYOCARDIUM.value
    same = refine(wfit, agree, case)
    np.testing.assert_array_equal(same.labels, wfit.labels)
    assert last_summary(same).message.startswith("refine changed nothing")
