"""Stage 2 of the wall-first pipeline: healthy / edema / scar inside the myocardial wall.

Only wall pixels are modelled, on LGE and T2 in ``wall-ratio`` units (each slice and
sequence divided by its wall median, :func:`napari_gmmseg.prior.normalise_to_wall`),
with K = 3 components anchored to a learned :class:`~napari_gmmseg.prior.TissuePrior`:

MAP-EM (:func:`fit_map_em`, the default mixture)
    conjugate priors (normal-inverse-Wishart on every component's mean and covariance,
    Dirichlet on the weights) centred on the prior's class statistics, with ONE strength
    :data:`PRIOR_STRENGTH`: the prior counts as that fraction of the slice's wall pixels,
    spread over the classes. All slices are fitted together as one batch on padded
    crops ``(S, H, W)``; an optional mean-field Potts term (:data:`MRF_BETA`) adds
    ``beta`` x the neighbours' responsibilities (3x3, inside the wall) to the E-step.
``gmm`` / ``svgmm``
    the engine's maximum-likelihood EM (:mod:`napari_gmmseg.mixture`) on the same wall
    pixels, started from the prior means and named by Hungarian assignment to them: the
    "prior off" ablation.

Rules applied after the fit (:func:`apply_rules`), each from what clinicians know:

- **partial volume**: a scar pixel that is T2-dark (below :data:`SCAR_T2_MIN`) is
  blood partial volume, and a scar region (8-connected, per slice) lying entirely inside the
  endocardial rim (:data:`napari_gmmseg.wall.RIM_MM`) is blood/myocardium partial
  volume, not scar (scar that reaches deeper keeps its rim pixels: infarcts start at the
  endocardium);
- **presence**: a slice whose scar (edema) covers less than :data:`PRESENCE_FRACTION`
  of its wall has none; a case whose scar (edema) covers less than that fraction of its
  whole wall has none. Removed pixels take the most probable remaining class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_gmmseg.errors import ModelError

__all__ = [
    "MIXTURES",
    "MRF_BETA",
    "PATHOLOGY_CHANNELS",
    "PATHOLOGY_CLASSES",
    "PRESENCE_FRACTION",
    "PRIOR_STRENGTH",
    "WallBatch",
    "apply_rules",
    "fit_map_em",
    "fit_pathology",
]

#: Classes of stage 2, in component order (names from :data:`napari_gmmseg.labels.CLASSES`).
PATHOLOGY_CLASSES: tuple[str, ...] = ("myocardium", "edema", "scar")
#: Sequences stage 2 models: LGE shows scar, T2 shows edema.
PATHOLOGY_CHANNELS: tuple[str, ...] = ("LGE", "T2")
#: Mixtures stage 2 accepts.
MIXTURES: tuple[str, ...] = ("map-em", "gmm", "svgmm")
#: Weight of the learned prior, as a fraction of the slice's wall pixels (split equally
#: over the three classes for means and covariances, by the prior proportions for the
#: weights). 0.05 keeps a component that finds no pixels of its class (a slice without
#: scar) at the prior's place instead of letting it drift into healthy tissue, while the
#: data still sets the parameters of every class present; 0.5 was worse cross-validated
#: (docs/quality.md, section 6).
PRIOR_STRENGTH: float = 0.05
#: Potts weight of the mean-field MRF (per neighbour's responsibility, 8 neighbours);
#: off by default: 0.5 lowered the cross-validated scar Dice (docs/quality.md, section 6).
MRF_BETA: float = 0.0
#: Minimum share of the wall (slice or case) a lesion class must cover to be present:
#: 2 % is a few tens of pixels in a MyoPS slice, below what a reader would call a lesion.
PRESENCE_FRACTION: float = 0.02
#: A scar pixel's T2 must reach this multiple of its slice's wall median: scar is T2-iso or
#: bright, while a wall pixel that is LGE-bright *and* T2-dark carries blood partial volume
#: (blood is about half of myocardium on T2).
SCAR_T2_MIN: float = 0.9
#: EM iterations of :func:`fit_map_em` (it converges in 10-20 on MyoPS slices).
MAX_ITER: int = 30


@dataclass
class WallBatch:
    """Wall pixels of every slice as padded crops, for batched stage-2 fits.

    Attributes
    ----------
    x : torch.Tensor
        ``(S, H, W, M)`` float32 wall-ratio intensities (0 outside the wall).
    mask : torch.Tensor
        ``(S, H, W)`` bool wall pixels.
    slices : numpy.ndarray
        ``(S,)`` z-index of every row.
    boxes : numpy.ndarray
        ``(S, 4)`` int ``y0, x0, h, w`` of each crop in the volume slice.
    """

    x: Any
    mask: Any
    slices: np.ndarray
    boxes: np.ndarray

    @classmethod
    def from_volume(cls, x: np.ndarray, wall: np.ndarray, device: Any = "cpu") -> WallBatch:
        """Crop ``(Z, Y, X, M)`` images around the ``(Z, Y, X)`` wall of each non-empty slice."""
        import torch

        z_any = np.nonzero(wall.reshape(wall.shape[0], -1).any(1))[0]
        boxes = []
        for z in z_any:
            ys, xs = np.nonzero(wall[z])
            boxes.append((ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        h, w = (int(boxes[:, 2].max()), int(boxes[:, 3].max())) if len(boxes) else (1, 1)
        xb = np.zeros((len(z_any), h, w, x.shape[-1]), dtype=np.float32)
        mb = np.zeros((len(z_any), h, w), dtype=bool)
        for i, (z, (y0, x0, hh, ww)) in enumerate(zip(z_any, boxes, strict=True)):
            mb[i, :hh, :ww] = wall[z, y0 : y0 + hh, x0 : x0 + ww]
            xb[i, :hh, :ww] = np.where(mb[i, :hh, :ww, None], x[z, y0 : y0 + hh, x0 : x0 + ww], 0)
        return cls(
            torch.as_tensor(xb, device=device), torch.as_tensor(mb, device=device), z_any, boxes
        )

    def scatter(self, values: np.ndarray, shape: tuple[int, ...], fill: Any = 0) -> np.ndarray:
        """``(S, H, W[, K])`` crop values back to a ``(Z, Y, X[, K])`` volume (``fill`` elsewhere)."""
        out = np.full(tuple(shape) + values.shape[3:], fill, dtype=values.dtype)
        for i, (z, (y0, x0, hh, ww)) in enumerate(zip(self.slices, self.boxes, strict=True)):
            m = np.asarray(self.mask[i, :hh, :ww].cpu())
            out[z, y0 : y0 + hh, x0 : x0 + ww][m] = values[i, :hh, :ww][m]
        return out


def _log_gauss(x: Any, xx: Any, mu: Any, cov: Any) -> Any:
    """``(S, N, K)`` log N(x | mu, cov), as matrix products.

    ``x`` ``(S, N, M)``, ``xx`` ``(S, N, M*M)`` its outer products, ``mu`` ``(S, K, M)``,
    ``cov`` ``(S, K, M, M)``: ``(x-mu)' P (x-mu) = <xx, P> - 2 x' P mu + mu' P mu``.
    """
    import torch

    s, k, m = mu.shape
    prec = torch.linalg.inv(cov)  # (S, K, M, M), small
    logdet = torch.linalg.slogdet(cov)[1]  # (S, K)
    pmu = (prec @ mu[..., None])[..., 0]  # (S, K, M)
    maha = (
        xx @ prec.reshape(s, k, m * m).transpose(1, 2)
        - 2 * x @ pmu.transpose(1, 2)
        + (mu * pmu).sum(-1)[:, None]
    )
    return -0.5 * (maha + logdet[:, None] + m * np.log(2 * np.pi))


def _neighbour_sum(r: Any, mask: Any) -> Any:
    """``(S, H, W, K)`` sum of the 8 neighbours' responsibilities inside the wall."""
    import torch

    s, h, w, k = r.shape
    rk = (r * mask[..., None]).permute(0, 3, 1, 2).reshape(s * k, 1, h, w)
    kern = torch.ones(1, 1, 3, 3, dtype=r.dtype, device=r.device)
    kern[0, 0, 1, 1] = 0
    out = torch.nn.functional.conv2d(rk, kern, padding=1)
    return out.reshape(s, k, h, w).permute(0, 2, 3, 1)


