"""Shared Gaussian math: densities against SciPy, M-step against NumPy, NLL with padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from napari_gmmseg.gaussian import e_step, log_gaussian, m_step, nll, precision_cholesky


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    s, n, k, m = 2, 60, 3, 3
    x = torch.randn(s, n, m, generator=gen, dtype=torch.float64)
    means = torch.randn(s, k, m, generator=gen, dtype=torch.float64)
    a = torch.randn(s, k, m, m, generator=gen, dtype=torch.float64)
    full = a @ a.transpose(-1, -2) + 0.3 * torch.eye(m, dtype=torch.float64)
    diag = torch.rand(s, k, m, generator=gen, dtype=torch.float64) + 0.2
    resp = torch.softmax(torch.randn(s, n, k, generator=gen, dtype=torch.float64), -1)
    valid = torch.ones(s, n, dtype=torch.bool)
    valid[1, 45:] = False
    return x, means, full, diag, resp, valid


@pytest.mark.parametrize("kind", ["diag", "full"])
def test_log_gaussian_matches_scipy(data, kind):
    x, means, full, diag, _, _ = data
    cov = full if kind == "full" else diag
    out = log_gaussian(x, means, cov, kind)
    assert out.shape == (2, 60, 3)
    for s in range(2):
        for k in range(3):
            c = cov[s, k].numpy() if kind == "full" else np.diag(cov[s, k].numpy())
            ref = multivariate_normal(means[s, k].numpy(), c).logpdf(x[s].numpy())
            np.testing.assert_allclose(out[s, :, k].numpy(), ref, rtol=1e-10, atol=1e-10)


def test_precision_cholesky_inverts_covariance(data):
    _, _, full, _, _, _ = data
    u = precision_cholesky(full, "full")
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(u @ u.transpose(-1, -2) @ full, eye.expand_as(full))
    assert torch.all(torch.tril(u, -1) == 0)  # upper triangular


@pytest.mark.parametrize("kind", ["diag", "full"])
def test_m_step_matches_weighted_numpy_and_ignores_padding(data, kind):
    x, _, _, _, resp, valid = data
    # Garbage on padding must not leak into the estimates.
    x = x.clone()
    x[1, 45:] = 1e6
    w, mu, cov = m_step(x, resp, valid, kind, reg_covar=1e-3)
    for s, n in ((0, 60), (1, 45)):
        r, xs = resp[s, :n].numpy(), x[s, :n].numpy()
        nk = r.sum(0)
        np.testing.assert_allclose(w[s].numpy(), nk / n, rtol=1e-12)
        ref_mu = r.T @ xs / nk[:, None]
        np.testing.assert_allclose(mu[s].numpy(), ref_mu, rtol=1e-10)
        for k in range(3):
            d = xs - ref_mu[k]
            ref = (r[:, k, None] * d).T @ d / nk[k] + 1e-3 * np.eye(3)
            got = cov[s, k].numpy()
            np.testing.assert_allclose(got, ref if kind == "full" else np.diag(ref), atol=1e-10)


def test_m_step_is_differentiable(data):
    x, _, _, _, resp, valid = data
    logits = torch.randn_like(resp, requires_grad=True)
    w, mu, cov = m_step(x, torch.softmax(logits, -1), valid, "diag", 1e-3)
    lj = log_gaussian(x, mu, cov, "diag") + torch.log(w).unsqueeze(1)
    loss = nll(lj, valid).sum()
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[1, 45:].abs().max() == 0  # padding gets no gradient


def test_nll_and_e_step_with_padding(data):
    x, means, _, diag, _, valid = data
    w = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    lj = log_gaussian(x, means, diag, "diag") + torch.log(w).unsqueeze(1)
    out = nll(lj, valid)
    for s, n in ((0, 60), (1, 45)):
        dens = sum(
            (1 / 3)
            * multivariate_normal(means[s, k].numpy(), np.diag(diag[s, k].numpy())).pdf(
                x[s, :n].numpy()
            )
            for k in range(3)
        )
        assert out[s].item() == pytest.approx(-np.log(dens).mean(), rel=1e-10)
    resp, log_lik = e_step(lj)
    torch.testing.assert_close(resp.sum(-1), torch.ones(2, 60, dtype=torch.float64))
    assert torch.isfinite(log_lik).all()


def test_far_pixels_stay_finite():
    x = torch.tensor([[[1e4, -1e4]]], dtype=torch.float32)
    means = torch.zeros(1, 2, 2)
    cov = torch.full((1, 2, 2), 1e-4)
    lj = log_gaussian(x, means, cov, "diag")
    resp, log_lik = e_step(lj)
    assert torch.isfinite(resp).all() and torch.isfinite(log_lik).all()
