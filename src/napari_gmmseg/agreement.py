"""Burden agreement with the ground truth: Bland-Altman statistics and plot.

Scar and edema burden (% of LV myocardium, or mL) of a method against the
ground truth, per slice or per case, summarised as in Bland & Altman (1986):
bias = mean of (method - reference), 95 % limits of agreement = bias ± 1.96 SD
of the differences, plus the mean absolute error. The plot (matplotlib, Agg
backend, no Qt) has one panel per quantity, methods in colours, and is
written atomically as a PNG beside ``evaluate``'s table.

Inputs are either arrays (:func:`bland_altman`) or the rows of
:func:`napari_gmmseg.metrics.evaluate_labels` / ``metrics.csv`` with a
``method`` column (:func:`burden_agreement`, :func:`write_bland_altman`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg.errors import OutputExistsError

__all__ = [
    "FLAVOURS",
    "LEVELS",
    "QUANTITIES",
    "BlandAltman",
    "Concordance",
    "agreement_summary",
    "bland_altman",
    "burden_agreement",
    "burden_pairs",
    "concordance",
    "plot_bland_altman",
    "write_bland_altman",
]

#: Which prediction the statistics describe: the labels as the method named them
#: (``pred_ml`` / ``pred_pct``, what a user gets) or after per-slice matching to
#: the ground truth (``pred_ml_matched`` / ``pred_pct_matched``, the paper's protocol).
FLAVOURS: dict[str, str] = {"named": "", "matched": "_matched"}

#: quantity -> (row class, value column suffix, axis label)
QUANTITIES: dict[str, tuple[str, str, str]] = {
    "scar_pct": ("scar", "pct", "scar burden (% LV myocardium)"),
    "edema_pct": ("edema", "pct", "edema burden (% LV myocardium)"),
    "scar_ml": ("scar", "ml", "scar volume (mL)"),
    "edema_ml": ("edema", "ml", "edema volume (mL)"),
}


@dataclass(frozen=True)
class BlandAltman:
    """Agreement of paired measurements (method against reference).

    Attributes
    ----------
    n : int
        Number of finite pairs used.
    bias : float
        Mean difference (method - reference).
    sd : float
        Sample SD of the differences (ddof=1; 0 for a single pair).
    loa_low, loa_high : float
        95 % limits of agreement, ``bias ∓ 1.96 sd``.
    mae : float
        Mean absolute difference.
    """

    n: int
    bias: float
    sd: float
    loa_low: float
    loa_high: float
    mae: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict (JSON-serialisable; NaN when there are no pairs)."""
        return asdict(self)


def bland_altman(pred: Sequence[float], ref: Sequence[float]) -> BlandAltman:
    """Bias, 95 % limits of agreement and MAE of ``pred`` against ``ref``.

    Pairs where either value is NaN are dropped (e.g. burden of a slice without
    myocardium).

    Parameters
    ----------
    pred, ref : array-like
        Paired measurements of the same length.

    Returns
    -------
    BlandAltman
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    r = np.asarray(ref, dtype=np.float64).ravel()
    if p.shape != r.shape:
        raise ValueError(f"bland_altman: {p.size} method values but {r.size} reference values")
    ok = np.isfinite(p) & np.isfinite(r)
    d = p[ok] - r[ok]
    n = int(d.size)
    if n == 0:
        nan = float("nan")
        return BlandAltman(0, nan, nan, nan, nan, nan)
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    return BlandAltman(n, bias, sd, bias - 1.96 * sd, bias + 1.96 * sd, float(np.abs(d).mean()))


@dataclass(frozen=True)
class Concordance:
    """How well paired measurements follow the reference (beyond bias and spread).

    Attributes
    ----------
    n : int
        Number of finite pairs used.
    ccc : float
        Lin's concordance correlation coefficient,
        ``2 cov(p, r) / (var p + var r + (mean p - mean r)^2)`` (population moments): 1 only
        when every pair lies on the identity line.
    pearson : float
        Pearson correlation.
    slope, intercept : float
        Least-squares line of the method on the reference (``pred = intercept + slope ref``):
        a slope under 1 means the method compresses the range (small burdens read too high,
        large ones too low).
    """

    n: int
    ccc: float
    pearson: float
    slope: float
    intercept: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict (JSON-serialisable; NaN when undefined)."""
        return asdict(self)


