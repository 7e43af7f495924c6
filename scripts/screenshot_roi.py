"""Screenshot of the automatic ROI in napari: sample case 1001 without its mask, Segment dock.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_roi.py docs/roi_screenshot.png

Opens the bundled sample case, removes the mask layer (no mask loaded), runs the Segment
dock with ROI "automatic (from bSSFP)" and GMM, and saves the window with the editable
``automatic ROI`` layer shown over bSSFP and the QC under the ROI choice.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "train25" / "myops_training_1001_C0.nii.gz"


def main(argv: list[str] | None = None) -> int:
    """Make the screenshot; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output PNG")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_gmmseg._widgets import SegmentWidget
    from napari_gmmseg._widgets._autoroi import AUTO_LAYER_NAME

    viewer = napari.Viewer(title="napari-gmmseg: automatic ROI", show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open(str(SAMPLE), plugin="napari-gmmseg")
    if "mask" in viewer.layers:
        viewer.layers.remove("mask")
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", area="right")
    segment.run()
    end = time.monotonic() + 300
    while segment.running and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    if segment.last_output is None:
        print("segmentation failed", file=sys.stderr)
        return 1
    for layer in viewer.layers:
        layer.visible = layer.name in ("bSSFP", AUTO_LAYER_NAME)
    viewer.layers[AUTO_LAYER_NAME].opacity = 0.5
    viewer.layers.selection.active = viewer.layers[AUTO_LAYER_NAME]
    viewer.dims.set_current_step(0, 2)
    for _ in range(30):
        app.processEvents()
        time.sleep(0.02)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    print(f"wrote {args.out} ({segment.status.text()})")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
