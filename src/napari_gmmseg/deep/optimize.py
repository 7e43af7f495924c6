"""Algorithm 3: a fresh U-Net per slice, all slices of a volume optimised in one batched run.

Every slice ``s`` gets its own network (seeded from ``(seed, z)``), and the
networks are stacked (:class:`~napari_gmmseg.deep.networks.StackedNetworks`) so
one forward/backward pass updates all of them. Each epoch:

1. ``w = softmax(phi_theta(I))`` on the crop, gathered at the ROI pixels;
2. closed-form M-step and NLL (deepG) / NLL_V (deepSVG) (+ the mean penalty of
   deepSVG_mu), :func:`napari_gmmseg.deep.losses.mixture_loss`;
3. a slice whose NLL changed by less than ``tol`` after ``min_epochs`` epochs (or
   that reached ``max_epochs``) is finished: its ``w`` and M-step parameters of this
   epoch are kept and it is frozen (no further updates, dropped from the batch);
4. one AdamW step per network (decoupled weight decay, gradient clipping at
   ``clip_norm`` *per network*), vectorised over the stacked parameters.

The optimiser is the textbook AdamW (same update as :class:`torch.optim.AdamW`) on
stacked tensors so that finished slices can be frozen and dropped cheaply.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_gmmseg._threads import cpu_threads
from napari_gmmseg.errors import ModelError

__all__ = [
    "DeepState",
    "StackedAdamW",
    "cpu_threads",
    "default_cpu_threads",
    "optimize_slices",
    "slice_seeds",
]


def slice_seeds(seed: int, slice_index: Sequence[int]) -> list[int]:
    """Initialisation seed of the network of each slice: a function of ``(seed, z)`` only.

    So a slice gets the same network whether it is fitted alone or with its volume.
    """
    out = []
    for z in slice_index:
        ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(z) + 1])
        out.append(int(ss.generate_state(1, dtype=np.uint32)[0]))
    return out


class StackedAdamW:
    """AdamW on stacked per-network parameters ``(S, ...)`` with a per-network freeze mask.

    The update is exactly :class:`torch.optim.AdamW`'s (decoupled weight decay,
    bias-corrected moments), applied to every network of the stack at once. All
    parameters live in one flat ``(S, P)`` buffer (the tensors of ``params`` are
    replaced, in the same dictionary, by leaf views into it), so a step is a handful
    of whole-buffer operations instead of several per parameter tensor: on a 2-core
    CPU the per-tensor loop cost more than the arithmetic.

    Parameters
    ----------
    params : dict of str to torch.Tensor
        Stacked leaf parameters; the dictionary's values are replaced by views into
        the flat buffer and updated in place by :meth:`step`.
    lr, weight_decay : float
        Learning rate and decoupled weight decay.
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    """

    def __init__(
        self,
        params: dict,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        import torch

        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.keys = list(params)
        self.shapes = [tuple(params[k].shape[1:]) for k in self.keys]
        with torch.no_grad():
            self.flat = torch.cat(
                [params[k].detach().reshape(params[k].shape[0], -1) for k in self.keys], 1
            )
        self.params = params
        self._rebind()
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self.step_count = 0

    def _rebind(self) -> None:
        """Point ``self.params[k]`` at leaf views of the flat buffer (same dict object)."""
        import torch

        n = self.flat.shape[0]
        offset = 0
        with torch.no_grad():
            for k, shape in zip(self.keys, self.shapes, strict=True):
                size = math.prod(shape)
                view = self.flat[:, offset : offset + size].view(n, *shape)
                self.params[k] = view.requires_grad_(True)
                offset += size

    def flatten(self, grads: dict | Sequence) -> Any:
        """``(S, P)`` gradient buffer from per-parameter gradients (dict or list in key order)."""
        import torch

        gs = [grads[k] for k in self.keys] if isinstance(grads, dict) else list(grads)
        return torch.cat([g.reshape(g.shape[0], -1) for g in gs], 1)

    def step(self, grads: Any, active: Any | None = None, max_norm: float | None = None) -> Any:
        """One AdamW step; networks with ``active[s]`` False keep their parameters.

        Parameters
        ----------
        grads : dict, list or torch.Tensor
            Per-parameter gradients (dict by name or list in key order) or the flat
            ``(S, P)`` buffer from :meth:`flatten`.
        active : torch.Tensor, optional
            ``(S,)`` bool; False freezes that network.
        max_norm : float, optional
            Clip each network's gradient to this total 2-norm first (as
            :func:`clip_per_network`).

        Returns
        -------
        torch.Tensor
            ``(S,)`` gradient norms before clipping.
        """
        import torch

        with torch.no_grad():
            g = grads if isinstance(grads, torch.Tensor) else self.flatten(grads)
            norms = g.pow(2).sum(1).sqrt()
            if max_norm is not None and max_norm > 0:
                coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
                g = g * coef.unsqueeze(1)
            self.step_count += 1
            b1, b2 = self.betas
            bc1 = 1.0 - b1**self.step_count
            bc2_sqrt = math.sqrt(1.0 - b2**self.step_count)
            step_size = self.lr / bc1
            m, v, p = self.exp_avg, self.exp_avg_sq, self.flat
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            decay = 1.0 - self.lr * self.weight_decay
            # The arithmetic of torch.optim.AdamW; in place when no network is frozen
            # (checked on the CPU only: off the CPU it would be a host sync per epoch).
            if active is None or (p.device.type == "cpu" and bool(active.all())):
                p.mul_(decay).addcdiv_(m, denom, value=-step_size)
            else:
                new = p.mul(decay).addcdiv_(m, denom, value=-step_size)
                p.copy_(torch.where(active.view(-1, 1), new, p))
        return norms

    def keep(self, index: Any) -> dict:
        """Drop every network not in ``index`` (1-D long tensor); returns the new params."""
        self.flat = self.flat[index]
        self.exp_avg = self.exp_avg[index]
        self.exp_avg_sq = self.exp_avg_sq[index]
        self._rebind()
        return self.params


def clip_per_network(grads: dict, max_norm: float) -> Any:
    """Scale each network's gradients so its total 2-norm is at most ``max_norm``.

    Same rule as :func:`torch.nn.utils.clip_grad_norm_`, applied per network of the
    stack. Returns the ``(S,)`` norms before clipping.
    """
    import torch

    sq = None
    for g in grads.values():
        part = g.detach().reshape(g.shape[0], -1).pow(2).sum(1)
        sq = part if sq is None else sq + part
    norms = sq.sqrt()
    if max_norm is not None and max_norm > 0:
        coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
        for g in grads.values():
            g.mul_(coef.view(-1, *([1] * (g.ndim - 1))))
    return norms


@dataclass
class DeepState:
    """Result of :func:`optimize_slices` (tensors on the fitting device, packed order).

    Attributes
    ----------
    resp : torch.Tensor
        ``(S, N, K)`` network softmax at the packed pixels.
    weights, means, covariances : torch.Tensor
        ``(S, K)``, ``(S, K, M)``, ``(S, K, M)`` from the final M-step.
    nll_history : torch.Tensor
        ``(S, T)`` NLL / NLL_V per epoch, NaN after a slice finished.
    n_iter : torch.Tensor
        ``(S,)`` epochs used.
    converged, finished : torch.Tensor
        ``(S,)`` bool: reached ``tol``; finished (False only after a cancel).
    seconds : float
        Wall time.
    """

    resp: Any
    weights: Any
    means: Any
    covariances: Any
    nll_history: Any
    n_iter: Any
    converged: Any
    finished: Any
    seconds: float


def pad_crops(crops: Any, flat_index: Any, multiple: int) -> tuple[Any, Any]:
    """Zero-pad crops at the bottom/right to a multiple of ``multiple``; remap ``flat_index``."""
    import torch

    _, _, h, w = crops.shape
    h2 = max(-(-h // multiple) * multiple, 2 * multiple)
    w2 = max(-(-w // multiple) * multiple, 2 * multiple)
    if (h2, w2) == (h, w):
        return crops, flat_index
    crops = torch.nn.functional.pad(crops, (0, w2 - w, 0, h2 - h))
    flat_index = (flat_index // w) * w2 + flat_index % w
    return crops, flat_index


def gather_logits(logits: Any, flat_index: Any) -> Any:
    """``(S, K, H, W)`` crop maps -> ``(S, N, K)`` values at ``flat_index`` ``(S, N)``."""
    s, k = logits.shape[:2]
    idx = flat_index.unsqueeze(1).expand(s, k, flat_index.shape[1])
    return logits.reshape(s, k, -1).gather(2, idx).transpose(1, 2)


def default_cpu_threads() -> int:
    """Default CPU threads of :func:`optimize_slices`: half the cores (at least one), at most torch's."""
    import torch

    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) // 2))


