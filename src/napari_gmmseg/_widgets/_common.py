"""Pieces every dock widget shares: layer pickers, error reporting, label styling, metadata keys.

Nothing here computes a segmentation; it only moves arrays between napari
layers and the Qt-free core.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFrame,
    QListWidget,
    QListWidgetItem,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_gmmseg.errors import GmmSegError
from napari_gmmseg.labels import ALL_TISSUES, CLASSES, NAME_BY_VALUE

if TYPE_CHECKING:
    import napari

#: Metadata key of the widgets' own provenance record on an output Labels layer.
META_KEY = "gmmseg"
#: Metadata key of the in-memory :class:`napari_gmmseg.fit.Fit` behind an output layer.
FIT_KEY = "gmmseg_fit"
#: Metadata key of the (images, roi, channels) a fit was computed from (for Inspect).
INPUTS_KEY = "gmmseg_inputs"


def show_error(message: str) -> None:
    """Show ``message`` as a napari error notification (no traceback)."""
    from napari.utils.notifications import show_error as _show_error

    _show_error(message)


def show_info(message: str) -> None:
    """Show ``message`` as a napari information notification."""
    from napari.utils.notifications import show_info as _show_info

    _show_info(message)


def report_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a widget slot so a :class:`GmmSegError` becomes a notification (and the
    text of the widget's ``status`` label, when it has one).

    Qt passes extra arguments (``checked``) to ``clicked`` slots; they are
    dropped. Any other exception is a bug and propagates with its traceback.
    """

    @functools.wraps(func)
    def wrapper(self, *_args):
        try:
            return func(self)
        except GmmSegError as exc:
            show_error(str(exc))
            status = getattr(self, "status", None)
            if hasattr(status, "setText"):  # and in the dock itself, where the user looks
                status.setText(f"error: {exc}")
            return None

    return wrapper


# ---------------------------------------------------------------- one case at a time
#: Metadata keys that mark a layer as the plugin's (read by it or added by a dock).
_PLUGIN_KEYS = (
    "gmmseg_case_id",  # _reader.CASE_ID_KEY: every layer of a loaded case and its results
    META_KEY,  # a segmentation
    "gmmseg_auto_roi",  # _autoroi.AUTO_KEY
    "gmmseg_aha_segments",  # _report.SEGMENTS_KEY
)


def case_of(layer) -> str | None:
    """The case id a layer belongs to (the reader's metadata, copied onto every result)."""
    from napari_gmmseg._reader import CASE_ID_KEY

    value = getattr(layer, "metadata", {}).get(CASE_ID_KEY)
    return None if value is None else str(value)


def case_layer_name(case_id: str | None, what: str) -> str:
    """The name of a layer the plugin adds: short, by case (``"1001 tissue-classifier"``)."""
    return f"{case_id} {what}" if case_id else what


def is_plugin_layer(layer) -> bool:
    """True for a layer of a loaded case or one a dock added (ROI, segmentation, segments)."""
    meta = getattr(layer, "metadata", {}) or {}
    return any(meta.get(key) for key in _PLUGIN_KEYS)


def clear_case(viewer) -> int:
    """Remove every layer of the open case and every layer the plugin's docks added.

    The docks listen to the removals and clear their results. Returns how many layers went.
    """
    gone = [lay for lay in list(viewer.layers) if is_plugin_layer(lay)]
    for layer in reversed(gone):
        if layer in viewer.layers:  # a dock may have removed it already (Report: its AHA layer)
            viewer.layers.remove(layer)
    return len(gone)


def is_plugin_dock(dock) -> bool:
    """True for a dock widget holding one of the plugin's docks (napari may wrap it)."""
    inner = dock.inner_widget() if hasattr(dock, "inner_widget") else dock.widget()
    return bool(getattr(inner, "gmmseg_dock", False))


def tabify_with_plugin_docks(widget: QWidget) -> bool:
    """Put the dock holding ``widget`` in one tab group with the plugin's other docks.

    Called once the dock exists (napari wraps the widget after constructing it), whether it
    was opened by ``napari -w napari-gmmseg`` or from the Plugins menu: the docks then share
    one full-height column instead of stacking into strips.
    """
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    dock = widget.parent()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parent()
    if dock is None:
        return False  # not docked yet
    main = dock.parent()
    if not isinstance(main, QMainWindow):
        return False
    area = main.dockWidgetArea(dock)
    others = [
        d
        for d in main.findChildren(QDockWidget)
        if d is not dock
        and not d.isFloating()
        and not d.isHidden()
        and is_plugin_dock(d)
        and main.dockWidgetArea(d) == area
    ]
    if others:
        main.tabifyDockWidget(others[0], dock)
        dock.show()
        dock.raise_()
    return True


