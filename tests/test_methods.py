"""The method registry: one entry per method, typed options, a toy method in two pieces."""

from __future__ import annotations

import dataclasses
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pytest

from napari_gmmseg import methods
from napari_gmmseg.errors import ModelError
from napari_gmmseg.methods import (
    METHODS,
    DeepOptions,
    EMOptions,
    MethodSpec,
    get_method,
    option_fields,
    register,
)


def test_registry_lists_the_paper_methods_in_order_with_their_families():
    paper = ["gmm", "svgmm", "deepg", "deepsvg", "deepsvg-mu"]
    pipelines = ["wall-first", "gmm-prior", "tissue-classifier", "tissue-net"]
    assert list(METHODS) == [*paper, *pipelines]
    families = ["em", "em", "deep", "deep", "deep", "pipeline", "pipeline", "pipeline", "pipeline"]
    assert [s.family for s in METHODS.values()] == families
    assert get_method(" SVGMM ").label == "SVGMM"
    with pytest.raises(ModelError, match=r"unknown method 'gmn'; choose one of 'gmm', 'svgmm'"):
        get_method("gmn")


def test_options_validate_themselves_and_refuse_unknown_names():
    with pytest.raises(ModelError, match="unknown spatial 'mfr'"):
        EMOptions(spatial="mfr")
    with pytest.raises(ModelError, match="n_init must be >= 1"):
        EMOptions(n_init=0)
    with pytest.raises(ModelError, match="use 'mrf' for a GMM"):
        get_method("gmm").make_options({"spatial": "smooth"})
    assert get_method("svgmm").make_options({"spatial": "smooth", "beta": 0.5}).beta == 0.5
    with pytest.raises(ModelError, match="max_epochs must be >= 1"):
        DeepOptions(max_epochs=0)
    # Deep methods refuse misspelt options too (fit_deep used to swallow them).
    with pytest.raises(ModelError, match=r"unknown option\(s\) \['max_epoch'\] for method 'deepg'"):
        get_method("deepg").make_options({"max_epoch": 3})


def test_defaults_are_written_once():
    from napari_gmmseg.deep import DEFAULTS

    assert DEFAULTS["max_epochs"] == DeepOptions().max_epochs == 200
    assert DEFAULTS["reg_covar"] == DeepOptions().reg_covar
    fields = option_fields()
    assert fields["reg_covar"]["defaults"] == {
        "gmm": 1e-4,
        "svgmm": 1e-4,
        "deepg": 1e-3,
        "deepsvg": 1e-3,
        "deepsvg-mu": 1e-3,
    }
    assert "init_params" not in fields  # cli=False
    assert fields["spatial"]["choices"] == ("none", "mrf", "smooth")
    assert "| `deepsvg-mu` | deep |" in methods.method_table()


# ------------------------------------------------------------------ a toy method
@dataclass(frozen=True)
class ToyOptions:
    """Options of the toy method: one field, validated."""

    shift: float = field(default=0.0, metadata={"help": "added to every mean"})

    def __post_init__(self) -> None:
        if not np.isfinite(self.shift):
            raise ModelError("shift must be finite")

    def fit_kwargs(self) -> dict:
        return dataclasses.asdict(self)


def _toy_fit(batch, *, n_components, seed, shift, progress=None, should_stop=None, **_common):
    """The whole toy method: 3 EM iterations of the engine, means shifted by ``shift``."""
    from napari_gmmseg.mixture import fit_gmm

    res = fit_gmm(batch, n_components=n_components, seed=seed, max_iter=3)
    return dataclasses.replace(res, means=res.means + shift, method="toy")


@pytest.fixture
def toy_method(monkeypatch):
    module = types.ModuleType("toy_method_module")
    module.fit = _toy_fit
    monkeypatch.setitem(sys.modules, "toy_method_module", module)
    spec = MethodSpec("toy", "Toy", "em", ToyOptions, "toy_method_module:fit", "a test method")
    monkeypatch.setitem(METHODS, "toy", spec)
    return spec


def test_a_new_method_is_one_module_and_one_registry_entry(toy_method):
    from napari_gmmseg.cli._options import add_method_arguments
    from napari_gmmseg.phantom import make_case
    from napari_gmmseg.segment import segment_case

    case = make_case(0, n_slices=2, size=48)
    fit = segment_case(case, method="toy", shift=0.0)
    assert fit.method == "toy" and fit.params["method_options"] == {"shift": 0.0}
    assert set(np.unique(fit.labels[case.roi()])) <= {200, 500, 1220, 2221}
    assert fit.n_iter_.max() <= 3
    with pytest.raises(ModelError, match=r"unknown option\(s\) \['shfit'\] for method 'toy'"):
        segment_case(case, method="toy", shfit=1.0)
    # The CLI flag comes from the field.
    import argparse

    parser = argparse.ArgumentParser()
    assert "shift" in add_method_arguments(parser, ["toy"])
    assert parser.parse_args(["--shift", "0.5"]).shift == 0.5


