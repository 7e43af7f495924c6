"""Screenshot of napari with the Report dock on the bundled sample case 1001 (manual mask).

Run under a virtual display (napari needs OpenGL)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_report.py docs/report_dock.png

It opens the sample case with the plugin's reader, docks the Report widget on the
case's mask, shows the AHA segment map over LGE on the slice with most scar and
saves the whole window.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "train25" / "myops_training_1001_C0.nii.gz"


def main(argv: list[str] | None = None) -> int:
    """Make the screenshot; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output PNG")
    parser.add_argument("--size", default="1600x1000", help="window size WxH (default 1600x1000)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_gmmseg._widgets import ReportWidget
    from napari_gmmseg.labels import SCAR

    viewer = napari.Viewer(title="napari-gmmseg", show=True)
    app = QApplication.instance()
    qt_window = viewer.window._qt_window
    qt_window.resize(width, height)
    qt_window.move(0, 0)
    viewer.open(str(SAMPLE), plugin="napari-gmmseg")
    mask = viewer.layers["mask"]
    report = ReportWidget(viewer)
    viewer.window.add_dock_widget(report, name="Report", area="right")
    report.label_layer.set_layer(mask)
    report.update_report()
    for layer in viewer.layers:
        layer.visible = layer.name in ("LGE", mask.name) or "AHA segments" in layer.name
    mask.opacity = 0.35
    seg = report.segments_layer
    labels = np.asarray(mask.data)
    z = int(np.argmax((labels == SCAR.value).sum(axis=(1, 2))))
    viewer.dims.set_current_step(0, z)
    ys, xs = np.nonzero(np.asarray(seg.data)[z] > 0)
    scale = np.asarray(seg.scale[-2:])
    lo, hi = np.array([ys.min(), xs.min()]) * scale, np.array([ys.max(), xs.max()]) * scale
    viewer.scene.camera.center = (float(z * seg.scale[0]), *((lo + hi) / 2))
    app.processEvents()
    canvas_size = np.asarray(viewer.window._qt_viewer.canvas.size)
    viewer.scene.camera.zoom = float(np.min(canvas_size / ((hi - lo) * 3.2)))
    for _ in range(30):
        app.processEvents()
        time.sleep(0.02)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    print(f"wrote {args.out} (slice {z})")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
