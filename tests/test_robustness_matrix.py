"""The robustness matrix (issue 28): bad or unusual inputs, one test per row.

Each command-line test runs ``napari_gmmseg.cli.main`` in-process and checks the exit code,
a one-line message (no traceback), that no input changed (SHA-256 before/after) and that no
output was left behind. Fixtures are tiny NIfTI cases written on the fly (4 slices of
40 x 40 voxels: a bright blood pool inside a darker wall, dark blood on T2).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_gmmseg import batch, io
from napari_gmmseg.cli import main
from napari_gmmseg.errors import CaseLoadError, GeometryError, OutputPathError, RoiError

SHAPE = (4, 40, 40)  # (Z, Y, X)
SPACING = (8.0, 1.5, 1.5)  # (z, y, x) mm


def _affine(spacing=SPACING, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    a[:3, 3] = shift
    return a


def _save(path: Path, zyx: np.ndarray, affine=None, units: str = "mm", dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(
        np.asarray(zyx, dtype=dtype).transpose(2, 1, 0), _affine() if affine is None else affine
    )
    img.header.set_xyzt_units(units, "sec")
    nib.save(img, str(path))
    return path


def _anatomy() -> tuple[np.ndarray, np.ndarray]:
    """``(pool, wall)`` bool masks: a disc of radius 7 px inside a ring to radius 11 px."""
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    r = np.hypot(yy - 20, xx - 20)
    pool = np.broadcast_to(r < 7, SHAPE)
    wall = np.broadcast_to((r >= 7) & (r < 11), SHAPE)
    return pool, wall


def _images(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pool, wall = _anatomy()
    out = {}
    # blood, wall, background per sequence: bright blood on bSSFP and LGE, dark on T2
    for tag, (b, w, bg) in {
        "C0": (600, 200, 100),
        "DE": (500, 80, 60),
        "T2": (60, 300, 150),
    }.items():
        vol = np.where(pool, b, np.where(wall, w, bg)).astype(np.float32)
        out[tag] = vol + rng.normal(0, 10, SHAPE).astype(np.float32) + 20
    return out


def _mask() -> np.ndarray:
    pool, wall = _anatomy()
    lab = np.zeros(SHAPE, np.int16)
    lab[pool] = 500
    lab[wall] = 200
    lab[wall & (np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]][2] > 27)] = 2221
    return lab


def _case(folder: Path, cid: str = "7", prefix: str = "myops_training", gd: bool = True) -> dict:
    """A MyoPS-layout case under ``folder/train25`` (+ ``train25_myops_gd``)."""
    paths = {
        tag: _save(folder / "train25" / f"{prefix}_{cid}_{tag}.nii.gz", vol)
        for tag, vol in _images(int(cid) if cid.isdigit() else 0).items()
    }
    if gd:
        paths["gd"] = _save(
            folder / "train25_myops_gd" / f"{prefix}_{cid}_gd.nii.gz", _mask(), dtype=np.int16
        )
    return paths


def _flat(folder: Path, cid: str = "7") -> dict:
    """A case with its mask, all files directly in ``folder`` (one folder per site)."""
    paths = {tag: _save(folder / f"p_{cid}_{tag}.nii.gz", v) for tag, v in _images().items()}
    paths["gd"] = _save(folder / f"p_{cid}_gd.nii.gz", _mask(), dtype=np.int16)
    return paths


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _cli(capsys, *argv: str) -> tuple[int, str]:
    """Run the CLI in-process: ``(exit code, stderr)``; argparse exits become codes."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _refused(capsys, data: Path, *argv, match: str, absent=()) -> str:
    """A clean refusal: exit 1, one error line naming the problem, inputs unchanged."""
    before = _hashes(data)
    rc, err = _cli(capsys, *argv)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 1, err
    assert len(lines) == 1 and "error:" in lines[0], err
    assert match in lines[0], lines[0]
    assert _hashes(data) == before, "an input changed"
    for p in absent:
        assert not Path(p).exists(), f"{p} left behind"
    return lines[0]


