"""Worker glue of the Segment dock: the request captured at Run, the thread-worker job."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_gmmseg.errors import GmmSegError

__all__ = ["CoreError", "SegmentRequest", "segment_job"]


@dataclass
class SegmentRequest:
    """Everything one Run needs, captured when Run is pressed."""

    images: np.ndarray
    roi: np.ndarray
    channels: tuple[str, ...]
    channel_layers: list[Any]
    reference: Any
    kwargs: dict[str, Any]
    roi_description: str
    output_name: str
    want_probabilities: bool
    roi_source: str | None = None  # a key of napari_gmmseg.accuracy.ROI_SOURCES
    output: Any = None
    started: float = field(default_factory=time.perf_counter)
    written: int = -1


_DONE = object()


@dataclass
class CoreError:
    """A :class:`GmmSegError` from the core, returned (not raised) by :func:`segment_job`."""

    error: GmmSegError


def segment_job(request: SegmentRequest, stop: threading.Event):
    """Generator run by the thread worker: yields :class:`Progress`, returns the Fit.

    The core runs in a helper thread and reports through a queue; reports are
    coalesced so a slow GUI never falls behind. A :class:`GmmSegError` is
    returned wrapped in :class:`CoreError` (not raised) so the widget shows its
    message without a traceback.
    """
    from napari_gmmseg.segment import segment

    reports: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["fit"] = segment(
                request.images,
                request.roi,
                channels=request.channels,
                progress=reports.put,
                should_stop=stop.is_set,
                **request.kwargs,
            )
        except BaseException as exc:  # handed to the generator's thread below
            outcome["error"] = exc
        finally:
            reports.put(_DONE)

    thread = threading.Thread(target=target, name="gmmseg-segment", daemon=True)
    thread.start()
    done = False
    try:
        while not done:
            item = reports.get()
            latest = None
            while True:
                if item is _DONE:
                    done = True
                    break
                latest = item
                try:
                    item = reports.get_nowait()
                except queue.Empty:
                    break
            if latest is not None:
                yield latest
    finally:
        if not done:  # the worker was aborted (napari's activity dock): stop the core too
            stop.set()
    thread.join()
    error = outcome.get("error")
    if isinstance(error, GmmSegError):
        return CoreError(error)
    if error is not None:
        raise error
    return outcome["fit"]
