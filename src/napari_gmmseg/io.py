"""Cardiac MRI case I/O: load aligned multi-sequence volumes and masks, save label maps.

Conventions (used by every other module)
----------------------------------------
* Images are ``float32`` arrays of shape ``(Z, Y, X, C)``: slice, row, column,
  sequence; this is SimpleITK's ``GetArrayFromImage`` order plus a trailing
  channel axis.  A NIfTI file stored as ``(i, j, k)`` = ``(X, Y, Z)`` is
  transposed to ``(Z, Y, X)`` on load and back on save.
* Label maps are ``int32`` arrays of shape ``(Z, Y, X)`` holding MyoPS values
  (0, 200, 500, 600, 1220, 2221; see :mod:`napari_gmmseg.labels`).
* ``spacing_mm`` is ``(z, y, x)`` in millimetres (slice spacing first).
* :class:`Geometry` is the reference grid (the bSSFP image when present): the
  NIfTI affine (RAS+, voxel ``(x, y, z)`` to mm), the ITK origin/direction
  (LPS+), the spacing, the shape and, for NIfTI sources, the raw NIfTI header so
  that :func:`save_labels` writes a file with the same affine, qform/sform codes
  and header fields as the source.

Entry points: :func:`load_case` (dataset root + id, one case folder, or any one
sequence file of a case), :func:`load_case_from_paths` (explicit paths),
:func:`discover_cases` (every case of a dataset), :func:`save_labels` /
:func:`save_volume` (atomic NIfTI writes) and :func:`read_labels`.

NIfTI files are read and written with nibabel (exact header round trip); every
other format SimpleITK reads (``.mha``, ``.mhd``, ``.nrrd``, a DICOM series
folder) goes through SimpleITK.  Both produce the same ``(array, Geometry)`` pair
so building a :class:`Case` is one code path.  nibabel and SimpleITK are imported
lazily, so ``import napari_gmmseg.io`` only costs numpy.  SimpleITK (0.26 GB) is the
``simpleitk`` extra, not a runtime dependency: NIfTI cases on one grid never need it;
reading another format or resampling a sequence onto the bSSFP grid without it fails
with a one-line error naming the extra.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg.errors import CaseLoadError, GeometryError, OutputExistsError, OutputPathError
from napari_gmmseg.labels import DEFAULT_CHANNELS, LV_ROI_VALUES, MYOPS_VALUES

__all__ = [
    "DEFAULT_CHANNELS",
    "IMAGE_SUFFIXES",
    "Case",
    "CaseSource",
    "Geometry",
    "RunLock",
    "check_distinct",
    "check_output",
    "check_spacing",
    "discover_cases",
    "file_role",
    "is_image_path",
    "load_case",
    "load_case_from_paths",
    "read_labels",
    "read_sidecar",
    "read_volume",
    "save_labels",
    "save_sidecar",
    "save_volume",
    "sidecar_path",
]


#: File name endings recognised as images (a folder is read as a DICOM series).
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: File-name tokens (case-insensitive, between ``_ - .`` separators) per role.
SEQUENCE_TOKENS: dict[str, tuple[str, ...]] = {
    "bSSFP": ("c0", "bssfp", "ssfp", "cine"),
    "LGE": ("de", "lge", "psir"),
    "T2": ("t2", "t2w", "stir"),
}
MASK_TOKENS: tuple[str, ...] = ("gd", "mask", "label", "labels", "seg", "gt", "manual")

# ITK (LPS) <-> NIfTI (RAS) world flip.
_FLIP = np.diag([-1.0, -1.0, 1.0])

# Alignment tolerances between sequences of one case.
_SPACING_RTOL = 1e-3
_ORIGIN_TOL_FRACTION = 0.05  # of the smallest voxel size
_DIRECTION_ATOL = 1e-3

#: Mixed study: sequences whose origins differ by more than this (mm) or whose axes
#: differ by more than :data:`MAX_ANGLE_DEG` are refused unless ``allow_resample``
#: (``--allow-resample``): they are most likely not of one patient and one position.
MAX_ORIGIN_SHIFT_MM = 5.0
MAX_ANGLE_DEG = 5.0

#: Plausible voxel sizes of cardiac MRI in mm: in-plane ``(y, x)`` and slice ``z``
#: (``docs/robustness.md``). Outside them a case is refused: the header is wrong.
IN_PLANE_MM = (0.2, 5.0)
SLICE_MM = (0.5, 30.0)

#: NIfTI ``xyzt_units`` spatial units -> mm ("unknown": the NIfTI default, mm).
_UNITS_TO_MM = {"unknown": 1.0, "meter": 1000.0, "mm": 1.0, "micron": 1e-3}


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True, eq=False)
class Geometry:
    """Reference grid of a case.

    Attributes
    ----------
    shape : tuple of int
        ``(Z, Y, X)`` voxel counts.
    spacing_mm : tuple of float
        ``(z, y, x)`` voxel size in mm.
    affine : numpy.ndarray
        4x4 NIfTI affine (RAS+) mapping voxel ``(x, y, z)`` indices to mm.
    header : bytes or None
        Raw NIfTI header (``binaryblock``) of the source file, or None when the
        source was not NIfTI (a fresh header is then built from ``affine``).
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    header: bytes | None = None

    # ---- ITK view (LPS+, x/y/z order) ----
    @property
    def origin(self) -> tuple[float, float, float]:
        """ITK origin (LPS+, mm) of voxel (0, 0, 0)."""
        return tuple(float(v) for v in _FLIP @ self.affine[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """ITK direction cosines (LPS+), 3x3, columns = x, y, z voxel axes."""
        sp = np.asarray(self.spacing_mm[::-1], dtype=float)
        return _FLIP @ self.affine[:3, :3] / sp[None, :]

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        """Spacing in ITK ``(x, y, z)`` order."""
        return tuple(float(v) for v in self.spacing_mm[::-1])

    # ---- constructors ----
    @classmethod
    def from_affine(
        cls,
        affine: np.ndarray,
        shape_zyx: Sequence[int],
        header: bytes | None = None,
        spacing_mm: Sequence[float] | None = None,
    ) -> Geometry:
        """Build from a NIfTI affine (voxel ``(x, y, z)`` -> RAS mm) and a ``(Z, Y, X)`` shape.

        ``spacing_mm`` (z, y, x) defaults to the affine's column norms; NIfTI
        sources pass the header's ``pixdim`` so the spacing is the stored one.
        """
        affine = np.asarray(affine, dtype=float).copy()
        zooms_xyz = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(zooms_xyz <= 0) or not np.all(np.isfinite(affine)):
            raise GeometryError(f"degenerate affine (voxel sizes {zooms_xyz})")
        if spacing_mm is not None:
            given = np.asarray(spacing_mm, dtype=float)[::-1]
            if np.all(given > 0) and np.allclose(given, zooms_xyz, rtol=1e-4):
                zooms_xyz = given
        return cls(
            shape=tuple(int(s) for s in shape_zyx),
            spacing_mm=tuple(float(z) for z in zooms_xyz[::-1]),
            affine=affine,
            header=header,
        )

    @classmethod
    def from_itk(
        cls,
        origin: Sequence[float],
        spacing_xyz: Sequence[float],
        direction: Sequence[float] | np.ndarray,
        shape_zyx: Sequence[int],
    ) -> Geometry:
        """Build from ITK origin, spacing ``(x, y, z)``, direction (9 values, row major)."""
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        sp = np.asarray(spacing_xyz, dtype=float)
        affine = np.eye(4)
        affine[:3, :3] = _FLIP @ d @ np.diag(sp)
        affine[:3, 3] = _FLIP @ np.asarray(origin, dtype=float)
        return cls.from_affine(affine, shape_zyx)

    @classmethod
    def from_spacing(cls, shape_zyx: Sequence[int], spacing_mm: Sequence[float]) -> Geometry:
        """Axis-aligned grid with the given ``(z, y, x)`` spacing and origin 0."""
        affine = np.diag([*[float(s) for s in spacing_mm[::-1]], 1.0])
        return cls.from_affine(affine, shape_zyx)

    # ---- helpers ----
    def nifti_header(self):
        """A fresh nibabel header for this grid (a copy of the source header when known)."""
        import nibabel as nib

        if self.header is not None:
            cls = nib.Nifti2Header if len(self.header) == 540 else nib.Nifti1Header
            return cls(binaryblock=self.header).copy()
        hdr = nib.Nifti1Header()
        hdr.set_data_shape(self.shape[::-1])
        hdr.set_qform(self.affine, code=1)
        hdr.set_sform(self.affine, code=1)
        hdr.set_xyzt_units("mm", "sec")
        return hdr

    def same_grid(self, other: Geometry) -> bool:
        """True when shape, spacing, origin and direction agree within tolerance."""
        if tuple(self.shape) != tuple(other.shape):
            return False
        a, b = np.asarray(self.spacing_mm), np.asarray(other.spacing_mm)
        if not np.allclose(a, b, rtol=_SPACING_RTOL, atol=0):
            return False
        tol = _ORIGIN_TOL_FRACTION * float(min(a.min(), b.min()))
        if np.linalg.norm(np.subtract(self.origin, other.origin)) > tol:
            return False
        return bool(np.allclose(self.direction, other.direction, atol=_DIRECTION_ATOL))

    def shift_mm(self, other: Geometry) -> float:
        """Distance (mm) between the origins (voxel 0, 0, 0) of the two grids."""
        return float(np.linalg.norm(np.subtract(self.origin, other.origin)))

    def angle_deg(self, other: Geometry) -> float:
        """Largest angle (degrees) between corresponding voxel axes of the two grids."""
        cos = np.clip(np.sum(self.direction * other.direction, axis=0), -1.0, 1.0)
        return float(np.max(np.degrees(np.arccos(cos))))

    def difference(self, other: Geometry) -> str:
        """Human-readable list of what differs from ``other`` (for warnings)."""
        out = []
        if tuple(self.shape) != tuple(other.shape):
            out.append(f"shape {self.shape} vs {other.shape}")
        if not np.allclose(self.spacing_mm, other.spacing_mm, rtol=_SPACING_RTOL, atol=0):
            a = tuple(round(v, 3) for v in self.spacing_mm)
            b = tuple(round(v, 3) for v in other.spacing_mm)
            out.append(f"spacing {a} vs {b} mm")
        shift = float(np.linalg.norm(np.subtract(self.origin, other.origin)))
        if shift > _ORIGIN_TOL_FRACTION * float(min(min(self.spacing_mm), min(other.spacing_mm))):
            out.append(f"origin differs by {shift:.3g} mm")
        if not np.allclose(self.direction, other.direction, atol=_DIRECTION_ATOL):
            angle = np.degrees(
                np.arccos(np.clip(np.sum(self.direction * other.direction, axis=0), -1, 1))
            )
            out.append(f"orientation differs by up to {float(np.max(angle)):.3g} degrees")
        return "; ".join(out) or "same grid"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the header as hex)."""
        return {
            "shape": list(self.shape),
            "spacing_mm": list(self.spacing_mm),
            "affine": self.affine.tolist(),
            "header": None if self.header is None else self.header.hex(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`."""
        header = d.get("header")
        return cls(
            shape=tuple(int(s) for s in d["shape"]),
            spacing_mm=tuple(float(s) for s in d["spacing_mm"]),
            affine=np.asarray(d["affine"], dtype=float),
            header=None if header is None else bytes.fromhex(header),
        )

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing_mm)
        return f"Geometry(shape={self.shape}, spacing_mm=({sp}), nifti_header={self.header is not None})"


