"""The plugin as napari sees it: discovery through npe2 in a real viewer."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_viewer_lists_plugin_contributions(make_napari_viewer_proxy):
    from npe2 import PluginManager

    make_napari_viewer_proxy()
    pm = PluginManager.instance()
    manifest = pm.get_manifest("napari-gmmseg")
    assert manifest.display_name
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert {"Load case", "Segment", "Inspect", "Evaluate", "Export", "Report"} <= widgets
    readers = list(pm.iter_compatible_readers(["case_C0.nii.gz"]))
    assert any(r.plugin_name == "napari-gmmseg" for r in readers)
    writers = [w for w in manifest.contributions.writers if "labels" in w.layer_types]
    assert writers and ".nii.gz" in writers[0].filename_extensions
    samples = {s.key for s in manifest.contributions.sample_data}
    assert "phantom" in samples
