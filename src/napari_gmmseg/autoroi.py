"""Automatic LV region of interest from the bSSFP images alone, with per-slice QC.

The network is the ``TIRAMISU_ACDC`` FC-DenseNet shipped (MIT licence) in the
`myopari <https://pypi.org/project/myopari/>`_ wheel 0.1.6, trained by its authors on
the ACDC cine bSSFP data; it labels RV blood pool, LV myocardium and LV blood pool.
The ONNX file is copied unchanged into ``napari_gmmseg/models/`` (with its licence)
and run by ``onnxruntime`` on the CPU: nothing is downloaded at run time.

Pipeline (:func:`find_roi`), every step on the whole volume at once:

1. myopari's own preprocessing: slices in ``(X, Y)`` order (myopari transposes
   napari's ``(Z, Y, X)``), intensities clipped to the 0.05 / 99.05 percentiles of
   the non-zero voxels and scaled to [0, 1], cropped to the non-zero bounding box,
   centre-cropped to a square and resized to 256 x 256 (bilinear, anti-aliased);
2. the network's class probabilities, resized back to the square (bilinear) and
   argmax-ed on the source grid;
3. per slice, the largest connected LV component (blood pool + myocardium) is kept,
   holes inside it and islands inside the blood pool (papillary muscles) become blood
   pool, and the LV outline is grown by ``grow_mm``
   (new pixels are myocardium): the network's LV is ~7 % smaller than the MyoPS
   annotation (measured, see ``docs/roi.md``);
4. QC per slice (:class:`SliceQC`) on the network's outline before the growth; a
   slice that fails is left out of the ROI.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from napari_gmmseg.errors import RoiError
from napari_gmmseg.labels import BLOOD, MYOCARDIUM, RV

#: The network file inside the package (MIT, from myopari 0.1.6).
MODEL_FILE = "tiramisu_acdc_fp32.onnx"
#: SHA-256 of :data:`MODEL_FILE` as shipped by myopari 0.1.6.
MODEL_SHA256 = "794d775a4977e714f4c4ef081c536ab371fe3d36ea682c7ce6014b52c8df0974"
#: Network input size (pixels) and its output classes, in channel order.
NET_SIZE = 256
NET_CLASSES = ("background", "RV blood pool", "LV myocardium", "LV blood pool")
#: MyoPS value of each network class (0 = background).
NET_TO_MYOPS = np.array([0, RV.value, MYOCARDIUM.value, BLOOD.value], dtype=np.int32)
#: Growth of the LV outline in mm (chosen by leave-one-case-out on myops_dev, docs/roi.md).
GROW_MM = 1.5
#: QC thresholds, stated once.
MIN_LV_AREA_MM2 = 100.0  # smaller than a 11 mm disc: no LV found
MIN_RING_CLOSED = 0.85  # fraction of the blood pool's rim that must be myocardium
MIN_POOL_FOR_RING_MM2 = 50.0  # below this blood-pool area (apex) the ring is not checked
MAX_AREA_JUMP = 2.5  # LV area ratio to every neighbouring slice that flags a jump
#: Not a heart (docs/robustness.md; real cases: 0.94-0.98, 1,490-5,770 mm², RV on every
#: slice of myops_real, myops_dev and myops_unlabelled):
MIN_CONFIDENCE = 0.80  # mean network probability of LV (blood pool + myocardium) in its LV
MAX_LV_AREA_MM2 = 12000.0  # a 124 mm disc: larger than any LV
MIN_RV_FRACTION = 0.3  # of the slices with an LV that must show an RV, else no slice passes
#: Flags that make a slice fail QC (skipped); the others only warn.
FAILING_FLAGS = ("no_lv", "ring_open", "area_jump", "low_confidence", "lv_too_large", "no_rv")


@dataclass
class SliceQC:
    """Quality control of the automatic ROI on one slice.

    Attributes
    ----------
    slice : int
        z index.
    area_mm2 : float
        LV ROI area (blood pool + myocardium) in mm².
    ring_closed : float
        Fraction of the blood pool's rim that touches myocardium (1 = closed ring;
        NaN when the blood pool is too small to judge).
    flags : tuple of str
        Any of ``no_lv``, ``ring_open``, ``area_jump``, ``low_confidence``,
        ``lv_too_large``, ``no_rv`` (the volume shows an RV on too few slices: not a
        cardiac short axis), ``rv_missing``.
    reason : str
        Plain-language explanation ("" when the slice is fine).
    confidence : float
        Mean network probability of LV inside its LV (NaN: no LV, or no network).
    """

    slice: int
    area_mm2: float
    ring_closed: float
    flags: tuple[str, ...] = ()
    reason: str = ""
    confidence: float = float("nan")

    @property
    def ok(self) -> bool:
        """True when no failing flag is set (the slice is segmented)."""
        return not any(f in FAILING_FLAGS for f in self.flags)

    def as_row(self) -> dict:
        """A flat dict for CSV / JSON."""
        return {
            "slice": self.slice,
            "roi_area_mm2": round(self.area_mm2, 1),
            "ring_closed": round(self.ring_closed, 3),
            "ok": self.ok,
            "flags": ";".join(self.flags),
            "reason": self.reason,
            "confidence": round(self.confidence, 3),
        }


@dataclass
class AutoRoi:
    """The automatic ROI of one volume.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` int32 MyoPS values: 500 LV blood pool, 200 LV myocardium,
        600 RV blood pool, 0 elsewhere (every slice, also those failing QC).
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool LV ROI (500 + 200) on the slices that pass QC only.
    qc : list of SliceQC
        One per slice.
    seconds : float
        Wall time of :func:`find_roi`.
    """

    labels: np.ndarray
    roi: np.ndarray
    qc: list[SliceQC] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed_slices(self) -> list[int]:
        """z indices that fail QC (not segmented)."""
        return [q.slice for q in self.qc if not q.ok]


def model_path() -> Path:
    """Path of the shipped ONNX network."""
    return Path(str(resources.files("napari_gmmseg") / "models" / MODEL_FILE))


@functools.lru_cache(maxsize=1)
def _session():
    """The onnxruntime session (created once per process)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RoiError(
            "the automatic ROI needs onnxruntime (a dependency of napari-gmmseg): "
            "pip install onnxruntime"
        ) from exc
    path = model_path()
    if not path.is_file():
        raise RoiError(f"automatic ROI network missing: {path} (reinstall napari-gmmseg)")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _normalise(vol: np.ndarray) -> np.ndarray:
    """myopari's min-max scaling: clip to the 0.05 / 99.05 % of non-zero voxels."""
    nz = vol[vol > 0]
    if nz.size == 0:
        raise RoiError("the bSSFP volume is empty (no positive voxel): no automatic ROI")
    lo, hi = np.percentile(nz, [0.05, 99.05])
    if not hi > lo:
        raise RoiError("the bSSFP volume is constant: no automatic ROI")
    return ((np.clip(vol, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def predict_probabilities(bssfp: np.ndarray, *, batch: int = 8) -> np.ndarray:
    """Network class probabilities on the source grid.

    Parameters
    ----------
    bssfp : numpy.ndarray
        ``(Z, Y, X)`` bSSFP intensities.
    batch : int
        Slices per network call.

    Returns
    -------
    numpy.ndarray
        ``(Z, 4, Y, X)`` float32 probabilities in :data:`NET_CLASSES` order (zero
        outside the square the network saw, where background gets 1).
    """
    import torch
    import torch.nn.functional as F

    vol = np.asarray(bssfp, dtype=np.float32)
    if vol.ndim != 3:
        raise RoiError(f"bSSFP must be (Z, Y, X), got shape {vol.shape}")
    v = _normalise(vol).transpose(0, 2, 1)  # (Z, X, Y): myopari's slice orientation
    nz = np.nonzero(v.any(axis=0))
    a0, a1 = int(nz[0].min()), int(nz[0].max()) + 1
    b0, b1 = int(nz[1].min()), int(nz[1].max()) + 1
    side = min(a1 - a0, b1 - b0)
    a0 += (a1 - a0 - side) // 2
    b0 += (b1 - b0 - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(v[:, a0 : a0 + side, b0 : b0 + side]))
    x = F.interpolate(
        square[:, None], size=(NET_SIZE, NET_SIZE), mode="bilinear", antialias=True
    ).numpy()
    sess = _session()
    name = sess.get_inputs()[0].name
    prob = np.concatenate(
        [sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )
    back = F.interpolate(torch.from_numpy(prob), size=(side, side), mode="bilinear").numpy()
    out = np.zeros((v.shape[0], len(NET_CLASSES), *v.shape[1:]), dtype=np.float32)
    out[:, 0] = 1.0
    out[:, :, a0 : a0 + side, b0 : b0 + side] = back
    return np.ascontiguousarray(out.transpose(0, 1, 3, 2))


def _in_plane() -> np.ndarray:
    """4-connectivity within each slice, none across slices: ``(3, 3, 3)`` bool."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    return structure


def _largest_per_slice(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 2-D connected component of every slice (vectorised)."""
    from scipy import ndimage as ndi

    comp, n = ndi.label(mask, structure=_in_plane())
    if n == 0:
        return mask.copy()
    z_of = np.zeros(n + 1, dtype=np.int64)
    z_of[comp.ravel()] = np.broadcast_to(
        np.arange(mask.shape[0])[:, None, None], mask.shape
    ).ravel()
    size = np.bincount(comp.ravel(), minlength=n + 1)
    size[0] = 0
    best = np.zeros(mask.shape[0], dtype=np.int64)  # component id with the largest size per z
    order = np.lexsort((size, z_of))  # by z, then size: the last of each z is the largest
    best[z_of[order]] = order
    keep = np.zeros(n + 1, dtype=bool)
    keep[best[best > 0]] = True
    keep[0] = False
    return keep[comp]


def _disc(radius_px_yx: tuple[float, float]) -> np.ndarray:
    """A ``(1, h, w)`` elliptical structuring element of the given radii in pixels."""
    ry, rx = (max(float(r), 0.0) for r in radius_px_yx)
    ny, nx = int(np.floor(ry)), int(np.floor(rx))
    yy, xx = np.mgrid[-ny : ny + 1, -nx : nx + 1]
    disc = (yy / max(ry, 1e-6)) ** 2 + (xx / max(rx, 1e-6)) ** 2 <= 1.0
    return disc[None]


def clean_labels(
    net_labels: np.ndarray, spacing_mm: Sequence[float], *, grow_mm: float = GROW_MM
) -> np.ndarray:
    """Network classes -> a cleaned MyoPS label map (largest LV, holes filled, grown).

    Parameters
    ----------
    net_labels : numpy.ndarray
        ``(Z, Y, X)`` int network classes (:data:`NET_CLASSES` indices).
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size.
    grow_mm : float
        Growth of the LV outline (new pixels are myocardium).

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` int32 with 500 / 200 / 600 / 0.
    """
    from scipy import ndimage as ndi

    lv = _largest_per_slice(np.isin(net_labels, (2, 3)))
    filled = ndi.binary_fill_holes(lv, structure=_in_plane())
    pool = filled & ((net_labels == 3) | ~lv)
    # papillary muscles inside the pool are blood pool in MyoPS masks
    pool = ndi.binary_fill_holes(pool, structure=_in_plane())
    if grow_mm > 0:
        disc = _disc((grow_mm / float(spacing_mm[1]), grow_mm / float(spacing_mm[2])))
        filled = ndi.binary_dilation(filled, structure=disc)
    rv = _largest_per_slice((net_labels == 1) & ~filled)
    out = np.zeros(net_labels.shape, dtype=np.int32)
    out[rv] = RV.value
    out[filled] = MYOCARDIUM.value
    out[pool] = BLOOD.value
    return out


def slice_qc(
    labels: np.ndarray, spacing_mm: Sequence[float], confidence: np.ndarray | None = None
) -> list[SliceQC]:
    """QC of a MyoPS-valued LV / RV label map, one :class:`SliceQC` per slice.

    Flags: ``no_lv`` (LV area below :data:`MIN_LV_AREA_MM2`), ``ring_open`` (less than
    :data:`MIN_RING_CLOSED` of the blood pool's rim is myocardium), ``area_jump`` (the
    LV area differs by more than :data:`MAX_AREA_JUMP` x from every neighbouring
    slice that has an LV), ``lv_too_large`` (above :data:`MAX_LV_AREA_MM2`),
    ``low_confidence`` (network below :data:`MIN_CONFIDENCE`), ``no_rv`` (an RV on
    fewer than :data:`MIN_RV_FRACTION` of the slices with an LV: not a cardiac short
    axis, every slice fails), ``rv_missing`` (no RV blood pool on this slice; warns only).

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` MyoPS values (500, 200, 600; others ignored).
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size.
    confidence : numpy.ndarray, optional
        ``(Z,)`` mean network LV probability per slice (NaN where no LV); None for a
        label map without a network (edited by hand): not checked.

    Returns
    -------
    list of SliceQC
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    px_mm2 = float(spacing_mm[1]) * float(spacing_mm[2])
    pool = labels == BLOOD.value
    lv = pool | (labels == MYOCARDIUM.value)
    area = lv.reshape(len(lv), -1).sum(1) * px_mm2
    pool_area = pool.reshape(len(lv), -1).sum(1) * px_mm2
    rim = ndi.binary_dilation(pool, structure=_in_plane()) & ~pool
    rim_n = rim.reshape(len(lv), -1).sum(1)
    rim_myo = (rim & (labels == MYOCARDIUM.value)).reshape(len(lv), -1).sum(1)
    closed = np.where(
        (pool_area >= MIN_POOL_FOR_RING_MM2) & (rim_n > 0), rim_myo / np.maximum(rim_n, 1), np.nan
    )
    has_rv = (labels == RV.value).reshape(len(lv), -1).any(1)
    found = area >= MIN_LV_AREA_MM2
    # ratio to each neighbour with an LV; a jump = far from every such neighbour
    ratio = np.full((len(lv), 2), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio[1:, 0] = np.where(found[:-1], area[1:] / area[:-1], np.nan)
        ratio[:-1, 1] = np.where(found[1:], area[:-1] / area[1:], np.nan)
    far = (ratio > MAX_AREA_JUMP) | (ratio < 1.0 / MAX_AREA_JUMP)
    known = np.isfinite(ratio)
    jump = found & known.any(1) & np.all(far | ~known, axis=1)
    conf = np.full(len(lv), np.nan) if confidence is None else np.asarray(confidence, float)
    rv_fraction = float(has_rv[found].mean()) if found.any() else 1.0
    out = []
    for z in range(len(lv)):
        flags, why = [], []
        if found[z] and area[z] > MAX_LV_AREA_MM2:
            flags.append("lv_too_large")
            why.append(f"LV area {area[z]:.0f} mm² > {MAX_LV_AREA_MM2:.0f} mm²: not an LV")
        if found[z] and conf[z] < MIN_CONFIDENCE:
            flags.append("low_confidence")
            why.append(f"network confidence {conf[z]:.2f} < {MIN_CONFIDENCE:.2f}")
        if found[z] and rv_fraction < MIN_RV_FRACTION:
            flags.append("no_rv")
            why.append(
                f"an RV on {rv_fraction:.0%} of the slices with an LV (needs "
                f"{MIN_RV_FRACTION:.0%}): not a cardiac short-axis volume"
            )
        if not found[z]:
            flags.append("no_lv")
            why.append(f"no LV found (ROI area {area[z]:.0f} mm² < {MIN_LV_AREA_MM2:.0f} mm²)")
        if found[z] and closed[z] < MIN_RING_CLOSED:
            flags.append("ring_open")
            why.append(
                f"myocardium does not enclose the blood pool (ring {closed[z]:.0%} closed, "
                f"needs {MIN_RING_CLOSED:.0%})"
            )
        if jump[z]:
            flags.append("area_jump")
            why.append(
                f"LV area {area[z]:.0f} mm² differs more than {MAX_AREA_JUMP:g}x from the "
                "neighbouring slices"
            )
        if not has_rv[z]:
            flags.append("rv_missing")
            why.append("no RV found (warning only)")
        out.append(
            SliceQC(
                z, float(area[z]), float(closed[z]), tuple(flags), "; ".join(why), float(conf[z])
            )
        )
    return out


def qc_roi(
    labels: np.ndarray, spacing_mm: Sequence[float], confidence: np.ndarray | None = None
) -> tuple[np.ndarray, list[SliceQC]]:
    """The LV ROI of a (possibly user-edited) label map, on slices passing QC only.

    Returns
    -------
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool, 500 + 200 on passing slices.
    qc : list of SliceQC
    """
    labels = np.asarray(labels)
    qc = slice_qc(labels, spacing_mm, confidence)
    ok = np.array([q.ok for q in qc], dtype=bool)
    roi = np.isin(labels, (BLOOD.value, MYOCARDIUM.value)) & ok[:, None, None]
    return roi, qc


def find_roi(
    images: np.ndarray,
    channels: Sequence[str],
    spacing_mm: Sequence[float],
    *,
    channel: str = "bSSFP",
    grow_mm: float = GROW_MM,
) -> AutoRoi:
    """Find the LV ROI (and RV) automatically on every slice.

    Parameters
    ----------
    images : numpy.ndarray
        ``(Z, Y, X, C)`` images (a :class:`~napari_gmmseg.io.Case`'s ``images``).
    channels : sequence of str
        Channel names; ``channel`` must be among them.
    spacing_mm : sequence of float
        ``(z, y, x)`` voxel size.
    channel : str
        The cine bSSFP channel the network reads.
    grow_mm : float
        Growth of the LV outline (:func:`clean_labels`).

    Returns
    -------
    AutoRoi

    Raises
    ------
    RoiError
        No ``channel`` among ``channels``, or an empty / constant image.
    """
    import time

    t0 = time.perf_counter()
    images = np.asarray(images)
    channels = list(channels)
    if images.ndim != 4 or images.shape[3] != len(channels):
        raise RoiError(f"images must be (Z, Y, X, C) with C = {len(channels)}, got {images.shape}")
    if channel not in channels:
        raise RoiError(
            f"the automatic ROI reads the {channel} (cine) image, but the case has only {channels}"
        )
    prob = predict_probabilities(images[..., channels.index(channel)])
    labels, roi, qc = roi_from_network(prob.argmax(1), spacing_mm, grow_mm=grow_mm, prob=prob)
    return AutoRoi(labels=labels, roi=roi, qc=qc, seconds=time.perf_counter() - t0)


def roi_from_network(
    net_labels: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    grow_mm: float = GROW_MM,
    prob: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[SliceQC]]:
    """Cleaned label map, ROI and QC from the network's classes.

    QC is judged on the network's own outline (before the growth, which would close
    small gaps in an open ring); the ROI is the grown LV on the passing slices.
    ``prob`` (``(Z, 4, Y, X)``, :func:`predict_probabilities`) adds the network's
    confidence to the QC.

    Returns
    -------
    labels : numpy.ndarray
        ``(Z, Y, X)`` int32, grown (:func:`clean_labels`).
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool.
    qc : list of SliceQC
        Areas are those of the grown ROI.
    """
    net = clean_labels(net_labels, spacing_mm, grow_mm=0.0)
    confidence = None
    if prob is not None:
        lv = np.isin(net, (BLOOD.value, MYOCARDIUM.value))
        p_lv = np.asarray(prob)[:, 2] + np.asarray(prob)[:, 3]
        n = lv.reshape(len(lv), -1).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            confidence = np.where(n > 0, (p_lv * lv).reshape(len(lv), -1).sum(1) / n, np.nan)
    _, qc = qc_roi(net, spacing_mm, confidence)
    labels = clean_labels(net_labels, spacing_mm, grow_mm=grow_mm)
    ok = np.array([q.ok for q in qc], dtype=bool)
    roi = np.isin(labels, (BLOOD.value, MYOCARDIUM.value)) & ok[:, None, None]
    px_mm2 = float(spacing_mm[1]) * float(spacing_mm[2])
    area = roi.reshape(len(roi), -1).sum(1) * px_mm2
    full = np.isin(labels, (BLOOD.value, MYOCARDIUM.value)).reshape(len(roi), -1).sum(1) * px_mm2
    for q, a, f in zip(qc, area, full, strict=True):
        q.area_mm2 = float(a if q.ok else f)
    return labels, roi, qc


def roi_dice(labels: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Dice of an automatic ROI label map against a MyoPS ground-truth mask.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` automatic ROI (500 / 200 / 600).
    gt : numpy.ndarray
        ``(Z, Y, X)`` MyoPS mask.

    Returns
    -------
    dict
        ``lv`` (ROI: 500 + 200 against 500 + 200 + 1220 + 2221), ``myocardium``
        (200 against 200 + 1220 + 2221), ``rv`` (600); NaN where both are empty.
    """
    from napari_gmmseg.labels import LV_ROI_VALUES

    labels, gt = np.asarray(labels), np.asarray(gt)
    myo_gt = tuple(v for v in LV_ROI_VALUES if v != BLOOD.value)
    pairs = {
        "lv": (np.isin(labels, (BLOOD.value, MYOCARDIUM.value)), np.isin(gt, LV_ROI_VALUES)),
        "myocardium": (labels == MYOCARDIUM.value, np.isin(gt, myo_gt)),
        "rv": (labels == RV.value, gt == RV.value),
    }
    out = {}
    for name, (a, b) in pairs.items():
        total = int(a.sum()) + int(b.sum())
        out[name] = 2.0 * int((a & b).sum()) / total if total else float("nan")
    return out


def format_qc(qc: Sequence[SliceQC]) -> str:
    """Plain-language QC lines, one per slice (for the terminal and the dock)."""
    lines = []
    for q in qc:
        state = "ok" if q.ok else "SKIPPED"
        text = f"slice {q.slice}: {state}, ROI {q.area_mm2:.0f} mm²"
        lines.append(text + (f" ({q.reason})" if q.reason else ""))
    return "\n".join(lines)


def case_roi(case, folder: str | Path, *, force: bool = False) -> np.ndarray:
    """The automatic ROI of a case for a dataset run, kept in ``folder``.

    Writes ``folder/<case>.nii.gz`` (the label map, 500 / 200 / 600, on the case
    geometry) and ``folder/<case>.json`` (per-slice QC, ROI Dice against the case's
    mask when it has one, seconds). An existing label map is reused (and may have
    been edited by hand) unless ``force``.

    Parameters
    ----------
    case : napari_gmmseg.io.Case
    folder : path-like
    force : bool
        Recompute and overwrite.

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` bool ROI on the slices that pass QC.

    Raises
    ------
    RoiError
        Every slice fails QC.
    """
    import json

    from napari_gmmseg import io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case.case_id}.nii.gz"
    info: dict = {"case": case.case_id, "source": "network"}
    if path.exists() and not force:
        labels, geometry = io.read_labels(path, with_geometry=True)
        if tuple(labels.shape) != tuple(case.shape) or not geometry.same_grid(case.geometry):
            raise RoiError(f"{path}: not on the grid of case {case.case_id}; rerun with --force")
        roi, qc = qc_roi(labels, case.spacing_mm)
        info["source"] = f"reused {path.name}"
    else:
        auto = find_roi(case.images, case.channels, case.spacing_mm)
        labels, roi, qc = auto.labels, auto.roi, auto.qc
        io.save_labels(labels, case.geometry, path, overwrite=True)
        info["seconds"] = auto.seconds
        info["seconds_per_slice"] = auto.seconds / max(case.n_slices, 1)
    info["qc"] = [q.as_row() for q in qc]
    info["skipped_slices"] = [q.slice for q in qc if not q.ok]
    if case.labels is not None:
        info["dice"] = roi_dice(labels, case.labels)
    final = folder / f"{case.case_id}.json"  # a qualified id "site/3027" is a sub-folder
    tmp = final.with_name(f".{final.name}.tmp")
    tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
    tmp.replace(final)
    if not roi.any():
        raise RoiError(f"case {case.case_id}: the automatic ROI fails QC on every slice")
    return roi


def collect_case_qc(folder: str | Path, case_ids: Sequence[str]) -> tuple[list[dict], str]:
    """Per-slice QC rows of a dataset run and a short text table (ROI Dice per case).

    Parameters
    ----------
    folder : path-like
        The folder :func:`case_roi` wrote to.
    case_ids : sequence of str
        Cases to collect (missing files are left out).

    Returns
    -------
    rows : list of dict
        One per case and slice: ``case``, QC columns, ``lv_dice``, ``myocardium_dice``,
        ``rv_dice`` (per case, repeated).
    text : str
        Markdown table, one line per case, and the mean.
    """
    import json

    rows, lines, lv = [], [], []
    for cid in case_ids:
        p = Path(folder) / f"{cid}.json"
        if not p.exists():
            continue
        info = json.loads(p.read_text(encoding="utf-8"))
        d = info.get("dice", {})
        for q in info["qc"]:
            rows.append(
                {
                    "case": cid,
                    **q,
                    "lv_dice": d.get("lv", np.nan),
                    "myocardium_dice": d.get("myocardium", np.nan),
                    "rv_dice": d.get("rv", np.nan),
                }
            )
        skipped = ",".join(str(z) for z in info["skipped_slices"]) or "-"
        lines.append(
            f"| {cid} | {d.get('lv', np.nan):.3f} | {d.get('myocardium', np.nan):.3f} | "
            f"{d.get('rv', np.nan):.3f} | {skipped} |"
        )
        lv.append(d.get("lv", np.nan))
    if not lines:
        return rows, ""
    head = "Automatic ROI\n| case | LV ROI Dice | myocardium Dice | RV Dice | skipped slices |\n|---|---|---|---|---|"
    mean = f"| mean | {np.nanmean(lv):.3f} | | | |" if np.isfinite(lv).any() else ""
    return rows, "\n".join([head, *lines, mean]).rstrip()


def write_qc_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write QC rows (:func:`collect_case_qc`) to ``path`` atomically."""
    import csv
    import io as _io

    cols = ["case", "slice", "roi_area_mm2", "ring_closed", "ok", "flags", "reason"]
    cols += ["lv_dice", "myocardium_dice", "rv_dice"]
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(path)
    return path
