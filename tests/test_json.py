"""The one JSON helper: strict JSON for provenance (segment params, batch summaries)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_gmmseg._json import jsonable


def test_jsonable_gives_strict_json():
    value = {
        1: np.float32(0.5),
        "a": (np.int64(3), float("nan"), float("inf")),
        "arr": np.array([[1.0, np.nan]]),
        "path": Path("x.nii.gz"),
        "none": None,
    }
    out = jsonable(value)
    assert out == {
        "1": 0.5,
        "a": [3, None, None],
        "arr": [[1.0, None]],
        "path": "x.nii.gz",
        "none": None,
    }
    json.dumps(out, allow_nan=False)  # no NaN token reaches a file
