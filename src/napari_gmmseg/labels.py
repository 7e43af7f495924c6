"""Tissue classes, MyoPS label values, names and colours: the one table everyone reads.

The four classes a model separates inside the left-ventricle ROI are, in this
fixed order (the order of every ``(K, M)`` prior table and of model outputs
after naming)::

    0 blood pool  -> MyoPS 500
    1 myocardium  -> MyoPS 200  (healthy LV myocardium)
    2 edema       -> MyoPS 1220
    3 scar        -> MyoPS 2221

MyoPS masks also carry 600 (RV blood pool), which is outside the LV ROI.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tissue:
    """One tissue class: its MyoPS value, display name and RGBA colour."""

    value: int
    name: str
    color: tuple[float, float, float, float]


BLOOD = Tissue(500, "LV blood pool", (0.85, 0.15, 0.15, 1.0))
MYOCARDIUM = Tissue(200, "myocardium", (0.20, 0.45, 0.95, 1.0))
EDEMA = Tissue(1220, "edema", (1.00, 0.80, 0.10, 1.0))
SCAR = Tissue(2221, "scar", (0.10, 0.85, 0.35, 1.0))
RV = Tissue(600, "RV blood pool", (0.70, 0.30, 0.85, 1.0))

#: The K = 4 classes the models separate, in the canonical order.
CLASSES: tuple[Tissue, ...] = (BLOOD, MYOCARDIUM, EDEMA, SCAR)
#: Every value a MyoPS ground-truth mask may hold (0 is background).
MYOPS_VALUES: tuple[int, ...] = (0, 200, 500, 600, 1220, 2221)
#: Label values that make up the LV region of interest (the paper's ROI).
LV_ROI_VALUES: tuple[int, ...] = (500, 200, 1220, 2221)
#: Colour for every known value, for napari ``DirectLabelColormap``.
ALL_TISSUES: tuple[Tissue, ...] = (*CLASSES, RV)

CLASS_NAMES: tuple[str, ...] = tuple(t.name for t in CLASSES)
CLASS_VALUES: tuple[int, ...] = tuple(t.value for t in CLASSES)
NAME_BY_VALUE: dict[int, str] = {t.value: t.name for t in ALL_TISSUES}
COLOR_BY_VALUE: dict[int, tuple[float, float, float, float]] = {
    t.value: t.color for t in ALL_TISSUES
}

#: The sequences of a case, in channel order (bSSFP = MyoPS ``C0``, LGE = ``DE``, T2).
DEFAULT_CHANNELS: tuple[str, ...] = ("bSSFP", "LGE", "T2")


def default_channel_names(n_channels: int) -> tuple[str, ...]:
    """Channel names when none are given: :data:`DEFAULT_CHANNELS` for 3, else ``ch0, ch1...``."""
    if n_channels == len(DEFAULT_CHANNELS):
        return DEFAULT_CHANNELS
    return tuple(f"ch{i}" for i in range(n_channels))
