"""Algorithm 4: one network trained on the slices of many cases, saved to one file.

The loss is the one of Algorithm 3 (closed-form M-step per slice, NLL_V or NLL,
plus ``lam * ||mu - mu_data||^2`` for deepSVG_mu), averaged over mini-batches of
slices drawn from every case. The slices are the ground-truth LV ROI of each
labelled case, cropped and normalised exactly as
:class:`~napari_gmmseg.preprocess.SliceBatch` does for inference; crops of
different cases are zero-padded to a common size (padding is outside the ROI, so
it never enters the loss).

The trained network is applied to unseen cases with
``fit_deep(batch, method=..., weights=path)`` (one forward pass per slice).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg.errors import ModelError, OutputExistsError, RoiError

__all__ = ["TrainingSet", "prepare_training_set", "train"]


@dataclass
class TrainingSet:
    """Slices of many cases on one padded grid (tensors on CPU).

    Attributes
    ----------
    x : torch.Tensor
        ``(P, N, M)`` normalised ROI pixels.
    valid : torch.Tensor
        ``(P, N)`` bool.
    crops : torch.Tensor
        ``(P, M, H, W)`` normalised crops.
    flat_index : torch.Tensor
        ``(P, N)`` index of each pixel in its crop.
    slices : list of (str, int)
        ``(case_id, z)`` of every slice.
    channels : tuple of str
    mu_pool : list
        ``(case_id, z, (K, M) class means)`` of the slices with all four classes.
    """

    x: Any
    valid: Any
    crops: Any
    flat_index: Any
    slices: list
    channels: tuple[str, ...]
    mu_pool: list


def prepare_training_set(
    cases: Any,
    *,
    channels: Sequence[str] | None = None,
    normalize: str = "roi",
    multiple: int = 8,
    require_all_classes: bool = False,
) -> TrainingSet:
    """Crop and normalise the ground-truth LV ROI slices of every case.

    Parameters
    ----------
    cases : path-like, Case, CaseSource or iterable of them
        Labelled cases (the labels give the ROI; they are not used by the loss).
    channels : sequence of str, optional
        Channel order (default: the first case's); other cases are reordered by name.
    normalize : str, default "roi"
        SliceBatch normalisation.
    multiple : int, default 8
        Crops are padded to a multiple of this.
    require_all_classes : bool, default False
        Keep only slices whose ground truth holds all four classes (the paper's
        selection); default: every slice with an LV ROI.

    Raises
    ------
    RoiError
        A case without labels, or no usable slice at all.
    """
    import torch

    from napari_gmmseg.deep._cases import iter_cases, reorder_channels
    from napari_gmmseg.deep.mu_data import slice_class_means
    from napari_gmmseg.labels import CLASS_VALUES, LV_ROI_VALUES
    from napari_gmmseg.preprocess import SliceBatch

    parts, slices, pool = [], [], []
    for case in iter_cases(cases):
        if case.labels is None:
            raise RoiError(f"case {case.case_id} has no ground-truth mask (needed for the LV ROI)")
        if channels is None:
            channels = tuple(case.channels)
        images = reorder_channels(case.images, tuple(case.channels), tuple(channels), case.case_id)
        roi = np.isin(case.labels, LV_ROI_VALUES)
        if require_all_classes:
            present = np.stack([(case.labels == v).any(axis=(1, 2)) for v in CLASS_VALUES], 1)
            roi &= present.all(axis=1)[:, None, None]
        if not roi.any():
            warnings.warn(f"case {case.case_id}: no usable LV ROI slice, skipped", stacklevel=2)
            continue
        b = SliceBatch.from_volume(
            images, roi, channels=tuple(channels), normalize=normalize, device="cpu"
        )
        parts.append((b.x, b.valid, b.crops, b.flat_index))
        slices.extend((str(case.case_id), int(z)) for z in b.slice_index)
        if images is case.images:
            z, means = slice_class_means(case, normalize=normalize)
            pool.extend((str(case.case_id), int(zz), m) for zz, m in zip(z, means, strict=True))
        else:
            view = type(case)(
                images=images, channels=tuple(channels), labels=case.labels, case_id=case.case_id
            )
            z, means = slice_class_means(view, normalize=normalize)
            pool.extend((str(case.case_id), int(zz), m) for zz, m in zip(z, means, strict=True))
    if not parts:
        raise RoiError("no case has a usable LV ROI slice to train on")
    n_max = max(p[0].shape[1] for p in parts)
    h = max(p[2].shape[2] for p in parts)
    w = max(p[2].shape[3] for p in parts)
    h = max(-(-h // multiple) * multiple, 2 * multiple)
    w = max(-(-w // multiple) * multiple, 2 * multiple)
    xs, vs, cs, fs = [], [], [], []
    for x, valid, crops, flat in parts:
        pn = n_max - x.shape[1]
        ch, cw = crops.shape[2:]
        xs.append(torch.nn.functional.pad(x, (0, 0, 0, pn)))
        vs.append(torch.nn.functional.pad(valid, (0, pn)))
        cs.append(torch.nn.functional.pad(crops, (0, w - cw, 0, h - ch)))
        fs.append(torch.nn.functional.pad((flat // cw) * w + flat % cw, (0, pn)))
    return TrainingSet(
        torch.cat(xs), torch.cat(vs), torch.cat(cs), torch.cat(fs), slices, tuple(channels), pool
    )


def _training_mu(
    mu_data: Any,
    data: Any,
    method: str,
    n_classes: int,
    mu_images: int,
    mu_seed: int,
    normalize: str,
) -> tuple[np.ndarray | None, Any]:
    """Class means of the training's mean penalty and where they came from."""
    from napari_gmmseg.deep.mu_data import mu_data_array, mu_from_pool

    mu_source: Any = None
    if mu_data is not None:
        mu = mu_data_array(mu_data, data.channels, n_classes)
        mu_source = getattr(mu_data, "source", "given")
    elif method == "deepsvg-mu":
        table = mu_from_pool(
            data.mu_pool,
            n_images=mu_images,
            seed=mu_seed,
            channels=data.channels,
            normalize=normalize,
        )
        mu, mu_source = table.means, table.source
    else:
        mu = None
    return mu, mu_source


def _train_epochs(
    net: Any, opt: Any, x: Any, valid: Any, crops: Any, flat: Any, mu_t: Any, *, method: str,
    epochs: int, batch_size: int, lam: float, reg_covar: float, clip_norm: float, seed: int,
    progress: Callable[[Any], None] | None, should_stop: Callable[[], bool] | None,
) -> tuple[list[list[float]], bool]:  # fmt: skip
    """The epochs of :func:`train`: seeded mini-batches; ``(loss history, cancelled)``."""
    import torch

    from napari_gmmseg.deep.losses import mixture_loss
    from napari_gmmseg.deep.optimize import gather_logits
    from napari_gmmseg.fit import Progress

    gen = torch.Generator().manual_seed(int(seed))
    n = x.shape[0]
    dev = x.device
    history: list[list[float]] = []
    cancelled = False
    for epoch in range(1, epochs + 1):
        net.train()
        perm = torch.randperm(n, generator=gen)
        tot_loss = tot_nll = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size].to(dev)
            logits = gather_logits(net(crops[idx]), flat[idx])
            terms = mixture_loss(
                logits,
                x[idx],
                valid[idx],
                method=method,
                mu_data=mu_t,
                lam=lam,
                reg_covar=reg_covar,
            )
            loss = terms.loss.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm and clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
            opt.step()
            tot_loss += float(terms.loss.detach().sum())
            tot_nll += float(terms.nll.detach().sum())
        history.append([tot_loss / n, tot_nll / n])
        if progress is not None:
            progress(Progress(slices_done=n, slices_total=n, iteration=epoch, nll=tot_nll / n))
        if should_stop is not None and should_stop():
            cancelled = epoch < epochs
            break
    return history, cancelled


