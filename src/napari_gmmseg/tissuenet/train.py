"""Training the tissue network: supervised Dice + cross-entropy inside the ROI, heavy augmentation.

Every labelled slice is seen with several ROIs like the ones inference meets: the manual LV
(blood pool + myocardium), the same grown by 2 and 4 pixels or shrunk by 1, and the
automatic ROI (:mod:`napari_gmmseg.autoroi`) where it passes QC. Targets are soft one-hot
maps resampled with the images (partial volume kept); ROI pixels that are not LV tissue are
class ``outside``. Each batch is augmented on the fly by one batched ``grid_sample``
(rotation over the full circle, flips, scale, translation, a smooth elastic field) and per
sequence by intensity scale/offset, gamma and a smooth bias field.

Optionally (``unlabelled_weight > 0``) the paper's idea is added as a semi-supervised term:
on unlabelled scans (inside their automatic ROI) the network's tissue probabilities are the
per-pixel mixing weights of a spatially variant GMM whose Gaussians come from the closed-form
M-step, and its negative log-likelihood (deepSVG's NLL_V, :func:`napari_gmmseg.deep.losses.mixture_loss`)
is added to the loss.

Training is resumable: a checkpoint (weights, optimiser, random states, step) is written
atomically every ``checkpoint_every`` steps, and a run restarted with the same options
continues where it stopped (a checkpoint made with other options is refused).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_gmmseg.errors import ModelError
from napari_gmmseg.tissuenet.crops import PIXEL_MM, crop_geometry, to_crops
from napari_gmmseg.tissuenet.model import NetConfig, build_network, network_inputs

__all__ = ["TrainOptions", "TrainingSet", "make_training_set", "train_member"]

#: MyoPS label value of every output class but ``outside``.
_TARGET_VALUES = (500, 200, 1220, 2221)
#: Crop side of the stored training samples (augmentation samples the network's crop inside).
_STORE_PX = 176


@dataclass(frozen=True)
class TrainOptions:
    """What a training run does (all recorded in the weights file and the checkpoint)."""

    steps: int = 800
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    crop_px: int = 128
    unlabelled_weight: float = 0.0
    unlabelled_batch: int = 6
    seed: int = 0
    config: NetConfig = field(default_factory=NetConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "crop_px", "unlabelled_batch"):
            if int(getattr(self, name)) < 1:
                raise ModelError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "unlabelled_weight"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0 or (name == "lr" and v == 0):
                raise ModelError(f"{name} must be {'> 0' if name == 'lr' else '>= 0'}, got {v}")


@dataclass
class TrainingSet:
    """Pre-cropped samples at :data:`~napari_gmmseg.tissuenet.crops.PIXEL_MM`.

    Attributes
    ----------
    inputs : numpy.ndarray
        ``(N, 4, P, P)`` float32 network inputs (P = 176).
    targets : numpy.ndarray
        ``(N, 5, P, P)`` float32 soft one-hot targets (zeros outside the ROI).
    cases : list of str
        Case id of every sample.
    """

    inputs: np.ndarray
    targets: np.ndarray
    cases: list[str]


def _roi_variants(gt_roi: np.ndarray, auto_roi: np.ndarray | None) -> list[np.ndarray]:
    """The ROIs a labelled volume is seen with (module docstring)."""
    from scipy import ndimage as ndi

    st = np.zeros((1, 3, 3), dtype=bool)
    st[0, 1, :] = st[0, :, 1] = True  # in-plane 4-neighbourhood
    out = [gt_roi]
    out.append(ndi.binary_dilation(gt_roi, st, iterations=2))
    out.append(ndi.binary_dilation(gt_roi, st, iterations=4))
    out.append(ndi.binary_erosion(gt_roi, st, iterations=1))
    if auto_roi is not None and auto_roi.any():
        out.append(auto_roi.astype(bool))
    return out


def _case_samples(case, auto_roi: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 4, P, P)`` inputs and ``(n, 5, P, P)`` targets of one labelled case."""
    import torch

    labels = np.asarray(case.labels)
    gt_roi = np.isin(labels, _TARGET_VALUES)
    onehot = np.stack([labels == v for v in _TARGET_VALUES], 1).astype(np.float32)  # (Z,4,Y,X)
    xs, ts = [], []
    for roi in _roi_variants(gt_roi, auto_roi):
        roi = roi & gt_roi.any((1, 2), keepdims=True)  # labelled slices only
        if not roi.any():
            continue
        geo = crop_geometry(gt_roi & roi.any((1, 2), keepdims=True), case.spacing_mm)
        geo = type(geo)(geo.slices, geo.centre_px, geo.native_shape, geo.scale, _STORE_PX)
        x = network_inputs(case.images, roi, case.channels)[geo.slices]
        t = np.concatenate([onehot[geo.slices], 1.0 - onehot[geo.slices].sum(1, keepdims=True)], 1)
        t = t * roi[geo.slices][:, None]
        theta = torch.from_numpy(geo.theta())
        xs.append(to_crops(torch.from_numpy(x), theta, _STORE_PX).numpy())
        ts.append(to_crops(torch.from_numpy(t), theta, _STORE_PX).numpy())
    return np.concatenate(xs), np.concatenate(ts)