@pytest.fixture
def data(tmp_path) -> Path:
    _case(tmp_path / "ds", "7")
    _case(tmp_path / "ds", "8")
    return tmp_path / "ds"


def _seg_args(data: Path, cid: str = "7") -> list[str]:
    t = data / "train25"
    return [
        "segment",
        "--bssfp", t / f"myops_training_{cid}_C0.nii.gz",
        "--lge", t / f"myops_training_{cid}_DE.nii.gz",
        "--t2", t / f"myops_training_{cid}_T2.nii.gz",
    ]  # fmt: skip


# ---------------------------------------------------------------- rows 1, 2, 15: outputs
def test_row01_roi_out_may_not_be_an_input(capsys, data, tmp_path):
    bssfp = data / "train25" / "myops_training_7_C0.nii.gz"
    _refused(capsys, data, *_seg_args(data), "--roi", "auto", "--roi-out", bssfp,
             "--out", tmp_path / "o.nii.gz", "--force", match="is an input",
             absent=[tmp_path / "o.nii.gz"])  # fmt: skip


@pytest.mark.parametrize("command", ["prior", "mu-data", "classifier", "train"])
def test_row02_no_output_inside_the_dataset(capsys, data, command):
    target = data / "train25_myops_gd" / "myops_training_7_gd.nii.gz"
    suffix = {"prior": ".json", "mu-data": ".json", "classifier": ".npz", "train": ".pt"}[command]
    out = target if command == "train" else target.with_name("new" + suffix)
    _refused(capsys, data, command, data, "--out", out, "--force",
             match="a folder of the dataset", absent=[] if out == target else [out])  # fmt: skip


def test_row02_evaluate_out_inside_the_dataset(capsys, data):
    _refused(capsys, data, "evaluate", data, "--out", data / "train25",
             match="a folder of the dataset")  # fmt: skip


def test_row15_roi_out_checked_up_front(capsys, data, tmp_path):
    out = tmp_path / "o.nii.gz"
    _refused(capsys, data, *_seg_args(data), "--roi", "auto", "--roi-out", tmp_path / "roi.txt",
             "--out", out, match="must end with", absent=[out])  # fmt: skip
    _refused(capsys, data, *_seg_args(data), "--roi", "auto", "--roi-out", out, "--out", out,
             match="given as both --out and --roi-out", absent=[out])  # fmt: skip


# ---------------------------------------------------------------- row 3: a failed run
def test_row03_failed_run_keeps_the_tables_and_auto_is_recorded_as_such(data, tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "metrics.csv").write_text("case,method\n3001,gmm\n")
    (out / "summary.json").write_text('{"earlier": true}')
    before = _hashes(out)
    for p in (data / "train25_myops_gd").iterdir():  # no masks: the gt ROI is undefined
        p.unlink()
    res = batch.evaluate_dataset(data, ["gmm"], out, roi="gt", progress=False)
    assert res.failures and all(o.status == "failed" for o in res.outcomes)
    assert _hashes(out) == before
    assert not (out / io.LOCK_NAME).exists()
    assert batch._roi_key("auto") == "auto" and batch._roi_key("gt") == "gt"


# ---------------------------------------------------------------- rows 4, 5: names
def test_row04_same_id_twice_links_and_odd_names(tmp_path):
    root = tmp_path / "ds"
    _flat(root / "siteA", "7")
    _flat(root / "siteB", "7")
    os.symlink(".", root / "again")  # the same files reached twice
    os.symlink("siteA", root / "siteA_link")
    ids = [c.case_id for c in io.discover_cases(root)]
    assert sorted(ids) == ["siteA/p_7", "siteB/p_7"]
    odd = root / "siteA" / os.fsdecode(b"p_9\xff_C0.nii.gz")
    _save(odd, _images()["C0"])
    with pytest.raises(CaseLoadError, match="not valid UTF-8"):
        io.discover_cases(root)


