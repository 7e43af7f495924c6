"""The CNN of the deep mixture models: a 2-D MONAI U-Net, alone or stacked per slice.

The network maps a normalised crop ``(C, H, W)`` to ``K`` logits per pixel; the
softmax of the logits replaces the E-step (``w``, or the per-pixel priors ``Pi``
of deepSVG).

Architecture choice (see ``docs/deep.md``): :class:`monai.networks.nets.UNet`
with instance normalisation (with affine parameters) and LeakyReLU. The paper's
network used batch norm; in Algorithm 3 every network sees exactly one image, and
batch norm in training mode on a batch of one *is* instance norm, so the two are
the same model there, while instance norm has no running statistics (no
train/eval mismatch) and stacks under :func:`torch.vmap` without buffers.
Presets trade size for speed: ``"small"`` (4 levels, 16 start filters, ~160 k
parameters, the default), ``"medium"`` (4 levels, 32 start filters, ~650 k) and
``"reference"`` (5 levels, 32 start filters, 2 residual units, 6.5 M, close to the
paper's network).

MONAI is imported inside the functions only (it costs seconds to import).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from napari_gmmseg.errors import ModelError

__all__ = [
    "PRESETS",
    "NetworkConfig",
    "StackedNetworks",
    "build_network",
    "count_parameters",
    "resolve_config",
]


@dataclass(frozen=True)
class NetworkConfig:
    """Hyper-parameters of the MONAI U-Net.

    Attributes
    ----------
    features : tuple of int
        Filters per level (the number of levels is its length; every level but the
        last halves the resolution).
    num_res_units : int
        Residual units per level (0: one convolution per block).
    norm : str
        ``"instance"`` (affine instance norm), ``"batch"`` or ``"none"``.
    act : str
        Activation: ``"leakyrelu"``, ``"relu"`` or ``"prelu"``.
    dropout : float
        Dropout probability.
    """

    features: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 0
    norm: str = "instance"
    act: str = "leakyrelu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        feats = tuple(int(f) for f in self.features)
        object.__setattr__(self, "features", feats)
        if len(feats) < 2 or min(feats) < 1:
            raise ModelError(f"features needs at least two positive entries, got {feats}")
        if self.norm not in ("instance", "batch", "none"):
            raise ModelError(f"norm must be 'instance', 'batch' or 'none', got {self.norm!r}")
        if self.act not in ("leakyrelu", "relu", "prelu"):
            raise ModelError(f"act must be 'leakyrelu', 'relu' or 'prelu', got {self.act!r}")
        if int(self.num_res_units) < 0 or not 0.0 <= float(self.dropout) < 1.0:
            raise ModelError("num_res_units must be >= 0 and dropout in [0, 1)")

    @property
    def multiple(self) -> int:
        """Crop height and width must be a multiple of this (one halving per level)."""
        return 2 ** (len(self.features) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dictionary (stored in weights files)."""
        d = asdict(self)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ModelError`."""
        known = {"features", "num_res_units", "norm", "act", "dropout"}
        extra = set(d) - known
        if extra:
            raise ModelError(f"unknown network settings {sorted(extra)}")
        return cls(**{**d, "features": tuple(d.get("features", cls.features))})


#: Named architectures (see the module docstring for sizes).
PRESETS: dict[str, NetworkConfig] = {
    "small": NetworkConfig((16, 32, 64, 128), 0),
    "medium": NetworkConfig((32, 64, 128, 256), 0),
    "reference": NetworkConfig((32, 64, 128, 256, 512), 2),
}


def resolve_config(network: str | NetworkConfig | dict | None) -> NetworkConfig:
    """A :class:`NetworkConfig` from a preset name, a dict, a config or features ``"8,16,32"``.

    None gives the ``"small"`` preset.
    """
    if network is None:
        return PRESETS["small"]
    if isinstance(network, NetworkConfig):
        return network
    if isinstance(network, dict):
        return NetworkConfig.from_dict(network)
    if isinstance(network, str) and network in PRESETS:
        return PRESETS[network]
    if isinstance(network, str) and "," in network:
        try:
            return NetworkConfig(tuple(int(f) for f in network.split(",")))
        except ValueError as exc:
            raise ModelError(f"bad network features {network!r}: {exc}") from exc
    raise ModelError(f"unknown network {network!r}; presets: {sorted(PRESETS)}")


def _norm_arg(norm: str) -> Any:
    if norm == "instance":
        return ("instance", {"affine": True})
    if norm == "batch":
        return "batch"
    return None


def build_network(in_channels: int, n_classes: int, config: NetworkConfig | None = None) -> Any:
    """A fresh 2-D MONAI U-Net ``(B, in_channels, H, W) -> (B, n_classes, H, W)`` logits.

    Parameters
    ----------
    in_channels : int
        Number of image channels ``C``.
    n_classes : int
        Number of mixture components ``K``.
    config : NetworkConfig, optional
        Architecture (default: the ``"small"`` preset).

    Returns
    -------
    torch.nn.Module
        The network (parameters initialised from torch's global RNG).
    """
    from monai.networks.nets import UNet

    config = config or PRESETS["small"]
    feats = config.features
    return UNet(
        spatial_dims=2,
        in_channels=int(in_channels),
        out_channels=int(n_classes),
        channels=feats,
        strides=(2,) * (len(feats) - 1),
        num_res_units=int(config.num_res_units),
        norm=_norm_arg(config.norm),
        act=(config.act, {"negative_slope": 0.01}) if config.act == "leakyrelu" else config.act,
        dropout=float(config.dropout),
    )


def count_parameters(module: Any) -> int:
    """Number of trainable parameters of a module."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def seeded_network(in_channels: int, n_classes: int, config: NetworkConfig, seed: int) -> Any:
    """:func:`build_network` initialised from ``seed`` without touching the global RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_network(in_channels, n_classes, config)


class StackedNetworks:
    """``S`` independent U-Nets of one architecture, evaluated together with ``vmap``.

    The parameters of the networks are stacked along a new leading axis
    (:func:`torch.func.stack_module_state`) and one batched call
    (:func:`torch.func.functional_call` under :func:`torch.vmap`) runs network ``s`` on
    image ``s``: torch turns the batched weights into grouped convolutions, so all
    slices of a volume train in one pass instead of a Python loop.

    Parameters
    ----------
    in_channels, n_classes : int
        Network input and output channels.
    config : NetworkConfig
        Architecture (its ``norm`` must not be ``"batch"``: batch norm keeps running
        statistics, which cannot be updated under ``vmap``).
    seeds : sequence of int
        One initialisation seed per network.
    device : torch.device or str
        Where the parameters live.

    Attributes
    ----------
    params : dict of str to torch.Tensor
        ``(S, ...)`` stacked parameters (leaf tensors that require gradients).
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        config: NetworkConfig,
        seeds: Sequence[int],
        device: Any = "cpu",
    ) -> None:
        import torch
        from torch.func import stack_module_state

        if config.norm == "batch":
            raise ModelError(
                "per-slice networks use instance norm (batch norm on one image is the same "
                "model, but its running statistics cannot be stacked); choose norm='instance'"
            )
        nets = [seeded_network(in_channels, n_classes, config, s) for s in seeds]
        params, buffers = stack_module_state(nets)
        if buffers:
            raise ModelError(f"unexpected buffers in the network: {sorted(buffers)}")
        self.params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
        self.config = config
        self._base = build_network(in_channels, n_classes, config).to("meta")
        self._torch = torch

    def functional(self) -> Any:
        """``f(params, images (S, C, H, W)) -> logits (S, K, H, W)`` for stacked params."""
        from torch.func import functional_call

        base = self._base

        def one(p: dict, image: Any) -> Any:
            return functional_call(base, p, (image.unsqueeze(0),)).squeeze(0)

        return self._torch.vmap(one)

    def __call__(self, images: Any, params: dict | None = None) -> Any:
        """Logits ``(S, K, H, W)`` of network ``s`` on ``images[s]``."""
        return self.functional()(self.params if params is None else params, images)