def make_training_set(
    cases: Sequence[Any], auto_rois: dict[str, np.ndarray] | None = None
) -> TrainingSet:
    """Samples of every labelled slice of ``cases`` (loaded :class:`~napari_gmmseg.io.Case`)."""
    xs, ts, ids = [], [], []
    for case in cases:
        if case.labels is None:
            raise ModelError(f"case {case.case_id} has no manual mask to learn from")
        x, t = _case_samples(case, (auto_rois or {}).get(case.case_id))
        xs.append(x)
        ts.append(t)
        ids += [case.case_id] * len(x)
    return TrainingSet(np.concatenate(xs), np.concatenate(ts), ids)


def unlabelled_crops(cases: Sequence[Any], auto_rois: dict[str, np.ndarray]) -> np.ndarray:
    """``(n, 4, P, P)`` inputs of the slices of unlabelled ``cases`` inside their automatic ROI."""
    import torch

    xs = []
    for case in cases:
        roi = auto_rois.get(case.case_id)
        if roi is None or not roi.any():
            continue
        geo = crop_geometry(roi, case.spacing_mm)
        geo = type(geo)(geo.slices, geo.centre_px, geo.native_shape, geo.scale, _STORE_PX)
        x = network_inputs(case.images, roi, case.channels)[geo.slices]
        xs.append(to_crops(torch.from_numpy(x), torch.from_numpy(geo.theta()), _STORE_PX).numpy())
    return np.concatenate(xs) if xs else np.zeros((0, 4, _STORE_PX, _STORE_PX), np.float32)


# ----------------------------------------------------------------------------- augmentation
def _smooth_field(n: int, size: int, cells: int, gen, device) -> Any:
    """``(n, 1, size, size)`` smooth random field in [-1, 1] (bicubic from a coarse grid)."""
    import torch
    import torch.nn.functional as F

    coarse = torch.rand(n, 1, cells, cells, generator=gen, device=device) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)