@pytest.mark.slow
def test_row04_qualified_ids_are_evaluated(tmp_path):
    root = tmp_path / "ds"
    _flat(root / "siteA", "7")
    _flat(root / "siteB", "7")
    res = batch.evaluate_dataset(root, ["gmm"], tmp_path / "ev", progress=False,
                                 options={"max_iter": 5})  # fmt: skip
    assert not res.failures, res.failures
    assert sorted(o.case_id for o in res.outcomes) == ["siteA/p_7", "siteB/p_7"]
    assert (tmp_path / "ev" / "gmm" / "siteA" / "p_7.json").is_file()


def test_row05_load_case_from_a_file_never_returns_a_namesake(tmp_path):
    train = _case(tmp_path, "3027", prefix="myops_training")
    test = _case(tmp_path, "3027", prefix="myops_test", gd=False)
    case = io.load_case(train["C0"])
    assert case.sources["bSSFP"] == train["C0"] and case.sources.get("mask") == train["gd"]
    case = io.load_case(test["C0"])
    assert case.sources["bSSFP"] == test["C0"] and "mask" not in case.sources


# ---------------------------------------------------------------- row 6: train numbers
@pytest.mark.parametrize(
    "flags, match",
    [(["--lr", "-1"], "--lr must be > 0"), (["--weight-decay", "-1"], "--weight-decay must be")],
)
def test_row06_train_refuses_bad_numbers(capsys, data, tmp_path, flags, match):
    out = tmp_path / "m.pt"
    _refused(capsys, data, "train", data, "--out", out, *flags, match=match, absent=[out])


def test_row06_train_refuses_cuda_without_cuda(capsys, data, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "m.pt"
    _refused(capsys, data, "train", data, "--out", out, "--device", "cuda",
             match="CUDA is not available", absent=[out])  # fmt: skip


# ---------------------------------------------------------------- row 7: missing data
def test_row07_slices_without_data_are_skipped_and_reported():
    from napari_gmmseg.segment import segment

    imgs = _images()
    images = np.stack([imgs["C0"], imgs["DE"], imgs["T2"]], axis=-1)
    images[2, ..., 1] = 0.0  # LGE slice 2: no data (outside a shorter grid)
    roi = _mask() > 0
    with pytest.warns(UserWarning, match=r"slices \[2\] have no data"):
        fit = segment(images, roi, method="gmm", max_iter=5)
    assert 2 in fit.params["skipped_slices"]
    assert not fit.labels[2].any()


# ---------------------------------------------------------------- row 8: voxel size
def test_row08_units_honoured_and_implausible_spacing_refused(tmp_path):
    imgs = _images()
    metres = _affine(tuple(s / 1000 for s in SPACING))
    paths = {}
    for tag, vol in imgs.items():
        paths[tag] = _save(tmp_path / "m" / f"p1_{tag}.nii.gz", vol, metres, units="meter")
    case = io.load_case(paths["C0"])
    assert np.allclose(case.spacing_mm, SPACING)
    big = _save(tmp_path / "b" / "p2_C0.nii.gz", imgs["C0"], _affine((8.0, 75.0, 75.0)))
    with pytest.raises(CaseLoadError, match=r"p2_C0.*implausible voxel size.*in-plane 0.2-5 mm"):
        io.load_case(big)
    zero = tmp_path / "z" / "p3_C0.nii.gz"
    img = nib.Nifti1Image(imgs["C0"].transpose(2, 1, 0), None)
    img.header["pixdim"][1:4] = 0
    zero.parent.mkdir()
    nib.save(img, str(zero))
    with pytest.raises(CaseLoadError, match=r"p3_C0.*is zero"):
        io.load_case(zero)


# ---------------------------------------------------------------- rows 9, 16: segment flags
def test_row09_default_method_needs_an_roi(capsys, data, tmp_path):
    out = tmp_path / "o.nii.gz"
    _refused(capsys, data, *_seg_args(data), "--out", out, match="--roi auto", absent=[out])


def test_row09_default_method_needs_an_roi_in_python():
    from napari_gmmseg.segment import segment

    imgs = _images()
    with pytest.raises(RoiError, match="needs its ROI"):
        segment(np.stack([imgs["C0"], imgs["DE"], imgs["T2"]], -1), None)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--roi", "MASK", "--classes", "12"], "--classes does not apply"),
        (["--roi", "MASK", "--roi-out", "R"], "--roi-out writes the automatic ROI"),
    ],
)
def test_row16_flags_that_would_be_ignored_are_refused(capsys, data, tmp_path, extra, match):
    mask = data / "train25_myops_gd" / "myops_training_7_gd.nii.gz"
    extra = [mask if a == "MASK" else tmp_path / "r.nii.gz" if a == "R" else a for a in extra]
    out = tmp_path / "o.nii.gz"
    _refused(capsys, data, *_seg_args(data), *extra, "--out", out, match=match, absent=[out])


