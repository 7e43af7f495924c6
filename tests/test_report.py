"""AHA 17-segment report: orientation, segments, transmurality, files (napari_gmmseg.report)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_gmmseg.cli import main
from napari_gmmseg.errors import OutputExistsError
from napari_gmmseg.io import Geometry, read_labels, save_labels
from napari_gmmseg.report import (
    REPORT_FILES,
    SEPTAL_SEGMENTS,
    OrientationError,
    compute_report,
    write_report,
)
from napari_gmmseg.report.orientation import CONTACT_MM, MYOCARDIUM_VALUES
from napari_gmmseg.report.segments import sector_of

SPACING = (8.0, 1.5, 1.5)  # (z, y, x) mm


def ring_case(*, depth: float = 0.5, rv: bool = True, cap: bool = True) -> np.ndarray:
    """LV rings on an axis-aligned grid, RV on the left (low columns), scar straight up.

    The apex is at the last slice (the LV shrinks), the affine is diagonal (det > 0),
    so the AHA angle is ``atan2(row, column)``: the septum is at 180 degrees and the
    scar sector (centred at -90 degrees, +-25 degrees, the inner ``depth`` of the wall)
    lies in the inferior segments 4, 10 and 15.
    """
    nz, n = 5, 72
    r = (np.arange(n) - 35.27) * SPACING[1]
    dy, dx = np.meshgrid(r, r, indexing="ij")
    rho, ang = np.hypot(dy, dx), np.degrees(np.arctan2(dy, dx))
    lab = np.zeros((nz, n, n), dtype=np.int32)
    for z in range(4):
        endo, epi = 14.0 - 1.5 * z, 24.0 - 1.5 * z
        lab[z][rho < epi] = 200
        lab[z][rho < endo] = 500
        if rv:
            lab[z][(rho >= epi) & (rho < epi + 10) & (np.abs(ang) > 130)] = 600
        scar = (rho >= endo) & (rho < endo + depth * (epi - endo)) & (np.abs(ang + 90) < 25)
        lab[z][scar] = 2221
    if cap:
        lab[4][rho < 8.0] = 200  # apical cap: myocardium, no blood pool
    return lab


def ring_affine() -> np.ndarray:
    return np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])


def test_known_sector_lands_in_inferior_segments_with_its_transmurality():
    lab = ring_case(depth=0.5)
    rep = compute_report(lab, SPACING, ring_affine())
    assert rep.meta["apex_rule"] == "LV+RV area"
    assert rep.hand == 1 and rep.apex_last
    levels = {s["slice"]: s["level"] for s in rep.slices}
    assert levels == {0: "basal", 1: "mid", 2: "mid", 3: "apical", 4: "apex"}
    for f in rep.frames[:4]:  # RV contact arc centred on the left: anchor at 180 degrees
        assert f.source == "rv"
        assert abs(np.angle(np.exp(1j * (f.anchor_rad - np.pi)))) < np.radians(4)
    scar = rep.column("scar_ml")
    assert set(np.flatnonzero(scar > 0) + 1) == {4, 10, 15}
    for s in (4, 10, 15):
        row = rep.segments[s - 1]
        assert 42 <= row["scar_transmurality_pct"] <= 58  # the inner half of the wall
        assert row["scar_transmurality_max_pct"] <= 70
    assert rep.segments[16]["present"] and rep.segments[16]["myocardium_ml"] > 0


def test_transmural_scar_reaches_100_percent():
    rep = compute_report(ring_case(depth=1.0), SPACING, ring_affine(), apex="last")
    assert rep.segments[3]["scar_transmurality_max_pct"] == pytest.approx(100.0)
    assert rep.segments[3]["scar_transmurality_pct"] > 80  # sector edges are pixelated


def test_segments_follow_the_anatomy_when_the_file_is_flipped():
    """Handedness comes from the affine: mirrored voxels on a mirrored affine, same segments."""
    lab = ring_case()
    ref = compute_report(lab, SPACING, ring_affine()).segments_zyx
    n = lab.shape[2]
    flip_x = np.eye(4)
    flip_x[0, 0], flip_x[0, 3] = -1, n - 1
    got = compute_report(lab[:, :, ::-1], SPACING, ring_affine() @ flip_x).segments_zyx
    np.testing.assert_array_equal(got[:, :, ::-1], ref)
    flip_z = np.eye(4)
    flip_z[2, 2], flip_z[2, 3] = -1, lab.shape[0] - 1
    got = compute_report(lab[::-1], SPACING, ring_affine() @ flip_z).segments_zyx
    np.testing.assert_array_equal(got[::-1], ref)


def test_phantom_infarct_segment_septum_and_sums():
    """The phantom's RV wraps the septum on the -x side and its infarct is one sector."""
    from napari_gmmseg.phantom import make_case

    case = make_case(0, size=96, transmural=0.9)
    lab, geo = case.labels, case.geometry
    rep = compute_report(lab, geo.spacing_mm, geo.affine)
    assert rep.apex_last  # phantom: slice 0 is the base
    voxel_ml = np.prod(geo.spacing_mm) / 1000
    myo = np.isin(lab, MYOCARDIUM_VALUES)
    assert rep.column("myocardium_ml").sum() == pytest.approx(myo.sum() * voxel_ml)
    assert rep.column("scar_ml").sum() == pytest.approx((lab == 2221).sum() * voxel_ml)
    assert rep.column("edema_ml").sum() == pytest.approx((lab == 1220).sum() * voxel_ml)
    assert np.array_equal(rep.segments_zyx > 0, myo)
    for f in rep.frames:  # septum towards the RV centre, i.e. image angle 180 degrees
        raw = rep.hand * f.anchor_rad
        assert abs(np.angle(np.exp(1j * (raw - np.pi)))) < np.radians(25)
    # RV-adjacent myocardium lies in the septal segments
    from scipy.ndimage import distance_transform_edt

    near = np.zeros_like(myo)
    for z in range(lab.shape[0]):
        d = distance_transform_edt(lab[z] != 600, sampling=geo.spacing_mm[1:])
        near[z] = myo[z] & (d <= CONTACT_MM)
    assert np.isin(rep.segments_zyx[near], SEPTAL_SEGMENTS).mean() > 0.9
    # the infarct centre (scar circular mean angle) decides the segment holding most scar
    for f in rep.frames:
        rr, cc = np.nonzero(lab[f.z] == 2221)
        if rr.size == 0:
            continue
        dy = (rr - f.centre_rc[0]) * geo.spacing_mm[1]
        dx = (cc - f.centre_rc[1]) * geo.spacing_mm[2]
        centre = np.angle(np.exp(1j * rep.hand * np.arctan2(dy, dx)).mean())
        level = next(s["level"] for s in rep.slices if s["slice"] == f.z)
        expected = int(sector_of(np.array([centre]), f.anchor_rad, level)[0])
        segs, counts = np.unique(rep.segments_zyx[f.z][lab[f.z] == 2221], return_counts=True)
        assert segs[np.argmax(counts)] == expected
    tm = rep.chords.scar_pct[np.isfinite(rep.chords.scar_pct)]
    assert tm.min() >= 0 and tm.max() <= 100 and tm.max() >= 85  # near-transmural centre


