"""Dock widgets in a real napari viewer (headless: ``xvfb-run -a python -m pytest tests/test_widgets.py``)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_gmmseg.labels import CLASS_NAMES, CLASS_VALUES, COLOR_BY_VALUE, LV_ROI_VALUES
from napari_gmmseg.methods import METHODS

pytestmark = pytest.mark.gui

N_SLICES = 3
SIZE = 64
WIDGET_MODULES = ("_common", "_segment", "_evaluate", "_export", "_load", "_inspect")


@pytest.fixture(scope="module")
def case():
    from napari_gmmseg.phantom import make_case

    return make_case(0, n_slices=N_SLICES, size=SIZE)


@pytest.fixture
def errors(monkeypatch):
    """Messages the widgets show as napari error notifications."""
    import importlib

    shown: list[str] = []
    for mod in WIDGET_MODULES:
        module = importlib.import_module(f"napari_gmmseg._widgets.{mod}")
        if hasattr(module, "show_error"):
            monkeypatch.setattr(module, "show_error", shown.append)
    return shown


def add_case(viewer, case):
    """Add the case's layers exactly as the plugin's reader makes them."""
    from napari.layers import Layer

    from napari_gmmseg._reader import case_layer_data

    layers = [Layer.create(*data) for data in case_layer_data(case)]
    for layer in layers:
        viewer.add_layer(layer)
    return {layer.name: layer for layer in layers}


def dock(viewer, widget):
    """Dock ``widget`` so the viewer's window owns (and finally deletes) it."""
    viewer.window.add_dock_widget(widget, name=type(widget).__name__)
    return widget


def run_and_wait(qtbot, widget, timeout=60_000):
    widget.run()
    assert widget.running, "Run did not start a worker"
    assert not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
    assert widget.run_button.isEnabled()


def segment_widget(viewer, method="gmm", **options):
    from napari_gmmseg._widgets import SegmentWidget

    widget = dock(viewer, SegmentWidget(viewer))
    widget.method.setCurrentIndex(widget.method.findData(method))
    for name, value in options.items():
        getattr(widget, name).setValue(value)
    return widget


def assert_tissue_labels(layer, case, roi):
    data = np.asarray(layer.data)
    assert data.shape == case.shape
    assert set(np.unique(data)) <= {0, *CLASS_VALUES}
    assert not data[~roi].any(), "labels outside the ROI"
    # tissue-net leaves out the ROI voxels its network calls "outside" (counted in its params)
    outside = layer.metadata.get("gmmseg_fit").params.get("roi_pixels_outside", 0)
    assert (data[roi] == 0).sum() == outside < 0.05 * roi.sum(), "ROI voxels left unlabelled"
    # names (napari shows them under the cursor) and fixed colours
    assert list(layer.features["class"][:4]) == list(CLASS_NAMES)
    assert list(layer.features["index"][:4]) == list(CLASS_VALUES)
    for value, color in COLOR_BY_VALUE.items():
        np.testing.assert_allclose(layer.colormap.map(np.array([value]))[0], color, atol=1e-6)
    assert layer.colormap.map(np.array([0]))[0][3] == 0


DEEP = pytest.mark.slow  # MONAI import + a few epochs of per-slice U-Nets


def _registered_methods() -> list:
    """Every method of the registry (deep ones marked slow)."""
    from napari_gmmseg.methods import METHODS

    return [pytest.param(n, marks=DEEP) if s.family == "deep" else n for n, s in METHODS.items()]