def test_row16_report_rv_insertion_off_the_grid(capsys, data, tmp_path):
    mask = data / "train25_myops_gd" / "myops_training_7_gd.nii.gz"
    out = tmp_path / "rep"
    _refused(capsys, data, "report", mask, "--out", out, "--rv-insertion", "9999,9999,0",
             match="outside the label map's grid")  # fmt: skip
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------- row 10: not a heart
@pytest.mark.slow
def test_row10_auto_roi_fails_qc_on_a_non_cardiac_volume():
    from napari_gmmseg.autoroi import find_roi

    zz, yy, xx = np.mgrid[0:8, 0:256, 0:256]
    rng = np.random.default_rng(3)
    body = ((yy - 128) ** 2 / 100**2 + (xx - 128) ** 2 / 80**2 < 1) * 300.0
    for cy, cx, s, a in [(100, 110, 15, 600), (150, 150, 20, 400), (120, 170, 10, 800),
                         (160, 90, 25, 200)]:  # fmt: skip
        body = body + a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2)) * (1 + 0.1 * zz)
    vol = (body + rng.normal(0, 15, body.shape)).astype(np.float32)
    auto = find_roi(vol[..., None], ["bSSFP"], (10.0, 1.4, 1.4))
    assert any(q.area_mm2 > 0 for q in auto.qc)  # the network does "find" an LV
    assert not auto.roi.any()
    assert all("no_rv" in q.flags for q in auto.qc if q.area_mm2 >= 100)


@pytest.mark.slow
def test_row10_real_slices_still_pass(real_data_dir):
    from napari_gmmseg.autoroi import find_roi

    for src in io.discover_cases(real_data_dir):
        case = src.load()
        auto = find_roi(case.images, case.channels, case.spacing_mm)
        assert all(q.ok for q in auto.qc), [q.reason for q in auto.qc]


# ---------------------------------------------------------------- rows 11, 12: evaluate
def test_row11_rv_only_roi_is_refused_in_evaluate(data, tmp_path):
    rv = _save(tmp_path / "rv_7.nii.gz", np.where(_mask() == 500, 600, 0), dtype=np.int16)
    case = io.load_case(data, "7")
    with pytest.raises(RoiError, match="no voxel with the ROI labels"):
        batch._resolve_roi(str(rv), case)


def test_row12_case_missing_a_sequence_fails_in_a_batch(data, tmp_path):
    (data / "train25" / "myops_training_8_T2.nii.gz").unlink()
    res = batch.evaluate_dataset(
        data, ["gmm"], tmp_path / "ev", progress=False, options={"max_iter": 5}
    )
    failed = {o.case_id: o.error for o in res.failures}
    assert list(failed) == ["8"] and "missing sequence" in failed["8"]


