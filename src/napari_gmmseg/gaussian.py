"""Gaussian mixture math shared by the EM engine and the deep models (batched over slices).

Every function works on a batch of ``S`` slices padded to ``N`` pixels, with
``M`` channels and ``K`` components, as plain differentiable torch operations
(so the deep models can back-propagate through :func:`m_step` and
:func:`nll`):

- ``x``: ``(S, N, M)`` pixels (padding rows must be finite, e.g. zeros),
- ``valid``: ``(S, N)`` bool, False on padding,
- ``means``: ``(S, K, M)``,
- ``covariances``: ``(S, K, M)`` for ``"diag"`` or ``(S, K, M, M)`` for ``"full"``,
- ``weights``: ``(S, K)``.

The E-step is done in log space (log-sum-exp), as in the numerically stable EM
tutorial; the Mahalanobis terms are expanded into batched matrix products
(``x**2 @ (1/var).T - 2 x @ (mu/var).T + sum(mu**2/var)``) for ``diag`` and
use the Cholesky factor of the precision matrix for ``full`` (as scikit-learn).
"""

from __future__ import annotations

import math

import torch

from napari_gmmseg.methods import COVARIANCE_TYPES

__all__ = [
    "COVARIANCE_TYPES",
    "e_step",
    "log_gaussian",
    "m_step",
    "nll",
    "precision_cholesky",
]


_LOG_2PI = math.log(2.0 * math.pi)


def _check_type(covariance_type: str) -> None:
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
        )


def precision_cholesky(covariances: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """Cholesky factor of the precision matrices (scikit-learn's ``precisions_cholesky_``).

    Parameters
    ----------
    covariances : torch.Tensor
        ``(S, K, M)`` variances (``diag``) or ``(S, K, M, M)`` SPD covariances (``full``).
    covariance_type : str
        ``"diag"`` or ``"full"``.

    Returns
    -------
    torch.Tensor
        ``(S, K, M)`` inverse standard deviations (``diag``) or ``(S, K, M, M)`` upper
        triangular ``U`` with ``U @ U.T = inv(cov)`` (``full``).
    """
    _check_type(covariance_type)
    if covariance_type == "diag":
        return torch.rsqrt(covariances)
    chol = torch.linalg.cholesky(covariances)  # lower L, cov = L L^T
    eye = torch.eye(covariances.shape[-1], dtype=covariances.dtype, device=covariances.device)
    eye = eye.expand_as(chol)
    # inv(L)^T is upper triangular and inv(cov) = inv(L)^T inv(L).
    return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)


def log_gaussian(
    x: torch.Tensor,
    means: torch.Tensor,
    covariances: torch.Tensor,
    covariance_type: str = "diag",
) -> torch.Tensor:
    """Log density of every pixel under every component, ``log N(x_n | mu_k, Sigma_k)``.

    Parameters
    ----------
    x : torch.Tensor
        ``(S, N, M)`` pixels.
    means : torch.Tensor
        ``(S, K, M)`` component means.
    covariances : torch.Tensor
        ``(S, K, M)`` variances (``diag``) or ``(S, K, M, M)`` covariances (``full``).
    covariance_type : str, default "diag"
        ``"diag"`` or ``"full"``.

    Returns
    -------
    torch.Tensor
        ``(S, N, K)`` log densities (values on padding rows are meaningless but finite).
    """
    _check_type(covariance_type)
    n_features = x.shape[-1]
    if covariance_type == "diag":
        prec = 1.0 / covariances  # (S, K, M)
        # Mahalanobis by matrix products: no (S, N, K, M) temporary.
        maha = torch.baddbmm(
            torch.bmm(x * x, prec.transpose(1, 2)),
            x,
            (means * prec).transpose(1, 2),
            alpha=-2.0,
        )
        maha = maha + (means * means * prec).sum(-1).unsqueeze(1)
        log_det = torch.log(covariances).sum(-1)  # (S, K)
        # The expansion can round slightly below zero; the true value cannot.
        return -0.5 * (n_features * _LOG_2PI + maha.clamp_min(0.0) + log_det.unsqueeze(1))
    prec_chol = precision_cholesky(covariances, "full")  # (S, K, M, M)
    log_det = torch.log(torch.diagonal(prec_chol, dim1=-2, dim2=-1)).sum(-1)  # (S, K)
    # y_nk = x_n U_k - mu_k U_k  -> (S, N, K, M)
    y = torch.einsum("snm,skmj->snkj", x, prec_chol)
    y = y - torch.einsum("skm,skmj->skj", means, prec_chol).unsqueeze(1)
    maha = (y * y).sum(-1)
    return -0.5 * (n_features * _LOG_2PI + maha) + log_det.unsqueeze(1)