def schedule_tabify(widget: QWidget) -> None:
    """Mark ``widget`` as a plugin dock and tabify it once napari has docked it."""
    from qtpy.QtCore import QTimer

    widget.gmmseg_dock = True  # type: ignore[attr-defined]

    def later(tries: int = 20) -> None:
        try:
            docked = tabify_with_plugin_docks(widget)
        except RuntimeError:  # the widget was deleted before the event loop came round
            return
        if not docked and tries > 1:  # napari docks it a moment after constructing it
            QTimer.singleShot(50, lambda: later(tries - 1))

    QTimer.singleShot(0, later)


# ---------------------------------------------------------------- label styling


#: Height (px) a dock may shrink to; its content scrolls below that, so five docks and the
#: slice slider fit a 1000 px screen.
DOCK_MIN_HEIGHT = 120


class _ColumnScroll(QScrollArea):
    """A vertical-only scroll area that asks for its content's full width, so the dock is
    never narrower than what it shows (nothing cut on the right, no horizontal bar)."""

    def _content_width(self) -> int:
        content = self.widget()
        if content is None:
            return 0
        bar = self.verticalScrollBar().sizeHint().width()
        return content.minimumSizeHint().width() + bar + 2 * self.frameWidth()

    def minimumSizeHint(self):
        hint = super().minimumSizeHint()
        hint.setWidth(max(hint.width(), self._content_width()))
        hint.setHeight(DOCK_MIN_HEIGHT)
        return hint

    def sizeHint(self):
        hint = super().sizeHint()
        hint.setWidth(max(hint.width(), self._content_width()))
        return hint


def dock_layout(widget: QWidget) -> QVBoxLayout:
    """The vertical layout of a dock widget's content, with the plugin's 4 px margins.

    The content sits in a frameless scroll area, so the dock can be shorter than its
    content (:data:`DOCK_MIN_HEIGHT`) and every dock stays usable on a small screen.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = _ColumnScroll(widget)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setMinimumHeight(DOCK_MIN_HEIGHT)
    content = QWidget()
    scroll.setWidget(content)
    outer.addWidget(scroll)
    widget.setMinimumHeight(DOCK_MIN_HEIGHT)
    schedule_tabify(widget)
    layout = QVBoxLayout(content)
    layout.setContentsMargins(4, 4, 4, 4)
    return layout


def tissue_colormap():
    """The fixed tissue colours as a napari ``DirectLabelColormap`` (0 transparent).

    The reader's colormap, so masks and segmentations look the same.
    """
    from napari_gmmseg._reader import label_colormap

    return label_colormap()


def tissue_features(labels: np.ndarray, voxel_ml: float):
    """Features table of a MyoPS label volume: one row per tissue class.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label volume with MyoPS values.
    voxel_ml : float
        Volume of one voxel in millilitres.

    Returns
    -------
    pandas.DataFrame
        Columns ``index`` (label value, which napari uses to show the class
        name under the cursor), ``class``, ``voxels`` and ``mL``.
    """
    import pandas as pd

    values, counts = np.unique(np.asarray(labels), return_counts=True)
    count = dict(zip(values.tolist(), counts.tolist(), strict=True))
    tissues = list(CLASSES) + [t for t in ALL_TISSUES if t not in CLASSES and t.value in count]
    rows = [
        {
            "index": t.value,
            "class": t.name,
            "voxels": int(count.get(t.value, 0)),
            "mL": float(count.get(t.value, 0) * voxel_ml),
        }
        for t in tissues
    ]
    return pd.DataFrame(rows, columns=["index", "class", "voxels", "mL"])


def value_name(value: int) -> str:
    """``"500 LV blood pool"`` for a known MyoPS value, ``"7"`` otherwise."""
    name = NAME_BY_VALUE.get(int(value))
    return f"{int(value)} {name}" if name else str(int(value))


# ---------------------------------------------------------------- geometry / spacing


def source_geometry(layer) -> Any | None:
    """The :class:`~napari_gmmseg.io.Geometry` the reader stored in a layer's metadata, or None."""
    from napari_gmmseg._reader import GEOMETRY_KEY
    from napari_gmmseg.io import Geometry

    geometry = layer.metadata.get(GEOMETRY_KEY)
    if isinstance(geometry, dict):
        geometry = Geometry.from_dict(geometry)
    return geometry


def layer_spacing(layer) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x) in mm of a 3-D layer: the geometry's, else the layer scale."""
    geometry = source_geometry(layer)
    spacing = getattr(geometry, "spacing_mm", None)
    if spacing is None:
        spacing = tuple(layer.scale[-3:])
    return tuple(float(s) for s in spacing)


