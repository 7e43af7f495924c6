"""Preprocessing: the :class:`SliceBatch` every method fits (packed ROI pixels + crop view).

A :class:`SliceBatch` is built once from a volume ``(Z, Y, X, C)`` and a region
of interest ``(Z, Y, X)``:

- ``x`` ``(S, N_max, C)``: the ROI pixels of each non-empty slice, packed in raster
  order and zero-padded to the largest slice, normalised per slice and channel
  (z-score over the ROI by default, as the paper);
- ``valid`` ``(S, N_max)``: False on padding;
- the crop view for CNNs: ``crops`` ``(S, C, H, W)`` (same normalisation, 0 outside
  the ROI), ``crop_roi`` ``(S, H, W)``, ``boxes`` and ``flat_index`` ``(S, N_max)``
  such that packed pixel ``n`` of slice ``s`` is crop pixel ``flat_index[s, n]``;
- :meth:`SliceBatch.gather` (crop maps -> packed) and :meth:`SliceBatch.scatter`
  (packed -> volume ``(Z, Y, X[, K])``).

With ``per_slice=False`` the whole ROI volume is one mixture: ``S = 1`` and the
crop view stacks the slices' crops along the height (``(1, C, Zs*H, W)``); the
crops keep a margin of at least one pixel around the ROI so a 3x3 neighbourhood
never reaches from one slice into the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_gmmseg.errors import CaseLoadError, ModelError, RoiError

__all__ = [
    "CLIP_PERCENTILES",
    "EXTREME_FACTOR",
    "NORMALIZATIONS",
    "ClipStatistics",
    "SliceBatch",
    "check_volume",
    "clip_bounds",
    "resolve_device",
]

#: Normalisation choices: z-score over the ROI (the paper), over the crop, or none.
NORMALIZATIONS: tuple[str, ...] = ("roi", "crop", "none")

#: Robust intensities: the normalisation statistics (mean, SD) of every channel are taken
#: from its ROI voxels clipped to these percentiles (over the whole ROI volume, so a burst
#: of outliers in one slice is still a small fraction), as MRI pipelines clip before the
#: z-score. The values themselves are kept (clipping them would pile ~1 % of the voxels
#: onto two values, point masses a mixture component can collapse onto), except the
#: *extreme* ones (:data:`EXTREME_FACTOR`), which are set to the bounds. None: no clip.
CLIP_PERCENTILES: tuple[float, float] = (0.5, 99.5)

#: A voxel is *extreme* (refused, or clipped on request) when it lies more than this many
#: 5-95 percentile ranges of its channel's ROI voxels beyond them: 1e30 or int16 32767 in
#: a 0-3000 image. On the 15 MyoPS development cases the farthest voxel lies 1.4 ranges out
#: inside the LV ROI and 9.5 over whole slices; those percentiles stay put with up to 5 %
#: of the voxels corrupt.
EXTREME_FACTOR: float = 20.0


def resolve_device(device: Any = "auto") -> Any:
    """Return a ``torch.device``: ``"auto"`` picks CUDA when available, else CPU."""
    import torch

    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _round_up(n: int, multiple: int) -> int:
    return int(-(-n // multiple) * multiple) if multiple > 1 else int(n)


def _pack(
    raw: np.ndarray,
    rows: np.ndarray,
    pos: np.ndarray | None,
    shape: tuple[int, int],
    crop_flat: np.ndarray,
    vol_flat: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Packed ``(S, N_max, C)`` float32 pixels, validity, crop and volume indices.

    ``raw`` ``(P, C)`` holds the normalised ROI pixels, ``rows`` / ``pos`` their row and
    position (``pos`` None: no padding, every row is full).
    """
    n_rows, n_max = shape
    n_ch = raw.shape[-1]
    # Without padding the packed position of every ROI pixel is 0, 1, 2... (a reshape).
    if pos is None:
        x = raw.astype(np.float32).reshape(n_rows, n_max, n_ch)
        valid = np.ones((n_rows, n_max), dtype=bool)
        flat_index = crop_flat.astype(np.int64).reshape(n_rows, n_max)
        volume_index = vol_flat.astype(np.int64).reshape(n_rows, n_max)
    else:
        dest = rows.astype(np.int64) * n_max + pos
        x = np.zeros((n_rows, n_max, n_ch), dtype=np.float32)
        x.reshape(-1, n_ch)[dest] = raw
        valid = np.zeros((n_rows, n_max), dtype=bool)
        valid.reshape(-1)[dest] = True
        flat_index = np.zeros((n_rows, n_max), dtype=np.int64)
        flat_index.reshape(-1)[dest] = crop_flat
        volume_index = np.full((n_rows, n_max), -1, dtype=np.int64)
        volume_index.reshape(-1)[dest] = vol_flat
    return x, valid, flat_index, volume_index


