"""Every example in the README runs: the Python block, and each command line (parsed always,
run on the bundled sample in the slow suite)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from napari_gmmseg.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _commands() -> list[list[str]]:
    """The ``napari-gmmseg ...`` lines of the README's bash blocks, continuations joined."""
    commands = []
    for block in _blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("napari-gmmseg"):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_readme_has_examples_and_no_internal_jargon():
    assert _blocks("python") and len(_commands()) >= 3
    for phrase in (r"\bissue\b", "this round", "previous session", "the lead"):
        assert not re.search(phrase, README.lower()), phrase
    assert "## Measured quality" in README


@pytest.mark.parametrize("argv", _commands(), ids=lambda a: " ".join(a[:1]) or "help")
def test_readme_command_lines_parse(argv, capsys):
    parser = build_parser()
    if argv == ["--help"]:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 0
        return
    args = parser.parse_args(argv)
    assert callable(args.func)


@pytest.mark.slow
def test_readme_examples_run_on_the_bundled_sample(tmp_path, monkeypatch, capsys):
    os.symlink(REPO / "sample_data", tmp_path / "sample_data")
    monkeypatch.chdir(tmp_path)
    for argv in _commands():
        if argv == ["--help"] or any("../shared/data" in a for a in argv):
            continue  # reproduction commands on the development data: benchmarks, not tests
        assert main(argv) == 0, argv
    for block in _blocks("python"):
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "infarct" in out or "scar" in out
    assert (tmp_path / "report" / "report.png").is_file()
    assert (tmp_path / "evaluation" / "tables.md").is_file()
    assert (tmp_path / "1001_seg.nii.gz").is_file()
