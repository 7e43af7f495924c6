"""Exception types: one family per kind of failure, all under :class:`GmmSegError`.

The CLI prints these as one-line errors and the widgets as napari
notifications; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GmmSegError(Exception):
    """Base class of every error this package raises on purpose."""


class CaseLoadError(GmmSegError, OSError):
    """A case could not be loaded: missing, unreadable, 2-D/4-D, NaN, constant, bad mask."""


class ExtremeIntensityError(CaseLoadError):
    """Voxels inside the ROI lie far outside their channel's intensity range (corrupt input).

    Attributes
    ----------
    channels : tuple of str
        Names of the channels holding such voxels.
    """

    def __init__(self, message: str, channels: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.channels = tuple(channels)


class GeometryError(GmmSegError, ValueError):
    """Images do not share a grid and cannot be brought onto one (no overlap, bad shapes)."""


class OutputExistsError(GmmSegError, FileExistsError):
    """An output file exists and overwriting was not asked for."""


class OutputPathError(GmmSegError, OSError):
    """An output path cannot be written: an input, a folder, a read-only or missing parent,
    or a file name of the wrong type."""


class RoiError(GmmSegError, ValueError):
    """The region of interest is empty, too small, or smaller than the number of classes."""


class ModelError(GmmSegError, ValueError):
    """Invalid model options or a model file that cannot be used."""


class OrientationError(GmmSegError, ValueError):
    """Short-axis slices cannot be oriented (no LV myocardium, no RV and no insertion point)."""
