"""Report dock widget: AHA 17-segment bullseye and table for a label layer, segment map layer.

All numbers come from :func:`napari_gmmseg.report.compute_report`; this widget
only moves arrays between napari layers and the core and draws the bullseye
with :func:`napari_gmmseg.report.figures.bullseye_figure`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_gmmseg._widgets._common import (
    META_KEY,
    LayerCombo,
    case_layer_name,
    case_of,
    dock_layout,
    fit_table_height,
    layer_spacing,
    report_errors,
    source_geometry,
)
from napari_gmmseg.errors import GeometryError, RoiError
from napari_gmmseg.labels import RV

if TYPE_CHECKING:
    import napari

#: Metadata key marking the segment-map layers this widget made (never offered as input).
SEGMENTS_KEY = "gmmseg_aha_segments"


#: Colours of the 17 AHA segments: blue (basal), teal-grey (mid), brown-grey (apical), light
#: grey (apex), light and dark in turn around each ring. None of them is a tissue colour
#: (green scar, yellow edema, red / purple blood pools).
SEGMENT_COLORS: dict[int, str] = {
    **{i: ("#3b6fb6", "#9ec5f0")[i % 2] for i in range(1, 7)},
    **{i: ("#4f7382", "#b2c8d2")[i % 2] for i in range(7, 13)},
    **{i: ("#7d6b58", "#cdbfae")[i % 2] for i in range(13, 17)},
    17: "#e0e0e0",
}


def segment_colormap():
    """The AHA segments' own label palette (:data:`SEGMENT_COLORS`, 0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = {0: "transparent", None: "transparent", **SEGMENT_COLORS}
    return DirectLabelColormap(color_dict=colors)


