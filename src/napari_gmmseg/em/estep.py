"""The E-step: log joint of every pixel and component, tile by tile, and the statistics.

One pass over the pixels computes the NLL, the responsibilities (optionally written
out) and the sufficient statistics of the next M-step, in cache-sized tiles on the
CPU. The features ``F = [x, x**2 (diag) or x x^T (full), valid]`` ``(S, D, N)`` are
built once per fit (:func:`features`); every tile is a strided view of them and the
log joint and the statistics are one batched product each, or, on the CPU in float32,
the whole tile is one compiled loop (:mod:`napari_gmmseg.em.fused`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from napari_gmmseg._threads import cpu_threads
from napari_gmmseg.gaussian import precision_cholesky

__all__ = ["EStep", "features"]

_LOG_2PI = math.log(2.0 * math.pi)


def features(x: torch.Tensor, valid_f: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """``(S, D, N)`` rows ``[x, x**2 or x_i x_j (i <= j), valid]`` of pixels ``(S, N, M)``.

    ``full`` keeps the ``M (M + 1) / 2`` distinct products only (the upper triangle of
    ``x x^T``, row-major): 6 rows instead of 9 for three channels.
    """
    s, n, m = x.shape
    rows_i, rows_j = _second_moment_rows(m, covariance_type)
    feat = torch.empty(s, m + rows_i.numel() + 1, n, dtype=x.dtype, device=x.device)
    xt = feat[:, :m]
    xt.copy_(x.transpose(1, 2))
    if covariance_type == "diag":
        torch.mul(xt, xt, out=feat[:, m : 2 * m])
    else:
        torch.mul(xt[:, rows_i], xt[:, rows_j], out=feat[:, m:-1])
    feat[:, -1] = valid_f
    return feat


def _second_moment_rows(m: int, covariance_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel pairs ``(i, j)`` of the second-moment feature rows: ``i == j`` for diag,
    ``i <= j`` (row-major upper triangle) for full."""
    if covariance_type == "diag":
        idx = torch.arange(m)
        return idx, idx
    return tuple(torch.triu_indices(m, m))  # type: ignore[return-value]


def _full_from_triangle(sxx_tri: torch.Tensor, m: int) -> torch.Tensor:
    """``(..., M*M)`` symmetric second moments from their upper triangle ``(..., M(M+1)/2)``."""
    i, j = torch.triu_indices(m, m)
    pos = torch.empty(m, m, dtype=torch.long)
    pos[i, j] = torch.arange(i.numel())
    pos[j, i] = pos[i, j]
    return sxx_tri[..., pos.flatten().to(sxx_tri.device)]


