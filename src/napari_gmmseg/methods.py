"""The method registry: every segmentation method, once, with its typed options.

:data:`METHODS` maps a method name to a :class:`MethodSpec`: the label the dock
shows, the family that says how :func:`napari_gmmseg.segment.segment` calls it,
the options dataclass (which validates itself, like
:class:`~napari_gmmseg.presence.PresenceRule`) and the fit function as a
``"module:function"`` string, imported only when the method runs (so importing
this module imports neither torch nor MONAI).

Families
--------
``"em"``
    ``fit(batch, *, n_components, covariance_type, init, tol, max_iter, seed,
    prior_means, progress, should_stop, **options) -> MixtureResult`` on a
    :class:`~napari_gmmseg.preprocess.SliceBatch`.
``"deep"``
    ``fit(batch, *, method, n_classes, seed, device, covariance_type, tol, channels,
    progress, should_stop, **options) -> MixtureResult``.
``"pipeline"``
    ``fit(images, roi, *, channels, options, n_classes, covariance_type, init, tol,
    max_iter, seed, device, per_slice, prior, progress, should_stop) -> Fit``: the
    method takes the validated ``(Z, Y, X, C)`` volume and ``(Z, Y, X)`` ROI itself
    and returns a finished :class:`~napari_gmmseg.fit.Fit`.

``segment`` names the components of an ``em``/``deep`` result after the tissues.
Adding a method is one module with its fit function (and options dataclass) plus
one entry in :data:`METHODS` (or :func:`register` at run time); the CLI flags, the
Segment dock's rows and the docs table are generated from the entry.

Option fields carry ``metadata={"help": ..., "choices": ..., "cli": False, "dock":
False}``: ``help`` is the CLI/tooltip text, ``choices`` the allowed strings,
``cli=False`` keeps a field (an array, a callable) off the command line and out of
the dock, ``dock=False`` only out of the Segment dock's option rows (the dock shows
it elsewhere, or it is an engine detail).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from napari_gmmseg.errors import ModelError

__all__ = [
    "COVARIANCE_TYPES",
    "DEFAULT_METHOD",
    "FAMILIES",
    "INITS",
    "METHODS",
    "REG_MODES",
    "SPATIAL",
    "DeepOptions",
    "EMOptions",
    "GMMOptions",
    "MethodSpec",
    "check_choice",
    "get_method",
    "method_table",
    "option_fields",
    "register",
]

#: Covariance structures every method takes (the paper's is ``"diag"``).
COVARIANCE_TYPES: tuple[str, ...] = ("diag", "full")

#: EM initialisations (:func:`napari_gmmseg.mixture.initial_parameters`).
INITS: tuple[str, ...] = ("kmeans++", "random", "random_from_data", "linspace", "prior")
#: Spatial coherence options of the EM methods.
SPATIAL: tuple[str, ...] = ("none", "mrf", "smooth")
#: How the covariance floor is applied: raised to (constrained ML) or added (scikit-learn).
REG_MODES: tuple[str, ...] = ("clip", "add")
#: How an E-step tile is computed (:class:`napari_gmmseg.em.estep.EStep`): ``fused``, one
#: compiled loop per pixel (CPU, float32, numba); ``torch``, batched torch operations;
#: ``auto``, ``fused`` where it applies.
ESTEP_KERNELS: tuple[str, ...] = ("auto", "fused", "torch")

#: How :func:`~napari_gmmseg.segment.segment` calls a method's fit function.
FAMILIES: tuple[str, ...] = ("em", "deep", "pipeline")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise a :class:`ModelError`.

    The one error message for "not one of" (MONAI's ``look_up_option`` style): it
    names the option, the value given and every choice.
    """
    choices = tuple(choices)
    if value not in choices:
        listing = ", ".join(repr(c) for c in choices)
        raise ModelError(f"unknown {name} {value!r}; choose one of {listing}")
    return value


def _meta(help: str, **meta: Any) -> dict[str, Any]:
    """Field metadata: the CLI/tooltip ``help`` (and ``choices``, ``cli``, ``cli_type``)."""
    return {"help": help, **meta}


def _positive(name: str, value: float, *, strict: bool = True) -> None:
    if not (value > 0 if strict else value >= 0):
        raise ModelError(f"{name} must be {'>' if strict else '>='} 0, got {value}")


