"""napari-gmmseg: unsupervised scar and edema segmentation of multi-sequence cardiac MRI.

The package is split into a Qt-free core (``io``, ``preprocess``, ``gaussian``,
``mixture``, ``deep``, ``naming``, ``metrics``, ``batch``, ``cli``, ``phantom``)
and a thin napari layer (``_reader``, ``_writer``, ``_sample_data``, ``_widgets``).
Importing the package is cheap: torch and MONAI load only when a model runs.
"""

from napari_gmmseg._version import __version__

__all__ = ["__version__"]
