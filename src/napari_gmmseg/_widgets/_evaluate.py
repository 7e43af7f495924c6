"""Evaluate dock widget: Dice per class (matched and as named), the MyoPS 2020 per-case scores, burden.

Also relabels a segmentation to its matched classes.

All numbers come from :mod:`napari_gmmseg.metrics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
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
    dock_layout,
    fit_table_height,
    layer_spacing,
    report_errors,
    show_info,
    tissue_features,
)
from napari_gmmseg.errors import GeometryError, RoiError
from napari_gmmseg.labels import CLASS_VALUES
from napari_gmmseg.metrics import SCAR_EDEMA_NAME

if TYPE_CHECKING:
    import napari


def _fmt(value: float, spec: str = ".3f") -> str:
    return "–" if value is None or not np.isfinite(value) else format(value, spec)


class EvaluateWidget(QWidget):
    """Dock widget: compare a segmentation with a manual mask.

    Dice is computed after the optimal per-slice (Hungarian) matching of the
    segmentation's classes to the manual classes (the paper's protocol) and as
    named by the method; volumes are those of the segmentation as named.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    COLUMNS = ("class", "Dice", "named", "mL", "manual")
    TOOLTIPS = (
        "tissue class (LV myocardium = myocardium + edema + scar; scar+edema = the lesion)",
        "Dice after the optimal per-slice (Hungarian) matching of classes to the mask",
        "Dice of the classes as named by the method (no matching)",
        "volume of the segmentation (mL)",
        "volume of the manual mask (mL)",
    )

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        import napari

        super().__init__(parent)
        self.viewer = napari_viewer
        self.rows: list[dict] = []
        layout = dock_layout(self)
        form = QFormLayout()
        self.seg_layer = LayerCombo(
            napari_viewer, (napari.layers.Labels,), accept=lambda lay: META_KEY in lay.metadata
        )
        self.mask_layer = LayerCombo(
            napari_viewer, (napari.layers.Labels,), accept=lambda lay: META_KEY not in lay.metadata
        )
        form.addRow("Segmentation", self.seg_layer)
        form.addRow("Manual mask", self.mask_layer)
        layout.addLayout(form)
        row = QHBoxLayout()
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.clicked.connect(self.evaluate)
        self.relabel_button = QPushButton("Relabel to matched classes")
        self.relabel_button.setToolTip(
            "Rename the segmentation's classes slice by slice to the manual classes they match best"
        )
        self.relabel_button.clicked.connect(self.relabel)
        row.addWidget(self.evaluate_button)
        row.addWidget(self.relabel_button)
        layout.addLayout(row)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for j, tip in enumerate(self.TOOLTIPS):
            self.table.horizontalHeaderItem(j).setToolTip(tip)
        fit_table_height(self.table)
        layout.addWidget(self.table)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        layout.addStretch(1)
        self._scored: tuple[Any, Any] | None = None  # the (segmentation, mask) in the table
        from qtpy.QtCore import QTimer

        self._timer = QTimer(self)  # numbers follow the labels: re-evaluate after an edit
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self._reevaluate)
        napari_viewer.layers.events.removed.connect(self._clear_if_stale)
        self.seg_layer.currentIndexChanged.connect(self._clear_if_stale)
        self.mask_layer.currentIndexChanged.connect(self._clear_if_stale)

    def _clear_if_stale(self, *_args) -> None:
        """Clear the table once its layers are gone or others are chosen."""
        if self._scored is None:
            return
        seg, mask = self._scored
        chosen = (self.seg_layer.layer(), self.mask_layer.layer())
        if seg in self.viewer.layers and mask in self.viewer.layers and chosen == (seg, mask):
            return
        self._follow(None)
        self._scored = None
        self.rows = []
        self.table.setRowCount(0)
        fit_table_height(self.table)
        self.summary.setText("")

    def _arrays(self):
        seg, mask = self.seg_layer.layer(), self.mask_layer.layer()
        if seg is None:
            raise RoiError("no segmentation layer: run the Segment widget first")
        if mask is None:
            raise RoiError("no manual mask: open or draw a Labels layer with MyoPS values")
        pred, gt = np.asarray(seg.data), np.asarray(mask.data)
        if pred.shape != gt.shape:
            raise GeometryError(
                f"segmentation '{seg.name}' {pred.shape} and mask '{mask.name}' {gt.shape} "
                "differ in shape"
            )
        return seg, mask, pred, gt

    @report_errors
    def evaluate(self) -> None:
        """Fill the table: matched and as-named Dice, volumes of the segmentation and the mask."""
        from napari_gmmseg.metrics import evaluate_labels

        seg, mask, pred, gt = self._arrays()
        spacing = layer_spacing(seg)
        rows = evaluate_labels(pred, gt, spacing)
        self._follow((seg, mask))
        self._scored = (seg, mask)
        self.rows = [r for r in rows if r["level"] == "volume"]
        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            cells = (
                r["class"],
                _fmt(r["dice"]),
                _fmt(r["dice_named"]),
                _fmt(r["pred_ml"], ".2f"),
                _fmt(r["gt_ml"], ".2f"),
            )
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(text))
        fit_table_height(self.table)
        self.summary.setText(self._summary_text({r["class"]: r for r in self.rows}))

    def _follow(self, layers) -> None:
        """Watch the edits of the scored layers (None: stop watching)."""
        for lay in self._scored or ():
            for name in ("data", "paint"):
                getattr(lay.events, name).disconnect(self._labels_edited)
        for lay in layers or ():
            lay.events.data.connect(self._labels_edited)
            lay.events.paint.connect(self._labels_edited)

    def _labels_edited(self, *_args) -> None:
        self.summary.setText("stale — recomputing (the labels changed)")
        self._timer.start()

    def _reevaluate(self) -> None:
        if self._scored is not None:
            self.evaluate()

    @staticmethod
    def _summary_text(by_class: dict[str, dict]) -> str:
        """MyoPS 2020 per-case scores and burden of the volume rows, as named and matched."""
        parts = []
        scar, lesion = by_class.get("scar"), by_class.get(SCAR_EDEMA_NAME)
        if scar is not None and lesion is not None:
            parts.append(
                f"MyoPS per case: scar Dice {_fmt(scar['dice_named'])} as named, "
                f"{_fmt(scar['dice'])} matched · scar ∪ edema Dice "
                f"{_fmt(lesion['dice_named'])} as named, {_fmt(lesion['dice'])} matched"
            )
        for name in ("scar", "edema"):
            r = by_class.get(name)
            if r is not None:
                parts.append(
                    f"{name}: {_fmt(r['pred_ml'], '.2f')} mL ({_fmt(r['pred_pct'], '.1f')} %) · "
                    f"matched {_fmt(r['pred_pct_matched'], '.1f')} % · "
                    f"manual {_fmt(r['gt_ml'], '.2f')} mL ({_fmt(r['gt_pct'], '.1f')} %)"
                )
        return "\n".join(parts) + "\n(% of LV myocardium)"

    @report_errors
    def relabel(self) -> None:
        """Replace the segmentation's labels by their per-slice Hungarian match to the mask."""
        from napari_gmmseg.metrics import match_slices

        seg, mask, pred, gt = self._arrays()
        values = list(CLASS_VALUES)
        matched, _ = match_slices(pred, gt, values, components=values)
        matched = np.where(np.isin(pred, values), matched, pred).astype(pred.dtype)
        seg.data = matched
        spacing = layer_spacing(seg)
        seg.features = tissue_features(matched, float(np.prod(spacing)) / 1000.0)
        meta = dict(seg.metadata)
        info = dict(meta.get(META_KEY, {}))
        info["relabelled_to"] = mask.name
        meta[META_KEY] = info
        seg.metadata = meta
        show_info(f"'{seg.name}' relabelled to the classes of '{mask.name}'")
        self.evaluate()