class EStep:
    """The E-step kernel of one fit: K components, M channels, a covariance type.

    Parameters
    ----------
    k, m : int
        Components and channels.
    covariance_type : {"diag", "full"}
    dtype : torch.dtype
        Working precision of the per-pixel arithmetic (statistics in float64).
    device : torch.device
    chunk_pixels : int, optional
        Pixels per tile (default 65536 on the CPU, everything at once on CUDA).
    kernel : {"auto", "fused", "torch"}
        How a tile is computed: ``fused``, one compiled loop that reads each pixel once
        (:mod:`napari_gmmseg.em.fused`; CPU, float32, not with the Potts term); ``torch``,
        batched torch operations; ``auto``, ``fused`` where it applies and numba is
        installed, else ``torch``.
    """

    def __init__(
        self,
        k: int,
        m: int,
        covariance_type: str,
        dtype: torch.dtype,
        device: torch.device,
        chunk_pixels: int | None = None,
        kernel: str = "auto",
    ) -> None:
        self.k, self.m, self.covariance_type = k, m, covariance_type
        self.dtype, self.device = dtype, device
        if chunk_pixels is None:
            chunk_pixels = 1 << 16 if device.type == "cpu" else 1 << 62
        self.chunk_pixels = chunk_pixels
        # CPU: shift by a per-row bound instead of a per-pixel max (one check per tile,
        # free on the host); CUDA: the exact per-pixel max, no host synchronisation.
        self.fast_shift = device.type == "cpu"
        self.exp_floor = -87.0 if dtype == torch.float32 else -700.0
        # CPU: the tiles are shared among torch's thread count of the fit (see run).
        self.workers = torch.get_num_threads() if device.type == "cpu" else 1
        self.fused = _use_fused(kernel, dtype, device)

    def terms(
        self, w: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor, with_log_w: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Per-iteration coefficients of the log joint minus a per-row upper bound.

        ``diag``: ``C`` ``(S, K, 2M+1)`` with ``log p(x, k) - U = C_k . [x, x**2, 1]``.
        ``full``: ``G`` ``(S, K*M, M+1)`` (``U^T`` and ``-U^T mu``) and the constant
        ``(S, K, 1)``, ``log p(x, k) - U = -0.5 |G_k [x, 1]|^2 + const_k``.
        ``U`` ``(S, 1, 1)`` is ``max_k`` of the log joint at ``x = mu_k`` (Mahalanobis 0),
        an upper bound of the log joint over all pixels (``log Pi <= 0`` keeps it one for
        SV models), so ``exp`` of the shifted values cannot overflow.
        """
        k, m, dtype, covariance_type = self.k, self.m, self.dtype, self.covariance_type
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

    def tile(self, coef: torch.Tensor, const: torch.Tensor | None, f: torch.Tensor) -> torch.Tensor:
        """``(s, K, c)`` log joint (or log density) for tile features ``f`` ``(s, D, c)``."""
        k, m = self.k, self.m
        if self.covariance_type == "diag":
            return torch.bmm(coef, f)
        # [x, 1] rows: x and the valid flag (1 on real pixels).
        xv = torch.cat([f[:, :m], f[:, -1:]], dim=1)
        y = torch.bmm(coef, xv)  # (s, K*M, c)
        sb, _, c = y.shape
        maha = y.square_().view(sb, k, m, c).sum(2)
        return maha.mul_(-0.5).add_(const)

    def run(
        self,
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

        With ``workers > 1`` the tiles are handed out one at a time to that many
        threads, each running the fused kernel or single-threaded torch ops: no parallel
        region (and no barrier that waits for a descheduled thread on a busy machine) per
        op. Each tile's NLL and statistics are added in tile order afterwards, so the
        result is bit for bit the same for any number of workers.
        """
        coef, const, bound = self.terms(w, mu, cov, with_log_w=log_pi is None)
        feat = wk["f"]
        sw, _, n = feat.shape
        cols = max(1, min(n, int(self.chunk_pixels)))
        row_step = max(1, int(self.chunk_pixels) // cols)
        tiles = [
            (s0, min(sw, s0 + row_step), n0, min(n, n0 + cols))
            for s0 in range(0, sw, row_step)
            for n0 in range(0, n, cols)
        ]
        args = (coef, const, bound, feat, log_pi, nb, upd, resp_out, want_stats)
        fused_tile = None
        if self.fused and nb is None:
            fused_tile = self._fused_tiles(
                coef, const, bound, feat, log_pi, upd, resp_out, want_stats
            )
        parts: list[Any] = [None] * len(tiles)

        # Tiles are handed out one at a time (a worker on a slower core takes fewer);
        # each tile's result has its own slot, summed in tile order below.
        next_tile = itertools.count()

        def work() -> None:
            # The tile is exponentiated in place unless the log joint is read after the
            # pass (the SVGMM M-step for Pi, the Potts term): then into one buffer.
            buf = None
            if fused_tile is None and (upd is not None or nb is not None):
                size = min(sw, row_step) * self.k * cols  # the largest tile (one on CUDA)
                buf = torch.empty(size, dtype=self.dtype, device=self.device)
            for i in next_tile:
                if i >= len(tiles):
                    return
                if fused_tile is not None:
                    parts[i] = fused_tile(tiles[i])
                else:
                    parts[i] = self._pass_tile(tiles[i], buf, *args)

        workers = min(self.workers, len(tiles))
        if workers > 1:
            # torch's intra-op threads off while the workers run torch ops (the fused
            # kernel runs none: switching them costs more than it saves)
            with cpu_threads(1 if fused_tile is None else None):
                futures = [_pool(workers).submit(work) for _ in range(workers)]
                for f in futures:
                    f.result()
        else:
            work()
        ll, stats_t = self._sum_tiles(tiles, parts, sw, feat.shape[1], fused_tile is not None)
        m = self.m
        stats = stats_t.transpose(1, 2)
        nk = stats[:, :, -1]
        sx = stats[:, :, :m]
        sxx = stats[:, :, m:-1]
        if self.covariance_type == "full":
            sxx = _full_from_triangle(sxx, m)
        return -ll / wk["n"], nk, sx, sxx

    def _sum_tiles(
        self,
        tiles: list[tuple[int, int, int, int]],
        parts: list[Any],
        sw: int,
        width: int,
        as_numpy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each tile's float64 NLL ``(s,)`` and statistics ``(s, D, K)`` added in tile
        order: ``(S,)`` and ``(S, D, K)`` (NumPy sums for the fused kernel's NumPy parts:
        a tenth of the cost of a torch operation per tile)."""
        if as_numpy:
            ll, stats_t = np.zeros(sw), np.zeros((sw, width, self.k))
        else:
            ll = torch.zeros(sw, dtype=torch.float64, device=self.device)
            stats_t = torch.zeros(sw, width, self.k, dtype=torch.float64, device=self.device)
        for (s0, s1, _, _), (ll_part, stats_part) in zip(tiles, parts, strict=True):
            ll[s0:s1] += ll_part
            if stats_part is not None:
                stats_t[s0:s1] += stats_part
        if as_numpy:
            return torch.from_numpy(ll), torch.from_numpy(stats_t)
        return ll, stats_t

    def _pass_tile(
        self,
        tile: tuple[int, int, int, int],
        buf: torch.Tensor | None,
        coef: torch.Tensor,
        const: torch.Tensor | None,
        bound: torch.Tensor,
        feat: torch.Tensor,
        log_pi: torch.Tensor | None,
        nb: torch.Tensor | None,
        upd: torch.Tensor | None,
        resp_out: torch.Tensor | None,
        want_stats: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """E-step of one tile (rows ``s0:s1``, pixels ``n0:n1``).

        Returns the tile's float64 log-likelihood per row ``(s,)`` and statistics
        ``(s, D, K)`` (None without ``want_stats``); writes ``log_pi``/``resp_out``.
        """
        s0, s1, n0, n1 = tile
        exp_floor = self.exp_floor
        f = feat[s0:s1, :, n0:n1]
        vc = f[:, -1:]
        coef_b, bound_b = coef[s0:s1], bound[s0:s1]
        const_b = None if const is None else const[s0:s1]

        def log_joint() -> torch.Tensor:
            a = self.tile(coef_b, const_b, f)
            if log_pi is not None:
                a += log_pi[s0:s1, :, n0:n1]
            return a

        a = log_joint()
        buf = a if buf is None else buf[: a.numel()].view(a.shape)
        # a row of ones sums over components as one small product (half the time of
        # ``sum(1)`` on a CPU)
        ones = torch.ones(s1 - s0, 1, self.k, dtype=a.dtype, device=a.device)
        e = None
        if nb is not None:
            # Mean-field Potts: the NLL is the plain mixture's, resp has the prior.
            amax = a.amax(1, keepdim=True)
            e = torch.sub(a, amax, out=buf).exp_()
            lse = torch.log(torch.bmm(ones, e)) + amax + bound_b
            a += nb[s0:s1, :, n0:n1]
            e = None
        elif self.fast_shift:
            # a <= 0 (shifted by the bound): exp cannot overflow, and no per-pixel max is
            # needed unless every component underflows (far outliers). Clamped first: exp
            # of arguments far below the float range takes a slow path (measured 3x on
            # phantom crops); e^-87 is ~0 next to the largest term, and a pixel whose
            # terms are all that small takes the exact path below.
            e = torch.clamp_min(a, exp_floor, out=buf).exp_()
            ssum = torch.bmm(ones, e)
            if float(ssum.amin()) < 1e-30:
                e = None
                if buf is a:  # the log joint was overwritten: compute it again
                    a = buf = log_joint()
            else:
                amax = None
        if e is None:
            amax = a.amax(1, keepdim=True)
            e = torch.sub(a, amax, out=buf).clamp_min_(exp_floor).exp_()
            ssum = torch.bmm(ones, e)
        log_ssum = torch.log(ssum)
        if nb is None:
            lse = log_ssum + bound_b if amax is None else log_ssum + amax + bound_b
        ll_part = torch.bmm(lse, vc.transpose(1, 2)).view(-1).to(torch.float64)
        if log_pi is not None and upd is not None:
            log_r = a.sub_(log_ssum) if amax is None else a.sub_(amax).sub_(log_ssum)
            tgt = log_pi[s0:s1, :, n0:n1]
            keep = ~upd[s0:s1].view(-1, 1, 1)
            tgt.copy_(torch.where(keep, tgt, log_r))
        # Padding pixels have zero features: r needs no mask for the statistics.
        r = e.mul_(ssum.reciprocal_())
        stats_part = None
        if want_stats:
            # (D, c) @ (c, K): the long axis as the inner dimension of a plain product is
            # faster than (K, c) @ (c, D) with a transposed operand.
            stats_part = torch.bmm(f, r.transpose(1, 2)).to(torch.float64)
        if resp_out is not None:
            r = r.mul_(vc)
            tgt = resp_out[s0:s1, :, n0:n1]
            if upd is not None:
                r = torch.where(~upd[s0:s1].view(-1, 1, 1), tgt, r)
            tgt.copy_(r)
        return ll_part, stats_part

    def _fused_tiles(
        self,
        coef: torch.Tensor,
        const: torch.Tensor | None,
        bound: torch.Tensor,
        feat: torch.Tensor,
        log_pi: torch.Tensor | None,
        upd: torch.Tensor | None,
        resp_out: torch.Tensor | None,
        want_stats: bool,
    ) -> Callable[[tuple[int, int, int, int]], tuple[np.ndarray, np.ndarray | None]]:
        """The fused kernel on the pass's arrays (NumPy views of the tensors): a function of
        a tile returning its float64 NLL per row and statistics ``(s, D, K)`` (or None)."""
        from napari_gmmseg.em import fused

        sw = feat.shape[0]
        dummy = np.zeros((1, 1, 1), dtype=np.float32)
        for name, t in (("features", feat), ("log_pi", log_pi), ("resp_out", resp_out)):
            if t is not None and not t.is_contiguous():
                raise ValueError(f"the fused E-step needs contiguous {name}")  # a bug
        fn = fused.kernel(self.k, self.m, self.covariance_type, log_pi is not None)
        f = feat.numpy()
        coef_np = coef.contiguous().numpy()
        const_np = dummy if const is None else const.contiguous().numpy()
        bound_np = bound.reshape(sw).contiguous().numpy()
        log_pi_np = dummy if log_pi is None else log_pi.numpy()
        upd_np = np.ones(sw, dtype=np.bool_) if upd is None else upd.cpu().numpy()
        resp_np = dummy if resp_out is None else resp_out.numpy()
        write_log_r, write_resp = log_pi is not None and upd is not None, resp_out is not None

        def run_tile(tile: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
            s0, s1, n0, n1 = tile
            ll, st = fn(f, coef_np, const_np, bound_np, s0, s1, n0, n1, log_pi_np, upd_np,
                        resp_np, want_stats, write_log_r, write_resp)  # fmt: skip
            return ll, st if want_stats else None

        return run_tile


def prefetch_fused(
    k: int, m: int, covariance_type: str, options: Any, device: torch.device, svgmm: bool
) -> None:
    """Start loading the fused kernel a fit with these EM ``options`` will use (see
    :func:`napari_gmmseg.em.fused.prefetch`); nothing when it will use the torch E-step
    or the options are not the engine's (a registered method of its own)."""
    from napari_gmmseg.em import fused

    if not hasattr(options, "estep_kernel"):
        return
    dtype = getattr(torch, str(options.dtype).replace("torch.", ""))
    if options.spatial != "mrf" and _use_fused(options.estep_kernel, dtype, device):
        fused.prefetch(k, m, covariance_type, svgmm)


def _use_fused(kernel: str, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether tiles run the fused kernel (see :class:`EStep`)."""
    from napari_gmmseg.em import fused
    from napari_gmmseg.errors import ModelError
    from napari_gmmseg.methods import ESTEP_KERNELS, check_choice

    check_choice("estep_kernel", kernel, ESTEP_KERNELS)
    applies = device.type == "cpu" and dtype == torch.float32
    if kernel == "fused" and not (applies and fused.available()):
        raise ModelError(
            "estep_kernel='fused' needs numba (pip install 'napari-gmmseg[numba]'), the CPU "
            "and float32"
        )
    return kernel == "fused" or (kernel == "auto" and applies and fused.available())


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's E-step thread pool of ``workers`` threads (denormals flushed)."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(
            workers, thread_name_prefix="gmmseg-estep", initializer=_flush_denormals
        )
    return _POOLS[workers]


def _flush_denormals() -> None:
    # Per thread (the CPU's control register), as the driver does for its own thread.
    torch.set_flush_denormal(True)