# --------------------------------------------------------------------------- case
@dataclass(eq=False)
class Case:
    """One multi-sequence cardiac MRI case on a single grid.

    Attributes
    ----------
    images : numpy.ndarray
        ``(Z, Y, X, C)`` float32, one channel per sequence.
    channels : tuple of str
        Sequence names, in channel order (default ``("bSSFP", "LGE", "T2")``).
    spacing_mm : tuple of float
        ``(z, y, x)`` voxel size in mm.
    geometry : Geometry
        Reference grid (used by :func:`save_labels`).
    labels : numpy.ndarray or None
        ``(Z, Y, X)`` int32 MyoPS label values, or None.
    case_id : str
        Case identifier (``"3001"`` for ``myops_training_3001_*``).
    sources : dict
        ``name -> Path`` of every file read (sequence names and ``"mask"``).
    """

    images: np.ndarray
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    geometry: Geometry | None = None
    labels: np.ndarray | None = None
    case_id: str = "case"
    sources: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.float32)
        if self.images.ndim != 4:
            raise GeometryError(
                f"case {self.case_id}: images must be (Z, Y, X, C), got {self.images.shape}"
            )
        self.channels = tuple(self.channels)
        if len(self.channels) != self.images.shape[3]:
            raise GeometryError(
                f"case {self.case_id}: {len(self.channels)} channel names for {self.images.shape[3]} channels"
            )
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)
        if self.geometry is None:
            self.geometry = Geometry.from_spacing(self.images.shape[:3], self.spacing_mm)
        if self.labels is not None:
            self.labels = np.asarray(self.labels).astype(np.int32, copy=False)
            if self.labels.shape != self.images.shape[:3]:
                raise GeometryError(
                    f"case {self.case_id}: labels {self.labels.shape} do not match images {self.images.shape[:3]}"
                )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(self.images.shape[:3])

    @property
    def n_slices(self) -> int:
        """Number of slices ``Z``."""
        return int(self.images.shape[0])

    def image(self, name: str) -> np.ndarray:
        """The ``(Z, Y, X)`` volume of one sequence by name (case-insensitive)."""
        for i, c in enumerate(self.channels):
            if c.lower() == name.lower():
                return self.images[..., i]
        raise KeyError(f"case {self.case_id} has no sequence {name!r} (has {self.channels})")

    def roi(self, values: Sequence[int] = LV_ROI_VALUES) -> np.ndarray:
        """Boolean ``(Z, Y, X)`` mask of the given label values (default: the LV ROI)."""
        if self.labels is None:
            raise CaseLoadError(f"case {self.case_id} has no ground-truth mask")
        return np.isin(self.labels, np.asarray(values))

    def __repr__(self) -> str:
        return (
            f"Case(case_id={self.case_id!r}, shape={self.shape}, channels={self.channels}, "
            f"spacing_mm={tuple(round(s, 4) for s in self.spacing_mm)}, "
            f"labels={'yes' if self.labels is not None else 'no'})"
        )