def fit_map_em(
    wb: WallBatch,
    stats: Any,
    *,
    strength: float = PRIOR_STRENGTH,
    beta: float = 0.0,
    max_iter: int = MAX_ITER,
) -> Any:
    """Batched MAP-EM of a K-class Gaussian mixture on the wall pixels of every slice.

    Parameters
    ----------
    wb : WallBatch
        ``S`` slices of ``(H, W, M)`` wall pixels.
    stats : ClassStats
        Prior ``(K, M)`` means, ``(K, M, M)`` covariances, ``(K,)`` weights, same units.
    strength : float
        Prior pseudo-count as a fraction of the slice's wall pixels (0: maximum likelihood
        from the prior start).
    beta : float
        Mean-field Potts weight (0: no MRF).
    max_iter : int
        EM iterations (deterministic: no random step).

    Returns
    -------
    torch.Tensor
        ``(S, H, W, K)`` float32 responsibilities (0 outside the wall).
    """
    import torch

    dev = wb.x.device
    s, h, w, m = wb.x.shape
    mu0 = torch.as_tensor(stats.means, dtype=torch.float32, device=dev)
    cov0 = torch.as_tensor(stats.covariances, dtype=torch.float32, device=dev)
    pi0 = torch.as_tensor(stats.weights, dtype=torch.float32, device=dev)
    pi0 = pi0.clamp_min(1e-3) / pi0.clamp_min(1e-3).sum()
    k = mu0.shape[0]
    x = wb.x.reshape(s, h * w, m)
    valid = wb.mask.reshape(s, h * w).to(torch.float32)
    n_pix = valid.sum(1)  # (S,)
    n0 = (strength * n_pix / k)[:, None]  # (S, 1) pseudo-pixels per class
    mu = mu0.expand(s, k, m).clone()
    cov = cov0.expand(s, k, m, m).clone()
    pi = pi0.expand(s, k).clone()
    eye = torch.eye(m, device=dev) * 1e-4
    r = torch.zeros(s, h * w, k, device=dev)
    xx = (x[..., :, None] * x[..., None, :]).reshape(s, h * w, m * m)
    for it in range(int(max_iter)):
        logp = torch.log(pi)[:, None] + _log_gauss(x, xx, mu, cov)  # (S, N, K)
        if beta > 0 and it > 0:
            nb = _neighbour_sum(r.reshape(s, h, w, k), wb.mask).reshape(s, h * w, k)
            logp = logp + beta * nb
        r = torch.softmax(logp, -1) * valid[..., None]
        nk = r.sum(1)  # (S, K)
        xbar = (r.transpose(1, 2) @ x) / nk.clamp_min(1e-6)[..., None]  # (S, K, M)
        second = (r.transpose(1, 2) @ xx).reshape(s, k, m, m)  # (S, K, M, M)
        scat = second - nk[..., None, None] * xbar[..., :, None] * xbar[..., None, :]
        tot = nk + n0
        mu = (nk[..., None] * xbar + n0[..., None] * mu0) / tot[..., None]
        dm = (xbar - mu0)[..., :, None] * (xbar - mu0)[..., None, :]
        cov = (scat + n0[..., None, None] * cov0 + (nk * n0 / tot)[..., None, None] * dm) / tot[
            ..., None, None
        ] + eye
        pi = (nk + strength * n_pix[:, None] * pi0) / ((1 + strength) * n_pix[:, None])
    return r.reshape(s, h, w, k)