def augment(x, t, out_px: int, gen) -> tuple[Any, Any]:
    """Randomly transformed ``(B, 4, out, out)`` inputs and ``(B, 5, out, out)`` targets.

    ``x``, ``t``: stored samples ``(B, 4, P, P)`` and ``(B, 5, P, P)``.
    """
    import torch
    import torch.nn.functional as F

    b, dev = x.shape[0], x.device
    u = lambda *s: torch.rand(*s, generator=gen, device=dev)  # noqa: E731
    angle = u(b) * 2 * math.pi
    scale = 0.85 + 0.3 * u(b)
    flip = torch.where(u(b) < 0.5, -1.0, 1.0)
    zoom = out_px / x.shape[-1] / scale
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, :, 2] = (u(b, 2) - 0.5) * 0.12  # up to ±6 % of the stored crop
    grid = F.affine_grid(theta, [b, 1, out_px, out_px], align_corners=True)
    elastic = torch.cat([_smooth_field(b, out_px, 5, gen, dev) for _ in range(2)], 1)
    grid = grid + 0.015 * elastic.permute(0, 2, 3, 1) * (u(b, 1, 1, 1) < 0.7)
    both = F.grid_sample(torch.cat([x, t], 1), grid, align_corners=True)
    xa, ta = both[:, :4].clone(), both[:, 4:]
    roi = (xa[:, 3:4] > 0.5).float()
    xa[:, 3:4] = roi
    img = xa[:, :3]
    img = img * (0.85 + 0.3 * u(b, 3, 1, 1)) + (u(b, 3, 1, 1) - 0.5) * 0.4
    bias = torch.cat([_smooth_field(b, out_px, 3, gen, dev) for _ in range(3)], 1)
    img = img + 0.3 * bias * u(b, 3, 1, 1)
    lo = img.amin((2, 3), keepdim=True)
    hi = img.amax((2, 3), keepdim=True)
    gamma = torch.exp((u(b, 3, 1, 1) - 0.5) * 0.6)
    img = lo + (hi - lo) * ((img - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) ** gamma
    xa[:, :3] = img.clamp(-8, 8)
    return xa, ta * roi


def supervised_loss(logits, target) -> Any:
    """Cross-entropy (soft targets) + soft Dice of the classes present, inside the ROI.

    ``logits``, ``target``: ``(B, 5, H, W)``; the target is zero outside the ROI.
    """
    import torch

    w = target.sum(1)  # 1 inside the ROI (partial volume at its edge), 0 outside
    logp = torch.log_softmax(logits, 1)
    ce = -(target * logp).sum(1).sum() / w.sum().clamp_min(1.0)
    p = logp.exp() * w[:, None]
    inter = (p * target).sum((0, 2, 3))
    denom = p.sum((0, 2, 3)) + target.sum((0, 2, 3))
    present = target.sum((0, 2, 3)) > 1.0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + (1.0 - dice[present]).mean()


def unlabelled_loss(logits, x) -> Any:
    """deepSVG's NLL_V of unlabelled crops: tissue probabilities as the mixing weights Pi.

    ``logits``: ``(B, 5, H, W)``; ``x``: ``(B, 4, H, W)`` inputs (ROI in the last channel).
    """
    from napari_gmmseg.deep.losses import mixture_loss

    b = logits.shape[0]
    pix = x[:, :3].flatten(2).transpose(1, 2)  # (B, N, 3)
    valid = x[:, 3].flatten(1) > 0.5
    lg = logits[:, :4].flatten(2).transpose(1, 2)
    terms = mixture_loss(lg, pix, valid, method="deepsvg", covariance_type="full")
    return terms.loss.sum() / b


# ----------------------------------------------------------------------------- training loop
def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def train_member(
    data: TrainingSet,
    options: TrainOptions,
    checkpoint: str | os.PathLike,
    *,
    unlabelled: np.ndarray | None = None,
    device: Any = "cpu",
    checkpoint_every: int = 50,
    progress: Callable[[int, int, float], Any] | None = None,
) -> dict[str, np.ndarray]:
    """Train one network (resuming ``checkpoint`` if it exists); its ``state_dict`` as numpy.

    Parameters
    ----------
    data : TrainingSet
    options : TrainOptions
    checkpoint : path
        Written every ``checkpoint_every`` steps and at the end; read first if present.
    unlabelled : numpy.ndarray, optional
        ``(n, 4, P, P)`` unlabelled crops for the semi-supervised term.
    progress : callable, optional
        ``progress(step, steps, loss)`` after every step.

    Raises
    ------
    ModelError
        A checkpoint made with other options or data.
    """
    import torch

    ckpt_path = Path(checkpoint)
    key = {"options": _jsonable(asdict(options)), "cases": sorted(set(data.cases))}
    torch.manual_seed(options.seed)
    net = build_network(options.config).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=options.lr, total_steps=options.steps, pct_start=0.1
    )
    gen = torch.Generator(device="cpu").manual_seed(options.seed)
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        if state["key"] != key:
            raise ModelError(
                f"{ckpt_path} was made with other options or cases; remove it or use another --out"
            )
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        step = int(state["step"])
    x_all = torch.from_numpy(data.inputs)
    t_all = torch.from_numpy(data.targets)
    u_all = torch.from_numpy(unlabelled) if unlabelled is not None and len(unlabelled) else None
    use_u = u_all is not None and options.unlabelled_weight > 0
    net.train()
    while step < options.steps:
        idx = torch.randint(len(x_all), (options.batch,), generator=gen)
        xb, tb = augment(x_all[idx].to(device), t_all[idx].to(device), options.crop_px, gen)
        loss = supervised_loss(net(xb), tb)
        if use_u:
            uidx = torch.randint(len(u_all), (options.unlabelled_batch,), generator=gen)
            zeros = torch.zeros(options.unlabelled_batch, 5, *u_all.shape[2:])
            xu, _ = augment(u_all[uidx].to(device), zeros.to(device), options.crop_px, gen)
            loss = loss + options.unlabelled_weight * unlabelled_loss(net(xu), xu)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()
        sched.step()
        step += 1
        if step % checkpoint_every == 0 or step == options.steps:
            _atomic_save(
                {
                    "key": key,
                    "net": net.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "gen": gen.get_state(),
                    "step": step,
                },
                ckpt_path,
            )
        if progress is not None:
            progress(step, options.steps, float(loss.detach()))
    return {k: v.detach().cpu().float().numpy() for k, v in net.state_dict().items()}


def _jsonable(d: Any) -> Any:
    """Tuples as lists, recursively (for comparing options with a checkpoint's)."""
    return json.loads(json.dumps(d))


