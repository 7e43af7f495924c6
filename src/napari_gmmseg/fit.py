"""What every segmentation method returns (:class:`Fit`) and reports while running (:class:`Progress`).

Naming, metrics, export, the CLI and the widgets read only these, so a new
method plugs in by producing a :class:`Fit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Progress:
    """A progress report from a running fit.

    Attributes
    ----------
    slices_done, slices_total : int
        Slices finished (converged or at their iteration limit) and in all.
    iteration : int
        EM iteration or training epoch reached so far.
    nll : float
        Mean NLL over the slices still running (NaN when unknown).
    finished : numpy.ndarray
        Volume z-indices of the slices finished so far.
    partial : Fit or None
        Labels of the finished slices so far (0 on the others), set by
        :func:`napari_gmmseg.segment.segment` from :attr:`new_rows`.
    new_rows : RowUpdate or None
        Final model state of the batch rows finished since the previous report, set by
        the methods only when a progress callback listens; :func:`~napari_gmmseg.segment.segment`
        consumes it (it is None in the reports a caller of ``segment`` receives).
    """

    slices_done: int
    slices_total: int
    iteration: int
    nll: float = float("nan")
    finished: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    partial: Fit | None = None
    new_rows: RowUpdate | None = None


@dataclass
class RowUpdate:
    """Final state of batch rows that just finished, for labelling them while the fit runs.

    Attributes
    ----------
    rows : numpy.ndarray
        ``(n,)`` int64 row indices into the :class:`~napari_gmmseg.preprocess.SliceBatch`.
    responsibilities : torch.Tensor
        ``(n, N_max, K)`` final soft maps of those rows, on the CPU.
    means : torch.Tensor
        ``(n, K, M)`` final component means (normalised units), on the CPU.
    """

    rows: np.ndarray
    responsibilities: Any
    means: Any


@dataclass
class Fit:
    """Result of segmenting one volume.

    All per-slice arrays are indexed by position in :attr:`slice_index` (the
    z-indices of the slices that were fitted); volume arrays are ``(Z, Y, X)``.

    Attributes
    ----------
    method : str
        ``"gmm"``, ``"svgmm"``, ``"deepg"``, ``"deepsvg"`` or ``"deepsvg-mu"``.
    labels : numpy.ndarray
        ``(Z, Y, X)`` int32 MyoPS values (500, 200, 1220, 2221) inside the ROI, 0 elsewhere
        and on slices that were not finished.
    components : numpy.ndarray
        ``(Z, Y, X)`` int16 fitted component index before naming, -1 outside the ROI.
    probabilities : numpy.ndarray or None
        ``(Z, Y, X, K)`` float32 soft maps in class order (responsibilities, or Pi for SV models).
    slice_index : numpy.ndarray
        ``(S,)`` z-index of every fitted slice.
    weights_, means_, covariances_ : numpy.ndarray
        ``(S, K)`` mixing weights (mean of Pi for SV models), ``(S, K, M)`` means in
        normalised units, ``(S, K, M)`` (diag) or ``(S, K, M, M)`` (full) covariances;
        component order as in :attr:`components`.
    component_to_class : numpy.ndarray
        ``(S, K)`` class index (into :data:`napari_gmmseg.labels.CLASSES`) of each component,
        -1 for a component judged absent.
    nll_history : numpy.ndarray
        ``(S, T)`` mean NLL (NLL_V for SV models) per iteration or epoch, NaN-padded.
    n_iter_ : numpy.ndarray
        ``(S,)`` iterations or epochs used.
    converged_ : numpy.ndarray
        ``(S,)`` bool, reached ``tol`` before the iteration limit.
    finished : numpy.ndarray
        ``(S,)`` bool, False for slices left unfinished by a cancel.
    seconds : float
        Wall time of the fit.
    params : dict
        Options, seed, device and package version, for provenance.
    """

    method: str
    labels: np.ndarray
    components: np.ndarray
    probabilities: np.ndarray | None
    slice_index: np.ndarray
    weights_: np.ndarray
    means_: np.ndarray
    covariances_: np.ndarray
    component_to_class: np.ndarray
    nll_history: np.ndarray
    n_iter_: np.ndarray
    converged_: np.ndarray
    finished: np.ndarray
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def cancelled(self) -> bool:
        """True when some slices were left unfinished by a cancel."""
        return not bool(np.all(self.finished))
