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

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from napari_gmmseg._threads import cpu_threads
from napari_gmmseg.em.driver import fit_em
from napari_gmmseg.em.init import initial_parameters
from napari_gmmseg.em.restarts import restart_seeds
from napari_gmmseg.em.result import MixtureResult
from napari_gmmseg.methods import INITS, REG_MODES, SPATIAL

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
        setting otherwise. The E-step shares its tiles among that many threads, each
        running single-threaded ops (:meth:`napari_gmmseg.em.estep.EStep.run`): the
        same result bit for bit for any thread count.
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


@contextmanager
def cpu_fit_settings(n: int | None, cpu: bool) -> Iterator[None]:
    """During a CPU fit: torch's intra-op thread count, and denormals flushed to zero.

    Far pixels give responsibilities below 1e-38 (denormal float32), which make
    ``exp`` and the products markedly slower (measured 14 % of the fit on phantom
    crops); they carry no weight, so they are flushed. Both are restored on exit
    (flushing is off by default in torch); the threads by :func:`cpu_threads`.
    """
    with cpu_threads(n):
        flushed = bool(torch.set_flush_denormal(True)) if cpu else False
        try:
            yield
        finally:
            if flushed:
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
    with cpu_fit_settings(num_threads, batch.x.device.type == "cpu"):
        return fit_em(batch, **kwargs)
