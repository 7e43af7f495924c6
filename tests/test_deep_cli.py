"""CLI of the deep models: ``napari-gmmseg mu-data`` and ``napari-gmmseg train``."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("monai")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from napari_gmmseg.phantom import write_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, n_cases=2, seed=5, n_slices=3, size=48)
    return root


def test_mu_data_cli_writes_prior_table_and_refuses_overwrite(tiny_dataset, tmp_path, capsys):
    from napari_gmmseg.cli import main

    out = tmp_path / "mu.json"
    assert (
        main(["mu-data", str(tiny_dataset), "--images", "2", "--seed", "1", "--out", str(out)]) == 0
    )
    d = json.loads(out.read_text(encoding="utf-8"))
    assert d["channels"] == ["bSSFP", "LGE", "T2"]
    assert len(d["means"]) == 4 and all(len(r) == 3 for r in d["means"])
    assert d["source"]["n_images"] == 2
    before = out.read_text(encoding="utf-8")
    assert main(["mu-data", str(tiny_dataset), "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == before


def test_train_cli_writes_a_loadable_model(tiny_dataset, tmp_path):
    import torch

    from napari_gmmseg.cli import main
    from napari_gmmseg.deep import load_model

    out = tmp_path / "model.pt"
    mu = tmp_path / "mu.json"
    assert main(["mu-data", str(tiny_dataset), "--images", "2", "--out", str(mu)]) == 0
    args = ["train", str(tiny_dataset), "--epochs", "1", "--batch-size", "4", "--out", str(out)]
    args += ["--network", "4,8,16"]
    assert main([*args, "--mu-data", str(mu), "--seed", "2"]) == 0
    model = load_model(out)
    assert model.method == "deepsvg-mu"
    assert model.training["cases"] == ["1001", "1002"]
    assert torch.allclose(
        model.mu_data,
        torch.tensor(json.loads(mu.read_text(encoding="utf-8"))["means"], dtype=torch.float32),
    )
    assert main(args) == 1  # exists, no --force
    assert main([*args, "--force", "--method", "deepsvg"]) == 0
    assert load_model(out).method == "deepsvg"