# --------------------------------------------------------------------------- reading
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return ""


def _stem(path: Path) -> str:
    s = _suffix(path)
    return path.name[: -len(s)] if s else path.name


def is_image_path(path: str | os.PathLike) -> bool:
    """True for an existing file whose name ends in one of :data:`IMAGE_SUFFIXES`."""
    path = Path(path)
    return path.is_file() and bool(_suffix(path))


_is_image_path = is_image_path  # the name this module used before it was public


def _squeeze_to_3d(arr: np.ndarray, path: Path, frame: int | None, layout: str) -> np.ndarray:
    """Reduce to a 3-D array (axes as in the file); ``layout`` names the axes for messages."""
    # drop trailing singleton axes beyond the third
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim < 3:
        raise CaseLoadError(
            f"{path}: is a {arr.ndim}-D image {arr.shape}; a 3-D volume (stack of slices) is needed"
        )
    if arr.ndim == 4:
        n = arr.shape[3]
        if frame is None:
            raise CaseLoadError(
                f"{path}: is a 4-D image {arr.shape} ({layout} x time, {n} frames); "
                f"choose a time frame 0..{n - 1} (napari-gmmseg segment --frame F; "
                "load_case(..., frame=F) in Python)"
            )
        if not -n <= frame < n:
            raise CaseLoadError(f"{path}: frame {frame} out of range (0..{n - 1})")
        arr = arr[..., frame]
    if arr.ndim != 3:
        raise CaseLoadError(f"{path}: is a {arr.ndim}-D image {arr.shape}; expected 3-D")
    return arr


def _read_nifti(path: Path, frame: int | None) -> tuple[np.ndarray, Geometry]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise CaseLoadError(f"{path}: not a readable NIfTI image ({exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise CaseLoadError(f"{path}: not a NIfTI image")
    if arr.dtype.kind not in "biuf":
        raise CaseLoadError(f"{path}: unsupported voxel type {arr.dtype} (multi-component?)")
    arr = _squeeze_to_3d(arr, path, frame, "X, Y, Z")
    hdr = img.header.copy()
    if hdr.get_data_shape() != arr.shape:
        # make the stored header describe the 3-D volume we hand out
        hdr.set_data_shape(arr.shape)
    try:  # nibabel silently sets a zero pixdim to 1 on load: read the stored one
        with nib.openers.ImageOpener(str(path)) as fh:
            stored = type(img.header).from_fileobj(fh, check=False)
        pixdim = np.asarray(stored["pixdim"][1:4], dtype=float)
    except Exception:  # pragma: no cover - the image itself was readable
        pixdim = np.asarray(hdr["pixdim"][1:4], dtype=float)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
        raise CaseLoadError(
            f"{path}: voxel size (pixdim) {tuple(float(v) for v in pixdim)} is zero or not a "
            "number; fix the header"
        )
    to_mm = _UNITS_TO_MM.get(hdr.get_xyzt_units()[0])
    if to_mm is None:
        raise CaseLoadError(
            f"{path}: unknown spatial unit {hdr.get_xyzt_units()[0]!r} in xyzt_units"
        )
    affine = np.asarray(img.affine, dtype=float).copy()
    affine[:3, :] *= to_mm  # the header stays as it is: the file it writes keeps its units
    zooms = tuple(float(z) * to_mm for z in hdr.get_zooms()[:3])
    geometry = Geometry.from_affine(
        affine, arr.shape[::-1], header=bytes(hdr.binaryblock), spacing_mm=zooms[::-1]
    )
    return np.ascontiguousarray(arr.transpose(2, 1, 0)), geometry


#: How to install what :func:`_simpleitk` needs, said in its error.
SIMPLEITK_INSTALL = "pip install 'napari-gmmseg[simpleitk]'"


def _simpleitk(error: type[Exception], needed_for: str):
    """SimpleITK, or ``error`` saying what needed it and how to install it (the extra)."""
    try:
        import SimpleITK
    except ImportError:
        raise error(f"{needed_for} needs SimpleITK: {SIMPLEITK_INSTALL}") from None
    return SimpleITK


def _read_sitk(path: Path, frame: int | None) -> tuple[np.ndarray, Geometry]:
    sitk = _simpleitk(
        CaseLoadError, f"{path}: reading a non-NIfTI image (.mha, .mhd, .nrrd, DICOM)"
    )
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise CaseLoadError(f"{path}: folder holds no DICOM series")
            if len(series) > 1:
                raise CaseLoadError(
                    f"{path}: folder holds {len(series)} DICOM series; put one series per folder"
                )
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(path))
    except CaseLoadError:
        raise
    except Exception as exc:  # SimpleITK raises RuntimeError with a long ITK message
        msg = str(exc).strip().splitlines()
        raise CaseLoadError(
            f"{path}: not a readable image ({msg[-1] if msg else type(exc).__name__})"
        ) from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CaseLoadError(
            f"{path}: has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a scalar image is needed"
        )
    dim = img.GetDimension()
    if dim == 4:
        size = img.GetSize()
        if frame is None:
            raise CaseLoadError(
                f"{path}: is a 4-D image {size} (x, y, z, time; {size[3]} frames); "
                f"choose a time frame with frame=0..{size[3] - 1}"
            )
        if not -size[3] <= frame < size[3]:
            raise CaseLoadError(f"{path}: frame {frame} out of range (0..{size[3] - 1})")
        img = sitk.Extract(img, [*size[:3], 0], [0, 0, 0, frame % size[3]])
        dim = 3
    if dim != 3:
        raise CaseLoadError(
            f"{path}: is a {dim}-D image {img.GetSize()}; a 3-D volume (stack of slices) is needed"
        )
    arr = sitk.GetArrayFromImage(img)  # (Z, Y, X)
    geometry = Geometry.from_itk(img.GetOrigin(), img.GetSpacing(), img.GetDirection(), arr.shape)
    return arr, geometry


def read_volume(
    path: str | os.PathLike, *, frame: int | None = None
) -> tuple[np.ndarray, Geometry]:
    """Read one 3-D volume as a ``(Z, Y, X)`` array (file dtype) and its :class:`Geometry`.

    Parameters
    ----------
    path : path-like
        NIfTI (``.nii``/``.nii.gz``, read with nibabel), any other format
        SimpleITK reads (``.mha``, ``.mhd``, ``.nrrd``) or a DICOM series folder.
    frame : int, optional
        Time frame to take from a 4-D (3-D + time) file.

    Raises
    ------
    CaseLoadError
        Missing or unreadable file, 2-D or 4-D image without ``frame``.
    """
    path = Path(path)
    if not path.exists():
        raise CaseLoadError(f"{path}: no such file")
    if path.is_file() and _suffix(path) in _NIFTI_SUFFIXES:
        return _read_nifti(path, frame)
    return _read_sitk(path, frame)


