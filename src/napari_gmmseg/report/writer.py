"""Write a case report to a folder: CSV tables, segment map, bullseye and one-page report.

Every file is written to a hidden temporary name beside its target and moved
into place (atomic); existing outputs are refused, all checked before anything
is computed or written, unless ``overwrite=True`` (``--force``).
"""

from __future__ import annotations

import csv
import io as _io
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg.errors import OutputExistsError

__all__ = ["REPORT_FILES", "check_outputs", "write_csv_rows", "write_report"]

#: Files ``write_report`` writes (``manual_segments.csv`` only with a manual mask).
REPORT_FILES: tuple[str, ...] = (
    "segments.csv",
    "slices.csv",
    "segments.nii.gz",
    "bullseye.png",
    "report.pdf",
    "report.png",
)


def check_outputs(out_dir: str | os.PathLike, names: Sequence[str], overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` naming every existing output unless ``overwrite``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir}: exists and is not a folder")
    existing = [str(out_dir / n) for n in names if (out_dir / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{', '.join(existing)}: exist; pass --force (overwrite=True) to replace them"
        )


def _atomic(path: Path, write: Callable[[str], None], overwrite: bool) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
    try:
        write(str(tmp))
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # never clobbers
            except FileExistsError:
                raise OutputExistsError(f"{path}: exists; pass --force to replace it") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _cell(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else f"{float(v):.4f}"
    return str(v)


def write_csv_rows(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``rows`` as CSV with ``columns`` (NaN as empty cells), atomically."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c, "")) for c in columns])
    text = buf.getvalue()

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    return _atomic(Path(path), write, overwrite)


def _savefig(fig: Any, path: Path, overwrite: bool, fmt: str) -> Path:
    return _atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=fig.dpi), overwrite)


def write_report(
    out_dir: str | os.PathLike,
    rep: Any,
    labels_zyx: np.ndarray,
    geometry: Any,
    *,
    image_zyx: np.ndarray | None = None,
    manual: tuple[Any, np.ndarray] | None = None,
    title: str = "",
    overwrite: bool = False,
    details: Sequence[tuple[str, str]] = (),
) -> list[Path]:
    """Write ``segments.csv``, ``slices.csv``, ``segments.nii.gz``, ``bullseye.png``, ``report.pdf/png``.

    Parameters
    ----------
    out_dir : path-like
        Output folder (created).
    rep : CaseReport
        :func:`napari_gmmseg.report.compute_report` of ``labels_zyx``.
    labels_zyx : numpy.ndarray
        ``(Z, Y, X)`` label map.
    geometry : napari_gmmseg.io.Geometry
        Source grid; ``segments.nii.gz`` is written on it (:func:`napari_gmmseg.io.save_labels`).
    image_zyx : numpy.ndarray, optional
        ``(Z, Y, X)`` image for the overlays.
    manual : (CaseReport, labels), optional
        Manual mask's report and labels: ``manual_segments.csv`` and side-by-side numbers.
    title : str
        Report page title.
    overwrite : bool
        Replace existing outputs.
    details : sequence of (str, str)
        Header lines of the page (:func:`napari_gmmseg.report.figures.report_details`).

    Returns
    -------
    list of Path
        The files written.
    """
    from napari_gmmseg.io import save_labels
    from napari_gmmseg.report.case import SEGMENT_COLUMNS, SLICE_COLUMNS
    from napari_gmmseg.report.figures import bullseye_figure, report_figure

    out = Path(out_dir)
    names = list(REPORT_FILES) + (["manual_segments.csv"] if manual else [])
    check_outputs(out, names, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        write_csv_rows(rep.segments, SEGMENT_COLUMNS, out / "segments.csv", overwrite=overwrite),
        write_csv_rows(rep.slices, SLICE_COLUMNS, out / "slices.csv", overwrite=overwrite),
        save_labels(rep.segments_zyx, geometry, out / "segments.nii.gz", overwrite=overwrite),
    ]
    if manual:
        written.append(
            write_csv_rows(
                manual[0].segments,
                SEGMENT_COLUMNS,
                out / "manual_segments.csv",
                overwrite=overwrite,
            )
        )
    first = "segmentation" if manual else "label map"
    pairs = [(first, rep)] + ([("manual", manual[0])] if manual else [])
    written.append(_savefig(bullseye_figure(pairs), out / "bullseye.png", overwrite, "png"))
    page = report_figure(
        rep,
        labels_zyx,
        geometry.spacing_mm,
        image_zyx=image_zyx,
        manual=manual,
        title=title,
        details=details,
    )
    written.append(_savefig(page, out / "report.pdf", overwrite, "pdf"))
    written.append(_savefig(page, out / "report.png", overwrite, "png"))
    return written
