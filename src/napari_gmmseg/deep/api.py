"""``fit_deep``: the deep methods on a :class:`~napari_gmmseg.preprocess.SliceBatch`.

Called lazily by :func:`napari_gmmseg.segment.segment` for ``method`` in
``("deepg", "deepsvg", "deepsvg-mu")``. Two modes:

- ``weights=None``: Algorithm 3, a fresh network per slice, all slices optimised
  together (:func:`napari_gmmseg.deep.optimize.optimize_slices`);
- ``weights=path``: Algorithm 4 inference, the trained network of a model file
  (:func:`napari_gmmseg.deep.train.train`) applied in one forward pass per slice.

Either way the responsibilities are the network's softmax at the ROI pixels and
the mixture parameters come from the closed-form M-step.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from napari_gmmseg.errors import ModelError
from napari_gmmseg.methods import COVARIANCE_TYPES, DeepOptions, check_choice

__all__ = ["DEFAULTS", "fit_deep"]

#: Defaults of the per-slice optimisation (Algorithm 3); see docs/deep.md. Written once,
#: in :class:`napari_gmmseg.methods.DeepOptions` (the CLI, the dock and the API read it).
DEFAULTS: dict[str, Any] = {
    **{
        f.name: f.default
        for f in dataclasses.fields(DeepOptions)
        if f.name not in ("amp", "mu_data", "weights", "num_threads")
    },
    "tol": 1e-3,
}


def _default_prior(channels: Sequence[str], n_classes: int) -> np.ndarray | None:
    """The engine's documented prior table, when the package ships one."""
    try:
        from napari_gmmseg import naming
    except ImportError:  # pragma: no cover - engine module missing
        return None
    loader = getattr(naming, "default_prior", None) or getattr(naming, "load_prior", None)
    if loader is None:
        return None
    from napari_gmmseg.deep.mu_data import mu_data_array

    try:
        return mu_data_array(loader(), channels, n_classes)
    except (ModelError, TypeError, ValueError):
        return None


