"""Turn a dataset folder, Case objects or CaseSources into an iterator of labelled cases."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from napari_gmmseg.errors import CaseLoadError


def iter_cases(cases: Any, channels: Any = None) -> Iterator[Any]:
    """Yield loaded :class:`napari_gmmseg.io.Case` objects one at a time.

    Parameters
    ----------
    cases : path-like, Case, CaseSource or iterable of them
        A dataset folder (any layout :func:`napari_gmmseg.io.discover_cases` reads), or
        cases / case sources.
    channels : sequence of str, optional
        Sequences to load from case sources (default: all found).
    """
    from napari_gmmseg import io

    if isinstance(cases, (str, os.PathLike)):
        sources = io.discover_cases(Path(cases))
        if not sources:
            raise CaseLoadError(f"{cases}: no cases found")
        items: Iterable[Any] = sources
    elif hasattr(cases, "images") or hasattr(cases, "load"):
        items = [cases]
    else:
        items = list(cases)
        if not items:
            raise CaseLoadError("no cases given")
    for item in items:
        if hasattr(item, "images"):
            yield item
        elif hasattr(item, "load"):
            yield item.load(channels=channels) if channels is not None else item.load()
        else:
            raise CaseLoadError(f"not a case or case source: {item!r}")


def _canon(name: str) -> str:
    from napari_gmmseg.naming import canonical_channel

    return canonical_channel(name).lower()


def channel_order(have: Sequence[str], want: Sequence[str]) -> list[int] | None:
    """Indices into ``have`` giving the channels in the order of ``want``, by name.

    Names are compared after :func:`napari_gmmseg.naming.canonical_channel` (``C0`` is
    ``bSSFP``, ``DE`` is ``LGE``...). Returns None when the two sets differ.
    """
    h = [_canon(c) for c in have]
    w = [_canon(c) for c in want]
    if len(h) != len(w) or sorted(h) != sorted(w) or len(set(h)) != len(h):
        return None
    return [h.index(c) for c in w]


def reorder_channels(images: Any, have: tuple[str, ...], want: tuple[str, ...], what: str) -> Any:
    """Reorder the last axis of ``images`` from channel order ``have`` to ``want``."""
    from napari_gmmseg.errors import ModelError

    order = channel_order(have, want)
    if order is None:
        raise ModelError(f"{what}: channels {list(have)} do not match {list(want)}")
    if order == list(range(len(order))):
        return images
    return images[..., order]