def e_step(log_joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Responsibilities and per-pixel log-likelihood from the log joint.

    Parameters
    ----------
    log_joint : torch.Tensor
        ``(S, N, K)`` ``log pi_k + log N(x_n | k)`` (or ``log Pi_nk + ...`` for SV models).

    Returns
    -------
    resp : torch.Tensor
        ``(S, N, K)`` posterior probabilities (rows sum to 1).
    log_lik : torch.Tensor
        ``(S, N)`` ``logsumexp_k`` of the log joint.
    """
    log_lik = torch.logsumexp(log_joint, dim=-1)
    resp = torch.exp(log_joint - log_lik.unsqueeze(-1))
    return resp, log_lik


def nll(log_joint: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per slice over its valid pixels.

    Parameters
    ----------
    log_joint : torch.Tensor
        ``(S, N, K)`` log joint: :func:`log_gaussian` plus ``log weights`` ``(S, 1, K)``
        or ``log Pi`` ``(S, N, K)``.
    valid : torch.Tensor
        ``(S, N)`` bool mask of real (non-padding) pixels.

    Returns
    -------
    torch.Tensor
        ``(S,)`` ``-mean_n logsumexp_k log_joint[s, n, k]`` over valid pixels
        (NaN for a slice without valid pixels).
    """
    log_lik = torch.logsumexp(log_joint, dim=-1)
    log_lik = torch.where(
        valid, log_lik, torch.zeros((), dtype=log_lik.dtype, device=log_lik.device)
    )
    count = valid.sum(-1).to(log_lik.dtype)
    return -log_lik.sum(-1) / count


def m_step(
    x: torch.Tensor,
    resp: torch.Tensor,
    valid: torch.Tensor | None,
    covariance_type: str = "diag",
    reg_covar: float | torch.Tensor = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maximum-likelihood weights, means and covariances from responsibilities.

    Differentiable in ``x`` and ``resp``; padding rows (``valid`` False) are ignored.

    Parameters
    ----------
    x : torch.Tensor
        ``(S, N, M)`` pixels.
    resp : torch.Tensor
        ``(S, N, K)`` responsibilities (any non-negative soft assignment).
    valid : torch.Tensor or None
        ``(S, N)`` bool mask of real pixels; None means all are valid.
    covariance_type : str, default "diag"
        ``"diag"`` or ``"full"``.
    reg_covar : float or torch.Tensor, default 1e-6
        Added to the variances (diagonal) so no component can collapse; a tensor
        broadcastable to ``(S, K, M)`` (e.g. ``(S, 1, M)``, a floor relative to each
        slice's data variance) is accepted.

    Returns
    -------
    weights : torch.Tensor
        ``(S, K)`` mixing weights (sum to 1 per slice).
    means : torch.Tensor
        ``(S, K, M)``.
    covariances : torch.Tensor
        ``(S, K, M)`` (``diag``) or ``(S, K, M, M)`` (``full``).
    """
    _check_type(covariance_type)
    if valid is not None:
        resp = resp * valid.unsqueeze(-1).to(resp.dtype)
        n_valid = valid.sum(-1, keepdim=True).to(resp.dtype)
    else:
        n_valid = torch.full(
            (resp.shape[0], 1), float(resp.shape[1]), dtype=resp.dtype, device=resp.device
        )
    eps = 10.0 * torch.finfo(resp.dtype).eps
    nk = resp.sum(1) + eps  # (S, K)
    weights = nk / n_valid.clamp_min(1.0)
    weights = weights / weights.sum(-1, keepdim=True)
    resp_t = resp.transpose(1, 2)  # (S, K, N)
    sum_x = torch.bmm(resp_t, x)  # (S, K, M)
    means = sum_x / nk.unsqueeze(-1)
    n_features = x.shape[-1]
    if covariance_type == "diag":
        avg_x2 = torch.bmm(resp_t, x * x) / nk.unsqueeze(-1)
        cov = (avg_x2 - means * means).clamp_min(0.0)
        return weights, means, cov + reg_covar
    # full: E[x x^T] - mu mu^T via one batched product of outer products.
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).reshape(x.shape[0], x.shape[1], -1)
    avg_xx = torch.bmm(resp_t, outer).reshape(*means.shape, n_features) / nk[..., None, None]
    cov = avg_xx - means.unsqueeze(-1) * means.unsqueeze(-2)
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    eye = torch.eye(n_features, dtype=x.dtype, device=x.device)
    reg = torch.as_tensor(reg_covar, dtype=x.dtype, device=x.device)
    # A scalar floor, or one per (slice, component, channel) on the diagonal.
    reg = reg.expand(*means.shape).unsqueeze(-1) * eye if reg.ndim >= 1 else reg * eye
    # Keep the diagonal non-negative under rounding (E[x^2] - mu^2 in float32).
    diag = torch.diagonal(cov, dim1=-2, dim2=-1)
    cov = cov + torch.diag_embed(diag.clamp_min(0.0) - diag)
    return weights, means, cov + reg
