"""napari reader, writer and sample-data contributions (functions, then a real viewer)."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from napari_gmmseg import _sample_data, io
from napari_gmmseg._reader import GEOMETRY_KEY, MASK_LAYER_NAME, napari_get_reader, read_case
from napari_gmmseg._writer import write_labels
from napari_gmmseg.labels import COLOR_BY_VALUE


@pytest.fixture
def c0_file(sample_data_dir):
    return sample_data_dir / "train25" / "myops_training_1001_C0.nii.gz"


def test_get_reader_accepts_case_files_and_folders(c0_file, sample_data_dir, tmp_path):
    assert napari_get_reader(str(c0_file)) is read_case
    assert napari_get_reader(str(sample_data_dir / "train25")) is read_case
    assert napari_get_reader([str(c0_file)]) is read_case
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "brain.nii.gz").write_bytes(b"")  # no sequence tag: not ours
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "brain.nii.gz")) is None


def test_reader_loads_whole_case_from_one_file(c0_file):
    layers = read_case(str(c0_file))
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["bSSFP", "LGE", "T2", MASK_LAYER_NAME]
    assert [t for *_, t in layers] == ["image", "image", "image", "labels"]
    case = io.load_case(c0_file)
    for i, (data, kw, kind) in enumerate(layers):
        assert kw["scale"] == (10.0, 1.25, 1.25)
        assert kw["metadata"][GEOMETRY_KEY].same_grid(case.geometry)
        if kind == "image":
            np.testing.assert_array_equal(data, case.images[..., i])
            lo, hi = kw["contrast_limits"]
            assert data.min() <= lo < hi < data.max()  # robust, not min/max
            assert hi == pytest.approx(np.percentile(data, 99.5))
    labels, kw, _ = layers[-1]
    np.testing.assert_array_equal(labels, case.labels)
    cmap = kw["colormap"]
    np.testing.assert_allclose(cmap.map(np.array([2221]))[0], COLOR_BY_VALUE[2221], atol=1e-6)
    np.testing.assert_allclose(cmap.map(np.array([0]))[0][3], 0.0)  # background transparent
    names = dict(zip(kw["features"]["index"], kw["features"]["name"], strict=True))
    assert names[2221] == "scar" and names[1220] == "edema" and names[500] == "LV blood pool"


def test_reader_on_multi_case_folder_names_the_cases(sample_data_dir):
    from napari_gmmseg.errors import CaseLoadError

    assert napari_get_reader(str(sample_data_dir)) is read_case
    with pytest.raises(CaseLoadError, match=r"holds 2 cases \['1001', '1002'\]; pass case_id"):
        read_case(str(sample_data_dir))


def test_reader_mask_file_alone(sample_data_dir):
    gd = sample_data_dir / "train25_myops_gd" / "myops_training_1002_gd.nii.gz"
    [(labels, _, kind)] = read_case(str(gd))
    assert kind == "labels" and labels.shape == (3, 128, 128) and not (labels == 2221).any()


def test_writer_restores_source_geometry(c0_file, tmp_path):
    *_, (labels, kw, _) = read_case(str(c0_file))
    edited = labels.copy()
    edited[0, :4, :4] = 2221
    meta = {"name": kw["name"], "scale": kw["scale"], "metadata": kw["metadata"]}
    [out] = write_labels(str(tmp_path / "edited"), edited, meta)
    assert out.endswith("edited.nii.gz")
    written, source = nib.load(out), nib.load(str(c0_file))
    np.testing.assert_array_equal(written.affine, source.affine)
    assert int(written.header["qform_code"]) == int(source.header["qform_code"])
    assert int(written.header["sform_code"]) == int(source.header["sform_code"])
    np.testing.assert_array_equal(io.read_labels(out), edited)
    # napari's save dialog confirmed replacing: the writer replaces, atomically
    write_labels(out, labels, meta)
    np.testing.assert_array_equal(io.read_labels(out), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.nii.gz"]


def test_writer_without_geometry_uses_scale_and_warns(tmp_path):
    labels = np.zeros((2, 10, 12), np.int32)
    labels[1, 3:5, 3:6] = 500
    with pytest.warns(UserWarning, match=r"no source geometry.*spacing \(8\.0, 1\.5, 1\.5\)"):
        [out] = write_labels(
            str(tmp_path / "x.nii.gz"), labels, {"name": "x", "scale": (8.0, 1.5, 1.5)}
        )
    img = nib.load(out)
    np.testing.assert_allclose(img.header.get_zooms(), (1.5, 1.5, 8.0))
    np.testing.assert_array_equal(io.read_labels(out), labels)


def test_sample_data_contributions(monkeypatch, tmp_path):
    layers = _sample_data.load_phantom_case()
    assert [kw["name"] for _, kw, _ in layers] == ["bSSFP", "LGE", "T2", MASK_LAYER_NAME]
    assert (layers[-1][0] == 2221).any()
    no_scar = _sample_data.load_phantom_case_no_scar()
    assert not np.isin(no_scar[-1][0], [1220, 2221]).any()
    # installed package without sample_data/: the same case is regenerated
    monkeypatch.setattr(_sample_data, "SAMPLE_DATA_DIR", tmp_path / "missing")
    regenerated = _sample_data.load_phantom_case()
    for (a, _, _), (b, _, _) in zip(layers, regenerated, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.gui
def test_open_case_folder_in_viewer(make_napari_viewer_proxy, sample_data_dir, tmp_path):
    import napari

    folder = tmp_path / "case1001"  # one folder holding one case
    folder.mkdir()
    for p in sample_data_dir.rglob("myops_training_1001_*.nii.gz"):
        shutil.copy(p, folder / p.name)
    viewer = make_napari_viewer_proxy()
    viewer.open(str(folder), plugin="napari-gmmseg")
    assert [layer.name for layer in viewer.layers] == ["bSSFP", "LGE", "T2", MASK_LAYER_NAME]
    mask = viewer.layers[MASK_LAYER_NAME]
    assert isinstance(mask, napari.layers.Labels)
    np.testing.assert_allclose(mask.scale, (10.0, 1.25, 1.25))
    np.testing.assert_allclose(viewer.layers["LGE"].scale, (10.0, 1.25, 1.25))
    assert set(np.unique(mask.data)) == {0, 200, 500, 600, 1220, 2221}
    np.testing.assert_allclose(
        mask.colormap.map(np.array([1220]))[0], COLOR_BY_VALUE[1220], atol=1e-6
    )
    # save through napari's writer contribution: the source affine comes back
    out = tmp_path / "mask_out.nii.gz"
    mask.save(str(out), plugin="napari-gmmseg")
    np.testing.assert_array_equal(
        nib.load(str(out)).affine, nib.load(str(folder / "myops_training_1001_C0.nii.gz")).affine
    )
    # File > Open Sample
    viewer.open_sample("napari-gmmseg", "phantom_no_scar")
    assert "T2 [1]" in [layer.name for layer in viewer.layers]


def test_the_reader_manifest_and_the_load_dock_accept_every_image_suffix_of_io():
    from pathlib import Path

    import yaml

    from napari_gmmseg.io import IMAGE_SUFFIXES

    manifest = yaml.safe_load(
        (Path(__file__).parents[1] / "napari.yaml").read_text(encoding="utf-8")
    )
    (reader,) = manifest["contributions"]["readers"]
    assert reader["filename_patterns"] == ["*" + s for s in IMAGE_SUFFIXES]
    src = (Path(__file__).parents[1] / "src/napari_gmmseg/_widgets/_load.py").read_text(
        encoding="utf-8"
    )
    assert "IMAGE_SUFFIXES" in src and ".nrrd" not in src  # the dock's filter reads io's list
