"""Deterministic multi-sequence short-axis cardiac MRI phantom with MyoPS ground truth.

:func:`make_case` draws one case (bSSFP, LGE, T2 and a MyoPS label map) from a
seed; :func:`write_dataset` writes several in the MyoPS layout.  What is in it:

* LV blood pool (500) with papillary muscles (labelled blood pool, as in MyoPS,
  but with myocardial signal), LV myocardium (200) whose thickness varies
  around the ring, RV blood pool (600) inside a thin RV free wall;
* an infarct: a sector of scar (2221) starting at the endocardium
  (subendocardial at the sector edges, transmural at its centre when
  ``transmural`` is high) inside a wider edema zone (1220) spanning the wall;
  optional scar-free slices that keep edema only;
* surrounding tissue: body, subcutaneous and pericardial fat, chest-wall
  muscle, lungs (dark), liver (apical slices), air;
* base-to-apex change: the LV, its wall and the RV shrink towards the apex, the
  infarct sector narrows;
* partial volume (rendered ``upsample`` times finer in-plane then block-averaged),
  mild tissue texture, a smooth multiplicative bias field per sequence, a
  per-slice gain change, and Rician noise;
* an oblique, scanner-like affine (1.25 mm pixels, 10 mm slices by default).

Class intensities, as ratios to healthy myocardium per sequence, were
calibrated against three real MyoPS cases (``scripts/calibrate_phantom.py``
prints both tables; see ``docs/io.md``).  The ground truth is the label at the
centre of each voxel (the centre sub-sample of the fine grid).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_gmmseg.io import DEFAULT_CHANNELS, Case, Geometry
from napari_gmmseg.labels import BLOOD, EDEMA, MYOCARDIUM, RV, SCAR

__all__ = [
    "INTENSITY_RATIOS",
    "MYOCARDIUM_SIGNAL",
    "NOISE_FACTOR",
    "SAMPLE_CASES",
    "TISSUES",
    "make_case",
    "make_sample_case",
    "write_case",
    "write_dataset",
    "write_sample_data",
]

#: Tissues painted by the phantom and their MyoPS value (0 = not labelled).
TISSUES: dict[str, int] = {
    "air": 0,
    "body": 0,
    "fat": 0,
    "lung": 0,
    "liver": 0,
    "muscle": 0,
    "rv_blood": RV.value,
    "lv_blood": BLOOD.value,
    "papillary": BLOOD.value,
    "myocardium": MYOCARDIUM.value,
    "edema": EDEMA.value,
    "scar": SCAR.value,
}
_TISSUE_INDEX = {name: i for i, name in enumerate(TISSUES)}

#: Signal of healthy myocardium per sequence (arbitrary scanner units, int16 range).
MYOCARDIUM_SIGNAL: dict[str, float] = {"bSSFP": 430.0, "LGE": 170.0, "T2": 170.0}

#: Noise of each sequence relative to its healthy-myocardium signal, as a multiple of
#: :func:`make_case`'s ``noise``: nulled myocardium on LGE sits near the noise floor, so
#: its relative noise is the largest (the development set's myocardium SD / mean is
#: 0.40 bSSFP, 0.61 LGE, 0.30 T2, partial volume and texture included).
NOISE_FACTOR: dict[str, float] = {"bSSFP": 1.0, "LGE": 2.0, "T2": 1.0}

#: Signal of each tissue relative to healthy myocardium, per sequence (before
#: partial volume, bias and noise).  The heart's classes are the mean per-case ratios of
#: the 25 labelled development cases (``scripts/calibrate_phantom.py``, docs/io.md): on
#: LGE healthy myocardium is nulled (scar 2.7x, edema 1.9x, blood 2.7x its signal).
INTENSITY_RATIOS: dict[str, dict[str, float]] = {
    #               bSSFP  LGE   T2
    "air": {"bSSFP": 0.0, "LGE": 0.0, "T2": 0.0},
    "body": {"bSSFP": 0.80, "LGE": 1.48, "T2": 0.60},
    "fat": {"bSSFP": 2.60, "LGE": 2.20, "T2": 1.60},
    "lung": {"bSSFP": 0.12, "LGE": 0.25, "T2": 0.10},
    "liver": {"bSSFP": 0.75, "LGE": 1.40, "T2": 0.65},
    "muscle": {"bSSFP": 0.95, "LGE": 1.05, "T2": 0.95},
    "rv_blood": {"bSSFP": 1.85, "LGE": 2.36, "T2": 0.42},
    "lv_blood": {"bSSFP": 2.32, "LGE": 2.66, "T2": 0.52},
    "papillary": {"bSSFP": 1.00, "LGE": 1.00, "T2": 1.00},
    "myocardium": {"bSSFP": 1.00, "LGE": 1.00, "T2": 1.00},
    "edema": {"bSSFP": 1.45, "LGE": 1.86, "T2": 1.50},
    "scar": {"bSSFP": 1.33, "LGE": 2.74, "T2": 1.39},
}


# --------------------------------------------------------------------------- helpers
def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix from Euler angles in degrees (applied x, then y, then z)."""
    ax, ay, az = np.deg2rad([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field (FFT filtering, periodic)."""
    white = rng.standard_normal(shape)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    filt = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (kx**2 + ky**2))
    field = np.fft.irfft2(np.fft.rfft2(white) * filt, s=shape)
    field -= field.mean()
    sd = field.std()
    return field / sd if sd > 0 else field


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Wrap angles to (-pi, pi]."""
    return np.angle(np.exp(1j * angle))


def _ellipse(x, y, cx, cy, a, b, rot=0.0) -> np.ndarray:
    c, s = np.cos(rot), np.sin(rot)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


# --------------------------------------------------------------------------- generator
def _anatomy(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    n_slices: int,
    *,
    infarct: bool,
    transmural: float,
    scar_free_slices: Sequence[int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue index of every fine-grid pixel ``(Z, Y_hi, X_hi)`` int8, and the LV centre (mm).

    ``x``, ``y`` are the fine-grid pixel centres in mm; the case-level anatomy is drawn
    from ``rng`` first, then each slice from base (0) to apex is painted.
    """
    n_hi = x.shape[0]
    lv_c0 = rng.uniform(-6, 6, size=2) + np.array([8.0, 2.0])  # LV centre (x, y) at the base
    lv_drift = rng.uniform(-4, 4, size=2)  # base -> apex drift of the LV centre
    r_endo0 = rng.uniform(15.0, 19.0)  # endocardial radius at the base
    wall0 = rng.uniform(8.5, 11.0)  # mean wall thickness at the base
    ellip = rng.uniform(0.04, 0.12)
    ellip_rot = rng.uniform(0, np.pi)
    thick_phase = rng.uniform(-np.pi, np.pi, size=2)
    thick_amp = rng.uniform(0.12, 0.25)
    endo_phase = rng.uniform(-np.pi, np.pi, size=3)
    rv_scale = rng.uniform(0.9, 1.15)
    fat_phase = rng.uniform(-np.pi, np.pi)
    body_a, body_b = rng.uniform(150, 175), rng.uniform(88, 100)
    inf_centre = rng.uniform(-np.pi, np.pi)  # infarct sector centre angle
    inf_half = np.deg2rad(rng.uniform(38, 55))  # scar half-width at the base
    edema_extra = np.deg2rad(rng.uniform(18, 30))  # edema beyond the scar on each side
    scar_rough = rng.uniform(-np.pi, np.pi, size=2)
    pap_angles = inf_centre + np.pi + rng.uniform(-0.3, 0.3) + np.array([-0.9, 0.9])
    if scar_free_slices is None:
        scar_free = {n_slices - 1} if n_slices >= 4 else set()
    else:
        scar_free = {int(s) % n_slices for s in scar_free_slices}

    hi_labels = np.zeros((n_slices, n_hi, n_hi), dtype=np.int8)
    for z in range(n_slices):
        t = z / max(n_slices - 1, 1)  # 0 at the base, 1 at the apex
        cx, cy = lv_c0 + lv_drift * t
        r_endo = r_endo0 * (1.0 - 0.5 * t)
        wall = wall0 * (1.0 - 0.22 * t)
        dx, dy = x - cx, y - cy
        rho = np.hypot(dx, dy)
        theta = np.arctan2(dy, dx)
        # elliptical, slightly irregular endocardium; wall thickness varies around the ring
        r_e = r_endo * (
            1.0
            + ellip * np.cos(2 * (theta - ellip_rot))
            + 0.035 * np.cos(3 * theta + endo_phase[0])
            + 0.02 * np.cos(5 * theta + endo_phase[1])
        )
        th = wall * (
            1.0
            + thick_amp * np.cos(theta - thick_phase[0])
            + 0.08 * np.cos(2 * theta - thick_phase[1])
        )
        r_p = r_e + th
        lab = np.full(x.shape, _TISSUE_INDEX["air"], dtype=np.int8)

        def paint(mask: np.ndarray, tissue: str, lab: np.ndarray = lab) -> None:
            lab[mask] = _TISSUE_INDEX[tissue]

        # body, subcutaneous fat, chest-wall muscle
        bcx, bcy = 0.0, 22.0
        body = _ellipse(x, y, bcx, bcy, body_a, body_b)
        paint(body, "fat")
        paint(_ellipse(x, y, bcx, bcy, body_a - 9, body_b - 9), "muscle")
        paint(_ellipse(x, y, bcx, bcy, body_a - 17, body_b - 17), "body")
        # lungs beside the heart
        lung_l = _ellipse(x, y, cx + r_endo0 + wall0 + 38, cy - 8, 30, 48, rot=0.3)
        lung_r = _ellipse(x, y, cx - 2.6 * (r_endo0 + wall0) - 22, cy - 18, 26, 44, rot=-0.4)
        paint((lung_l | lung_r) & body, "lung")
        # liver below the heart in apical slices
        if t > 0.35:
            grow = (t - 0.35) / 0.65
            paint(
                _ellipse(x, y, cx - 35, cy + 62 - 10 * grow, 55 + 25 * grow, 20 + 22 * grow),
                "liver",
            )
        # patchy pericardial fat on the free wall side (0-4 mm thick)
        fat_th = 2.0 + 2.0 * np.cos(2 * theta + fat_phase) * (np.cos(theta - 0.2) > 0)
        paint((rho < r_p + fat_th) & (np.cos(theta - 0.2) > 0.1), "fat")
        # RV: a crescent wrapped around the septum, shrinking towards the apex
        rv_size = rv_scale * (1.0 - 0.6 * t)
        if rv_size > 0.3:
            big_r = (r_endo0 + wall0) * rv_size
            rcx, rcy = cx - 0.8 * (r_endo0 + wall0) - 0.25 * big_r, cy - 3.0
            a_rv, b_rv = 0.95 * big_r + 3.5, 1.3 * big_r + 3.5
            outer = _ellipse(x, y, rcx, rcy, a_rv, b_rv, rot=0.35)
            inner = _ellipse(x, y, rcx, rcy, a_rv - 3.5, b_rv - 3.5, rot=0.35)
            paint(outer & (rho >= r_p), "muscle")
            paint(inner & (rho >= r_p + 1.0), "rv_blood")
        # LV myocardium, infarct, blood pool, papillary muscles
        paint(rho < r_p, "myocardium")
        if infarct:
            narrow = 1.0 - 0.35 * t
            dtheta = np.abs(_wrap(theta - inf_centre))
            half_s = inf_half * narrow
            half_e = half_s + edema_extra
            wall_mask = (rho >= r_e) & (rho < r_p)
            paint(wall_mask & (dtheta < half_e), "edema")
            if z not in scar_free:
                u = np.clip(dtheta / half_s, 0.0, 1.0)
                depth = np.clip(transmural, 0.0, 1.0) * (1.0 - u**2) ** 0.6
                depth = np.maximum(depth, 0.25 * (u < 1.0))
                depth = depth * (1.0 + 0.12 * np.cos(3 * theta + scar_rough[0]))
                scar = wall_mask & (dtheta < half_s) & (rho < r_e + depth * th)
                paint(scar, "scar")
        paint(rho < r_e, "lv_blood")
        if 0.15 < t < 0.85:
            for ang in pap_angles:
                px = cx + 0.72 * r_endo * np.cos(ang)
                py = cy + 0.72 * r_endo * np.sin(ang)
                paint(np.hypot(x - px, y - py) < 0.22 * r_endo, "papillary")
        hi_labels[z] = lab

    return hi_labels, lv_c0


def _intensities(
    rng: np.random.Generator,
    hi_labels: np.ndarray,
    lv_c0: np.ndarray,
    channels: Sequence[str],
    *,
    size: int,
    up: int,
    pixel_mm: float,
    contrast: float,
    bias: float,
    texture: float,
    noise: float,
) -> np.ndarray:
    """``(Z, Y, X, C)`` float32 magnitudes: tissue LUT, bias field, texture, Rician noise."""
    n_slices = hi_labels.shape[0]
    images = np.empty((n_slices, size, size, len(channels)), dtype=np.float32)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    lv_px = (lv_c0 / pixel_mm + size / 2.0) / size * 2 - 1  # LV centre in [-1, 1] coords (x, y)
    for ci, seq in enumerate(channels):
        myo = MYOCARDIUM_SIGNAL[seq]
        ratios = np.array([INTENSITY_RATIOS[name][seq] for name in TISSUES], dtype=np.float64)
        ratios = np.where(ratios > 0, 1.0 + contrast * (ratios - 1.0), 0.0)
        lut = myo * ratios
        # smooth bias field (surface coil): low-order polynomial, 1 at the LV centre
        coef = rng.normal(0, 1, size=5)
        poly = (
            coef[0] * (xx - lv_px[0])
            + coef[1] * (yy - lv_px[1])
            + 0.5 * coef[2] * (xx - lv_px[0]) ** 2
            + 0.5 * coef[3] * (yy - lv_px[1]) ** 2
            + 0.5 * coef[4] * (xx - lv_px[0]) * (yy - lv_px[1])
        )
        poly /= max(np.abs(poly).max(), 1e-9)
        field = np.exp(np.log1p(bias) * poly) if bias > 0 else np.ones_like(poly)
        for z in range(n_slices):
            tex = _smooth_field(rng, (size, size), sigma_px=1.5)
            hi = lut[hi_labels[z]]
            lo = hi.reshape(size, up, size, up).mean(axis=(1, 3))
            gain = 1.0 + rng.uniform(-0.05, 0.05)
            signal = lo * (1.0 + texture * tex) * field * gain
            sigma = noise * NOISE_FACTOR[seq] * myo
            n1 = rng.normal(0.0, sigma, size=signal.shape)
            n2 = rng.normal(0.0, sigma, size=signal.shape)
            mag = np.sqrt((signal + n1) ** 2 + n2**2)
            images[z, :, :, ci] = np.clip(np.round(mag), 0, 32767)

    return images


def make_case(
    seed: int = 0,
    *,
    n_slices: int = 5,
    size: int = 128,
    infarct: bool = True,
    pixel_mm: float = 1.25,
    slice_mm: float = 10.0,
    noise: float = 0.10,
    contrast: float = 1.0,
    bias: float = 0.2,
    texture: float = 0.10,
    transmural: float = 0.9,
    scar_free_slices: Sequence[int] | None = None,
    upsample: int = 3,
    oblique: bool = True,
    case_id: str | None = None,
) -> Case:
    """Draw one multi-sequence short-axis CMR case with MyoPS ground truth.

    Parameters
    ----------
    seed : int
        Seed of every random choice; the same seed gives the same case.
    n_slices : int
        Short-axis slices from base (slice 0) to apex.
    size : int
        In-plane matrix (``size x size`` pixels).
    infarct : bool
        Draw an infarct (scar inside edema).  False gives healthy myocardium.
    pixel_mm, slice_mm : float
        In-plane pixel size and slice spacing in mm.
    noise : float
        Rician noise sigma as a fraction of the myocardial signal (difficulty).
    contrast : float
        Scales every tissue's contrast to myocardium: 1 is calibrated, 0.5 halves
        the differences (harder), 0 makes all tissues equal to myocardium.
    bias : float
        Peak-to-centre amplitude of the smooth multiplicative bias field.
    texture : float
        Relative standard deviation of the smooth tissue texture.
    transmural : float
        Scar depth at the infarct centre as a fraction of the wall (0-1); the
        sector edges are always subendocardial.
    scar_free_slices : sequence of int, optional
        Slices that keep the edema but have no scar.  Default: the most apical
        slice when ``n_slices >= 4``, none otherwise.
    upsample : int
        Fine-grid factor for partial volume (odd values keep voxel centres on
        the fine grid; 1 turns partial volume off).
    oblique : bool
        Use a rotated, scanner-like affine instead of an axis-aligned one.
    case_id : str, optional
        Defaults to ``f"{1001 + seed}"``.

    Returns
    -------
    Case
        ``images`` (Z, Y, X, 3) float32 holding integer values (as stored in
        int16 files), channels ``("bSSFP", "LGE", "T2")``, MyoPS ``labels``.
    """
    if n_slices < 1 or size < 32:
        raise ValueError("n_slices must be >= 1 and size >= 32")
    if upsample < 1:
        raise ValueError("upsample must be >= 1")
    rng = np.random.default_rng(seed)
    up = int(upsample)
    n_hi = size * up
    # fine-grid pixel centres in mm relative to the image centre; x = columns, y = rows
    coords = ((np.arange(n_hi) + 0.5) / up - size / 2.0) * pixel_mm
    x, y = np.meshgrid(coords, coords)  # (Y, X)

    hi_labels, lv_c0 = _anatomy(
        rng,
        x,
        y,
        n_slices,
        infarct=infarct,
        transmural=transmural,
        scar_free_slices=scar_free_slices,
    )

    # ---- ground truth: label at each voxel centre ----
    c = up // 2
    myops = np.array(list(TISSUES.values()), dtype=np.int32)
    labels = myops[hi_labels[:, c::up, c::up]]

    # ---- intensities per sequence ----
    channels = DEFAULT_CHANNELS
    images = _intensities(
        rng, hi_labels, lv_c0, channels, size=size, up=up, pixel_mm=pixel_mm,
        contrast=contrast, bias=bias, texture=texture, noise=noise,
    )  # fmt: skip

    # ---- scanner-like geometry ----
    spacing_xyz = np.array([pixel_mm, pixel_mm, slice_mm])
    if oblique:
        rot = _rotation(
            -55 + rng.uniform(-10, 10), 28 + rng.uniform(-10, 10), -30 + rng.uniform(-10, 10)
        )
    else:
        rot = np.eye(3)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing_xyz)
    centre_vox = np.array([size / 2.0 - 0.5, size / 2.0 - 0.5, (n_slices - 1) / 2.0])
    affine[:3, 3] = rng.uniform(-20, 20, size=3) - affine[:3, :3] @ centre_vox
    geometry = Geometry.from_affine(affine, (n_slices, size, size))
    return Case(
        images=images,
        channels=channels,
        spacing_mm=geometry.spacing_mm,
        geometry=geometry,
        labels=labels,
        case_id=str(case_id) if case_id is not None else str(1001 + seed),
        sources={},
    )


# --------------------------------------------------------------------------- dataset
_FILE_TAGS = {"bSSFP": "C0", "LGE": "DE", "T2": "T2"}

#: The bundled ``sample_data/`` cases: id -> :func:`make_case` arguments.  1001
#: has an infarct with a scar-free apical slice (edema only); 1002 has none.
SAMPLE_CASES: dict[str, dict] = {
    "1001": {"seed": 0, "n_slices": 5, "infarct": True},
    "1002": {"seed": 1, "n_slices": 3, "infarct": False},
}


def make_sample_case(case_id: str = "1001") -> Case:
    """Regenerate one bundled sample case (identical to the files in ``sample_data/``)."""
    if case_id not in SAMPLE_CASES:
        raise KeyError(f"no sample case {case_id!r} (have {list(SAMPLE_CASES)})")
    return make_case(case_id=case_id, **SAMPLE_CASES[case_id])


def write_sample_data(
    out_dir: str | os.PathLike, *, overwrite: bool = False
) -> list[dict[str, Path]]:
    """Write the bundled sample cases (:data:`SAMPLE_CASES`) in the MyoPS layout.

    Every target is checked first: when one exists (and ``overwrite`` is False)
    :class:`~napari_gmmseg.errors.OutputExistsError` is raised and nothing is written.
    """
    from napari_gmmseg.errors import OutputExistsError

    if not overwrite:
        for cid in SAMPLE_CASES:
            for p in case_paths(out_dir, cid).values():
                if p.exists():
                    raise OutputExistsError(
                        f"{p}: exists; use --force (or the overwrite option) to replace it"
                    )
    return [write_case(make_sample_case(cid), out_dir, overwrite=overwrite) for cid in SAMPLE_CASES]


def case_paths(
    out_dir: str | os.PathLike, case_id: str, train_name: str = "train25"
) -> dict[str, Path]:
    """MyoPS-layout paths of one case: ``{"bSSFP", "LGE", "T2", "mask"} -> Path``."""
    out = Path(out_dir)
    paths = {
        seq: out / train_name / f"myops_training_{case_id}_{tag}.nii.gz"
        for seq, tag in _FILE_TAGS.items()
    }
    paths["mask"] = out / f"{train_name}_myops_gd" / f"myops_training_{case_id}_gd.nii.gz"
    return paths


def write_case(
    case: Case, out_dir: str | os.PathLike, *, overwrite: bool = False, train_name: str = "train25"
) -> dict[str, Path]:
    """Write one case in the MyoPS layout (int16 NIfTI, atomic writes)."""
    from napari_gmmseg.errors import OutputExistsError
    from napari_gmmseg.io import save_labels, save_volume

    paths = case_paths(out_dir, case.case_id, train_name)
    if not overwrite:
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing:
            raise OutputExistsError(
                f"{existing[0]}: exists ({len(existing)} file(s) of case {case.case_id}); "
                "use --force (or the overwrite option) to replace it"
            )
    for seq in _FILE_TAGS:
        vol = case.image(seq)
        save_volume(vol.astype(np.int16), case.geometry, paths[seq], overwrite=overwrite)
    if case.labels is not None:
        save_labels(case.labels, case.geometry, paths["mask"], overwrite=overwrite)
    else:
        paths.pop("mask")
    return paths


def write_dataset(
    out_dir: str | os.PathLike,
    n_cases: int = 3,
    seed: int = 0,
    *,
    healthy: int = 0,
    overwrite: bool = False,
    first_id: int = 1001,
    train_name: str = "train25",
    **case_options,
) -> list[dict[str, Path]]:
    """Write ``n_cases`` phantom cases in the MyoPS layout.

    Case ``i`` (ids ``first_id + i``) is ``make_case(seed + i, ...)``; the last
    ``healthy`` cases have no infarct.  Every target file is checked first, so
    when one exists (and ``overwrite`` is False) nothing is written.

    Parameters
    ----------
    out_dir : path-like
        Dataset root; ``train25/`` and ``train25_myops_gd/`` are created in it.
    n_cases : int
        Number of cases.
    seed : int
        Seed of the first case.
    healthy : int
        How many of the cases (the last ones) have no infarct.
    overwrite : bool
        Replace existing files.
    first_id : int
        Id of the first case.
    **case_options
        Passed to :func:`make_case` (``n_slices``, ``size``, ``noise``, ...).

    Returns
    -------
    list of dict
        The written paths per case (``{"bSSFP", "LGE", "T2", "mask"} -> Path``).
    """
    from napari_gmmseg.errors import OutputExistsError

    if n_cases < 1:
        raise ValueError("n_cases must be >= 1")
    if not 0 <= healthy <= n_cases:
        raise ValueError("healthy must be between 0 and n_cases")
    ids = [str(first_id + i) for i in range(n_cases)]
    if not overwrite:
        for cid in ids:
            for p in case_paths(out_dir, cid, train_name).values():
                if p.exists():
                    raise OutputExistsError(
                        f"{p}: exists; use --force (or the overwrite option) to replace it"
                    )
    written = []
    for i, cid in enumerate(ids):
        opts = dict(case_options)
        opts.setdefault("infarct", i < n_cases - healthy)
        case = make_case(seed + i, case_id=cid, **opts)
        written.append(write_case(case, out_dir, overwrite=overwrite, train_name=train_name))
    return written