# ---------------------------------------------------------------- row 13: swapped inputs
def test_row13_one_file_as_two_sequences(capsys, data, tmp_path):
    c0 = data / "train25" / "myops_training_7_C0.nii.gz"
    out = tmp_path / "o.nii.gz"
    _refused(capsys, data, "segment", "--bssfp", c0, "--lge", c0, "--method", "gmm",
             "--out", out, match="given as both bSSFP and LGE", absent=[out])  # fmt: skip


def test_row13_mask_given_as_an_image(capsys, data, tmp_path):
    gd = data / "train25_myops_gd" / "myops_training_7_gd.nii.gz"
    out = tmp_path / "o.nii.gz"
    _refused(capsys, data, "segment", "--bssfp", gd, "--method", "gmm", "--out", out,
             match="this is a mask", absent=[out])  # fmt: skip


def test_row13_identical_voxels_refused(tmp_path):
    imgs = _images()
    a = _save(tmp_path / "a_C0.nii.gz", imgs["C0"])
    b = _save(tmp_path / "b_DE.nii.gz", imgs["C0"])
    with pytest.raises(CaseLoadError, match="identical voxels"):
        io.load_case_from_paths({"bSSFP": a, "LGE": b})


def test_row13_contrast_check_warns_on_a_swap():
    from napari_gmmseg.preprocess import contrast_warnings

    imgs = _images()
    roi = _mask() > 0
    good = np.stack([imgs["C0"], imgs["DE"], imgs["T2"]], -1)
    assert contrast_warnings(good, ("bSSFP", "LGE", "T2"), roi) == []
    swapped = np.stack([imgs["T2"], imgs["DE"], imgs["C0"]], -1)
    found = contrast_warnings(swapped, ("bSSFP", "LGE", "T2"), roi)
    assert found and all("swapped" in w for w in found)


@pytest.mark.slow
def test_row13_contrast_check_silent_on_real_cases(real_data_dir):
    from napari_gmmseg.preprocess import contrast_warnings

    for src in io.discover_cases(real_data_dir):
        case = src.load()
        assert contrast_warnings(case.images, case.channels, case.roi()) == []


# ---------------------------------------------------------------- row 14: the lock
def test_row14_second_run_refused_stale_lock_taken_over(tmp_path):
    out = tmp_path / "ev"
    with io.RunLock(out), pytest.raises(OutputPathError, match=r"another run \(pid \d+\)"):
        io.RunLock(out).acquire()
    assert not (out / io.LOCK_NAME).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / io.LOCK_NAME).write_text(f"{dead.pid}\n")
    with io.RunLock(out):  # the process that left it is gone
        assert (out / io.LOCK_NAME).read_text().split()[0] == str(os.getpid())
    assert not (out / io.LOCK_NAME).exists()


def test_row14_evaluate_refuses_a_locked_folder(capsys, data, tmp_path):
    out = tmp_path / "ev"
    with io.RunLock(out):
        _refused(capsys, data, "evaluate", data, "--out", out, "--method", "gmm",
                 match="another run", absent=[out / "summary.json"])  # fmt: skip


# ---------------------------------------------------------------- mixed study (issue 27)
def test_mixed_study_refused_naming_both_files_unless_allowed(capsys, data, tmp_path):
    imgs = _images()
    c0 = _save(tmp_path / "p_C0.nii.gz", imgs["C0"])
    de = _save(tmp_path / "q_DE.nii.gz", imgs["DE"], _affine(shift=(130.0, 0, 0)))
    out = tmp_path / "o.nii.gz"
    line = _refused(capsys, tmp_path, "segment", "--bssfp", c0, "--lge", de, "--method", "gmm",
                    "--out", out, match="do not look like one study", absent=[out])  # fmt: skip
    assert "q_DE" in line and "p_C0" in line and "--allow-resample" in line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(GeometryError, match="does not overlap"):  # resampled: no overlap
            io.load_case_from_paths({"bSSFP": c0, "LGE": de}, allow_resample=True)


