"""The EM driver: set up a fit, run the loop over iterations, collect the result.

:func:`fit_em` validates the options, builds the :class:`Problem` (features, floor,
E-step kernel) and the start (:mod:`~napari_gmmseg.em.init`, explicit parameters, or
the restarts of :mod:`~napari_gmmseg.em.restarts`), and :func:`run_em` iterates:

1. E-step over the rows still running (:class:`~napari_gmmseg.em.estep.EStep`),
   with the spatial prior's neighbour term (:mod:`~napari_gmmseg.em.spatial`);
2. M-step from the statistics (:mod:`~napari_gmmseg.em.mstep`), frozen for rows
   that stopped (on-device masks: the same result as checking every iteration);
3. every ``check_every`` iterations: progress, early exit, and the working set
   shrinks to the rows still running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_gmmseg.em.estep import EStep, features
from napari_gmmseg.em.init import initial_parameters
from napari_gmmseg.em.mstep import m_step_from_stats, row_stats
from napari_gmmseg.em.result import MixtureResult
from napari_gmmseg.em.spatial import neighbour_sum, smooth_log_pi
from napari_gmmseg.errors import ModelError, RoiError
from napari_gmmseg.fit import Progress, RowUpdate
from napari_gmmseg.methods import COVARIANCE_TYPES, INITS, check_choice

__all__ = ["Problem", "fit_em", "run_em"]

ProgressFn = Callable[[Progress], Any] | None
StopFn = Callable[[], bool] | None


@dataclass
class Problem:
    """What stays fixed during one fit: the data, the floor, the options, the kernel."""

    batch: Any
    spatially_variant: bool
    k: int
    covariance_type: str
    tol: float
    reg_mode: str
    spatial: str
    beta: float
    dtype: torch.dtype
    check_every: int
    estep: EStep
    x: torch.Tensor  # (S, N, M) pixels in the working dtype
    valid_f: torch.Tensor  # (S, N)
    n: torch.Tensor  # (S,) float64 valid pixels
    reg: torch.Tensor  # (S, 1, M) float64 covariance floor
    feat: torch.Tensor  # (S, D, N) E-step features

    @property
    def s(self) -> int:
        return int(self.x.shape[0])

    def select(self, rows: torch.Tensor) -> dict[str, Any]:
        """Features, pixel counts and floor of ``rows``."""
        if rows.numel() == self.s:
            return {"f": self.feat, "n": self.n, "reg": self.reg}
        return {"f": self.feat[rows], "n": self.n[rows], "reg": self.reg[rows]}

    def neighbours(self, rows: torch.Tensor, resp: torch.Tensor | None) -> torch.Tensor | None:
        """The Potts mean-field term ``beta * sum of the 8 neighbours' resp`` (MRF only)."""
        if self.spatial != "mrf":
            return None
        return self.beta * neighbour_sum(self.batch, rows, resp)


def covariance_floor(
    x: torch.Tensor, valid_f: torch.Tensor, reg_covar: float, relative: bool
) -> torch.Tensor:
    """``(S, 1, M)`` float64 floor: ``reg_covar`` (times each row's data variance if relative)."""
    if not relative:  # no pass over the pixels for a constant floor
        s, _, m = x.shape
        return torch.full((s, 1, m), float(reg_covar), dtype=torch.float64, device=x.device)
    _, data_var = row_stats(x, valid_f)
    floor = torch.where(data_var > 0, data_var, torch.ones_like(data_var)) * reg_covar
    return floor.unsqueeze(1)


def em_info(o: dict[str, Any], init: str) -> dict[str, Any]:
    """Provenance of a fit (``MixtureResult.info``) from its options."""
    names = ("n_components", "tol", "max_iter", "reg_covar", "reg_covar_relative", "reg_mode")
    info = {"init": init, **{n: o[n] for n in names}}
    info.update(seed=o["seed"], spatial=o["spatial"], beta=o["beta"])
    info["n_components"] = int(o["n_components"])
    info["dtype"] = str(o["dtype"]).replace("torch.", "")
    return info


def make_problem(batch: Any, spatially_variant: bool, o: dict[str, Any]) -> Problem:
    """The :class:`Problem` of a batch: working-dtype pixels, floor, features, kernel."""
    k, dtype = int(o["n_components"]), o["dtype"]
    x = batch.x.to(dtype)
    n_pix = batch.valid.sum(1)
    if bool((n_pix < k).any()):
        bad = [int(z) for z in np.asarray(batch.slice_index)[(n_pix < k).cpu().numpy()]]
        raise RoiError(f"slices {bad} have fewer ROI pixels than the {k} classes")
    valid_f = batch.valid.to(dtype)
    ct = o["covariance_type"]
    return Problem(
        batch=batch,
        spatially_variant=spatially_variant,
        k=k,
        covariance_type=ct,
        tol=o["tol"],
        reg_mode=o["reg_mode"],
        spatial=o["spatial"],
        beta=o["beta"],
        dtype=dtype,
        check_every=max(int(o["check_every"]), 1),
        estep=EStep(k, x.shape[-1], ct, dtype, x.device, o["chunk_pixels"], o["estep_kernel"]),
        x=x,
        valid_f=valid_f,
        n=n_pix.to(torch.float64),
        reg=covariance_floor(x, valid_f, o["reg_covar"], o["reg_covar_relative"]),
        feat=features(x, valid_f, ct),
    )


