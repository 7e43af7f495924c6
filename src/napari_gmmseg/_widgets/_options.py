"""The Segment dock's method-option rows, built with magicgui from the options dataclasses.

One :class:`magicgui.widgets.Container` per options dataclass of the registry
(:mod:`napari_gmmseg.methods`): a ComboBox for a field with ``choices``, a CheckBox
for a bool, a SpinBox for an int and a line edit for a float (so ``1e-4`` stays
readable). Fields the dock shows elsewhere (restarts, the epoch limit, the model
file) or that have no value to show (``None`` defaults, arrays) carry
``metadata["dock"] = False`` or are left out. Only values changed from the default
reach :func:`~napari_gmmseg.segment.segment`, so the options of a run are the ones
the user set.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from napari_gmmseg.errors import ModelError
from napari_gmmseg.methods import get_method, option_fields

__all__ = ["MethodOptionsForm"]


def _dock_fields(options: type) -> list[dataclasses.Field]:
    """Fields of ``options`` the dock shows as rows."""
    scalars = option_fields()
    hints = typing.get_type_hints(options)
    out = []
    for f in dataclasses.fields(options):
        if f.metadata.get("dock", True) is False or f.default is None or f.name not in scalars:
            continue
        if hints.get(f.name) is not None:
            out.append(f)
    return out


def _widget(f: dataclasses.Field) -> Any:
    """The magicgui widget of one option field, showing its default."""
    from magicgui.widgets import create_widget

    label = f.name.replace("_", " ")
    tip = f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    if choices:
        w = create_widget(f.default, name=f.name, label=label, options={"choices": choices})
    elif isinstance(f.default, bool):
        w = create_widget(f.default, annotation=bool, name=f.name, label=label)
    elif isinstance(f.default, int):
        opts = {"min": 0, "max": 1_000_000}
        w = create_widget(f.default, annotation=int, name=f.name, label=label, options=opts)
    else:  # float: a line edit keeps 1e-4 readable (a spin box shows 2 decimals)
        w = create_widget(repr(f.default), annotation=str, name=f.name, label=label)
    w.tooltip = tip
    return w


class MethodOptionsForm:
    """Rows for the options of the chosen method; :meth:`values` gives the changed ones."""

    def __init__(self) -> None:
        from magicgui.widgets import Container

        self.container = Container(labels=True)
        self.container.margins = (0, 0, 0, 0)
        self._forms: dict[type, Any] = {}
        self._method: str | None = None

    @property
    def native(self) -> Any:
        """The Qt widget to put in the dock."""
        return self.container.native

    def show_method(self, method: str) -> None:
        """Show the rows of ``method``'s options dataclass (built once per dataclass)."""
        from magicgui.widgets import Container

        options = get_method(method).options
        if options not in self._forms:
            form = Container(widgets=[_widget(f) for f in _dock_fields(options)], labels=True)
            form.margins = (0, 0, 0, 0)
            self._forms[options] = form
            self.container.append(form)
        for cls, form in self._forms.items():
            form.visible = cls is options
        self._method = method

    def widget(self, name: str) -> Any:
        """The row widget of option ``name`` of the shown method."""
        return getattr(self._forms[get_method(self._method).options], name)

    def values(self) -> dict[str, Any]:
        """The options of the shown method that differ from their defaults, validated.

        Raises
        ------
        ModelError
            A value that is not a number, or that the options dataclass refuses.
        """
        if self._method is None:
            return {}
        spec = get_method(self._method)
        out: dict[str, Any] = {}
        for f in _dock_fields(spec.options):
            value = self.widget(f.name).value
            if isinstance(f.default, float) and not isinstance(f.default, bool):
                try:
                    value = float(value)
                except ValueError:
                    raise ModelError(f"{f.name} must be a number, got {value!r}") from None
            if value != f.default:
                out[f.name] = value
        spec.make_options(out)  # the dataclass checks the values
        return out
