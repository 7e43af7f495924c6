"""The M-step: mixture parameters from sufficient statistics (float64), with the floor.

``reg_mode`` says how the covariance floor is applied: ``"clip"`` (variances, or the
eigenvalues of the floor-whitened covariance, raised to the floor: the constrained
maximum-likelihood M-step, so the NLL never increases) or ``"add"`` (floor added,
scikit-learn's ``reg_covar``).
"""

from __future__ import annotations

import torch

__all__ = ["as_cov", "label_m_step", "m_step_from_stats", "row_stats", "soft_m_step"]


def row_stats(x: torch.Tensor, valid_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and variance of every channel over valid pixels, as float64 ``(S, M)``."""
    n = valid_f.sum(1).clamp_min(1.0).to(torch.float64).unsqueeze(-1)
    xv = x * valid_f.unsqueeze(-1)
    mean = xv.sum(1, dtype=torch.float64) / n
    sq = torch.bmm(valid_f.unsqueeze(1), x * x).squeeze(1).to(torch.float64)
    var = sq / n - mean**2
    return mean, var.clamp_min(0.0)


def m_step_from_stats(
    nk: torch.Tensor,
    sx: torch.Tensor,
    sxx: torch.Tensor,
    n: torch.Tensor,
    covariance_type: str,
    reg: torch.Tensor,
    reg_mode: str = "clip",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights, means, covariances from float64 sufficient statistics.

    ``nk`` (S, K), ``sx`` (S, K, M), ``sxx`` (S, K, M) (diag: sum r x^2) or (S, K, M*M)
    (full: sum r x x^T), ``n`` (S,) valid pixels, ``reg`` (S, 1, M) floor.
    """
    nk = nk + 10.0 * torch.finfo(torch.float64).eps
    weights = nk / n.unsqueeze(-1)
    means = sx / nk.unsqueeze(-1)
    if covariance_type == "diag":
        var = sxx / nk.unsqueeze(-1) - means * means
        if reg_mode == "add":
            return weights, means, var.clamp_min(0.0) + reg
        return weights, means, torch.maximum(var, reg.expand_as(var))
    m = sx.shape[-1]
    cov = sxx.reshape(*sx.shape, m) / nk[..., None, None]
    cov = cov - means.unsqueeze(-1) * means.unsqueeze(-2)
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    floor = reg.expand_as(means)  # (S, K, M)
    if reg_mode == "add":
        diag = torch.diagonal(cov, dim1=-2, dim2=-1)
        return weights, means, cov + torch.diag_embed(diag.clamp_min(0.0) - diag + floor)
    # Constrained ML (cov >= diag(floor)): whiten by the floor, clip eigenvalues at 1.
    d = floor.sqrt()
    white = cov / (d.unsqueeze(-1) * d.unsqueeze(-2))
    evals, evecs = torch.linalg.eigh(white)
    white = (evecs * evals.clamp_min(1.0).unsqueeze(-2)) @ evecs.transpose(-1, -2)
    cov = white * (d.unsqueeze(-1) * d.unsqueeze(-2))
    return weights, means, 0.5 * (cov + cov.transpose(-1, -2))


def soft_m_step(
    x: torch.Tensor,
    valid: torch.Tensor,
    resp: torch.Tensor,
    covariance_type: str,
    reg: torch.Tensor,
    reg_mode: str = "clip",
    chunk: int = 1 << 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """M-step from ``(S, N, K)`` responsibilities (initialisation), chunked, float64 stats."""
    s, n, m = x.shape
    k = resp.shape[-1]
    step = max(1, chunk // max(s, 1))
    nk = torch.zeros(s, k, dtype=torch.float64, device=x.device)
    sx = torch.zeros(s, k, m, dtype=torch.float64, device=x.device)
    width = m if covariance_type == "diag" else m * m
    sxx = torch.zeros(s, k, width, dtype=torch.float64, device=x.device)
    for n0 in range(0, n, step):
        xc = x[:, n0 : n0 + step]
        rt = (
            resp[:, n0 : n0 + step].to(x.dtype) * valid[:, n0 : n0 + step].unsqueeze(-1)
        ).transpose(1, 2)
        nk += rt.sum(2, dtype=torch.float64)
        sx += torch.bmm(rt, xc).to(torch.float64)
        if covariance_type == "diag":
            sxx += torch.bmm(rt, xc * xc).to(torch.float64)
        else:
            outer = (xc.unsqueeze(-1) * xc.unsqueeze(-2)).reshape(s, xc.shape[1], m * m)
            sxx += torch.bmm(rt, outer).to(torch.float64)
    return m_step_from_stats(
        nk, sx, sxx, valid.sum(1).to(torch.float64), covariance_type, reg, reg_mode
    )


def label_m_step(
    x: torch.Tensor,
    valid: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    covariance_type: str,
    reg: torch.Tensor,
    reg_mode: str = "clip",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """M-step from hard ``(S, N)`` labels (one-hot responsibilities) without a one-hot tensor."""
    s, n, m = x.shape
    vf = valid.to(x.dtype)
    nk = torch.zeros(s, k, dtype=x.dtype, device=x.device).scatter_add_(1, labels, vf)
    idx = labels.unsqueeze(-1)
    xv = x * vf.unsqueeze(-1)
    sx = torch.zeros(s, k, m, dtype=x.dtype, device=x.device).scatter_add_(
        1, idx.expand(s, n, m), xv
    )
    if covariance_type == "diag":
        sxx = torch.zeros(s, k, m, dtype=x.dtype, device=x.device)
        sxx.scatter_add_(1, idx.expand(s, n, m), xv * x)
    else:
        outer = (xv.unsqueeze(-1) * x.unsqueeze(-2)).reshape(s, n, m * m)
        sxx = torch.zeros(s, k, m * m, dtype=x.dtype, device=x.device)
        sxx.scatter_add_(1, idx.expand(s, n, m * m), outer)
    f64 = torch.float64
    return m_step_from_stats(
        nk.to(f64), sx.to(f64), sxx.to(f64), valid.sum(1).to(f64), covariance_type, reg, reg_mode
    )


def as_cov(diag: torch.Tensor, covariance_type: str) -> torch.Tensor:
    return diag.contiguous() if covariance_type == "diag" else torch.diag_embed(diag)
