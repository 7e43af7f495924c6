"""Inspect dock widget: NLL per iteration and, for the current slice, histograms with the fitted Gaussians.

The figures of the numerically stable EM tutorial, drawn from a finished
:class:`~napari_gmmseg.fit.Fit`. The pixels are normalised by the core's
:class:`~napari_gmmseg.preprocess.SliceBatch` exactly as the model saw them.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from napari_gmmseg._widgets._common import FIT_KEY, INPUTS_KEY, META_KEY, LayerCombo, dock_layout
from napari_gmmseg.labels import CLASSES

if TYPE_CHECKING:
    import napari

#: napari's dark theme, so the plots sit well in the dock.
_BG = "#262930"
_FG = "#d8dadf"


def _style(ax) -> None:
    ax.set_facecolor(_BG)
    for spine in ax.spines.values():
        spine.set_color(_FG)
    ax.tick_params(colors=_FG, labelsize=7)
    ax.xaxis.label.set_color(_FG)
    ax.yaxis.label.set_color(_FG)
    ax.title.set_color(_FG)


def component_curves(fit, row: int, channel: int, grid: np.ndarray):
    """Weighted 1-D marginal density of every component of one fitted slice on ``grid``.

    Parameters
    ----------
    fit : Fit
    row : int
        Position in ``fit.slice_index``.
    channel : int
        Channel index ``m``.
    grid : numpy.ndarray
        Points (normalised units) where the curves are evaluated.

    Returns
    -------
    numpy.ndarray
        ``(K, len(grid))`` values ``w_k N(x; mu_km, sigma_km^2)``.
    """
    means = np.asarray(fit.means_[row, :, channel], dtype=np.float64)
    cov = np.asarray(fit.covariances_[row])
    var = cov[:, channel, channel] if cov.ndim == 3 else cov[:, channel]
    var = np.maximum(np.asarray(var, dtype=np.float64), 1e-12)
    weights = np.asarray(fit.weights_[row], dtype=np.float64)
    diff = grid[None, :] - means[:, None]
    return (
        weights[:, None] * np.exp(-0.5 * diff**2 / var[:, None]) / np.sqrt(2 * np.pi * var[:, None])
    )


class InspectWidget(QWidget):
    """Dock widget: convergence (NLL per iteration) and per-channel histograms of the current slice.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        import napari
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        super().__init__(parent)
        self.viewer = napari_viewer
        self._batch_cache: dict[Any, Any] = {}
        self._watched = None

        layout = dock_layout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("Segmentation"))
        self.layer_combo = LayerCombo(
            napari_viewer, (napari.layers.Labels,), accept=lambda lay: META_KEY in lay.metadata
        )
        row.addWidget(self.layer_combo, 1)
        self.refresh_button = QPushButton("↻")
        self.refresh_button.setFixedWidth(28)
        self.refresh_button.setToolTip("Redraw")
        self.refresh_button.clicked.connect(self.redraw)
        row.addWidget(self.refresh_button)
        layout.addLayout(row)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        layout.addWidget(self.info)

        self.figure = Figure(figsize=(4, 6), facecolor=_BG, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(380)
        layout.addWidget(self.canvas, 1)

        self.layer_combo.currentIndexChanged.connect(self._layer_changed)
        napari_viewer.dims.events.current_step.connect(self._step_changed)
        self._last_z: int | None = None
        self._layer_changed()

    # ---------------------------------------------------------------- state
    def _layer_changed(self, *_args) -> None:
        layer = self.layer_combo.layer()
        if self._watched is not None:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                self._watched.events.metadata.disconnect(self.redraw)
        self._watched = layer
        if layer is not None:
            layer.events.metadata.connect(self.redraw)
        self.redraw()

    def current_slice(self) -> int | None:
        """z-index (data coordinates of the chosen layer) of the slice shown in the viewer."""
        layer = self.layer_combo.layer()
        if layer is None or layer.ndim < 3:
            return 0 if layer is not None else None
        pos = layer.world_to_data(self.viewer.dims.point)
        return int(np.clip(np.round(pos[-3]), 0, layer.data.shape[-3] - 1))

    def _step_changed(self, *_args) -> None:
        z = self.current_slice()
        if z != self._last_z:
            self.redraw()

    def _pixels(self, layer, fit, row: int, z: int) -> np.ndarray | None:
        """Normalised ROI pixels ``(N, C)`` the model saw for batch row ``row``."""
        from napari_gmmseg.preprocess import SliceBatch

        inputs = layer.metadata.get(INPUTS_KEY)
        if inputs is None:
            return None
        per_slice = bool(fit.params.get("per_slice", True))
        key = (id(fit), z if per_slice else -1)
        if key not in self._batch_cache:
            normalize = fit.params.get("normalize", "roi")
            images, roi = inputs["images"], inputs["roi"]
            if per_slice:
                images, roi = images[z : z + 1], roi[z : z + 1]
            batch = SliceBatch.from_volume(
                images,
                roi,
                channels=tuple(inputs["channels"]),
                normalize=normalize,
                per_slice=per_slice,
                device="cpu",
            )
            self._batch_cache = {key: batch.x[0][batch.valid[0]].numpy()}
        return self._batch_cache[key]

    # ---------------------------------------------------------------- drawing
    def redraw(self, *_args) -> None:
        """Redraw both plots for the chosen layer and the current slice."""
        self.figure.clear()
        layer = self.layer_combo.layer()
        fit = None if layer is None else layer.metadata.get(FIT_KEY)
        z = self.current_slice()
        self._last_z = z
        if fit is None:
            self.info.setText(
                "Run a segmentation (Segment widget) to see its convergence and fitted Gaussians."
            )
            self.canvas.draw_idle()
            return
        slice_index = np.asarray(fit.slice_index)
        rows = np.flatnonzero(slice_index == z)
        row = int(rows[0]) if rows.size else None
        inputs = layer.metadata.get(INPUTS_KEY) or {}
        channels = list(inputs.get("channels", [f"ch{m}" for m in range(fit.means_.shape[-1])]))
        n_ch = len(channels)
        axes = self.figure.subplots(1 + n_ch, 1, gridspec_kw={"height_ratios": [1.2] + [1] * n_ch})
        axes = np.atleast_1d(axes)
        self._plot_nll(axes[0], fit, row)
        if row is None:
            for ax in axes[1:]:
                _style(ax)
                ax.text(0.5, 0.5, f"slice {z} was not fitted", ha="center", va="center",
                        color=_FG, transform=ax.transAxes)  # fmt: skip
                ax.set_xticks([])
                ax.set_yticks([])
        else:
            pixels = self._pixels(layer, fit, row, z)
            for m, ax in enumerate(axes[1:]):
                self._plot_hist(ax, fit, row, m, channels[m], pixels)
            # one legend (this slice + the tissue curves), where the NLL curves leave room
            handles, labels = axes[0].get_legend_handles_labels()
            h2, l2 = axes[1].get_legend_handles_labels()
            axes[0].legend(
                handles + h2, labels + l2, fontsize=6, frameon=False, labelcolor=_FG, ncol=2
            )
        status = "converged" if row is not None and bool(fit.converged_[row]) else "not converged"
        if row is not None and not bool(fit.finished[row]):
            status = "unfinished (cancelled)"
        iterative = np.isfinite(np.asarray(fit.nll_history, dtype=float)).any()
        detail = ""
        if row is not None:
            detail = (
                f" · {int(fit.n_iter_[row])} iterations, {status}"
                if iterative
                else " · a single pass (no iterations)"
            )
        self.info.setText(f"{fit.method} · slice {z}{detail}")
        self.canvas.draw_idle()

    def _plot_nll(self, ax, fit, row: int | None) -> None:
        _style(ax)
        hist = np.asarray(fit.nll_history, dtype=float)
        if hist.size == 0 or not np.isfinite(hist).any():
            # a pipeline without a likelihood: say so instead of an empty plot
            ax.text(
                0.5, 0.5, f"{fit.method} has no likelihood to plot\n(not an iterative fit)",
                ha="center", va="center", color=_FG, fontsize=8, transform=ax.transAxes,
            )  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            return
        its = np.arange(1, hist.shape[1] + 1)
        for s in range(hist.shape[0]):
            if s != row:
                ax.plot(its, hist[s], color="#7f8590", lw=0.6, alpha=0.6)
        if row is not None:
            ax.plot(its, hist[row], color="#f0a030", lw=1.8, label="this slice")
        ax.set_xlabel("iteration / epoch", fontsize=8)
        ax.set_ylabel("NLL", fontsize=8)
        ax.set_title("negative log-likelihood", fontsize=9)

    def _plot_hist(self, ax, fit, row: int, m: int, name: str, pixels) -> None:
        _style(ax)
        if pixels is None or pixels.size == 0:
            lo, hi = -3.0, 3.0
        else:
            values = pixels[:, m]
            lo, hi = np.percentile(values, [0.5, 99.5])
            pad = 0.15 * (hi - lo + 1e-6)
            lo, hi = lo - pad, hi + pad
            ax.hist(values, bins=60, range=(lo, hi), density=True, color="#8a8f99", alpha=0.55)
        grid = np.linspace(lo, hi, 300)
        curves = component_curves(fit, row, m, grid)
        classes = np.asarray(fit.component_to_class[row])
        for k in range(curves.shape[0]):
            c = int(classes[k]) if k < classes.size else -1
            if 0 <= c < len(CLASSES):
                ax.plot(grid, curves[k], color=CLASSES[c].color, lw=1.6, label=CLASSES[c].name)
            else:
                ax.plot(grid, curves[k], color=_FG, lw=1.0, ls="--", label=f"component {k}")
        ax.plot(grid, curves.sum(0), color="white", lw=0.8, ls=":", label="mixture")
        ax.set_title(f"{name} (normalised)", fontsize=9)
        ax.set_yticks([])
