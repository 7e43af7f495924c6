"""Learn a :class:`~napari_gmmseg.classifier.model.TissueClassifier` from labelled cases."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from napari_gmmseg._threads import cpu_threads
from napari_gmmseg.classifier.features import feature_columns, volume_features
from napari_gmmseg.classifier.model import TissueClassifier
from napari_gmmseg.errors import ModelError
from napari_gmmseg.labels import CLASS_VALUES, LV_ROI_VALUES

__all__ = ["EPOCHS", "HIDDEN", "case_training_pixels", "learn_classifier"]

#: Width of the two hidden layers.
HIDDEN = 64
#: Passes over the training pixels.
EPOCHS = 30
#: Adam learning rate and mini-batch size (pixels).
LEARNING_RATE = 3e-3
BATCH_PIXELS = 4096


def case_training_pixels(case: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(N, F)`` features and ``(N,)`` class indices of the LV ROI pixels of a labelled case.

    The ROI is the ground-truth LV (blood pool, myocardium, edema, scar), as at inference with
    a mask.

    Raises
    ------
    ModelError
        The case has no labels or no LV.
    """
    case = case.load() if hasattr(case, "load") else case
    if case.labels is None:
        raise ModelError(f"case {case.case_id} has no mask: the classifier learns from labels")
    roi = np.isin(case.labels, LV_ROI_VALUES)
    if not roi.any():
        raise ModelError(f"case {case.case_id}: its mask has no LV (values {LV_ROI_VALUES})")
    cols = feature_columns(case.channels)
    x, used = volume_features(case.images[..., cols], roi, tuple(case.spacing_mm[1:]))
    lut = {v: i for i, v in enumerate(CLASS_VALUES)}
    y = np.vectorize(lut.__getitem__, otypes=[np.int64])(case.labels[used])
    return x, y


def _train(x: np.ndarray, y: np.ndarray, *, seed: int, epochs: int, hidden: int) -> tuple:
    """Train the MLP on standardised features; returns (weights, biases, mean, sd).

    On one CPU thread: a product split among threads adds in another order, so the
    weights would depend on the machine's core count (measured: a 2-thread and a
    1-thread run of the same seed differ); on one thread the same seed gives the same
    weights everywhere.
    """
    import torch

    # fork_rng seeds the weight init without touching the caller's RNG
    with cpu_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _train_seeded(x, y, seed=seed, epochs=epochs, hidden=hidden)


def _train_seeded(x: np.ndarray, y: np.ndarray, *, seed: int, epochs: int, hidden: int) -> tuple:
    import torch

    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    mean, sd = xt.mean(0), xt.std(0).clamp_min(1e-6)
    xs = (xt - mean) / sd
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, len(CLASS_VALUES)),
    )
    opt = torch.optim.Adam(net.parameters(), LEARNING_RATE)
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), BATCH_PIXELS):
            b = order[i : i + BATCH_PIXELS]
            loss = torch.nn.functional.cross_entropy(net(xs[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    weights = tuple(m.weight.detach().numpy().copy() for m in lin)
    biases = tuple(m.bias.detach().numpy().copy() for m in lin)
    return weights, biases, mean.numpy(), sd.numpy()


def learn_classifier(
    cases: Iterable[Any],
    *,
    seed: int = 0,
    epochs: int = EPOCHS,
    hidden: int = HIDDEN,
    progress: Callable[[str], Any] | None = None,
) -> TissueClassifier:
    """Learn the tissue classifier from labelled cases.

    Parameters
    ----------
    cases : iterable of Case or CaseSource
        Labelled cases (MyoPS masks); each pixel of each case's LV ROI is a training sample.
    seed : int
        Seed of the weight initialisation and the mini-batch order (same seed, same weights).
    epochs, hidden : int
        Passes over the pixels; width of the two hidden layers.
    progress : callable, optional
        Called with a one-line message after each case's features and at the end.

    Returns
    -------
    TissueClassifier

    Raises
    ------
    ModelError
        No case, or a case without labels or LV.
    """
    if epochs < 1 or hidden < 1:
        raise ModelError(f"epochs and hidden must be positive, got {epochs} and {hidden}")
    xs, ys, ids = [], [], []
    for case in cases:
        x, y = case_training_pixels(case)
        xs.append(x)
        ys.append(y)
        ids.append(str(case.case_id))
        if progress is not None:
            progress(f"features of case {case.case_id}: {len(y)} pixels")
    if not xs:
        raise ModelError("learn_classifier needs at least one labelled case")
    x, y = np.concatenate(xs), np.concatenate(ys)
    weights, biases, mean, sd = _train(x, y, seed=seed, epochs=epochs, hidden=hidden)
    meta = {
        "cases": ids,
        "seed": int(seed),
        "epochs": int(epochs),
        "hidden": int(hidden),
        "n_pixels": len(y),
        "class_pixels": np.bincount(y, minlength=len(CLASS_VALUES)).tolist(),
    }
    if progress is not None:
        progress(f"trained on {len(ids)} cases, {len(y)} pixels")
    return TissueClassifier(weights, biases, mean, sd, meta)
