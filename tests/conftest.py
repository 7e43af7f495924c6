"""Shared fixtures: repository paths, the real MyoPS cases (skipped when absent), GPU marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample_data"


def _real_data_dir() -> Path | None:
    """The 3 real MyoPS cases: $GMMSEG_REAL_DATA or ../shared/data/myops_real beside the repo."""
    candidates = [os.environ.get("GMMSEG_REAL_DATA"), REPO_ROOT.parent / "shared/data/myops_real"]
    for c in candidates:
        if c and (Path(c) / "train25").is_dir():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """Path of the real MyoPS cases; tests using it skip where the data is not shipped."""
    path = _real_data_dir()
    if path is None:
        pytest.skip("real MyoPS cases not available (set GMMSEG_REAL_DATA)")
    return path


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
