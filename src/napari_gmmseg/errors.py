"""Exception types: one family per kind of failure, all under :class:`GmmSegError`.

The CLI prints these as one-line errors and the widgets as napari
notifications; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GmmSegError(Exception):
    """Base class of every error this package raises on purpose."""


class CaseLoadError(GmmSegError, OSError):
    """A case could not be loaded: missing, unreadable, 2-D/4-D, NaN, constant, bad mask."""


class GeometryError(GmmSegError, ValueError):
    """Images do not share a grid and cannot be brought onto one (no overlap, bad shapes)."""


class OutputExistsError(GmmSegError, FileExistsError):
    """An output file exists and overwriting was not asked for."""


class RoiError(GmmSegError, ValueError):
    """The region of interest is empty, too small, or smaller than the number of classes."""


class ModelError(GmmSegError, ValueError):
    """Invalid model options or a model file that cannot be used."""


class OrientationError(GmmSegError, ValueError):
    """Short-axis slices cannot be oriented (no LV myocardium, no RV and no insertion point)."""