def _fit_engine(wb: WallBatch, stats: Any, mixture: str, beta: float, seed: int) -> Any:
    """ML EM of the engine (``gmm``/``svgmm``) on the wall pixels, named by the prior means."""
    import torch

    from napari_gmmseg import mixture as mx
    from napari_gmmseg.naming import PriorTable, name_components
    from napari_gmmseg.preprocess import SliceBatch

    _s, _h, _w, m = wb.x.shape
    images = wb.x.cpu().numpy()
    mask = wb.mask.cpu().numpy()
    batch = SliceBatch.from_volume(images, mask, normalize="none", device=wb.x.device)
    fit_fn = mx.fit_gmm if mixture == "gmm" else mx.fit_svgmm
    prior_means = np.asarray(stats.means)
    res = fit_fn(
        batch,
        n_components=prior_means.shape[0],
        covariance_type="full",
        init="prior",
        prior_means=prior_means,
        seed=seed,
        spatial="mrf" if beta > 0 else "none",
        beta=beta if beta > 0 else 1.0,
    )
    names = [f"ch{i}" for i in range(m)]
    table = PriorTable(tuple(names), PATHOLOGY_CLASSES, prior_means)
    c2c = name_components(res.means.detach().cpu().numpy(), names, table)  # (S, K)
    resp = res.responsibilities.detach().to("cpu", torch.float32)  # (S, N, K)
    by_class = torch.zeros_like(resp)
    by_class.scatter_add_(2, torch.as_tensor(c2c)[:, None].expand_as(resp), resp)
    vol = batch.scatter(by_class.numpy(), fill=0.0, dtype=np.float32)  # (S, h, w, K)
    return torch.as_tensor(vol)