def fit_deep(
    batch: Any,
    *,
    method: str = "deepsvg",
    n_classes: int = 4,
    seed: int = 0,
    device: Any = "auto",
    max_epochs: int = DEFAULTS["max_epochs"],
    min_epochs: int = DEFAULTS["min_epochs"],
    tol: float = DEFAULTS["tol"],
    lr: float = DEFAULTS["lr"],
    weight_decay: float = DEFAULTS["weight_decay"],
    clip_norm: float = DEFAULTS["clip_norm"],
    mu_data: Any = None,
    lam: float = DEFAULTS["lam"],
    weights: str | os.PathLike | None = None,
    network: Any = DEFAULTS["network"],
    reg_covar: float = DEFAULTS["reg_covar"],
    covariance_type: str = "diag",
    amp: bool | None = None,
    progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    channels: Sequence[str] | None = None,
    num_threads: int | None = None,
) -> Any:
    """Fit deepG / deepSVG / deepSVG_mu to every slice of a batch.

    Parameters
    ----------
    batch : napari_gmmseg.preprocess.SliceBatch
        Packed ROI pixels and crops (normalised).
    method : {"deepg", "deepsvg", "deepsvg-mu"}, default "deepsvg"
        deepG: NLL with ``pi = mean(w)``; deepSVG: NLL_V with ``Pi = w``; deepSVG_mu:
        NLL_V + ``lam * ||mu - mu_data||^2``.
    n_classes : int, default 4
    seed : int, default 0
        Network initialisation seed (per slice: derived from ``(seed, z)``).
    device : str or torch.device, default "auto"
        CUDA when available.
    max_epochs, min_epochs, tol : default 200, 10, 1e-3
        Per-slice stopping rule: NLL change below ``tol`` after ``min_epochs``.
    lr, weight_decay, clip_norm : default 1e-3, 1e-3, 12
        AdamW settings (per network).
    mu_data : MuData, prior table, JSON path or array (K, M), optional
        Class means for deepSVG_mu (default: the engine's prior table). Used by any
        method when given.
    lam : float, default 1
        Weight of the mean penalty.
    weights : path-like, optional
        A model file from :func:`napari_gmmseg.deep.train.train`: apply it (one forward
        pass per slice) instead of optimising a network per slice.
    network : str, dict or NetworkConfig, default "small"
        Architecture of the per-slice networks (presets in
        :data:`napari_gmmseg.deep.networks.PRESETS`).
    reg_covar : float, default 1e-3
        Variance floor of the M-step (normalised units).
    covariance_type : {"diag", "full"}, default "diag"
        Covariance structure of the M-step (the paper: diagonal). Model files
        (``weights=``) always use the diagonal form they were trained with.
    amp : bool, optional
        bfloat16 autocast of the networks on CUDA (default: on CUDA).
    progress, should_stop : callable, optional
        Progress reports (:class:`napari_gmmseg.fit.Progress`) and cancellation.
    channels : sequence of str, optional
        Channel names of the batch (default ``batch.channels``); checked against a
        model file's channel order.
    num_threads : int, optional
        CPU threads of the per-slice optimisation (default: half the cores, at least
        one; see :func:`napari_gmmseg.deep.optimize.optimize_slices`). Results do not
        depend on it.

    Returns
    -------
    napari_gmmseg.mixture.MixtureResult
    """
    import torch

    from napari_gmmseg.deep.losses import spatially_variant
    from napari_gmmseg.deep.mu_data import mu_data_array
    from napari_gmmseg.deep.optimize import optimize_slices, slice_seeds
    from napari_gmmseg.preprocess import resolve_device

    spatially_variant(method)
    check_choice("covariance_type", covariance_type, COVARIANCE_TYPES)
    dev = resolve_device(device)
    channels = tuple(channels if channels is not None else batch.channels)
    if weights is not None:
        return _apply_model(batch, weights, dev, channels, progress, reg_covar)
    if mu_data is not None:
        mu = mu_data_array(mu_data, channels, n_classes)
    elif method == "deepsvg-mu":
        mu = _default_prior(channels, n_classes)
        if mu is None:
            raise ModelError(
                "deepsvg-mu needs mu_data (napari-gmmseg mu-data ... --out mu.json) or weights"
            )
    else:
        mu = None
    t0 = time.perf_counter()
    x, valid = batch.x.to(dev), batch.valid.to(dev)
    state = optimize_slices(
        x,
        valid,
        batch.crops.to(dev),
        batch.flat_index.to(dev),
        method=method,
        n_classes=n_classes,
        seeds=slice_seeds(seed, batch.slice_index),
        network=network,
        max_epochs=max_epochs,
        min_epochs=min_epochs,
        tol=tol,
        lr=lr,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
        mu_data=None if mu is None else torch.as_tensor(mu, dtype=torch.float32),
        lam=lam,
        reg_covar=reg_covar,
        covariance_type=covariance_type,
        amp=amp,
        slice_index=batch.slice_index,
        progress=progress,
        should_stop=should_stop,
        num_threads=num_threads,
    )
    info = {
        "seconds": time.perf_counter() - t0,
        "seed": int(seed),
        "device": str(dev),
        "network": _network_dict(network),
        "max_epochs": int(max_epochs),
        "min_epochs": int(min_epochs),
        "tol": float(tol),
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "clip_norm": float(clip_norm),
        "lam": float(lam),
        "reg_covar": float(reg_covar),
        "covariance_type": covariance_type,
        "mu_data": None if mu is None else np.asarray(mu).tolist(),
    }
    return _result(state, valid, method, info, covariance_type)


def _network_dict(network: Any) -> dict:
    from napari_gmmseg.deep.networks import resolve_config

    return resolve_config(network).to_dict()