@pytest.mark.parametrize("method", _registered_methods())
def test_each_method_fills_a_tissue_labels_layer(
    make_napari_viewer_proxy, qtbot, case, errors, method, tmp_path
):
    from napari_gmmseg._reader import GEOMETRY_KEY

    viewer = make_napari_viewer_proxy()
    add_case(viewer, case)
    deep = method.startswith("deep")
    em = METHODS[method].family == "em"
    restarts = {"n_init": 3} if em else {}
    widget = segment_widget(viewer, method, max_iter=2 if deep else 100, seed=3, **restarts)
    assert widget.n_init.isEnabled() is em  # restarts are an EM option
    if method == "deepsvg-mu":
        widget.model_file.setText(str(mu_data_file(case, tmp_path)))
    takes_model = METHODS[method].accepts("model")
    assert widget.model_file.isEnabled() is (deep or takes_model)
    if method == "tissue-net":  # the shipped ensemble, chosen in the Model file row
        from napari_gmmseg.tissuenet.model import SHIPPED_PATH

        model = SHIPPED_PATH
        widget.model_file.setText(str(model))
    elif takes_model:  # a classifier learned on this case, chosen in the Model file row
        from napari_gmmseg.classifier import learn_classifier

        model = learn_classifier([case], epochs=1).save(tmp_path / "clf.npz")
        widget.model_file.setText(str(model))
    widget.probabilities.setChecked(True)
    n_layers = len(viewer.layers)
    run_and_wait(qtbot, widget, timeout=90_000)
    assert errors == []
    out = widget.last_output
    assert out is not None and out in viewer.layers
    assert_tissue_labels(out, case, case.roi(LV_ROI_VALUES))
    meta = out.metadata["gmmseg"]
    assert meta["method"] == method and meta["seed"] == 3
    assert meta["version"]
    assert meta["channels"] == ["bSSFP", "LGE", "T2"]
    fit = out.metadata["gmmseg_fit"]
    assert fit.method == method and not fit.cancelled
    if deep:  # the epoch limit reached the core
        assert meta["options"]["max_epochs"] == 2 and (fit.n_iter_ <= 2).all()
    elif em:  # so did the restarts: one best restart recorded per fitted slice
        assert meta["options"]["n_init"] == 3 and fit.params["engine"]["n_init"] == 3
        assert len(fit.params["engine"]["best_restart"]) == len(fit.slice_index)
    if takes_model:
        assert meta["options"]["model"] == str(model)
        if method == "tissue-net":
            assert fit.params["model"]["members"] == 5
        else:
            assert fit.params["classifier"]["cases"] == [case.case_id]
    assert out.metadata[GEOMETRY_KEY] is case.geometry  # Export restores the source grid
    np.testing.assert_allclose(out.scale, case.spacing_mm)
    # volumes table: class, voxels, mL from the voxel count and the spacing
    voxel_ml = np.prod(case.spacing_mm) / 1000
    for row in out.features.itertuples():
        assert row.voxels == int((np.asarray(out.data) == row.index).sum())
        assert row.mL == pytest.approx(row.voxels * voxel_ml)
    assert widget.table.rowCount() == 4
    # the clinical read-out below it; these settings (restarts, a model learned on this
    # case, 2 epochs) were never cross-validated, so no error is claimed for them
    from napari_gmmseg.accuracy import NOT_MEASURED, burden_readout

    text = widget.burden.text()
    assert burden_readout(np.asarray(out.data), case.spacing_mm) in text
    assert NOT_MEASURED in text and "limits of agreement" not in text
    # four probability maps, one per class
    assert len(viewer.layers) == n_layers + 1 + 4
    probs = [lay for lay in viewer.layers if lay.name.startswith(f"{out.name} p(")]
    assert [p.data.shape for p in probs] == [case.shape] * 4


def mu_data_file(case, tmp_path):
    """A mu_data JSON (class means per sequence) for deepSVG_mu."""
    from napari_gmmseg.naming import DEFAULT_PRIOR

    path = tmp_path / "mu.json"
    DEFAULT_PRIOR.save(path)
    return path


