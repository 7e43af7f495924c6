"""Bullseye plots and the one-page case report (matplotlib ``Figure``, no pyplot).

The bullseye follows the AHA 2002 layout as seen from the apex: basal ring
outside, apex (17) in the centre, segment 1 (anterior) at the top, the septum
(2, 3, 8, 9, 14) on the left.  Slice overlays are resampled into the same
view (anterior up, septum left, counter-clockwise = AHA order), so a reader
compares slices and bullseye without mental rotation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_gmmseg.labels import EDEMA, RV, SCAR
from napari_gmmseg.report.orientation import MYOCARDIUM_VALUES

__all__ = ["bullseye_figure", "draw_bullseye", "report_figure", "standard_view"]

#: Ring ``(inner, outer)`` radius per level, bullseye units.
_RINGS = {"apex": (0.0, 1.0), "apical": (1.0, 2.0), "mid": (2.0, 3.0), "basal": (3.0, 4.0)}


def _wedge(segment: int) -> tuple[str, float, float]:
    """Level and ``(theta1, theta2)`` screen degrees (counter-clockwise from +x) of a segment."""
    if segment == 17:
        return "apex", 0.0, 360.0
    if segment <= 12:
        level = "basal" if segment <= 6 else "mid"
        k = (segment - 1) % 6
        centre, half = 90.0 + 60.0 * k, 30.0
    else:
        level, k = "apical", segment - 13
        centre, half = 90.0 + 90.0 * k, 45.0
    return level, centre - half, centre + half


def draw_bullseye(
    ax: Any,
    values_17: Sequence[float],
    *,
    title: str = "",
    cmap: str = "magma",
    vmax: float = 100.0,
    unit: str = "%",
    annotate: bool = True,
    text_color: str = "black",
) -> Any:
    """Draw a 17-segment bullseye of ``values_17`` (segment 1 first; NaN = absent) on ``ax``.

    Returns the ``ScalarMappable`` for a colour bar.
    """
    import matplotlib as mpl
    from matplotlib.patches import Wedge

    values = np.asarray(values_17, dtype=np.float64)
    norm = mpl.colors.Normalize(vmin=0.0, vmax=vmax)
    cm = mpl.colormaps[cmap]
    for s in range(1, 18):
        level, t1, t2 = _wedge(s)
        r0, r1 = _RINGS[level]
        v = values[s - 1]
        absent = not np.isfinite(v)
        face = (0.85, 0.85, 0.85, 1.0) if absent else cm(norm(v))
        ax.add_patch(
            Wedge(
                (0, 0),
                r1,
                t1,
                t2,
                width=r1 - r0,
                facecolor=face,
                edgecolor="white",
                lw=1.2,
                hatch="//" if absent else None,
            )
        )
        if annotate:
            rm = (r0 + r1) / 2 if s != 17 else 0.0
            tm = np.radians((t1 + t2) / 2)
            txt = f"{s}\n–" if absent else f"{s}\n{v:.0f}{unit}"
            lum = 0.299 * face[0] + 0.587 * face[1] + 0.114 * face[2]
            dark = lum > 0.5
            ax.text(
                rm * np.cos(tm),
                rm * np.sin(tm),
                txt,
                ha="center",
                va="center",
                fontsize=8,
                color="black" if dark else "white",
            )
    ax.set_xlim(-4.2, 4.2)
    ax.set_ylim(-4.2, 4.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=9, color=text_color)
    ax.text(0, 4.15, "anterior", ha="center", va="bottom", fontsize=8, color=text_color)
    ax.text(-4.15, 0, "septal", ha="right", va="center", fontsize=8, rotation=90, color=text_color)
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=cm)
    sm.set_array([])
    return sm


#: What the numbers in a bullseye cell are (the legend under the bullseyes).
CELL_LEGEND = "each cell: AHA segment number, and % of that segment's myocardium"


def bullseye_figure(
    reports: Sequence[tuple[str, Any]], fig: Any = None, title: str = "", dark: bool = False
) -> Any:
    """Scar and edema (% of segment) bullseyes, one row per ``(name, CaseReport)``.

    ``dark``: light text on a transparent background (napari's dark theme).
    """
    from matplotlib.figure import Figure

    n = len(reports)
    fg = "#e6e6e6" if dark else "black"
    if fig is None:
        fig = Figure(figsize=(7.6, 3.4 * n + 0.4), dpi=110, layout="constrained")
    if dark:
        fig.patch.set_alpha(0.0)
    if title:
        fig.suptitle(title, fontsize=10, color=fg)
    axes = fig.subplots(n, 2, squeeze=False)
    for row, (name, rep) in enumerate(reports):
        for col, (key, label, cmap) in enumerate(
            (("scar_pct", "scar", "magma_r"), ("edema_pct", "edema", "YlOrBr"))
        ):
            ax = axes[row, col]
            heading = label if n == 1 else f"{name}: {label}"
            sm = draw_bullseye(ax, rep.column(key), title=heading, cmap=cmap, text_color=fg)
            bar = fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.04)
            bar.ax.tick_params(colors=fg, labelsize=8)
            bar.set_label("% of segment", color=fg, fontsize=8)
    fig.text(0.5, 0.005, CELL_LEGEND, ha="center", va="bottom", fontsize=8, color=fg)
    return fig


def standard_view(
    slice_yx: np.ndarray,
    frame: Any,
    spacing_yx_mm: Sequence[float],
    hand: int,
    *,
    half_width_mm: float,
    order: int = 0,
    pixel_mm: float = 0.5,
) -> np.ndarray:
    """Resample a slice around its LV centre into the bullseye view (anterior up, septum left).

    Returns a ``(H, H)`` array with row 0 at the top of the display.
    """
    from scipy.ndimage import map_coordinates

    n = max(int(2 * half_width_mm / pixel_mm), 8)
    ax = (np.arange(n, dtype=np.float32) - (n - 1) / 2) * pixel_mm
    x, y = np.meshgrid(ax, -ax)  # display mm, y up
    psi = np.arctan2(y, x)
    r = np.hypot(x, y)
    theta = psi - np.pi + frame.anchor_rad  # AHA-frame angle shown at display angle psi
    raw = hand * theta
    rows = frame.centre_rc[0] + r * np.sin(raw) / spacing_yx_mm[0]
    cols = frame.centre_rc[1] + r * np.cos(raw) / spacing_yx_mm[1]
    return map_coordinates(slice_yx, [rows, cols], order=order, mode="constant", cval=0)


def _overlay(ax: Any, image: np.ndarray | None, labels: np.ndarray, segs: np.ndarray, title: str):
    """One slice in the standard view: image (grey), segment borders, scar and edema tint."""
    shown = image if image is not None else np.isin(labels, MYOCARDIUM_VALUES).astype(float)
    lo, hi = np.percentile(shown, [1, 99.5]) if shown.size else (0, 1)
    ax.imshow(shown, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
    tint = np.zeros((*labels.shape, 4), dtype=np.float32)
    tint[labels == SCAR.value] = (*SCAR.color[:3], 0.55)
    tint[labels == EDEMA.value] = (*EDEMA.color[:3], 0.45)
    tint[labels == RV.value] = (*RV.color[:3], 0.30)
    ax.imshow(tint, interpolation="nearest")
    edge = np.zeros(segs.shape, dtype=bool)
    edge[:-1] |= segs[:-1] != segs[1:]
    edge[:, :-1] |= segs[:, :-1] != segs[:, 1:]
    edge &= segs > 0
    ax.imshow(np.where(edge, 1.0, np.nan), cmap="cool", vmin=0, vmax=1, interpolation="nearest")
    for s in np.unique(segs[segs > 0]):
        rr, cc = np.nonzero(segs == s)
        ax.text(cc.mean(), rr.mean(), str(s), color="white", fontsize=8, ha="center", va="center")
    # orientation: the standard short-axis view, anterior up and septum (RV side) left
    for x, y, text, ha, va in (
        (0.5, 0.99, "A", "center", "top"),
        (0.01, 0.5, "S", "left", "center"),
        (0.5, 0.01, "I", "center", "bottom"),
        (0.99, 0.5, "L", "right", "center"),
    ):
        ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=8,
                color="#ffd24d", fontweight="bold")  # fmt: skip
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _apex_words(rep: Any) -> str:
    """Which end of the stack is the apex, in words."""
    end = "the last slice" if rep.apex_last else "the first slice"
    return f"{end} of {len(rep.frames)}"


def _totals_text(name: str, rep: Any) -> str:
    t = rep.totals
    return (
        f"{name}: LV myocardium {t['myocardium_ml']:.1f} mL | scar {t['scar_ml']:.1f} mL "
        f"({t['scar_pct']:.1f} %) | edema {t['edema_ml']:.1f} mL ({t['edema_pct']:.1f} %)"
    )


def _segment_table(ax: Any, reports: Sequence[tuple[str, Any]]) -> None:
    """Per-segment scar %, edema % and scar transmurality % of each report, as a table."""
    present = [s for s in range(1, 18) if any(r.segments[s - 1]["present"] for _, r in reports)]
    cells, names = [], []
    for key, label in (
        ("scar_pct", "scar %"),
        ("edema_pct", "edema %"),
        ("scar_transmurality_pct", "scar transmurality %"),
    ):
        for name, r in reports:
            col = r.column(key)
            cells.append(
                ["–" if not np.isfinite(col[s - 1]) else f"{col[s - 1]:.0f}" for s in present]
            )
            names.append(f"{label} ({name})" if len(reports) > 1 else label)
    table = ax.table(
        cellText=cells,
        rowLabels=names,
        colLabels=[str(s) for s in present],
        bbox=[0.17, 0.0, 0.83, 0.62],
        cellLoc="center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)


def report_details(
    case: str | None,
    labels_zyx: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    method: str | None = None,
    roi: str | None = None,
    params: Any = None,
    stated_error: str | None = None,
    date: str | None = None,
) -> list[tuple[str, str]]:
    """The page header's lines: case and date, method and ROI, burden, stated error.

    The burden comes from :func:`napari_gmmseg.accuracy.burden_summary` (with a method's
    95 % interval when ``params`` carries one).
    """
    import time

    from napari_gmmseg.accuracy import burden_summary

    lines = [("case", f"{case or 'unnamed'} · report of {date or time.strftime('%Y-%m-%d')}")]
    if method or roi:
        lines.append(("segmentation", f"{method or 'not recorded'} · ROI: {roi or 'not recorded'}"))
    summary = burden_summary(labels_zyx, spacing_mm, params)
    lines += summary.rows()[:4]
    if stated_error:
        lines.append(("stated error", stated_error))
    return lines


def report_figure(
    rep: Any,
    labels_zyx: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    image_zyx: np.ndarray | None = None,
    manual: tuple[Any, np.ndarray] | None = None,
    title: str = "",
    max_slices: int = 6,
    details: Sequence[tuple[str, str]] = (),
) -> Any:
    """The one-page case report: slice overlays, bullseyes, segment table and totals.

    Parameters
    ----------
    rep : CaseReport
        Report of ``labels_zyx``.
    labels_zyx : numpy.ndarray
        ``(Z, Y, X)`` label map the report was computed from.
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size.
    image_zyx : numpy.ndarray, optional
        ``(Z, Y, X)`` image under the overlays (LGE preferred).
    manual : (CaseReport, labels), optional
        The manual mask's report and labels, shown beside (same numbers).
    title : str
        Page title (case id, method).
    max_slices : int
        Slices shown (evenly spread base to apex when there are more).
    details : sequence of (str, str)
        ``(name, value)`` lines under the title: case, date, method, ROI, the burden (with
        its interval when reported) and the stated error (:func:`report_details`).
    """
    from matplotlib.figure import Figure

    first = "segmentation" if manual else "label map"
    rows = [(first, rep, labels_zyx)] + ([("manual", *manual)] if manual else [])
    frames = rep.frames if rep.apex_last else rep.frames[::-1]  # base first
    pick = np.unique(np.linspace(0, len(frames) - 1, min(max_slices, len(frames))).round())
    frames = [frames[int(i)] for i in pick]
    sp = (float(spacing_mm[1]), float(spacing_mm[2]))
    fig = Figure(figsize=(11.7, 8.3), dpi=110)  # A4 landscape
    fig.suptitle(title or "AHA 17-segment report", fontsize=13, x=0.01, ha="left", y=0.995)
    top = 0.93
    if details:
        text = "\n".join(f"{name}: {value}" for name, value in details)
        fig.text(0.01, 0.965, text, va="top", ha="left", fontsize=8, wrap=True)
        top = 0.93 - 0.017 * len(details)
    grid = fig.add_gridspec(
        3, max(len(frames), 4), height_ratios=[1.0, 1.25, 0.8], top=top, bottom=0.02, hspace=0.2
    )
    from matplotlib.patches import Patch

    key = [Patch(color=t.color[:3], label=f"{t.name}") for t in (SCAR, EDEMA, RV)] + [
        Patch(facecolor="none", edgecolor="#ff00ff", label="AHA segment border")
    ]
    fig.legend(handles=key, loc="upper right", fontsize=8, ncol=4, frameon=False,
               bbox_to_anchor=(0.995, 0.995), title="slice colours", title_fontsize=8)  # fmt: skip
    segs_all = rep.segments_zyx
    myo = np.isin(labels_zyx, MYOCARDIUM_VALUES)
    for i, f in enumerate(frames):
        rr, cc = np.nonzero(myo[f.z])
        half = 1.6 * np.hypot((rr - f.centre_rc[0]) * sp[0], (cc - f.centre_rc[1]) * sp[1]).max()
        view = {"half_width_mm": half, "pixel_mm": max(half / 80, 0.25)}
        lab = standard_view(labels_zyx[f.z], f, sp, rep.hand, **view)
        seg = standard_view(segs_all[f.z], f, sp, rep.hand, **view)
        img = None
        if image_zyx is not None:
            img = standard_view(image_zyx[f.z].astype(np.float32), f, sp, rep.hand, order=1, **view)
        level = next(s["level"] for s in rep.slices if s["slice"] == f.z)
        _overlay(fig.add_subplot(grid[0, i]), img, lab, seg, f"slice {f.z} ({level})")
    n_bull = 2 * len(rows)
    sub = grid[1, :].subgridspec(1, n_bull)
    for j, (name, r, _) in enumerate(rows):
        for k, (key, label, cmap) in enumerate(
            (("scar_pct", "scar", "magma_r"), ("edema_pct", "edema", "YlOrBr"))
        ):
            ax = fig.add_subplot(sub[0, 2 * j + k])
            sm = draw_bullseye(ax, r.column(key), title=f"{name}: {label}", cmap=cmap)
            fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=8)
    ax = fig.add_subplot(grid[2, :])
    ax.axis("off")
    lines = [_totals_text(name, r) for name, r, _ in rows]
    lines.append(CELL_LEGEND + " (bullseye colour scale: % of segment, not a tissue colour)")
    lines.append(
        "slices in the standard short-axis view: A anterior (up), S septal (left), "
        "I inferior, L lateral;\nsegments numbered as AHA 2002, septum placed from the RV "
        f"insertion points; apex end of the stack: {_apex_words(rep)}"
    )
    ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace")
    _segment_table(ax, [(name, r) for name, r, _ in rows])
    return fig