def _check_options(spatially_variant: bool, o: dict[str, Any]) -> None:
    """Refuse bad EM options: the registry's options dataclass checks its own fields."""
    from napari_gmmseg.methods import EMOptions, GMMOptions

    if int(o["n_components"]) < 1:
        raise ModelError(f"n_components must be >= 1, got {o['n_components']}")
    check_choice("covariance_type", o["covariance_type"], COVARIANCE_TYPES)
    if o["init_params"] is None:
        check_choice("init", o["init"], INITS)
    if o["max_iter"] < 1:
        raise ModelError(f"max_iter must be >= 1, got {o['max_iter']}")
    if o["tol"] < 0:
        raise ModelError(f"tol must be >= 0, got {o['tol']}")
    names = ("reg_covar", "reg_covar_relative", "reg_mode", "spatial", "beta", "n_init")
    names += ("dtype", "check_every", "chunk_pixels", "estep_kernel")
    (EMOptions if spatially_variant else GMMOptions)(**{n: o[n] for n in names})
    if int(o["n_init"]) > 1 and (
        o["init_params"] is not None or o["init"] in ("linspace", "prior")
    ):
        what = "init_params" if o["init_params"] is not None else repr(o["init"])
        raise ModelError(
            "n_init > 1 needs a random initialisation (kmeans++, random, random_from_data), "
            f"not {what}"
        )