def test_errors_show_a_message_and_create_nothing(make_napari_viewer_proxy, qtbot, case, errors):
    viewer = make_napari_viewer_proxy()
    layers = add_case(viewer, case)
    widget = segment_widget(viewer)

    # mismatched layer shapes
    viewer.add_image(np.zeros((N_SLICES, SIZE, SIZE + 5), np.float32), name="odd T2")
    widget.channel_list.set_checked([layers["bSSFP"], layers["LGE"], viewer.layers["odd T2"]])
    before = list(viewer.layers)
    widget.run()
    assert not widget.running and list(viewer.layers) == before
    assert len(errors) == 1 and "different shapes" in errors[0] and "odd T2" in errors[0]

    # no ROI values chosen
    widget.channel_list.set_checked([layers["bSSFP"], layers["LGE"], layers["T2"]])
    widget.roi_values.set_checked([])
    widget.run()
    assert not widget.running and list(viewer.layers) == before
    assert "ROI" in errors[-1]

    # no ROI layer at all: the ROI combo falls back to "automatic", which needs bSSFP
    viewer.layers.remove(layers["mask"])
    assert widget.roi_layer.layer() is None
    assert widget.roi_layer.currentText().startswith("automatic")
    widget.channel_list.set_checked([layers["LGE"], layers["T2"]])
    before = list(viewer.layers)
    widget.run()
    assert not widget.running and list(viewer.layers) == before
    assert "bSSFP" in errors[-1]
    widget.channel_list.set_checked([layers["bSSFP"], layers["LGE"], layers["T2"]])

    # an error from the core while running (ROI smaller than K): message, no layer
    tiny = np.zeros(case.shape, np.int32)
    tiny[1, 30, 30:32] = 500
    viewer.add_labels(tiny, name="tiny ROI")
    widget.roi_layer.set_layer(viewer.layers["tiny ROI"])
    before = list(viewer.layers)
    n_errors = len(errors)
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert list(viewer.layers) == before
    assert len(errors) == n_errors + 1
    assert widget.last_output is None


def test_cancel_stops_and_keeps_finished_slices(
    make_napari_viewer_proxy, qtbot, case, errors, monkeypatch
):
    import napari_gmmseg.segment as core

    viewer = make_napari_viewer_proxy()
    add_case(viewer, case)
    widget = segment_widget(viewer, "svgmm", max_iter=100_000)
    # at this tolerance slices 1 and 2 converge after ~30 iterations, slice 0 after ~200
    widget.tol.setText("1e-7")
    cancelled_at = []
    real_segment = core.segment

    def segment_cancelled_on_first_slice(*args, progress=None, **kw):
        # Deterministic: the cancel reaches the core from its own progress report, in the
        # core's thread, so the fit cannot run on (and converge) before the GUI sees it.
        def report(p):
            if p.slices_done >= 1:
                widget._stop.set()
            progress(p)

        return real_segment(*args, progress=report, **kw)

    monkeypatch.setattr(core, "segment", segment_cancelled_on_first_slice)

    def on_progress(p):
        if p.slices_done >= 1 and not cancelled_at:
            widget.cancel()  # the button's path: disables Cancel, says "cancelling"
            cancelled_at.append(time.perf_counter())

    widget.run()
    widget.worker.yielded.connect(on_progress)
    assert widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert cancelled_at and time.perf_counter() - cancelled_at[0] < 5
    assert errors == []
    out = widget.last_output
    fit = out.metadata["gmmseg_fit"]
    assert fit.cancelled
    assert 1 <= fit.finished.sum() < len(fit.finished)
    assert out.metadata["gmmseg"]["cancelled"] is True
    # the slices the fit finished are in the layer, fully labelled; the others are empty
    data = np.asarray(out.data)
    roi = case.roi()
    for s, z in enumerate(fit.slice_index):
        if fit.finished[s]:
            assert (data[z][roi[z]] > 0).all()
        else:
            assert not data[z].any()
    assert "cancelled" in widget.status.text()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_layer_fills_in_live_from_partial_results(make_napari_viewer_proxy, qtbot, case, errors):
    """Slices the real core reports finished (``Progress.partial``) appear while it runs."""
    viewer = make_napari_viewer_proxy()
    add_case(viewer, case)
    widget = segment_widget(viewer, "svgmm", max_iter=100_000)
    # at this tolerance slices 1 and 2 converge after ~30 iterations, slice 0 after ~200
    widget.tol.setText("1e-7")
    filled = []

    def on_progress(p):
        layer = widget._request.output
        n = 0 if layer is None else int(np.asarray(layer.data).any(axis=(1, 2)).sum())
        filled.append((n, int(p.slices_done)))

    widget.run()
    widget.worker.yielded.connect(on_progress)
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert errors == []
    # while the worker ran, the layer held exactly the finished slices, some but not all
    assert all(n == done for n, done in filled)
    assert any(0 < n < N_SLICES for n, _ in filled)
    fit = widget.last_output.metadata["gmmseg_fit"]
    assert not fit.cancelled
    np.testing.assert_array_equal(np.asarray(widget.last_output.data), fit.labels)
    assert widget.status.text().startswith("done")


