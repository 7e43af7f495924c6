"""Every sub-command says what it is doing before a step that can take seconds starts, and
shares one help style and one set of common flags."""

from __future__ import annotations

import re
import time

import pytest

from napari_gmmseg.cli import build_parser, main
from napari_gmmseg.errors import GmmSegError
from napari_gmmseg.methods import DEFAULT_METHOD


class _FakeSlowStep:
    """A stand-in for a slow step: records what stderr already showed when it started, then
    takes a moment and fails (so the command stops there)."""

    def __init__(self, capsys) -> None:
        self.capsys = capsys
        self.seen: str | None = None

    def __call__(self, *_args, **_kwargs):
        captured = self.capsys.readouterr()
        if self.seen is None:  # the first call: what was shown before any slow step ran
            self.seen = captured.err + captured.out
        time.sleep(0.05)
        raise GmmSegError("fake slow step stopped here")


def _sample_args(sample_data_dir):
    train = sample_data_dir / "train25"
    return [
        "--bssfp", str(train / "myops_training_1001_C0.nii.gz"),
        "--lge", str(train / "myops_training_1001_DE.nii.gz"),
        "--t2", str(train / "myops_training_1001_T2.nii.gz"),
    ]  # fmt: skip


def test_segment_says_automatic_roi_before_it_starts(
    sample_data_dir, tmp_path, capsys, monkeypatch
):
    fake = _FakeSlowStep(capsys)
    monkeypatch.setattr("napari_gmmseg.autoroi.find_roi", fake)
    out = tmp_path / "seg.nii.gz"
    assert (
        main(["segment", *_sample_args(sample_data_dir), "--roi", "auto", "--out", str(out)]) == 1
    )
    assert fake.seen is not None and "automatic ROI" in fake.seen
    assert not out.exists()


def test_segment_says_it_segments_before_the_fit(sample_data_dir, tmp_path, capsys, monkeypatch):
    fake = _FakeSlowStep(capsys)
    monkeypatch.setattr("napari_gmmseg.segment.segment", fake)
    out = tmp_path / "seg.nii.gz"
    mask = sample_data_dir / "train25_myops_gd" / "myops_training_1001_gd.nii.gz"
    argv = ["segment", *_sample_args(sample_data_dir), "--roi", str(mask), "--out", str(out)]
    assert main(argv) == 1
    assert fake.seen is not None and "segmenting with" in fake.seen


def test_report_says_what_it_computes_before_it_starts(
    sample_data_dir, tmp_path, capsys, monkeypatch
):
    fake = _FakeSlowStep(capsys)
    monkeypatch.setattr("napari_gmmseg.report.compute_report", fake)
    mask = sample_data_dir / "train25_myops_gd" / "myops_training_1001_gd.nii.gz"
    assert main(["report", str(mask), "--out", str(tmp_path / "rep")]) == 1
    assert fake.seen is not None and "report page" in fake.seen


@pytest.mark.parametrize("command", ["evaluate", "demo"])
def test_evaluate_and_demo_name_the_case_before_it_runs(
    command, sample_data_dir, tmp_path, capsys, monkeypatch
):
    fake = _FakeSlowStep(capsys)
    monkeypatch.setattr("napari_gmmseg.segment.segment_case", fake)
    argv = (
        [command, "--out", str(tmp_path / "ev"), "--cases", "1001"] if command == "evaluate" else []
    )
    if command == "evaluate":
        argv.insert(1, str(sample_data_dir))
    else:
        argv = ["demo", "--data", str(sample_data_dir), "--out", str(tmp_path / "ev")]
        argv += ["--methods", "tissue-classifier"]
    assert main(argv) == 1  # the fake step fails the case(s)
    method = DEFAULT_METHOD if command == "evaluate" else "tissue-classifier"
    assert fake.seen is not None and f"1001 {method}: segmenting" in fake.seen


def test_step_prints_a_heartbeat_while_a_step_runs(monkeypatch, capsys):
    from napari_gmmseg.cli import _common

    monkeypatch.setattr(_common, "HEARTBEAT_S", 0.05)
    with _common.step("slow thing"):
        time.sleep(0.3)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "slow thing ..."
    assert any(line.startswith("  slow thing:") for line in err[1:-1])
    assert err[-1].startswith("slow thing: done in")
    with _common.step("silent", quiet=True):
        pass
    assert capsys.readouterr().err == ""


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_help_has_no_doubled_percent_or_defaults_and_common_flags_are_shared():
    commands = _subparsers()
    for name, sub in commands.items():
        text = sub.format_help()
        assert "%%" not in text, name
        assert "default: None" not in text, name
        assert not re.search(r"default[^()]*\) \(default", text), name  # said twice
    for name in ("segment", "evaluate", "demo", "report"):
        text = commands[name].format_help()
        assert "--quiet" in text and "--no-progress" not in text, name
    for name in ("segment", "evaluate", "demo"):
        text = commands[name].format_help()
        assert "--classes" in text and "--covariance" in text, name
        assert "--n-classes" not in text and "--covariance-type" not in text, name
    assert "Unsupervised" not in build_parser().format_help()


def test_old_flag_spellings_still_parse():
    parser = build_parser()
    args = parser.parse_args(["evaluate", "data", "--n-classes", "5", "--no-progress"])
    assert args.n_classes == 5 and args.quiet
    args = parser.parse_args(["evaluate", "data", "--classes", "3", "--covariance", "full"])
    assert args.n_classes == 3 and args.covariance_type == "full" and not args.quiet
    args = parser.parse_args(["segment", "--out", "x.nii.gz"])
    assert args.n_classes == 4 and args.covariance_type == "diag"


def test_a_missing_out_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["segment", "--bssfp", "x.nii.gz"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and "--help" in err
