"""napari sample data: File > Open Sample > napari-gmmseg.

Both samples open the bundled phantom cases in ``sample_data/`` at the
repository root (MyoPS layout; ``1001`` has an infarct with a scar-free apical
slice, ``1002`` has none).  ``sample_data/`` is not part of the wheel, so when
those files are not found (an installed package), the very same case is
regenerated with :func:`napari_gmmseg.phantom.make_sample_case` (deterministic,
identical voxels, about a second).
"""

from __future__ import annotations

from pathlib import Path

from napari_gmmseg._reader import LayerData, case_layer_data

#: ``sample_data/`` beside ``src/`` in a source checkout (editable install).
SAMPLE_DATA_DIR = Path(__file__).resolve().parents[2] / "sample_data"


def _sample_file(case_id: str) -> Path:
    return SAMPLE_DATA_DIR / "train25" / f"myops_training_{case_id}_C0.nii.gz"


def load_sample_case(case_id: str):
    """The bundled sample :class:`~napari_gmmseg.io.Case` (from disk, or regenerated)."""
    from napari_gmmseg.io import load_case
    from napari_gmmseg.phantom import make_sample_case

    path = _sample_file(case_id)
    if path.is_file():
        return load_case(path)
    return make_sample_case(case_id)


def load_phantom_case() -> list[LayerData]:
    """Phantom case 1001: bSSFP, LGE, T2 and mask, with an infarct (scar inside edema)."""
    return case_layer_data(load_sample_case("1001"))


def load_phantom_case_no_scar() -> list[LayerData]:
    """Phantom case 1002: bSSFP, LGE, T2 and mask, healthy myocardium (no infarct)."""
    return case_layer_data(load_sample_case("1002"))
