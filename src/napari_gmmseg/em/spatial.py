"""The spatial prior: 8-neighbour sums, Potts mean-field term and SVGMM Pi smoothing."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["neighbour_sum", "smooth_log_pi"]


def neighbour_sum(batch: Any, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Sum over the 8 neighbours (inside the ROI) of ``(S_w, K, N)`` packed maps."""
    h, w = batch.crop_shape
    sw, k, n = values.shape
    flat_index = batch.flat_index[rows]
    valid = batch.valid[rows]
    crop = torch.zeros(sw, k, h * w, dtype=values.dtype, device=values.device)
    idx = torch.where(valid, flat_index, torch.zeros_like(flat_index))
    src = values * valid.unsqueeze(1).to(values.dtype)
    crop.scatter_add_(2, idx.unsqueeze(1).expand(sw, k, n), src)
    kernel = torch.ones(1, 1, 3, 3, dtype=values.dtype, device=values.device)
    kernel[0, 0, 1, 1] = 0.0
    nb = torch.nn.functional.conv2d(crop.view(sw * k, 1, h, w), kernel, padding=1)
    nb = nb.view(sw, k, h * w)
    return nb.gather(2, idx.unsqueeze(1).expand(sw, k, n))


def smooth_log_pi(
    batch: Any, rows: torch.Tensor, pi: torch.Tensor, beta: float, dtype: torch.dtype
) -> torch.Tensor:
    """log of ``(1 - beta) Pi + beta * mean of the ROI neighbours' Pi`` (renormalised)."""
    nb = neighbour_sum(batch, rows, pi)
    ones = batch.valid[rows].to(pi.dtype).unsqueeze(1)
    cnt = neighbour_sum(batch, rows, ones).clamp_min(1.0)
    mixed = (1.0 - beta) * pi + beta * nb / cnt
    mixed = mixed / mixed.sum(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    return torch.log(mixed.clamp_min(torch.finfo(dtype).tiny))