def _result(state: Any, valid: Any, method: str, info: dict, covariance_type: str = "diag") -> Any:
    import torch

    from napari_gmmseg.mixture import MixtureResult

    resp = state.resp * valid.unsqueeze(-1).to(state.resp.dtype)
    return MixtureResult(
        responsibilities=resp,
        weights=state.weights,
        means=state.means,
        covariances=state.covariances,
        nll_history=state.nll_history.to(torch.float64),
        n_iter=state.n_iter.to(torch.int64),
        converged=state.converged,
        finished=state.finished,
        method=method,
        covariance_type=covariance_type,
        info=info,
    )


def _apply_model(
    batch: Any,
    path: str | os.PathLike,
    dev: Any,
    channels: tuple[str, ...],
    progress: Callable[[Any], None] | None,
    reg_covar: float,
    chunk: int = 16,
) -> Any:
    """Algorithm 4 inference: the trained network on every slice, one forward pass each."""
    import torch

    from napari_gmmseg.deep.losses import mixture_loss
    from napari_gmmseg.deep.optimize import DeepState, gather_logits, pad_crops
    from napari_gmmseg.deep.weights import load_model
    from napari_gmmseg.fit import Progress, RowUpdate

    t0 = time.perf_counter()
    model = load_model(path)
    from napari_gmmseg.deep._cases import channel_order

    if len(channels) != len(model.channels):
        raise ModelError(
            f"model {path} takes {len(model.channels)} channels {list(model.channels)}, "
            f"the images have {len(channels)} {list(channels)}"
        )
    order = channel_order(channels, model.channels)
    if order is None:
        order = list(range(len(channels)))
        warnings.warn(
            f"model {path} was trained on channels {list(model.channels)}; the images are "
            f"named {list(channels)}: using them in the given order",
            stacklevel=3,
        )
    if getattr(batch, "normalize", model.normalize) != model.normalize:
        warnings.warn(
            f"model {path} expects '{model.normalize}' normalisation, the batch uses "
            f"'{batch.normalize}'",
            stacklevel=3,
        )
    net = model.build(dev)
    x = batch.x.to(dev)[..., order]
    valid = batch.valid.to(dev)
    crops, flat = pad_crops(
        batch.crops.to(dev)[:, order].float(), batch.flat_index.to(dev), model.network.multiple
    )
    mu = None
    if model.mu_data is not None and model.lam > 0:
        mu = torch.as_tensor(model.mu_data, dtype=torch.float32, device=dev)
    parts = []
    n = x.shape[0]
    with torch.no_grad():
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            logits = gather_logits(net(crops[sl]).float(), flat[sl])
            part = mixture_loss(
                logits,
                x[sl],
                valid[sl],
                method=model.method,
                mu_data=mu,
                lam=model.lam,
                reg_covar=reg_covar,
            )
            parts.append(part)
            if progress is not None:
                end = min(start + chunk, n)
                rows = np.arange(start, end)
                # Inference is final per chunk: hand its rows over for live labels.
                update = RowUpdate(rows, part.resp.cpu(), part.means[..., np.argsort(order)].cpu())
                zs = np.asarray(batch.slice_index)[:end]
                progress(Progress(end, n, 1, finished=zs, new_rows=update))
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    # Means back in the batch's channel order.
    inv = np.argsort(order)
    state = DeepState(
        resp=cat("resp"),
        weights=cat("weights"),
        means=cat("means")[..., inv],
        covariances=cat("covariances")[..., inv],
        nll_history=cat("nll").unsqueeze(1),
        n_iter=torch.ones(n, dtype=torch.long, device=dev),
        converged=torch.ones(n, dtype=torch.bool, device=dev),
        finished=torch.ones(n, dtype=torch.bool, device=dev),
        seconds=time.perf_counter() - t0,
    )
    info = {
        "seconds": state.seconds,
        "device": str(dev),
        "weights": str(path),
        "model_method": model.method,
        "network": model.network.to_dict(),
        "training": model.training,
    }
    return _result(state, valid, model.method, info)