def test_without_rv_needs_a_point_and_uses_it():
    lab = ring_case(rv=False)
    with pytest.raises(OrientationError, match="--rv-insertion"):
        compute_report(lab, SPACING, ring_affine())
    # anterior insertion 60 degrees before the septal centre (180): at image angle 120
    a = np.radians(120)
    point = (35.27 + 20 * np.cos(a), 35.27 + 20 * np.sin(a), 0)
    rep = compute_report(lab, SPACING, ring_affine(), rv_insertion_xyz=point)
    ref = compute_report(ring_case(), SPACING, ring_affine())
    assert {f.source for f in rep.frames} == {"point"}
    agree = (rep.segments_zyx == ref.segments_zyx)[ref.segments_zyx > 0].mean()
    assert agree > 0.97
    # the RV of another map (a manual mask) orients a map without 600
    rv = ring_case() == 600
    rep = compute_report(lab, SPACING, ring_affine(), rv_zyx=rv)
    np.testing.assert_array_equal(rep.segments_zyx, ref.segments_zyx)


def _geometry(lab: np.ndarray) -> Geometry:
    return Geometry.from_affine(ring_affine(), lab.shape)


def test_write_report_files_and_refusal(tmp_path):
    lab = ring_case()
    geo = _geometry(lab)
    rep = compute_report(lab, geo.spacing_mm, geo.affine)
    out = tmp_path / "rep"
    write_report(out, rep, lab, geo, manual=(rep, lab), title="ring")
    for name in (*REPORT_FILES, "manual_segments.csv"):
        assert (out / name).stat().st_size > 0
    with open(out / "segments.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["segment"]) for r in rows] == list(range(1, 18))
    for col in (
        "level",
        "myocardium_ml",
        "scar_ml",
        "edema_ml",
        "scar_pct",
        "edema_pct",
        "scar_transmurality_pct",
    ):
        assert col in rows[0]
    assert sum(float(r["myocardium_ml"]) for r in rows) == pytest.approx(
        rep.totals["myocardium_ml"], rel=1e-3
    )
    import nibabel as nib

    img = nib.load(out / "segments.nii.gz")
    np.testing.assert_allclose(img.affine, geo.affine)
    seg = np.asarray(img.dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(seg, rep.segments_zyx)
    assert set(np.unique(seg[seg > 0])) <= set(range(1, 18))
    before = (out / "segments.csv").read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        write_report(out, rep, lab, geo)
    assert (out / "segments.csv").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    write_report(out, rep, lab, geo, overwrite=True)


def test_cli_report(tmp_path, capsys):
    lab = ring_case()
    geo = _geometry(lab)
    path = save_labels(lab, geo, tmp_path / "seg.nii.gz")
    out = tmp_path / "out"
    assert main(["report", str(path), "--out", str(out)]) == 0
    assert "scar" in capsys.readouterr().out
    assert all((out / n).exists() for n in REPORT_FILES)
    assert main(["report", str(path), "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["report", str(path), "--out", str(out), "--force"]) == 0
    no_rv = save_labels(ring_case(rv=False), geo, tmp_path / "norv.nii.gz")
    assert main(["report", str(no_rv), "--out", str(tmp_path / "o2")]) == 1
    assert "--rv-insertion" in capsys.readouterr().err
    assert not (tmp_path / "o2" / "segments.csv").exists()
    # a segmentation without RV, oriented by the manual mask's RV
    args = ["report", str(no_rv), "--out", str(tmp_path / "o4"), "--mask", str(path)]
    args += ["--rv-insertion", "25,53,0"]  # parsed, used only where neither map has an RV
    assert main(args) == 0
    assert (tmp_path / "o4" / "manual_segments.csv").exists()


def test_real_mask_sums_septum_and_range(real_data_dir):
    from napari_gmmseg.io import discover_cases

    src = next(s for s in discover_cases(real_data_dir) if s.mask is not None)
    lab, geo = read_labels(src.mask, with_geometry=True)
    rep = compute_report(lab, geo.spacing_mm, geo.affine)
    assert rep.meta["apex_rule"] == "world axis"
    total = rep.totals["myocardium_ml"]
    assert abs(rep.column("myocardium_ml").sum() - total) <= 0.02 * total
    tm = rep.chords.scar_pct[np.isfinite(rep.chords.scar_pct)]
    assert tm.min() >= 0 and tm.max() <= 100
    from scipy.ndimage import distance_transform_edt

    myo = np.isin(lab, MYOCARDIUM_VALUES)
    near = np.zeros_like(myo)
    for z in range(lab.shape[0]):
        d = distance_transform_edt(lab[z] != 600, sampling=geo.spacing_mm[1:])
        near[z] = myo[z] & (d <= CONTACT_MM)
    assert np.isin(rep.segments_zyx[near], SEPTAL_SEGMENTS).mean() > 0.8


def test_segment_errors_on_the_reference_sectors(tmp_path):
    from types import SimpleNamespace

    from napari_gmmseg.report.compare import segment_errors, write_segment_errors

    gt = ring_case()
    geo = _geometry(gt)
    same = segment_errors(gt, gt, geo.spacing_mm, geo.affine)
    assert [r["segment"] for r in same] == list(range(1, 18))  # the ring has a cap (17)
    assert all(abs(r["error_scar_ml"]) < 1e-12 and abs(r["error_edema_pct"]) < 1e-12 for r in same)
    pred = np.where(gt == 600, 0, gt)  # a segmentation has no RV: the mask's sectors are used
    pred[(pred == 2221)] = 200  # it misses the scar
    rows = segment_errors(pred, gt, geo.spacing_mm, geo.affine)
    by = {r["segment"]: r for r in rows}
    assert by[4]["error_scar_ml"] == pytest.approx(-by[4]["gt_scar_ml"])
    assert by[4]["gt_scar_ml"] > 0 and by[1]["error_scar_ml"] == 0
    assert by[4]["error_myocardium_ml"] == pytest.approx(0.0)
    # the evaluate hook: one row per (case, method, segment), MAE per method
    mask = save_labels(gt, geo, tmp_path / "c1_gd.nii.gz")
    seg = save_labels(pred, geo, tmp_path / "c1_gmm.nii.gz")
    outcome = SimpleNamespace(case_id="c1", method="gmm", status="segmented", label_path=seg)
    path, mae = write_segment_errors(
        [outcome], [SimpleNamespace(case_id="c1", mask=mask)], tmp_path / "segments.csv"
    )
    with open(path) as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == len(rows) and got[0]["case"] == "c1"
    assert mae["gmm"]["scar_pct"] == pytest.approx(
        np.mean([abs(r["error_scar_pct"]) for r in rows])
    )


def test_evaluate_segments_flag(tmp_path, capsys):
    from napari_gmmseg.phantom import write_dataset

    write_dataset(tmp_path / "ds", n_cases=1, n_slices=3, size=64)
    out = tmp_path / "ev"
    args = ["evaluate", str(tmp_path / "ds"), "--method", "gmm", "--out", str(out)]
    assert main([*args, "--segments", "--no-progress", "--max-iter", "20"]) == 0
    assert "MAE scar" in capsys.readouterr().out
    with open(out / "segments.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["method"] for r in rows} == {"gmm"}
    assert {int(r["segment"]) for r in rows} <= set(range(1, 17))
    assert all(abs(float(r["gt_scar_pct"])) <= 100 for r in rows)
