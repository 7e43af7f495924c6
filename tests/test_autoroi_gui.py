"""The Segment dock with no mask: automatic ROI as an editable Labels layer, re-run uses the edit.

Headless: ``xvfb-run -a python -m pytest tests/test_autoroi_gui.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_automatic_roi_layer_is_used_and_its_edit_reaches_the_rerun(
    make_napari_viewer_proxy, qtbot, monkeypatch
):
    from napari.layers import Layer

    from napari_gmmseg._reader import case_layer_data
    from napari_gmmseg._widgets import SegmentWidget, _common, _segment
    from napari_gmmseg._widgets._autoroi import AUTO_LAYER_NAME, is_auto_layer
    from napari_gmmseg.autoroi import roi_dice
    from napari_gmmseg.phantom import make_case

    shown: list[str] = []
    for module in (_common, _segment):
        monkeypatch.setattr(module, "show_error", shown.append)
    case = make_case(0, n_slices=3)  # 128 x 128: the network finds its LV
    viewer = make_napari_viewer_proxy()
    for data in case_layer_data(case):
        if data[2] != "labels":  # images only: no mask loaded
            viewer.add_layer(Layer.create(*data))
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    assert widget.roi_layer.currentText().startswith("automatic")

    def run():
        widget.run()
        assert widget.running, shown
        qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
        assert shown == []
        return np.asarray(widget.last_output.data)

    first = run()
    auto = widget.roi_layer.layer()  # the new layer is chosen for re-runs
    assert auto is not None and auto.name.endswith(AUTO_LAYER_NAME) and is_auto_layer(auto)
    np.testing.assert_allclose(auto.scale, case.spacing_mm)
    assert roi_dice(auto.data, case.labels)["lv"] > 0.85
    lv = np.isin(auto.data, (500, 200))
    assert not first[~lv].any() and (first[lv] > 0).all()
    assert "slice 0: ok" in widget.roi_qc.text()

    # edit with napari's brush: paint myocardium just outside the LV on slice 1
    ys, xs = np.nonzero(lv[1])
    y = int(np.median(ys[xs == xs.max()]))
    auto.brush_size = 9
    auto.paint((1, y, int(xs.max()) + 3), 200, refresh=True)
    added = np.isin(auto.data, (500, 200)) & ~lv
    assert added[1].sum() > 20 and not added[[0, 2]].any()
    assert not first[added].any()
    n_layers = len(viewer.layers)
    second = run()
    assert widget.roi_layer.layer().name.endswith(AUTO_LAYER_NAME)
    assert sum(lay.name.endswith(AUTO_LAYER_NAME) for lay in viewer.layers) == 1
    assert len(viewer.layers) == n_layers + 1  # only the new segmentation
    assert (second[added] > 0).all(), "the re-run ignored the edited ROI"
    roi = np.isin(auto.data, (500, 200))
    assert (second[roi] > 0).all() and not second[~roi].any()
    assert "SKIPPED" not in widget.roi_qc.text()
