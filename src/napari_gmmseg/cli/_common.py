"""What every sub-command shares: the parser class, the help style, the common flags and
the progress line of a long step.

* :class:`Parser` reports a usage error in one line (the flag and ``see --help``), not the
  whole usage.
* :class:`HelpFormatter` adds ``(default: X)`` only where the help does not already say a
  default and there is one to say (no ``default: None`` on required options).
* :func:`add_quiet_option` is the one spelling of "no progress on stderr" (``--quiet``;
  ``--no-progress`` is its hidden alias); :func:`add_mixture_options` the one spelling of
  the mixture size and covariance (``--classes``, ``--covariance``; ``--n-classes`` and
  ``--covariance-type`` are hidden aliases).
* :func:`step` prints a step's name on stderr before it starts, a line every few seconds
  while it runs and its duration when it ends, so nothing longer than 2 s is silent.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["HelpFormatter", "Parser", "add_mixture_options", "add_quiet_option", "step"]

#: Seconds between the "still running" lines of a long step.
HEARTBEAT_S = 5.0


class HelpFormatter(argparse.HelpFormatter):
    """Help with ``(default: X)`` only where it adds something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.required:
            return text
        default = action.default
        if default is None or default is argparse.SUPPRESS or isinstance(default, bool):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, with :class:`HelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        """Exit with ``PROG: error: MESSAGE (see PROG --help)`` (status 2)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_quiet_option(parser: Any) -> None:
    """``--quiet``: no progress on stderr (``--no-progress`` is a hidden alias)."""
    parser.add_argument(
        "--quiet", "-q", action="store_true", dest="quiet", help="no progress lines on stderr"
    )
    parser.add_argument(
        "--no-progress", action="store_true", dest="quiet", help=argparse.SUPPRESS,
        default=argparse.SUPPRESS,
    )  # fmt: skip


def add_mixture_options(group: Any, *, classes: int | None, covariance: str | None) -> None:
    """``--classes`` (mixture components K) and ``--covariance`` (diag or full), with the
    evaluation's older spellings ``--n-classes`` / ``--covariance-type`` as hidden aliases.

    ``classes`` / ``covariance`` are the defaults (None: the method's own).
    """
    from napari_gmmseg.methods import COVARIANCE_TYPES

    group.add_argument(
        "--classes", type=int, default=classes, dest="n_classes",
        help="mixture components K" + ("" if classes is not None else " (default 4)"),
    )  # fmt: skip
    group.add_argument(
        "--covariance", choices=COVARIANCE_TYPES, default=covariance, dest="covariance_type",
        help="mixture covariance" + ("" if covariance is not None else " (default diag)"),
    )  # fmt: skip
    hidden = {"help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
    group.add_argument("--n-classes", type=int, dest="n_classes", **hidden)
    group.add_argument(
        "--covariance-type", choices=COVARIANCE_TYPES, dest="covariance_type", **hidden
    )


@contextlib.contextmanager
def step(name: str, *, quiet: bool = False, stream: Any = None) -> Iterator[None]:
    """Say on stderr that a long step starts, that it still runs, and how long it took.

    Parameters
    ----------
    name : str
        What the step does, in the user's words (``"automatic ROI"``).
    quiet : bool
        Print nothing.
    stream : file, optional
        Where to print (default ``sys.stderr`` at the time of the call).
    """
    if quiet:
        yield
        return
    out = stream if stream is not None else sys.stderr
    t0 = time.perf_counter()
    print(f"{name} ...", file=out, flush=True)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            print(f"  {name}: {time.perf_counter() - t0:.0f} s", file=out, flush=True)

    ticker = threading.Thread(target=beat, name=f"progress: {name}", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
    print(f"{name}: done in {time.perf_counter() - t0:.1f} s", file=out, flush=True)
