"""Initialisation: seeded weights, means and covariances for every row (:data:`INITS`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from napari_gmmseg.em.mstep import as_cov, label_m_step, row_stats, soft_m_step
from napari_gmmseg.errors import ModelError
from napari_gmmseg.methods import INITS

__all__ = ["initial_parameters", "kmeans"]


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def kmeans(
    x: torch.Tensor,
    valid: torch.Tensor,
    k: int,
    gen: torch.Generator,
    n_iter: int = 10,
) -> torch.Tensor:
    """Batched k-means++ seeding and Lloyd iterations; returns ``(S, N)`` labels."""
    s, n, _ = x.shape
    dev = x.device
    valid_f = valid.to(x.dtype)
    rows = torch.arange(s, device=dev)

    def sample(weight: torch.Tensor) -> torch.Tensor:
        # Inverse-CDF sampling with CPU-drawn uniforms: same picks on every device.
        cdf = torch.cumsum(weight.to(torch.float64), dim=1)
        u = torch.rand(s, 1, generator=gen, dtype=torch.float64).to(dev) * cdf[:, -1:]
        idx = torch.searchsorted(cdf, u).squeeze(1)
        return idx.clamp_max(n - 1)

    first = sample(valid_f)
    centers = x[rows, first].unsqueeze(1)  # (S, 1, M)
    closest = ((x - centers) ** 2).sum(-1)
    for _ in range(1, k):
        # Pixels equal to an existing centre get weight 0; if all are (constant data),
        # fall back to uniform over the ROI.
        w = closest * valid_f
        w = torch.where(w.sum(1, keepdim=True) > 0, w, valid_f)
        idx = sample(w)
        c = x[rows, idx].unsqueeze(1)
        centers = torch.cat([centers, c], dim=1)
        closest = torch.minimum(closest, ((x - c) ** 2).sum(-1))
    x2 = (x * x).sum(-1, keepdim=True)
    labels = None
    for _ in range(n_iter):
        dist = x2 - 2.0 * torch.bmm(x, centers.transpose(1, 2)) + (centers**2).sum(-1).unsqueeze(1)
        labels = dist.argmin(-1)
        counts = torch.zeros(s, k, dtype=x.dtype, device=dev).scatter_add_(1, labels, valid_f)
        sums = torch.zeros(s, k, x.shape[2], dtype=x.dtype, device=dev)
        sums.scatter_add_(1, labels.unsqueeze(-1).expand_as(x), x * valid_f.unsqueeze(-1))
        new = sums / counts.clamp_min(1.0).unsqueeze(-1)
        centers = torch.where(counts.unsqueeze(-1) > 0, new, centers)
    dist = x2 - 2.0 * torch.bmm(x, centers.transpose(1, 2)) + (centers**2).sum(-1).unsqueeze(1)
    labels = dist.argmin(-1)
    return labels


def initial_parameters(
    x: torch.Tensor,
    valid: torch.Tensor,
    n_components: int,
    *,
    init: str = "kmeans++",
    covariance_type: str = "diag",
    reg: torch.Tensor | None = None,
    seed: int = 0,
    prior_means: Any = None,
    reg_mode: str = "clip",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded initial weights, means and covariances for every row (float64).

    Parameters
    ----------
    x : torch.Tensor
        ``(S, N, M)`` pixels.
    valid : torch.Tensor
        ``(S, N)`` bool.
    n_components : int
        K.
    init : str, default "kmeans++"
        One of :data:`INITS`.
    covariance_type : str, default "diag"
        ``"diag"`` or ``"full"``.
    reg : torch.Tensor, optional
        ``(S, 1, M)`` covariance floor (default 1e-6).
    seed : int, default 0
        Seed of every random draw (drawn on the CPU, so the same on every device).
    prior_means : array-like, optional
        ``(K, M)`` means for ``init="prior"``.

    Returns
    -------
    weights, means, covariances : torch.Tensor
        ``(S, K)``, ``(S, K, M)``, ``(S, K, M)`` or ``(S, K, M, M)``, float64.
    """
    s, n, m = x.shape
    k = int(n_components)
    dev = x.device
    if reg is None:
        reg = torch.full((s, 1, m), 1e-6, dtype=torch.float64, device=dev)
    gen = _generator(seed)
    valid_f = valid.to(x.dtype)
    if init == "kmeans++":
        labels = kmeans(x, valid, k, gen)
        return label_m_step(x, valid, labels, k, covariance_type, reg, reg_mode)
    if init == "random":
        resp = torch.rand(s, n, k, generator=gen, dtype=x.dtype).to(dev)
        resp /= resp.sum(-1, keepdim=True)
        return soft_m_step(x, valid, resp, covariance_type, reg, reg_mode)
    mean, var = row_stats(x, valid_f)  # (S, M) float64
    var_floor = torch.where(var > 0, var, torch.ones_like(var))
    if init == "random_from_data":
        u = torch.rand(s, k, generator=gen, dtype=torch.float64).to(dev)
        counts = valid.sum(1, keepdim=True).to(torch.float64)
        idx = (u * counts).long().clamp_max(n - 1)
        # Valid pixels are packed first, so index < count is a valid pixel.
        means = torch.gather(x.to(torch.float64), 1, idx.unsqueeze(-1).expand(s, k, m))
        weights = torch.full((s, k), 1.0 / k, dtype=torch.float64, device=dev)
        cov = var_floor.unsqueeze(1).expand(s, k, m) + reg
        return weights, means, as_cov(cov, covariance_type)
    if init == "linspace":
        steps = torch.linspace(-1.5, 1.5, k, dtype=torch.float64, device=dev) if k > 1 else None
        sd = var.sqrt()
        means = mean.unsqueeze(1).expand(s, k, m).clone()
        if steps is not None:
            means = means + steps.view(1, k, 1) * sd.unsqueeze(1)
        weights = torch.full((s, k), 1.0 / k, dtype=torch.float64, device=dev)
        cov = (var_floor / max(k, 1) ** 2).unsqueeze(1).expand(s, k, m) + reg
        return weights, means, as_cov(cov, covariance_type)
    if init == "prior":
        if prior_means is None:
            raise ModelError("init='prior' needs prior_means, a (K, M) table of class means")
        pm = torch.as_tensor(np.asarray(prior_means, dtype=np.float64), device=dev)
        if pm.shape != (k, m):
            raise ModelError(
                f"prior means have shape {tuple(pm.shape)}, expected (K={k}, M={m} channels)"
            )
        means = pm.unsqueeze(0).expand(s, k, m).clone()
        x64 = x.to(torch.float64)
        d = ((x64.unsqueeze(2) - means.unsqueeze(1)) ** 2).sum(-1)  # (S, N, K)
        lab = d.argmin(-1)
        resid = (x64 - torch.gather(means, 1, lab.unsqueeze(-1).expand(s, n, m))) ** 2
        vf = valid_f.to(torch.float64).unsqueeze(-1)
        pooled = (resid * vf).sum(1) / vf.sum(1).clamp_min(1.0)  # (S, M)
        pooled = torch.where(pooled > 0, pooled, var_floor)
        weights = torch.full((s, k), 1.0 / k, dtype=torch.float64, device=dev)
        cov = pooled.unsqueeze(1).expand(s, k, m) + reg
        return weights, means, as_cov(cov, covariance_type)
    raise ModelError(f"unknown init {init!r}; choose one of {INITS}")