# ---------------------------------------------------------------- layer pickers


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of some types, kept in sync with the viewer.

    Parameters
    ----------
    viewer : napari.Viewer
    types : tuple of layer classes
    accept : callable, optional
        Extra filter on a layer.
    allow_none : str, optional
        Text of a leading "no layer" entry.
    extra : str, optional
        Text of a trailing entry that stands for no layer (e.g. "automatic").
    """

    def __init__(
        self,
        viewer: napari.Viewer,
        types: tuple[type, ...],
        accept: Callable[[Any], bool] | None = None,
        allow_none: str | None = None,
        parent=None,
        extra: str | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._types = types
        self._accept = accept
        self._allow_none = allow_none
        self._extra = extra
        self._layers: list[Any] = []
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved, events.reordered):
            ev.connect(self.refresh)
        self.refresh()

    def _wanted(self, layer) -> bool:
        return isinstance(layer, self._types) and (self._accept is None or self._accept(layer))

    def refresh(self, *_args) -> None:
        """Re-list the layers, keeping the current choice when it still exists."""
        current = self.layer()
        on_extra = self._extra is not None and self.currentText() == self._extra
        layers = [lay for lay in reversed(list(self._viewer.layers)) if self._wanted(lay)]
        for lay in layers:
            # follow renames; connecting twice is harmless (napari de-duplicates)
            lay.events.name.connect(self.refresh)
        self.blockSignals(True)
        self.clear()
        self._layers = []
        if self._allow_none is not None:
            self.addItem(self._allow_none)
            self._layers.append(None)
        for lay in layers:
            self.addItem(lay.name)
            self._layers.append(lay)
        if self._extra is not None:
            self.addItem(self._extra)
            self._layers.append(None)
        if current is not None and current in self._layers:
            self.setCurrentIndex(self._layers.index(current))
        elif on_extra:
            self.setCurrentIndex(len(self._layers) - 1)
        self.blockSignals(False)
        self.currentIndexChanged.emit(self.currentIndex())

    def showPopup(self) -> None:
        """Re-list before opening: a layer may have become eligible since it was inserted
        (the Segment dock fills a segmentation's metadata only when the fit ends)."""
        self.refresh()
        super().showPopup()

    def layer(self):
        """The chosen layer, or None."""
        i = self.currentIndex()
        if 0 <= i < len(self._layers):
            return self._layers[i]
        return None

    def set_layer(self, layer) -> None:
        """Choose ``layer`` if it is listed."""
        self.refresh()
        if layer in self._layers:
            self.setCurrentIndex(self._layers.index(layer))


class CheckList(QListWidget):
    """A compact list of checkable entries, each carrying a Python object."""

    def __init__(self, parent=None, rows: int = 5) -> None:
        super().__init__(parent)
        self._max_rows = rows
        self._objects: list[Any] = []
        self._fit_height()

    def _fit_height(self) -> None:
        row = self.sizeHintForRow(0) if self.count() else self.fontMetrics().height() + 4
        shown = min(max(self.count(), 1), self._max_rows)
        self.setFixedHeight(row * shown + 2 * self.frameWidth() + 2)

    def set_entries(self, entries: Iterable[tuple[str, Any, bool]]) -> None:
        """Replace the entries with ``(text, object, checked)`` triples."""
        self.blockSignals(True)
        self.clear()
        self._objects = []
        for text, obj, checked in entries:
            item = QListWidgetItem(text)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            self.addItem(item)
            self._objects.append(obj)
        self.blockSignals(False)
        self._fit_height()

    def objects(self) -> list[Any]:
        """All entries' objects in list order."""
        return list(self._objects)

    def checked(self) -> list[Any]:
        """The checked entries' objects, in list order."""
        return [
            obj
            for i, obj in enumerate(self._objects)
            if self.item(i).checkState() == Qt.CheckState.Checked
        ]

    def set_checked(self, objects: Iterable[Any]) -> None:
        """Check exactly the entries whose object is in ``objects``."""
        wanted = list(objects)
        for i, obj in enumerate(self._objects):
            state = Qt.CheckState.Checked if obj in wanted else Qt.CheckState.Unchecked
            self.item(i).setCheckState(state)


def fit_table_height(table) -> None:
    """Make a QTableWidget exactly as tall as its header and rows (no scrollbar)."""
    table.resizeRowsToContents()
    height = table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth()
    height += sum(table.rowHeight(i) for i in range(table.rowCount()))
    table.setFixedHeight(height + 2)