def test_polygon_roi_from_a_shapes_layer(make_napari_viewer_proxy, qtbot, case, errors):
    viewer = make_napari_viewer_proxy()
    layers = add_case(viewer, case)
    viewer.layers.remove(layers["mask"])
    widget = segment_widget(viewer)
    # no shape drawn yet: a clear error, nothing created
    shapes = viewer.add_shapes(name="ROI", ndim=3)
    widget.roi_layer.set_layer(shapes)
    before = list(viewer.layers)
    widget.run()
    assert list(viewer.layers) == before and "polygon" in errors[-1]
    # a square around the LV on slice 1, drawn in world coordinates (mm)
    z = 1
    ys, xs = np.nonzero(case.roi()[z])
    y0, y1, x0, x1 = ys.min() - 2, ys.max() + 2, xs.min() - 2, xs.max() + 2
    sz, sy, sx = case.spacing_mm
    square = np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float)
    shapes.add_polygons([square * [sz, sy, sx]])
    n_errors = len(errors)
    run_and_wait(qtbot, widget)
    assert len(errors) == n_errors
    data = np.asarray(widget.last_output.data)
    inside = np.zeros(case.shape, bool)
    inside[z, y0 : y1 + 1, x0 : x1 + 1] = True
    assert (data[inside] > 0).mean() > 0.95  # rasterised polygon, border pixels aside
    assert not data[~inside].any()


