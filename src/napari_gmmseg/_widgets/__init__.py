"""napari dock widgets: load a case, segment, refine with scribbles,
inspect convergence, evaluate, export, report.

Each widget takes the viewer (``napari_viewer``) in its constructor and only
calls the Qt-free core; no algorithm lives here.
"""

from napari_gmmseg._widgets._evaluate import EvaluateWidget
from napari_gmmseg._widgets._export import ExportWidget
from napari_gmmseg._widgets._inspect import InspectWidget
from napari_gmmseg._widgets._load import LoadCaseWidget
from napari_gmmseg._widgets._refine import RefineWidget
from napari_gmmseg._widgets._report import ReportWidget
from napari_gmmseg._widgets._segment import SegmentWidget

__all__ = [
    "EvaluateWidget",
    "ExportWidget",
    "InspectWidget",
    "LoadCaseWidget",
    "RefineWidget",
    "ReportWidget",
    "SegmentWidget",
]
