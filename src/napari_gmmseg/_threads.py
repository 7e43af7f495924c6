"""torch's CPU thread count for a block of work, restored afterwards (one home)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from napari_gmmseg.errors import ModelError

__all__ = ["cpu_threads"]


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(n)`` and restore the previous setting."""
    import torch

    old = torch.get_num_threads()
    if n is None or int(n) == old:
        yield
        return
    if int(n) < 1:
        raise ModelError(f"num_threads must be >= 1, got {n}")
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)
