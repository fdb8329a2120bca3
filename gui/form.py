"""A Qt form generated from a settings dataclass (:mod:`gencnn_plugin.settings`): one widget per field, labelled,
ranged and typed as the field says, so a new setting appears in the app with nothing else edited."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QAbstractSpinBox, QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QSpinBox, QWidget

from gencnn_plugin.settings import settings_of

__all__ = ["SettingsForm"]

_INT_MAX = 2**31 - 1


def _base(hint: Any) -> Any:
    import types
    import typing

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


class SettingsForm(QWidget):
    """Widgets for the GUI-visible fields of ``cls``; ``values()`` reads them, ``set_values(obj)`` fills them."""

    changed = Signal()

    def __init__(self, cls: type, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.cls = cls
        self.widgets: dict[str, QWidget] = {}
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
            w = QSpinBox()
            lo = spec.ge if spec.ge is not None else (spec.gt + 1 if spec.gt is not None else 0)
            hi = spec.le if spec.le is not None else _INT_MAX
            w.setRange(int(max(lo, -_INT_MAX)), int(min(hi, _INT_MAX)))
            w.valueChanged.connect(self.changed)
            return w
        if base is float:
            w = QDoubleSpinBox()
            w.setDecimals(5)
            lo = spec.ge if spec.ge is not None else (spec.gt if spec.gt is not None else -1e9)
            if spec.gt is not None:
                lo = max(lo, 1e-5)  # the smallest step the box shows
            hi = spec.le if spec.le is not None else (spec.lt if spec.lt is not None else 1e9)
            if spec.lt is not None:
                hi = math.nextafter(hi, -math.inf) if spec.lt == hi else hi
                hi = min(hi, spec.lt - 1e-5)
            w.setRange(lo, min(hi, 1e9))
            w.setStepType(QAbstractSpinBox.AdaptiveDecimalStepType)
            w.valueChanged.connect(self.changed)
            return w
        w = QComboBox()  # free text: an editable combo box keeps the layout uniform
        w.setEditable(True)
        w.currentTextChanged.connect(self.changed)
        return w

    def widget(self, name: str) -> QWidget:
        return self.widgets[name]

    def values(self) -> dict[str, Any]:
        """The shown values, by field name."""
        out: dict[str, Any] = {}
        for name, w in self.widgets.items():
            if isinstance(w, QComboBox):
                out[name] = w.currentText()
            elif isinstance(w, QCheckBox):
                out[name] = w.isChecked()
            else:
                out[name] = w.value()
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
            w.setCurrentText(str(value))
        elif isinstance(w, QCheckBox):
            w.setChecked(value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes"))
        elif isinstance(w, QSpinBox):
            w.setValue(int(float(value)))
        else:
            w.setValue(float(value))
