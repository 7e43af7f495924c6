"""Segment dock widget: channels + ROI + method -> a tissue Labels layer, filled in live.

The widget only gathers arrays and options from the viewer and calls
:func:`napari_gmmseg.segment.segment` in a napari thread worker; every number
comes from the core.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtGui import QDoubleValidator
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_gmmseg import __version__
from napari_gmmseg._widgets._autoroi import (
    AUTO_CHOICE,
    AUTO_LAYER_NAME,
    add_auto_layer,
    is_auto_layer,
    roi_of_auto_layer,
)
from napari_gmmseg._widgets._common import (
    FIT_KEY,
    INPUTS_KEY,
    META_KEY,
    CheckList,
    LayerCombo,
    case_layer_name,
    case_of,
    dock_layout,
    fit_table_height,
    layer_spacing,
    report_errors,
    show_error,
    show_info,
    tissue_colormap,
    tissue_features,
    value_name,
)
from napari_gmmseg._widgets._options import MethodOptionsForm
from napari_gmmseg._widgets._roi import channel_name, roi_from_shapes
from napari_gmmseg._widgets._worker import CoreError, SegmentRequest, segment_job
from napari_gmmseg.autoroi import format_qc
from napari_gmmseg.errors import GeometryError, GmmSegError, ModelError, RoiError
from napari_gmmseg.labels import CLASSES, LV_ROI_VALUES, SCAR
from napari_gmmseg.labels import DEFAULT_CHANNELS as _CASE_CHANNELS
from napari_gmmseg.methods import DEFAULT_METHOD, METHODS, DeepOptions
from napari_gmmseg.presence import PresenceRule
from napari_gmmseg.segment import segment as segment_fn

if TYPE_CHECKING:
    import napari

    from napari_gmmseg.fit import Fit, Progress

#: (label shown, ``segment`` method name), from the registry.
METHOD_CHOICES: tuple[tuple[str, str], ...] = tuple((s.label, n) for n, s in METHODS.items())
DEEP_METHODS = tuple(n for n, s in METHODS.items() if s.family == "deep")
#: Iteration / epoch limits shown when the method family changes (the API defaults).
_EM_MAX_ITER = inspect.signature(segment_fn).parameters["max_iter"].default
_DEEP_MAX_EPOCHS = DeepOptions().max_epochs

#: The sequences ticked as channels by default.
DEFAULT_CHANNELS = _CASE_CHANNELS


class SegmentWidget(QWidget):
    """Dock widget: segment scar and edema inside an ROI with GMM, SVGMM or a deep method.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers are read and written.
    """

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.last_output = None
        self._stop = threading.Event()
        self._request: SegmentRequest | None = None
        self._roi_shown = None

        layout = dock_layout(self)
        # The burden first, in large type: the clinical answer is what the user looks for.
        self.headline = QLabel("")
        self.headline.setObjectName("burden_headline")
        self.headline.setWordWrap(True)
        font = self.headline.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        self.headline.setFont(font)
        self.headline.setVisible(False)
        layout.addWidget(self.headline)

        self._build_input(layout, napari_viewer)
        self._build_model(layout)
        self._build_run(layout)

        # wiring
        self.roi_layer.currentIndexChanged.connect(self._roi_changed)
        self.method.currentIndexChanged.connect(self._method_changed)
        events = napari_viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._refresh_channels)
        events.removed.connect(self._clear_if_stale)
        events.inserted.connect(self._clear_if_stale)
        self._refresh_channels()
        self._roi_changed()
        self._method_changed()

    # ---------------------------------------------------------------- form
    def _build_input(self, layout, napari_viewer) -> None:
        """Input box: channel layers and the ROI (Labels values or Shapes)."""
        import napari

        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.channel_list = CheckList(rows=5)
        self.channel_list.setToolTip("Image layers used as channels (same shape)")
        form.addRow("Channels", self.channel_list)

        self.roi_layer = LayerCombo(
            napari_viewer,
            (napari.layers.Labels, napari.layers.Shapes),
            accept=self._roi_ok,
            extra=AUTO_CHOICE,
        )
        self.roi_layer.setToolTip(
            "Labels layer (choose its values below), Shapes layer with a polygon, or "
            "automatic: LV found from the bSSFP layer, added as an editable Labels layer"
        )
        form.addRow("ROI", self.roi_layer)
        self.roi_values = CheckList(rows=5)
        self.roi_values.setToolTip("Label values that make up the region of interest")
        self.roi_all_slices = QCheckBox("polygon on every slice")
        self.roi_all_slices.setToolTip(
            "Use the drawn shape on all slices (otherwise only on the slice it was drawn on)"
        )
        self.roi_hint = QLabel(
            f"Run adds the LV found in bSSFP as '<case> {AUTO_LAYER_NAME}' (edit it with the "
            "brush; a re-run uses it)"
        )
        self.roi_hint.setWordWrap(True)
        self.roi_qc = QLabel("")
        self.roi_qc.setWordWrap(True)
        self.roi_qc.setVisible(False)
        for w in (self.roi_values, self.roi_all_slices, self.roi_hint, self.roi_qc):
            form.addRow("", w)
        layout.addWidget(box)

    def _build_model(self, layout) -> None:
        """Model box: method, model file, K / seed / restarts, device, tolerance, options."""
        box = QGroupBox("Model")
        form = QFormLayout(box)
        self.method = QComboBox()
        for text, value in METHOD_CHOICES:
            self.method.addItem(text, value)
        self.method.setCurrentIndex(self.method.findData(DEFAULT_METHOD))
        form.addRow("Method", self.method)
        file_row = QHBoxLayout()
        self.model_file = QLineEdit()
        self.model_file.setPlaceholderText("weights (.pt), optional")
        self.model_browse = QPushButton("…")
        self.model_browse.setFixedWidth(28)
        self.model_browse.clicked.connect(self._browse_model)
        file_row.addWidget(self.model_file)
        file_row.addWidget(self.model_browse)
        self.model_file_label = QLabel("Model file")
        form.addRow(self.model_file_label, file_row)

        self.n_classes = QSpinBox()
        self.n_classes.setRange(2, 8)
        self.n_classes.setValue(4)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setValue(0)
        self.n_init = QSpinBox()
        self.n_init.setRange(1, 50)
        self.n_init.setValue(1)
        self.n_init.setToolTip(
            "EM restarts per slice (gmm, svgmm), fitted together; each slice keeps the "
            "restart with the lowest NLL. 5 makes the result far less dependent on the seed "
            "(README, 'Restarts')."
        )
        row = QHBoxLayout()  # two short rows, so the dock stays narrow
        row.addWidget(self.n_classes)
        self.n_init_label = QLabel("restarts")
        row.addWidget(self.n_init_label)
        row.addWidget(self.n_init)
        row.addStretch(1)
        form.addRow("K", row)
        form.addRow("Seed", self.seed)

        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.per_slice = QComboBox()
        self.per_slice.addItem("per slice", True)
        self.per_slice.addItem("volume", False)
        row = QHBoxLayout()
        row.addWidget(self.device)
        row.addWidget(self.per_slice)
        form.addRow("Device", row)

        self.tol = QLineEdit("1e-3")
        validator = QDoubleValidator(0.0, 1e6, 12, self.tol)
        validator.setNotation(QDoubleValidator.Notation.ScientificNotation)
        self.tol.setValidator(validator)
        self.tol.setToolTip(
            "A slice stops when its NLL changes by less than this between iterations (0: never)"
        )
        self.max_iter = QSpinBox()
        self.max_iter.setRange(1, 100000)
        self.max_iter.setValue(_EM_MAX_ITER)
        row = QHBoxLayout()
        row.addWidget(self.tol)
        self.max_iter_label = QLabel("max iter")
        row.addWidget(self.max_iter_label)
        row.addWidget(self.max_iter)
        form.addRow("Tolerance", row)

        # The chosen method's own options, built from its options dataclass (magicgui).
        self.options_form = MethodOptionsForm()
        form.addRow(self.options_form.native)
        self._build_presence(form)
        layout.addWidget(box)

    def _build_presence(self, form) -> None:
        """Presence row (fixed K, or drop an absent scar class) and the probability maps."""
        # Class presence (napari_gmmseg.presence): fixed K as the paper, or drop a scar
        # class that shows no LGE enhancement beyond blood/myocardium partial volume.
        self.presence = QComboBox()
        self.presence.addItem("fixed K (paper)", "none")
        self.presence.addItem("drop absent scar (pv-contrast)", "pv-contrast")
        self.presence.setToolTip(
            "Per-slice class presence: 'drop absent scar' removes the scar class of a slice "
            "whose scar component is not enhanced on LGE beyond the blood/myocardium "
            "partial-volume line (threshold in SDs of remote myocardium), then keeps scar "
            "pixels above remote + gate SDs. See docs/quality.md for its measured effect."
        )
        self.scar_threshold = QDoubleSpinBox()
        self.scar_threshold.setRange(0.0, 20.0)
        self.scar_threshold.setSingleStep(0.1)
        self.scar_threshold.setValue(PresenceRule().scar_threshold)
        self.scar_threshold.setToolTip("scar threshold, SDs of remote myocardium")
        self.scar_gate = QDoubleSpinBox()
        self.scar_gate.setRange(0.0, 20.0)
        self.scar_gate.setSingleStep(0.5)
        self.scar_gate.setValue(PresenceRule().scar_gate_n_sd or 0.0)
        self.scar_gate.setSpecialValueText("no gate")
        self.scar_gate.setToolTip("pixel gate on LGE, SDs above remote myocardium (0: off)")
        form.addRow("Presence", self.presence)
        row = QHBoxLayout()  # threshold and gate (their tooltips say which is which)
        row.addWidget(self.scar_threshold)
        row.addWidget(self.scar_gate)
        row.addStretch(1)
        form.addRow("", row)
        self.presence.currentIndexChanged.connect(self._presence_changed)
        self._presence_changed()
        self.probabilities = QCheckBox("add probability maps")
        form.addRow("", self.probabilities)

    def _build_run(self, layout) -> None:
        """Run / Cancel, progress, status and the volume table."""
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        layout.addWidget(self.progress)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["class", "voxels", "mL"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        fit_table_height(self.table)
        layout.addWidget(self.table)
        # The clinical read-out and the error measured for it (or that none was).
        self.burden = QLabel("")
        self.burden.setWordWrap(True)
        self.burden.setObjectName("burden")
        layout.addWidget(self.burden)
        layout.addStretch(1)

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _roi_ok(layer) -> bool:
        return not layer.metadata.get(META_KEY)  # our own outputs are not ROIs

    def _image_layers(self) -> list[Any]:
        import napari

        return [
            lay
            for lay in self.viewer.layers
            if isinstance(lay, napari.layers.Image)
            and not lay.rgb
            and lay.ndim in (2, 3)
            and not lay.metadata.get(META_KEY)  # our probability maps
        ]

    def _refresh_channels(self, *_args) -> None:
        layers = self._image_layers()
        previous = self.channel_list.objects()
        keep = set(map(id, self.channel_list.checked()))
        entries = []
        for lay in layers:
            checked = id(lay) in keep if lay in previous else channel_name(lay) in DEFAULT_CHANNELS
            name = channel_name(lay)
            text = lay.name if name == lay.name else f"{lay.name}  [{name}]"
            entries.append((text, lay, checked))
        self.channel_list.set_entries(entries)

    def _roi_changed(self, *_args) -> None:
        import napari

        layer = self.roi_layer.layer()
        if layer is self._roi_shown and layer is not None:
            return  # a re-listing of the same layer keeps the user's choice of values
        self._roi_shown = layer
        if is_auto_layer(layer):
            self._show_roi_option(None)  # its QC, once computed
        elif isinstance(layer, napari.layers.Labels):
            values = np.unique(np.asarray(layer.data))
            values = [int(v) for v in values if v != 0]
            default = [v for v in values if v in LV_ROI_VALUES] or values
            self.roi_values.set_entries((value_name(v), v, v in default) for v in values)
            self._show_roi_option(self.roi_values)
        elif isinstance(layer, napari.layers.Shapes):
            self._show_roi_option(self.roi_all_slices)
        else:
            self._show_roi_option(self.roi_hint)

    def _show_roi_option(self, widget) -> None:
        for w in (self.roi_values, self.roi_all_slices, self.roi_hint):
            w.setVisible(w is widget)
        self.roi_qc.setVisible(is_auto_layer(self.roi_layer.layer()) and bool(self.roi_qc.text()))

    def _method_changed(self, *_args) -> None:
        method = self.method.currentData()
        self.options_form.show_method(method)
        deep = method in DEEP_METHODS
        has_file = deep or METHODS[method].accepts("model")
        self.model_file.setEnabled(has_file)
        self.model_browse.setEnabled(has_file)
        if method == "deepsvg-mu":
            self.model_file.setPlaceholderText("mu_data .json or weights .pt (optional)")
        elif deep:
            self.model_file.setPlaceholderText("trained weights .pt (optional)")
        elif has_file:
            self.model_file.setPlaceholderText("model .npz (optional; default: the shipped one)")
        else:
            self.model_file.setPlaceholderText("— (deep methods and the learned models only)")
        self.max_iter_label.setText("max epochs" if deep else "max iter")
        # A pipeline carries its own classes and iterations: its rows are greyed out and
        # not sent (segment() would warn that it ignores them).
        engine = METHODS[method].family != "pipeline"
        for widget in (self.n_classes, self.tol, self.max_iter, self.max_iter_label):
            widget.setEnabled(engine)
        self.per_slice.setEnabled(engine)
        restarts = METHODS[method].accepts("n_init")
        self.n_init.setEnabled(restarts)
        self.n_init_label.setEnabled(restarts)
        if deep and self.max_iter.value() == _EM_MAX_ITER:
            self.max_iter.setValue(_DEEP_MAX_EPOCHS)
        elif not deep and self.max_iter.value() == _DEEP_MAX_EPOCHS:
            self.max_iter.setValue(_EM_MAX_ITER)

    def _presence_changed(self, *_: Any) -> None:
        active = self.presence.currentData() != "none"
        self.scar_threshold.setEnabled(active)
        self.scar_gate.setEnabled(active)

    def _presence_rule(self) -> PresenceRule | None:
        """The presence rule chosen in the dock, or None for fixed K."""
        if self.presence.currentData() == "none":
            return None
        gate = self.scar_gate.value()
        return PresenceRule(
            rule=self.presence.currentData(),
            scar_threshold=self.scar_threshold.value(),
            scar_gate_n_sd=gate if gate > 0 else None,
        )

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model file", "", "Model files (*.pt *.pth *.json *.npz);;All files (*)"
        )
        if path:
            self.model_file.setText(path)

    # ---------------------------------------------------------------- request
    def build_request(self) -> SegmentRequest:
        """Read the chosen layers and options into a :class:`SegmentRequest`.

        Raises
        ------
        ModelError, GeometryError, RoiError
            No channel, layers of different shapes, a missing or empty ROI, or a
            deep option missing.
        """
        import napari

        layers = self.channel_list.checked()
        if not layers:
            raise ModelError("choose at least one image layer as a channel")
        shapes = {lay.name: tuple(lay.data.shape[-3:]) for lay in layers}
        if len(set(shapes.values())) > 1:
            listing = ", ".join(f"'{n}' {s}" for n, s in shapes.items())
            raise GeometryError(f"channel layers have different shapes: {listing}")
        reference = layers[0]
        vols = []
        for lay in layers:
            arr = np.asarray(lay.data, dtype=np.float32)
            vols.append(arr[None] if arr.ndim == 2 else arr)
        images = np.stack(vols, axis=-1)
        zyx = images.shape[:3]

        roi_layer = self.roi_layer.layer()
        channels = tuple(channel_name(lay) for lay in layers)
        if roi_layer is None and self.roi_layer.currentText() == AUTO_CHOICE:
            roi_layer, _ = add_auto_layer(self.viewer, images, channels, reference)
            self.roi_layer.set_layer(roi_layer)
        if roi_layer is None:
            raise RoiError("no ROI: choose a Labels layer or draw a polygon in a Shapes layer")
        if is_auto_layer(roi_layer):
            if np.asarray(roi_layer.data).shape[-3:] != zyx:
                raise GeometryError(f"'{roi_layer.name}' does not match the channels {zyx}")
            roi, qc = roi_of_auto_layer(roi_layer, reference)
            self.roi_qc.setText(format_qc(qc))
            self.roi_qc.setVisible(True)
            skipped = [q.slice for q in qc if not q.ok]
            description = f"{roi_layer.name} (QC skipped slices {skipped or 'none'})"
            roi_source = "auto"
            if not roi.any():
                raise RoiError(f"'{roi_layer.name}' fails QC on every slice:\n{format_qc(qc)}")
        elif isinstance(roi_layer, napari.layers.Labels):
            data = np.asarray(roi_layer.data)
            data = data[None] if data.ndim == 2 else data
            if data.shape != zyx:
                raise GeometryError(
                    f"ROI layer '{roi_layer.name}' has shape {data.shape} but the channels "
                    f"have {zyx}"
                )
            values = self.roi_values.checked()
            if not values:
                raise RoiError(f"choose at least one label value of '{roi_layer.name}' as ROI")
            roi = np.isin(data, values)
            description = f"{roi_layer.name} values {values}"
            roi_source = "manual"
        else:
            roi = roi_from_shapes(roi_layer, reference, zyx, self.roi_all_slices.isChecked())
            description = f"{roi_layer.name} shapes"
            roi_source = "manual"
        if not roi.any():
            raise RoiError(f"the ROI from '{roi_layer.name}' is empty")

        method = self.method.currentData()
        kwargs: dict[str, Any] = {
            "method": method,
            "seed": self.seed.value(),
            "device": self.device.currentText(),
            "presence": self._presence_rule(),
        }
        engine = METHODS[method].family != "pipeline"  # a pipeline has its own K, iterations
        if engine:
            kwargs["n_classes"] = self.n_classes.value()
            kwargs["tol"] = self._tolerance()
            kwargs["per_slice"] = bool(self.per_slice.currentData())
        limit = self.max_iter.value()
        if method in DEEP_METHODS:
            kwargs["max_epochs"] = limit
            kwargs["min_epochs"] = min(limit, DeepOptions().min_epochs)
        elif engine:
            kwargs["max_iter"] = limit
            if self.n_init.value() > 1 and METHODS[method].accepts("n_init"):
                kwargs["n_init"] = self.n_init.value()
        kwargs.update(self._model_file_options(method))
        kwargs.update(self.options_form.values())
        return SegmentRequest(
            images=images,
            roi=roi,
            channels=channels,
            channel_layers=list(layers),
            reference=reference,
            kwargs=kwargs,
            roi_description=description,
            output_name=case_layer_name(case_of(reference), method),
            want_probabilities=self.probabilities.isChecked(),
            roi_source=roi_source,
        )

    def _tolerance(self) -> float:
        try:
            tol = float(self.tol.text())
        except ValueError:
            raise ModelError(f"tolerance must be a number, got {self.tol.text()!r}") from None
        if not np.isfinite(tol) or tol < 0:
            raise ModelError(f"tolerance must be >= 0, got {tol}")
        return tol

    def _model_file_options(self, method: str) -> dict[str, Any]:
        """``weights=`` for a trained model file, ``mu_data=`` for a JSON table of class means,
        ``model=`` for a tissue classifier ``.npz``."""
        from pathlib import Path

        takes_model = METHODS[method].accepts("model")
        if method not in DEEP_METHODS and not takes_model:
            return {}
        text = self.model_file.text().strip()
        if not text:
            return {}  # Algorithm 3 / the shipped classifier
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        if takes_model:
            return {"model": str(path)}
        if path.suffix.lower() == ".json":
            return {"mu_data": path}
        return {"weights": path}

    # ---------------------------------------------------------------- running
    @property
    def running(self) -> bool:
        """True while a segmentation runs."""
        return self.worker is not None

    @report_errors
    def run(self) -> None:
        """Start segmenting with the current choices (Run button)."""
        if self.running:
            return
        request = self.build_request()
        self.start(request)

    def start(self, request: SegmentRequest):
        """Run ``request`` in a napari thread worker; returns the worker."""
        from napari.qt.threading import create_worker

        self._stop = threading.Event()
        self._request = request
        total = (
            int(request.roi.any(axis=(1, 2)).sum()) if request.kwargs.get("per_slice", True) else 1
        )
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m slices")
        self.status.setText("starting…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        # Collect garbage here, in the GUI thread: a collection triggered later in the
        # worker threads must never finalise Qt objects left over from closed widgets.
        gc.collect()
        worker = create_worker(segment_job, request, self._stop, _start_thread=False)
        worker.yielded.connect(self._worker_yielded)
        worker.returned.connect(self._worker_returned)
        worker.errored.connect(self._worker_failed)
        worker.aborted.connect(self._worker_failed)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()
        return worker

    # Slots of the running worker; the request is the one captured when Run was pressed.
    def _worker_yielded(self, p: Progress) -> None:
        if self._request is not None:
            self._on_progress(self._request, p)

    def _worker_returned(self, outcome) -> None:
        if self._request is not None:
            self._on_returned(self._request, outcome)

    def _worker_failed(self, *_args) -> None:
        if self._request is not None:
            self._discard(self._request)

    def cancel(self, *_args) -> None:
        """Ask the running fit to stop after its current iteration/epoch; keeps finished slices."""
        if self.running:
            self._stop.set()
            self.cancel_button.setEnabled(False)
            self.status.setText("cancelling… (finished slices are kept)")

    def _on_progress(self, request: SegmentRequest, p: Progress) -> None:
        total = max(int(p.slices_total), 1)
        self.progress.setRange(0, total)
        self.progress.setValue(int(p.slices_done))
        elapsed = time.perf_counter() - request.started
        left = self._time_left(request, p, elapsed)
        nll = "" if not np.isfinite(p.nll) else f" · NLL {p.nll:.3f}"
        self.status.setText(
            f"{p.slices_done}/{p.slices_total} slices · iteration {p.iteration}{nll} · {left}"
        )
        partial = p.partial
        if partial is not None and p.slices_done > request.written:
            finished = np.asarray(p.finished, dtype=np.int64)
            layer = self._output_layer(request, np.zeros(request.roi.shape, np.int32))
            if finished.size and finished.min() >= 0:
                layer.data[finished] = partial.labels[finished]
            else:  # whole-volume fits report no slice indices
                layer.data[...] = partial.labels
            layer.refresh()
            request.written = int(p.slices_done)

    @staticmethod
    def _time_left(request: SegmentRequest, p: Progress, elapsed: float) -> str:
        estimates = []
        if p.slices_done > 0:
            estimates.append(elapsed / p.slices_done * (p.slices_total - p.slices_done))
        limit = request.kwargs.get("max_iter", request.kwargs.get("max_epochs", 0))
        if p.iteration > 0:
            estimates.append(elapsed / p.iteration * max(limit - p.iteration, 0))
        if not estimates:
            return "estimating time left…"
        return f"~{min(estimates):.0f} s left"

    def _output_layer(self, request: SegmentRequest, data: np.ndarray):
        if request.output is None:
            ref = request.reference
            request.output = self.viewer.add_labels(
                data,
                name=request.output_name,
                colormap=tissue_colormap(),
                scale=ref.scale,
                translate=ref.translate,
                rotate=ref.rotate,
                shear=ref.shear,
                opacity=0.6,
                metadata={META_KEY: {"running": True}},
            )
            request.output.selected_label = SCAR.value  # the brush starts on a tissue
        return request.output

    def _discard(self, request: SegmentRequest) -> None:
        if request.output is not None and request.output in self.viewer.layers:
            self.viewer.layers.remove(request.output)
        request.output = None

    def _on_returned(self, request: SegmentRequest, outcome) -> None:
        if isinstance(outcome, CoreError):
            self._discard(request)
            show_error(str(outcome.error))
            self.status.setText(f"error: {outcome.error}")
            return
        if outcome.cancelled and not np.any(outcome.finished):  # e.g. a deep run: no empty layer
            self._discard(request)
            self.progress.setValue(0)
            self.status.setText("cancelled before any slice finished: nothing kept")
            return
        try:
            layer = self._finish(request, outcome)
        except GmmSegError as exc:
            self._discard(request)
            show_error(str(exc))
            return
        self.last_output = layer
        done = int(np.count_nonzero(outcome.finished))
        total = int(outcome.finished.size)
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        if outcome.cancelled:
            msg = f"cancelled: kept {done} of {total} slices in '{layer.name}'"
            show_info(msg)
        else:
            msg = f"done in {outcome.seconds:.1f} s: {total} slices in '{layer.name}'"
        self.status.setText(msg)

    def _finish(self, request: SegmentRequest, fit: Fit):
        """Write a finished (or cancelled) fit into its output layer and add the extras."""
        labels = np.asarray(fit.labels, dtype=np.int32)
        layer = self._output_layer(request, labels)
        layer.data = labels
        ref = request.reference
        spacing = layer_spacing(ref)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        features = tissue_features(labels, voxel_ml)
        layer.features = features
        from napari_gmmseg._reader import CHANNEL_KEY, SOURCE_KEY

        metadata = dict(ref.metadata)  # the source geometry and case id, for Export
        metadata.pop(CHANNEL_KEY, None)
        metadata.pop(SOURCE_KEY, None)
        metadata[META_KEY] = {
            "method": fit.method,
            "params": dict(fit.params),
            "options": {
                k: (
                    str(v)
                    if k in ("weights", "mu_data")
                    else dataclasses.asdict(v)
                    if isinstance(v, PresenceRule)
                    else v
                )
                for k, v in request.kwargs.items()
            },
            "seed": request.kwargs["seed"],
            "version": __version__,
            "channels": list(request.channels),
            "channel_layers": [lay.name for lay in request.channel_layers],
            "roi": request.roi_description,
            "roi_source": request.roi_source,
            "seconds": float(fit.seconds),
            "slices_finished": int(np.count_nonzero(fit.finished)),
            "cancelled": bool(fit.cancelled),
            "spacing_mm": list(spacing),
        }
        metadata[FIT_KEY] = fit
        metadata[INPUTS_KEY] = {
            "images": request.images,
            "roi": request.roi,
            "channels": request.channels,
        }
        layer.metadata = metadata
        self._show_table(features)
        self._show_burden(fit, labels, spacing, request.roi_source)
        self._follow(layer, fit, request.roi_source)
        if request.want_probabilities and fit.probabilities is not None:
            self._add_probabilities(request, fit, layer)
        return layer

    def _clear_if_stale(self, *_args) -> None:
        """Clear the status and volume table once their layer is gone or another case is open."""
        from napari_gmmseg._reader import CASE_ID_KEY

        out = self.last_output
        if out is None or self.running:
            return
        case = out.metadata.get(CASE_ID_KEY)
        others = {lay.metadata.get(CASE_ID_KEY) for lay in self.viewer.layers} - {None, case}
        if out in self.viewer.layers and not others:
            return
        self.last_output = None
        self.table.setRowCount(0)
        fit_table_height(self.table)
        self.progress.setValue(0)
        self.status.setText("")
        self.burden.setText("")
        self.headline.setText("")
        self.headline.setVisible(False)

    def _follow(self, layer, fit: Fit, roi_source) -> None:
        """Numbers follow the labels: the table and burden are recomputed on every edit."""
        old = getattr(self, "_followed", None)
        if old is not None:
            for name in ("data", "paint"):
                getattr(old[0].events, name).disconnect(self._labels_edited)
        self._followed = (layer, fit, roi_source)
        layer.events.data.connect(self._labels_edited)
        layer.events.paint.connect(self._labels_edited)

    def _labels_edited(self, *_args) -> None:
        layer, fit, roi_source = self._followed
        if self.running or layer is not self.last_output:
            return
        labels = np.asarray(layer.data)
        spacing = layer_spacing(layer)
        self._show_table(tissue_features(labels, float(np.prod(spacing)) / 1000.0))
        edited = not np.array_equal(labels, fit.labels)
        self._show_burden(fit, labels, spacing, roi_source, edited=edited)

    def _show_burden(
        self, fit: Fit, labels: np.ndarray, spacing, roi_source, edited: bool = False
    ) -> None:
        from napari_gmmseg.accuracy import accuracy_note, labels_summary

        summary = labels_summary(labels, spacing, fit.params, roi_source)
        note = accuracy_note(fit.params, roi_source)
        prefix = "Partial (cancelled): " if fit.cancelled else ""
        prefix += "Edited labels: " if edited else ""
        self.headline.setText(f"{prefix}{summary.headline()}")
        self.headline.setVisible(True)
        self.burden.setText(f"{prefix}{summary.line()}.\n{note}")

    def _show_table(self, features) -> None:
        self.table.setRowCount(len(features))
        for i, row in enumerate(features.itertuples(index=False)):
            self.table.setItem(i, 0, QTableWidgetItem(str(row[1])))
            self.table.setItem(i, 1, QTableWidgetItem(f"{row[2]:d}"))
            self.table.setItem(i, 2, QTableWidgetItem(f"{row[3]:.2f}"))
        fit_table_height(self.table)

    def _add_probabilities(self, request: SegmentRequest, fit: Fit, layer) -> None:
        from napari.utils.colormaps import Colormap

        probs = np.asarray(fit.probabilities, dtype=np.float32)
        for k, tissue in enumerate(CLASSES[: probs.shape[-1]]):
            r, g, b, _ = tissue.color
            cmap = Colormap([[0, 0, 0, 0], [r, g, b, 1]], name=f"gmmseg {tissue.name}")
            self.viewer.add_image(
                probs[..., k],
                name=f"{layer.name} p({tissue.name})",
                colormap=cmap,
                contrast_limits=(0.0, 1.0),
                blending="additive",
                visible=False,
                scale=layer.scale,
                translate=layer.translate,
                rotate=layer.rotate,
                shear=layer.shear,
                metadata={META_KEY: {"probability_of": tissue.name, "labels": layer.name}},
            )

    def _on_finished(self) -> None:
        self.worker = None
        self._request = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def closeEvent(self, event) -> None:
        """Stop a running fit when the dock closes."""
        self._stop.set()
        super().closeEvent(event)