def test_inspect_evaluate_export_after_a_run(
    make_napari_viewer_proxy, qtbot, case, errors, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QMessageBox

    from napari_gmmseg._widgets import EvaluateWidget, ExportWidget, InspectWidget
    from napari_gmmseg.io import read_labels
    from napari_gmmseg.metrics import evaluate_labels

    viewer = make_napari_viewer_proxy()
    layers = add_case(viewer, case)
    widget = segment_widget(viewer, "gmm", seed=1)
    run_and_wait(qtbot, widget)
    out = widget.last_output
    fit = out.metadata["gmmseg_fit"]

    # Inspect: NLL curves of every slice, one histogram per channel with K Gaussians
    inspect = dock(viewer, InspectWidget(viewer))
    inspect.layer_combo.set_layer(out)
    viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: "slice 1" in inspect.info.text(), timeout=5000)
    axes = inspect.figure.axes
    assert len(axes) == 1 + 3
    row = int(np.flatnonzero(fit.slice_index == 1)[0])
    bold = [ln for ln in axes[0].lines if ln.get_label() == "this slice"]
    np.testing.assert_allclose(bold[0].get_ydata(), fit.nll_history[row])
    assert len(axes[1].lines) == fit.means_.shape[1] + 1  # K components + mixture
    assert len(axes[1].patches) > 10  # the histogram bars

    # Evaluate: the table holds metrics.evaluate_labels' volume rows
    evaluate = dock(viewer, EvaluateWidget(viewer))
    evaluate.seg_layer.set_layer(out)
    evaluate.mask_layer.set_layer(layers["mask"])
    evaluate.evaluate()
    assert errors == []
    expected = [
        r
        for r in evaluate_labels(np.asarray(out.data), case.labels, case.spacing_mm)
        if r["level"] == "volume"
    ]
    assert evaluate.table.rowCount() == len(expected) == 6  # 4 classes, LV myo, scar+edema
    for i, r in enumerate(expected):
        assert evaluate.table.item(i, 0).text() == r["class"]
        assert float(evaluate.table.item(i, 1).text()) == pytest.approx(r["dice"], abs=1e-3)
    assert "scar" in evaluate.summary.text() and "mL" in evaluate.summary.text()
    # the MyoPS 2020 per-case scores of the current layer, as named and matched
    from napari_gmmseg.metrics import myops_scores

    scores = myops_scores(np.asarray(out.data), case.labels)
    text = evaluate.summary.text()
    assert f"scar Dice {scores['scar_dice']:.3f} as named" in text
    assert f"scar ∪ edema Dice {scores['scar_edema_dice']:.3f} as named" in text
    lesion = next(r for r in expected if r["class"] == "scar+edema")
    assert f"{lesion['dice']:.3f} matched" in text
    # Relabel: afterwards the labels as named score the matched Dice
    evaluate.relabel()
    after = [
        r
        for r in evaluate_labels(np.asarray(out.data), case.labels, case.spacing_mm)
        if r["level"] == "volume"
    ]
    for r_before, r_after in zip(expected, after, strict=True):
        assert r_after["dice_named"] == pytest.approx(r_before["dice"], abs=1e-9)
    assert out.metadata["gmmseg"]["relabelled_to"] == "mask"

    # Export: NIfTI on the source geometry; asks before overwriting
    export = dock(viewer, ExportWidget(viewer))
    export.layer_combo.set_layer(out)
    path = tmp_path / "seg.nii.gz"
    export.path_edit.setText(str(tmp_path / "seg"))  # suffix added
    assert export.export() == path
    labels, geometry = read_labels(path, with_geometry=True)
    np.testing.assert_array_equal(labels, np.asarray(out.data))
    np.testing.assert_allclose(geometry.affine, case.geometry.affine, atol=1e-5)
    assert geometry.shape == case.shape
    asked = []

    def answer(button):
        def question(parent, title, text, *args):
            asked.append(text)
            return button

        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    out.data = np.zeros(case.shape, np.int32)
    assert export.export() is None
    assert len(asked) == 1 and str(path) in asked[0]
    np.testing.assert_array_equal(read_labels(path), labels)  # untouched
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    # never onto a file the case was read from, even when the user would say yes
    from napari_gmmseg._reader import SOURCE_KEY

    viewer.layers[0].metadata[SOURCE_KEY] = str(path)
    assert export.export() is None and "is an input" in errors[-1]
    np.testing.assert_array_equal(read_labels(path), labels)  # untouched
    viewer.layers[0].metadata[SOURCE_KEY] = None
    assert export.export() == path and len(asked) == 2
    assert not read_labels(path).any()
    # a layer without source geometry cannot be exported on it
    viewer.add_labels(np.zeros(case.shape, np.int32), name="painted")
    export.layer_combo.set_layer(viewer.layers["painted"])
    assert export.export() is None and "no source geometry" in errors[-1]


