"""Load case dock widget: a case folder (or any one file of it), or one file per sequence."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTabWidget,
    QWidget,
)

from napari_gmmseg._widgets._common import clear_case, dock_layout, report_errors, show_info
from napari_gmmseg.errors import CaseLoadError
from napari_gmmseg.io import IMAGE_SUFFIXES
from napari_gmmseg.labels import SCAR

if TYPE_CHECKING:
    import napari

#: Sequence rows of the "one file per sequence" tab: (case key, label).
SEQUENCE_ROWS: tuple[tuple[str, str], ...] = (
    ("bSSFP", "bSSFP (C0)"),
    ("LGE", "LGE (DE)"),
    ("T2", "T2"),
    ("mask", "Mask (optional)"),
)
_FILTER = f"Images ({' '.join('*' + s for s in IMAGE_SUFFIXES)});;All files (*)"


def _path_row(parent: QWidget, edit: QLineEdit, folder: bool) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    if folder:
        button = QPushButton("Folder…")

        def pick() -> None:
            path = QFileDialog.getExistingDirectory(parent, "Case folder", edit.text())
            if path:
                edit.setText(path)

        button.clicked.connect(pick)
        row.addWidget(button)
    button = QPushButton("File…")

    def pick_file() -> None:
        path, _ = QFileDialog.getOpenFileName(parent, "Image file", edit.text(), _FILTER)
        if path:
            edit.setText(path)

    button.clicked.connect(pick_file)
    row.addWidget(button)
    return row


class LoadCaseWidget(QWidget):
    """Dock widget: open a multi-sequence cardiac MRI case as image layers (+ the mask).

    Layers are made by the plugin's reader, so they carry the source geometry
    (for Export) and the sequence names (for Segment).

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer: napari.Viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.last_layers: list = []
        layout = dock_layout(self)
        self.tabs = QTabWidget()

        page = QWidget()
        form = QFormLayout(page)
        self.case_path = QLineEdit()
        self.case_path.setPlaceholderText("case folder, dataset root, or one sequence file")
        form.addRow("Path", _path_row(self, self.case_path, folder=True))
        self.case_id = QLineEdit()
        self.case_id.setPlaceholderText("only for a dataset root, e.g. 1001")
        form.addRow("Case id", self.case_id)
        self.case_choice = QComboBox()  # the cases of a dataset root, filled from the path
        self.case_choice.setToolTip("the cases found in this dataset folder")
        form.addRow("Case", self.case_choice)
        self.case_path.textChanged.connect(self._list_cases)
        self._list_cases()
        self.tabs.addTab(page, "Case folder")

        page = QWidget()
        form = QFormLayout(page)
        self.sequence_paths: dict[str, QLineEdit] = {}
        for key, label in SEQUENCE_ROWS:
            edit = QLineEdit()
            self.sequence_paths[key] = edit
            form.addRow(label, _path_row(self, edit, folder=False))
        self.tabs.addTab(page, "One file per sequence")
        layout.addWidget(self.tabs)

        self.replace = QCheckBox("replace the open case")
        self.replace.setChecked(True)
        self.replace.setToolTip(
            "remove the layers of the case already open (one patient at a time)"
        )
        layout.addWidget(self.replace)
        row = QHBoxLayout()
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self.load)
        row.addWidget(self.load_button)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("close the open case: its layers and the docks' results")
        self.clear_button.clicked.connect(self.clear)
        row.addWidget(self.clear_button)
        layout.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def read_case(self):
        """Load the case described by the current tab (io)."""
        from napari_gmmseg import io

        if self.tabs.currentIndex() == 0:
            text = self.case_path.text().strip()
            if not text:
                raise CaseLoadError("choose a case folder or one of its sequence files")
            case_id = self.case_id.text().strip() or None
            if case_id is None and self.case_choice.count() > 1:
                case_id = self.case_choice.currentText()
            return io.load_case(text, case_id)
        paths = {k: e.text().strip() for k, e in self.sequence_paths.items() if e.text().strip()}
        mask = paths.pop("mask", None)
        if not paths:
            raise CaseLoadError("choose at least one sequence file")
        return io.load_case_from_paths(paths, mask=mask)

    def _list_cases(self, *_args) -> None:
        """Offer the cases of a dataset root (several cases) as a pick list."""
        from pathlib import Path

        from napari_gmmseg import io

        self.case_choice.clear()
        path = Path(self.case_path.text().strip() or ".")
        ids: list[str] = []
        if self.case_path.text().strip() and path.is_dir():
            try:
                ids = [s.case_id for s in io.discover_cases(path)]
            except (OSError, ValueError):
                ids = []
        if len(ids) > 1:
            self.case_choice.addItems(ids)
        self.case_choice.setEnabled(len(ids) > 1)

    def _remove_open_case(self) -> None:
        """Remove the open case's layers and every layer the docks added for it."""
        clear_case(self.viewer)

    def clear(self, *_args) -> None:
        """The Clear button: close the open case (its layers, the docks' results)."""
        n = clear_case(self.viewer)
        self.last_layers = []
        self.status.setText(f"closed the open case ({n} layers)" if n else "no case open")

    @report_errors
    def load(self) -> list:
        """Read the case and add its layers; returns the new layers."""
        from napari.layers import Layer

        from napari_gmmseg._reader import case_layer_data

        case = self.read_case()
        if self.replace.isChecked():
            self._remove_open_case()
        added = []
        for data in case_layer_data(case):
            layer = Layer.create(*data)
            if data[2] == "labels":
                layer.selected_label = SCAR.value  # the brush starts on a tissue
            self.viewer.add_layer(layer)
            added.append(layer)
        self.last_layers = added
        self.status.setText(f"case {case.case_id}: {', '.join(case.channels)}"
                            + (" + mask" if case.labels is not None else ""))  # fmt: skip
        show_info(f"loaded case {case.case_id}")
        return added
