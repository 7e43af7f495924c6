"""One case at a time in napari, and docks that fit a 1600 x 1000 screen.

Headless: ``xvfb-run -a -s "-screen 0 1600x1000x24" python -m pytest tests/test_case_switch_gui.py``.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui

#: The screen the docks must fit (the smallest the product is tried on).
SCREEN = (1600, 1000)
#: The widest a dock may ask to be: the viewer keeps the rest of a 1600 px screen.
MAX_DOCK_WIDTH = 560


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Two small synthetic cases (ids 2001, 2002) in the MyoPS layout."""
    from napari_gmmseg.phantom import make_case, write_case

    root = tmp_path_factory.mktemp("cases")
    for seed, cid in ((0, "2001"), (1, "2002")):
        write_case(make_case(seed, n_slices=3, size=64, case_id=cid), root)
    return root


def _docks(viewer):
    from napari_gmmseg._widgets import (
        EvaluateWidget,
        ExportWidget,
        InspectWidget,
        LoadCaseWidget,
        ReportWidget,
        SegmentWidget,
    )

    made = {}
    for cls in (LoadCaseWidget, SegmentWidget, InspectWidget, EvaluateWidget, ExportWidget,
                ReportWidget):  # fmt: skip
        widget = cls(viewer)
        viewer.window.add_dock_widget(widget, name=cls.__name__)
        made[cls.__name__] = widget
    return made


def _load(qtbot, load, root, case_id):
    load.tabs.setCurrentIndex(0)
    load.case_path.setText(str(root))
    load.case_id.setText(case_id)
    added = load.load()
    assert added, load.status.text()
    return added


def _segment(qtbot, seg):
    seg.method.setCurrentIndex(seg.method.findData("tissue-classifier"))
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=120_000)
    assert seg.last_output is not None, seg.status.text()
    return seg.last_output


def test_loading_another_case_removes_the_first_and_clears_every_dock(
    make_napari_viewer, qtbot, cases
):
    from napari_gmmseg._widgets._common import case_of, is_plugin_layer

    viewer = make_napari_viewer()
    docks = _docks(viewer)
    load, seg, rep, exp = docks["LoadCaseWidget"], docks["SegmentWidget"], docks["ReportWidget"], docks["ExportWidget"]  # fmt: skip
    _load(qtbot, load, cases, "2001")
    out = _segment(qtbot, seg)
    assert out.name == "2001 tissue-classifier"
    assert out.selected_label == 2221  # the brush starts on scar
    assert "scar" in seg.headline.text() and not seg.headline.isHidden()
    # Report and Export follow the newest segmentation, not the mask
    assert rep.label_layer.layer() is out and exp.layer_combo.layer() is out
    rep.update_report()
    aha = rep.segments_layer
    assert aha is not None and aha.name == "2001 AHA segments" and not aha.visible
    assert exp.path_edit.placeholderText().endswith("2001_tissue-classifier.nii.gz")
    assert str(cases) in exp.path_edit.placeholderText()  # in the case's folder

    _load(qtbot, load, cases, "2002")
    qtbot.wait(600)  # past the Report dock's auto-update delay
    cases_open = {case_of(lay) for lay in viewer.layers if is_plugin_layer(lay)}
    assert cases_open == {"2002"}, [lay.name for lay in viewer.layers]
    assert not any(lay.name.startswith("2001") for lay in viewer.layers)
    # every dock shows the new case (or nothing of the old one)
    assert seg.last_output is None and seg.burden.text() == "" and seg.headline.text() == ""
    # Report shows nothing, or (auto-update) the new case's own label map
    if rep.report is None:
        assert rep.table.rowCount() == 0 and rep.summary.text() == ""
    else:
        assert case_of(rep.label_layer.layer()) == "2002"
    assert rep.label_layer.layer() is None or case_of(rep.label_layer.layer()) == "2002"
    assert exp.layer_combo.layer() is None or case_of(exp.layer_combo.layer()) == "2002"
    assert docks["EvaluateWidget"].table.rowCount() == 0
    assert "2002" in load.status.text()
    # the new case segments and reports on its own layers
    out2 = _segment(qtbot, seg)
    assert out2.name == "2002 tissue-classifier"
    assert rep.label_layer.layer() is out2
    rep.update_report()
    assert rep.segments_layer.name == "2002 AHA segments"

    load.clear()
    assert not any(is_plugin_layer(lay) for lay in viewer.layers)
    assert rep.report is None and seg.last_output is None


@pytest.mark.slow
def test_ten_case_switches_without_a_crash(make_napari_viewer, qtbot, cases):
    from napari_gmmseg._widgets._common import case_of, is_plugin_layer

    viewer = make_napari_viewer(show=True)
    docks = _docks(viewer)
    load, seg, rep = docks["LoadCaseWidget"], docks["SegmentWidget"], docks["ReportWidget"]
    for i in range(10):
        cid = ("2001", "2002")[i % 2]
        _load(qtbot, load, cases, cid)
        _segment(qtbot, seg)
        rep.update_report()
        rep.segments_layer.visible = True  # draw the plugin layers the old crash involved
        qtbot.wait(30)
        assert {case_of(lay) for lay in viewer.layers if is_plugin_layer(lay)} == {cid}


def _plugin_docks(viewer):
    from qtpy.QtWidgets import QDockWidget

    from napari_gmmseg._widgets._common import is_plugin_dock

    main = viewer.window._qt_window
    return [d for d in main.findChildren(QDockWidget) if is_plugin_dock(d)]


#: The plugin's docks, as the manifest names them.
DOCK_NAMES = ("Load case", "Segment", "Inspect", "Evaluate", "Export", "Report")


@pytest.mark.parametrize("how", ["plugins menu", "napari -w"])
def test_docks_fit_1600x1000(make_napari_viewer, qtbot, how):
    viewer = make_napari_viewer(show=True)
    main = viewer.window._qt_window
    main.resize(*SCREEN)
    # the Plugins menu adds one dock at a time (tabify=False); `napari -w napari-gmmseg`
    # adds every dock of the plugin with tabify=True (napari/__main__.py)
    for name in DOCK_NAMES:
        viewer.window.add_plugin_dock_widget("napari-gmmseg", name, tabify=how == "napari -w")
        qtbot.wait(10)
    qtbot.wait(100)  # our own tabify runs once each dock exists
    docks = _plugin_docks(viewer)
    assert len(docks) == len(DOCK_NAMES)
    for dock in docks:
        hint = dock.minimumSizeHint()
        assert hint.width() <= MAX_DOCK_WIDTH, (dock.windowTitle(), hint.width())
        assert hint.height() <= SCREEN[1] - 200, (dock.windowTitle(), hint.height())
    # nothing cut on the right: each dock's content (inside its vertical scroll area) is no
    # wider than the dock napari gives it
    from qtpy.QtWidgets import QScrollArea

    for dock in docks:
        for scroll in dock.findChildren(QScrollArea):
            content = scroll.widget()
            if content is not None and getattr(scroll.parent(), "gmmseg_dock", False):
                need = content.minimumSizeHint().width()
                assert need <= dock.width(), (dock.windowTitle(), need, dock.width())
    # one tab group: one dock at a time, each with the column's full height
    assert all(main.tabifiedDockWidgets(d) for d in docks)
    visible = [d for d in docks if not d.visibleRegion().isEmpty()]
    assert len(visible) == 1
    assert visible[0].height() >= SCREEN[1] // 2
