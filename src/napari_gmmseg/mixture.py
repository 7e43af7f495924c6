"""EM for Gaussian mixtures (Algorithm 1) and spatially variant mixtures (Algorithm 2), batched.

All slices of a :class:`~napari_gmmseg.preprocess.SliceBatch` are fitted at
once: every tensor carries the slice dimension ``S`` and padding is masked, so
there is no Python loop over slices, classes or channels in the EM loop.

How it runs
-----------
- E-step in log space with log-sum-exp (the numerically stable tutorial), the
  Mahalanobis terms as batched matrix products (``diag``) or through the Cholesky
  factor of the precisions (``full``), as scikit-learn.
- Internally the soft maps use a component-major layout ``(S, K, N)`` so the
  reductions over the K components are vectorised; on the CPU the pixels are
  streamed through the E-step and the sufficient statistics in cache-sized chunks,
  so an iteration reads the data once and allocates no ``(S, N, K)`` temporaries
  (GMM). Sufficient statistics and NLL are accumulated in float64.
- Stopping is per slice: a slice stops when ``|NLL_t - NLL_{t-1}| < tol`` (the
  paper's 1e-3) or at ``max_iter``. Its parameters are frozen from then on with
  on-device masks, so the result is exactly what checking every iteration gives;
  the host only looks at the flags every ``check_every`` iterations (then reports
  progress and drops finished slices from the working set).
- A covariance floor ``reg_covar`` (relative to each slice's data variance per
  channel by default; the data are z-scored, so this is about absolute) keeps
  components from collapsing. By default (``reg_mode="clip"``) variances below the
  floor are raised to it (for ``full``: eigenvalues of the floor-whitened covariance),
  which is the constrained maximum-likelihood M-step, so the NLL provably never
  increases; ``reg_mode="add"`` adds the floor as scikit-learn's ``reg_covar`` does.

Initialisations (all seeded): ``"kmeans++"`` (batched k-means++ seeding and Lloyd
iterations in torch, then one M-step from the hard labels, as scikit-learn's
``"kmeans"``), ``"random"`` (random responsibilities then an M-step, scikit-learn's
``"random"``, what the paper used), ``"random_from_data"`` (means at random pixels),
``"linspace"`` (means evenly spaced over mean +- 1.5 SD of every channel, the
tutorial's), ``"prior"`` (means from a ``(K, M)`` table such as mu_data, shared
within-class covariance from the nearest-mean assignment), or explicit
``init_params``.

Restarts (``n_init``, default 1): the rows are repeated once per seeded
initialisation and fitted as one batch; every slice keeps its lowest-NLL restart.

Spatial coherence (off by default): ``spatial="mrf"`` adds a Potts prior solved by
mean-field, ``beta * (sum of the 8 neighbours' responsibilities)`` in the log prior
of the E-step, and ``spatial="smooth"`` (SVGMM) replaces Pi after every M-step by
``(1 - beta) * Pi + beta * mean of the 8 neighbours' Pi``. With these options the
NLL is still reported but is no longer guaranteed to decrease.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_gmmseg.errors import ModelError, RoiError
from napari_gmmseg.fit import Progress, RowUpdate
from napari_gmmseg.gaussian import precision_cholesky
from napari_gmmseg.methods import COVARIANCE_TYPES, INITS, REG_MODES, SPATIAL, check_choice

__all__ = [
    "INITS",
    "REG_MODES",
    "SPATIAL",
    "MixtureResult",
    "fit_gmm",
    "fit_svgmm",
    "initial_parameters",
    "restart_seeds",
]


_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class MixtureResult:
    """A mixture fitted to every row of a :class:`~napari_gmmseg.preprocess.SliceBatch`.

    Tensors are on the batch's device, component order as fitted (not yet named).

    Attributes
    ----------
    responsibilities : torch.Tensor
        ``(S, N_max, K)`` soft assignment of each packed pixel: the final E-step's
        posteriors (GMM) or Pi (SVGMM); 0 on padding.
    weights : torch.Tensor
        ``(S, K)`` mixing weights (mean of Pi over the ROI for SV models).
    means : torch.Tensor
        ``(S, K, M)`` in normalised units.
    covariances : torch.Tensor
        ``(S, K, M)`` (``diag``) or ``(S, K, M, M)`` (``full``).
    nll_history : torch.Tensor
        ``(S, T)`` float64 mean NLL (NLL_V for SV models) at every iteration, NaN after
        a slice stopped.
    n_iter : torch.Tensor
        ``(S,)`` int64 iterations used.
    converged : torch.Tensor
        ``(S,)`` bool, stopped by ``tol`` before ``max_iter``.
    finished : torch.Tensor
        ``(S,)`` bool, False for slices still running when ``should_stop`` fired.
    method : str
        ``"gmm"``, ``"svgmm"`` or a deep method name.
    covariance_type : str
        ``"diag"`` or ``"full"``.
    info : dict
        Extra provenance (options, timings).
    """

    responsibilities: torch.Tensor
    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    nll_history: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor
    finished: torch.Tensor
    method: str = "gmm"
    covariance_type: str = "diag"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> torch.Tensor:
        """``(S, N_max)`` int64 component index of each packed pixel (argmax)."""
        return self.responsibilities.argmax(-1)

    @property
    def final_nll(self) -> torch.Tensor:
        """``(S,)`` last finite NLL of every slice."""
        hist = self.nll_history
        idx = (self.n_iter - 1).clamp_min(0).unsqueeze(1)
        return hist.gather(1, idx).squeeze(1)


# ----------------------------------------------------------------------------- helpers
def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def _row_stats(x: torch.Tensor, valid_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and variance of every channel over valid pixels, as float64 ``(S, M)``."""
    n = valid_f.sum(1).clamp_min(1.0).to(torch.float64).unsqueeze(-1)
    xv = x * valid_f.unsqueeze(-1)
    mean = xv.sum(1, dtype=torch.float64) / n
    sq = torch.bmm(valid_f.unsqueeze(1), x * x).squeeze(1).to(torch.float64)
    var = sq / n - mean**2
    return mean, var.clamp_min(0.0)