def test_missing_sequence_refused_before_the_automatic_roi(capsys, data, tmp_path):
    t = data / "train25"
    out = tmp_path / "o.nii.gz"
    _refused(capsys, data, "segment", "--bssfp", t / "myops_training_7_C0.nii.gz",
             "--lge", t / "myops_training_7_DE.nii.gz", "--roi", "auto", "--out", out,
             match="needs all three sequences", absent=[out])  # fmt: skip


# ---------------------------------------------------------------- ROI masks
def test_uint8_binary_roi_is_used(capsys, data, tmp_path):
    roi = _save(tmp_path / "roi.nii.gz", (_mask() > 0).astype(np.uint8), dtype=np.uint8)
    out = tmp_path / "o.nii.gz"
    rc, err = _cli(capsys, *_seg_args(data), "--roi", roi, "--method", "gmm", "--max-iter", "5",
                   "--out", out, "--quiet")  # fmt: skip
    assert rc == 0, err
    assert io.read_labels(out)[_mask() > 0].all()


# ---------------------------------------------------------------- clean refusals kept clean
@pytest.mark.parametrize(
    "bad, match",
    [
        ("nan", "NaN"),
        ("truncated", "not a readable NIfTI"),
        ("4d", "4-D image"),
        ("2d", "2-D image"),
        ("missing", "does not exist"),
        ("constant", "constant"),
    ],
)
def test_clean_refusals_of_bad_images(capsys, data, tmp_path, bad, match):
    path = tmp_path / f"bad_{bad}_C0.nii.gz"
    vol = _images()["C0"]
    if bad == "nan":
        vol[1, 3, 3] = np.nan
        _save(path, vol)
    elif bad == "truncated":
        _save(path, vol)
        path.write_bytes(path.read_bytes()[:200])
    elif bad == "4d":
        nib.save(nib.Nifti1Image(np.stack([vol.T] * 2, -1), _affine()), str(path))
    elif bad == "2d":
        nib.save(nib.Nifti1Image(vol[0].T, _affine()), str(path))
    elif bad == "constant":
        _save(path, np.full(SHAPE, 7.0))
    out = tmp_path / "o.nii.gz"
    _refused(capsys, tmp_path, "segment", "--bssfp", path, "--method", "gmm", "--out", out,
             match=match, absent=[out])  # fmt: skip


def test_clean_refusals_of_outputs(capsys, data, tmp_path):
    c0 = data / "train25" / "myops_training_7_C0.nii.gz"
    _refused(capsys, data, "segment", "--bssfp", c0, "--method", "gmm", "--out", c0, "--force",
             match="is an input")  # fmt: skip
    existing = tmp_path / "o.nii.gz"
    existing.write_bytes(b"keep")
    _refused(capsys, data, "segment", "--bssfp", c0, "--method", "gmm", "--out", existing,
             match="exists")  # fmt: skip
    assert existing.read_bytes() == b"keep"
    _refused(capsys, data, "segment", "--bssfp", c0, "--method", "gmm",
             "--out", tmp_path / "o.png", match="must end with")  # fmt: skip
    _refused(capsys, data, "segment", "--bssfp", c0, "--roi", tmp_path / "nope.nii.gz",
             "--method", "gmm", "--out", tmp_path / "p.nii.gz", match="no such file")  # fmt: skip


def test_row16_a_prior_without_every_tissue_class_is_refused(capsys, data, tmp_path):
    import json

    from napari_gmmseg.naming import DEFAULT_PRIOR

    table = DEFAULT_PRIOR.to_dict()
    two = {**table, "classes": table["classes"][:2], "means": table["means"][:2]}
    prior = tmp_path / "two.json"
    prior.write_text(json.dumps(two), encoding="utf-8")
    mask = data / "train25_myops_gd" / "myops_training_7_gd.nii.gz"
    out = tmp_path / "o.nii.gz"
    _refused(capsys, data, *_seg_args(data), "--roi", mask, "--method", "gmm", "--prior", prior,
             "--out", out, match="lacks edema, scar", absent=[out])  # fmt: skip
