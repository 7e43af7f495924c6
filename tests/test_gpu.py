"""The CUDA path gives the CPU's answer: EM engine and a deep method, through the front door.

Marked ``gpu``: skipped without CUDA (tests/conftest.py). Both runs start from the
same parameters (``init="prior"`` for EM: no random draw; the per-slice networks are
seeded on the CPU and then moved), TF32 is off so CUDA matmuls and convolutions are
true float32, and the deep run uses float32 (``amp=False``) so the two devices differ
only by summation order.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_gmmseg.segment import segment

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def case():
    from napari_gmmseg.phantom import make_case

    return make_case(3, n_slices=3, size=96)


@pytest.fixture
def exact_float32(monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _agreement(a: np.ndarray, b: np.ndarray, roi: np.ndarray) -> float:
    return float((a[roi] == b[roi]).mean())


@pytest.mark.parametrize("method", ["gmm", "svgmm"])
def test_em_on_cuda_matches_the_cpu(case, method, exact_float32):
    roi = case.roi()
    kw = dict(channels=case.channels, method=method, init="prior", seed=0, max_iter=50, tol=0)
    cpu = segment(case.images, roi, device="cpu", **kw)
    gpu = segment(case.images, roi, device="cuda", **kw)
    assert gpu.params["device"].startswith("cuda") and cpu.params["device"] == "cpu"
    assert _agreement(cpu.labels, gpu.labels, roi) > 0.995
    np.testing.assert_array_equal(cpu.component_to_class, gpu.component_to_class)
    np.testing.assert_allclose(gpu.nll_history[:, -1], cpu.nll_history[:, -1], rtol=1e-4)
    np.testing.assert_allclose(gpu.means_, cpu.means_, atol=1e-3)
    np.testing.assert_array_equal(gpu.n_iter_, cpu.n_iter_)


def test_deep_method_on_cuda_matches_the_cpu(case, exact_float32):
    roi = case.roi()
    kw = dict(
        channels=case.channels, method="deepg", seed=0, max_epochs=8, min_epochs=8, tol=0.0
    )  # fmt: skip
    cpu = segment(case.images, roi, device="cpu", **kw)
    gpu = segment(case.images, roi, device="cuda", amp=False, **kw)
    assert gpu.params["device"].startswith("cuda")
    np.testing.assert_array_equal(gpu.n_iter_, cpu.n_iter_)
    # Same networks, same data: the NLL per epoch agrees to float32 summation order.
    np.testing.assert_allclose(gpu.nll_history, cpu.nll_history, rtol=1e-3)
    assert _agreement(cpu.labels, gpu.labels, roi) > 0.98


def test_the_default_classifier_on_cuda_matches_the_cpu(case, exact_float32):
    """The MLP and the per-slice EM adaptation run on the chosen device."""
    roi = case.roi()
    kw = dict(channels=case.channels, method="tissue-classifier", spacing_mm=case.spacing_mm)
    cpu = segment(case.images, roi, device="cpu", **kw)
    gpu = segment(case.images, roi, device="cuda", **kw)
    assert gpu.params["device"].startswith("cuda") and cpu.params["device"] == "cpu"
    assert _agreement(cpu.labels, gpu.labels, roi) > 0.999
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=1e-4)


def test_the_default_tissue_network_on_cuda_matches_the_cpu(case, exact_float32):
    """The ensemble, the crops and the per-slice adaptation run on the chosen device."""
    roi = case.roi()
    kw = dict(channels=case.channels, spacing_mm=case.spacing_mm)  # default: tissue-net
    cpu = segment(case.images, roi, device="cpu", **kw)
    gpu = segment(case.images, roi, device="cuda", **kw)
    assert gpu.params["method"] == "tissue-net" and gpu.params["device"].startswith("cuda")
    assert _agreement(cpu.labels, gpu.labels, roi) > 0.999
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=1e-3)
