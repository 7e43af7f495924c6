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


#: Installed only with the `napari` extra: no core module may need them at import time.
NAPARI_ONLY = ("napari", "magicgui", "qtpy", "npe2")

#: Run first in a subprocess: any import of a NAPARI_ONLY package raises ImportError, as
#: in a runtime-only install (`make demo`, `pip install napari-gmmseg`).
_BLOCK_NAPARI = (
    "import sys\n"
    "class _NoNapari:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.partition('.')[0] in {NAPARI_ONLY!r}:\n"
    "            raise ImportError(f'{name} is not installed (napari extra)')\n"
    "sys.meta_path.insert(0, _NoNapari())\n"
)


def _run_without_napari(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK_NAPARI + code], capture_output=True, text=True
    )


def test_blocker_refuses_napari():
    """The test below can fail: with the blocker, importing napari raises."""
    out = _run_without_napari("import napari_gmmseg._widgets")
    assert out.returncode != 0
    assert "is not installed (napari extra)" in out.stderr


def test_command_line_and_core_work_without_napari():
    """The CLI (every subcommand's parser), segment, batch, report and io import without
    napari, magicgui, qtpy or npe2: they are the `napari` extra, not runtime dependencies."""
    code = (
        "import importlib\n"
        "import napari_gmmseg.batch, napari_gmmseg.io, napari_gmmseg.report\n"
        "import napari_gmmseg.segment, napari_gmmseg._reader, napari_gmmseg._writer\n"
        "from napari_gmmseg.cli import COMMAND_MODULES, main\n"
        "for name in COMMAND_MODULES:\n"
        "    importlib.import_module(f'napari_gmmseg.cli.{name}')\n"
        "try:\n"
        "    main(['demo', '--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
    )
    out = _run_without_napari(code)
    assert out.returncode == 0, out.stderr
    assert "usage: napari-gmmseg demo" in out.stdout


@pytest.mark.slow
def test_every_core_module_imports_without_napari():
    """Every module outside ``_widgets`` (the docks) imports without the napari extra."""
    code = (
        "import importlib, pkgutil, napari_gmmseg\n"
        "for info in pkgutil.walk_packages(napari_gmmseg.__path__, 'napari_gmmseg.'):\n"
        "    if not info.name.startswith('napari_gmmseg._widgets'):\n"
        "        importlib.import_module(info.name)\n"
    )
    out = _run_without_napari(code)
    assert out.returncode == 0, out.stderr


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


def _public_modules() -> list[str]:
    import pkgutil

    names = ["napari_gmmseg"]
    for info in pkgutil.walk_packages(napari_gmmseg.__path__, "napari_gmmseg."):
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("module_name", _public_modules())
def test_every_name_in_all_exists_and_can_be_inspected(module_name):
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)  # AttributeError: __all__ promises a missing name
        is_error = isinstance(obj, type) and issubclass(obj, BaseException)  # Python's signature
        if callable(obj) and not isinstance(obj, type(pytest)) and not is_error:
            assert inspect.signature(obj) is not None, f"{module_name}.{name}"


def test_lazy_public_functions_reach_their_implementation():
    from napari_gmmseg import deep

    # deep.train imported a module that did not exist (issue 15): it must reach training.train.
    with pytest.raises(TypeError, match="train\\(\\) missing"):
        deep.train()


def test_no_function_in_src_is_longer_than_150_lines():
    import ast

    long = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 150:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []
