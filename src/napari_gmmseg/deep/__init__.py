"""Deep Gaussian mixture models: deepG, deepSVG and deepSVG_mu (Schwab et al.).

A MONAI U-Net's softmax replaces the E-step of EM; the network is trained to
minimise the GMM (deepG) or SVGMM (deepSVG) negative log-likelihood after a
closed-form M-step, optionally with a penalty pulling the class means towards
``mu_data`` (deepSVG_mu).

- :func:`fit_deep`: Algorithm 3 (a fresh network per slice, every slice of a
  volume optimised in one batched run) or, with ``weights=``, Algorithm 4
  inference with a trained network;
- :func:`train`: Algorithm 4, one network trained on many slices, saved to one file;
- :func:`compute_mu_data`: class means from labelled slices.

Importing this package is cheap; torch and MONAI are imported when a function runs.
"""

from __future__ import annotations

from napari_gmmseg.deep.api import DEFAULTS, fit_deep
from napari_gmmseg.deep.losses import DEEP_METHODS, mixture_loss
from napari_gmmseg.deep.mu_data import MuData, compute_mu_data, load_mu_data
from napari_gmmseg.deep.weights import DeepModel, load_model, save_model

__all__ = [
    "DEEP_METHODS",
    "DEFAULTS",
    "DeepModel",
    "MuData",
    "compute_mu_data",
    "fit_deep",
    "load_model",
    "load_mu_data",
    "mixture_loss",
    "save_model",
    "train",
]


def train(*args, **kwargs):
    """Algorithm 4: see :func:`napari_gmmseg.deep.training.train`."""
    from napari_gmmseg.deep.training import train as _train

    return _train(*args, **kwargs)
