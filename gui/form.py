"""A Qt form generated from a settings dataclass (:mod:`gencnn_plugin.settings`): one widget per field, labelled,
ranged and typed as the field says, so a new setting appears in the app with nothing else edited."""

from __future__ import annotations

import dataclasses
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLineEdit, QSpinBox, QWidget

from gencnn_plugin.settings import legacy_value, settings_of

__all__ = ["SettingsForm", "NumberEdit"]

_INT_MAX = 2**31 - 1


def _base(hint: Any) -> Any:
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


class NumberEdit(QLineEdit):
    """A number typed in full (``2e-06``, ``0.0123456789``, ``4000000000``): no rounding to a spin box's decimals or
    its 32-bit range, so the app runs exactly the settings a preset or the CLI would. ``value()`` raises ValueError
    for text that is not a number; the field's range is checked by the settings dataclass."""

    valueChanged = Signal()  # noqa: N815 (Qt's naming, as QSpinBox's)

    def __init__(self, kind: type) -> None:
        super().__init__()
        self.kind = kind
        self.textChanged.connect(self.valueChanged)

    def value(self) -> float | int:
        text = self.text().strip()
        try:
            return int(text) if self.kind is int else float(text)
        except ValueError:
            raise ValueError(f"{self.objectName().replace('_', ' ')}: {text!r} is not a number") from None

    def setValue(self, value) -> None:  # noqa: N802 (Qt's naming)
        number = self.kind(value if self.kind is not int else float(value))
        self.setText(str(number) if self.kind is int else f"{number:.12g}")


class SettingsForm(QWidget):
    """Widgets for the GUI-visible fields of ``cls``; ``values()`` reads them, ``set_values(obj)`` fills them."""

    changed = Signal()

    def __init__(self, cls: type, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.cls = cls
        self.widgets: dict[str, QWidget] = {}
        self.specs = {f.name: spec for f, _, spec in settings_of(cls)}
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for f, hint, spec in settings_of(cls):
            if not spec.gui:
                continue
            w = self._widget(_base(hint), spec)
            w.setToolTip(spec.help)
            w.setObjectName(f.name)
            self.widgets[f.name] = w
            layout.addRow(spec.label or f.name.replace("_", " "), w)

    def _widget(self, base: Any, spec) -> QWidget:
        if spec.choices is not None:
            w = QComboBox()
            w.addItems([str(c) for c in spec.choices])
            w.currentIndexChanged.connect(self.changed)
            return w
        if base is bool:
            w = QCheckBox()
            w.toggled.connect(self.changed)
            return w
        if base is int:
            lo = spec.ge if spec.ge is not None else (spec.gt + 1 if spec.gt is not None else 0)
            hi = spec.le if spec.le is not None else _INT_MAX
            if -_INT_MAX <= lo and hi <= _INT_MAX:  # a spin box holds 32-bit integers
                w = QSpinBox()
                w.setRange(int(lo), int(hi))
            else:
                w = NumberEdit(int)
            w.valueChanged.connect(self.changed)
            return w
        if base is float:
            w = NumberEdit(float)
            w.valueChanged.connect(self.changed)
            return w
        w = QComboBox()  # free text: an editable combo box offering the usual values
        w.setEditable(True)
        w.addItems([str(v) for v in spec.suggest or ()])
        w.currentTextChanged.connect(self.changed)
        return w

    def widget(self, name: str) -> QWidget:
        return self.widgets[name]

    def values(self, strict: bool = True) -> dict[str, Any]:
        """The shown values, by field name. A number field holding text that is not a number raises ValueError,
        or is left out with ``strict=False`` (saving settings)."""
        out: dict[str, Any] = {}
        for name, w in self.widgets.items():
            if isinstance(w, QComboBox):
                out[name] = w.currentText()
            elif isinstance(w, QCheckBox):
                out[name] = w.isChecked()
            else:
                try:
                    out[name] = w.value()
                except ValueError:
                    if strict:
                        raise
        return out

    def set_values(self, obj: Any) -> None:
        """Show the field values of a ``cls`` instance (or a mapping), without emitting ``changed`` per widget."""
        values = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
        for name, w in self.widgets.items():
            if name not in values or values[name] is None:
                continue
            w.blockSignals(True)
            try:
                self.set_value(name, values[name])
            finally:
                w.blockSignals(False)
        self.changed.emit()

    def set_value(self, name: str, value: Any) -> None:
        """One widget's value; strings (as QSettings returns them) are converted to the widget's type."""
        w = self.widgets[name]
        if isinstance(w, QComboBox):
            w.setCurrentText(str(legacy_value(self.specs[name].legacy, value)))  # an old value: today's
        elif isinstance(w, QCheckBox):
            w.setChecked(value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes"))
        elif isinstance(w, QSpinBox):
            number = int(float(value))
            if not w.minimum() <= number <= w.maximum():
                raise ValueError(f"{name}: {number} is outside {w.minimum()}..{w.maximum()}")
            w.setValue(number)
        else:
            w.setValue(value)
