"""Tissue naming without ground truth: the prior table of class means and component naming.

The ONE prior table
-------------------
:data:`DEFAULT_PRIOR` holds, for each tissue class (blood pool, myocardium,
edema, scar, in :data:`napari_gmmseg.labels.CLASSES` order) and each sequence,
the mean intensity in *normalised units*: per-slice, per-sequence z-scores over
the LV ROI (the default normalisation of :class:`~napari_gmmseg.preprocess.SliceBatch`).
It serves three purposes: naming fitted components (:func:`name_components`),
``init="prior"`` of the EM, and the ``mu_data`` regulariser of deepSVG_mu (same
JSON format, see :class:`PriorTable`).

The numbers come from the three real MyoPS 2020 training cases shipped for
development (3001, 3002, 3003): every slice z-scored over its ground-truth LV ROI
(labels 500, 200, 1220, 2221), class means of the ROI pixels per case, then the
average over the three cases (each case weighted equally). Reproduce with
``python scripts/derive_prior.py ../shared/data/myops_real``. Per case (bSSFP, LGE, T2)::

    case   blood pool            myocardium             edema                  scar
    3001   ( 1.18, 0.76,-0.46)   (-0.62,-0.65,-0.03)    (-0.36,-0.40, 0.63)    (-0.25, 0.88, 0.46)
    3002   ( 0.58, 0.77,-0.76)   (-0.90,-0.93, 0.24)    (-0.13,-0.41, 0.86)    (-0.35,-0.48, 0.87)
    3003   ( 0.85, 0.61,-0.71)   (-0.83,-0.66, 0.33)    (-0.51,-0.42, 1.33)    (-0.07, 0.95, 1.85)

They follow what the sequences show: blood brightest on bSSFP, scar bright on LGE
within the wall, edema bright on T2 with dark LGE, healthy myocardium dark on LGE
and T2 (case 3002's scar is not enhanced on LGE relative to the ROI, hence the
average LGE of scar is lower than in the other two cases).

Naming
------
:func:`name_components` assigns the K fitted components of every slice to the
classes by optimal (Hungarian) assignment minimising the squared Euclidean
distance between component means and class means, using only the channels the
case has (matched by name: ``bSSFP``/``C0``, ``LGE``/``DE``, ``T2``). With K < 4
components only K classes are used; with K > 4 the extra components go to their
nearest class. :func:`check_n_components` states this (a warning) and refuses what
naming cannot do: K = 1 (every ROI voxel would be one tissue) and K above
:data:`MAX_COMPONENTS_PER_CLASS` per class.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_gmmseg.errors import ModelError
from napari_gmmseg.labels import CLASS_NAMES, DEFAULT_CHANNELS

__all__ = [
    "CHANNEL_ALIASES",
    "DEFAULT_PRIOR",
    "PriorTable",
    "canonical_channel",
    "channel_columns",
    "default_prior",
    "load_prior",
    "min_cost_assignment",
    "name_components",
]

#: Accepted spellings of each sequence name (lower case) -> canonical name.
CHANNEL_ALIASES: dict[str, str] = {
    "bssfp": "bSSFP",
    "c0": "bSSFP",
    "cine": "bSSFP",
    "ssfp": "bSSFP",
    "lge": "LGE",
    "de": "LGE",
    "t2": "T2",
    "t2w": "T2",
}


def canonical_channel(name: str) -> str:
    """Canonical sequence name (``"bSSFP"``, ``"LGE"``, ``"T2"``) of a channel name.

    Unknown names are returned unchanged.
    """
    return CHANNEL_ALIASES.get(str(name).strip().lower(), str(name))


def channel_columns(channels: Sequence[str], wanted: Sequence[str], *, needed_by: str) -> list[int]:
    """Column of each ``wanted`` sequence in an image whose channels are named ``channels``.

    Raises
    ------
    ModelError
        A wanted sequence is missing; the message names ``needed_by`` and every channel.
    """
    have = [canonical_channel(c) for c in channels]
    missing = [w for w in wanted if w not in have]
    if missing:
        raise ModelError(
            f"{needed_by} needs the sequences {list(wanted)}; missing {missing} "
            f"(channels are {list(channels)})"
        )
    return [have.index(w) for w in wanted]


@dataclass(frozen=True)
class PriorTable:
    """Class means per sequence in normalised (per-slice z-score) units.

    Attributes
    ----------
    channels : tuple of str
        Sequence names, one per column of :attr:`means`.
    classes : tuple of str
        Class names, one per row (normally :data:`napari_gmmseg.labels.CLASS_NAMES`).
    means : numpy.ndarray
        ``(n_classes, n_channels)`` float64.
    """

    channels: tuple[str, ...]
    classes: tuple[str, ...]
    means: np.ndarray

    def __post_init__(self) -> None:
        means = np.asarray(self.means, dtype=np.float64)
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "channels", tuple(str(c) for c in self.channels))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if means.shape != (len(self.classes), len(self.channels)):
            raise ModelError(
                f"prior table means have shape {means.shape}, expected "
                f"({len(self.classes)} classes, {len(self.channels)} channels)"
            )
        if not np.all(np.isfinite(means)):
            raise ModelError("prior table means contain NaN or Inf")

    # -------------------------------------------------------------- JSON I/O
    def to_dict(self) -> dict:
        """The JSON-ready dict ``{"channels", "classes", "means"}``."""
        return {
            "channels": list(self.channels),
            "classes": list(self.classes),
            "means": [[float(v) for v in row] for row in self.means],
        }

    @classmethod
    def from_dict(cls, data: dict) -> PriorTable:
        """Build from ``{"channels": [...], "classes": [...], "means": [[...]]}`` (extra keys ignored).

        A dict with learned ``stats`` (``napari-gmmseg prior``) gives a
        :class:`~napari_gmmseg.prior.TissuePrior`, which is a prior table too.
        """
        if cls is PriorTable and isinstance(data, dict) and "stats" in data:
            from napari_gmmseg.prior import TissuePrior

            return TissuePrior.from_dict(data)
        try:
            return cls(tuple(data["channels"]), tuple(data["classes"]), np.asarray(data["means"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"not a prior table: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike) -> PriorTable:
        """Read a prior table JSON file.

        Raises
        ------
        ModelError
            Missing, unreadable or malformed file, or one without every tissue class.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read prior table {path}: {exc}") from exc
        try:
            table = cls.from_dict(data)
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from exc
        missing = [c for c in CLASS_NAMES if c not in table.classes]
        if missing:  # naming would silently never give these tissues
            raise ModelError(
                f"{path}: a prior must describe every tissue class; it lacks {', '.join(missing)}"
            )
        return table

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the table as JSON (atomically; refuses to overwrite unless asked)."""
        from napari_gmmseg.errors import OutputExistsError

        path = Path(path)
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} exists (pass overwrite=True to replace it)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    # -------------------------------------------------------------- selection
    def for_channels(self, channels: Sequence[str]) -> np.ndarray:
        """``(n_classes, len(channels))`` means for the given channel names, in that order.

        Raises
        ------
        ModelError
            A channel the table does not know.
        """
        mine = [canonical_channel(c) for c in self.channels]
        cols = []
        for name in channels:
            canon = canonical_channel(name)
            if canon not in mine:
                raise ModelError(
                    f"the prior table has no channel {name!r} (it has {list(self.channels)})"
                )
            cols.append(mine.index(canon))
        return self.means[:, cols]


#: The default prior table (see the module docstring for its derivation).
DEFAULT_PRIOR = PriorTable(
    channels=DEFAULT_CHANNELS,
    classes=CLASS_NAMES,
    means=np.array(
        [
            [0.871, 0.715, -0.646],  # LV blood pool
            [-0.783, -0.748, 0.177],  # myocardium
            [-0.332, -0.409, 0.938],  # edema
            [-0.223, 0.450, 1.059],  # scar
        ]
    ),
)


def name_components(
    means: np.ndarray,
    channels: Sequence[str],
    prior: PriorTable | None = None,
    *,
    present: np.ndarray | None = None,
) -> np.ndarray:
    """Name the fitted components of every slice by optimal assignment to the prior classes.

    Parameters
    ----------
    means : array-like
        ``(S, K, M)`` (or ``(K, M)``) component means in normalised units.
    channels : sequence of str
        The ``M`` channel names (``bSSFP``/``C0``, ``LGE``/``DE``, ``T2``).
    prior : PriorTable, optional
        Class means (default :data:`DEFAULT_PRIOR`).
    present : array-like of bool, optional
        ``(S, n_classes)`` classes allowed per slice (default all); a component is never
        named after an absent class.

    Returns
    -------
    numpy.ndarray
        ``(S, K)`` int64 class index (into :data:`napari_gmmseg.labels.CLASSES`) of every
        component (``(K,)`` for 2-D input).

    Raises
    ------
    ModelError
        Channel count mismatch or a channel the prior does not know.
    """
    prior = prior or DEFAULT_PRIOR
    if hasattr(means, "detach"):
        means = means.detach().cpu().numpy()
    means = np.asarray(means, dtype=np.float64)
    squeeze = means.ndim == 2
    if squeeze:
        means = means[None]
    if means.ndim != 3:
        raise ModelError(f"means must be (S, K, M), got shape {means.shape}")
    n_slices, k, m = means.shape
    if len(channels) != m:
        raise ModelError(f"{len(channels)} channel names for means with {m} channels")
    table = prior.for_channels(channels)  # (C, M)
    n_classes = table.shape[0]
    if present is None:
        present = np.ones((n_slices, n_classes), dtype=bool)
    present = np.broadcast_to(np.asarray(present, dtype=bool), (n_slices, n_classes))
    cost = ((means[:, :, None, :] - table[None, None, :, :]) ** 2).sum(-1)  # (S, K, C)
    out = np.full((n_slices, k), -1, dtype=np.int64)
    for s in range(n_slices):  # one small (K x 4) assignment per slice, not a hot path
        cls_ok = np.nonzero(present[s])[0]
        if cls_ok.size == 0:
            cls_ok = np.arange(n_classes)
        c = cost[s][:, cls_ok]
        rows, cols = min_cost_assignment(c)
        out[s, rows] = cls_ok[cols]
        left = out[s] < 0
        if left.any():
            out[s, left] = cls_ok[np.argmin(c[left], axis=1)]
    return out[0] if squeeze else out


#: Most components naming merges into one class: K <= this x the classes of the prior table.
MAX_COMPONENTS_PER_CLASS: int = 3


def check_n_components(k: int, n_classes: int = 4) -> str | None:
    """What naming does with K components and ``n_classes`` prior classes.

    Returns
    -------
    str or None
        None for ``K == n_classes``; otherwise a one-line note (for a warning).

    Raises
    ------
    ModelError
        ``K < 2`` or ``K > MAX_COMPONENTS_PER_CLASS * n_classes``.
    """
    if k < 2:
        raise ModelError(
            f"n_classes={k}: one component cannot be named (every ROI voxel would get one "
            f"tissue); use 2-{MAX_COMPONENTS_PER_CLASS * n_classes} (the paper: {n_classes})"
        )
    if k > MAX_COMPONENTS_PER_CLASS * n_classes:
        raise ModelError(
            f"n_classes={k}: more than {MAX_COMPONENTS_PER_CLASS} components per tissue class "
            f"cannot be named; use at most {MAX_COMPONENTS_PER_CLASS * n_classes} "
            f"(the paper: {n_classes})"
        )
    if k < n_classes:
        return (
            f"n_classes={k}: only {k} of the {n_classes} tissue classes can be named per slice "
            "(each component gets the class with the nearest prior mean, one class each)"
        )
    if k > n_classes:
        return (
            f"n_classes={k}: the {k - n_classes} components beyond the {n_classes} tissue "
            "classes are merged into the class with the nearest prior mean"
        )
    return None


#: Largest side of a cost matrix solved by enumeration (8! = 40320 candidates).
_ENUMERATE_MAX = 8


@functools.lru_cache(maxsize=32)
def _injections(n: int, r: int) -> np.ndarray:
    """``(n! / (n - r)!, r)`` int64: every ordered choice of ``r`` of ``n`` indices."""
    return np.array(list(itertools.permutations(range(n), r)), dtype=np.int64).reshape(-1, r)


def min_cost_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal assignment of a small ``(R, C)`` cost matrix, as ``scipy.optimize.linear_sum_assignment``.

    Components x classes is at most a few times a few here, so every candidate is
    enumerated at once (vectorised) instead of importing SciPy's solver (about a
    second of start-up on a small machine). The optimum is the same as SciPy's
    whenever it is unique; among exactly equal costs the first in lexicographic order
    is taken. Matrices with a side above 8 go to SciPy.

    Parameters
    ----------
    cost : numpy.ndarray
        ``(R, C)`` float costs.

    Returns
    -------
    rows, cols : numpy.ndarray
        ``(min(R, C),)`` int64 each: row ``rows[i]`` is assigned to column ``cols[i]``,
        ``rows`` ascending.
    """
    cost = np.asarray(cost, dtype=np.float64)
    n_r, n_c = cost.shape
    if max(n_r, n_c) > _ENUMERATE_MAX:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost)
        return rows.astype(np.int64), cols.astype(np.int64)
    if n_r <= n_c:
        cand = _injections(n_c, n_r)  # column of every row
        best = cand[np.argmin(cost[np.arange(n_r), cand].sum(1))]
        return np.arange(n_r, dtype=np.int64), best
    cand = _injections(n_r, n_c)  # row of every column
    best = cand[np.argmin(cost[cand, np.arange(n_c)].sum(1))]
    order = np.argsort(best)
    return best[order], np.arange(n_c, dtype=np.int64)[order]


def default_prior() -> PriorTable:
    """The default prior table :data:`DEFAULT_PRIOR`."""
    return DEFAULT_PRIOR


def load_prior(prior: PriorTable | dict | str | os.PathLike | None = None) -> PriorTable:
    """A prior table from a table, a dict, a JSON path, or None (the default table).

    Raises
    ------
    ModelError
        Unreadable or malformed table.
    """
    if prior is None:
        return DEFAULT_PRIOR
    if isinstance(prior, PriorTable):
        return prior
    if isinstance(prior, dict):
        return PriorTable.from_dict(prior)
    if isinstance(prior, (str, os.PathLike)):
        return PriorTable.load(prior)
    if hasattr(prior, "means") and hasattr(prior, "channels"):  # e.g. deep.mu_data.MuData
        classes = getattr(prior, "classes", None) or CLASS_NAMES
        return PriorTable(tuple(prior.channels), tuple(classes), np.asarray(prior.means))
    raise ModelError(f"cannot use {type(prior).__name__} as a prior table")
