"""Settings dataclasses as the single source of a setting.

A setting's type, default, help text, allowed values and range live on its dataclass field (:func:`setting`);
everything else is generated from the field: validation (:func:`check`, called by each dataclass's
``__post_init__``), reading a mapping such as a YAML recipe (:func:`from_mapping`), the command-line flags
(:func:`add_flags` / :func:`given`), the command line that repeats a run (:func:`to_argv`) and the GUI form
(``gencnn_gui.form``). Adding a setting is adding a field.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

__all__ = ["Setting", "SettingsError", "setting", "settings_of", "check", "from_mapping", "add_flags", "given",
           "to_argv", "flag_name"]


class SettingsError(ValueError):
    """A value that a setting does not accept; the message starts with the setting's name."""


@dataclass(frozen=True)
class Setting:
    """What a field says about itself besides its type and default.

    ``ge``/``gt``/``le``/``lt`` bound numbers (inclusive/exclusive); ``choices`` lists the allowed values;
    ``aliases`` are old names (config keys and ``--flags``) still accepted for one release, with a FutureWarning
    (shown to users by default);
    ``legacy`` maps old values to new ones (e.g. precision ``none`` -> ``fp32``); ``flag``/``gui`` say whether the
    setting appears on the command line / in the desktop app's form; ``label`` is the form's label.
    """

    help: str
    choices: tuple[Any, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    aliases: tuple[str, ...] = ()
    legacy: Mapping[Any, Any] | None = None
    flag: bool = True
    gui: bool = True
    label: str | None = None
    metavar: str | None = None
    suggest: tuple[Any, ...] | None = None  # usual values of a free-text setting (the GUI offers them)


def setting(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field carrying a :class:`Setting` (mutable defaults are copied per instance)."""
    meta = {"setting": Setting(help=help, **spec)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def settings_of(cls_or_obj: Any) -> list[tuple[dataclasses.Field, Any, Setting]]:
    """(field, type hint, Setting) for every field of a settings dataclass that carries a Setting."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name], f.metadata["setting"]) for f in dataclasses.fields(cls) if "setting" in f.metadata]


def flag_name(name: str) -> str:
    """``leapfrog_steps`` -> ``--leapfrog-steps``."""
    return "--" + name.replace("_", "-")


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type: ints pass for floats, YAML strings like '1e-4' become floats, tuples lists."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return coerce(key, value, opt)
            except SettingsError as e:
                errors.append(str(e))
        raise SettingsError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{key}: expected a list, got {_show(value)}")
        if len(value) > 4096:
            raise SettingsError(f"{key}: a list of {len(value)} items is too long")
        item = typing.get_args(hint)[0] if typing.get_args(hint) else Any
        items = [coerce(key, v, item) for v in value] if item is not Any else list(value)
        return items if origin is list else tuple(items)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"{key}: expected a mapping, got {_show(value)}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise SettingsError(f"{key}: {_show(value)} is too large") from None
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise SettingsError(f"{key}: expected {_hint_name(hint)}, got {type(value).__name__} {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(name: str, value: Any, spec: Setting) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{name}: must be a finite number, got {value}")
    if spec.choices is not None and value not in spec.choices:
        raise SettingsError(f"{name}: {value!r} is not one of {', '.join(map(str, spec.choices))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bounds = [(spec.ge, ">=", value >= spec.ge if spec.ge is not None else True),
                  (spec.gt, ">", value > spec.gt if spec.gt is not None else True),
                  (spec.le, "<=", value <= spec.le if spec.le is not None else True),
                  (spec.lt, "<", value < spec.lt if spec.lt is not None else True)]
        for bound, op, ok in bounds:
            if not ok:
                raise SettingsError(f"{name}: must be {op} {bound:g}, got {value:g}")


def check(obj: Any) -> None:
    """Coerce every field of ``obj`` to its type and check its choices and range (from ``__post_init__``)."""
    for f, hint, spec in settings_of(obj):
        value = getattr(obj, f.name)
        value = coerce(f.name, legacy_value(spec.legacy, value), hint)
        _check_value(f.name, value, spec)
        object.__setattr__(obj, f.name, value)


def _renames(cls: type) -> dict[str, str]:
    return {alias.lstrip("-").replace("-", "_"): f.name for f, _, spec in settings_of(cls) for alias in spec.aliases}


def from_mapping(cls: type, values: Mapping[str, Any], base: Any = None) -> Any:
    """A validated ``cls``: ``base`` (or the defaults) updated with ``values``; unknown keys name close ones, old
    names (a field's ``aliases``) are renamed with a FutureWarning."""
    names = [f.name for f in dataclasses.fields(cls)]
    renames = _renames(cls)
    out = dataclasses.asdict(base) if base is not None else {}
    for key, value in values.items():
        key = str(key)
        if key in renames:
            warnings.warn(f"config key {key!r} is deprecated; use {renames[key]!r}", FutureWarning, stacklevel=2)
            key = renames[key]
        if key not in names:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SettingsError(f"unknown config key {key!r}{hint}")
        out[key] = value
    try:
        return cls(**out)
    except TypeError as e:  # a field without a default and no value
        raise SettingsError(str(e)) from None


class _Deprecated(argparse.Action):
    """An old flag name: stores into the new destination and warns once."""

    def __init__(self, option_strings, dest, new: str = "", legacy: Mapping | None = None, **kw) -> None:
        self.new, self.legacy = new, legacy or {}
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        warnings.warn(f"{option_string} is deprecated; use {self.new}", FutureWarning, stacklevel=2)
        if self.nargs == 0:
            values = self.const
        setattr(namespace, self.dest, self.legacy.get(values, values))


def add_flags(group: Any, cls: type, skip: tuple[str, ...] = (), help_suffix: str = "") -> None:
    """One ``--flag`` per field of ``cls`` (except ``skip`` and fields with ``flag=False``), default None so that
    only what the user gave overrides a preset or recipe. Bools become ``--x/--no-x``, lists ``nargs='+'``."""
    for f, hint, spec in settings_of(cls):
        if f.name in skip or not spec.flag:
            continue
        base = _base_type(hint)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        note = f" (default: {_fmt_default(default)}{help_suffix})" if default is not None or help_suffix else ""
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": spec.help + note}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            item = typing.get_args(base)[0] if typing.get_origin(base) in (list, tuple) else base
            kw["type"] = {int: int, float: float}.get(item, str)
            if typing.get_origin(base) in (list, tuple):
                kw["nargs"] = "+"
            if spec.choices is not None:
                kw["choices"] = list(spec.choices)
            if spec.metavar:
                kw["metavar"] = spec.metavar
            was_bool = base is str and spec.legacy is not None and {True, False} <= set(spec.legacy)
            if was_bool:  # once an on/off flag: a bare --x, --no-x and --x true/false still parse
                kw.update(nargs="?", const=spec.legacy[True], type=partial(legacy_value, spec.legacy))
                group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_const",
                                   const=spec.legacy[False], default=None, help=argparse.SUPPRESS)
        group.add_argument(flag_name(f.name), **kw)
        for alias in spec.aliases:
            alias_flag = alias if alias.startswith("--") else flag_name(alias)
            extra = {"nargs": 0, "const": True} if base is bool else {"type": kw.get("type", str)}
            group.add_argument(alias_flag, action=_Deprecated, dest=f.name, new=flag_name(f.name),
                               legacy=spec.legacy, default=None, help=argparse.SUPPRESS, **extra)


def legacy_value(legacy: Mapping[Any, Any] | None, value: Any) -> Any:
    """``value`` as today's setting reads it: an old value mapped by ``legacy``, the words of an old boolean
    (true/false, yes/no, 1/0, as a command line or QSettings gives them back) included; anything else unchanged."""
    if not legacy:
        return value
    if isinstance(value, str):
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        word = words.get(value.strip().lower())
        if word is not None and word in legacy:
            return legacy[word]
    return legacy[value] if isinstance(value, typing.Hashable) and value in legacy else value


def _base_type(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _fmt_default(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "[]"
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)  # exact, so a reproduce-command reproduces
    return str(value)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of ``cls`` that were given on the command line (flags generated by :func:`add_flags`)."""
    return {f.name: getattr(args, f.name) for f, _, spec in settings_of(cls)
            if spec.flag and getattr(args, f.name, None) is not None}


def to_argv(obj: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that set every command-line setting of ``obj`` to its value (the reproduce-command's part)."""
    argv: list[str] = []
    for f, hint, spec in settings_of(obj):
        value = getattr(obj, f.name)
        if f.name in skip or not spec.flag or value is None:
            continue
        if _base_type(hint) is bool:
            argv.append(flag_name(f.name) if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            argv += [flag_name(f.name), *map(_fmt_default, value)]
        else:
            argv += [flag_name(f.name), _fmt_default(value)]
    return argv
