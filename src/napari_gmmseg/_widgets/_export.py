"""Export dock widget: save a segmentation as NIfTI on the geometry of its source image."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QWidget,
)

from napari_gmmseg._widgets._common import (
    META_KEY,
    LayerCombo,
    case_of,
    dock_layout,
    report_errors,
    show_info,
    source_geometry,
)
from napari_gmmseg.errors import GeometryError, GmmSegError

if TYPE_CHECKING:
    import napari


def nifti_path(text: str) -> Path:
    """The output path of ``text``; ``.nii.gz`` is appended when no NIfTI suffix is given."""
    text = text.strip()
    if not text:
        raise GmmSegError("choose an output file name (.nii.gz)")
    path = Path(text).expanduser()
    name = path.name.lower()
    if not (name.endswith(".nii.gz") or name.endswith(".nii")):
        path = path.with_name(path.name + ".nii.gz")
    return path


class ExportWidget(QWidget):
    """Dock widget: write a Labels layer as NIfTI on its source geometry (asks before overwriting).

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        import napari

        super().__init__(parent)
        self.viewer = napari_viewer
        self.last_path: Path | None = None
        layout = dock_layout(self)
        form = QFormLayout()
        self.layer_combo = LayerCombo(napari_viewer, (napari.layers.Labels,))
        form.addRow("Labels", self.layer_combo)
        row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("output .nii.gz")
        browse = QPushButton("…")
        browse.setFixedWidth(28)
        browse.clicked.connect(self._browse)
        row.addWidget(self.path_edit)
        row.addWidget(browse)
        form.addRow("File", row)
        layout.addLayout(form)
        self.export_button = QPushButton("Export NIfTI")
        self.export_button.clicked.connect(self.export)
        layout.addWidget(self.export_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.layer_combo.currentIndexChanged.connect(self._suggest_path)
        napari_viewer.layers.events.inserted.connect(self._select_newest)
        self._select_newest()
        self._suggest_path()

    def _select_newest(self, *_args) -> None:
        """The newest segmentation becomes the one to export (not a mask or AHA segments)."""
        from napari_gmmseg._widgets._report import newest_segmentation

        self.layer_combo.refresh()  # whatever order napari calls its listeners in
        newest = newest_segmentation(self.viewer)
        if newest is not None:
            self.layer_combo.set_layer(newest)

    def case_folder(self, case: str | None) -> Path:
        """The folder the case was read from (a layer of that case that has a source file);
        the working folder when none is known."""
        from napari_gmmseg._reader import SOURCE_KEY

        for lay in self.viewer.layers:
            source = lay.metadata.get(SOURCE_KEY)
            if source and case_of(lay) == case:
                return Path(source).parent
        return Path.cwd()

    def _suggest_path(self, *_args) -> None:
        """Name the file by case and method, in the case's folder (``1001_gmm.nii.gz``)."""
        layer = self.layer_combo.layer()
        if layer is None:
            self.path_edit.setPlaceholderText("output .nii.gz")
            return
        case = case_of(layer)
        info = layer.metadata.get(META_KEY) or {}
        stem = "_".join(str(p) for p in (case, info.get("method")) if p) or layer.name
        self.path_edit.setPlaceholderText(
            str(self.case_folder(case) / f"{stem.replace(' ', '_')}.nii.gz")
        )

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save segmentation",
            self.path_edit.text() or self.path_edit.placeholderText(),
            "NIfTI (*.nii.gz *.nii)",
            options=QFileDialog.Option.DontConfirmOverwrite,  # we ask ourselves
        )
        if path:
            self.path_edit.setText(path)

    def confirm_overwrite(self, path: Path) -> bool:
        """Ask the user whether to replace an existing file."""
        answer = QMessageBox.question(
            self,
            "Replace file?",
            f"{path} exists. Replace it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _inputs(self) -> list[str]:
        """The files the open layers were read from (images, masks): never export targets."""
        from napari_gmmseg._reader import SOURCE_KEY

        found = ((lay.metadata or {}).get(SOURCE_KEY) for lay in self.viewer.layers)
        return [str(src) for src in found if src]

    @report_errors
    def export(self) -> Path | None:
        """Write the chosen layer; returns the path written, or None when the user declined."""
        from napari_gmmseg.io import check_output, save_labels

        layer = self.layer_combo.layer()
        if layer is None:
            raise GeometryError("no Labels layer to export")
        geometry = source_geometry(layer)
        if geometry is None:
            raise GeometryError(
                f"'{layer.name}' has no source geometry: Export works for segmentations of "
                "images opened with napari-gmmseg (Load case widget, File > Open, samples); "
                "File > Save Selected Layers writes it on an axis-aligned grid instead"
            )
        path = nifti_path(self.path_edit.text() or self.path_edit.placeholderText())
        # the one output check of every command: never one of the case's own input files
        check_output(path, suffixes=(".nii.gz", ".nii"), force=True, inputs=self._inputs())
        overwrite = False
        if path.exists():
            if not self.confirm_overwrite(path):
                self.status.setText(f"not saved: {path} exists")
                return None
            overwrite = True
        written = save_labels(np.asarray(layer.data), geometry, path, overwrite=overwrite)
        self.last_path = Path(written)
        self.status.setText(f"saved {written}")
        show_info(f"saved '{layer.name}' to {written}")
        return self.last_path
