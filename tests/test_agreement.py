"""Burden agreement: Bland-Altman numbers on known data and the PNG plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_gmmseg.agreement import (
    bland_altman,
    burden_agreement,
    burden_pairs,
    plot_bland_altman,
    write_bland_altman,
)
from napari_gmmseg.errors import OutputExistsError


def test_bland_altman_known_numbers():
    ba = bland_altman([1.0, 2.0, 3.0, 4.0, 7.0], [0.0, 0.0, 0.0, 0.0, np.nan])
    # The NaN pair is dropped: differences 1, 2, 3, 4.
    sd = math.sqrt(((1 - 2.5) ** 2 + (2 - 2.5) ** 2 + (3 - 2.5) ** 2 + (4 - 2.5) ** 2) / 3)
    assert ba.n == 4
    assert ba.bias == pytest.approx(2.5)
    assert ba.sd == pytest.approx(sd)
    assert ba.loa_low == pytest.approx(2.5 - 1.96 * sd)
    assert ba.loa_high == pytest.approx(2.5 + 1.96 * sd)
    assert ba.mae == pytest.approx(2.5)


def test_bland_altman_negative_bias_mae_and_edge_cases():
    ba = bland_altman([0.0, 10.0], [2.0, 8.0])  # differences -2, +2
    assert ba.bias == pytest.approx(0.0)
    assert ba.mae == pytest.approx(2.0)
    assert ba.sd == pytest.approx(math.sqrt(8.0))
    one = bland_altman([3.0], [1.0])
    assert (one.n, one.bias, one.sd, one.loa_low, one.loa_high) == (1, 2.0, 0.0, 2.0, 2.0)
    empty = bland_altman([np.nan], [1.0])
    assert empty.n == 0 and math.isnan(empty.bias)
    with pytest.raises(ValueError, match="reference"):
        bland_altman([1.0, 2.0], [1.0])


def _rows():
    rows = []
    for method, offset in (("gmm", 5.0), ("svgmm", -1.0)):
        for z, gt in enumerate((10.0, 20.0, 0.0)):
            for cls, val in (("scar", gt), ("edema", 2 * gt), ("myocardium", 50.0)):
                rows.append(
                    {
                        "method": method,
                        "level": "slice",
                        "slice": z,
                        "class": cls,
                        "pred_pct": val + offset if cls != "myocardium" else np.nan,
                        "gt_pct": val if cls != "myocardium" else np.nan,
                        "pred_ml": 1.0,
                        "gt_ml": 1.0,
                    }
                )
        rows.append(
            {"method": method, "level": "volume", "slice": -1, "class": "scar",
             "pred_pct": 100.0, "gt_pct": 0.0, "pred_ml": 1.0, "gt_ml": 1.0}
        )  # fmt: skip
    return rows


def test_burden_pairs_and_agreement_from_rows():
    rows = _rows()
    pairs = burden_pairs(rows, "scar_pct")
    assert set(pairs) == {"gmm", "svgmm"}
    np.testing.assert_allclose(pairs["gmm"][0], [15.0, 25.0, 5.0])
    np.testing.assert_allclose(pairs["gmm"][1], [10.0, 20.0, 0.0])
    stats = burden_agreement(rows)
    assert stats["gmm"]["scar_pct"].bias == pytest.approx(5.0)
    assert stats["svgmm"]["edema_pct"].bias == pytest.approx(-1.0)
    assert stats["svgmm"]["edema_pct"].sd == pytest.approx(0.0)
    vol = burden_agreement(rows, ("scar_pct",), level="volume")
    assert vol["gmm"]["scar_pct"].n == 1 and vol["gmm"]["scar_pct"].bias == pytest.approx(100.0)
    with pytest.raises(ValueError, match="unknown quantity"):
        burden_pairs(rows, "blood_pct")


def test_png_written_atomically_and_not_overwritten(tmp_path):
    import matplotlib.image as mpimg

    out = tmp_path / "bland_altman.png"
    stats = write_bland_altman(_rows(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    assert img.shape[0] > 200 and img.shape[1] > 400  # two panels side by side
    assert stats["gmm"]["scar_pct"]["bias"] == pytest.approx(5.0)
    assert stats["gmm"]["scar_pct"]["n"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["bland_altman.png"]  # no temp file left
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        write_bland_altman(_rows(), out)
    assert out.read_bytes() == before
    plot_bland_altman({"scar_pct": {"m": ([1.0, 2.0], [1.5, 2.5])}}, out, overwrite=True)
    assert out.read_bytes() != before


def test_matched_flavour_and_agreement_summary():
    from napari_gmmseg.agreement import agreement_summary

    rows = _rows()
    for r in rows:  # the matched prediction is 2 points below the named one
        r["pred_pct_matched"] = r["pred_pct"] - 2.0
        r["pred_ml_matched"] = r["pred_ml"]
    named = burden_agreement(rows, ("scar_pct",))["gmm"]["scar_pct"]
    matched = burden_agreement(rows, ("scar_pct",), flavour="matched")["gmm"]["scar_pct"]
    assert named.bias == pytest.approx(5.0) and matched.bias == pytest.approx(3.0)
    assert matched.sd == pytest.approx(named.sd)
    summ = agreement_summary(rows)
    assert set(summ) == {"gmm", "svgmm"}
    assert set(summ["gmm"]) == {"case", "slice"}
    assert set(summ["gmm"]["slice"]) == {"named", "matched"}
    s = summ["svgmm"]["slice"]["matched"]["scar_pct"]  # differences -3, -3, -3
    assert (s["n"], s["bias"], s["mae"], s["sd"]) == (3, pytest.approx(-3.0), 3.0, 0.0)
    assert s["loa_low"] == s["loa_high"] == pytest.approx(-3.0)
    c = summ["gmm"]["case"]["named"]["scar_pct"]  # one volume row: 100 vs 0
    assert (c["n"], c["bias"], c["sd"]) == (1, 100.0, 0.0)
    assert "edema_pct" not in summ["gmm"]["case"]["named"]  # no volume row of edema
    gmm_volume = next(r for r in rows if r["method"] == "gmm" and r["level"] == "volume")
    gmm_volume["gt_pct"] = np.nan  # a pair without reference: n 0, statistics null in JSON
    c = agreement_summary(rows)["gmm"]["case"]["named"]["scar_pct"]
    assert c["n"] == 0 and c["bias"] is None and c["loa_low"] is None
    with pytest.raises(ValueError, match="unknown flavour"):
        burden_pairs(rows, flavour="oracle")