def train(
    cases: Any,
    *,
    method: str = "deepsvg-mu",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    n_classes: int = 4,
    network: Any = "small",
    epochs: int = 50,
    batch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    clip_norm: float = 12.0,
    mu_data: Any = None,
    lam: float = 1.0,
    mu_images: int = 10,
    mu_seed: int = 42,
    seed: int = 0,
    device: Any = "auto",
    reg_covar: float = 1e-3,
    channels: Sequence[str] | None = None,
    normalize: str = "roi",
    require_all_classes: bool = False,
    progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Train one network on many slices (Algorithm 4) and optionally save it.

    Parameters
    ----------
    cases : path-like, Case, CaseSource or iterable of them
        Labelled training cases (a dataset folder is read with
        :func:`napari_gmmseg.io.discover_cases`); the labels give the LV ROI and,
        for deepSVG_mu without ``mu_data``, the class means.
    method : {"deepg", "deepsvg", "deepsvg-mu"}, default "deepsvg-mu"
    out : path-like, optional
        Where to write the model file (atomically).
    overwrite : bool, default False
        Replace an existing ``out``.
    n_classes : int, default 4
    network : str, dict or NetworkConfig, default "small"
    epochs : int, default 50
        Passes over all training slices.
    batch_size : int, default 8
        Slices per AdamW step.
    lr, weight_decay, clip_norm : float, default 1e-3, 1e-3, 12
    mu_data : MuData, prior table, JSON path or array, optional
        deepSVG_mu class means; default: computed from ``mu_images`` random training
        slices containing all four classes (seed ``mu_seed``), as in the paper.
    lam : float, default 1
    seed : int, default 0
        Network initialisation and mini-batch order.
    device : str, default "auto"
    reg_covar : float, default 1e-3
    channels : sequence of str, optional
        Channel order (default: the first case's).
    normalize : str, default "roi"
    require_all_classes : bool, default False
        Train only on slices whose ground truth holds all four classes.
    progress, should_stop : callable, optional
        Progress (one :class:`napari_gmmseg.fit.Progress` per epoch) and cancellation
        (stops after the current epoch; the model trained so far is returned and
        marked ``cancelled`` in its provenance, and not written).

    Returns
    -------
    DeepModel
        The trained model (also written to ``out`` when given).
    """
    import torch

    from napari_gmmseg.deep.losses import spatially_variant
    from napari_gmmseg.deep.networks import resolve_config, seeded_network
    from napari_gmmseg.deep.weights import DeepModel, save_model
    from napari_gmmseg.preprocess import resolve_device

    spatially_variant(method)
    if int(epochs) < 1 or int(batch_size) < 1:
        raise ModelError(f"epochs and batch_size must be >= 1 (got {epochs}, {batch_size})")
    if out is not None and Path(out).exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass overwrite=True (CLI: --force) to replace it")
    config = resolve_config(network)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    data = prepare_training_set(
        cases,
        channels=channels,
        normalize=normalize,
        multiple=config.multiple,
        require_all_classes=require_all_classes,
    )
    mu, mu_source = _training_mu(mu_data, data, method, n_classes, mu_images, mu_seed, normalize)
    mu_t = None if mu is None else torch.as_tensor(mu, dtype=torch.float32, device=dev)

    x, valid = data.x.to(dev), data.valid.to(dev)
    crops, flat = data.crops.to(dev), data.flat_index.to(dev)
    n = x.shape[0]
    net = seeded_network(x.shape[2], n_classes, config, seed).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    history, cancelled = _train_epochs(
        net, opt, x, valid, crops, flat, mu_t, method=method, epochs=int(epochs),
        batch_size=int(batch_size), lam=lam, reg_covar=reg_covar, clip_norm=clip_norm,
        seed=seed, progress=progress, should_stop=should_stop,
    )  # fmt: skip
    net.eval()
    model = DeepModel(
        state_dict={k: v.detach().cpu() for k, v in net.state_dict().items()},
        network=config,
        n_classes=int(n_classes),
        channels=data.channels,
        method=method,
        normalize=normalize,
        mu_data=None if mu is None else torch.as_tensor(mu, dtype=torch.float32),
        lam=float(lam),
        training={
            "epochs": len(history),
            "epochs_asked": int(epochs),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "clip_norm": float(clip_norm),
            "reg_covar": float(reg_covar),
            "seed": int(seed),
            "n_slices": int(n),
            "cases": sorted({c for c, _ in data.slices}),
            "require_all_classes": bool(require_all_classes),
            "loss_history": history,
            "mu_data_source": mu_source,
            "seconds": time.perf_counter() - t0,
            "device": str(dev),
            "cancelled": cancelled,
        },
    )
    if out is not None and not cancelled:
        save_model(model, out, overwrite=overwrite)
    return model