# ----------------------------------------------------------------------------- the ensemble
def read_folds(path: str | os.PathLike) -> list[list[str]]:
    """The case ids of every fold of a committed split (``{"folds": [[id, ...], ...]}``)."""
    try:
        folds = json.loads(Path(path).read_text(encoding="utf-8"))["folds"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: not a folds file ({exc})") from exc
    if len(folds) < 2 or any(not f for f in folds):
        raise ModelError(f"{path}: a split needs at least two non-empty folds")
    return [[str(c) for c in f] for f in folds]


def automatic_rois(sources: Sequence[Any], cache_dir: Path, log: Callable[[str], Any]) -> dict:
    """The automatic ROI of every case (computed once, kept as ``cache_dir/<id>.npz``)."""
    from napari_gmmseg.autoroi import find_roi

    cache_dir.mkdir(parents=True, exist_ok=True)
    rois = {}
    for src in sources:
        path = cache_dir / f"{src.case_id}.npz"
        if not path.exists():
            case = src.load()
            found = find_roi(case.images, case.channels, case.spacing_mm)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
            np.savez_compressed(tmp, roi=found.roi)
            os.replace(tmp, path)
            log(
                f"automatic ROI of {src.case_id}: {int(found.roi.any((1, 2)).sum())} slices pass QC"
            )
        with np.load(path) as z:
            rois[src.case_id] = z["roi"]
    return rois


def train_folds(
    dataset: str | os.PathLike,
    folds_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: TrainOptions,
    *,
    unlabelled: str | os.PathLike | None = None,
    device: Any = "cpu",
    log: Callable[[str], Any] = print,
) -> Path:
    """Train one member per fold (on the other folds) and write the ensemble of all of them.

    Writes ``out_dir/fold<i>.npz`` (each member alone, for the cross-validated table),
    ``out_dir/tissue_net.npz`` (the ensemble) and checkpoints; a rerun resumes.

    Returns
    -------
    pathlib.Path
        The ensemble file.
    """
    from napari_gmmseg.io import discover_cases
    from napari_gmmseg.tissuenet.model import TissueNetEnsemble

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folds = read_folds(folds_file)
    sources = {s.case_id: s for s in discover_cases(dataset)}
    missing = sorted({c for f in folds for c in f} - set(sources))
    if missing:
        raise ModelError(f"{folds_file} names cases not in {dataset}: {', '.join(missing)}")
    rois = automatic_rois(list(sources.values()), out / "autoroi", log)
    u_crops = None
    if unlabelled is not None and options.unlabelled_weight > 0:
        u_sources = discover_cases(unlabelled)
        u_rois = automatic_rois(u_sources, out / "autoroi", log)
        u_crops = unlabelled_crops([s.load() for s in u_sources], u_rois)
        log(f"{len(u_crops)} unlabelled slices from {len(u_sources)} scans")
    cases = {cid: sources[cid].load() for f in folds for cid in f}
    states, members = [], []
    for i, held_out in enumerate(folds):
        member_file = out / f"fold{i}.npz"
        train_ids = [c for j, f in enumerate(folds) if j != i for c in f]
        meta = {"options": _jsonable(asdict(options)), "train_cases": train_ids, "fold": i}
        if member_file.exists():
            member = TissueNetEnsemble.load(member_file)
            if member.meta.get("members") != [meta]:
                raise ModelError(f"{member_file} was trained with other options; use another --out")
            states.append(member.states[0])
            members.append(meta)
            continue
        data = make_training_set([cases[c] for c in train_ids], rois)
        log(
            f"fold {i}: {len(data.inputs)} samples from {len(train_ids)} cases; held out {held_out}"
        )
        t0 = time.perf_counter()

        def report(step: int, steps: int, loss: float, i: int = i, t0: float = t0) -> None:
            if step % 25 == 0 or step == steps:
                el = time.perf_counter() - t0
                log(f"fold {i}: step {step}/{steps} loss {loss:.3f} ({el:.0f} s)")

        opts = TrainOptions(
            **{**asdict(options), "seed": options.seed + i, "config": options.config}
        )
        state = train_member(
            data, opts, out / f"fold{i}.ckpt", unlabelled=u_crops, device=device, progress=report
        )
        TissueNetEnsemble(options.config, [state], {"members": [meta]}).save(
            member_file, overwrite=True
        )
        states.append(state)
        members.append(meta)
    path = out / "tissue_net.npz"
    TissueNetEnsemble(options.config, states, {"members": members, "pixel_mm": PIXEL_MM}).save(
        path, overwrite=True
    )
    log(f"wrote {path} ({len(states)} members)")
    return path