#: How the covariance floor is applied: ``"clip"`` (variances, or the eigenvalues of the
#: floor-whitened covariance, raised to the floor: the constrained maximum-likelihood
#: M-step, so the NLL never increases) or ``"add"`` (floor added, scikit-learn's reg_covar).


def _m_step_from_stats(
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


def _soft_m_step(
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
    return _m_step_from_stats(
        nk, sx, sxx, valid.sum(1).to(torch.float64), covariance_type, reg, reg_mode
    )


def _label_m_step(
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
    return _m_step_from_stats(
        nk.to(f64), sx.to(f64), sxx.to(f64), valid.sum(1).to(f64), covariance_type, reg, reg_mode
    )


def _kmeans(
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
        labels = _kmeans(x, valid, k, gen)
        return _label_m_step(x, valid, labels, k, covariance_type, reg, reg_mode)
    if init == "random":
        resp = torch.rand(s, n, k, generator=gen, dtype=x.dtype).to(dev)
        resp /= resp.sum(-1, keepdim=True)
        return _soft_m_step(x, valid, resp, covariance_type, reg, reg_mode)
    mean, var = _row_stats(x, valid_f)  # (S, M) float64
    var_floor = torch.where(var > 0, var, torch.ones_like(var))
    if init == "random_from_data":
        u = torch.rand(s, k, generator=gen, dtype=torch.float64).to(dev)
        counts = valid.sum(1, keepdim=True).to(torch.float64)
        idx = (u * counts).long().clamp_max(n - 1)
        # Valid pixels are packed first, so index < count is a valid pixel.
        means = torch.gather(x.to(torch.float64), 1, idx.unsqueeze(-1).expand(s, k, m))
        weights = torch.full((s, k), 1.0 / k, dtype=torch.float64, device=dev)
        cov = var_floor.unsqueeze(1).expand(s, k, m) + reg
        return weights, means, _as_cov(cov, covariance_type)
    if init == "linspace":
        steps = torch.linspace(-1.5, 1.5, k, dtype=torch.float64, device=dev) if k > 1 else None
        sd = var.sqrt()
        means = mean.unsqueeze(1).expand(s, k, m).clone()
        if steps is not None:
            means = means + steps.view(1, k, 1) * sd.unsqueeze(1)
        weights = torch.full((s, k), 1.0 / k, dtype=torch.float64, device=dev)
        cov = (var_floor / max(k, 1) ** 2).unsqueeze(1).expand(s, k, m) + reg
        return weights, means, _as_cov(cov, covariance_type)
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
        return weights, means, _as_cov(cov, covariance_type)
    raise ModelError(f"unknown init {init!r}; choose one of {INITS}")


def _features(x: torch.Tensor, valid_f: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """``(S, D, N)`` rows ``[x, x**2 or x x^T, valid]`` of packed pixels ``(S, N, M)``."""
    s, n, m = x.shape
    q = m if covariance_type == "diag" else m * m
    feat = torch.empty(
        s, 2 * m + 1 if covariance_type == "diag" else m + q + 1, n, dtype=x.dtype, device=x.device
    )
    xt = feat[:, :m]
    xt.copy_(x.transpose(1, 2))
    if covariance_type == "diag":
        torch.mul(xt, xt, out=feat[:, m : 2 * m])
    else:
        feat[:, m : m + q] = (xt.unsqueeze(2) * xt.unsqueeze(1)).flatten(1, 2)
    feat[:, -1] = valid_f
    return feat


def _as_cov(diag: torch.Tensor, covariance_type: str) -> torch.Tensor:
    return diag.contiguous() if covariance_type == "diag" else torch.diag_embed(diag)


def _neighbour_sum(batch: Any, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Sum over the 8 neighbours (inside the ROI) of ``(S_w, K, N)`` packed maps."""
    h, w = batch.crop_shape
    sw, k, n = values.shape
    flat_index = batch.flat_index[rows]
    valid = batch.valid[rows]
    crop = torch.zeros(sw, k, h * w, dtype=values.dtype, device=values.device)
    idx = torch.where(valid, flat_index, torch.zeros_like(flat_index))
    src = values * valid.unsqueeze(1).to(values.dtype)
    crop.scatter_add_(2, idx.unsqueeze(1).expand(sw, k, n), src)
    kernel = torch.ones(1, 1, 3, 3, dtype=values.dtype, device=values.device)
    kernel[0, 0, 1, 1] = 0.0
    nb = torch.nn.functional.conv2d(crop.view(sw * k, 1, h, w), kernel, padding=1)
    nb = nb.view(sw, k, h * w)
    return nb.gather(2, idx.unsqueeze(1).expand(sw, k, n))


# ----------------------------------------------------------------------------- the EM
def fit_gmm(batch: Any, **kwargs: Any) -> MixtureResult:
    """Fit a Gaussian mixture (Algorithm 1) to every row of a batch at once.

    Parameters
    ----------
    batch : SliceBatch
        Packed pixels (see :mod:`napari_gmmseg.preprocess`).
    **kwargs
        See :func:`fit_svgmm` (same options).

    Returns
    -------
    MixtureResult
        ``responsibilities`` are the final E-step posteriors.
    """
    return _fit(batch, spatially_variant=False, **kwargs)


def fit_svgmm(batch: Any, **kwargs: Any) -> MixtureResult:
    """Fit a spatially variant Gaussian mixture (Algorithm 2) to every row of a batch.

    Pi (per-pixel weights) is initialised from the initial GMM's responsibilities,
    the E-step uses ``Pi_k(x) g(x | mu_k, Sigma_k)`` and the M-step sets ``Pi = w``;
    the history holds NLL_V.

    Parameters
    ----------
    batch : SliceBatch
        Packed pixels.
    n_components : int, default 4
        K.
    covariance_type : {"diag", "full"}, default "diag"
        Covariance structure.
    init : str, default "kmeans++"
        One of :data:`INITS` (ignored when ``init_params`` is given).
    tol : float, default 1e-3
        Stop a slice when its mean NLL changes by less than this (0: never).
    max_iter : int, default 100
        Iteration limit.
    reg_covar : float, default 1e-4
        Covariance floor added to the variances.
    reg_covar_relative : bool, default True
        Scale the floor by each slice's data variance per channel.
    reg_mode : {"clip", "add"}, default "clip"
        Raise variances (eigenvalues) below the floor to it (constrained ML: the NLL
        never increases) or add the floor to them (scikit-learn's ``reg_covar``).
    seed : int, default 0
        Seed of the initialisation.
    n_init : int, default 1
        Seeded restarts, fitted together as one batch; each slice keeps the restart
        with the lowest final NLL (restart 0 uses ``seed`` itself, see
        :func:`restart_seeds`). Needs a random ``init``; ``info["best_restart"]``
        and ``info["restart_final_nll"]`` record the choice.
    prior_means : array-like, optional
        ``(K, M)`` class means for ``init="prior"``.
    init_params : tuple of (weights, means, covariances), optional
        Explicit initial parameters, ``(S, K)``, ``(S, K, M)``, ``(S, K, M[, M])``
        (or without the S axis, shared by all rows).
    dtype : torch.dtype, default torch.float32
        Working precision of the per-pixel arithmetic.
    spatial : {"none", "mrf", "smooth"}, default "none"
        Spatial coherence: Potts mean-field prior, or (SVGMM) Pi smoothing.
    beta : float, default 1.0
        Strength of the spatial option (Potts interaction, or smoothing mix in [0, 1]).
    check_every : int, default 5
        Host-side look at the stop flags (progress, early exit) every this many iterations.
    chunk_pixels : int, optional
        Pixels per E-step chunk on the CPU (default 65536; all at once on CUDA).
    num_threads : int, optional
        torch CPU threads for the fit (restored afterwards); default: 1 for small
        problems (fewer than :data:`SINGLE_THREAD_BELOW` pixel-components), torch's
        setting otherwise.
    progress : callable, optional
        Receives a :class:`~napari_gmmseg.fit.Progress` at every check.
    should_stop : callable, optional
        Returns True to stop; checked every iteration. Slices not yet done are then
        returned with ``finished`` False.

    Returns
    -------
    MixtureResult
        ``responsibilities`` hold Pi.
    """
    return _fit(batch, spatially_variant=True, **kwargs)


class _CpuSettings:
    """During a CPU fit: torch's intra-op thread count, and denormals flushed to zero.

    Far pixels give responsibilities below 1e-38 (denormal float32), which make
    ``exp`` and the products markedly slower (measured 14 % of the fit on phantom
    crops); they carry no weight, so they are flushed. Both are restored on exit
    (flushing is off by default in torch).
    """

    def __init__(self, n: int | None, cpu: bool) -> None:
        self.n = n
        self.cpu = cpu
        self.old = None
        self.flushed = False

    def __enter__(self) -> None:
        if self.n is not None and self.n != torch.get_num_threads():
            self.old = torch.get_num_threads()
            torch.set_num_threads(int(self.n))
        if self.cpu:
            self.flushed = torch.set_flush_denormal(True)

    def __exit__(self, *exc: Any) -> None:
        if self.old is not None:
            torch.set_num_threads(self.old)
        if self.flushed:
            torch.set_flush_denormal(False)


#: Below this many pixel-components per iteration the CPU EM runs on one thread: the
#: ops are too small to gain from threads, and on a busy machine every parallel region
#: waits for a descheduled peer (measured 15x slower on this 2-core box under load).
SINGLE_THREAD_BELOW = 1 << 22


def _fit(batch: Any, *, num_threads: int | None = None, **kwargs: Any) -> MixtureResult:
    if num_threads is None and batch.x.device.type == "cpu":
        s, n, _ = batch.x.shape
        size = s * n * int(kwargs.get("n_components", 4)) * int(kwargs.get("n_init", 1))
        if size < SINGLE_THREAD_BELOW:
            num_threads = 1
    if batch.x.device.type != "cpu":
        num_threads = None
    with _CpuSettings(num_threads, batch.x.device.type == "cpu"):
        return _fit_impl(batch, **kwargs)


def _fit_impl(
    batch: Any,
    *,
    spatially_variant: bool,
    n_components: int = 4,
    covariance_type: str = "diag",
    init: str = "kmeans++",
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-4,
    reg_covar_relative: bool = True,
    reg_mode: str = "clip",
    seed: int = 0,
    n_init: int = 1,
    prior_means: Any = None,
    init_params: Any = None,
    dtype: torch.dtype = torch.float32,
    spatial: str = "none",
    beta: float = 1.0,
    check_every: int = 5,
    chunk_pixels: int | None = None,
    progress: Callable[[Progress], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MixtureResult:
    k = int(n_components)
    if k < 1:
        raise ModelError(f"n_components must be >= 1, got {k}")
    check_choice("covariance_type", covariance_type, COVARIANCE_TYPES)
    if init_params is None:
        check_choice("init", init, INITS)
    check_choice("spatial", spatial, SPATIAL)
    if spatial == "smooth" and not spatially_variant:
        raise ModelError("spatial='smooth' smooths the SVGMM weights Pi; use 'mrf' for a GMM")
    check_choice("reg_mode", reg_mode, REG_MODES)
    if max_iter < 1:
        raise ModelError(f"max_iter must be >= 1, got {max_iter}")
    if tol < 0:
        raise ModelError(f"tol must be >= 0, got {tol}")
    n_init = int(n_init)
    if n_init < 1:
        raise ModelError(f"n_init must be >= 1, got {n_init}")
    if n_init > 1 and (init_params is not None or init in ("linspace", "prior")):
        raise ModelError(
            "n_init > 1 needs a random initialisation (kmeans++, random, random_from_data), "
            f"not {'init_params' if init_params is not None else repr(init)}"
        )
    check_every = max(int(check_every), 1)

    x_full = batch.x.to(dtype)
    valid_full = batch.valid
    dev = x_full.device
    s_full, n_max, m = x_full.shape
    n_pix = valid_full.sum(1)
    if bool((n_pix < k).any()):
        bad = [int(z) for z in np.asarray(batch.slice_index)[(n_pix < k).cpu().numpy()]]
        raise RoiError(f"slices {bad} have fewer ROI pixels than the {k} classes")
    n_full = n_pix.to(torch.float64)
    valid_f_full = valid_full.to(dtype)

    _, data_var = _row_stats(x_full, valid_f_full)
    if reg_covar_relative:
        floor = torch.where(data_var > 0, data_var, torch.ones_like(data_var)) * reg_covar
    else:
        floor = torch.full_like(data_var, float(reg_covar))
    reg_full = floor.unsqueeze(1)  # (S, 1, M) float64

    if n_init > 1:
        # Restarts: one seeded initialisation per restart (each batched over the rows),
        # then the same EM over the rows repeated restart-major, one best row per slice.
        seeds = restart_seeds(seed, n_init)
        inits = [
            initial_parameters(
                x_full,
                valid_full,
                k,
                init=init,
                covariance_type=covariance_type,
                reg=reg_full,
                seed=r_seed,
                reg_mode=reg_mode,
            )
            for r_seed in seeds
        ]
        res = _fit_impl(
            _repeat_rows(batch, n_init),
            spatially_variant=spatially_variant,
            n_components=k,
            covariance_type=covariance_type,
            tol=tol,
            max_iter=max_iter,
            reg_covar=reg_covar,
            reg_covar_relative=reg_covar_relative,
            reg_mode=reg_mode,
            seed=seed,
            init_params=tuple(torch.cat(parts) for parts in zip(*inits, strict=True)),
            dtype=dtype,
            spatial=spatial,
            beta=beta,
            check_every=check_every,
            chunk_pixels=chunk_pixels,
            progress=None if progress is None else _RestartProgress(progress, batch, n_init),
            should_stop=should_stop,
        )
        return _best_restart(res, n_init, seeds, init)

    if init_params is not None:
        w0, mu0, cov0 = (
            torch.as_tensor(np.asarray(p) if not torch.is_tensor(p) else p) for p in init_params
        )
        w0, mu0, cov0 = (p.to(device=dev, dtype=torch.float64) for p in (w0, mu0, cov0))
        if w0.ndim == 1:
            w0, mu0, cov0 = (
                p.unsqueeze(0).expand(s_full, *p.shape).clone() for p in (w0, mu0, cov0)
            )
        exp_cov = (s_full, k, m) if covariance_type == "diag" else (s_full, k, m, m)
        if w0.shape != (s_full, k) or mu0.shape != (s_full, k, m) or cov0.shape != exp_cov:
            raise ModelError(
                "init_params shapes do not match (S, K), (S, K, M) and the covariance type"
            )
    else:
        w0, mu0, cov0 = initial_parameters(
            x_full,
            valid_full,
            k,
            init=init,
            covariance_type=covariance_type,
            reg=reg_full,
            seed=seed,
            prior_means=prior_means,
            reg_mode=reg_mode,
        )

    # Full-size state (float64 parameters; per-pixel state in the working dtype).
    weights, means, covs = w0.clone(), mu0.clone(), cov0.clone()
    hist = torch.full((s_full, max_iter), float("nan"), dtype=torch.float64, device=dev)
    n_iter = torch.zeros(s_full, dtype=torch.int64, device=dev)
    converged = torch.zeros(s_full, dtype=torch.bool, device=dev)
    active_full = torch.ones(s_full, dtype=torch.bool, device=dev)
    use_nb = spatial != "none"
    log_pi_full = None  # (S, K, N) log Pi for SVGMM
    resp_full = None  # (S, K, N) last responsibilities, for the spatial term

    if chunk_pixels is None:
        chunk_pixels = 1 << 16 if dev.type == "cpu" else 1 << 62

    rows = torch.arange(s_full, device=dev)
    # CPU: shift by a per-row bound instead of a per-pixel max (one check per tile, free
    # on the host); CUDA: the exact per-pixel max, no host synchronisation.
    fast_shift = dev.type == "cpu"
    exp_floor = -87.0 if dtype == torch.float32 else -700.0

    # Channel-major features F = [x, x**2 (diag) or x x^T (full), valid], (S, D, N), built
    # once: every tile is then a strided view and the log joint / statistics are one
    # batched product each.
    feat_full = _features(x_full, valid_f_full, covariance_type)

    def select(r: torch.Tensor) -> dict[str, Any]:
        if r.numel() == s_full:
            return {"f": feat_full, "n": n_full, "reg": reg_full}
        return {
            "f": feat_full[r],
            "n": n_full[r],
            "reg": reg_full[r],
        }

    work = select(rows)

    def log_gauss_terms(
        w: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor, with_log_w: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Per-iteration coefficients of the log joint minus a per-row upper bound.

        ``diag``: ``C`` ``(S, K, 2M+1)`` with ``log p(x, k) - U = C_k . [x, x**2, 1]``.
        ``full``: ``G`` ``(S, K*M, M+1)`` (``U^T`` and ``-U^T mu``) and the constant
        ``(S, K, 1)``, ``log p(x, k) - U = -0.5 |G_k [x, 1]|^2 + const_k``.
        ``U`` ``(S, 1, 1)`` is ``max_k`` of the log joint at ``x = mu_k`` (Mahalanobis 0),
        an upper bound of the log joint over all pixels (``log Pi <= 0`` keeps it one for
        SV models), so ``exp`` of the shifted values cannot overflow.
        """
        const_w = torch.log(w) if with_log_w else torch.zeros_like(w)
        if covariance_type == "diag":
            prec = 1.0 / cov
            peak = -0.5 * (torch.log(cov).sum(-1) + m * _LOG_2PI) + const_w  # (S, K)
            bound = peak.amax(-1, keepdim=True)
            const = peak - 0.5 * (mu * mu * prec).sum(-1) - bound
            coef = torch.cat([mu * prec, -0.5 * prec, const.unsqueeze(-1)], dim=-1)
            return coef.to(dtype), None, bound.unsqueeze(-1).to(dtype)
        u = precision_cholesky(cov, "full")  # (S, K, M, M) float64, prec = U U^T
        ut = u.transpose(-1, -2)
        umu = (ut @ mu.unsqueeze(-1)).squeeze(-1)  # (S, K, M)
        log_det = torch.log(torch.diagonal(u, dim1=-2, dim2=-1)).sum(-1)
        peak = log_det - 0.5 * m * _LOG_2PI + const_w
        bound = peak.amax(-1, keepdim=True)
        sw = u.shape[0]
        g = torch.cat([ut, -umu.unsqueeze(-1)], dim=-1).reshape(sw, k * m, m + 1)
        return g.to(dtype), (peak - bound).unsqueeze(-1).to(dtype), bound.unsqueeze(-1).to(dtype)

    def log_gauss_tile(
        coef: torch.Tensor, const: torch.Tensor | None, f: torch.Tensor
    ) -> torch.Tensor:
        """``(s, K, c)`` log joint (or log density) for tile features ``f`` ``(s, D, c)``."""
        if covariance_type == "diag":
            return torch.bmm(coef, f)
        # [x, 1] rows: x and the valid flag (1 on real pixels).
        xv = torch.cat([f[:, :m], f[:, -1:]], dim=1)
        y = torch.bmm(coef, xv)  # (s, K*M, c)
        sb, _, c = y.shape
        maha = y.square_().view(sb, k, m, c).sum(2)
        return maha.mul_(-0.5).add_(const)

    def e_pass(
        w: torch.Tensor,
        mu: torch.Tensor,
        cov: torch.Tensor,
        wk: dict[str, Any],
        *,
        log_pi: torch.Tensor | None = None,
        nb: torch.Tensor | None = None,
        upd: torch.Tensor | None = None,
        resp_out: torch.Tensor | None = None,
        want_stats: bool = True,
    ) -> tuple[Any, ...]:
        """One pass over the pixels, tile by tile: NLL and sufficient statistics.

        A tile is a block of rows times a block of pixels of about ``chunk_pixels``
        pixels, so the per-tile temporaries stay in cache on the CPU. In place, for the
        rows where ``upd`` is True: ``log_pi`` becomes ``log w`` (the SVGMM M-step for
        Pi) and ``resp_out`` the responsibilities.
        """
        coef, const, bound = log_gauss_terms(w, mu, cov, with_log_w=log_pi is None)
        feat = wk["f"]
        sw, _, n = feat.shape
        cols = max(1, min(n, int(chunk_pixels)))
        row_step = max(1, int(chunk_pixels) // cols)
        ll = torch.zeros(sw, dtype=torch.float64, device=dev)
        width = 2 * m + 1 if covariance_type == "diag" else m + m * m + 1
        stats = torch.zeros(sw, k, width, dtype=torch.float64, device=dev)
        keep_all = None if upd is None else ~upd.view(-1, 1, 1)
        for s0 in range(0, sw, row_step):
            s1 = min(sw, s0 + row_step)
            coef_b = coef[s0:s1]
            const_b = None if const is None else const[s0:s1]
            bound_b = bound[s0:s1]
            keep = None if keep_all is None else keep_all[s0:s1]
            for n0 in range(0, n, cols):
                n1 = min(n, n0 + cols)
                f = feat[s0:s1, :, n0:n1]
                vc = f[:, -1:]
                a = log_gauss_tile(coef_b, const_b, f)
                if log_pi is not None:
                    a += log_pi[s0:s1, :, n0:n1]
                e = None
                if nb is not None:
                    # Mean-field Potts: the NLL is the plain mixture's, resp has the prior.
                    amax = a.amax(1, keepdim=True)
                    lse = torch.log(torch.exp(a - amax).sum(1, keepdim=True)) + amax + bound_b
                    a += nb[s0:s1, :, n0:n1]
                elif fast_shift:
                    # a <= 0 (shifted by the bound): exp cannot overflow, and no per-pixel
                    # max is needed unless every component underflows (far outliers).
                    # Clamped first: exp of arguments far below the float range takes a
                    # slow path (measured 3x on phantom crops); e^-87 is ~0 next to the
                    # largest term, and a pixel whose terms are all that small takes the
                    # exact path below.
                    e = a.clamp_min(exp_floor).exp_()
                    ssum = e.sum(1, keepdim=True)
                    if float(ssum.amin()) < 1e-30:
                        e = None
                    else:
                        amax = None
                if e is None:
                    amax = a.amax(1, keepdim=True)
                    e = torch.sub(a, amax).clamp_min_(exp_floor).exp_()
                    ssum = e.sum(1, keepdim=True)
                log_ssum = torch.log(ssum)
                if nb is None:
                    lse = log_ssum + bound_b if amax is None else log_ssum + amax + bound_b
                ll[s0:s1] += torch.bmm(lse, vc.transpose(1, 2)).view(-1).to(torch.float64)
                if log_pi is not None and upd is not None:
                    log_r = a.sub_(log_ssum) if amax is None else a.sub_(amax).sub_(log_ssum)
                    tgt = log_pi[s0:s1, :, n0:n1]
                    tgt.copy_(torch.where(keep, tgt, log_r))
                # Padding pixels have zero features: r needs no mask for the statistics.
                r = e.div_(ssum)
                if want_stats:
                    stats[s0:s1] += torch.bmm(r, f.transpose(1, 2)).to(torch.float64)
                if resp_out is not None:
                    r = r.mul_(vc)
                    tgt = resp_out[s0:s1, :, n0:n1]
                    tgt.copy_(r if keep is None else torch.where(keep, tgt, r))
        nk = stats[:, :, -1]
        sx = stats[:, :, :m]
        sxx = stats[:, :, m:-1]
        return -ll / wk["n"], nk, sx, sxx

    # Initial responsibilities: Pi of the SVGMM (as the reference code), and the
    # neighbour term of the MRF.
    if spatially_variant or use_nb:
        resp_full = torch.empty(s_full, k, n_max, dtype=dtype, device=dev)
        e_pass(weights, means, covs, work, resp_out=resp_full, want_stats=False)
        if spatially_variant:
            tiny = torch.finfo(dtype).tiny
            if spatial == "smooth":
                log_pi_full = _smooth_log_pi(batch, rows, resp_full, beta, dtype)
            else:
                log_pi_full = torch.log(resp_full.clamp_min(tiny))
            if not use_nb:
                resp_full = None

    log_pi_w = log_pi_full
    resp_w = resp_full
    it = 0
    iterations_run = 0
    stopped = False
    prev_w = torch.full((s_full,), float("nan"), dtype=torch.float64, device=dev)
    active_w = active_full.clone()
    w_w, mu_w, cov_w = weights, means, covs
    n_iter_w, conv_w = n_iter, converged
    reported = np.zeros(s_full, dtype=bool)  # rows whose final state went to ``progress``

    def write_back() -> None:
        """Write the working set (rows ``rows``) back into the full-batch tensors."""
        for dst, src in (
            (weights, w_w),
            (means, mu_w),
            (covs, cov_w),
            (n_iter, n_iter_w),
            (converged, conv_w),
            (active_full, active_w),
            (log_pi_full, log_pi_w),
            (resp_full, resp_w),
        ):
            _put(dst, rows, src)

    for it in range(max_iter):
        if should_stop is not None and should_stop():
            stopped = True
            break
        nb = beta * _neighbour_sum(batch, rows, resp_w) if spatial == "mrf" else None
        upd = active_w
        nll_t, nk, sx, sxx = e_pass(
            w_w,
            mu_w,
            cov_w,
            work,
            log_pi=log_pi_w,
            nb=nb,
            upd=upd,
            resp_out=resp_w if spatial == "mrf" else None,
        )
        iterations_run = it + 1
        new_w, new_mu, new_cov = _m_step_from_stats(
            nk, sx, sxx, work["n"], covariance_type, work["reg"], reg_mode
        )
        hist[rows, it] = torch.where(upd, nll_t, torch.full_like(nll_t, float("nan")))
        w_w = torch.where(upd.unsqueeze(-1), new_w, w_w)
        mu_w = torch.where(upd.view(-1, 1, 1), new_mu, mu_w)
        cov_w = torch.where(upd.view(-1, *([1] * (cov_w.ndim - 1))), new_cov, cov_w)
        if log_pi_w is not None and spatial == "smooth":
            smoothed = _smooth_log_pi(batch, rows, torch.exp(log_pi_w), beta, dtype)
            log_pi_w = torch.where(upd.view(-1, 1, 1), smoothed, log_pi_w)
        n_iter_w = torch.where(upd, torch.full_like(n_iter_w, it + 1), n_iter_w)
        # prev is NaN on the first iteration and tol = 0 never stops: both compare False.
        done = upd & ((nll_t - prev_w).abs() < tol)
        conv_w = conv_w | done
        active_w = upd & ~done
        prev_w = torch.where(upd, nll_t, prev_w)

        last = it == max_iter - 1
        if (it + 1) % check_every == 0 or last:
            n_active = 0 if last else int(active_w.sum())
            if progress is not None:
                fin_mask = torch.ones(s_full, dtype=torch.bool, device=dev)
                if not last:
                    fin_mask[rows[active_w]] = False
                fin_np = fin_mask.cpu().numpy()
                fin = np.asarray(batch.slice_index)[fin_np]
                still = nll_t[active_w] if n_active else nll_t[upd]
                # Rows finished since the last report are still in the working set
                # (it shrinks only after reporting): hand over their final soft maps.
                new_rows = None
                if (fin_np & ~reported).any():
                    rows_np = rows.cpu().numpy()
                    sub_np = np.nonzero(fin_np[rows_np] & ~reported[rows_np])[0]
                    sub = torch.as_tensor(sub_np, device=dev)
                    if log_pi_w is not None:
                        soft_new = torch.exp(log_pi_w[sub]) * valid_f_full[rows[sub]].unsqueeze(1)
                    else:
                        nb = None
                        if spatial == "mrf":
                            nb = beta * _neighbour_sum(batch, rows[sub], resp_w[sub])
                        soft_new = torch.empty(sub.numel(), k, n_max, dtype=dtype, device=dev)
                        e_pass(
                            w_w[sub],
                            mu_w[sub],
                            cov_w[sub],
                            select(rows[sub]),
                            nb=nb,
                            resp_out=soft_new,
                            want_stats=False,
                        )
                    new_rows = RowUpdate(
                        rows=rows_np[sub_np],
                        responsibilities=soft_new.transpose(1, 2).cpu(),
                        means=mu_w[sub].to(dtype).cpu(),
                    )
                    reported[rows_np[sub_np]] = True
                progress(
                    Progress(
                        slices_done=s_full - n_active,
                        slices_total=s_full,
                        iteration=it + 1,
                        nll=float(still.mean()) if still.numel() else float("nan"),
                        finished=fin,
                        new_rows=new_rows,
                    )
                )
            if n_active == 0:
                active_w = torch.zeros_like(active_w)
                break
            if n_active <= 0.5 * rows.numel():
                # Write the working set back and keep only the rows still running.
                write_back()
                keep_rows = active_w.nonzero().squeeze(1)
                rows = rows[keep_rows]
                work = select(rows)
                w_w, mu_w, cov_w = w_w[keep_rows], mu_w[keep_rows], cov_w[keep_rows]
                n_iter_w, conv_w = n_iter_w[keep_rows], conv_w[keep_rows]
                active_w, prev_w = active_w[keep_rows], prev_w[keep_rows]
                log_pi_w = log_pi_w[keep_rows] if log_pi_w is not None else None
                resp_w = resp_w[keep_rows] if resp_w is not None else None

    write_back()
    finished = ~active_full if stopped else torch.ones(s_full, dtype=torch.bool, device=dev)

    # Final soft maps with the final parameters.
    all_rows = torch.arange(s_full, device=dev)
    if spatially_variant:
        soft = torch.exp(log_pi_full).mul_(valid_f_full.unsqueeze(1))
        weights = soft.sum(2, dtype=torch.float64) / n_full.unsqueeze(-1)
    else:
        nb = beta * _neighbour_sum(batch, all_rows, resp_full) if spatial == "mrf" else None
        soft = torch.empty(s_full, k, n_max, dtype=dtype, device=dev)
        e_pass(weights, means, covs, select(all_rows), nb=nb, resp_out=soft, want_stats=False)
    hist = hist[:, : max(int(n_iter.max()), 1)]
    return MixtureResult(
        responsibilities=soft.transpose(1, 2),
        weights=weights.to(dtype),
        means=means.to(dtype),
        covariances=covs.to(dtype),
        nll_history=hist,
        n_iter=n_iter,
        converged=converged,
        finished=finished,
        method="svgmm" if spatially_variant else "gmm",
        covariance_type=covariance_type,
        info={
            "init": init if init_params is None else "explicit",
            "n_components": k,
            "tol": tol,
            "max_iter": max_iter,
            "reg_covar": reg_covar,
            "reg_covar_relative": reg_covar_relative,
            "reg_mode": reg_mode,
            "seed": seed,
            "spatial": spatial,
            "beta": beta,
            "dtype": str(dtype).replace("torch.", ""),
            "device": str(dev),
            "iterations_run": iterations_run,
            "stopped": stopped,
        },
    )


def restart_seeds(seed: int, n_init: int) -> list[int]:
    """Seeds of the ``n_init`` restarts: ``seed`` itself first, then derived ones.

    Restart 0 is therefore exactly the single fit with ``seed``, so restarts can only
    lower each slice's final NLL. The others come from ``numpy.random.SeedSequence``.
    """
    derived = np.random.SeedSequence(int(seed)).spawn(max(int(n_init) - 1, 0))
    return [int(seed)] + [int(d.generate_state(1, dtype=np.uint32)[0]) for d in derived]


def _repeat_rows(batch: Any, n: int) -> Any:
    """The batch with its rows repeated ``n`` times, restart-major (row ``r * S + s``)."""
    return dataclasses.replace(
        batch,
        x=batch.x.repeat(n, 1, 1),
        valid=batch.valid.repeat(n, 1),
        flat_index=batch.flat_index.repeat(n, 1),
        slice_index=np.tile(np.asarray(batch.slice_index), n),
        volume_index=np.tile(np.asarray(batch.volume_index), (n, 1)),
        loc=np.tile(np.asarray(batch.loc), (n, 1)),
        scale=np.tile(np.asarray(batch.scale), (n, 1)),
    )


class _RestartProgress:
    """Relays the progress of a restart fit: a slice is done when all its restarts are."""

    def __init__(self, progress: Callable[[Progress], Any], batch: Any, n_init: int) -> None:
        self.progress = progress
        self.order = np.asarray(batch.slice_index)
        self.n_init = n_init

    def __call__(self, p: Progress) -> None:
        z, count = np.unique(np.asarray(p.finished), return_counts=True)
        done = np.isin(self.order, z[count >= self.n_init])
        self.progress(
            Progress(
                slices_done=int(done.sum()),
                slices_total=len(self.order),
                iteration=p.iteration,
                nll=p.nll,
                finished=self.order[done],
            )
        )


def _best_restart(res: MixtureResult, n_init: int, seeds: list[int], init: str) -> MixtureResult:
    """Keep, per slice, the finished restart with the lowest final NLL (restart 0 if none)."""
    s = res.n_iter.shape[0] // n_init
    final = res.final_nll.view(n_init, s)
    usable = res.finished.view(n_init, s) & torch.isfinite(final)
    best = torch.where(usable, final, torch.full_like(final, float("inf"))).argmin(0)
    pick = best * s + torch.arange(s, device=best.device)
    n_iter = res.n_iter[pick]
    return dataclasses.replace(
        res,
        responsibilities=res.responsibilities[pick],
        weights=res.weights[pick],
        means=res.means[pick],
        covariances=res.covariances[pick],
        nll_history=res.nll_history[pick, : max(int(n_iter.max()), 1)],
        n_iter=n_iter,
        converged=res.converged[pick],
        finished=res.finished[pick],
        info={
            **res.info,
            "init": init,
            "n_init": n_init,
            "restart_seeds": seeds,
            "best_restart": best.cpu().tolist(),
            "restart_final_nll": final.cpu().tolist(),
        },
    )


def _put(dst: torch.Tensor | None, rows: torch.Tensor, src: torch.Tensor | None) -> None:
    """``dst[rows] = src`` unless ``src`` is ``dst`` itself (nothing to write back)."""
    if dst is None or src is None or src is dst:
        return
    dst[rows] = src


def _smooth_log_pi(
    batch: Any, rows: torch.Tensor, pi: torch.Tensor, beta: float, dtype: torch.dtype
) -> torch.Tensor:
    """log of ``(1 - beta) Pi + beta * mean of the ROI neighbours' Pi`` (renormalised)."""
    nb = _neighbour_sum(batch, rows, pi)
    ones = batch.valid[rows].to(pi.dtype).unsqueeze(1)
    cnt = _neighbour_sum(batch, rows, ones).clamp_min(1.0)
    mixed = (1.0 - beta) * pi + beta * nb / cnt
    mixed = mixed / mixed.sum(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    return torch.log(mixed.clamp_min(torch.finfo(dtype).tiny))
