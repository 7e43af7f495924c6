"""Learned tissue priors: statistics, JSON round trip, the shipped default, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_gmmseg.cli import main
from napari_gmmseg.errors import ModelError, OutputExistsError
from napari_gmmseg.naming import PriorTable, load_prior
from napari_gmmseg.phantom import make_case, write_dataset
from napari_gmmseg.prior import (
    TissuePrior,
    default_tissue_prior,
    learn_prior,
    load_tissue_prior,
    normalise_to_wall,
)


@pytest.fixture(scope="module")
def cases():
    return [make_case(seed=s, n_slices=3, size=80) for s in (0, 1)]


@pytest.fixture(scope="module")
def prior(cases):
    return learn_prior(cases)


def test_statistics_follow_the_sequences(prior):
    wall = prior.stats["wall-ratio"]
    blood, myo, edema, scar = range(4)
    lge, t2 = 1, 2
    assert wall.means.shape == (4, 3) and wall.covariances.shape == (4, 3, 3)
    # phantom calibration (README): class / healthy-myocardium ratios
    assert wall.means[scar, lge] == pytest.approx(2.0, abs=0.25)
    assert wall.means[edema, t2] == pytest.approx(1.35, abs=0.15)
    assert wall.means[blood, t2] < 0.7 < wall.means[myo, t2]
    assert wall.weights[blood] == 0 and wall.weights[1:].sum() == pytest.approx(1.0)
    z = prior.stats["roi-zscore"]
    assert np.allclose(prior.means, z.means)
    assert z.weights.sum() == pytest.approx(1.0)
    assert np.all(np.linalg.eigvalsh(wall.covariances) > 0)
    assert prior.source["n_cases"] == 2 and np.all(wall.counts > 0)


def test_json_round_trip_and_prior_table_readers(prior, tmp_path):
    path = prior.save(tmp_path / "p.json")
    back = TissuePrior.load(path)
    assert back.classes == prior.classes and back.channels == prior.channels
    for name, st in prior.stats.items():
        for a, b in zip(st.to_dict().values(), back.stats[name].to_dict().values(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary file left
    with pytest.raises(OutputExistsError):
        prior.save(path)
    table = load_prior(path)  # the engine's prior-table reader takes the same file
    assert isinstance(table, TissuePrior) and isinstance(table, PriorTable)
    np.testing.assert_allclose(table.means, prior.means)


def test_select_and_bad_files(prior, tmp_path):
    st = prior.select("wall-ratio", ("myocardium", "scar"), ("DE", "T2"))
    assert st.means.shape == (2, 2) and st.covariances.shape == (2, 2, 2)
    assert st.means[1, 0] == prior.stats["wall-ratio"].means[3, 1]
    with pytest.raises(ModelError, match="no 'x'"):
        prior.select("x", ("scar",), ("LGE",))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"channels": ["LGE"], "classes": ["scar"], "means": [[1.0]]}))
    with pytest.raises(ModelError, match=r"bad\.json"):
        load_tissue_prior(bad)
    with pytest.raises(ModelError, match="learned tissue prior"):
        load_tissue_prior(PriorTable(("LGE",), ("scar",), np.ones((1, 1))))


def test_shipped_default_learned_on_the_dev_set():
    d = default_tissue_prior()
    assert d.source["n_cases"] == 15
    wall = d.stats["wall-ratio"].means
    assert wall[3, 1] > wall[2, 1] > wall[1, 1]  # LGE: scar > edema > healthy
    assert wall[2, 2] > wall[1, 2]  # T2: edema > healthy


def test_normalise_to_wall_divides_by_the_wall_median():
    img = np.arange(2 * 4 * 4 * 2, dtype=np.float32).reshape(2, 4, 4, 2) + 1
    wall = np.zeros((2, 4, 4), bool)
    wall[:, 1:3, 1:3] = True
    out, med = normalise_to_wall(img, wall)
    np.testing.assert_allclose(np.median(out[0][wall[0]], axis=0), 1.0, rtol=1e-6)
    assert med.shape == (2, 2)


def test_cli_writes_a_prior(tmp_path, capsys):
    write_dataset(tmp_path / "ds", n_cases=2, seed=0, n_slices=3, size=64)
    out = tmp_path / "prior.json"
    assert main(["prior", str(tmp_path / "ds"), "--out", str(out)]) == 0
    assert TissuePrior.load(out).source["n_cases"] == 2
    assert "wall-ratio" in capsys.readouterr().out
    assert main(["prior", str(tmp_path / "ds"), "--out", str(out)]) == 1  # no overwrite