@dataclass(frozen=True)
class EMOptions:
    """Options of the EM methods beyond those of :func:`~napari_gmmseg.segment.segment`.

    See :func:`napari_gmmseg.mixture.fit_svgmm` for what each does.
    """

    reg_covar: float = field(
        default=1e-4, metadata=_meta("covariance floor (relative to each slice's variance)")
    )
    reg_covar_relative: bool = field(
        default=True, metadata=_meta("scale the floor by each slice's data variance")
    )
    reg_mode: str = field(
        default="clip", metadata=_meta("clip variances at the floor or add it", choices=REG_MODES)
    )
    spatial: str = field(
        default="none",
        metadata=_meta(
            "spatial coherence: Potts MRF (mean field) or SVGMM Pi smoothing", choices=SPATIAL
        ),
    )
    beta: float = field(default=1.0, metadata=_meta("strength of --spatial"))
    n_init: int = field(
        default=1,
        metadata=_meta(
            "EM restarts per slice, fitted together; the lowest NLL is kept", dock=False
        ),
    )
    dtype: str = field(
        default="float32",
        metadata=_meta("working precision", choices=("float32", "float64"), dock=False),
    )
    check_every: int = field(
        default=5, metadata=_meta("host look at the stop flags every N iterations", dock=False)
    )
    chunk_pixels: int | None = field(
        default=None, metadata=_meta("pixels per E-step tile on the CPU (default 65536)")
    )
    estep_kernel: str = field(
        default="auto",
        metadata=_meta(
            "E-step: one fused compiled loop (CPU, float32) or torch operations",
            choices=ESTEP_KERNELS,
            dock=False,
        ),
    )
    num_threads: int | None = field(default=None, metadata=_meta("torch CPU threads of the fit"))
    init_params: Any = field(
        default=None, metadata=_meta("explicit (weights, means, covariances)", cli=False)
    )

    def __post_init__(self) -> None:
        dtype = str(self.dtype).replace("torch.", "")
        object.__setattr__(self, "dtype", check_choice("dtype", dtype, ("float32", "float64")))
        check_choice("reg_mode", self.reg_mode, REG_MODES)
        check_choice("spatial", self.spatial, SPATIAL)
        check_choice("estep_kernel", self.estep_kernel, ESTEP_KERNELS)
        _positive("reg_covar", self.reg_covar, strict=False)
        _positive("beta", self.beta, strict=False)
        if self.spatial == "smooth" and not 0.0 <= self.beta <= 1.0:
            raise ModelError(f"beta of spatial='smooth' must be in [0, 1], got {self.beta}")
        if int(self.n_init) < 1:
            raise ModelError(f"n_init must be >= 1, got {self.n_init}")
        if int(self.check_every) < 1:
            raise ModelError(f"check_every must be >= 1, got {self.check_every}")
        if self.chunk_pixels is not None and int(self.chunk_pixels) < 1:
            raise ModelError(f"chunk_pixels must be >= 1, got {self.chunk_pixels}")

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the fit function (``dtype`` as a torch dtype)."""
        import torch

        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kw["dtype"] = getattr(torch, self.dtype)
        return kw


@dataclass(frozen=True)
class GMMOptions(EMOptions):
    """:class:`EMOptions` of the plain GMM: no Pi, so no ``spatial="smooth"``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.spatial == "smooth":
            raise ModelError("spatial='smooth' smooths the SVGMM weights Pi; use 'mrf' for a GMM")


