"""Phantom: deterministic, anatomically ordered, calibrated contrasts, MyoPS files and CLI."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_gmmseg import io, phantom
from napari_gmmseg.cli import main
from napari_gmmseg.errors import OutputExistsError
from napari_gmmseg.labels import MYOPS_VALUES

SMALL = {"n_slices": 3, "size": 64, "pixel_mm": 2.5}


def _ratio(case: io.Case, value: int, channel: str) -> float:
    img = case.image(channel)
    return float(img[case.labels == value].mean() / img[case.labels == 200].mean())


def test_same_seed_same_case_other_seed_differs():
    a, b, c = (
        phantom.make_case(4, **SMALL),
        phantom.make_case(4, **SMALL),
        phantom.make_case(5, **SMALL),
    )
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.geometry.affine, b.geometry.affine)
    assert not np.array_equal(a.labels, c.labels)
    assert a.case_id == "1005" and a.channels == ("bSSFP", "LGE", "T2")
    assert a.images.dtype == np.float32 and a.images.shape == (3, 64, 64, 3)
    assert np.array_equal(a.images, np.round(a.images)) and a.images.min() >= 0  # int16-storable


def test_anatomy_and_infarct_layout():
    case = phantom.make_sample_case("1001")
    lab = case.labels
    assert set(np.unique(lab)) == set(MYOPS_VALUES)
    scar_per_slice = [(lab[z] == 2221).sum() for z in range(case.n_slices)]
    edema_per_slice = [(lab[z] == 1220).sum() for z in range(case.n_slices)]
    # the apical slice is scar-free but keeps edema; the other slices have scar
    assert scar_per_slice[-1] == 0 and edema_per_slice[-1] > 0
    assert all(n > 20 for n in scar_per_slice[:-1])
    # the LV shrinks from base to apex
    blood = [(lab[z] == 500).sum() for z in range(case.n_slices)]
    assert blood == sorted(blood, reverse=True) and blood[0] > 2 * blood[-1]
    for z in range(case.n_slices - 1):
        scar, pool = lab[z] == 2221, lab[z] == 500
        # scar starts at the endocardium (touches the blood pool) ...
        assert (ndi.binary_dilation(scar) & pool).any()
        # ... lies inside the wall, next to edema (the wider edema zone)
        assert (ndi.binary_dilation(scar, iterations=2) & (lab[z] == 1220)).any()
    # myocardium surrounds the blood pool: no blood voxel touches background
    ring = ndi.binary_dilation(lab == 500, structure=np.ones((1, 3, 3), bool)) & ~(lab == 500)
    assert not np.isin(lab[ring], [0, 600]).any()
    # no infarct: no scar, no edema
    healthy = phantom.make_sample_case("1002")
    assert set(np.unique(healthy.labels)) == {0, 200, 500, 600}


def test_contrasts_match_real_mri_calibration():
    """Ratios to healthy myocardium, within 15 % of the real MyoPS means (docs/io.md)."""
    real = {  # mean of the 25 development cases 3001-3025 (scripts/calibrate_phantom.py)
        (500, "bSSFP"): 2.32, (500, "LGE"): 2.66, (500, "T2"): 0.52,
        (600, "bSSFP"): 1.85, (600, "LGE"): 2.36, (600, "T2"): 0.42,
        (1220, "bSSFP"): 1.45, (1220, "LGE"): 1.86, (1220, "T2"): 1.50,
        (2221, "bSSFP"): 1.33, (2221, "LGE"): 2.74, (2221, "T2"): 1.39,
    }  # fmt: skip
    case = phantom.make_sample_case("1001")
    for (value, channel), target in real.items():
        assert _ratio(case, value, channel) == pytest.approx(target, rel=0.15), (value, channel)
    # the clinically used contrasts: scar bright on LGE, edema bright on T2
    assert _ratio(case, 2221, "LGE") > 2.2 and _ratio(case, 1220, "T2") > 1.25
    # healthy myocardium nulled on LGE: scar brighter than edema, edema brighter than it
    assert _ratio(case, 2221, "LGE") > 1.2 * _ratio(case, 1220, "LGE") > 1.2
    # contrast=0 makes every tissue look like myocardium (before noise)
    flat = phantom.make_case(0, noise=0.0, texture=0.0, bias=0.0, contrast=0.0, **SMALL)
    assert _ratio(flat, 2221, "LGE") == pytest.approx(1.0, abs=0.02)


def test_partial_volume_and_rician_noise():
    clean = phantom.make_case(2, noise=0.0, texture=0.0, bias=0.0, **SMALL)
    lge = clean.image("LGE")
    myo = phantom.MYOCARDIUM_SIGNAL["LGE"]
    blood = myo * phantom.INTENSITY_RATIOS["lv_blood"]["LGE"]
    # inner voxels hold the pure tissue value of their slice (+-5 % gain per slice) ...
    core = ndi.binary_erosion(clean.labels == 500, structure=np.ones((1, 3, 3), bool))
    core &= ~ndi.binary_dilation(clean.labels != 500, iterations=2)  # well inside the pool
    for z in range(clean.n_slices):
        pure = np.median(lge[z][core[z]])
        assert pure == pytest.approx(blood, rel=0.06)
        assert np.abs(lge[z][core[z]] - pure).max() <= 1.0
        # ... voxels on the blood-pool border are mixtures (partial volume)
        border = (clean.labels[z] == 500) & ~ndi.binary_erosion(clean.labels[z] == 500)
        mixed = (lge[z][border] < pure - 5) & (lge[z][border] > 0.9 * myo)
        assert mixed.mean() > 0.2
    no_pv = phantom.make_case(2, noise=0.0, texture=0.0, bias=0.0, upsample=1, **SMALL)
    assert len(np.unique(no_pv.image("LGE")[0])) < len(np.unique(lge[0])) / 3
    # air is Rician: mean = sigma * sqrt(pi / 2), never negative
    noisy = phantom.make_case(2, noise=0.1, **SMALL)
    air = noisy.image("T2")[:, :2, :]  # above the chest wall
    sigma = 0.1 * phantom.MYOCARDIUM_SIGNAL["T2"]
    assert air.min() >= 0
    assert air.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.15)


@pytest.mark.parametrize("opts", [{"n_slices": 1}, {"n_slices": 2, "upsample": 1}, {"size": 40}])
def test_edge_sizes(opts):
    case = phantom.make_case(9, **{**SMALL, **opts})
    assert case.images.shape[:3] == case.labels.shape
    assert (case.labels == 500).any() and (case.labels == 200).any()


def test_oblique_scanner_geometry():
    case = phantom.make_case(0, **SMALL)
    aff = case.geometry.affine
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), (2.5, 2.5, 10.0))
    assert abs(aff[0, 0]) < 0.99 * 2.5  # rotated, not axis-aligned
    assert case.spacing_mm == (10.0, 2.5, 2.5)


def test_write_dataset_layout_and_refusal(tmp_path):
    written = phantom.write_dataset(tmp_path, 2, seed=3, healthy=1, **SMALL)
    assert written[0]["bSSFP"] == tmp_path / "train25" / "myops_training_1001_C0.nii.gz"
    assert written[1]["mask"] == tmp_path / "train25_myops_gd" / "myops_training_1002_gd.nii.gz"
    cases = [s.load() for s in io.discover_cases(tmp_path)]
    assert [c.case_id for c in cases] == ["1001", "1002"]
    again = phantom.make_case(3, **SMALL)
    np.testing.assert_array_equal(cases[0].images, again.images)
    np.testing.assert_array_equal(cases[0].labels, again.labels)
    assert not (cases[1].labels == 2221).any()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz")}
    with pytest.raises(OutputExistsError, match="exists"):
        phantom.write_dataset(tmp_path, 3, seed=0, **SMALL)
    assert {
        p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz")
    } == before  # nothing written


def test_cli_phantom(tmp_path, capsys):
    args = [
        "phantom",
        str(tmp_path),
        "--cases",
        "1",
        "--seed",
        "7",
        "--slices",
        "2",
        "--size",
        "48",
    ]
    assert main(args) == 0
    assert "wrote 1 case" in capsys.readouterr().out
    case = io.load_case(tmp_path, "1001")
    assert case.images.shape == (2, 48, 48, 3) and case.labels is not None
    assert main(args) == 1
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


@pytest.mark.slow
def test_default_method_finds_the_sample_scar(sample_data_dir):
    """The bundled sample shows the product working: scar Dice >= 0.6 with the default."""
    from napari_gmmseg.metrics import dice
    from napari_gmmseg.segment import segment_case

    case = io.load_case(sample_data_dir, "1001")
    fit = segment_case(case, roi="gt")
    scar = dice(fit.labels, case.labels, labels=[2221])
    assert float(np.ravel(scar)[0]) >= 0.6


def test_bundled_sample_data_matches_generator(sample_data_dir):
    """sample_data/ is exactly what phantom.SAMPLE_CASES generates (regenerate it if not)."""
    total = sum(p.stat().st_size for p in sample_data_dir.rglob("*") if p.is_file())
    assert total < 5e6
    for cid in phantom.SAMPLE_CASES:
        disk = io.load_case(sample_data_dir, cid)
        gen = phantom.make_sample_case(cid)
        np.testing.assert_array_equal(disk.images, gen.images)
        np.testing.assert_array_equal(disk.labels, gen.labels)
        np.testing.assert_allclose(disk.geometry.affine, gen.geometry.affine, atol=1e-4)