def test_register_refuses_a_duplicate_name(toy_method):
    with pytest.raises(ModelError, match="exists"):
        register(toy_method)


def test_a_pipeline_method_gets_the_volume_and_returns_the_fit(monkeypatch):
    from napari_gmmseg.phantom import make_case
    from napari_gmmseg.segment import segment_case

    seen = {}

    def pipeline(images, roi, *, channels, options, seed, device, prior, progress, should_stop):
        from napari_gmmseg.segment import segment

        seen.update(shape=images.shape, roi=int(roi.sum()), channels=channels, options=options)
        return segment(images, roi, method="gmm", channels=channels, seed=seed, max_iter=2)

    module = types.ModuleType("toy_pipeline_module")
    module.fit = pipeline
    monkeypatch.setitem(sys.modules, "toy_pipeline_module", module)
    spec = MethodSpec("toy-pipe", "Toy pipe", "pipeline", ToyOptions, "toy_pipeline_module:fit")
    monkeypatch.setitem(METHODS, "toy-pipe", spec)
    case = make_case(0, n_slices=2, size=48)
    fit = segment_case(case, method="toy-pipe", shift=1.0)
    assert seen["shape"] == case.images.shape and seen["roi"] == int(case.roi().sum())
    assert seen["options"] == ToyOptions(shift=1.0) and seen["channels"] == case.channels
    assert fit.n_iter_.max() <= 2


# ------------------------------------------------------------------ every registered method
def _fast(name: str) -> dict:
    """Options that keep a method to a second or two on tiny images."""
    return {"max_epochs": 2, "min_epochs": 1} if METHODS[name].family == "deep" else {}


@pytest.fixture(scope="module")
def tiny_case():
    from napari_gmmseg.phantom import make_case

    return make_case(1, n_slices=2, size=48)


@pytest.fixture(scope="module")
def tiny_files(tiny_case, tmp_path_factory):
    from napari_gmmseg import io
    from napari_gmmseg.naming import DEFAULT_PRIOR

    folder = tmp_path_factory.mktemp("tiny")
    paths = {}
    for name, tag in (("bSSFP", "C0"), ("LGE", "DE"), ("T2", "T2")):
        paths[name] = folder / f"c_{tag}.nii.gz"
        io.save_volume(tiny_case.image(name), tiny_case.geometry, paths[name])
    paths["mask"] = folder / "c_gd.nii.gz"
    io.save_labels(tiny_case.labels, tiny_case.geometry, paths["mask"])
    paths["mu"] = folder / "mu.json"
    DEFAULT_PRIOR.save(paths["mu"])
    return paths


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_runs_through_segment_and_the_cli(
    name, tiny_case, tiny_files, tmp_path
):
    from napari_gmmseg import io
    from napari_gmmseg.cli import main
    from napari_gmmseg.segment import segment_case

    roi = tiny_case.roi()
    fit = segment_case(tiny_case, method=name, seed=1, **_fast(name))
    assert fit.method == name and fit.finished.all()
    # tissue-net leaves out ROI pixels its network calls "outside" (not LV tissue), counted
    tissue = {200, 500, 1220, 2221}
    outside = fit.params.get("roi_pixels_outside", 0)
    assert set(np.unique(fit.labels[roi])) <= (tissue | {0} if outside else tissue)
    assert (fit.labels[roi] == 0).sum() == outside and outside < 0.1 * roi.sum()
    assert not fit.labels[~roi].any()
    assert fit.params["method_options"] == _fast(name)

    out = tmp_path / "out.nii.gz"
    args = ["segment", "--quiet", "--method", name, "--out", str(out), "--seed", "1"]
    args += ["--bssfp", str(tiny_files["bSSFP"]), "--lge", str(tiny_files["LGE"])]
    args += ["--t2", str(tiny_files["T2"]), "--roi", str(tiny_files["mask"])]
    for key, value in _fast(name).items():
        args += ["--" + key.replace("_", "-"), str(value)]
    if METHODS[name].accepts("mu_data"):
        args += ["--mu-data", str(tiny_files["mu"])]  # as the deep-methods issue specified
    assert main(args) == 0
    assert ((io.read_labels(out)[roi] > 0) == (fit.labels[roi] > 0)).all()


def test_the_cli_refuses_an_option_the_method_does_not_take(tiny_files, tmp_path, capsys):
    from napari_gmmseg.cli import main

    out = tmp_path / "out.nii.gz"
    args = ["segment", "--bssfp", str(tiny_files["bSSFP"]), "--out", str(out)]
    assert main([*args, "--method", "deepg", "--n-init", "3"]) == 1
    assert "--n-init does not apply to method deepg" in capsys.readouterr().err
    assert main([*args, "--method", "gmm", "--max-epochs", "3"]) == 1
    assert not out.exists()


def test_the_docs_method_table_is_the_registry(repo_root):
    text = (repo_root / "docs/architecture.md").read_text(encoding="utf-8")
    start = text.index("-->\n", text.index("<!-- method-table")) + 4
    assert text[start : text.index("<!-- /method-table -->")].strip() == methods.method_table()
