"""Screenshot of the real napari window with the Segment widget docked and a segmentation shown.

Run under a virtual display (napari needs OpenGL; ``QT_QPA_PLATFORM=offscreen``
does not work)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot.py docs/screenshot.png

It opens the bundled sample case 1001 (``sample_data/``) with the plugin's
reader, docks the Segment and Inspect widgets (one tab group), segments with the default
method inside the LV
ROI of the mask, waits for the thread worker, zooms on the left ventricle of a
slice with scar and saves the whole window (``viewer.screenshot(canvas_only=False)``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_gmmseg.methods import DEFAULT_METHOD

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "train25" / "myops_training_1001_C0.nii.gz"


def _wait(app, condition, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("segmentation did not finish in time")
        app.processEvents()
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    """Make the screenshot; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output PNG")
    parser.add_argument(
        "--method", default=DEFAULT_METHOD, help="segmentation method (default: the default)"
    )
    parser.add_argument("--size", default="1600x1000", help="window size WxH (default 1600x1000)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_gmmseg._widgets import InspectWidget, SegmentWidget
    from napari_gmmseg.labels import SCAR

    viewer = napari.Viewer(title="napari-gmmseg", show=True)
    app = QApplication.instance()
    qt_window = viewer.window._qt_window
    qt_window.resize(width, height)
    qt_window.move(0, 0)

    if SAMPLE.is_file():
        viewer.open(str(SAMPLE), plugin="napari-gmmseg")
    else:  # an installed package without sample_data/: the same case, regenerated
        from napari.layers import Layer

        from napari_gmmseg._sample_data import load_phantom_case

        for data in load_phantom_case():
            viewer.add_layer(Layer.create(*data))

    segment = SegmentWidget(viewer)
    inspect = InspectWidget(viewer)
    seg_dock = viewer.window.add_dock_widget(segment, name="Segment", area="right")
    viewer.window.add_dock_widget(inspect, name="Inspect", area="right")
    from napari_gmmseg._widgets._common import tabify_with_plugin_docks

    app.processEvents()
    tabify_with_plugin_docks(inspect)  # as the Plugins menu and `napari -w` give them
    index = segment.method.findData(args.method)
    if index < 0:
        parser.error(f"unknown method {args.method!r}")
    segment.method.setCurrentIndex(index)
    segment.run()
    _wait(app, lambda: not segment.running, timeout=300)
    out = segment.last_output
    if out is None:
        print("segmentation failed", file=sys.stderr)
        return 1

    # Show the segmentation over LGE (scar is bright there), on the slice with most scar.
    for layer in viewer.layers:
        if layer.name in ("bSSFP", "T2", "mask"):
            layer.visible = False
        if layer.name == "LGE":
            layer.visible = True
    out.opacity = 0.55
    labels = np.asarray(out.data)
    scar_per_slice = (labels == SCAR.value).sum(axis=(1, 2))
    z = int(np.argmax(scar_per_slice))
    viewer.dims.set_current_step(0, z)
    # Zoom on the left ventricle: the ROI bounding box, with a margin, in world units.
    roi = labels[z] > 0
    ys, xs = np.nonzero(roi)
    scale = np.asarray(out.scale[-2:])
    lo = np.array([ys.min(), xs.min()]) * scale
    hi = np.array([ys.max(), xs.max()]) * scale
    viewer.scene.camera.center = (float(z * out.scale[0]), *((lo + hi) / 2))
    app.processEvents()
    canvas_size = np.asarray(viewer.window._qt_viewer.canvas.size)
    extent = (hi - lo) * 2.0
    viewer.scene.camera.zoom = float(np.min(canvas_size / extent))
    viewer.layers.selection.active = out
    seg_dock.raise_()
    for _ in range(30):
        app.processEvents()
        time.sleep(0.02)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    print(f"wrote {args.out} (slice {z}, {segment.status.text()})")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
