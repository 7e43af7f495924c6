"""The Refine dock in a real viewer: a stroke, Refine, only its slice changes, every dock's
numbers follow, undo restores labels and numbers (``xvfb-run -a python -m pytest ...``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gmmseg.labels import SCAR

pytestmark = pytest.mark.gui


def test_stroke_refine_follow_undo(make_napari_viewer_proxy, qtbot):
    from napari_gmmseg._widgets import EvaluateWidget, RefineWidget, ReportWidget
    from napari_gmmseg.phantom import make_case
    from test_widgets import add_case, dock, run_and_wait, segment_widget

    case = make_case(0, n_slices=3, size=64)
    viewer = make_napari_viewer_proxy()
    add_case(viewer, case)
    seg_dock = segment_widget(viewer, "tissue-classifier")
    run_and_wait(qtbot, seg_dock, timeout=120_000)
    seg = seg_dock.last_output
    evaluate = dock(viewer, EvaluateWidget(viewer))
    evaluate.seg_layer.set_layer(seg)
    evaluate.mask_layer.set_layer(viewer.layers["mask"])
    evaluate.evaluate()
    report = dock(viewer, ReportWidget(viewer))
    report.label_layer.set_layer(seg)
    report.rv_layer.set_layer(viewer.layers["mask"])  # orients the AHA segments
    report.update_report()
    refine_dock = dock(viewer, RefineWidget(viewer))
    refine_dock.seg_layer.set_layer(seg)
    refine_dock.start_scribbles()
    scrib = refine_dock.scribbles
    assert scrib.selected_label == SCAR.value and scrib.mode == "paint"

    def numbers():
        return (
            seg_dock.burden.text(),
            evaluate.summary.text(),
            report.summary.text(),
            refine_dock.burden.text(),
        )

    before_labels, before_numbers = np.array(seg.data), numbers()
    ys, xs = np.nonzero(before_labels[1] == 200)  # healthy myocardium on slice 1
    scrib.brush_size = 3
    for y, x in zip(ys[:12:3], xs[:12:3], strict=True):
        scrib.paint((1, int(y), int(x)), SCAR.value)
    qtbot.waitUntil(lambda: refine_dock.undo_button.isEnabled(), timeout=5000)
    refine_dock.refine()
    assert refine_dock.running and not refine_dock.refine_button.isEnabled()
    qtbot.waitUntil(lambda: not refine_dock.running, timeout=60_000)
    after = np.array(seg.data)
    changed = np.nonzero((after != before_labels).reshape(3, -1).any(1))[0]
    assert changed.tolist() == [1]
    assert np.all(after[np.asarray(scrib.data) > 0] == SCAR.value)
    # every dock's read-out follows the labels (Evaluate and Report after their debounce)
    qtbot.waitUntil(
        lambda: all(a != b for a, b in zip(numbers(), before_numbers, strict=True)), timeout=10_000
    )
    assert "stale" not in evaluate.summary.text()
    refined_numbers = numbers()
    # undo the refine, then the brush: labels and numbers come back
    refine_dock.undo()
    np.testing.assert_array_equal(seg.data, before_labels)
    refine_dock.undo()
    assert not np.asarray(scrib.data).any()
    qtbot.waitUntil(lambda: numbers() == before_numbers, timeout=10_000)
    refine_dock.redo()
    refine_dock.redo()
    np.testing.assert_array_equal(seg.data, after)
    qtbot.waitUntil(lambda: numbers() == refined_numbers, timeout=10_000)
    # a second Refine without new strokes says so
    refine_dock.refine()
    assert not refine_dock.running and "nothing to refine" in refine_dock.status.text()


def test_scribble_finds_a_segmentation_made_after_the_dock_opened(make_napari_viewer_proxy, qtbot):
    """The Refine dock is open before Segment runs: Scribble still finds the new result."""
    from napari_gmmseg._widgets import RefineWidget
    from napari_gmmseg.phantom import make_case
    from test_widgets import add_case, dock, run_and_wait, segment_widget

    case = make_case(0, n_slices=2, size=64)
    viewer = make_napari_viewer_proxy()
    add_case(viewer, case)
    refine_dock = dock(viewer, RefineWidget(viewer))
    seg_dock = segment_widget(viewer, "tissue-classifier")
    run_and_wait(qtbot, seg_dock, timeout=120_000)
    refine_dock.start_scribbles()
    assert refine_dock.scribbles is not None
    assert refine_dock.scribbles.name == f"{seg_dock.last_output.name} scribbles"
    # one read-out: the Refine dock states what the Segment dock states, interval included
    assert "95 % interval" in refine_dock.burden.text()
    assert seg_dock.burden.text().startswith(refine_dock.burden.text())
