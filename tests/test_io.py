"""Case I/O: the three entry paths, exact NIfTI round trips, alignment, and every bad input."""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_gmmseg import io
from napari_gmmseg.errors import CaseLoadError, GeometryError, OutputExistsError


def _oblique_affine() -> np.ndarray:
    """Oblique, orthonormal-direction affine: 1.4 mm pixels, 9.5 mm slices."""
    a, b = np.deg2rad(25.0), np.deg2rad(-40.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([1.4, 1.4, 9.5])
    affine[:3, 3] = (50.0, 20.0, -30.0)
    return affine


AFFINE = _oblique_affine()


def _save(path: Path, data_zyx: np.ndarray, affine: np.ndarray = AFFINE, dtype=np.int16) -> Path:
    """Write a (Z, Y, X) array as NIfTI (stored X, Y, Z)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data_zyx).transpose(2, 1, 0).astype(dtype), affine)
    nib.save(img, str(path))
    return path


def _toy_case(folder: Path, prefix: str = "pat7", with_mask: bool = True) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    shape = (3, 20, 24)
    paths = {}
    for tag in ("C0", "DE", "T2"):
        paths[tag] = _save(folder / f"{prefix}_{tag}.nii.gz", rng.integers(0, 500, shape))
    if with_mask:
        lab = np.zeros(shape, np.int16)
        lab[:, 5:10, 5:10] = 500
        lab[:, 10:12, 5:10] = 200
        lab[1, 12:14, 5:10] = 2221
        paths["gd"] = _save(folder / f"{prefix}_gd.nii.gz", lab)
    return paths


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_cases(real_data_dir):
    return {s.case_id: s for s in io.discover_cases(real_data_dir)}


def test_real_cases_load_through_every_entry_path(real_data_dir, real_cases, tmp_path):
    assert sorted(real_cases) == ["3001", "3002", "3003"]
    for cid, src in real_cases.items():
        by_id = io.load_case(real_data_dir, cid)
        by_file = io.load_case(src.sequences["LGE"])  # any one sequence file
        by_paths = io.load_case_from_paths(
            {
                "bSSFP": src.sequences["bSSFP"],
                "LGE": src.sequences["LGE"],
                "T2": src.sequences["T2"],
            },
            mask=src.mask,
        )
        folder = tmp_path / cid  # one folder holding the case
        folder.mkdir()
        for p in [*src.sequences.values(), src.mask]:
            os.symlink(p, folder / p.name)
        by_folder = io.load_case(folder)
        raw = nib.load(str(src.sequences["bSSFP"]))
        for case in (by_id, by_file, by_paths, by_folder):
            assert case.case_id == cid
            assert case.channels == ("bSSFP", "LGE", "T2")
            assert case.images.dtype == np.float32
            assert case.images.shape == (*raw.shape[::-1], 3)
            np.testing.assert_allclose(case.spacing_mm, raw.header.get_zooms()[::-1], rtol=1e-6)
            np.testing.assert_array_equal(case.images, by_id.images)
            np.testing.assert_array_equal(case.labels, by_id.labels)
            assert case.labels.dtype == np.int32
            assert set(np.unique(case.labels)) == {0, 200, 500, 600, 1220, 2221}
        # (Z, Y, X) order: slice z of the case is the file's [:, :, z] transposed
        np.testing.assert_array_equal(by_id.images[1, :, :, 0], np.asarray(raw.dataobj)[:, :, 1].T)


def test_real_labels_round_trip_exact(real_data_dir, real_cases, tmp_path):
    for cid, src in real_cases.items():
        case = src.load()
        out = io.save_labels(case.labels, case.geometry, tmp_path / f"{cid}_seg.nii.gz")
        back, geom = io.read_labels(out, with_geometry=True)
        np.testing.assert_array_equal(back, case.labels)
        written, source, gd = (
            nib.load(str(out)),
            nib.load(str(src.sequences["bSSFP"])),
            nib.load(str(src.mask)),
        )
        np.testing.assert_array_equal(written.affine, source.affine)  # oblique, bit-exact
        np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(gd.dataobj))
        for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                    "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "dim",
                    "xyzt_units", "descrip"):  # fmt: skip
            np.testing.assert_array_equal(written.header[key], source.header[key], err_msg=key)
        assert written.get_data_dtype() == np.int16
        np.testing.assert_array_equal(geom.affine, case.geometry.affine)


def test_geometry_matches_simpleitk_view_of_real_file(real_cases):
    import SimpleITK as sitk

    src = real_cases["3001"].sequences["bSSFP"]
    _, geom = io.read_volume(src)
    img = sitk.ReadImage(str(src))
    np.testing.assert_allclose(geom.origin, img.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(geom.direction.ravel(), img.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(geom.spacing_xyz, img.GetSpacing(), rtol=1e-5)


# --------------------------------------------------------------------------- layouts
def test_discover_sample_data_myops_layout(sample_data_dir):
    cases = io.discover_cases(sample_data_dir)
    assert [c.case_id for c in cases] == ["1001", "1002"]
    for c in cases:
        assert list(c.sequences) == ["bSSFP", "LGE", "T2"]
        assert c.mask is not None and c.mask.parent.name == "train25_myops_gd"
    # the train25 folder itself is a dataset too, and finds masks in the sibling folder
    assert [c.mask for c in io.discover_cases(sample_data_dir / "train25")] == [
        c.mask for c in cases
    ]


def test_one_folder_per_case_layout(tmp_path):
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        for tag, src in _toy_case(tmp_path / "src" / name, prefix="x").items():
            shutil.move(str(src), folder / f"{tag if tag != 'gd' else 'mask'}.nii.gz")
    shutil.rmtree(tmp_path / "src")
    cases = io.discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["a", "b"]
    case = cases[1].load()
    assert case.case_id == "b" and case.channels == ("bSSFP", "LGE", "T2")
    assert case.labels is not None and case.shape == (3, 20, 24)
    with pytest.raises(CaseLoadError, match=r"holds 2 cases"):
        io.load_case(tmp_path)
    assert io.load_case(tmp_path, "a").case_id == "a"
    with pytest.raises(CaseLoadError, match="no case 'zz'"):
        io.load_case(tmp_path, "zz")


def test_any_number_of_sequences_and_free_names(tmp_path):
    p = _toy_case(tmp_path)
    case = io.load_case_from_paths({"LGE": p["DE"]})
    assert case.channels == ("LGE",) and case.images.shape == (3, 20, 24, 1) and case.labels is None
    case = io.load_case_from_paths({"T1map": p["C0"], "bSSFP": p["DE"]})
    assert case.channels == ("bSSFP", "T1map")


def test_mha_and_nrrd_read_like_nifti(tmp_path):
    import SimpleITK as sitk

    p = _toy_case(tmp_path)
    ref = io.load_case(p["C0"])
    for ext in (".mha", ".nrrd"):
        folder = tmp_path / ext[1:]
        folder.mkdir()
        for tag in ("C0", "DE", "T2", "gd"):
            sitk.WriteImage(sitk.ReadImage(str(p[tag])), str(folder / f"pat7_{tag}{ext}"))
        case = io.load_case(folder)
        np.testing.assert_array_equal(case.images, ref.images)
        np.testing.assert_array_equal(case.labels, ref.labels)
        np.testing.assert_allclose(case.geometry.affine, ref.geometry.affine, atol=1e-4)
        assert case.geometry.header is None
        out = io.save_labels(case.labels, case.geometry, folder / "seg.nii.gz")
        np.testing.assert_allclose(nib.load(str(out)).affine, ref.geometry.affine, atol=1e-4)


def test_dicom_series_folder(tmp_path):
    import SimpleITK as sitk

    rng = np.random.default_rng(1)
    vol = rng.integers(0, 1000, (3, 16, 18)).astype(np.int16)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((1.5, 1.5, 8.0))
    case_dir = tmp_path / "case9"
    for tag in ("C0", "DE"):
        series = case_dir / tag
        series.mkdir(parents=True)
        img = sitk.GetImageFromArray(vol + (tag == "DE"))  # two sequences, not one image twice
        img.SetSpacing((1.5, 1.5, 8.0))
        uid = f"1.2.826.0.1.3680043.2.1125.{1 if tag == 'C0' else 2}"
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for z in range(vol.shape[0]):
            sl = img[:, :, z]
            sl.SetMetaData("0020|000e", uid)
            sl.SetMetaData("0020|0032", f"0\\0\\{8.0 * z}")
            sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
            sl.SetMetaData("0020|0013", str(z))
            sl.SetMetaData("0008|0018", f"{uid}.{z}")
            writer.SetFileName(str(series / f"{z}.dcm"))
            writer.Execute(sl)
    case = io.load_case(case_dir)
    assert case.channels == ("bSSFP", "LGE")
    # the series folder of one sequence opens the whole case too
    np.testing.assert_array_equal(io.load_case(case_dir / "DE").images, case.images)
    np.testing.assert_array_equal(case.images[..., 0], vol)
    np.testing.assert_allclose(case.spacing_mm, (8.0, 1.5, 1.5), rtol=1e-4)


# --------------------------------------------------------------------------- alignment
def test_misaligned_sequence_is_resampled_with_warning(tmp_path):
    p = _toy_case(tmp_path)
    shifted = AFFINE.copy()
    shifted[:3, 3] += shifted[:3, 0] * 2  # two voxels along x
    data = np.asarray(nib.load(str(p["DE"])).dataobj).transpose(2, 1, 0)
    _save(p["DE"], data, shifted)
    with pytest.warns(
        UserWarning, match=r"LGE .* not on the bSSFP grid \(origin differs by 2\.8 mm\); resampled"
    ):
        case = io.load_case(p["C0"])
    assert case.images.shape == (3, 20, 24, 3)
    # voxel x of the reference is voxel x - 2 of the shifted LGE
    np.testing.assert_allclose(case.images[:, :, 2:, 1], data[:, :, :-2], atol=1e-3)
    assert np.all(case.images[:, :, :2, 1] == 0)


def test_without_simpleitk_nifti_loads_and_the_rest_names_the_extra(tmp_path, monkeypatch):
    """SimpleITK is the `simpleitk` extra: NIfTI on one grid needs none of it."""
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK raises ImportError
    p = _toy_case(tmp_path)
    assert io.load_case(p["C0"]).images.shape == (3, 20, 24, 3)
    mha = tmp_path / "pat8_C0.mha"
    mha.write_bytes(b"not read")
    with pytest.raises(CaseLoadError, match=r"pat8_C0\.mha: .*needs SimpleITK: pip install "):
        io.read_volume(mha)
    shifted = AFFINE.copy()
    shifted[:3, 3] += shifted[:3, 0] * 2
    _save(p["DE"], np.asarray(nib.load(str(p["DE"])).dataobj).transpose(2, 1, 0), shifted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(GeometryError, match=r"needs SimpleITK: .*napari-gmmseg\[simpleitk\]"):
            io.load_case(p["C0"])


def test_non_overlapping_sequence_refused(tmp_path):
    p = _toy_case(tmp_path)
    far = AFFINE.copy()
    far[:3, 3] += 1000.0
    _save(p["T2"], np.asarray(nib.load(str(p["T2"])).dataobj).transpose(2, 1, 0), far)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(GeometryError, match=r"pat7_T2\.nii\.gz.*does not overlap"):
            io.load_case(p["C0"], allow_resample=True)
    # without allow_resample the 1.7 m shift is a mixed study, refused naming both files
    with pytest.raises(GeometryError, match=r"pat7_T2\.nii\.gz.*pat7_C0\.nii\.gz.*one study"):
        io.load_case(p["C0"])


# --------------------------------------------------------------------------- bad input
def test_missing_sequence(tmp_path):
    p = _toy_case(tmp_path)
    p["T2"].unlink()
    with pytest.raises(CaseLoadError, match=r"missing sequence.*T2"):
        io.load_case(p["C0"], channels=io.DEFAULT_CHANNELS)
    assert io.load_case(p["C0"]).channels == ("bSSFP", "LGE")  # without the requirement
    with pytest.raises(CaseLoadError, match=r"missing sequence T2: .*pat7_T2\.nii\.gz"):
        io.load_case_from_paths({"bSSFP": p["C0"], "T2": p["T2"]})
    with pytest.raises(CaseLoadError, match="no such file"):
        io.load_case(tmp_path / "nope_C0.nii.gz")


def test_2d_file_refused(tmp_path):
    p = _toy_case(tmp_path)
    nib.save(nib.Nifti1Image(np.ones((24, 20), np.int16), np.eye(4)), str(p["DE"]))
    with pytest.raises(CaseLoadError, match=r"pat7_DE\.nii\.gz: is a 2-D image"):
        io.load_case(p["C0"])


def test_4d_file_needs_frame(tmp_path):
    p = _toy_case(tmp_path)
    rng = np.random.default_rng(3)
    for tag in ("C0", "DE", "T2"):
        cine = rng.integers(1, 100, (24, 20, 3, 4)).astype(np.int16)  # X, Y, Z, T
        nib.save(nib.Nifti1Image(cine, AFFINE), str(p[tag]))
    with pytest.raises(CaseLoadError, match=r"pat7_C0\.nii\.gz: is a 4-D image.*frame 0\.\.3"):
        io.load_case(p["C0"])
    case = io.load_case(p["C0"], frame=2)
    np.testing.assert_array_equal(case.images[..., 2], cine[..., 2].transpose(2, 1, 0))
    with pytest.raises(CaseLoadError, match="frame 7 out of range"):
        io.load_case(p["C0"], frame=7)
    # the hint names an option that exists: segment --frame
    from napari_gmmseg.cli import main

    out = tmp_path / "seg.nii.gz"
    args = ["segment", "--method", "gmm", "--bssfp", str(p["C0"]), "--lge", str(p["DE"])]
    args += ["--out", str(out)]
    with pytest.raises(CaseLoadError, match="--frame F"):
        io.load_case(p["C0"])
    assert main([*args, "--quiet", "--max-iter", "3"]) == 1 and not out.exists()
    assert main([*args, "--quiet", "--max-iter", "3", "--frame", "2"]) == 0
    assert io.read_labels(out).shape == case.shape


def test_nan_inf_refused(tmp_path):
    p = _toy_case(tmp_path)
    data = np.ones((3, 20, 24), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    _save(p["T2"], data, dtype=np.float32)
    with pytest.raises(CaseLoadError, match=r"pat7_T2\.nii\.gz: holds 1 NaN and 1 Inf"):
        io.load_case(p["C0"])


def test_constant_image_refused(tmp_path):
    p = _toy_case(tmp_path)
    _save(p["C0"], np.full((3, 20, 24), 7))
    with pytest.raises(
        CaseLoadError, match=r"pat7_C0\.nii\.gz: image is constant \(every voxel = 7\)"
    ):
        io.load_case(p["DE"])


def test_mask_with_fractional_or_unknown_values_refused(tmp_path):
    p = _toy_case(tmp_path)
    lab = np.zeros((3, 20, 24), np.float32)
    lab[0, 0, 0] = 200.5
    _save(p["gd"], lab, dtype=np.float32)
    with pytest.raises(
        CaseLoadError, match=r"pat7_gd\.nii\.gz: mask holds fractional values.*200\.5"
    ):
        io.load_case(p["C0"])
    lab = np.zeros((3, 20, 24), np.int16)
    lab[0, :2] = 500
    lab[1, :2] = 7
    lab[2, :2] = 300
    _save(p["gd"], lab)
    with pytest.raises(CaseLoadError, match=r"unknown label values \[7, 300\]"):
        io.load_case(p["C0"])
    with pytest.raises(CaseLoadError, match=r"unknown label values \[7, 300\]"):
        io.read_labels(p["gd"])


@pytest.mark.parametrize("name", ["pat7_DE.nii.gz", "pat7_DE.nii", "pat7_DE.mha"])
def test_unreadable_file_refused(tmp_path, name):
    p = _toy_case(tmp_path)
    p["DE"].unlink()
    bad = tmp_path / name
    bad.write_text("this is not an image\n")
    with pytest.raises(CaseLoadError, match=rf"{name.replace('.', '[.]')}: not a readable"):
        io.load_case(p["C0"])


# --------------------------------------------------------------------------- writing
def test_save_refuses_existing_and_is_atomic(tmp_path, monkeypatch):
    p = _toy_case(tmp_path)
    case = io.load_case(p["C0"])
    out = tmp_path / "out" / "seg.nii.gz"
    io.save_labels(case.labels, case.geometry, out)
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match=r"seg\.nii\.gz: exists"):
        io.save_labels(np.zeros_like(case.labels), case.geometry, out)
    assert out.read_bytes() == before and _listing(out.parent) == ["seg.nii.gz"]
    io.save_labels(np.zeros_like(case.labels), case.geometry, out, overwrite=True)
    assert not io.read_labels(out).any() and _listing(out.parent) == ["seg.nii.gz"]
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode

    # a failure half-way leaves nothing behind (and the old file intact)
    def boom(img, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save_labels(case.labels, case.geometry, tmp_path / "out" / "new.nii.gz")
    with pytest.raises(OSError, match="disk full"):
        io.save_labels(case.labels, case.geometry, out, overwrite=True)
    assert _listing(out.parent) == ["seg.nii.gz"]
    assert not io.read_labels(out).any()


def test_save_checks_shape_type_and_suffix(tmp_path):
    p = _toy_case(tmp_path)
    case = io.load_case(p["C0"])
    with pytest.raises(GeometryError, match=r"does not match the reference grid"):
        io.save_labels(np.zeros((2, 20, 24), np.int32), case.geometry, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="non-integer"):
        io.save_labels(np.full(case.shape, 0.5), case.geometry, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=r"\.nii\.gz"):
        io.save_labels(case.labels, case.geometry, tmp_path / "a.png")
    assert not list(tmp_path.glob("a*"))
    out = io.save_labels(case.labels.astype(bool), case.geometry, tmp_path / "b.nii")
    assert set(np.unique(nib.load(str(out)).get_fdata())) <= {0.0, 1.0}


def test_geometry_dict_round_trip_and_itk_view():
    geom = io.Geometry.from_affine(AFFINE, (3, 20, 24))
    back = io.Geometry.from_dict(geom.to_dict())
    np.testing.assert_array_equal(back.affine, geom.affine)
    assert back.same_grid(geom) and back.shape == (3, 20, 24)
    again = io.Geometry.from_itk(geom.origin, geom.spacing_xyz, geom.direction.ravel(), geom.shape)
    np.testing.assert_allclose(again.affine, AFFINE, atol=1e-12)
    np.testing.assert_allclose(geom.spacing_mm[0], np.linalg.norm(AFFINE[:3, 2]))


def test_same_id_in_two_folders_is_kept_apart(tmp_path):
    _toy_case(tmp_path / "train", prefix="myops_training_5")
    _toy_case(tmp_path / "test", prefix="myops_test_5", with_mask=False)
    cases = {c.case_id: c for c in io.discover_cases(tmp_path)}
    assert sorted(cases) == ["test/5", "train/5"]
    assert cases["test/5"].mask is None and cases["train/5"].mask is not None
    assert io.load_case(tmp_path, "train/5").labels is not None


def test_case_folder_named_with_a_tag_is_not_a_series(tmp_path):
    _toy_case(tmp_path / "patient_de_01", prefix="scan")  # 'de' in the folder name
    _toy_case(tmp_path / "patient_t2_02", prefix="scan")
    cases = io.discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["patient_de_01/scan", "patient_t2_02/scan"]
    assert [c.mask.parent.name for c in cases] == ["patient_de_01", "patient_t2_02"]


def test_roi_from_mask_refuses_unknown_values_instead_of_shrinking_the_roi():
    from napari_gmmseg.errors import RoiError
    from napari_gmmseg.io import roi_from_mask

    lab = np.zeros((2, 4, 4), dtype=np.int16)
    lab[0, :2] = 500
    lab[0, 2:] = 200
    np.testing.assert_array_equal(roi_from_mask(lab), lab > 0)
    np.testing.assert_array_equal(roi_from_mask(lab > 0), lab > 0)  # binary as it is
    lab[1, 0, 0] = 7
    with pytest.raises(RoiError, match=r"m.nii.gz: mask holds values \[7\].*--roi-labels"):
        roi_from_mask(lab, name="m.nii.gz")
    assert roi_from_mask(lab, (500, 200, 7))[1, 0, 0]  # named: part of the ROI
    with pytest.raises(RoiError, match="no voxel"):
        roi_from_mask(np.where(lab == 7, 0, lab), (1220,))
