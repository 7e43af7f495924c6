"""Refine dock: tissue scribbles on a segmentation, Refine in a worker, undo / redo.

The dock ties a ``<segmentation> scribbles`` Labels layer to a segmentation made by the
Segment dock (whose layer keeps the :class:`~napari_gmmseg.fit.Fit` and its images). The
brush paints tissue values in the tissue colours (it starts on scar; an eraser is in the
tissue list). **Refine** refits, in a worker thread, only the slices whose strokes changed
since the last refine (:func:`napari_gmmseg.refine.refine` of the segmentation's fit with
every stroke of those slices, merged into the current result), so the result always equals
``refine(fit, scribbles)``; the segmentation layer's data is then replaced, which the
Segment, Evaluate and Report docks follow. **Undo** / **Redo** step through the history of
refinements and brush edits (both layers restored together).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QWidget,
)

from napari_gmmseg._widgets._common import (
    FIT_KEY,
    INPUTS_KEY,
    META_KEY,
    LayerCombo,
    dock_layout,
    layer_spacing,
    report_errors,
    show_info,
    tissue_colormap,
)
from napari_gmmseg.errors import RoiError
from napari_gmmseg.labels import BLOOD, EDEMA, MYOCARDIUM, SCAR

if TYPE_CHECKING:
    import napari

#: Metadata key of a scribbles layer: the name of the segmentation it belongs to.
SCRIBBLES_KEY = "gmmseg_scribbles_of"
#: The brush's choices: (label, value); value None is the eraser.
BRUSHES: tuple[tuple[str, int | None], ...] = (
    (SCAR.name, SCAR.value),
    (EDEMA.name, EDEMA.value),
    ("healthy " + MYOCARDIUM.name, MYOCARDIUM.value),
    (BLOOD.name, BLOOD.value),
    ("eraser", None),
)


def refine_job(base, current, strokes: np.ndarray, slices: list[int], images, spacing):
    """Generator run by the worker: refine slice by slice, yield ``(done, total)``, return the Fit.

    ``slices`` are those whose strokes changed since ``current`` was made; a slice whose
    strokes were all erased gets the base fit's slice back.
    """
    from napari_gmmseg.refine import merge_refined, refine

    out = current
    for i, z in enumerate(slices):
        only = np.zeros_like(strokes)
        only[z] = strokes[z]
        if only[z].any():
            out = merge_refined(out, refine(base, only, images, spacing_mm=spacing))
        else:  # every stroke erased: back to the fit
            out = _restore_slice(out, base, z)
        yield (i + 1, len(slices))
    return out


def _restore_slice(current, base, z: int):
    """``current`` with slice ``z`` of ``base`` (labels, components, probabilities)."""
    from napari_gmmseg.refine import _copy_fit

    out = _copy_fit(current)
    out.labels[z] = base.labels[z]
    out.components[z] = base.components[z]
    if out.probabilities is not None and base.probabilities is not None:
        out.probabilities[z] = base.probabilities[z]
    return out


class RefineWidget(QWidget):
    """Dock widget: scribble tissues on a segmentation and refine the slices they touch.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        import napari

        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.scribbles = None  # the scribbles layer
        self._seg = None  # the segmentation layer it belongs to
        self._history: list[dict[str, Any]] = []
        self._at = -1
        self._restoring = False
        layout = dock_layout(self)
        form = QFormLayout()
        self.seg_layer = LayerCombo(
            napari_viewer, (napari.layers.Labels,), accept=lambda lay: FIT_KEY in lay.metadata
        )
        self.seg_layer.setToolTip("a segmentation made by the Segment dock")
        form.addRow("Segmentation", self.seg_layer)
        self.brush = QComboBox()
        for name, value in BRUSHES:
            self.brush.addItem(name, value)
        self.brush.setToolTip("tissue the brush paints (the eraser removes strokes)")
        self.brush.currentIndexChanged.connect(self._brush_changed)
        form.addRow("Brush", self.brush)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.scribble_button = QPushButton("Scribble")
        self.scribble_button.setToolTip("add (or select) the scribbles layer of the segmentation")
        self.scribble_button.clicked.connect(self.start_scribbles)
        self.refine_button = QPushButton("Refine")
        self.refine_button.setToolTip("refit the slices whose strokes changed (strokes are kept)")
        self.refine_button.clicked.connect(self.refine)
        row.addWidget(self.scribble_button)
        row.addWidget(self.refine_button)
        layout.addLayout(row)
        row = QHBoxLayout()
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button = QPushButton("Redo")
        self.redo_button.clicked.connect(self.redo)
        row.addWidget(self.undo_button)
        row.addWidget(self.redo_button)
        layout.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        self.status = QLabel("Scribble: paint tissues on a segmentation, then Refine.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.burden = QLabel("")
        self.burden.setWordWrap(True)
        self.burden.setObjectName("burden")
        layout.addWidget(self.burden)
        layout.addStretch(1)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self._commit_brush)
        self._update_buttons()

    # ------------------------------------------------------------ scribbles layer
    @report_errors
    def start_scribbles(self, *_args) -> None:
        """Add the scribbles layer of the chosen segmentation (or select the existing one)."""
        seg = self._chosen_segmentation()
        if seg is None:
            raise RoiError("no segmentation: run the Segment dock first")
        if self._seg is not seg or self.scribbles not in self.viewer.layers:
            self._disconnect()
            self._seg = seg
            self.scribbles = self.viewer.add_labels(
                np.zeros(np.shape(seg.data), dtype=np.int32),
                name=f"{seg.name} scribbles",
                colormap=tissue_colormap(),
                scale=seg.scale,
                translate=seg.translate,
                rotate=seg.rotate,
                shear=seg.shear,
                metadata={SCRIBBLES_KEY: seg.name},
            )
            self.scribbles.brush_size = 3
            self.scribbles.events.paint.connect(self._brush_edited)
            self.scribbles.events.data.connect(self._brush_edited)
            seg.events.data.connect(self._show_burden)
            seg.events.paint.connect(self._show_burden)
            self._history = []
            self._at = -1
            self._push(seg.metadata[FIT_KEY])
        self.viewer.layers.selection.active = self.scribbles
        self._brush_changed()
        self.scribbles.mode = "erase" if self.brush.currentData() is None else "paint"
        self._show_burden()

    def _chosen_segmentation(self):
        """The picked segmentation, else the newest finished one (the picker is re-listed:
        a Segment-dock layer becomes a segmentation only when its fit ends)."""
        self.seg_layer.refresh()
        if self.seg_layer.layer() is None:
            finished = [lay for lay in self.viewer.layers if FIT_KEY in lay.metadata]
            if finished:
                self.seg_layer.set_layer(finished[-1])
        return self.seg_layer.layer()

    def _disconnect(self) -> None:
        if self.scribbles is not None:
            for name in ("paint", "data"):
                getattr(self.scribbles.events, name).disconnect(self._brush_edited)
        if self._seg is not None:
            for name in ("paint", "data"):
                getattr(self._seg.events, name).disconnect(self._show_burden)

    def _brush_changed(self, *_args) -> None:
        if self.scribbles is None:
            return
        value = self.brush.currentData()
        if value is None:
            self.scribbles.mode = "erase"
        else:
            self.scribbles.selected_label = int(value)
            self.scribbles.mode = "paint"

    def _brush_edited(self, *_args) -> None:
        if not self._restoring:
            self._timer.start()

    def _commit_brush(self) -> None:
        """A brush edit (debounced) becomes a history step."""
        if self.scribbles is None or not self._history:
            return
        if np.array_equal(self.scribbles.data, self._history[self._at]["scribbles"]):
            return
        self._push(self._history[self._at]["fit"])
        self.status.setText("strokes changed: Refine to refit their slices")

    # ------------------------------------------------------------ history
    def _push(self, fit) -> None:
        del self._history[self._at + 1 :]
        self._history.append(
            {
                "scribbles": np.array(self.scribbles.data, dtype=np.int32, copy=True),
                "labels": np.array(self._seg.data, copy=True),
                "fit": fit,
                "refined_strokes": self._refined_strokes(),
            }
        )
        self._at = len(self._history) - 1
        self._update_buttons()

    def _refined_strokes(self) -> np.ndarray:
        """The strokes the current result was refined with."""
        if self._history and self._at >= 0:
            return self._history[self._at]["refined_strokes"]
        return np.zeros(np.shape(self._seg.data), dtype=np.int32)

    def _restore(self, i: int) -> None:
        self._timer.stop()
        self._at = i
        state = self._history[i]
        self._restoring = True
        try:
            self.scribbles.data = state["scribbles"].copy()
            self._seg.data = state["labels"].copy()
        finally:
            self._restoring = False
        self._update_buttons()

    def undo(self, *_args) -> None:
        """Back one refinement or brush edit (both layers restored)."""
        self._commit_brush()
        if self._at > 0 and not self.running:
            self._restore(self._at - 1)
            self.status.setText("undone")

    def redo(self, *_args) -> None:
        """Forward one refinement or brush edit."""
        if self._at < len(self._history) - 1 and not self.running:
            self._restore(self._at + 1)
            self.status.setText("redone")

    def _update_buttons(self) -> None:
        busy = self.running
        self.undo_button.setEnabled(self._at > 0 and not busy)
        self.redo_button.setEnabled(0 <= self._at < len(self._history) - 1 and not busy)
        self.refine_button.setEnabled(self.scribbles is not None and not busy)

    # ------------------------------------------------------------ refine
    @property
    def running(self) -> bool:
        """True while a refine runs."""
        return self.worker is not None

    @report_errors
    def refine(self, *_args) -> None:
        """Refit, in a worker, the slices whose strokes changed since the last refine."""
        from napari.qt.threading import create_worker

        from napari_gmmseg.refine import check_scribbles

        if self.running:
            return
        if self.scribbles is None or self.scribbles not in self.viewer.layers:
            raise RoiError("no scribbles: press Scribble and paint tissues first")
        self._commit_brush()
        seg = self._seg
        strokes = check_scribbles(self.scribbles.data, np.shape(seg.data), name=self.scribbles.name)
        state = self._history[self._at]
        before = state["refined_strokes"]
        diff = (strokes != before).reshape(strokes.shape[0], -1).any(1)
        slices = [int(z) for z in np.nonzero(diff)[0]]
        if not slices:
            show_info("refine: no stroke changed since the last refine, nothing to refine")
            self.status.setText("no stroke changed since the last refine: nothing to refine")
            return
        base = seg.metadata[FIT_KEY]
        images = seg.metadata[INPUTS_KEY]["images"]
        job = refine_job(base, state["fit"], strokes, slices, images, layer_spacing(seg))
        self.worker = create_worker(lambda: (yield from job))
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(lambda fit: self._on_returned(fit, strokes, slices))
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.progress.setRange(0, len(slices))
        self.progress.setValue(0)
        self.status.setText(f"refining {len(slices)} slice(s)…")
        self._update_buttons()
        self.worker.start()

    def _on_progress(self, done_total) -> None:
        done, total = done_total
        self.progress.setValue(done)
        self.status.setText(f"refining: {done}/{total} slices")

    def _on_returned(self, fit, strokes: np.ndarray, slices: list[int]) -> None:
        before = np.asarray(self._seg.data)
        changed = int(np.count_nonzero(np.asarray(fit.labels) != before))
        where = ", ".join(str(z) for z in slices)
        self.worker = None  # the history step below is not a running refine's
        self._push(fit)
        self._history[self._at]["refined_strokes"] = strokes
        self._restoring = True
        try:
            self._seg.data = np.asarray(fit.labels, dtype=np.asarray(before).dtype)
        finally:
            self._restoring = False
        self._history[self._at]["labels"] = np.array(self._seg.data, copy=True)
        if changed:
            self.status.setText(f"refined slice(s) {where}: {changed} voxels changed")
        else:
            self.status.setText(f"refine changed nothing (slice(s) {where} refitted)")

    def _on_error(self, exc) -> None:
        from napari_gmmseg._widgets._common import show_error

        show_error(f"refine failed: {exc}")
        self.status.setText(f"refine failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self._update_buttons()

    # ------------------------------------------------------------ read-out
    def _show_burden(self, *_args) -> None:
        from napari_gmmseg.accuracy import labels_summary

        if self._seg is None:
            return
        fit = self._seg.metadata[FIT_KEY]
        roi = (self._seg.metadata.get(META_KEY) or {}).get("roi_source")
        summary = labels_summary(
            np.asarray(self._seg.data), layer_spacing(self._seg), fit.params, roi
        )
        self.burden.setText(f"{summary.line()}.")

    def closeEvent(self, event) -> None:
        """Stop following the layers when the dock closes."""
        self._disconnect()
        super().closeEvent(event)
