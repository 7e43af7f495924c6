"""Foundation: manifest, console script, import cost, wheel contents."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import napari_gmmseg
from napari_gmmseg.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"napari-gmmseg {napari_gmmseg.__version__}"


def test_console_script_help_lists_commands():
    exe = Path(sys.executable).parent / "napari-gmmseg"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: napari-gmmseg" in out
    from napari_gmmseg.cli import COMMAND_MODULES

    for name in COMMAND_MODULES:
        assert name.replace("_", "-") in out


def test_manifest_validates():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(ROOT / "napari.yaml")
    assert manifest.name == "napari-gmmseg"
    assert {"Segmentation", "IO", "Measurement"} <= set(manifest.categories)
    # every command resolves to a real callable
    for cmd in manifest.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr)), cmd.python_name


def test_installed_manifest_is_the_root_manifest():
    """napari loads the manifest found through the entry point: it must be napari.yaml."""
    from npe2 import PluginManifest

    installed = PluginManifest.from_distribution("napari-gmmseg")
    assert installed.model_dump() == PluginManifest.from_file(ROOT / "napari.yaml").model_dump()


def test_import_is_lazy():
    """`import napari_gmmseg` must not pull torch, MONAI, napari or Qt."""
    code = (
        "import sys, napari_gmmseg, napari_gmmseg.cli, napari_gmmseg.labels;"
        "heavy = [m for m in ('torch', 'monai', 'napari', 'qtpy', 'SimpleITK') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.slow
def test_wheel_contains_identical_manifest(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("napari_gmmseg-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert zf.read("napari_gmmseg/napari.yaml") == (ROOT / "napari.yaml").read_bytes()
        entry_points = zf.read(
            next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        ).decode()
    assert "napari_gmmseg:napari.yaml" in entry_points
    assert "napari-gmmseg = napari_gmmseg.cli:main" in entry_points