def explicit_parameters(
    init_params: Any, s: int, k: int, m: int, covariance_type: str, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``init_params`` as float64 ``(S, K)``, ``(S, K, M)``, ``(S, K, M[, M])`` tensors."""
    w0, mu0, cov0 = (
        torch.as_tensor(np.asarray(p) if not torch.is_tensor(p) else p) for p in init_params
    )
    w0, mu0, cov0 = (p.to(device=dev, dtype=torch.float64) for p in (w0, mu0, cov0))
    if w0.ndim == 1:
        w0, mu0, cov0 = (p.unsqueeze(0).expand(s, *p.shape).clone() for p in (w0, mu0, cov0))
    exp_cov = (s, k, m) if covariance_type == "diag" else (s, k, m, m)
    if w0.shape != (s, k) or mu0.shape != (s, k, m) or cov0.shape != exp_cov:
        raise ModelError(
            "init_params shapes do not match (S, K), (S, K, M) and the covariance type"
        )
    return w0, mu0, cov0


def fit_em(
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
    estep_kernel: str = "auto",
    progress: ProgressFn = None,
    should_stop: StopFn = None,
) -> MixtureResult:
    """One EM fit of a batch: options checked, start chosen, :func:`run_em` (or restarts)."""
    o = dict(locals())
    del o["batch"], o["spatially_variant"], o["progress"], o["should_stop"]
    if isinstance(dtype, str):
        o["dtype"] = dtype = getattr(torch, dtype)
    _check_options(spatially_variant, o)
    if int(n_init) > 1:
        from napari_gmmseg.em.restarts import fit_restarts

        return fit_restarts(batch, spatially_variant, o, progress, should_stop)
    prob = make_problem(batch, spatially_variant, o)
    s, _, m = prob.x.shape
    k = prob.k
    if init_params is not None:
        start = explicit_parameters(init_params, s, k, m, covariance_type, prob.x.device)
    else:
        start = initial_parameters(
            prob.x,
            batch.valid,
            k,
            init=init,
            covariance_type=covariance_type,
            reg=prob.reg,
            seed=seed,
            prior_means=prior_means,
            reg_mode=reg_mode,
        )
    info = em_info(o, init if init_params is None else "explicit")
    return run_em(prob, start, max_iter, info, progress, should_stop)


@dataclass
class _Rows:
    """Per-row EM state: of the whole batch, or of the rows still running (working set)."""

    rows: torch.Tensor  # (s,) batch rows held
    work: dict[str, Any]  # their features, pixel counts and floor
    w: torch.Tensor
    mu: torch.Tensor
    cov: torch.Tensor
    n_iter: torch.Tensor
    conv: torch.Tensor
    active: torch.Tensor
    prev: torch.Tensor | None  # last NLL (working set only)
    log_pi: torch.Tensor | None  # (s, K, N) log Pi (SVGMM)
    resp: torch.Tensor | None  # (s, K, N) last responsibilities (spatial prior)

    _STATE = ("w", "mu", "cov", "n_iter", "conv", "active", "log_pi", "resp")

    def write_back(self, full: _Rows) -> None:
        """Write this working set into the full-batch state (``full[rows] = self``)."""
        for name in self._STATE:
            dst, src = getattr(full, name), getattr(self, name)
            if dst is not None and src is not None and src is not dst:
                dst[self.rows] = src

    def keep(self, prob: Problem, keep: torch.Tensor) -> _Rows:
        """Only the rows ``keep`` (indices into this set)."""
        rows = self.rows[keep]
        vals = [getattr(self, n) for n in ("w", "mu", "cov", "n_iter", "conv", "active", "prev")]
        vals += [getattr(self, n) for n in ("log_pi", "resp")]
        return _Rows(rows, prob.select(rows), *(None if v is None else v[keep] for v in vals))


def _initial_state(prob: Problem, start: tuple[torch.Tensor, ...]) -> _Rows:
    """Full-batch state at the start; Pi (SVGMM) and resp (MRF) from a first E-step."""
    s, dev, k, dtype = prob.s, prob.x.device, prob.k, prob.dtype
    rows = torch.arange(s, device=dev)
    full = _Rows(
        rows,
        prob.select(rows),
        *(p.clone() for p in start),
        n_iter=torch.zeros(s, dtype=torch.int64, device=dev),
        conv=torch.zeros(s, dtype=torch.bool, device=dev),
        active=torch.ones(s, dtype=torch.bool, device=dev),
        prev=None,
        log_pi=None,
        resp=None,
    )
    use_nb = prob.spatial != "none"
    if prob.spatially_variant or use_nb:
        # Pi of the SVGMM starts from the GMM's responsibilities (as the reference code).
        full.resp = torch.empty(s, k, prob.x.shape[1], dtype=dtype, device=dev)
        prob.estep.run(full.w, full.mu, full.cov, full.work, resp_out=full.resp, want_stats=False)
        if prob.spatially_variant:
            if prob.spatial == "smooth":
                full.log_pi = smooth_log_pi(prob.batch, rows, full.resp, prob.beta, dtype)
            else:
                full.log_pi = torch.log(full.resp.clamp_min(torch.finfo(dtype).tiny))
            if not use_nb:
                full.resp = None
    return full


def _iterate(prob: Problem, ws: _Rows, it: int, hist: torch.Tensor) -> tuple[Any, Any]:
    """One EM iteration of the working set in place; returns ``(nll, updated rows)``."""
    nb = prob.neighbours(ws.rows, ws.resp)
    upd = ws.active
    nll_t, nk, sx, sxx = prob.estep.run(
        ws.w,
        ws.mu,
        ws.cov,
        ws.work,
        log_pi=ws.log_pi,
        nb=nb,
        upd=upd,
        resp_out=ws.resp if prob.spatial == "mrf" else None,
    )
    new_w, new_mu, new_cov = m_step_from_stats(
        nk, sx, sxx, ws.work["n"], prob.covariance_type, ws.work["reg"], prob.reg_mode
    )
    hist[ws.rows, it] = torch.where(upd, nll_t, torch.full_like(nll_t, float("nan")))
    ws.w = torch.where(upd.unsqueeze(-1), new_w, ws.w)
    ws.mu = torch.where(upd.view(-1, 1, 1), new_mu, ws.mu)
    ws.cov = torch.where(upd.view(-1, *([1] * (ws.cov.ndim - 1))), new_cov, ws.cov)
    if ws.log_pi is not None and prob.spatial == "smooth":
        smoothed = smooth_log_pi(prob.batch, ws.rows, torch.exp(ws.log_pi), prob.beta, prob.dtype)
        ws.log_pi = torch.where(upd.view(-1, 1, 1), smoothed, ws.log_pi)
    ws.n_iter = torch.where(upd, torch.full_like(ws.n_iter, it + 1), ws.n_iter)
    # prev is NaN on the first iteration and tol = 0 never stops: both compare False.
    done = upd & ((nll_t - ws.prev).abs() < prob.tol)
    ws.conv = ws.conv | done
    ws.active = upd & ~done
    ws.prev = torch.where(upd, nll_t, ws.prev)
    return nll_t, upd


def _new_rows(prob: Problem, ws: _Rows, fin_np: np.ndarray, reported: np.ndarray) -> Any:
    """Final soft maps of the rows finished since the last report (still in ``ws``)."""
    if not (fin_np & ~reported).any():
        return None
    dev, k = prob.x.device, prob.k
    rows_np = ws.rows.cpu().numpy()
    sub_np = np.nonzero(fin_np[rows_np] & ~reported[rows_np])[0]
    sub = torch.as_tensor(sub_np, device=dev)
    if ws.log_pi is not None:
        soft_new = torch.exp(ws.log_pi[sub]) * prob.valid_f[ws.rows[sub]].unsqueeze(1)
    else:
        nb = None if ws.resp is None else prob.neighbours(ws.rows[sub], ws.resp[sub])
        soft_new = torch.empty(sub.numel(), k, prob.x.shape[1], dtype=prob.dtype, device=dev)
        work = prob.select(ws.rows[sub])
        prob.estep.run(
            ws.w[sub], ws.mu[sub], ws.cov[sub], work, nb=nb, resp_out=soft_new, want_stats=False
        )
    reported[rows_np[sub_np]] = True
    return RowUpdate(
        rows=rows_np[sub_np],
        responsibilities=soft_new.transpose(1, 2).cpu(),
        means=ws.mu[sub].to(prob.dtype).cpu(),
    )


def _report(
    prob: Problem, ws: _Rows, it: int, last: bool, n_active: int, nll_t: Any, upd: Any,
    reported: np.ndarray, progress: Callable[[Progress], Any],
) -> None:  # fmt: skip
    """Tell ``progress`` how many slices are done, with the soft maps of new ones."""
    fin_mask = torch.ones(prob.s, dtype=torch.bool, device=prob.x.device)
    if not last:
        fin_mask[ws.rows[ws.active]] = False
    fin_np = fin_mask.cpu().numpy()
    still = nll_t[ws.active] if n_active else nll_t[upd]
    progress(
        Progress(
            slices_done=prob.s - n_active,
            slices_total=prob.s,
            iteration=it + 1,
            nll=float(still.mean()) if still.numel() else float("nan"),
            finished=np.asarray(prob.batch.slice_index)[fin_np],
            new_rows=_new_rows(prob, ws, fin_np, reported),
        )
    )


def run_em(
    prob: Problem,
    start: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    max_iter: int,
    info: dict[str, Any],
    progress: ProgressFn = None,
    should_stop: StopFn = None,
) -> MixtureResult:
    """The EM loop from ``start`` = (weights, means, covariances), every row at once."""
    dev = prob.x.device
    full = _initial_state(prob, start)
    hist = torch.full((prob.s, max_iter), float("nan"), dtype=torch.float64, device=dev)
    ws = _Rows(**{**full.__dict__, "active": full.active.clone()})
    ws.prev = torch.full((prob.s,), float("nan"), dtype=torch.float64, device=dev)
    reported = np.zeros(prob.s, dtype=bool)  # rows whose final state went to ``progress``
    stopped, iterations_run = False, 0
    for it in range(max_iter):
        if should_stop is not None and should_stop():
            stopped = True
            break
        nll_t, upd = _iterate(prob, ws, it, hist)
        iterations_run = it + 1
        last = it == max_iter - 1
        if (it + 1) % prob.check_every and not last:
            continue
        n_active = 0 if last else int(ws.active.sum())
        if progress is not None:
            _report(prob, ws, it, last, n_active, nll_t, upd, reported, progress)
        if n_active == 0:
            ws.active = torch.zeros_like(ws.active)
            break
        if n_active <= 0.5 * ws.rows.numel():
            ws.write_back(full)
            ws = ws.keep(prob, ws.active.nonzero().squeeze(1))
    ws.write_back(full)
    finished = ~full.active if stopped else torch.ones(prob.s, dtype=torch.bool, device=dev)
    info = {**info, "device": str(dev), "iterations_run": iterations_run, "stopped": stopped}
    return _result(prob, full, hist, finished, info)


def _result(
    prob: Problem, full: _Rows, hist: torch.Tensor, finished: torch.Tensor, info: dict[str, Any]
) -> MixtureResult:
    """Final soft maps with the final parameters, as a :class:`MixtureResult`."""
    weights, dtype = full.w, prob.dtype
    if prob.spatially_variant:
        soft = torch.exp(full.log_pi).mul_(prob.valid_f.unsqueeze(1))
        weights = soft.sum(2, dtype=torch.float64) / prob.n.unsqueeze(-1)
    else:
        nb = prob.neighbours(full.rows, full.resp)
        soft = torch.empty(prob.s, prob.k, prob.x.shape[1], dtype=dtype, device=prob.x.device)
        prob.estep.run(full.w, full.mu, full.cov, full.work, nb=nb, resp_out=soft, want_stats=False)
    return MixtureResult(
        responsibilities=soft.transpose(1, 2),
        weights=weights.to(dtype),
        means=full.mu.to(dtype),
        covariances=full.cov.to(dtype),
        nll_history=hist[:, : max(int(full.n_iter.max()), 1)],
        n_iter=full.n_iter,
        converged=full.conv,
        finished=finished,
        method="svgmm" if prob.spatially_variant else "gmm",
        covariance_type=prob.covariance_type,
        info=info,
    )
