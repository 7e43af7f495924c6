"""Dataset evaluation end to end on sample_data/: files, geometry, summary, resume, failures, Dask."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_gmmseg.batch import CSV_COLUMNS, evaluate_dataset, read_csv
from napari_gmmseg.cli import main
from napari_gmmseg.errors import CaseLoadError, ModelError

#: Fast options: the engine's GMM with few iterations (the test checks plumbing, not accuracy).
FAST = ["--seed", "0", "--max-iter", "15", "--device", "cpu"]
FAST_OPTIONS = {"seed": 0, "max_iter": 15, "device": "cpu"}


def _case_ids(sample_data_dir: Path) -> list[str]:
    from napari_gmmseg.io import discover_cases

    return [s.case_id for s in discover_cases(sample_data_dir)]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, sample_data_dir):
    """One CLI evaluation of sample_data/ with gmm, shared by the tests below."""
    if not any(sample_data_dir.glob("*/*.nii.gz")):
        pytest.skip("sample_data/ is empty")
    out = tmp_path_factory.mktemp("eval")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(
            [
                "evaluate",
                str(sample_data_dir),
                "--method",
                "gmm",
                "--out",
                str(out),
                "--no-progress",
                *FAST,
            ]
        )
    return out, rc, buf.getvalue()


def test_evaluate_writes_csv_labels_and_summary(first_run, sample_data_dir):
    import nibabel as nib

    from napari_gmmseg.io import discover_cases

    out, rc, printed = first_run
    assert rc == 0, printed
    ids = _case_ids(sample_data_dir)
    assert ids
    # the paper-style table was printed
    assert "Dice per slice (paper protocol" in printed and "gmm" in printed
    assert "Burden per case" in printed and "Runtime" in printed
    # metrics.csv: header, one volume row per class and case, Dice in [0, 1] or NaN
    header = (out / "metrics.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert tuple(header) == CSV_COLUMNS
    rows = read_csv(out / "metrics.csv")
    vol = [r for r in rows if r["slice"] == "volume"]
    assert sorted({r["case"] for r in vol}) == ids
    assert len(vol) == 6 * len(ids)  # 4 classes, LV myocardium, scar+edema
    dice = np.array([r["dice"] for r in rows])
    ok = np.isfinite(dice)
    assert ok.any() and np.all((dice[ok] >= 0) & (dice[ok] <= 1))
    assert any(r["slice"] != "volume" for r in rows)
    # label maps: MyoPS values inside the ground-truth LV, on the source geometry
    for src in discover_cases(sample_data_dir):
        path = out / "gmm" / f"{src.case_id}.nii.gz"
        img, ref = nib.load(path), nib.load(src.sequences["bSSFP"])
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        assert img.shape == ref.shape[:3]
        lab = np.asarray(img.dataobj)
        gt = np.asarray(nib.load(src.mask).dataobj)
        assert set(np.unique(lab)) <= {0, 200, 500, 1220, 2221}
        assert not np.any(lab[~np.isin(gt, [500, 200, 1220, 2221])])
        # the CSV's volumes are those of the saved map (voxel volume from the header)
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        scar = next(r for r in vol if r["case"] == src.case_id and r["class"] == "scar")
        assert scar["pred_ml"] == pytest.approx(np.count_nonzero(lab == 2221) * voxel_ml, rel=1e-4)
        assert scar["gt_ml"] == pytest.approx(np.count_nonzero(gt == 2221) * voxel_ml, rel=1e-4)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_cases"] == len(ids) and summary["failures"] == []
    assert summary["methods"] == ["gmm"] and summary["options"]["max_iter"] == 15
    assert summary["versions"]["napari-gmmseg"]
    assert {r["status"] for r in summary["runs"]} == {"segmented"}
    assert summary["presence"] is None  # the paper's fixed K by default
    if summary.get("bland_altman") is not None:  # burden agreement plot beside the table
        assert (out / "bland_altman.png").stat().st_size > 1000
    agg = summary["aggregates"]["gmm"]
    assert agg["volume"]["n_units"] == len(ids)
    assert agg["runtime"]["segmented"] == len(ids)


def test_evaluate_reports_myops_scores_and_burden_agreement(first_run, sample_data_dir):
    """Per case scar / scar+edema Dice and burden agreement, as named and matched, in every output."""
    from napari_gmmseg.agreement import bland_altman
    from napari_gmmseg.io import discover_cases, read_labels
    from napari_gmmseg.metrics import match_slices, myops_scores

    out, _, printed = first_run
    assert "MyoPS 2020 scores: Dice per case" in printed and "Burden agreement" in printed
    assert "named scar+edema" in printed and "matched scar+edema" in printed
    rows = read_csv(out / "metrics.csv")
    vol = {(r["case"], r["class"]): r for r in rows if r["slice"] == "volume"}
    named, matched = [], []
    for src in discover_cases(sample_data_dir):
        gt = src.load().labels  # (Z, Y, X), as the saved map reads back
        lab = read_labels(out / "gmm" / f"{src.case_id}.nii.gz")
        lab = np.where(np.isin(gt, [500, 200, 1220, 2221]), lab, 0)  # the ROI
        s = myops_scores(lab, gt)
        m = myops_scores(match_slices(lab, gt, components=[500, 200, 1220, 2221])[0], gt)
        assert vol[(src.case_id, "scar")]["dice_named"] == pytest.approx(s["scar_dice"], abs=1e-5)
        r = vol[(src.case_id, "scar+edema")]
        assert r["dice_named"] == pytest.approx(s["scar_edema_dice"], abs=1e-5)
        assert r["dice"] == pytest.approx(m["scar_edema_dice"], abs=1e-5)
        assert np.isfinite(r["pred_pct_matched"]) and np.isfinite(r["pred_ml_matched"])
        named.append(s["scar_edema_dice"])
        matched.append(m["scar_edema_dice"])
    agg = json.loads((out / "summary.json").read_text(encoding="utf-8"))["aggregates"]["gmm"]
    myops = agg["myops_per_case"]
    assert myops["named"]["scar+edema"]["mean"] == pytest.approx(np.mean(named), abs=1e-5)
    assert myops["matched"]["scar+edema"]["mean"] == pytest.approx(np.mean(matched), abs=1e-5)
    assert set(myops["named"]) == {"scar", "scar+edema", "LV myocardium"}
    scar = [r for r in rows if r["class"] == "scar"]
    for level, row_level in (("case", "volume"), ("slice", "slice")):
        for flavour, col in (("named", "pred_pct"), ("matched", "pred_pct_matched")):
            sel = [r for r in scar if r["level"] == row_level]
            ba = bland_altman([r[col] for r in sel], [r["gt_pct"] for r in sel])
            got = agg["burden_agreement"][level][flavour]["scar_pct"]
            assert got["n"] == ba.n and got["bias"] == pytest.approx(ba.bias, abs=1e-4)
            assert got["mae"] == pytest.approx(ba.mae, abs=1e-4)
            assert set(agg["burden_agreement"][level][flavour]) >= {"scar_pct", "edema_ml"}


def _two_case_rows() -> list[dict]:
    """Metric rows of two hand-made one-slice cases (1 mm³ voxels, 100-pixel LV myocardium).

    Case A: 60 healthy, 20 scar, 20 edema; named with scar and edema swapped.
    Case B: 90 healthy, 10 scar; predicted 70 healthy, 30 scar (covering the true scar).
    """
    from napari_gmmseg.metrics import evaluate_labels

    rows = []
    gt_a = np.zeros((1, 10, 10), np.int32)
    gt_a[0, :6], gt_a[0, 6:8], gt_a[0, 8:] = 200, 2221, 1220
    pred_a = gt_a.copy()
    pred_a[0, 6:8], pred_a[0, 8:] = 1220, 2221
    gt_b = np.full((1, 10, 10), 200, np.int32)
    gt_b[0, 9] = 2221
    pred_b = gt_b.copy()
    pred_b[0, 7:] = 2221
    for case, pred, gt in (("A", pred_a, gt_a), ("B", pred_b, gt_b)):
        for r in evaluate_labels(pred, gt, (1.0, 1.0, 1.0)):
            rows.append({"case": case, "method": "m", **r})
    return rows


def test_summarize_and_table_known_myops_scores_and_agreement():
    from napari_gmmseg.batch import format_table, summarize

    agg = summarize(_two_case_rows(), [], ["m"])["m"]
    named, matched = agg["myops_per_case"]["named"], agg["myops_per_case"]["matched"]
    # scar Dice per case: named A 0 (swapped), B 2·10/(30+10) = 0.5; matched A 1, B 0.5
    assert named["scar"]["mean"] == pytest.approx(0.25) and named["scar"]["std"] == 0.25
    assert matched["scar"]["mean"] == pytest.approx(0.75) and matched["scar"]["n"] == 2
    # scar ∪ edema: A 1 either way, B 0.5
    assert named["scar+edema"]["mean"] == pytest.approx(0.75)
    assert matched["scar+edema"]["mean"] == pytest.approx(0.75)
    # scar burden (% LV myocardium) per case: A 20 vs 20, B 30 vs 10 -> differences 0, +20
    sd = np.std([0.0, 20.0], ddof=1)
    for level in ("case", "slice"):  # one slice per case: the same pairs
        for flavour in ("named", "matched"):
            s = agg["burden_agreement"][level][flavour]["scar_pct"]
            assert (s["n"], s["bias"], s["mae"]) == (2, pytest.approx(10.0), pytest.approx(10.0))
            assert s["loa_low"] == pytest.approx(10.0 - 1.96 * sd)
            assert s["loa_high"] == pytest.approx(10.0 + 1.96 * sd)
    # edema: A 20 vs 20 as named, B 0 vs 0 -> no error; scar in mL: 0 and +0.02
    assert agg["burden_agreement"]["case"]["named"]["edema_pct"]["mae"] == 0.0
    assert agg["burden_agreement"]["case"]["named"]["scar_ml"]["bias"] == pytest.approx(0.01)
    assert agg["burden"]["scar_pct"]["bias"] == pytest.approx(10.0)  # the same fact, same home
    table = format_table({"m": agg}, ["m"])
    lines = table.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("MyoPS 2020 scores"))
    assert lines[head + 1].split()[2:] == ["named", "scar", "named", "scar+edema", "matched",
                                            "scar", "matched", "scar+edema", "named", "LV", "myo"]  # fmt: skip
    cells = lines[head + 2].replace(" ± ", "±").split()
    assert cells == ["m", "2", "0.25±0.25", "0.75±0.25", "0.75±0.25", "0.75±0.25", "1.00±0.00"]
    agreement = [ln.split() for ln in table.splitlines() if ln.startswith("m ") and "[" in ln]
    assert [a[1:3] for a in agreement] == [
        ["named", "case"], ["named", "slice"], ["matched", "case"], ["matched", "slice"]
    ]  # fmt: skip
    assert agreement[0][3:7] == ["2", "10.0", "+10.0", f"[{10 - 1.96 * sd:+.1f},"]


def test_resume_skips_and_force_recomputes(first_run, sample_data_dir, tmp_path):
    out0, _, _ = first_run
    out = tmp_path / "eval"
    shutil.copytree(out0, out)
    label = next((out / "gmm").glob("*.nii.gz"))
    before = label.stat().st_mtime_ns
    res = evaluate_dataset(
        sample_data_dir, ["gmm"], out, progress=False, options=FAST_OPTIONS, plots=False
    )
    assert {o.status for o in res.outcomes} == {"skipped"}
    assert label.stat().st_mtime_ns == before
    # metrics are recomputed from the saved maps: same table and CSV as the first run
    assert (out / "metrics.csv").read_text(encoding="utf-8") == (out0 / "metrics.csv").read_text(
        encoding="utf-8"
    )
    assert res.summary["aggregates"]["gmm"]["runtime"]["skipped"] == len(res.outcomes)
    assert res.summary["aggregates"]["gmm"]["runtime"]["seconds_per_case"]["n"] == len(res.outcomes)
    res = evaluate_dataset(
        sample_data_dir, ["gmm"], out, progress=False, options=FAST_OPTIONS, plots=False, force=True
    )
    assert {o.status for o in res.outcomes} == {"segmented"}
    assert label.stat().st_mtime_ns != before
    assert (out / "metrics.csv").read_text(encoding="utf-8") == (out0 / "metrics.csv").read_text(
        encoding="utf-8"
    )  # seeded


def test_broken_case_is_reported_and_others_finish(sample_data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample_data_dir, data)
    ids = _case_ids(data)
    if len(ids) < 2:
        pytest.skip("needs two sample cases")
    broken = next((data / "train25").glob(f"*{ids[0]}_DE.nii.gz"))
    broken.write_bytes(b"this is not a NIfTI file")
    out = tmp_path / "out"
    rc = main(
        ["evaluate", str(data), "--methods", "gmm", "--out", str(out), "--no-progress", *FAST]
    )
    assert rc == 1  # failures make the exit status non-zero, after everything was written
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [f["case"] for f in summary["failures"]] == [ids[0]]
    assert summary["failures"][0]["error"]  # the message is kept
    assert (out / "gmm" / f"{ids[1]}.nii.gz").exists()
    assert not (out / "gmm" / f"{ids[0]}.nii.gz").exists()
    cases = {r["case"] for r in read_csv(out / "metrics.csv")}
    assert cases == set(ids[1:])


def test_dask_local_cluster_gives_identical_csv(first_run, sample_data_dir, tmp_path):
    distributed = pytest.importorskip("distributed")
    out0, _, _ = first_run
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        res = evaluate_dataset(
            sample_data_dir,
            ["gmm"],
            tmp_path,
            progress=False,
            options=FAST_OPTIONS,
            plots=False,
            scheduler=client,
        )
    assert res.failures == []
    assert (tmp_path / "metrics.csv").read_text(encoding="utf-8") == (
        out0 / "metrics.csv"
    ).read_text(encoding="utf-8")
    for label in (out0 / "gmm").glob("*.nii.gz"):
        a = np.asarray(__import__("nibabel").load(label).dataobj)
        b = np.asarray(__import__("nibabel").load(tmp_path / "gmm" / label.name).dataobj)
        np.testing.assert_array_equal(a, b)


def test_folder_per_case_layout_and_roi_folder(first_run, sample_data_dir, tmp_path):
    """One folder per case, ROI given as a folder of masks: same results as MyoPS layout + GT ROI."""
    out0, _, _ = first_run
    data = tmp_path / "cases"
    rois = tmp_path / "rois"
    rois.mkdir()
    for img in sorted((sample_data_dir / "train25").glob("*.nii.gz")):
        cid = img.name.split("_")[2]
        (data / cid).mkdir(parents=True, exist_ok=True)
        shutil.copy(img, data / cid / img.name)
    for gd in sorted((sample_data_dir / "train25_myops_gd").glob("*.nii.gz")):
        cid = gd.name.split("_")[2]
        shutil.copy(gd, data / cid / gd.name)
        shutil.copy(gd, rois / f"roi_{cid}.nii.gz")
    out = tmp_path / "out"
    res = evaluate_dataset(
        data, ["gmm"], out, roi=rois, progress=False, options=FAST_OPTIONS, plots=False
    )
    assert res.failures == []
    assert (out / "metrics.csv").read_text(encoding="utf-8") == (out0 / "metrics.csv").read_text(
        encoding="utf-8"
    )


def test_bad_requests_raise_typed_errors(tmp_path, sample_data_dir):
    with pytest.raises(ModelError, match="unknown method"):
        evaluate_dataset(sample_data_dir, ["nope"], tmp_path, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaseLoadError, match="no case"):
        evaluate_dataset(tmp_path / "empty", ["gmm"], tmp_path / "o", progress=False)
    assert (
        main(["evaluate", str(tmp_path / "empty"), "--method", "gmm", "--out", str(tmp_path)]) == 1
    )


def test_demo_finds_sample_data(repo_root, monkeypatch, tmp_path):
    from napari_gmmseg.cli.demo import find_sample_data

    monkeypatch.chdir(tmp_path)
    assert find_sample_data() == repo_root / "sample_data"
    assert find_sample_data(str(tmp_path)) == tmp_path


def test_presence_rule_is_applied_recorded_and_guards_resume(first_run, sample_data_dir, tmp_path):
    pytest.importorskip("napari_gmmseg.presence")
    out0, _, _ = first_run
    out = tmp_path / "eval"
    shutil.copytree(out0, out)
    # maps made with other options are never mixed in: refused with a message naming them
    res = evaluate_dataset(
        sample_data_dir,
        ["gmm"],
        out,
        progress=False,
        options=FAST_OPTIONS,
        plots=False,
        presence="pv-contrast",
    )
    assert {o.status for o in res.outcomes} == {"failed"}
    assert all("other options" in o.error and "presence" in o.error for o in res.outcomes)
    assert res.summary["presence"]["rule"] == "pv-contrast"
    res = evaluate_dataset(
        sample_data_dir,
        ["gmm"],
        out,
        progress=False,
        options=FAST_OPTIONS,
        plots=False,
        presence="pv-contrast",
        force=True,
    )
    assert res.failures == [] and res.summary["warnings"] == []
    side = json.loads(next((out / "gmm").glob("*.json")).read_text(encoding="utf-8"))
    assert side["requested"]["presence"]["rule"] == "pv-contrast"
    assert "presence" in side["params"]


def test_em_and_deep_only_options_reach_only_their_methods():
    from napari_gmmseg.batch import _method_kwargs
    from napari_gmmseg.cli import build_parser
    from napari_gmmseg.cli.evaluate import method_options

    options = {"seed": 1, "n_init": 3, "max_epochs": 2}
    assert _method_kwargs("gmm", options) == {"seed": 1, "n_init": 3}
    assert _method_kwargs("deepsvg", options) == {"seed": 1, "max_epochs": 2}
    args = build_parser().parse_args(["evaluate", "data", "--out", "o", "--n-init", "5"])
    assert method_options(args)["n_init"] == 5


def test_resume_refuses_maps_made_with_another_seed(first_run, sample_data_dir, tmp_path):
    out0, _, _ = first_run
    out = tmp_path / "eval"
    shutil.copytree(out0, out)
    label = next((out / "gmm").glob("*.nii.gz"))
    before = label.read_bytes()
    sidecar = json.loads(
        label.with_name(label.name.replace(".nii.gz", ".json")).read_text(encoding="utf-8")
    )
    assert sidecar["requested"]["options"]["method"] == "gmm"  # the method run, not the default
    res = evaluate_dataset(
        sample_data_dir, ["gmm"], out, progress=False, options={**FAST_OPTIONS, "seed": 1},
        plots=False,
    )  # fmt: skip
    assert {o.status for o in res.outcomes} == {"failed"}
    assert all("seed=0 (now 1)" in o.error and "--force" in o.error for o in res.outcomes)
    assert label.read_bytes() == before  # nothing overwritten unasked
    # no --seed is the same request as the default seed 0 written out
    no_seed = {k: v for k, v in FAST_OPTIONS.items() if k != "seed"}
    res = evaluate_dataset(
        sample_data_dir, ["gmm"], out, progress=False, options=no_seed, plots=False
    )
    assert {o.status for o in res.outcomes} == {"skipped"}


def test_truncated_or_unreadable_outputs_are_redone(first_run, sample_data_dir, tmp_path):
    out0, _, _ = first_run
    out = tmp_path / "eval"
    shutil.copytree(out0, out)
    labels = sorted((out / "gmm").glob("*.nii.gz"))
    labels[0].write_bytes(labels[0].read_bytes()[:100])  # truncated map
    labels[-1].with_name(labels[-1].name.replace(".nii.gz", ".json")).write_text("{")  # bad sidecar
    res = evaluate_dataset(
        sample_data_dir, ["gmm"], out, progress=False, options=FAST_OPTIONS, plots=False
    )
    assert res.failures == []
    status = {o.case_id: o.status for o in res.outcomes}
    assert status[labels[0].name.split(".")[0]] == "segmented"
    assert status[labels[-1].name.split(".")[0]] == "segmented"
    assert (out / "metrics.csv").read_text() == (out0 / "metrics.csv").read_text()


def test_unknown_case_ids_are_an_error_listing_them(sample_data_dir, tmp_path):
    from napari_gmmseg.errors import CaseLoadError

    with pytest.raises(CaseLoadError, match=r"no case \['9999'\]; the cases are 1001"):
        evaluate_dataset(
            sample_data_dir, ["gmm"], tmp_path / "e", cases=["1001", "9999"], progress=False
        )
    assert not (tmp_path / "e").exists()  # refused before any work