def _crop_boxes(
    yy: np.ndarray,
    xx: np.ndarray,
    first: np.ndarray,
    yx_dim: tuple[int, int],
    crop_margin: int,
    crop_multiple: int,
    crop_size: int | tuple[int, int] | None,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Top-left corners ``(Z_roi,)`` and the common crop ``height, width`` of every slice.

    ``yy``, ``xx`` are the ROI pixel coordinates in raster order and ``first`` the index
    of each slice's first pixel. Each box is centred on its slice's ROI bounding box,
    kept inside the image when it fits, and always covers the ROI.
    """
    y_dim, x_dim = yx_dim
    y_min = np.minimum.reduceat(yy, first)
    y_max = np.maximum.reduceat(yy, first)
    x_min = np.minimum.reduceat(xx, first)
    x_max = np.maximum.reduceat(xx, first)
    margin = max(int(crop_margin), 1)
    if crop_size is None:
        height = _round_up(int((y_max - y_min).max()) + 1 + 2 * margin, crop_multiple)
        width = _round_up(int((x_max - x_min).max()) + 1 + 2 * margin, crop_multiple)
    else:
        height, width = (crop_size, crop_size) if np.isscalar(crop_size) else crop_size
        height, width = int(height), int(width)
        if height < int((y_max - y_min).max()) + 1 or width < int((x_max - x_min).max()) + 1:
            raise RoiError(f"crop_size {(height, width)} is smaller than the ROI bounding box")
    y0 = (y_min + y_max + 1) // 2 - height // 2
    x0 = (x_min + x_max + 1) // 2 - width // 2
    # Keep the box inside the image when it fits, but always around the ROI.
    y0 = np.clip(y0, min(0, y_dim - height), max(0, y_dim - height))
    x0 = np.clip(x0, min(0, x_dim - width), max(0, x_dim - width))
    y0 = np.minimum(np.maximum(y0, y_max + 1 - height), y_min)
    x0 = np.minimum(np.maximum(x0, x_max + 1 - width), x_min)

    return y0, x0, height, width


def check_volume(
    images: Any, roi: Any = None, channels: Any = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Validate a volume, its ROI and channel names: the one place they are checked.

    Parameters
    ----------
    images : array-like
        ``(Z, Y, X, C)`` or ``(Z, Y, X)`` real intensities.
    roi : array-like or None
        ``(Z, Y, X)`` region of interest (cast to bool); None: whole slices.
    channels : sequence of str, optional
        One name per channel (default :func:`napari_gmmseg.labels.default_channel_names`).

    Returns
    -------
    images : numpy.ndarray
        ``(Z, Y, X, C)``.
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool, not empty.
    channels : tuple of str

    Raises
    ------
    CaseLoadError
        Wrong dimensionality, non-real or empty images, NaN/Inf inside the ROI.
    ModelError
        As many channel names as channels are needed.
    RoiError
        ROI of another shape, or empty.
    """
    from napari_gmmseg.errors import ModelError
    from napari_gmmseg.labels import default_channel_names

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise CaseLoadError(f"images must be (Z, Y, X) or (Z, Y, X, C), got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.number) or np.issubdtype(
        images.dtype, np.complexfloating
    ):
        raise CaseLoadError(f"images must be real numbers, got dtype {images.dtype}")
    if images.shape[-1] < 1 or min(images.shape[:3]) < 1:
        raise CaseLoadError(f"images are empty: shape {images.shape}")
    zyx, n_ch = images.shape[:3], images.shape[-1]
    channels = default_channel_names(n_ch) if channels is None else tuple(map(str, channels))
    if len(channels) != n_ch:
        raise ModelError(f"{len(channels)} channel names {channels} for {n_ch} image channels")
    roi = np.ones(zyx, dtype=bool) if roi is None else np.asarray(roi)
    if roi.shape != zyx:
        raise RoiError(f"ROI shape {roi.shape} differs from the image grid {zyx}")
    roi = roi.astype(bool, copy=False)
    if not roi.any():
        raise RoiError("the region of interest is empty")
    # Integers are finite; a finite volume needs no masked copy (the common case).
    finite = images.dtype.kind != "f" or bool(np.isfinite(images).all())
    if not finite and not np.isfinite(images[roi]).all():
        raise CaseLoadError("images contain NaN or Inf inside the region of interest")
    return images, roi, channels


@dataclass
class SliceBatch:
    """Packed ROI pixels of every slice, with a crop view and the maps back to the volume.

    Build it with :meth:`from_volume`. Tensors live on :attr:`device`.

    Attributes
    ----------
    x : torch.Tensor
        ``(S, N_max, C)`` float32 normalised pixels (0 on padding).
    valid : torch.Tensor
        ``(S, N_max)`` bool, True on real pixels.
    slice_index : numpy.ndarray
        ``(S,)`` z-index of each batch row (``[-1]`` in whole-volume mode).
    flat_index : torch.Tensor
        ``(S, N_max)`` int64 index of each packed pixel in its crop (``H*W``), 0 on padding.
    volume_index : numpy.ndarray
        ``(S, N_max)`` int64 index into the flattened ``(Z, Y, X)`` volume, -1 on padding.
    boxes : numpy.ndarray
        ``(Zs, 4)`` crop box ``(y0, x0, H, W)`` of every non-empty slice (may reach past the
        image border, where crops are 0).
    crop_slices : numpy.ndarray
        ``(Zs,)`` z-index of every crop box.
    crop_shape : tuple of int
        ``(H, W)`` of one crop (``(Zs*H, W)`` in whole-volume mode).
    shape : tuple of int
        ``(Z, Y, X)`` of the volume.
    channels : tuple of str
        Channel names.
    loc, scale : numpy.ndarray
        ``(S, C)`` normalisation: ``x = (raw - loc) / scale``, statistics of the clipped
        values.
    clip_bounds : numpy.ndarray or None
        ``(2, C)`` float64 lower and upper clip bound of every channel (raw units), None
        when clipping is off.
    n_clipped : numpy.ndarray
        ``(C,)`` int64 ROI voxels outside the clip bounds per channel (clipped in the
        statistics).
    n_extreme : numpy.ndarray
        ``(C,)`` int64 extreme ROI voxels per channel (:data:`EXTREME_FACTOR`), set to the
        bounds in :attr:`x`; left out of the percentiles.
    per_slice : bool
        One mixture per slice (True) or one for the whole volume (False).
    """

    x: Any
    valid: Any
    slice_index: np.ndarray
    flat_index: Any
    volume_index: np.ndarray
    boxes: np.ndarray
    crop_slices: np.ndarray
    crop_shape: tuple[int, int]
    shape: tuple[int, int, int]
    channels: tuple[str, ...]
    loc: np.ndarray
    scale: np.ndarray
    per_slice: bool = True
    normalize: str = "roi"
    clip_percentiles: tuple[float, float] | None = CLIP_PERCENTILES
    clip_bounds: np.ndarray | None = None
    n_clipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_extreme: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _crops: Any = field(default=None, repr=False)
    _crop_roi: Any = field(default=None, repr=False)
    _nonzero: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_volume(
        cls,
        images: np.ndarray,
        roi: np.ndarray | None = None,
        *,
        channels: tuple[str, ...] | list[str] | None = None,
        normalize: str = "roi",
        per_slice: bool = True,
        crop_margin: int = 8,
        crop_multiple: int = 16,
        crop_size: int | tuple[int, int] | None = None,
        clip_percentiles: tuple[float, float] | None = CLIP_PERCENTILES,
        device: Any = "auto",
        validate: bool = True,
        clip_statistics: ClipStatistics | None = None,
    ) -> SliceBatch:
        """Pack the ROI pixels of every non-empty slice of a volume.

        Parameters
        ----------
        images : numpy.ndarray
            ``(Z, Y, X, C)`` (or ``(Z, Y, X)`` for one channel) intensities.
        roi : numpy.ndarray or None
            ``(Z, Y, X)`` bool region of interest; None uses whole slices.
        channels : sequence of str, optional
            Channel names (default ``ch0, ch1, ...``).
        normalize : {"roi", "crop", "none"}, default "roi"
            Per-slice, per-channel z-score over the ROI pixels (the paper), the crop box,
            or none; in whole-volume mode over the whole ROI (or all crops).
        per_slice : bool, default True
            One batch row per slice; False packs the whole ROI volume into one row.
        crop_margin, crop_multiple : int, default 8 and 16
            Crop view: pixels kept around the ROI bounding box (at least 1); height and
            width rounded up to a multiple of ``crop_multiple`` (U-Net friendly).
        crop_size : int or (int, int), optional
            Fixed crop size instead of the bounding box + margin.
        clip_percentiles : (float, float) or None, default :data:`CLIP_PERCENTILES`
            Take the normalisation statistics of every channel from its ROI voxels clipped to
            these percentiles (0-100) (the crop statistics from the clipped crop); extreme
            voxels (:data:`EXTREME_FACTOR`) are also clipped in the values. None: raw values
            and statistics.
        device : str or torch.device, default "auto"
        validate : bool, default True
            Check the inputs with :func:`check_volume` (False: the caller did).
        clip_statistics : ClipStatistics, optional
            Of exactly these ROI intensities, when the caller has them (:func:`clip_bounds`).

        Raises
        ------
        CaseLoadError
            Images with NaN/Inf or of the wrong dimensionality.
        ModelError
            ``clip_percentiles`` not ``0 <= low < high <= 100``.
        RoiError
            ROI of the wrong shape or empty.
        """
        import torch

        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if validate:
            images, roi, channels = check_volume(images, roi, channels)
        else:
            images, roi, channels = np.asarray(images), np.asarray(roi, dtype=bool), tuple(channels)
        z_dim, y_dim, x_dim, n_ch = images.shape
        flat = np.flatnonzero(roi)  # raster order: by z, then y, then x
        if flat.size == 0:
            raise RoiError("the region of interest is empty")
        zz, yy, xx = np.unravel_index(flat, roi.shape)
        raw = np.take(images.reshape(-1, n_ch), flat, axis=0).astype(np.float64)  # (P, C), 1 gather
        raw, clipped, bounds, n_clipped, n_extreme = _clip_channels(
            raw, clip_percentiles, clip_statistics
        )
        crop_slices, first = np.unique(zz, return_index=True)
        counts = np.diff(np.append(first, zz.size))
        zs, srow = crop_slices.size, np.repeat(np.arange(crop_slices.size), counts)  # crop rows
        # Crop boxes: common (H, W), centred on each slice's ROI bounding box.
        y0, x0, height, width = _crop_boxes(
            yy, xx, first, (y_dim, x_dim), crop_margin, crop_multiple, crop_size
        )
        boxes = np.stack([y0, x0, np.full(zs, height), np.full(zs, width)], axis=1).astype(np.int64)

        cy = yy - np.repeat(y0, counts)  # y0[srow]: srow is sorted
        cx = xx - np.repeat(x0, counts)
        vol_flat = flat.astype(np.int64, copy=False)  # index into the flattened (Z, Y, X)
        rows, crop_flat, crop_shape, slice_index, row_counts = _row_layout(
            per_slice, srow, cy, cx, counts, crop_slices, (height, width)
        )
        n_rows = int(row_counts.size)
        n_max = int(row_counts.max())
        padded = zz.size != n_rows * n_max  # rows of unequal length
        if padded:
            row_start = np.concatenate([[0], np.cumsum(row_counts)[:-1]])
            pos = np.arange(zz.size) - np.repeat(row_start, row_counts)  # row_start[rows]

        def rowwise(op: np.ufunc, raw: np.ndarray, a: np.ndarray) -> None:
            """``raw = op(raw, a[rows])`` in place for ``(n_rows, C)`` ``a`` (rows are sorted)."""
            if padded:
                op(raw, np.repeat(a, row_counts, axis=0), out=raw)
            else:  # broadcast over each row's pixels, no (P, C) temporary
                view = raw.reshape(n_rows, n_max, n_ch)
                op(view, a[:, None, :], out=view)

        # Normalisation statistics (float64), per row and channel. ``np.bincount`` adds
        # in pixel order, as ``np.add.at`` did: the same sums bit for bit, 10x faster.
        if normalize == "roi":
            # statistics of the clipped values (``clipped is raw`` without the clip)
            loc = _row_sums(rows, clipped, n_rows) / row_counts[:, None]
            rowwise(np.subtract, clipped, loc)  # clipped now holds the deviations
            std = np.sqrt(_row_sums(rows, clipped * clipped, n_rows) / row_counts[:, None])
            if clipped is not raw:
                rowwise(np.subtract, raw, loc)
        elif normalize == "crop":
            loc, std = _crop_stats(images, crop_slices, boxes, per_slice, bounds)
            rowwise(np.subtract, raw, loc)
        else:
            loc = np.zeros((n_rows, n_ch))
            std = np.ones((n_rows, n_ch))
            rowwise(np.subtract, raw, loc)
        # A constant channel gets scale 1 (all zeros after centring), never a division by 0.
        tiny = 1e-6 * np.maximum(np.abs(loc), 1.0)
        scale = np.where(std > tiny, std, 1.0)
        rowwise(np.divide, raw, scale)  # (raw - loc) / scale

        x, valid, flat_index, volume_index = _pack(
            raw, rows, pos if padded else None, (n_rows, n_max), crop_flat, vol_flat
        )
        del raw

        dev = resolve_device(device)
        return cls(
            x=torch.from_numpy(x).to(dev),
            valid=torch.from_numpy(valid).to(dev),
            slice_index=slice_index,
            flat_index=torch.from_numpy(flat_index).to(dev),
            volume_index=volume_index,
            boxes=boxes,
            crop_slices=crop_slices.astype(np.int64),
            crop_shape=(int(crop_shape[0]), int(crop_shape[1])),
            shape=(int(z_dim), int(y_dim), int(x_dim)),
            channels=channels,
            loc=loc,
            scale=scale,
            per_slice=bool(per_slice),
            normalize=normalize,
            clip_percentiles=None if bounds is None else tuple(map(float, clip_percentiles)),
            clip_bounds=bounds,
            n_clipped=n_clipped,
            n_extreme=n_extreme,
        )

    # ------------------------------------------------------------ properties
    def clip_summary(self) -> dict[str, Any]:
        """What the robust clip did, for ``Fit.params["clip"]`` (JSON-ready)."""
        return {
            "percentiles": None if self.clip_percentiles is None else list(self.clip_percentiles),
            "bounds": None if self.clip_bounds is None else self.clip_bounds.T.tolist(),
            "clipped_voxels": dict(zip(self.channels, self.n_clipped.tolist(), strict=False)),
            "extreme_voxels": dict(zip(self.channels, self.n_extreme.tolist(), strict=False)),
        }

    def extreme_message(self) -> str | None:
        """One line naming the channels with extreme voxels (clipped), or None when none."""
        if self.clip_bounds is None or not np.any(self.n_extreme):
            return None
        lo, hi = self.clip_percentiles
        parts = [
            f"{name}: {int(n)} voxel(s) far outside [{b0:.4g}, {b1:.4g}]"
            for name, n, b0, b1 in zip(
                self.channels, self.n_extreme, *self.clip_bounds, strict=True
            )
            if n
        ]
        return (
            f"extreme intensities inside the ROI ({'; '.join(parts)}, the {lo:g}-{hi:g} "
            f"percentiles; more than {EXTREME_FACTOR:g} 5-95 percentile ranges out): corrupt or "
            "saturated voxels?"
        )

    @property
    def device(self) -> Any:
        """The torch device of the tensors."""
        return self.x.device

    @property
    def n_slices(self) -> int:
        """Number of batch rows ``S``."""
        return int(self.x.shape[0])

    @property
    def n_channels(self) -> int:
        """Number of channels ``C``."""
        return int(self.x.shape[2])

    @property
    def n_pixels(self) -> Any:
        """``(S,)`` int64 tensor: valid pixels per row."""
        return self.valid.sum(-1)

    @property
    def crop_roi(self) -> Any:
        """``(S, H, W)`` bool tensor, True on ROI pixels of each crop."""
        if self._crop_roi is None:
            import torch

            h, w = self.crop_shape
            rows, cols = self._valid_nonzero()
            roi = torch.zeros(self.n_slices, h * w, dtype=torch.bool, device=self.device)
            roi[rows, self.flat_index[rows, cols]] = True
            self._crop_roi = roi.view(self.n_slices, h, w)
        return self._crop_roi

    def _valid_nonzero(self) -> tuple[Any, Any]:
        if self._nonzero is None:
            import torch

            self._nonzero = torch.nonzero(self.valid, as_tuple=True)
        return self._nonzero

    @property
    def crops(self) -> Any:
        """``(S, C, H, W)`` float32 normalised crops, 0 outside the ROI (built on first use)."""
        if self._crops is None:
            self._crops = self.scatter_crops(self.x)
        return self._crops

    # ------------------------------------------------------------ conversions
    def gather(self, crop_maps: Any) -> Any:
        """Packed values from crop maps.

        Parameters
        ----------
        crop_maps : torch.Tensor
            ``(S, K, H, W)`` maps on the crop grid (e.g. a CNN's softmax).

        Returns
        -------
        torch.Tensor
            ``(S, N_max, K)`` values at the packed pixels (arbitrary on padding).
        """
        s, k = crop_maps.shape[:2]
        flat = crop_maps.reshape(s, k, -1)
        idx = self.flat_index.unsqueeze(1).expand(s, k, self.flat_index.shape[1])
        return flat.gather(2, idx).transpose(1, 2)

    def scatter_crops(self, values: Any, fill: float = 0.0) -> Any:
        """Crop maps from packed values (inverse of :meth:`gather`).

        Parameters
        ----------
        values : torch.Tensor
            ``(S, N_max, K)`` packed values.
        fill : float, default 0
            Value outside the ROI.

        Returns
        -------
        torch.Tensor
            ``(S, K, H, W)``.
        """
        import torch

        s, _, k = values.shape
        h, w = self.crop_shape
        rows, cols = self._valid_nonzero()
        out = torch.full((s, k, h * w), fill, dtype=values.dtype, device=values.device)
        out[rows, :, self.flat_index[rows, cols]] = values[rows, cols]
        return out.view(s, k, h, w)

    def scatter(self, values: Any, fill: float = 0, dtype: Any = None) -> np.ndarray:
        """Volume array from packed values.

        Parameters
        ----------
        values : torch.Tensor or numpy.ndarray
            ``(S, N_max)`` or ``(S, N_max, K)`` packed values.
        fill : scalar, default 0
            Value outside the ROI and on slices not in the batch.
        dtype : numpy dtype, optional
            Output dtype (default: that of ``values``).

        Returns
        -------
        numpy.ndarray
            ``(Z, Y, X)`` or ``(Z, Y, X, K)``.
        """
        if hasattr(values, "detach"):
            values = values.detach().cpu().numpy()
        values = np.asarray(values)
        valid = self.volume_index >= 0
        tail = values.shape[2:]
        out = np.full((int(np.prod(self.shape)), *tail), fill, dtype=dtype or values.dtype)
        out[self.volume_index[valid]] = values[valid]
        return out.reshape(*self.shape, *tail)

    def row_of_slice(self, z: int) -> int:
        """Batch row of volume slice ``z`` (per-slice mode); raises KeyError if not fitted."""
        hits = np.nonzero(self.slice_index == z)[0]
        if hits.size == 0:
            raise KeyError(z)
        return int(hits[0])


def _row_layout(
    per_slice: bool,
    srow: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    counts: np.ndarray,
    crop_slices: np.ndarray,
    box_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, tuple[int, int], np.ndarray, np.ndarray]:
    """Batch row of every ROI pixel ``(P,)``, its flat index in the crop view ``(P,)``, the
    crop view's ``(H, W)``, the z of every row and the pixels per row: one row per slice,
    or one row for the whole volume (crops stacked along H)."""
    height, width = box_hw
    if per_slice:
        crop_flat = cy.astype(np.int64) * width + cx
        return srow, crop_flat, (height, width), crop_slices.astype(np.int64), counts
    rows = np.zeros(srow.size, dtype=np.int64)
    crop_flat = (srow.astype(np.int64) * height + cy) * width + cx
    shape = (crop_slices.size * height, width)
    return rows, crop_flat, shape, np.array([-1], dtype=np.int64), np.array([srow.size])


@dataclass(frozen=True)
class ClipStatistics:
    """The order statistics of the robust clip of some ``(P, C)`` ROI intensities.

    ``q05``/``q95`` ``(C,)`` set the extreme threshold; ``bounds`` ``(2, C)`` are the clip
    ``percentiles`` of the voxels that are not extreme. Computed once per request
    (:func:`clip_bounds`) and passed on, so the same ROI is not partitioned twice.
    """

    percentiles: tuple[float, float]
    q05: np.ndarray
    q95: np.ndarray
    bounds: np.ndarray


def clip_bounds(
    raw: np.ndarray, percentiles: tuple[float, float], known: ClipStatistics | None = None
) -> tuple[np.ndarray, np.ndarray, ClipStatistics]:
    """The ``(2, C)`` clip bounds of ``(P, C)`` ROI intensities, the ``(P, C)`` extreme mask
    and the statistics behind them.

    Extreme voxels lie more than :data:`EXTREME_FACTOR` times the 5-95 percentile spread
    outside it; the bounds are the ``percentiles`` of the other voxels, per channel.
    ``known``: the statistics of these same intensities (in any order), from an earlier
    call: only the mask is computed.
    """
    low, high = (float(v) for v in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise ModelError(f"clip_percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if known is not None and known.percentiles == (low, high):
        return known.bounds, _extreme_mask(raw, known.q05, known.q95), known
    # One partition per channel, on a contiguous column (2.5x faster than ``axis=0`` of
    # the (P, C) array, the same order statistics).
    columns = [np.ascontiguousarray(raw[:, c]) for c in range(raw.shape[1])]
    q = np.stack([np.percentile(col, [5.0, 95.0, low, high]) for col in columns], axis=1)
    extreme = _extreme_mask(raw, q[0], q[1])
    bounds = q[2:]  # (2, C)
    if extreme.any():  # the bounds leave the extreme voxels out
        bounds = np.stack(
            [np.percentile(col[~extreme[:, c]], [low, high]) for c, col in enumerate(columns)],
            axis=1,
        )
    return bounds, extreme, ClipStatistics((low, high), q[0], q[1], bounds)


def _extreme_mask(raw: np.ndarray, q05: np.ndarray, q95: np.ndarray) -> np.ndarray:
    """``(P, C)``: beyond :data:`EXTREME_FACTOR` times the ``(C,)`` 5-95 spread outside it."""
    spread = EXTREME_FACTOR * np.maximum(q95 - q05, 1e-12 * np.maximum(np.abs(q95), 1.0))
    return (raw < q05 - spread) | (raw > q95 + spread)


def _clip_channels(
    raw: np.ndarray,
    percentiles: tuple[float, float] | None,
    known: ClipStatistics | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Clip ``(P, C)`` ROI intensities per channel to their percentiles: the ONE robust clip.

    Returns the ``(P, C)`` values to fit (extreme ones set to the bounds), the ``(P, C)``
    values clipped to the bounds (for the statistics), the ``(2, C)`` bounds (None when
    ``percentiles`` is None), and per channel the ``(C,)`` number of clipped and of
    extreme voxels. ``known``: see :func:`clip_bounds`.
    """
    n_ch = raw.shape[1]
    if percentiles is None:
        zeros = np.zeros(n_ch, dtype=np.int64)
        return raw, raw, None, zeros, zeros.copy()
    bounds, extreme, _ = clip_bounds(raw, percentiles, known)
    n_clipped = ((raw < bounds[0]) | (raw > bounds[1])).sum(0).astype(np.int64)
    clipped = np.clip(raw, bounds[0], bounds[1])
    values = np.where(extreme, clipped, raw) if extreme.any() else raw
    return values, clipped, bounds, n_clipped, extreme.sum(0).astype(np.int64)


def _row_sums(rows: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
    """``(n_rows, C)`` float64 sums of ``values`` ``(P, C)`` per row ``rows`` ``(P,)``, in order."""
    return np.stack(
        [np.bincount(rows, weights=values[:, c], minlength=n_rows) for c in range(values.shape[1])],
        axis=1,
    )


def _crop_stats(
    images: np.ndarray,
    crop_slices: np.ndarray,
    boxes: np.ndarray,
    per_slice: bool,
    bounds: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel over each crop box (the part inside the image), clipped to
    the ``(2, C)`` ``bounds`` when given."""
    n_ch = images.shape[-1]
    sums, sqs, cnts = [], [], []
    for z, (y0, x0, h, w) in zip(crop_slices, boxes, strict=True):
        patch = images[z, max(y0, 0) : y0 + h, max(x0, 0) : x0 + w].reshape(-1, n_ch)
        patch = patch.astype(np.float64)
        if not np.all(np.isfinite(patch)):
            raise CaseLoadError(f"images contain NaN or Inf in the crop of slice {z}")
        if bounds is not None:
            patch = np.clip(patch, bounds[0], bounds[1])
        sums.append(patch.sum(0))
        sqs.append((patch**2).sum(0))
        cnts.append(patch.shape[0])
    sums, sqs, cnts = np.array(sums), np.array(sqs), np.array(cnts, dtype=np.float64)[:, None]
    if not per_slice:
        sums, sqs, cnts = (
            sums.sum(0, keepdims=True),
            sqs.sum(0, keepdims=True),
            cnts.sum(0, keepdims=True),
        )
    loc = sums / cnts
    var = np.maximum(sqs / cnts - loc**2, 0.0)
    return loc, np.sqrt(var)


#: Contrast check of the sequences (docs/robustness.md): the ratio of the LV ROI's core
#: (blood pool) to its rim (wall), median over slices. On bSSFP the blood is bright
#: (1.8-4.6 on the 43 cases of myops_real/dev/unlabelled), on dark-blood T2 it is the
#: lowest of the sequences (0.04-1.02).
MIN_BSSFP_BLOOD_RATIO = 1.2


def contrast_warnings(images: np.ndarray, channels: Sequence[str], roi: np.ndarray) -> list[str]:
    """Warnings for a likely swap of sequences, from the blood-to-wall contrast in the ROI.

    Parameters
    ----------
    images : numpy.ndarray
        ``(Z, Y, X, C)`` intensities.
    channels : sequence of str
        Channel names (``bSSFP``, ``LGE``, ``T2``).
    roi : numpy.ndarray
        ``(Z, Y, X)`` bool LV ROI (blood pool + myocardium).

    Returns
    -------
    list of str
        One line per finding; empty when the contrasts look as expected.
    """
    from scipy import ndimage as ndi

    images, roi = np.asarray(images), np.asarray(roi, dtype=bool)
    channels = list(channels)
    ratios: dict[str, list[float]] = {c: [] for c in channels}
    for z in range(roi.shape[0]):
        if roi[z].sum() < 50:
            continue
        d = ndi.distance_transform_edt(roi[z])
        core = d > 0.6 * d.max()
        rim = (d > 0) & (d <= max(1.5, 0.2 * d.max()))
        for i, c in enumerate(channels):
            wall = float(np.median(images[z, ..., i][rim]))
            if wall > 0:
                ratios[c].append(float(np.median(images[z, ..., i][core])) / wall)
    r = {c: float(np.median(v)) for c, v in ratios.items() if v}
    out = []
    if "bSSFP" in r and r["bSSFP"] < MIN_BSSFP_BLOOD_RATIO:
        out.append(
            f"the blood pool is not bright on the bSSFP image (blood/wall {r['bSSFP']:.2f}, "
            f"expected > {MIN_BSSFP_BLOOD_RATIO:g}): are the sequences swapped?"
        )
    if "T2" in r and len(r) > 1 and r["T2"] > min(v for c, v in r.items() if c != "T2"):
        out.append(
            "the blood pool is brighter on T2 than on another sequence (blood/wall "
            + ", ".join(f"{c} {v:.2f}" for c, v in r.items())
            + "): are the sequences swapped?"
        )
    return out
