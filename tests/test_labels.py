"""The class table and the default sequence names."""

from __future__ import annotations

from napari_gmmseg.labels import (
    CLASS_NAMES,
    CLASS_VALUES,
    DEFAULT_CHANNELS,
    LV_ROI_VALUES,
    default_channel_names,
)


def test_classes_and_channel_names():
    assert CLASS_VALUES == (500, 200, 1220, 2221) and set(LV_ROI_VALUES) == set(CLASS_VALUES)
    assert CLASS_NAMES == ("LV blood pool", "myocardium", "edema", "scar")
    assert default_channel_names(3) == DEFAULT_CHANNELS == ("bSSFP", "LGE", "T2")
    assert default_channel_names(2) == ("ch0", "ch1")
