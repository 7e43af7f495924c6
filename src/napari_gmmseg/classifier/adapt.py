"""Per-slice EM adaptation: the classifier's posterior as the SVGMM's mixing weights Pi.

The classifier knows where tissues lie (depth in the ROI, local context) and what they look
like *on average* over its training cases; a new scan has its own contrast. This step keeps
the classifier's per-pixel class probabilities fixed as spatially variant mixing weights
``Pi[n, k]`` (the SVGMM of the paper, with Pi learned instead of estimated) and fits, per
slice, one full-covariance Gaussian per class to the pixel intensities by EM:

    E-step:  r[n, k] ∝ Pi[n, k] · N(x[n] | mu[s, k], Sigma[s, k])
    M-step:  mu, Sigma = r-weighted mean and covariance of x over slice s

All slices run at once (segment sums over a slice index); a fixed number of iterations, so
there is no host synchronisation in the loop. Starting from ``r = Pi`` the first M-step turns
the classifier's opinion into per-slice Gaussians; the next E-steps let the slice's own
intensities move the class borders.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ADAPT_ITERATIONS", "COVARIANCE_FLOOR", "adapt_per_slice"]

#: EM iterations of the adaptation (the labels no longer change after about five).
ADAPT_ITERATIONS = 10
#: Added to the diagonal of every class covariance (units of the robust z-score, squared).
COVARIANCE_FLOOR = 1e-3


def adapt_per_slice(
    pi: np.ndarray,
    x: np.ndarray,
    slice_id: np.ndarray,
    *,
    iterations: int = ADAPT_ITERATIONS,
    device: Any = "cpu",
) -> np.ndarray:
    """Responsibilities of an EM whose mixing weights are the classifier's posterior.

    Parameters
    ----------
    pi : numpy.ndarray
        ``(N, K)`` class probabilities from the classifier (rows sum to 1).
    x : numpy.ndarray
        ``(N, M)`` pixel intensities in per-slice robust z-scores.
    slice_id : numpy.ndarray
        ``(N,)`` int slice of every pixel (0 .. S-1).
    iterations : int
        EM iterations; 0 returns ``pi`` unchanged.
    device : str or torch.device

    Returns
    -------
    numpy.ndarray
        ``(N, K)`` float32 responsibilities.
    """
    import torch

    if iterations <= 0 or len(pi) == 0:
        return np.asarray(pi, dtype=np.float32)
    dt = torch.float64
    p = torch.as_tensor(np.asarray(pi), dtype=dt, device=device)
    xs = torch.as_tensor(np.asarray(x), dtype=dt, device=device)
    sid = torch.as_tensor(np.asarray(slice_id), dtype=torch.long, device=device)
    n_slices, (_n, k), m = int(sid.max()) + 1, p.shape, xs.shape[1]
    log_pi = p.clamp_min(1e-8).log()
    eye = torch.eye(m, dtype=dt, device=device)
    r = p
    for _ in range(iterations):
        w = torch.zeros(n_slices, k, dtype=dt, device=device).index_add_(0, sid, r) + 1e-6
        mean = torch.zeros(n_slices, k, m, dtype=dt, device=device)
        mean.index_add_(0, sid, r[:, :, None] * xs[:, None, :])
        mean /= w[..., None]
        dx = xs[:, None, :] - mean[sid]  # (N, K, M)
        cov = torch.zeros(n_slices, k, m, m, dtype=dt, device=device)
        cov.index_add_(0, sid, r[..., None, None] * dx[..., :, None] * dx[..., None, :])
        cov = cov / w[..., None, None] + COVARIANCE_FLOOR * eye
        chol = torch.linalg.cholesky(cov)  # (S, K, M, M)
        half_logdet = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (S, K)
        z = torch.linalg.solve_triangular(chol[sid], dx[..., None], upper=False)[..., 0]
        log_lik = -0.5 * (z * z).sum(-1) - half_logdet[sid]
        r = torch.softmax(log_pi + log_lik, dim=1)
    return r.float().cpu().numpy()