def concordance(pred: Sequence[float], ref: Sequence[float]) -> Concordance:
    """Lin's CCC, Pearson's r and the regression line of ``pred`` on ``ref``.

    Pairs where either value is NaN are dropped; with fewer than two pairs, or a constant
    reference, the undefined figures are NaN.

    Examples
    --------
    >>> round(concordance([1, 2, 3], [1, 2, 3]).ccc, 6)
    1.0
    >>> round(concordance([2, 2, 2], [1, 2, 3]).ccc, 6)
    0.0
    """
    p = np.asarray(pred, dtype=np.float64).ravel()
    r = np.asarray(ref, dtype=np.float64).ravel()
    if p.shape != r.shape:
        raise ValueError(f"concordance: {p.size} method values but {r.size} reference values")
    ok = np.isfinite(p) & np.isfinite(r)
    p, r = p[ok], r[ok]
    n, nan = int(p.size), float("nan")
    if n < 2:
        return Concordance(n, nan, nan, nan, nan)
    cov = float(((p - p.mean()) * (r - r.mean())).mean())
    vp, vr = float(p.var()), float(r.var())
    denom = vp + vr + float(p.mean() - r.mean()) ** 2
    ccc = 2 * cov / denom if denom > 0 else nan
    pearson = cov / math.sqrt(vp * vr) if vp > 0 and vr > 0 else nan
    slope = cov / vr if vr > 0 else nan
    intercept = float(p.mean() - slope * r.mean()) if vr > 0 else nan
    return Concordance(n, ccc, pearson, slope, intercept)


