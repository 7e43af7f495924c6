"""Command-line flags of the methods' own options, generated from the registry.

Every scalar field of a method's options dataclass (:mod:`napari_gmmseg.methods`)
becomes one flag (``reg_covar`` -> ``--reg-covar``); fields several methods share
(``reg_covar``, ``num_threads``) are one flag. A flag not given is absent from the
namespace, so each method keeps its own default; a flag given for a method that
does not take it is refused with a clear message.
"""

from __future__ import annotations

import argparse
from typing import Any

from napari_gmmseg.methods import get_method, option_fields

__all__ = ["add_method_arguments", "given_options", "options_for"]


def _default_text(entry: dict[str, Any]) -> str:
    by_value: dict[str, list[str]] = {}
    for method, default in entry["defaults"].items():
        by_value.setdefault(repr(default), []).append(method)
    if len(by_value) == 1:
        (value,) = by_value
        return f"{', '.join(entry['methods'])}; default {value}"
    return "; ".join(f"{', '.join(ms)}: default {v}" for v, ms in by_value.items())


def add_method_arguments(group: Any, methods: Any = None) -> list[str]:
    """Add one flag per option field of ``methods`` (default every registered method).

    Returns
    -------
    list of str
        The option names added (``args`` attributes, present only when given).
    """
    names = []
    for name, entry in option_fields(methods).items():
        flag = "--" + name.replace("_", "-")
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": name}
        kw["help"] = f"{entry['help']} ({_default_text(entry)})".replace("%", "%%")
        if entry["type"] is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = entry["type"]
            kw["metavar"] = name.split("_")[-1].upper() if not entry["choices"] else None
            if entry["choices"]:
                kw["choices"] = entry["choices"]
        group.add_argument(flag, **kw)
        names.append(name)
    return names


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method-option flags given on the command line (all methods)."""
    return {n: getattr(args, n) for n in option_fields() if hasattr(args, n)}


def options_for(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The given method-option flags for one method.

    Raises
    ------
    ModelError
        A flag the method does not take (e.g. ``--n-init`` with a deep method).
    """
    from napari_gmmseg.errors import ModelError

    spec = get_method(method)
    given = given_options(args)
    stray = [n for n in given if not spec.accepts(n)]
    if stray:
        flags = ", ".join("--" + n.replace("_", "-") for n in stray)
        raise ModelError(f"{flags} does not apply to method {spec.name}")
    return given