def _check_image_values(arr: np.ndarray, path: Path) -> np.ndarray:
    data = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum() - n_nan)
        raise CaseLoadError(f"{path}: holds {n_nan} NaN and {n_inf} Inf voxels")
    if data.size == 0 or float(data.max()) == float(data.min()):
        value = float(data.flat[0]) if data.size else float("nan")
        raise CaseLoadError(f"{path}: image is constant (every voxel = {value:g})")
    return data


def _check_label_values(arr: np.ndarray, path: Path) -> np.ndarray:
    data = np.asarray(arr)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise CaseLoadError(f"{path}: mask holds NaN or Inf values")
        frac = data != np.round(data)
        if frac.any():
            examples = np.unique(data[frac])[:5]
            raise CaseLoadError(
                f"{path}: mask holds fractional values ({int(frac.sum())} voxels, e.g. "
                f"{', '.join(f'{v:g}' for v in examples)}); a label map of integers is needed"
            )
    elif data.dtype.kind not in "biu":
        raise CaseLoadError(f"{path}: mask has unsupported type {data.dtype}")
    values = np.unique(data).astype(np.int64)
    unknown = sorted(set(values.tolist()) - set(MYOPS_VALUES))
    if unknown:
        raise CaseLoadError(
            f"{path}: mask holds unknown label values {unknown}; "
            f"expected MyoPS values {list(MYOPS_VALUES)}"
        )
    return data.astype(np.int32)


def read_labels(
    path: str | os.PathLike, *, frame: int | None = None, with_geometry: bool = False
) -> np.ndarray | tuple[np.ndarray, Geometry]:
    """Read a MyoPS label map as ``(Z, Y, X)`` int32 (validated values).

    Parameters
    ----------
    path : path-like
        Label file (any format :func:`read_volume` reads).
    frame : int, optional
        Time frame of a 4-D file.
    with_geometry : bool
        Also return the file's :class:`Geometry`.

    Raises
    ------
    CaseLoadError
        Unreadable file, fractional values, or values outside ``labels.MYOPS_VALUES``
        (the unknown values are listed in the message).
    """
    path = Path(path)
    arr, geometry = read_volume(path, frame=frame)
    labels = _check_label_values(arr, path)
    return (labels, geometry) if with_geometry else labels


def roi_from_mask(
    mask_zyx: np.ndarray, roi_values: Sequence[int] = LV_ROI_VALUES, *, name: str = "mask"
) -> np.ndarray:
    """The ``(Z, Y, X)`` bool ROI of a mask: a binary mask as it is, a label map's ``roi_values``.

    The ONE place a mask file becomes an ROI (``segment --roi``, ``evaluate --roi``).

    Raises
    ------
    RoiError
        Values other than 0/1, MyoPS labels and ``roi_values`` (they would silently shrink
        the ROI; the message lists them), or no voxel with ``roi_values``.
    """
    from napari_gmmseg.errors import RoiError

    arr = np.asarray(mask_zyx)
    if not np.all(np.isfinite(arr)):
        raise RoiError(f"{name}: mask holds NaN or Inf")
    lab = np.rint(arr).astype(np.int64)
    values = set(np.unique(lab).tolist())
    if values <= {0, 1}:
        roi = lab > 0
    else:
        unknown = sorted(values - set(MYOPS_VALUES) - {int(v) for v in roi_values})
        if unknown:
            raise RoiError(
                f"{name}: mask holds values {unknown[:10]} that are neither MyoPS labels "
                f"{list(MYOPS_VALUES)} nor ROI labels {list(roi_values)}; give them with "
                "--roi-labels (or use a binary mask)"
            )
        roi = np.isin(lab, np.asarray(roi_values))
    if not roi.any():
        raise RoiError(f"{name}: no voxel with the ROI labels {list(roi_values)}")
    return roi


# --------------------------------------------------------------------------- resampling
def _to_sitk(arr_zyx: np.ndarray, geometry: Geometry):
    sitk = _simpleitk(GeometryError, "resampling onto another grid")

    d = geometry.direction
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
        raise GeometryError(
            f"grid with a sheared (non-orthonormal) affine cannot be resampled: {geometry!r}"
        )
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr_zyx))
    img.SetSpacing(geometry.spacing_xyz)
    img.SetOrigin(geometry.origin)
    img.SetDirection(tuple(float(v) for v in geometry.direction.ravel()))
    return img


def resample_to(
    arr_zyx: np.ndarray,
    source: Geometry,
    reference: Geometry,
    *,
    labels: bool = False,
    name: str = "image",
) -> np.ndarray:
    """Resample a volume from its grid onto ``reference`` (linear, or nearest for labels).

    Raises
    ------
    GeometryError
        When the two grids do not overlap at all, or SimpleITK (the ``simpleitk``
        extra) is not installed.
    """
    sitk = _simpleitk(GeometryError, f"{name}: resampling onto the reference (bSSFP) grid")

    ref = _to_sitk(np.zeros(reference.shape, dtype=np.uint8), reference)
    cover = sitk.Resample(
        _to_sitk(np.ones(arr_zyx.shape, dtype=np.uint8), source),
        ref,
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
        sitk.sitkUInt8,
    )
    covered = sitk.GetArrayViewFromImage(cover)
    if not covered.any():
        raise GeometryError(f"{name}: does not overlap the reference (bSSFP) grid at all")
    src = _to_sitk(arr_zyx.astype(np.int32 if labels else np.float32), source)
    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = sitk.Resample(src, ref, sitk.Transform(), interp, 0.0)
    return sitk.GetArrayFromImage(out)


# --------------------------------------------------------------------------- naming
def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[_\-.\s]+", name.lower()) if t]


def _is_series_folder(path: Path) -> bool:
    """A folder of (DICOM) files only: no subfolders, no files with an image suffix."""
    try:
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    except OSError:
        return False
    return bool(entries) and all(p.is_file() and not _suffix(p) for p in entries)