def _dark_theme(viewer) -> bool:
    """Whether napari shows a dark theme (the figure then draws light text)."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        background = theme.background.as_hex()
    except Exception:  # an unknown theme: assume napari's default, dark
        return True
    r, g, b = (int(background[i : i + 2], 16) for i in (1, 3, 5))
    return 0.299 * r + 0.587 * g + 0.114 * b < 128


def newest_segmentation(viewer):
    """The segmentation layer added last (a Segment dock output), or None."""
    import napari

    found = [
        lay
        for lay in viewer.layers
        if isinstance(lay, napari.layers.Labels)
        and META_KEY in lay.metadata
        and SEGMENTS_KEY not in lay.metadata
    ]
    return found[-1] if found else None


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, spec)


class ReportWidget(QWidget):
    """Dock widget: AHA bullseye (scar, edema % of segment), segment table, segment map layer.

    The report follows the chosen label layer: it is recomputed (debounced)
    whenever the layer's data changes or is painted.  The septum comes from the
    RV blood pool (600) of the label layer, else of the "RV from" layer (a manual
    mask), else from the first point of the "RV insertion" Points layer (the
    anterior RV insertion point).

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    COLUMNS = ("segment", "myocardium mL", "scar %", "edema %", "transmurality %")

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        import napari
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        super().__init__(parent)
        self.viewer = napari_viewer
        self.report = None
        self.segments_layer = None
        self._watched = None
        layout = dock_layout(self)
        form = QFormLayout()

        def is_input(lay) -> bool:
            return SEGMENTS_KEY not in lay.metadata

        self.label_layer = LayerCombo(napari_viewer, (napari.layers.Labels,), accept=is_input)
        self.label_layer.setToolTip("segmentation or manual mask with MyoPS values")
        self.rv_layer = LayerCombo(
            napari_viewer, (napari.layers.Labels,), accept=is_input, allow_none="(the label map)"
        )
        self.rv_layer.setToolTip("Labels layer whose RV blood pool (600) orients the septum")
        self.point_layer = LayerCombo(napari_viewer, (napari.layers.Points,), allow_none="(none)")
        self.point_layer.setToolTip("first point = anterior RV insertion, for slices without RV")
        form.addRow("Label map", self.label_layer)
        form.addRow("RV from", self.rv_layer)
        form.addRow("RV insertion", self.point_layer)
        layout.addLayout(form)
        self.auto = QCheckBox("update when the label map changes")
        self.auto.setChecked(True)
        layout.addWidget(self.auto)
        self.update_button = QPushButton("Update report")
        self.update_button.clicked.connect(self.update_report)
        layout.addWidget(self.update_button)
        self.figure = Figure(figsize=(4.4, 2.8), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(300)
        layout.addWidget(self.canvas)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        layout.addWidget(self.table)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        layout.addStretch(1)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self._auto_update)
        self.label_layer.currentIndexChanged.connect(self._watch)
        napari_viewer.layers.events.inserted.connect(self._follow_newest)
        napari_viewer.layers.events.removed.connect(self._clear_if_stale)
        self._watch()
        self._follow_newest()

    # ------------------------------------------------------------ the newest segmentation
    def _follow_newest(self, *_args) -> None:
        """Report on the newest segmentation (else whatever label map is listed first)."""
        self.label_layer.refresh()  # whatever order napari calls its listeners in
        newest = newest_segmentation(self.viewer)
        if newest is not None:
            self.label_layer.set_layer(newest)

    def _clear_if_stale(self, *_args) -> None:
        """Forget the report once its label map is gone (another case, or Clear)."""
        if self.report is None or self._watched in self.viewer.layers:
            return
        self.report = None
        self.figure.clear()
        self.canvas.draw_idle()
        self.table.setRowCount(0)
        self.summary.setText("")
        if self.segments_layer is not None and self.segments_layer in self.viewer.layers:
            self.viewer.layers.remove(self.segments_layer)
        self.segments_layer = None

    # ------------------------------------------------------------ following the layer
    def _watch(self, *_args) -> None:
        layer = self.label_layer.layer()
        if layer is self._watched:
            return
        self._disconnect()
        self._watched = layer
        if layer is not None:
            layer.events.data.connect(self._changed)
            if hasattr(layer.events, "paint"):
                layer.events.paint.connect(self._changed)

    def _disconnect(self) -> None:
        if self._watched is not None:
            for name in ("data", "paint"):
                ev = getattr(self._watched.events, name, None)
                if ev is not None:
                    ev.disconnect(self._changed)

    def _changed(self, *_args) -> None:
        if self.auto.isChecked():
            self._timer.start()

    def _auto_update(self) -> None:
        if self.label_layer.layer() is not None:
            self.update_report()

    # ------------------------------------------------------------ inputs
    def _insertion_point(self, layer) -> tuple[float, float, float] | None:
        points = self.point_layer.layer()
        if points is None or len(points.data) == 0:
            return None
        p = np.asarray(points.data[0], dtype=float)
        # the point's world position in the label layer's voxel grid
        p = np.asarray(layer.world_to_data(points.data_to_world(p)), dtype=float)
        z, y, x = p[-3:]
        return (float(x), float(y), float(z))

    def _geometry(self, layer, shape):
        from napari_gmmseg.io import Geometry

        geometry = source_geometry(layer)
        if geometry is not None and tuple(geometry.shape) == tuple(shape):
            return geometry, ""
        sz, sy, sx = layer_spacing(layer)
        note = "no source geometry: the layer scale is used, axis-aligned (check the handedness)"
        return Geometry.from_affine(np.diag([sx, sy, sz, 1.0]), shape), note

    # ------------------------------------------------------------ the report
    @report_errors
    def update_report(self) -> None:
        """Recompute the report of the chosen label layer; draw, tabulate, update the segment map."""
        from napari_gmmseg.report import compute_report
        from napari_gmmseg.report.figures import bullseye_figure

        layer = self.label_layer.layer()
        if layer is None:
            raise RoiError("no label map: open a segmentation or a manual mask (Labels layer)")
        labels = np.asarray(layer.data)
        if labels.ndim != 3:
            raise GeometryError(f"'{layer.name}' is {labels.ndim}-D; the report needs (Z, Y, X)")
        geometry, note = self._geometry(layer, labels.shape)
        rv, rv_note = self._rv_source(layer, labels)
        note = "; ".join(n for n in (note, rv_note) if n)
        rep = compute_report(
            labels,
            geometry.spacing_mm,
            geometry.affine,
            rv_insertion_xyz=self._insertion_point(layer),
            rv_zyx=rv,
        )
        self.report = rep
        self.figure.clear()
        bullseye_figure([(layer.name, rep)], fig=self.figure, dark=_dark_theme(self.viewer))
        self.canvas.draw_idle()
        self._fill_table(rep)
        self._segment_layer(layer, rep, geometry)
        t = rep.totals
        self.summary.setText(
            f"LV myocardium {t['myocardium_ml']:.1f} mL · scar {t['scar_ml']:.1f} mL "
            f"({_fmt(t['scar_pct'])} %) · edema {t['edema_ml']:.1f} mL ({_fmt(t['edema_pct'])} %)"
            f"\napex at the {rep.meta['apex']} ({rep.meta['apex_rule']})"
            + (f"\n{note}" if note else "")
        )

    def _rv_source(self, layer, labels: np.ndarray) -> tuple[np.ndarray | None, str]:
        """``(Z, Y, X)`` RV blood pool for the orientation (None: the label map's) and a note.

        The "RV from" layer when one is chosen; else, when the label map holds no RV (a
        segmentation of the LV ROI), the viewer's ``automatic ROI`` layer of the same
        shape, which found the RV with the LV.
        """
        from napari_gmmseg._widgets._autoroi import is_auto_layer

        rv_layer, note = self.rv_layer.layer(), ""
        if rv_layer is None and not (labels == RV.value).any():
            autos = [
                lay
                for lay in self.viewer.layers
                if is_auto_layer(lay) and np.shape(lay.data) == labels.shape
            ]
            if autos:
                rv_layer, note = autos[-1], f"RV from '{autos[-1].name}'"
        if rv_layer is None:
            return None, ""
        rv_data = np.asarray(rv_layer.data)
        if rv_data.shape != labels.shape:
            raise GeometryError(
                f"'{rv_layer.name}' {rv_data.shape} and '{layer.name}' {labels.shape} differ"
            )
        return rv_data == RV.value, note

    def _fill_table(self, rep) -> None:
        rows = [r for r in rep.segments if r["present"]]
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            cells = (
                f"{r['segment']} {r['name']}",
                _fmt(r["myocardium_ml"], ".2f"),
                _fmt(r["scar_pct"]),
                _fmt(r["edema_pct"]),
                _fmt(r["scar_transmurality_pct"], ".0f"),
            )
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(text))
        fit_table_height(self.table)

    def _segment_layer(self, layer, rep, geometry) -> None:
        from napari_gmmseg._reader import CASE_ID_KEY, GEOMETRY_KEY
        from napari_gmmseg.report.segments import SEGMENT_NAMES

        case = case_of(layer)
        name = case_layer_name(case, "AHA segments")
        features = {"index": np.arange(18), "segment": ["", *SEGMENT_NAMES[1:]]}
        target = self.segments_layer
        if target is None or target not in self.viewer.layers:
            # hidden, under the tissues, in a palette of its own (not the tissue colours)
            target = self.viewer.add_labels(
                rep.segments_zyx,
                name=name,
                scale=layer.scale,
                translate=layer.translate,
                opacity=0.5,
                visible=False,
                colormap=segment_colormap(),
                metadata={SEGMENTS_KEY: True, GEOMETRY_KEY: geometry, CASE_ID_KEY: case},
                features=features,
            )
            index = list(self.viewer.layers).index(layer)
            self.viewer.layers.move(list(self.viewer.layers).index(target), index)
            self.segments_layer = target
        else:
            target.data = rep.segments_zyx
            target.name = name
        self.label_layer.set_layer(layer)

    def closeEvent(self, event) -> None:
        self._disconnect()
        super().closeEvent(event)