def _in_cpu_threads(fn: Callable[..., DeepState]) -> Callable[..., DeepState]:
    """Run ``fn`` under its ``num_threads`` CPU thread setting (:func:`cpu_threads`).

    ``num_threads`` is taken here, so the wrapped body never sees it: None means
    :func:`default_cpu_threads` on the CPU; off the CPU the setting is left alone.
    """

    @functools.wraps(fn)
    def run(x: Any, *args: Any, num_threads: int | None = None, **kwargs: Any) -> DeepState:
        threads = None
        if x.device.type == "cpu":
            threads = default_cpu_threads() if num_threads is None else int(num_threads)
        with cpu_threads(threads):
            return fn(x, *args, **kwargs)

    return run


@_in_cpu_threads
def optimize_slices(
    x: Any,
    valid: Any,
    crops: Any,
    flat_index: Any,
    *,
    method: str = "deepsvg",
    n_classes: int = 4,
    seeds: Sequence[int],
    network: Any = None,
    max_epochs: int = 200,
    min_epochs: int = 10,
    tol: float = 1e-3,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    clip_norm: float = 12.0,
    mu_data: Any = None,
    lam: float = 1.0,
    reg_covar: float = 1e-3,
    covariance_type: str = "diag",
    amp: bool | None = None,
    sync_every: int | None = None,
    slice_index: Sequence[int] | None = None,
    progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    num_threads: int | None = None,
) -> DeepState:
    """Algorithm 3 on a batch of slices: one fresh network per slice, optimised together.

    Parameters
    ----------
    x : torch.Tensor
        ``(S, N, M)`` normalised packed ROI pixels.
    valid : torch.Tensor
        ``(S, N)`` bool, False on padding.
    crops : torch.Tensor
        ``(S, M, H, W)`` normalised crops (the network input).
    flat_index : torch.Tensor
        ``(S, N)`` int64 index of each packed pixel in its crop (``H * W``).
    method : {"deepg", "deepsvg", "deepsvg-mu"}, default "deepsvg"
    n_classes : int, default 4
    seeds : sequence of int
        One network initialisation seed per slice (see :func:`slice_seeds`).
    network : str, dict or NetworkConfig, optional
        Architecture (default preset ``"small"``).
    max_epochs, min_epochs : int, default 200, 10
    tol : float, default 1e-3
        A slice stops when its NLL changes by less than this (after ``min_epochs``).
    lr, weight_decay, clip_norm : float, default 1e-3, 1e-3, 12
        AdamW learning rate, decoupled weight decay and per-network gradient-norm clip.
    mu_data : torch.Tensor, optional
        ``(K, M)`` prior class means for the ``lam * ||mu - mu_data||^2`` penalty.
    lam : float, default 1
    reg_covar : float, default 1e-3
        Variance floor of the M-step.
    covariance_type : {"diag", "full"}, default "diag"
    amp : bool, optional
        bfloat16 autocast of the network on CUDA (default: on CUDA only).
    sync_every : int, optional
        Epochs between host synchronisations (convergence bookkeeping, progress,
        cancel): 1 on CPU, 5 on CUDA by default. Slices still stop at the exact epoch.
    slice_index : sequence of int, optional
        Volume z of each row, for progress reports.
    progress : callable, optional
        Receives a :class:`napari_gmmseg.fit.Progress` at every synchronisation.
    should_stop : callable, optional
        Checked every epoch; when it returns True the fit stops, finished slices are
        kept and the others are returned with ``finished`` False.
    num_threads : int, optional
        CPU threads for the run (restored afterwards; ignored off the CPU). Default
        :func:`default_cpu_threads`: half the cores, at least one. The per-slice
        networks are small, so torch's intra-op threads gain little and, on a busy
        machine, their barriers cost several times the arithmetic (measured in
        ``docs/deep.md``). The result does not depend on it.

    Returns
    -------
    DeepState
    """
    import torch

    from napari_gmmseg.deep.losses import spatially_variant
    from napari_gmmseg.deep.networks import StackedNetworks, resolve_config

    t_start = time.perf_counter()
    spatially_variant(method)
    if int(max_epochs) < 1 or int(min_epochs) < 1 or tol < 0 or lr <= 0:
        raise ModelError(
            "max_epochs and min_epochs must be >= 1, tol >= 0 and lr > 0 "
            f"(got {max_epochs}, {min_epochs}, {tol}, {lr})"
        )
    config = resolve_config(network)
    device = x.device
    n_slices, _, n_ch = x.shape
    if crops.shape[0] != n_slices or crops.shape[1] != n_ch or len(seeds) != n_slices:
        raise ModelError(
            f"inconsistent batch: x {tuple(x.shape)}, crops {tuple(crops.shape)}, "
            f"{len(seeds)} seeds"
        )
    if amp is None:
        amp = device.type == "cuda"
    if sync_every is None:
        sync_every = 1 if device.type == "cpu" else 5
    zs = np.asarray(slice_index if slice_index is not None else np.arange(n_slices))
    if mu_data is not None:
        mu_data = torch.as_tensor(mu_data, dtype=torch.float32, device=device)

    crops, flat_index = pad_crops(crops.float(), flat_index, config.multiple)
    nets = StackedNetworks(n_ch, n_classes, config, seeds, device=device)
    forward = nets.functional()
    opt = StackedAdamW(nets.params, lr=lr, weight_decay=weight_decay)
    params = nets.params
    return _epochs(
        forward, params, opt, x, valid, crops, flat_index, zs, mu_data,
        method=method, n_classes=n_classes, max_epochs=int(max_epochs), min_epochs=min_epochs,
        tol=tol, clip_norm=clip_norm, lam=lam, reg_covar=reg_covar,
        covariance_type=covariance_type, amp=bool(amp), sync_every=sync_every,
        progress=progress, should_stop=should_stop, t_start=t_start,
    )  # fmt: skip