def test_load_case_widget(make_napari_viewer_proxy, case, tmp_path, errors):
    from napari_gmmseg._reader import GEOMETRY_KEY
    from napari_gmmseg._widgets import LoadCaseWidget
    from napari_gmmseg.phantom import write_case

    paths = write_case(case, tmp_path)
    viewer = make_napari_viewer_proxy()
    widget = dock(viewer, LoadCaseWidget(viewer))
    widget.case_path.setText(str(paths["bSSFP"].parent))
    widget.load()
    assert errors == []
    assert [lay.name for lay in viewer.layers] == ["bSSFP", "LGE", "T2", "mask"]
    assert viewer.layers["mask"].data.shape == case.shape
    assert viewer.layers["LGE"].metadata[GEOMETRY_KEY].same_grid(case.geometry)

    viewer.layers.clear()
    widget.tabs.setCurrentIndex(1)
    widget.sequence_paths["LGE"].setText(str(paths["LGE"]))
    widget.sequence_paths["mask"].setText(str(paths["mask"]))
    widget.load()
    assert [lay.name for lay in viewer.layers] == ["LGE", "mask"]
    np.testing.assert_array_equal(viewer.layers["mask"].data, case.labels)

    viewer.layers.clear()
    widget.sequence_paths["LGE"].setText(str(tmp_path / "nope.nii.gz"))
    widget.load()
    assert len(viewer.layers) == 0 and "nope.nii.gz" in errors[-1]


def test_segment_menu_opens_the_widgets(make_napari_viewer_proxy):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer_proxy()
    app = get_app_model()
    ids = {item.command.id for item in app.menus.get_menu("napari/layers/segment")}
    wanted = {f"napari-gmmseg.{w}_widget" for w in ("segment", "inspect", "evaluate")}
    assert wanted <= ids
    app.commands.execute_command("napari-gmmseg.segment_widget").result()
    from napari_gmmseg._widgets import SegmentWidget

    assert any(isinstance(w, SegmentWidget) for w in viewer.window.dock_widgets.values())


def test_method_option_rows_come_from_the_options_dataclass(make_napari_viewer_proxy, case, errors):
    from napari_gmmseg.errors import ModelError
    from napari_gmmseg.methods import EMOptions

    viewer = make_napari_viewer_proxy()
    add_case(viewer, case)
    widget = segment_widget(viewer, "svgmm")
    form = widget.options_form
    # one row per dock field of the method's dataclass, showing its default
    assert form.widget("spatial").value == EMOptions().spatial
    assert float(form.widget("reg_covar").value) == EMOptions().reg_covar
    assert "n_init" not in widget.build_request().kwargs  # defaults are not passed on
    form.widget("spatial").value = "smooth"
    form.widget("beta").value = "0.25"
    kwargs = widget.build_request().kwargs
    assert kwargs["spatial"] == "smooth" and kwargs["beta"] == 0.25
    assert kwargs["max_iter"] == 100 and widget.max_iter.isEnabled()
    # a pipeline carries its own classes and iterations: the rows are off, nothing is sent
    widget.method.setCurrentIndex(widget.method.findData("tissue-classifier"))
    assert not widget.max_iter.isEnabled() and not widget.n_classes.isEnabled()
    kwargs = widget.build_request().kwargs
    assert not {"max_iter", "n_classes", "tol", "per_slice"} & set(kwargs)
    # deep methods show their own rows; a bad value is refused before any work
    widget.method.setCurrentIndex(widget.method.findData("deepsvg"))
    form.widget("lr").value = "fast"
    with pytest.raises(ModelError, match="lr must be a number"):
        widget.build_request()
    form.widget("lr").value = "-1"
    with pytest.raises(ModelError, match="lr must be > 0"):
        widget.build_request()


def test_all_five_docks_fit_a_1600x1000_screen(make_napari_viewer_proxy, qtbot):
    from napari_gmmseg._widgets import (
        EvaluateWidget,
        ExportWidget,
        InspectWidget,
        LoadCaseWidget,
        SegmentWidget,
    )

    viewer = make_napari_viewer_proxy()
    for cls in (LoadCaseWidget, SegmentWidget, InspectWidget, EvaluateWidget, ExportWidget):
        dock(viewer, cls(viewer))
    import warnings

    with warnings.catch_warnings():  # the Qt main window is only reachable privately
        warnings.simplefilter("ignore", FutureWarning)
        window = viewer.window._qt_window
    assert window.minimumSizeHint().height() <= 1000
    window.resize(1600, 1000)
    qtbot.wait(50)
    assert window.height() <= 1000


