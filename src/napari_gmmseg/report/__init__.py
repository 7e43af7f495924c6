"""The report cardiologists read: AHA 17-segment burden, transmurality, bullseye, one page.

Qt-free.  From a MyoPS-valued label map (a segmentation or a manual mask):

* :mod:`.orientation` -- apex end, handedness from the NIfTI affine, LV centre and
  RV insertion points per slice (the rules are stated there);
* :mod:`.segments` -- levels, AHA sectors, the segment map, burden per key;
* :mod:`.transmurality` -- scar share of the wall along radial chords;
* :mod:`.case` -- :func:`compute_report`, the one entry point, and :class:`CaseReport`;
* :mod:`.figures` -- bullseye and the one-page report (matplotlib ``Figure``);
* :mod:`.writer` -- the output folder (atomic, never overwrites unasked).

Submodules import matplotlib and scipy only when used.
"""

from __future__ import annotations

from napari_gmmseg.errors import OrientationError
from napari_gmmseg.report.case import SEGMENT_COLUMNS, SLICE_COLUMNS, CaseReport, compute_report
from napari_gmmseg.report.segments import SEGMENT_NAMES, SEPTAL_SEGMENTS
from napari_gmmseg.report.writer import REPORT_FILES, write_report

__all__ = [
    "REPORT_FILES",
    "SEGMENT_COLUMNS",
    "SEGMENT_NAMES",
    "SEPTAL_SEGMENTS",
    "SLICE_COLUMNS",
    "CaseReport",
    "OrientationError",
    "compute_report",
    "write_report",
]