def fit_pathology(
    wb: WallBatch,
    stats: Any,
    *,
    mixture: str = "map-em",
    strength: float = PRIOR_STRENGTH,
    beta: float = MRF_BETA,
    seed: int = 0,
) -> np.ndarray:
    """``(S, H, W, 3)`` float32 class-ordered (:data:`PATHOLOGY_CLASSES`) soft maps of the wall.

    Raises
    ------
    ModelError
        Unknown mixture.
    """
    if mixture not in MIXTURES:
        raise ModelError(f"unknown stage-2 mixture {mixture!r}; choose one of {MIXTURES}")
    if wb.x.shape[0] == 0:
        return np.zeros((0, 1, 1, len(PATHOLOGY_CLASSES)), dtype=np.float32)
    if mixture == "map-em":
        from napari_gmmseg.mixture import SINGLE_THREAD_BELOW, cpu_fit_settings

        cpu = wb.x.device.type == "cpu"
        small = wb.mask.numel() * len(PATHOLOGY_CLASSES) < SINGLE_THREAD_BELOW
        with cpu_fit_settings(1 if cpu and small else None, cpu):  # the engine's threading rule
            r = fit_map_em(wb, stats, strength=strength, beta=beta)
    else:
        r = _fit_engine(wb, stats, mixture, beta, seed)
    return r.cpu().numpy().astype(np.float32)


def apply_rules(
    labels: np.ndarray,
    soft: np.ndarray,
    wall: np.ndarray,
    rim: np.ndarray,
    *,
    rim_rule: bool = True,
    presence: bool = True,
    fraction: float = PRESENCE_FRACTION,
    t2: np.ndarray | None = None,
) -> np.ndarray:
    """Partial-volume and presence rules on stage-2 class indices (module docstring).

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` int class index into :data:`PATHOLOGY_CLASSES` (-1 outside the wall).
    soft : numpy.ndarray
        ``(Z, Y, X, 3)`` class-ordered soft maps (for the class a removed pixel takes).
    wall, rim : numpy.ndarray
        ``(Z, Y, X)`` bool wall and its endocardial rim.
    rim_rule, presence : bool
        Apply the partial-volume rule and the presence rule.
    fraction : float
        Presence threshold, share of the wall.
    t2 : numpy.ndarray, optional
        ``(Z, Y, X)`` T2 in wall-ratio units: with ``rim_rule``, scar pixels below
        :data:`SCAR_T2_MIN` are partial volume too.

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` int class indices after the rules.
    """
    from scipy import ndimage as ndi

    labels = labels.copy()
    scar, edema = PATHOLOGY_CLASSES.index("scar"), PATHOLOGY_CLASSES.index("edema")

    def remove(sel: np.ndarray, cls: int) -> None:
        p = soft[sel].copy()
        p[:, cls] = -1.0
        if cls == edema:
            p[:, scar] = -1.0  # removed edema becomes healthy, never scar
        labels[sel] = np.argmax(p, axis=1)

    if rim_rule and t2 is not None:
        remove((labels == scar) & (t2 < SCAR_T2_MIN), scar)
    if rim_rule:
        eight = np.zeros((3, 3, 3), dtype=bool)
        eight[1] = True
        lab, n = ndi.label(labels == scar, structure=eight)
        if n:
            outside = np.bincount(lab[~rim], minlength=n + 1)
            only_rim = np.nonzero(outside == 0)[0]
            only_rim = only_rim[only_rim > 0]
            remove(np.isin(lab, only_rim), scar)
    if presence:
        z = labels.shape[0]
        wall_px = wall.reshape(z, -1).sum(1)
        for cls in (scar, edema):
            cnt = (labels == cls).reshape(z, -1).sum(1)
            absent = (cnt < fraction * wall_px) | (cnt.sum() < fraction * wall_px.sum())
            remove((labels == cls) & absent[:, None, None], cls)
    return labels