def test_numbers_are_cleared_when_their_layers_go(make_napari_viewer_proxy, qtbot, case, errors):
    from napari_gmmseg._widgets import EvaluateWidget, ExportWidget

    viewer = make_napari_viewer_proxy()
    add_case(viewer, case)
    export = dock(viewer, ExportWidget(viewer))
    widget = segment_widget(viewer, "gmm", max_iter=20)
    run_and_wait(qtbot, widget)
    out = widget.last_output
    assert export.layer_combo.currentText() == out.name  # the newest segmentation, not the mask
    evaluate = dock(viewer, EvaluateWidget(viewer))
    evaluate.seg_layer.set_layer(out)
    evaluate.mask_layer.set_layer(viewer.layers["mask"])
    evaluate.evaluate()
    assert widget.table.rowCount() > 0 and evaluate.table.rowCount() > 0
    viewer.layers.remove(out)
    assert widget.table.rowCount() == 0 and widget.status.text() == ""
    assert widget.burden.text() == ""
    assert evaluate.table.rowCount() == 0 and evaluate.summary.text() == ""
    assert errors == []


def test_cancelled_deep_run_leaves_no_empty_layer(make_napari_viewer_proxy, qtbot, case, errors):
    viewer = make_napari_viewer_proxy()
    add_case(viewer, case)
    widget = segment_widget(viewer, "deepg", max_iter=10_000)
    before = len(viewer.layers)
    widget.run()
    widget.cancel()  # before any slice can finish: deep slices finish together
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert len(viewer.layers) == before
    assert "nothing kept" in widget.status.text() and errors == []


def test_iteration_defaults_are_those_of_the_core(make_napari_viewer_proxy):
    from napari_gmmseg.deep.api import DEFAULTS
    from napari_gmmseg.methods import DeepOptions

    viewer = make_napari_viewer_proxy()
    widget = segment_widget(viewer, "gmm")
    assert widget.max_iter.value() == 100  # segment(max_iter=100)
    widget.method.setCurrentIndex(widget.method.findData("deepsvg"))
    # the CLI's and API's epoch limit (it was 50 in the dock)
    assert widget.max_iter.value() == DeepOptions().max_epochs == DEFAULTS["max_epochs"] == 200
    widget.method.setCurrentIndex(widget.method.findData("gmm"))
    assert widget.max_iter.value() == 100


def test_load_dock_replaces_the_case_picks_dataset_cases_and_shows_errors(
    make_napari_viewer_proxy, sample_data_dir, tmp_path, errors
):
    from napari_gmmseg._reader import CASE_ID_KEY
    from napari_gmmseg._widgets import LoadCaseWidget

    viewer = make_napari_viewer_proxy()
    widget = dock(viewer, LoadCaseWidget(viewer))
    widget.case_path.setText(str(sample_data_dir))  # a dataset root: its cases are offered
    assert widget.case_choice.count() == 2 and widget.case_choice.isEnabled()
    widget.case_choice.setCurrentIndex(1)
    widget.load()
    ids = {lay.metadata.get(CASE_ID_KEY) for lay in viewer.layers}
    assert ids == {widget.case_choice.itemText(1)} and len(viewer.layers) == 4
    widget.case_choice.setCurrentIndex(0)
    widget.load()  # another case replaces the open one: never two patients overlaid
    assert {lay.metadata.get(CASE_ID_KEY) for lay in viewer.layers} == {
        widget.case_choice.itemText(0)
    }
    assert len(viewer.layers) == 4
    widget.case_path.setText(str(tmp_path / "missing"))
    widget.load()
    assert "error:" in widget.status.text() and errors  # in the dock, not only notified