@dataclass(frozen=True)
class DeepOptions:
    """Options of the deep methods (Algorithm 3; Algorithm 4 with ``weights``).

    See :func:`napari_gmmseg.deep.fit_deep`.
    """

    max_epochs: int = field(
        default=200, metadata=_meta("epochs of the per-slice optimisation", dock=False)
    )
    min_epochs: int = field(
        default=10, metadata=_meta("epochs before the tolerance can stop a slice", dock=False)
    )
    lr: float = field(default=1e-3, metadata=_meta("AdamW learning rate"))
    weight_decay: float = field(default=1e-3, metadata=_meta("AdamW weight decay"))
    clip_norm: float = field(default=12.0, metadata=_meta("gradient clipping norm per network"))
    lam: float = field(default=1.0, metadata=_meta("weight of the mu_data penalty"))
    network: Any = field(
        default="small",
        metadata=_meta("U-Net preset", choices=("small", "medium", "reference"), cli_type=str),
    )
    reg_covar: float = field(
        default=1e-3, metadata=_meta("variance floor of the M-step (normalised units)")
    )
    amp: bool | None = field(
        default=None, metadata=_meta("bfloat16 autocast on CUDA (default: on CUDA)")
    )
    mu_data: str | os.PathLike | None = field(
        default=None,
        metadata=_meta("class-mean JSON (napari-gmmseg mu-data) pulling the means (deepsvg-mu)"),
    )
    weights: str | os.PathLike | None = field(
        default=None, metadata=_meta("trained model file (Algorithm 4)")
    )
    num_threads: int | None = field(
        default=None, metadata=_meta("torch CPU threads of the optimisation")
    )

    def __post_init__(self) -> None:
        if int(self.max_epochs) < 1:
            raise ModelError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if int(self.min_epochs) < 0:
            raise ModelError(f"min_epochs must be >= 0, got {self.min_epochs}")
        for name in ("lr", "clip_norm"):
            _positive(name, getattr(self, name))
        for name in ("weight_decay", "lam", "reg_covar"):
            _positive(name, getattr(self, name), strict=False)

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~napari_gmmseg.deep.fit_deep`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class MethodSpec:
    """One segmentation method.

    Attributes
    ----------
    name : str
        What ``segment(method=...)`` and ``--method`` take.
    label : str
        Name shown in the dock, tables and plots.
    family : {"em", "deep", "pipeline"}
        How it is called (module docstring).
    options : type
        Dataclass of its own options; validates itself in ``__post_init__``.
    fit : str
        ``"module:function"``, imported when the method runs.
    description : str
        One line for the docs table and ``--help``.
    prior_means_as_mu_data : bool
        Deep methods: pass the prior table's class means as ``mu_data`` when none is
        given (deepSVG_mu).
    """

    name: str
    label: str
    family: str
    options: type
    fit: str
    description: str = ""
    prior_means_as_mu_data: bool = False

    def __post_init__(self) -> None:
        check_choice("method family", self.family, FAMILIES)
        if not dataclasses.is_dataclass(self.options):
            raise ModelError(f"method {self.name!r}: options must be a dataclass")
        if ":" not in self.fit:
            raise ModelError(f"method {self.name!r}: fit must be 'module:function'")

    def make_options(self, options: Mapping[str, Any] | None = None) -> Any:
        """The validated options dataclass from keyword options.

        Raises
        ------
        ModelError
            An option this method does not take (the message lists those it takes), or
            a bad value.
        """
        options = dict(options or {})
        known = [f.name for f in dataclasses.fields(self.options)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ModelError(
                f"unknown option(s) {unknown} for method {self.name!r}; its options are "
                f"{', '.join(known)}"
            )
        try:
            return self.options(**options)
        except TypeError as exc:  # pragma: no cover - dataclass signature mismatch
            raise ModelError(f"method {self.name!r}: {exc}") from exc

    def load_fit(self) -> Callable[..., Any]:
        """The fit function (imported now)."""
        module, _, name = self.fit.partition(":")
        return getattr(importlib.import_module(module), name)

    def accepts(self, option: str) -> bool:
        """True if ``option`` is one of this method's own options."""
        return option in {f.name for f in dataclasses.fields(self.options)}


def _pipeline_options(name: str, module: str = "napari_gmmseg.wallfirst") -> type:
    """An options dataclass of a pipeline module (numpy-only modules: no torch here)."""
    return getattr(importlib.import_module(module), name)


#: What :func:`~napari_gmmseg.segment.segment`, ``segment``/``evaluate`` without
#: ``--method``, the Segment dock and ``make demo`` use: the best method by the as-named
#: metrics, cross-validated leave-one-case-out on myops_dev (README, docs/quality.md).
DEFAULT_METHOD = "tissue-net"


#: Every method, in the paper's order, then the pipelines with a learned prior.
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "gmm",
            "GMM",
            "em",
            GMMOptions,
            "napari_gmmseg.mixture:fit_gmm",
            "multivariate Gaussian mixture fitted by EM, log-space E-step (Algorithm 1)",
        ),
        MethodSpec(
            "svgmm",
            "SVGMM",
            "em",
            EMOptions,
            "napari_gmmseg.mixture:fit_svgmm",
            "spatially variant GMM: per-pixel mixing weights Pi (Algorithm 2)",
        ),
        MethodSpec(
            "deepg",
            "deepG",
            "deep",
            DeepOptions,
            "napari_gmmseg.deep:fit_deep",
            "U-Net softmax replaces the E-step, trained per slice on the GMM NLL (Algorithm 3)",
        ),
        MethodSpec(
            "deepsvg",
            "deepSVG",
            "deep",
            DeepOptions,
            "napari_gmmseg.deep:fit_deep",
            "as deepG on the SVGMM NLL_V (Algorithm 3)",
        ),
        MethodSpec(
            "deepsvg-mu",
            "deepSVG_mu",
            "deep",
            DeepOptions,
            "napari_gmmseg.deep:fit_deep",
            "deepSVG pulled toward prior class means mu_data; trainable on a dataset "
            "(Algorithms 3, 4)",
            prior_means_as_mu_data=True,
        ),
        MethodSpec(
            "wall-first",
            "wall-first",
            "pipeline",
            _pipeline_options("WallFirstOptions"),
            "napari_gmmseg.wallfirst:fit_pipeline",
            "stage 1 splits the ROI into blood pool and wall (bSSFP), stage 2 fits healthy / "
            "edema / scar on LGE + T2 inside the wall anchored to a learned prior (MAP-EM)",
        ),
        MethodSpec(
            "gmm-prior",
            "GMM + learned prior",
            "pipeline",
            _pipeline_options("PriorGMMOptions"),
            "napari_gmmseg.wallfirst:fit_pipeline",
            "4-class GMM by MAP-EM in the ROI on bSSFP, LGE and T2, anchored to the learned "
            "tissue prior (conjugate priors, strength 0.5)",
        ),
        MethodSpec(
            "tissue-classifier",
            "learned tissue classifier (pixel MLP)",
            "pipeline",
            _pipeline_options("ClassifierOptions", "napari_gmmseg.classifier.pipeline"),
            "napari_gmmseg.classifier.pipeline:fit_pipeline",
            "supervised pixel MLP (intensity, local context, depth in the ROI; shipped: learned "
            "on myops_dev) as the mixing weights Pi of a per-slice SVGMM fitted by EM",
        ),
        MethodSpec(
            "tissue-net",
            "tissue network (default)",
            "pipeline",
            _pipeline_options("TissueNetOptions", "napari_gmmseg.tissuenet.pipeline"),
            "napari_gmmseg.tissuenet.pipeline:fit_pipeline",
            "supervised U-Net ensemble on LV-centred crops of bSSFP, LGE, T2 and the ROI "
            "(shipped: the 5 fold models of myops_dev) as the mixing weights Pi of a per-slice "
            "SVGMM fitted by EM; the default",
        ),
    )
}


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name`` (case-insensitive).

    Raises
    ------
    ModelError
        Unknown name; the message lists every method.
    """
    key = str(name).strip().lower()
    check_choice("method", key, METHODS)
    return METHODS[key]


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method at run time (a plugin, a test); returns ``spec``.

    Raises
    ------
    ModelError
        A method of that name exists and ``replace`` is False.
    """
    if spec.name in METHODS and not replace:
        raise ModelError(f"method {spec.name!r} exists; pass replace=True to replace it")
    METHODS[spec.name] = spec
    return spec


def _cli_type(f: dataclasses.Field, hint: Any) -> type | None:
    """The scalar type a command-line value of field ``f`` is parsed as, or None."""
    if f.metadata.get("cli", True) is False:
        return None
    if "cli_type" in f.metadata:
        return f.metadata["cli_type"]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = tuple(a for a in args if a is not type(None))
        if os.PathLike in args or any(typing.get_origin(a) is os.PathLike for a in args):
            return str
        hint = args[0] if len(args) == 1 else None
    return hint if hint in (bool, int, float, str) else None


def option_fields(methods: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """The command-line/dock options of ``methods`` (default all), merged by field name.

    Returns
    -------
    dict
        ``name -> {"type", "help", "choices", "defaults": {method: default},
        "methods": [names]}`` in first-seen order; fields with ``cli=False`` or a
        type that is not a scalar are left out.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in methods if methods is not None else METHODS:
        spec = get_method(name)
        hints = typing.get_type_hints(spec.options)
        for f in dataclasses.fields(spec.options):
            kind = _cli_type(f, hints.get(f.name))
            if kind is None:
                continue
            entry = out.setdefault(
                f.name,
                {
                    "type": kind,
                    "help": f.metadata.get("help", ""),
                    "choices": f.metadata.get("choices"),
                    "defaults": {},
                    "methods": [],
                },
            )
            entry["defaults"][spec.name] = f.default
            entry["methods"].append(spec.name)
    return out


def method_table() -> str:
    """The markdown table of every method (the README/docs table)."""
    rows = ["| method | family | what it is |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {s.family} | {s.description} |" for s in METHODS.values()]
    return "\n".join(rows)
