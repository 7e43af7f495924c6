"""Restarts (``n_init``): seeded starts fitted as one batch, the lowest NLL kept per slice.

A wrapper around :func:`~napari_gmmseg.em.driver.run_em`, no recursion: one seeded
initialisation per restart (each batched over the rows), the rows repeated
restart-major, one EM over all of them, then per slice the finished restart with
the lowest final NLL. Restart 0 uses the seed itself, so restarts can only lower it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from napari_gmmseg.em.result import MixtureResult
from napari_gmmseg.fit import Progress

__all__ = ["best_restart", "fit_restarts", "repeat_rows", "restart_seeds"]


def fit_restarts(
    batch: Any,
    spatially_variant: bool,
    o: dict[str, Any],
    progress: Callable[[Progress], Any] | None,
    should_stop: Callable[[], bool] | None,
) -> MixtureResult:
    """``o["n_init"]`` seeded restarts of the EM on every row of ``batch``, best kept."""
    from napari_gmmseg.em.driver import (
        covariance_floor,
        em_info,
        explicit_parameters,
        make_problem,
        run_em,
    )
    from napari_gmmseg.em.init import initial_parameters

    n_init, k = int(o["n_init"]), int(o["n_components"])
    x = batch.x.to(o["dtype"])
    reg = covariance_floor(x, batch.valid.to(o["dtype"]), o["reg_covar"], o["reg_covar_relative"])
    seeds = restart_seeds(o["seed"], n_init)
    inits = [
        initial_parameters(
            x,
            batch.valid,
            k,
            init=o["init"],
            covariance_type=o["covariance_type"],
            reg=reg,
            seed=r_seed,
            reg_mode=o["reg_mode"],
        )
        for r_seed in seeds
    ]
    prob = make_problem(repeat_rows(batch, n_init), spatially_variant, o)
    s, _, m = prob.x.shape
    start = explicit_parameters(
        tuple(torch.cat(parts) for parts in zip(*inits, strict=True)),
        s,
        k,
        m,
        o["covariance_type"],
        prob.x.device,
    )
    relay = None if progress is None else RestartProgress(progress, batch, n_init)
    res = run_em(prob, start, o["max_iter"], em_info(o, "explicit"), relay, should_stop)
    return best_restart(res, n_init, seeds, o["init"])


def restart_seeds(seed: int, n_init: int) -> list[int]:
    """Seeds of the ``n_init`` restarts: ``seed`` itself first, then derived ones.

    Restart 0 is therefore exactly the single fit with ``seed``, so restarts can only
    lower each slice's final NLL. The others come from ``numpy.random.SeedSequence``.
    """
    derived = np.random.SeedSequence(int(seed)).spawn(max(int(n_init) - 1, 0))
    return [int(seed)] + [int(d.generate_state(1, dtype=np.uint32)[0]) for d in derived]


def repeat_rows(batch: Any, n: int) -> Any:
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


class RestartProgress:
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


def best_restart(res: MixtureResult, n_init: int, seeds: list[int], init: str) -> MixtureResult:
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
