"""Losses of the deep mixture models: closed-form M-step, then the (SV)GMM NLL.

Everything is vectorised over slices, pixels, components and channels and reuses
:mod:`napari_gmmseg.gaussian` (the same log density, M-step and NLL as the EM
engine). Given the network's logits at the ROI pixels of each slice:

1. ``w = softmax(logits)`` (the soft labels; the E-step of EM is replaced by the CNN),
2. differentiable M-step over the ROI pixels: ``pi_k = mean_x w_xk``, ``mu_k``,
   diagonal ``Sigma_k`` (:func:`napari_gmmseg.gaussian.m_step`),
3. ``deepg``: ``NLL = -mean_x log sum_k pi_k g(I(x) | mu_k, Sigma_k)``;
   ``deepsvg``: ``NLL_V = -mean_x log sum_k Pi_k(x) g(...)`` with ``Pi = w``
   (``log Pi`` is taken as ``log_softmax(logits)``, never ``log(softmax)``),
4. optionally ``+ lam * ||mu - mu_data||^2`` (deepSVG_mu).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_gmmseg.errors import ModelError

__all__ = ["DEEP_METHODS", "LossTerms", "mixture_loss", "spatially_variant"]

#: The deep methods and whether their prior is spatially variant (``Pi = w``).
DEEP_METHODS: tuple[str, ...] = ("deepg", "deepsvg", "deepsvg-mu")


def spatially_variant(method: str) -> bool:
    """True for deepSVG / deepSVG_mu (per-pixel priors), False for deepG."""
    if method not in DEEP_METHODS:
        raise ModelError(f"unknown deep method {method!r}; choose one of {DEEP_METHODS}")
    return method != "deepg"


@dataclass
class LossTerms:
    """Per-slice loss and the mixture parameters it was computed with.

    Attributes
    ----------
    loss : torch.Tensor
        ``(S,)`` NLL (or NLL_V) plus the mean penalty; sum it to train.
    nll : torch.Tensor
        ``(S,)`` NLL (deepG) or NLL_V (deepSVG) alone.
    resp : torch.Tensor
        ``(S, N, K)`` softmax of the logits (the soft labels ``w``).
    weights, means, covariances : torch.Tensor
        ``(S, K)``, ``(S, K, M)``, ``(S, K, M)`` (``(S, K, M, M)`` full) from the M-step.
    """

    loss: Any
    nll: Any
    resp: Any
    weights: Any
    means: Any
    covariances: Any


def mixture_loss(
    logits: Any,
    x: Any,
    valid: Any,
    *,
    method: str = "deepsvg",
    mu_data: Any = None,
    lam: float = 1.0,
    reg_covar: float = 1e-3,
    covariance_type: str = "diag",
) -> LossTerms:
    """Closed-form M-step from the network's soft labels, then NLL / NLL_V (+ mean penalty).

    Parameters
    ----------
    logits : torch.Tensor
        ``(S, N, K)`` network logits at the packed pixels (any values on padding).
    x : torch.Tensor
        ``(S, N, M)`` normalised pixels.
    valid : torch.Tensor
        ``(S, N)`` bool, False on padding.
    method : {"deepg", "deepsvg", "deepsvg-mu"}
        deepG uses ``pi = mean(w)``; deepSVG(_mu) uses ``Pi = w``.
    mu_data : torch.Tensor, optional
        ``(K, M)`` or ``(S, K, M)`` prior class means; when given (and ``lam > 0``) the
        penalty ``lam * ||mu - mu_data||_2^2`` is added per slice.
    lam : float, default 1
        Weight of the mean penalty.
    reg_covar : float, default 1e-3
        Variance floor added by the M-step (normalised units).
    covariance_type : {"diag", "full"}, default "diag"
        Covariance structure (the paper: diagonal).

    Returns
    -------
    LossTerms
    """
    import torch

    from napari_gmmseg.gaussian import log_gaussian, m_step, nll

    sv = spatially_variant(method)
    logits = logits.float()
    log_w = torch.log_softmax(logits, dim=-1)
    w = log_w.exp()
    weights, means, covs = m_step(x, w, valid, covariance_type, reg_covar)
    log_prior = log_w if sv else torch.log(weights).unsqueeze(1)
    value = nll(log_gaussian(x, means, covs, covariance_type) + log_prior, valid)
    loss = value
    if mu_data is not None and lam > 0:
        mu = torch.as_tensor(mu_data, dtype=means.dtype, device=means.device)
        if mu.shape[-2:] != means.shape[-2:]:
            raise ModelError(
                f"mu_data has shape {tuple(mu.shape)}, expected (K, M) = {tuple(means.shape[-2:])}"
            )
        loss = loss + float(lam) * ((means - mu) ** 2).sum((-1, -2))
    return LossTerms(loss, value, w, weights, means, covs)