def _epochs(
    forward: Any, params: Any, opt: Any, x: Any, valid: Any, crops: Any, flat_index: Any,
    zs: np.ndarray, mu_data: Any, *, method: str, n_classes: int, max_epochs: int,
    min_epochs: int, tol: float, clip_norm: float, lam: float, reg_covar: float,
    covariance_type: str, amp: bool, sync_every: int, progress: Any, should_stop: Any,
    t_start: float,
) -> DeepState:  # fmt: skip
    """The epoch loop of :func:`optimize_slices`: per-slice stopping, working set, outputs."""
    import torch

    from napari_gmmseg.deep.losses import mixture_loss
    from napari_gmmseg.fit import Progress, RowUpdate

    device = x.device
    n_slices, _, n_ch = x.shape
    n_px = x.shape[1]
    out_resp = torch.zeros(n_slices, n_px, n_classes, device=device)
    out_w = torch.zeros(n_slices, n_classes, device=device)
    out_mu = torch.zeros(n_slices, n_classes, n_ch, device=device)
    if covariance_type == "full":
        out_cov = torch.eye(n_ch, device=device).expand(n_slices, n_classes, n_ch, n_ch).clone()
    else:
        out_cov = torch.ones(n_slices, n_classes, n_ch, device=device)
    hist = torch.full((n_slices, int(max_epochs)), float("nan"), device=device)
    n_iter = torch.zeros(n_slices, dtype=torch.long, device=device)
    converged = torch.zeros(n_slices, dtype=torch.bool, device=device)
    finished = torch.zeros(n_slices, dtype=torch.bool, device=device)

    rows = torch.arange(n_slices, device=device)  # original row of each working row
    w_x, w_valid, w_crops, w_fi = x, valid, crops, flat_index
    active = torch.ones(n_slices, dtype=torch.bool, device=device)
    prev = torch.full((n_slices,), float("inf"), device=device)
    terms = None
    epoch = 0
    stopped = False

    def store(mask: Any, t: int) -> None:
        """Copy this epoch's outputs of the working rows in ``mask`` (no host sync)."""
        m1 = mask.view(-1, 1)
        m2 = mask.view(-1, 1, 1)
        out_resp[rows] = torch.where(m2, terms.resp.detach(), out_resp[rows])
        out_w[rows] = torch.where(m1, terms.weights.detach(), out_w[rows])
        out_mu[rows] = torch.where(m2, terms.means.detach(), out_mu[rows])
        mc = mask.view(-1, *([1] * (out_cov.ndim - 1)))
        out_cov[rows] = torch.where(mc, terms.covariances.detach(), out_cov[rows])
        n_iter[rows] = torch.where(mask, t, n_iter[rows])

    reported = np.zeros(n_slices, dtype=bool)  # rows whose final state went to ``progress``

    def new_rows(fin_np: np.ndarray) -> RowUpdate | None:
        """Final softmax and means of the rows finished since the last report (frozen)."""
        fresh = np.nonzero(fin_np & ~reported)[0]
        if fresh.size == 0:
            return None
        reported[fresh] = True
        idx = torch.as_tensor(fresh, device=device)
        return RowUpdate(fresh, out_resp[idx].cpu(), out_mu[idx].cpu())

    for epoch in range(1, int(max_epochs) + 1):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(amp)):
            logits = forward(params, w_crops)
        terms = mixture_loss(
            gather_logits(logits.float(), w_fi),
            w_x,
            w_valid,
            method=method,
            mu_data=mu_data,
            lam=lam,
            reg_covar=reg_covar,
            covariance_type=covariance_type,
        )
        value = terms.nll.detach()
        hist[rows, epoch - 1] = torch.where(active, value, hist[rows, epoch - 1])
        change_ok = (value - prev).abs() < tol
        conv_now = active & change_ok & (epoch >= min_epochs)
        done = conv_now | (active & ~torch.isfinite(value))
        if epoch == max_epochs:
            done = done | active
        if device.type != "cpu" or bool(done.any()):
            store(done, epoch)
            converged[rows] = torch.where(done, conv_now, converged[rows])
            finished[rows] = finished[rows] | done
        active = active & ~done
        prev = value
        if epoch == max_epochs:
            break
        loss = (terms.loss * active.to(terms.loss.dtype)).sum()
        if epoch % sync_every == 0:
            n_active = int(active.sum())
            if progress is not None:
                fin_np = finished.cpu().numpy()
                progress(
                    Progress(
                        slices_done=int(fin_np.sum()),
                        slices_total=n_slices,
                        iteration=epoch,
                        nll=float(value[active].mean()) if n_active else float("nan"),
                        finished=zs[fin_np],
                        new_rows=new_rows(fin_np),
                    )
                )
            if n_active == 0:
                break
        if should_stop is not None and should_stop():
            stopped = True
            break
        if loss.requires_grad:
            grads = torch.autograd.grad(loss, [params[k] for k in opt.keys])
            opt.step(grads, active, max_norm=clip_norm)
        if epoch % sync_every == 0 and n_active < int(rows.shape[0]):
            keep = torch.nonzero(active).squeeze(1)
            params = opt.keep(keep)
            rows, active, prev = rows[keep], active[keep], prev[keep]
            w_x, w_valid, w_crops, w_fi = w_x[keep], w_valid[keep], w_crops[keep], w_fi[keep]

    if stopped and terms is not None:
        # Cancelled: hand back the current state of the unfinished slices, marked unfinished.
        left = active.clone()
        if bool(left.any()):
            store(left, epoch)
    if progress is not None:
        done_mask = finished.cpu().numpy()
        progress(
            Progress(
                int(done_mask.sum()),
                n_slices,
                epoch,
                finished=zs[done_mask],
                new_rows=new_rows(done_mask),
            )
        )
    seconds = time.perf_counter() - t_start
    return DeepState(out_resp, out_w, out_mu, out_cov, hist, n_iter, converged, finished, seconds)