def file_role(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(role, key)`` of an image path: role is a sequence name or "mask"; key the case prefix.

    None for a path that is no image file or DICOM series folder, or whose name carries
    no sequence or mask tag.
    """
    path = Path(path)
    if path.is_dir():
        if not _is_series_folder(path):
            return None
        stem = path.name
    elif _is_image_path(path):
        stem = _stem(path)
    else:
        return None
    parts = re.split(r"([_\-.\s]+)", stem)
    words = [p for p in parts[::2]]
    lowered = [w.lower() for w in words]
    found = None
    for i in range(len(lowered) - 1, -1, -1):
        w = lowered[i]
        if w in MASK_TOKENS:
            found = ("mask", i)
            break
        for role, toks in SEQUENCE_TOKENS.items():
            if w in toks:
                found = (role, i)
                break
        if found:
            break
    if found is None:
        return None
    role, i = found
    key = "".join(parts[: 2 * i]).rstrip("_-. ")
    return role, key


_role = file_role  # the name this module used before it was public


def _case_id_from_key(key: str) -> str:
    m = re.fullmatch(r"myops_(?:training|test|validation)_(\w+)", key, flags=re.IGNORECASE)
    return m.group(1) if m else key


def _scan_folder(folder: Path, allow_dirs: bool = False) -> dict[str, dict[str, Path]]:
    """Group the images directly in ``folder`` by case key: ``key -> {role: path}``."""
    groups: dict[str, dict[str, Path]] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise CaseLoadError(f"{folder}: cannot list folder ({exc})") from exc
    for p in entries:
        if p.name.startswith("."):
            continue
        if p.is_dir() and not allow_dirs:
            continue
        r = _role(p)
        if r is None:
            continue
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            raise CaseLoadError(
                f"{folder}: file name {p.name!r} is not valid UTF-8; rename it"
            ) from None
        role, key = r
        roles = groups.setdefault(key, {})
        # prefer a NIfTI file over other formats, otherwise keep the first
        if role in roles and _suffix(roles[role]) in _NIFTI_SUFFIXES:
            continue
        roles[role] = p
    return groups


def _mask_folders(folder: Path) -> list[Path]:
    """Sibling folders that may hold masks for the images in ``folder`` (MyoPS ``*_gd``)."""
    parent = folder.parent
    out = []
    try:
        siblings = sorted(p for p in parent.iterdir() if p.is_dir() and p != folder)
    except OSError:
        return out
    for p in siblings:
        low = p.name.lower()
        if low.startswith(folder.name.lower()) and any(t in _tokens(low) for t in MASK_TOKENS):
            out.append(p)
    for p in siblings:
        if p not in out and _tokens(p.name)[-1:] and _tokens(p.name)[-1] in MASK_TOKENS:
            out.append(p)
    return out


@dataclass(frozen=True)
class CaseSource:
    """A case found on disk, not loaded yet.

    Attributes
    ----------
    case_id : str
        Case identifier.
    sequences : dict
        ``sequence name -> path`` in canonical channel order.
    mask : Path or None
        Ground-truth mask file when found.
    """

    case_id: str
    sequences: dict[str, Path]
    mask: Path | None = None

    def load(
        self,
        *,
        frame: int | None = None,
        channels: Sequence[str] | None = None,
        allow_resample: bool = False,
    ) -> Case:
        """Load this case (see :func:`load_case_from_paths`)."""
        seqs = self.sequences
        if channels is not None:
            missing = [c for c in channels if c not in seqs]
            if missing:
                raise CaseLoadError(
                    f"case {self.case_id}: missing sequence(s) {missing} "
                    f"(found {list(seqs)} in {_folder_of(seqs)})"
                )
            seqs = {c: seqs[c] for c in channels}
        return load_case_from_paths(
            seqs, self.mask, self.case_id, frame=frame, allow_resample=allow_resample
        )


def _folder_of(seqs: Mapping[str, Path]) -> str:
    parents = sorted({str(Path(p).parent) for p in seqs.values()})
    return ", ".join(parents) if parents else "?"


def _order(roles: Mapping[str, Path]) -> dict[str, Path]:
    names = [c for c in DEFAULT_CHANNELS if c in roles]
    names += sorted(r for r in roles if r not in DEFAULT_CHANNELS and r != "mask")
    return {n: Path(roles[n]) for n in names}


def _sources_in(folder: Path, default_id: str | None = None) -> list[CaseSource]:
    groups = _scan_folder(folder, allow_dirs=True)
    masks: dict[str, Path] = {}
    for mf in _mask_folders(folder):
        for key, roles in _scan_folder(mf).items():
            for role, p in roles.items():
                if role == "mask" or len(roles) == 1:
                    masks.setdefault(key, p)
    ids: dict[str, int] = {}
    for key, roles in groups.items():
        if _order(roles):
            cid = _case_id_from_key(key)
            ids[cid] = ids.get(cid, 0) + 1
    out = []
    for key, roles in groups.items():
        seqs = _order(roles)
        if not seqs:
            continue
        shared = ids.get(_case_id_from_key(key), 0) > 1  # myops_training_3027 and myops_test_3027
        mask = roles.get("mask") or masks.get(key)
        if mask is None and not shared:
            # a mask named without the case prefix in a MyoPS-like gd folder (only when
            # one mask has this id: never another patient's)
            hits = [m for k, m in masks.items() if _case_id_from_key(k) == _case_id_from_key(key)]
            mask = hits[0] if len(hits) == 1 else None
        cid = (key if shared else _case_id_from_key(key)) if key else (default_id or folder.name)
        out.append(CaseSource(cid, seqs, mask))
    return out


def discover_cases(dataset: str | os.PathLike) -> list[CaseSource]:
    """Find every case of a dataset.

    Layouts understood:

    * MyoPS: ``<root>/train25/myops_training_<id>_{C0,DE,T2}.nii.gz`` with masks in
      ``<root>/train25_myops_gd/myops_training_<id>_gd.nii.gz`` (``root`` may also
      be the ``train25`` folder itself);
    * one folder per case: ``<root>/<case>/{*C0*,*DE*|*LGE*,*T2*,[*gd*|*mask*]}``;
    * a flat folder of ``<id>_<seq>`` files.

    Returns
    -------
    list of CaseSource
        Sorted by case id.  Empty when nothing matched.
    """
    root = Path(dataset)
    if not root.is_dir():
        raise CaseLoadError(f"{root}: not a folder")
    sources = list(_sources_in(root))
    seen = {root.resolve()}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(t in MASK_TOKENS for t in _tokens(sub.name)[-1:]) or _role(sub) is not None:
            continue  # mask folder or a DICOM series folder of a case in root
        if sub.resolve() in seen:
            continue  # a link back to a folder already read (``again -> .``)
        seen.add(sub.resolve())
        sources.extend(_sources_in(sub, default_id=sub.name))
    unique: dict[frozenset, CaseSource] = {}
    for s in sources:  # the same files reached twice (links): one case
        unique.setdefault(frozenset(p.resolve() for p in s.sequences.values()), s)
    sources = list(unique.values())
    # the same id in two folders (e.g. train and test, or generic file names in
    # one-folder-per-case layouts): qualify both as "<folder>/<id>"
    by_id: dict[str, list[CaseSource]] = {}
    for s in sources:
        by_id.setdefault(s.case_id, []).append(s)
    found: dict[str, CaseSource] = {}
    for cid, group in by_id.items():
        if len(group) == 1:
            found[cid] = group[0]
            continue
        for s in group:
            folder = next(iter(s.sequences.values())).parent
            qualified = f"{folder.name}/{cid}" if folder != root else cid
            if qualified in found:
                raise CaseLoadError(
                    f"{root}: case {cid} found twice ({_folder_of(s.sequences)}, "
                    f"{_folder_of(found[qualified].sequences)}); keep one copy"
                )
            found[qualified] = CaseSource(qualified, s.sequences, s.mask)
    return [found[k] for k in sorted(found)]


def _source_for_file(path: Path) -> CaseSource:
    r = _role(path)
    if r is None:
        raise CaseLoadError(
            f"{path}: cannot tell which sequence this is from its name; expected a "
            f"C0/bSSFP, DE/LGE or T2 tag (e.g. myops_training_101_C0.nii.gz)"
        )
    key = r[1]
    sources = _sources_in(path.parent, default_id=path.parent.name)
    here = path.resolve()
    for src in sources:  # the case this very file belongs to (never a namesake)
        if here in {p.resolve() for p in src.sequences.values()} or (
            src.mask is not None and src.mask.resolve() == here
        ):
            return src
    matches = [
        s for s in sources if (_case_id_from_key(key) if key else path.parent.name) == s.case_id
    ]
    if len(matches) == 1:
        return matches[0]
    raise CaseLoadError(f"{path}: no case found around this file")  # pragma: no cover


def load_case(
    path: str | os.PathLike,
    case_id: str | None = None,
    *,
    frame: int | None = None,
    channels: Sequence[str] | None = None,
    allow_resample: bool = False,
) -> Case:
    """Load a whole case (all sequences found and the mask when present).

    Parameters
    ----------
    path : path-like
        A dataset root (with ``case_id``), a folder holding one case, or any one
        sequence file of a case (its siblings and the mask are found by name,
        also in a sibling ``*_myops_gd`` folder).
    case_id : str, optional
        Case to pick from a dataset root; ``"3001"`` and ``"myops_training_3001"``
        both work.
    frame : int, optional
        Time frame for 4-D (3-D + time) files.
    channels : sequence of str, optional
        Sequences that must be present (e.g. ``DEFAULT_CHANNELS``); a missing one
        raises :class:`CaseLoadError`.  Default: whatever is found (at least one).
    allow_resample : bool
        Resample a mixed study instead of refusing it (:func:`load_case_from_paths`).

    Returns
    -------
    Case
    """
    path = Path(path)
    if not path.exists():
        raise CaseLoadError(f"{path}: no such file or folder")
    if path.is_file():
        src = _source_for_file(path)
    else:
        if _role(path) is not None and not any(_is_image_path(p) for p in path.iterdir()):
            # a DICOM series folder of one sequence: load its case from the parent
            src = _source_for_file(path)
        else:
            cases = discover_cases(path)
            if not cases:
                raise CaseLoadError(
                    f"{path}: no case found (expected files tagged C0/DE/T2, e.g. "
                    f"myops_training_101_C0.nii.gz, or one such folder per case)"
                )
            if case_id is None:
                if len(cases) > 1:
                    ids = [c.case_id for c in cases]
                    raise CaseLoadError(f"{path}: holds {len(cases)} cases {ids}; pass case_id")
                src = cases[0]
            else:
                want = _case_id_from_key(str(case_id))
                match = [c for c in cases if c.case_id in (str(case_id), want)]
                if not match:
                    ids = [c.case_id for c in cases]
                    raise CaseLoadError(f"{path}: no case {case_id!r} (found {ids})")
                if len(match) > 1:
                    found = ", ".join(str(next(iter(m.sequences.values()))) for m in match)
                    raise CaseLoadError(
                        f"{path}: case {case_id!r} is ambiguous ({found}); give its file or folder"
                    )
                src = match[0]
    return src.load(frame=frame, channels=channels, allow_resample=allow_resample)


def load_case_from_paths(
    sequences: Mapping[str, str | os.PathLike],
    mask: str | os.PathLike | None = None,
    case_id: str | None = None,
    *,
    frame: int | None = None,
    allow_resample: bool = False,
) -> Case:
    """Load a case from explicit paths, one per sequence.

    The first of bSSFP (or the first sequence given) is the reference grid.
    Sequences (and the mask) on another grid are resampled onto it with a
    warning (linear for images, nearest neighbour for the mask), unless their origin
    is more than :data:`MAX_ORIGIN_SHIFT_MM` from the reference's or their axes more
    than :data:`MAX_ANGLE_DEG` apart (a mixed study: refused unless ``allow_resample``).
    One file given as two sequences, two sequences with identical voxels, a label map
    given as an image and an implausible voxel size (:func:`check_spacing`) are refused.

    Parameters
    ----------
    sequences : mapping
        ``name -> path``; names are free (``"bSSFP"``, ``"LGE"``, ``"T2"`` by default).
    mask : path-like, optional
        Ground-truth label map (MyoPS values).
    case_id : str, optional
        Defaults to the id parsed from the first file name.
    frame : int, optional
        Time frame for 4-D files.
    allow_resample : bool
        Resample sequences of a mixed study onto the reference grid instead of refusing.

    Raises
    ------
    CaseLoadError
        Missing/unreadable/2-D/4-D file, NaN/Inf, constant image, bad mask values, one
        file or identical voxels given as two sequences, a label map as an image, an
        implausible voxel size.
    GeometryError
        A sequence or the mask does not overlap the reference grid; a mixed study.
    """
    if not sequences:
        raise CaseLoadError("no sequence given; at least one image is needed")
    seqs = {str(k): Path(v) for k, v in sequences.items()}
    for name, p in seqs.items():
        if not p.exists():
            raise CaseLoadError(f"missing sequence {name}: {p} does not exist")
    if mask is not None and not Path(mask).exists():
        raise CaseLoadError(f"missing mask: {mask} does not exist")
    given = [(n, p.resolve()) for n, p in seqs.items()]
    if mask is not None:
        given.append(("mask", Path(mask).resolve()))
    for i, (name, p) in enumerate(given):
        for other, q in given[:i]:
            if p == q:
                raise CaseLoadError(f"{p}: given as both {other} and {name}; one file per input")
    order = [c for c in DEFAULT_CHANNELS if c in seqs] + [
        c for c in seqs if c not in DEFAULT_CHANNELS
    ]
    ref_name = order[0]
    if case_id is None:
        r = _role(seqs[ref_name])
        case_id = _case_id_from_key(r[1]) if r and r[1] else seqs[ref_name].parent.name

    volumes: dict[str, np.ndarray] = {}
    reference: Geometry | None = None
    for name in order:
        p = seqs[name]
        arr, geom = read_volume(p, frame=frame)
        data = _check_image_values(arr, p)
        check_spacing(geom, p)
        if _looks_like_labels(data):
            raise CaseLoadError(
                f"{p}: holds only label values {sorted(np.unique(data).astype(int).tolist())}; "
                f"this is a mask, not a {name} image"
            )
        for other, vol in volumes.items():
            if vol.shape == data.shape and np.array_equal(vol, data):
                raise CaseLoadError(
                    f"{p} ({name}) and {seqs[other]} ({other}) hold identical voxels; "
                    "each sequence must be its own image"
                )
        if reference is None:
            reference = geom
        elif not geom.same_grid(reference):
            if not allow_resample:
                _check_same_study(name, p, geom, ref_name, seqs[ref_name], reference)
            warnings.warn(
                f"case {case_id}: {name} ({p.name}) is not on the {ref_name} grid "
                f"({geom.difference(reference)}); resampled onto it (linear)",
                stacklevel=2,
            )
            data = resample_to(data, geom, reference, name=str(p)).astype(np.float32)
        volumes[name] = data
    assert reference is not None

    labels = None
    sources = dict(seqs)
    if mask is not None:
        mp = Path(mask)
        arr, geom = read_volume(mp, frame=frame)
        labels = _check_label_values(arr, mp)
        if not geom.same_grid(reference):
            if not allow_resample:
                _check_same_study("mask", mp, geom, ref_name, seqs[ref_name], reference)
            warnings.warn(
                f"case {case_id}: mask {mp.name} is not on the {ref_name} grid "
                f"({geom.difference(reference)}); resampled onto it (nearest neighbour)",
                stacklevel=2,
            )
            labels = resample_to(labels, geom, reference, labels=True, name=str(mp)).astype(
                np.int32
            )
        sources["mask"] = mp

    images = np.stack([volumes[n] for n in order], axis=-1)
    return Case(
        images=images,
        channels=tuple(order),
        spacing_mm=reference.spacing_mm,
        geometry=reference,
        labels=labels,
        case_id=str(case_id),
        sources=sources,
    )


def check_spacing(geometry: Geometry, path: str | os.PathLike) -> None:
    """Refuse a voxel size outside :data:`IN_PLANE_MM` / :data:`SLICE_MM` (a wrong header).

    Raises
    ------
    CaseLoadError
        One line naming the file, the spacing read and the plausible range.
    """
    z, y, x = (float(v) for v in geometry.spacing_mm)
    lo, hi = IN_PLANE_MM
    slo, shi = SLICE_MM
    if not (lo <= y <= hi and lo <= x <= hi and slo <= z <= shi):
        raise CaseLoadError(
            f"{path}: implausible voxel size {x:.4g} x {y:.4g} mm, slices {z:.4g} mm (cardiac "
            f"MRI: in-plane {lo:g}-{hi:g} mm, slices {slo:g}-{shi:g} mm); check the header "
            "(pixdim, xyzt_units)"
        )


def _looks_like_labels(data: np.ndarray) -> bool:
    """True for an image whose values are all MyoPS label values (a mask given as an image)."""
    values = np.unique(data)
    return values.size <= len(MYOPS_VALUES) and set(values.tolist()) <= set(MYOPS_VALUES) | {0}


def _check_same_study(
    name: str, path: Path, geom: Geometry, ref_name: str, ref_path: Path, reference: Geometry
) -> None:
    """Refuse a sequence that is not of the reference's study (origin or axes too far)."""
    shift, angle = geom.shift_mm(reference), geom.angle_deg(reference)
    if shift > MAX_ORIGIN_SHIFT_MM or angle > MAX_ANGLE_DEG:
        raise GeometryError(
            f"{path} ({name}) and {ref_path} ({ref_name}) do not look like one study: origins "
            f"{shift:.1f} mm apart, axes {angle:.1f} degrees apart (tolerance "
            f"{MAX_ORIGIN_SHIFT_MM:g} mm, {MAX_ANGLE_DEG:g} degrees); check they are the same "
            "patient and position, or resample anyway (--allow-resample, allow_resample=True)"
        )


# --------------------------------------------------------------------------- writing
def _nifti_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    if name.endswith(".nii"):
        return ".nii"
    raise ValueError(f"{path}: label maps are written as NIfTI; use a .nii.gz or .nii name")


def _writable_dir(folder: Path, what: Path) -> None:
    """Raise :class:`OutputPathError` unless ``folder`` is (or can be made) a writable folder."""
    probe = folder
    while not probe.exists():  # the nearest existing ancestor decides
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputPathError(f"{what}: cannot be written, {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what}: cannot be written, {probe} is read-only")


def check_output(
    path: str | os.PathLike,
    *,
    kind: str = "file",
    suffixes: Sequence[str] = (),
    force: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
    datasets: Sequence[str | os.PathLike] = (),
) -> Path:
    """Check an output path before any work: the ONE place every command checks outputs.

    Parameters
    ----------
    path : path-like
        The output file (``kind="file"``) or folder (``kind="dir"``).
    kind : {"file", "dir"}
        What the command writes there.
    suffixes : sequence of str
        Allowed file name endings (case-insensitive), e.g. ``(".nii.gz", ".nii")``.
    force : bool
        An existing file may be replaced (``--force``); an input never.
    inputs : sequence of path-like
        The command's input files: an output that is one of them is refused even with
        ``force``.
    datasets : sequence of path-like
        Dataset folders the command reads: an output inside the folders holding their
        images or masks (``train25``, ``train25_myops_gd``), or the dataset folder itself,
        is refused even with ``force``.

    Returns
    -------
    Path

    Raises
    ------
    OutputPathError
        The output is an input, lies in a dataset's image or mask folder, is a folder
        where a file is written (or the reverse), has the wrong suffix, or its parent is
        a file or read-only.
    OutputExistsError
        The file exists and ``force`` is False.
    """
    path = Path(path)
    resolved = path.resolve()
    for inp in inputs:
        if inp is not None and Path(inp).resolve() == resolved:
            raise OutputPathError(f"{path}: is an input of this command; choose another output")
    for folder in _data_folders(datasets):
        if resolved == folder or folder in resolved.parents:
            raise OutputPathError(
                f"{path}: lies in {folder}, a folder of the dataset's images or masks; "
                "write outputs elsewhere"
            )
    if kind == "dir":
        if path.exists() and not path.is_dir():
            raise OutputPathError(f"{path}: is a file; an output folder is needed")
        _writable_dir(path, path)
        return path
    if path.is_dir():
        raise OutputPathError(f"{path}: is a folder; give a file name")
    if suffixes and not path.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise OutputPathError(f"{path}: output must end with {' or '.join(suffixes)}")
    _writable_dir(path.parent, path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists (use --force to overwrite)")
    return path


def _data_folders(datasets: Sequence[str | os.PathLike]) -> set[Path]:
    """Resolved folders holding a dataset's images and masks (and the dataset folder)."""
    out: set[Path] = set()
    for d in datasets:
        if d is None or not Path(d).is_dir():
            continue  # the command's own check names a missing dataset
        out.add(Path(d).resolve())
        try:
            sources = discover_cases(d)
        except CaseLoadError:
            continue
        for src in sources:
            files = [*src.sequences.values(), *([src.mask] if src.mask else [])]
            out.update(Path(f).resolve().parent for f in files)
    return out


def check_distinct(outputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse two outputs of one command that are the same file (``--out`` = ``--roi-out``).

    Parameters
    ----------
    outputs : mapping
        ``flag -> path`` (None: not given).

    Raises
    ------
    OutputPathError
        Two flags name the same file.
    """
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise OutputPathError(f"{path}: given as both {seen[key]} and {flag}; one file each")
        seen[key] = flag


#: Name of the lock file a resumable run keeps in its output folder.
LOCK_NAME = ".napari-gmmseg.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


class RunLock:
    """An exclusive lock on an output folder for one run (``evaluate --out``, ``demo``).

    ``OUT/.napari-gmmseg.lock`` holds the pid and start time of the run; a second run
    on the same folder is refused while that process lives; a lock left by a dead
    process (killed run) is taken over. Use as a context manager.

    Raises
    ------
    OutputPathError
        (on enter) Another live run holds the folder.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._held = False

    def acquire(self) -> RunLock:
        """Take the lock (a hard link of a file holding our pid: atomic, never half-written)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = _make_temp(self.path, ".lock")
        try:
            Path(tmp).write_text(f"{os.getpid()}\n", encoding="utf-8")
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    try:
                        pid = int(self.path.read_text(encoding="utf-8").split()[0])
                    except (OSError, ValueError, IndexError):
                        pid = 0
                    if pid > 0 and _pid_alive(pid):
                        raise OutputPathError(
                            f"{self.folder}: another run (pid {pid}) is writing here; wait for "
                            f"it or choose another output folder (remove {self.path} if it is "
                            "gone)"
                        ) from None
                    with contextlib.suppress(FileNotFoundError):  # stale: its process is gone
                        os.unlink(self.path)
                    continue
                self._held = True
                return self
        finally:
            os.unlink(tmp)
        raise OutputPathError(f"{self.folder}: cannot take the lock {self.path}")

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _make_temp(path: Path, suffix: str) -> str:
    """Create an empty hidden temp file beside ``path`` (mode from the umask, unlike mkstemp)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name[: -len(suffix)]}.{uuid.uuid4().hex[:8]}.tmp{suffix}"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:  # pragma: no cover - astronomically unlikely
            continue
        os.close(fd)
        return str(tmp)
    raise OSError(f"{path.parent}: cannot create a temporary file")  # pragma: no cover


def save_volume(
    volume_zyx: np.ndarray,
    geometry: Geometry,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    dtype: Any = None,
) -> Path:
    """Write a ``(Z, Y, X)`` volume as NIfTI on ``geometry``, atomically.

    The source header (affine, qform/sform and their codes, units, description,
    ...) is reused unchanged; only the data shape, type and scaling fields are
    set for the new data.  The file is written to a temporary name in the same
    folder and renamed into place, so a failure leaves nothing behind.

    Parameters
    ----------
    volume_zyx : numpy.ndarray
        Data in ``(Z, Y, X)`` order with ``geometry.shape``.
    geometry : Geometry
        Target grid (``Case.geometry``).
    path : path-like
        ``.nii.gz`` or ``.nii`` file name; parent folders are created.
    overwrite : bool
        Replace an existing file; otherwise :class:`OutputExistsError`.
    dtype : numpy dtype, optional
        On-disk type (default: the array's type).

    Returns
    -------
    Path
        The written file.
    """
    import nibabel as nib

    path = Path(path)
    suffix = _nifti_suffix(path)
    vol = np.asarray(volume_zyx)
    if vol.shape != tuple(geometry.shape):
        raise GeometryError(
            f"{path}: volume shape {vol.shape} does not match the reference grid {geometry.shape}"
        )
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path}: exists; use --force (or the overwrite option) to replace it"
        )
    dtype = np.dtype(dtype if dtype is not None else vol.dtype)
    hdr = geometry.nifti_header()
    data_xyz = np.ascontiguousarray(vol.transpose(2, 1, 0)).astype(dtype, copy=False)
    pixdim = hdr["pixdim"].copy()
    if hdr.get_data_shape() != data_xyz.shape:
        hdr.set_data_shape(data_xyz.shape)
        pixdim[1 + data_xyz.ndim :] = hdr["pixdim"][1 + data_xyz.ndim :]
    hdr["pixdim"] = pixdim
    hdr.set_data_dtype(dtype)
    hdr["scl_slope"] = np.nan
    hdr["scl_inter"] = np.nan
    hdr["cal_min"] = 0
    hdr["cal_max"] = 0
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    img = klass(data_xyz, None, header=hdr)
    img.set_data_dtype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_temp(path, suffix)
    try:
        nib.save(img, tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and never clobbers
            except FileExistsError:
                raise OutputExistsError(
                    f"{path}: exists; use --force (or the overwrite option) to replace it"
                ) from None
            except OSError:  # filesystem without hard links
                if path.exists():
                    raise OutputExistsError(
                        f"{path}: exists; use --force (or the overwrite option) to replace it"
                    ) from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_labels(
    labels_zyx: np.ndarray,
    geometry: Geometry,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Save a ``(Z, Y, X)`` label map as NIfTI on the reference geometry (atomic).

    Values must be integers; they are stored as int16 (int32 beyond its range).
    The affine, qform/sform codes and header of the source (bSSFP) file are kept.

    Parameters
    ----------
    labels_zyx : numpy.ndarray
        Integer label map, shape ``geometry.shape``.
    geometry : Geometry
        ``Case.geometry`` of the case the labels belong to.
    path : path-like
        ``.nii.gz`` or ``.nii`` output file.
    overwrite : bool
        Replace an existing file (default: refuse with :class:`OutputExistsError`).

    Returns
    -------
    Path
    """
    lab = np.asarray(labels_zyx)
    if lab.dtype.kind == "b":
        lab = lab.astype(np.int16)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise ValueError(f"{path}: label map holds non-integer values")
    elif lab.dtype.kind not in "iu":
        raise ValueError(f"{path}: label map has unsupported type {lab.dtype}")
    lo, hi = (int(lab.min()), int(lab.max())) if lab.size else (0, 0)
    dtype = np.int16 if lo >= -32768 and hi <= 32767 else np.int32
    return save_volume(lab, geometry, path, overwrite=overwrite, dtype=dtype)


# --------------------------------------------------------------------------- sidecar
#: Tag of the JSON written beside a label map by ``segment`` (:func:`save_sidecar`).
SIDECAR_FORMAT = "napari-gmmseg segmentation 1"


def sidecar_path(labels_path: str | os.PathLike) -> Path:
    """The JSON beside a label map: ``seg.nii.gz`` -> ``seg.json``."""
    path = Path(labels_path)
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.json")


def save_sidecar(labels_path: str | os.PathLike, record: dict, *, overwrite: bool = False) -> Path:
    """Write what made a label map (method, ROI, burden intervals, stated error) beside it.

    The ``report`` command reads it back (:func:`read_sidecar`) so the report page shows the
    method, the ROI source and each burden's interval. Atomic; an existing file is replaced
    only with ``overwrite``.
    """
    import json

    path = sidecar_path(labels_path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists (use --force to overwrite)")
    text = json.dumps({"format": SIDECAR_FORMAT, **record}, indent=1, default=str)
    tmp = _make_temp(path, ".json")
    try:
        Path(tmp).write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_sidecar(labels_path: str | os.PathLike) -> dict | None:
    """The record :func:`save_sidecar` wrote beside ``labels_path``, or None (absent or foreign)."""
    import json

    path = sidecar_path(labels_path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == SIDECAR_FORMAT else None
