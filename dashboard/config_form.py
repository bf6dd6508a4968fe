"""Widgets generated from a defense's config dataclass.

:func:`describe_fields` turns the frozen config dataclass (the papers' defaults) into plain field
descriptions; :func:`render` draws one widget per field and returns only the values the user
changed, so a run's config.json records what was asked and the engine fills in the defaults.
Nothing here knows a particular defense: new fields and new defenses get widgets for free.

A field may carry ``metadata={"choices": (...), "min": ..., "max": ..., "help": "..."}``; without
it, help comes from the field's comment in the source, and a text field offers as choices the
quoted words of that comment that the config accepts.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from defenses.base import ConfigError, config_from_dict, parse_list
from defenses.labels import field_label


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # "bool", "int", "float", "optional" (a number or None), "choice", "text", "tuple"
    default: Any
    optional: bool = False  # None is allowed (an empty box means None)
    item: type | None = None  # a tuple's element type, or an optional number's type
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    help: str = ""


def _comments(config_cls) -> dict[str, str]:
    try:
        src = inspect.getsource(config_cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^=]+=.*?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _unwrap(tp) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), True
    return tp, False


def _valid(config_cls, name: str, value) -> bool:
    try:
        config_from_dict(config_cls, {name: value})
        return True
    except (ConfigError, ValueError, TypeError):
        return False


def _unit_interval(config_cls, name: str) -> bool:
    return (_valid(config_cls, name, 1.0) and _valid(config_cls, name, 0.5) and not _valid(config_cls, name, 1.000001)
            and not _valid(config_cls, name, -0.000001))


def parse_optional(text: str, item: type, name: str):
    """A number typed in a box, or None for an empty box."""
    text = (text or "").strip()
    if not text or text.lower() == "none":
        return None
    try:
        return item(float(text)) if item is int and float(text).is_integer() else item(text)
    except ValueError:
        raise ConfigError(f"{name} must be a {'whole ' if item is int else ''}number or empty, got {text!r}.") from None


def describe_fields(config_cls) -> list[FieldSpec]:
    hints = typing.get_type_hints(config_cls)
    notes = _comments(config_cls)
    specs = []
    for f in dataclasses.fields(config_cls):
        tp, optional = _unwrap(hints.get(f.name, type(f.default)))
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        meta = dict(f.metadata or {})
        help_text = meta.get("help") or notes.get(f.name, "")
        common = dict(name=f.name, default=default, optional=optional, help=help_text, low=meta.get("min"),
                      high=meta.get("max"))
        origin = typing.get_origin(tp)
        if meta.get("choices"):
            specs.append(FieldSpec(kind="choice", choices=tuple(meta["choices"]), **common))
        elif tp is bool:
            specs.append(FieldSpec(kind="bool", **common))
        elif tp in (int, float) and (optional or default is None):
            specs.append(FieldSpec(kind="optional", item=tp, **common))
        elif tp is int:
            specs.append(FieldSpec(kind="int", **common))
        elif tp is float:
            if common["low"] is None and round(default, 2) == default and _unit_interval(config_cls, f.name):
                # The config accepts exactly [0, 1] (or (0, 1]): a slider, as for Hölder's alpha.
                common.update(low=0.0 if _valid(config_cls, f.name, 0.0) else 0.01, high=1.0)
            specs.append(FieldSpec(kind="float", **common))
        elif origin is tuple or tp is tuple:
            args = [a for a in typing.get_args(tp) if a is not Ellipsis]
            specs.append(FieldSpec(kind="tuple", item=args[0] if args else str, **common))
        elif tp is str and isinstance(default, str):
            quoted = tuple(dict.fromkeys(re.findall(r'"([\w\-.]+)"', help_text)))
            choices = tuple(c for c in quoted if _valid(config_cls, f.name, c))
            if default in choices and len(choices) > 1:
                specs.append(FieldSpec(kind="choice", choices=choices, **common))
            else:
                specs.append(FieldSpec(kind="text", **common))
        else:
            specs.append(FieldSpec(kind="text", **common))
    return specs


def parse_tuple(text: str, item: type, name: str, optional: bool):
    """Comma-separated values into a tuple of ``item``; empty means None when allowed."""
    if not (text or "").strip().strip("()[]"):
        return None if optional else ()
    return parse_list(text, item, name)


def format_tuple(value) -> str:
    return "" if value is None else ", ".join(str(v) for v in value)


def changed(specs: list[FieldSpec], values: dict) -> dict:
    """Only the values that differ from the defaults (tuples compared as tuples)."""
    out = {}
    for s in specs:
        v = values.get(s.name, s.default)
        d = s.default
        if isinstance(v, (list, tuple)) and isinstance(d, (list, tuple)):
            same = tuple(v) == tuple(d)
        else:
            same = v == d and type(v) is type(d)
        if not same:
            out[s.name] = v
    return out


def widget_key(defense: str, field: str) -> str:
    return f"cfg_{defense}_{field}"


# The fields that set how long a defense learns: below the paper's value, the page says so.
BUDGET_FIELDS = ("iterations", "unlearn_epochs", "recover_epochs")


def paper_defaults(config_cls) -> dict:
    """Every field's default: the paper's value."""
    return {f.name: f.default for f in dataclasses.fields(config_cls)}


def below_paper(config_cls, params: dict) -> list[str]:
    """"iterations 100 (paper 2000)" for each budget field set below the config's default."""
    defaults = paper_defaults(config_cls)
    out = []
    for name in BUDGET_FIELDS:
        v, d = params.get(name), defaults.get(name)
        if isinstance(v, (int, float)) and isinstance(d, (int, float)) and v < d:
            out.append(f"{field_label(name).lower()} {v:g}, the paper's {d:g}")
    return out


