"""Output paths are checked before any work, in every command: one-line errors, no traceback."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from napari_gmmseg.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from napari_gmmseg import io
    from napari_gmmseg.phantom import make_case

    case = make_case(1, n_slices=2, size=64)
    root = tmp_path_factory.mktemp("case")
    paths = {}
    for name, tag in (("bSSFP", "C0"), ("LGE", "DE"), ("T2", "T2")):
        paths[name] = root / f"c_{tag}.nii.gz"
        io.save_volume(case.image(name), case.geometry, paths[name])
    paths["gt"] = root / "c_gd.nii.gz"
    io.save_labels(case.labels, case.geometry, paths["gt"])
    return paths


def _segment_args(files, out):
    return ["segment", "--bssfp", str(files["bSSFP"]), "--lge", str(files["LGE"]),
            "--roi", str(files["gt"]), "--out", str(out), "--quiet", "--method", "gmm"]  # fmt: skip


def _fail_fast(monkeypatch):
    """Any fit started means the check came too late."""
    import napari_gmmseg.segment as core

    def boom(*_a, **_k):
        raise AssertionError("the fit ran before the output path was checked")

    monkeypatch.setattr(core, "segment", boom)


def test_output_that_is_an_input_is_refused_even_with_force(files, capsys, monkeypatch):
    before = files["bSSFP"].read_bytes()
    _fail_fast(monkeypatch)
    assert main([*_segment_args(files, files["bSSFP"]), "--force"]) == 1
    err = capsys.readouterr().err
    assert "is an input" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert files["bSSFP"].read_bytes() == before


def test_bad_output_locations_fail_before_the_fit(files, tmp_path, capsys, monkeypatch):
    _fail_fast(monkeypatch)
    cases = {
        files["gt"] / "x.nii.gz": "is a file",  # parent is not a folder
        tmp_path / "x.png": "must end with .nii.gz or .nii",
        tmp_path: "is a folder",
    }
    for out, message in cases.items():
        assert main(_segment_args(files, out)) == 1, out
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    # the same checks guard the other commands, before any work
    for cmd in (
        ["evaluate", str(tmp_path), "--method", "gmm", "--out", str(files["gt"])],
        ["train", str(tmp_path), "--out", str(tmp_path)],
        ["mu-data", str(tmp_path), "--out", str(tmp_path / "mu.png")],
        ["phantom", str(files["gt"] / "p")],
        ["demo", "--out", str(files["gt"])],
    ):
        assert main(cmd) == 1, cmd
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err, (cmd, err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_fails_before_the_fit(files, tmp_path, capsys, monkeypatch):
    _fail_fast(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(_segment_args(files, ro / "x.nii.gz")) == 1
        assert "read-only" in capsys.readouterr().err
        assert main(["evaluate", str(tmp_path), "--method", "gmm", "--out", str(ro / "e")]) == 1
        assert "read-only" in capsys.readouterr().err
    finally:
        ro.chmod(stat.S_IRWXU)


def test_segment_cli_still_writes_a_good_output(files, tmp_path):
    from napari_gmmseg import io

    out = tmp_path / "ok.nii.gz"
    assert main([*_segment_args(files, out), "--max-iter", "3"]) == 0
    assert set(np.unique(io.read_labels(out))) <= {0, 200, 500, 1220, 2221}


def test_bland_altman_png_has_normal_permissions(tmp_path):
    pytest.importorskip("matplotlib")
    from napari_gmmseg.agreement import plot_bland_altman

    old = os.umask(0o022)
    try:
        pairs = {"scar": {"gmm": ([1.0, 2.0, 3.0], [1.5, 2.0, 2.5])}}
        path = plot_bland_altman(pairs, tmp_path / "bland_altman.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_demo_writes_its_tables_beside_the_results(sample_data_dir, tmp_path, capsys):
    out = tmp_path / "results"
    args = ["demo", "--out", str(out), "--data", str(sample_data_dir), "--methods", "gmm"]
    assert main([*args, "--max-iter", "5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    tables = (out / "tables.md").read_text()
    assert "Dice per slice" in tables and "gmm" in tables
    assert tables.strip("`\n") in printed  # the same tables as on stdout
    assert stat.S_IMODE(os.stat(out / "tables.md").st_mode) == 0o644


def test_segment_warns_about_a_mask_on_another_grid_and_refuses_unknown_values(
    files, tmp_path, capsys
):
    import nibabel as nib

    from napari_gmmseg import io

    img = nib.load(files["gt"])
    lab = np.asarray(img.dataobj)
    shifted = tmp_path / "shifted_gd.nii.gz"
    affine = img.affine.copy()
    affine[:3, 3] += 0.5  # half a millimetre off the bSSFP grid
    nib.save(nib.Nifti1Image(lab, affine, img.header), shifted)
    out = tmp_path / "o.nii.gz"
    args = _segment_args(files, out)
    args[args.index(str(files["gt"]))] = str(shifted)
    assert main([*args, "--max-iter", "3"]) == 0
    err = capsys.readouterr().err
    assert "not on the bSSFP grid" in err and "resampled" in err
    odd = tmp_path / "odd_gd.nii.gz"
    nib.save(nib.Nifti1Image(np.where(lab == 200, 300, lab).astype(np.int16), img.affine), odd)
    args = _segment_args(files, tmp_path / "o2.nii.gz")
    args[args.index(str(files["gt"]))] = str(odd)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "values [300]" in err and "Traceback" not in err
    assert io.read_labels(out).shape == lab.shape[::-1]