def burden_pairs(
    rows: Iterable[Mapping[str, Any]],
    quantity: str = "scar_pct",
    *,
    level: str = "slice",
    flavour: str = "named",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Method and ground-truth values of one quantity, per method, from metric rows.

    Parameters
    ----------
    rows : iterable of mapping
        Rows with ``method``, ``level``, ``class`` and ``pred_pct``/``gt_pct`` or
        ``pred_ml``/``gt_ml`` (the rows of ``metrics.csv``; a missing ``method``
        counts as ``""``); ``pred_pct_matched`` / ``pred_ml_matched`` for
        ``flavour="matched"``.
    quantity : str
        A key of :data:`QUANTITIES`.
    level : {"slice", "volume"}
        Per slice or per case.
    flavour : {"named", "matched"}
        Prediction as named or after matching (:data:`FLAVOURS`).

    Returns
    -------
    dict
        ``method -> (pred, ref)`` float arrays, in row order.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; known: {tuple(QUANTITIES)}")
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; known: {tuple(FLAVOURS)}")
    cls, col, _ = QUANTITIES[quantity]
    pred_key = f"pred_{col}{FLAVOURS[flavour]}"
    out: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        if row.get("level", level) != level or row.get("class") != cls:
            continue
        pred, ref = out.setdefault(str(row.get("method", "")), ([], []))
        pred.append(float(row[pred_key]))
        ref.append(float(row[f"gt_{col}"]))
    return {m: (np.asarray(p), np.asarray(r)) for m, (p, r) in out.items()}


def burden_agreement(
    rows: Iterable[Mapping[str, Any]],
    quantities: Sequence[str] = ("scar_pct", "edema_pct"),
    *,
    level: str = "slice",
    flavour: str = "named",
) -> dict[str, dict[str, BlandAltman]]:
    """Bland-Altman statistics per method and quantity from metric rows.

    Parameters
    ----------
    rows : iterable of mapping
        See :func:`burden_pairs`.
    quantities : sequence of str
        Keys of :data:`QUANTITIES`.
    level : {"slice", "volume"}
        Per slice or per case.
    flavour : {"named", "matched"}
        Prediction as named or after matching (:data:`FLAVOURS`).

    Returns
    -------
    dict
        ``method -> quantity -> BlandAltman``.
    """
    rows = list(rows)
    out: dict[str, dict[str, BlandAltman]] = {}
    for q in quantities:
        for method, (p, r) in burden_pairs(rows, q, level=level, flavour=flavour).items():
            out.setdefault(method, {})[q] = bland_altman(p, r)
    return out


#: Levels of :func:`agreement_summary`: its name -> the ``level`` of the metric rows.
LEVELS: dict[str, str] = {"case": "volume", "slice": "slice"}


def _plain_dict(stats: Mapping[str, float]) -> dict[str, float | None]:
    """``stats`` with NaN as None (JSON null)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in stats.items()}


def agreement_summary(
    rows: Iterable[Mapping[str, Any]], quantities: Sequence[str] = tuple(QUANTITIES)
) -> dict[str, dict[str, dict[str, dict[str, dict[str, float | None]]]]]:
    """Burden agreement per method, per case and per slice, as named and matched.

    Parameters
    ----------
    rows : iterable of mapping
        Metric rows with a ``method`` column (see :func:`burden_pairs`), both levels.
    quantities : sequence of str
        Keys of :data:`QUANTITIES` (default all: scar / edema in % of LV myocardium and mL).

    Returns
    -------
    dict
        ``method -> level ("case" | "slice") -> flavour ("named" | "matched") ->
        quantity -> {n, bias, sd, loa_low, loa_high, mae, ccc, slope}`` (NaN as None; Lin's
        CCC and the slope of the method on the reference, :func:`concordance`).
    """
    rows = list(rows)
    out: dict[str, dict[str, dict[str, dict[str, dict[str, float | None]]]]] = {}
    for level, row_level in LEVELS.items():
        for flavour in FLAVOURS:
            for q in quantities:
                pairs = burden_pairs(rows, q, level=row_level, flavour=flavour)
                for method, (p, r) in pairs.items():
                    dest = out.setdefault(method, {}).setdefault(level, {})
                    conc = concordance(p, r)
                    stats = {**bland_altman(p, r).to_dict(), "ccc": conc.ccc, "slope": conc.slope}
                    dest.setdefault(flavour, {})[q] = _plain_dict(stats)
    return out


def _atomic_savefig(fig: Any, path: Path) -> None:
    from napari_gmmseg.io import _make_temp

    tmp = _make_temp(path, ".png")  # mode from the umask (0644), not mkstemp's 0600
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_bland_altman(
    pairs: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a Bland-Altman plot (PNG): one panel per quantity, one colour per method.

    Each panel plots the difference (method - reference) against the mean of
    the two, with the bias (solid) and 95 % limits of agreement (dashed) of
    every method, and lists them in the legend.

    Parameters
    ----------
    pairs : mapping
        ``quantity -> method -> (pred, ref)``; quantity is a key of
        :data:`QUANTITIES` (or any label).
    path : path-like
        Output PNG; its folder must exist.
    title : str, optional
        Figure title.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The PNG written.

    Raises
    ------
    OutputExistsError
        When ``path`` exists and ``overwrite`` is False.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists (pass overwrite=True to replace it)")
    quantities = list(pairs)
    ncol = max(1, len(quantities))
    fig = Figure(figsize=(5.2 * ncol, 4.4))
    axes = [fig.add_subplot(1, ncol, i + 1) for i in range(ncol)]
    colors = [f"C{i}" for i in range(10)]
    for ax, q in zip(axes, quantities, strict=False):
        label = QUANTITIES.get(q, (None, None, q))[2]
        for i, (method, (p, r)) in enumerate(pairs[q].items()):
            p = np.asarray(p, dtype=np.float64)
            r = np.asarray(r, dtype=np.float64)
            ok = np.isfinite(p) & np.isfinite(r)
            ba = bland_altman(p, r)
            c = colors[i % len(colors)]
            ax.scatter((p[ok] + r[ok]) / 2, p[ok] - r[ok], s=14, color=c, alpha=0.7)
            if ba.n:
                ax.axhline(
                    ba.bias,
                    color=c,
                    lw=1.5,
                    label=f"{method or 'method'}: bias {ba.bias:+.1f}, "
                    f"LoA [{ba.loa_low:.1f}, {ba.loa_high:.1f}] (n={ba.n})",
                )
                for v in (ba.loa_low, ba.loa_high):
                    ax.axhline(v, color=c, lw=1, ls="--")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("mean of method and ground truth")
        ax.set_ylabel("method - ground truth")
        ax.set_title(label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    _atomic_savefig(fig, path)
    return path


def write_bland_altman(
    rows: Iterable[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    quantities: Sequence[str] = ("scar_pct", "edema_pct"),
    level: str = "slice",
    overwrite: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """Bland-Altman PNG and statistics of burden from ``evaluate``'s metric rows.

    The hook ``evaluate`` calls next to its table:
    ``write_bland_altman(rows, out_dir / "bland_altman.png", overwrite=True)``.

    Parameters
    ----------
    rows : iterable of mapping
        Metric rows with a ``method`` column (see :func:`burden_pairs`).
    path : path-like
        Output PNG.
    quantities : sequence of str
        Keys of :data:`QUANTITIES`.
    level : {"slice", "volume"}
        Per slice (default) or per case.
    overwrite : bool
        Replace an existing PNG.

    Returns
    -------
    dict
        ``method -> quantity -> {n, bias, sd, loa_low, loa_high, mae}`` (for summary.json).
    """
    rows = list(rows)
    pairs = {q: burden_pairs(rows, q, level=level) for q in quantities}
    plot_bland_altman(
        pairs,
        path,
        title=f"Burden agreement with ground truth (per {'case' if level == 'volume' else level})",
        overwrite=overwrite,
    )
    stats = burden_agreement(rows, quantities, level=level)
    return {m: {q: _plain_dict(s.to_dict()) for q, s in d.items()} for m, d in stats.items()}