def render(defense: str, config_cls, columns: int = 3) -> dict:
    """One widget per config field (keys ``cfg_<defense>_<field>``); returns the changed values.
    Raises ConfigError for a tuple typed wrongly.

    A widget's starting value goes into Session State, never into its ``value`` argument: a preset
    (the demo budget) writes Session State too, and Streamlit warns when a widget gets both."""
    import streamlit as st

    specs = describe_fields(config_cls)
    values = {}
    cols = st.columns(columns)
    for i, s in enumerate(specs):
        key = widget_key(defense, s.name)
        label, tip = field_label(s.name), (f"`{s.name}`: " + (s.help or "")).rstrip(": ")
        if key not in st.session_state:
            st.session_state[key] = _widget_default(s)
        with cols[i % columns]:
            if s.kind == "bool":
                values[s.name] = st.checkbox(label, key=key, help=tip)
            elif s.kind == "int":
                values[s.name] = int(st.number_input(label, step=1, key=key,
                                                     min_value=None if s.low is None else int(s.low),
                                                     max_value=None if s.high is None else int(s.high), help=tip))
            elif s.kind == "float":
                if s.low is not None and s.high is not None:
                    values[s.name] = float(st.slider(label, float(s.low), float(s.high), step=0.01, key=key, help=tip))
                else:
                    values[s.name] = float(st.number_input(label, key=key, format="%g", step=_step(float(s.default)),
                                                           help=tip))
            elif s.kind == "choice":
                values[s.name] = st.selectbox(label, s.choices, key=key, help=tip)
            elif s.kind == "optional":
                text = st.text_input(label, key=key, help=tip + " Empty means none.")
                values[s.name] = parse_optional(text, s.item or float, s.name)
            elif s.kind == "tuple":
                text = st.text_input(label, key=key, help=tip + " Comma-separated"
                                     + ("; empty means none." if s.optional else "."))
                values[s.name] = parse_tuple(text, s.item or str, s.name, s.optional)
            else:
                text = st.text_input(label, key=key, help=tip)
                values[s.name] = None if (s.optional and not text.strip()) else text
    return changed(specs, values)


def _widget_default(s: FieldSpec):
    """The value a field's widget starts at, in the widget's own type."""
    if s.kind == "bool":
        return bool(s.default)
    if s.kind == "int":
        return int(s.default)
    if s.kind == "float":
        return float(s.default)
    if s.kind == "choice":
        return s.default if s.default in s.choices else s.choices[0]
    if s.kind == "tuple":
        return format_tuple(s.default)
    return "" if s.default is None else str(s.default)


def _step(default: float) -> float:
    """A step of about a tenth of the default's order of magnitude (0.01 for 0.2, 1e-4 for 5e-4)."""
    import math

    if default == 0:
        return 0.01
    exponent = math.floor(math.log10(abs(default)))
    return float(10.0 ** (exponent - 1 if abs(default) < 1 else exponent))
