"""Typed settings: one frozen dataclass per recipe (student, teacher, dump), resolved in one documented order.

Every setting is a dataclass field declared with ``setting(default, source, ...)``: its type is the
annotation, its default the value that keeps the published behaviour, its comment the reference it
comes from, and its range the values it accepts. ``Settings.resolve`` is the only way in:

1. the dataclass defaults;
2. values recorded in the store, for fields whose default ``None`` means "the store's" (``recorded``);
3. the user's overrides (named options and ``--set KEY=VALUE``), which win.

Overrides are checked before any work: an unknown key lists the valid ones; a value of the wrong type
is one line naming the key, the value and the expected type (``epochs=1.5`` for an int is an error,
``temperature=4`` for a float is fine); a value out of range names the range.

Run ids hash ``Resolved.requested``: the defaults and the overrides *as given* (``--set temperature=4``
hashes the int 4, as it always has; the typed value is the float 4.0), without the store's values
(a student that takes the store's tokenizer has ``tokenizer: null`` in its id, as before). A setting
added after the first release is declared with ``since=``: it enters ``requested``, and so the run id,
only when it differs from its default, so existing run ids stay valid.

``Resolved.canonical`` is ``requested`` with every value in its declared type (4 and 4.0 are one float,
``[1, 2]`` and ``[1.0, 2.0]`` one list): what experiments are keyed by, and the alias under which a run
is found whatever the spelling of its settings (``students.run``).
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from .errors import MtdError

S = TypeVar("S", bound="Settings")

LayerList = tuple[int, ...]  # "0,6", 6 or [0, 6] in overrides; a tuple of ints once resolved

# key -> how the user typed it ("--batch-size 0", "--set lr=abc"): set by the command line, read by messages
_TYPED: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("typed", default=types.MappingProxyType({}))


@contextmanager
def typed_as(names: Mapping[str, str]) -> Iterator[None]:
    """Within the block, a bad setting ``key`` is named as the user typed it (``names[key]``)."""
    token = _TYPED.set({**_TYPED.get(), **names})
    try:
        yield
    finally:
        _TYPED.reset(token)


def _label(what: str, key: str, raw: Any) -> str:
    return _TYPED.get().get(key) or f"{what} setting {key}={raw!r}"


def setting(default: Any, source: str = "", *, low: float | None = None, high: float | None = None,
            above: float | None = None, below: float | None = None, choices: tuple[Any, ...] = (),
            since: str | None = None, keep: bool = True) -> Any:
    """A settings field: default, where the default comes from, and the accepted range.

    ``low``/``high`` are inclusive bounds, ``above``/``below`` exclusive ones; ``choices`` the
    allowed values. ``since`` names the version that added the setting (it then enters run ids
    only when changed). ``keep=False`` marks a setting that does not change results (batch sizes of
    inference, prefetch depth): it is recorded but, with ``since``, never hashed.
    """
    meta = {"source": source, "low": low, "high": high, "above": above, "below": below, "choices": tuple(choices),
            "since": since, "keep": keep}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Resolved(Generic[S]):
    """Typed settings plus what identifies them: ``requested`` is hashed into run ids, as given; ``canonical``
    holds the same keys, each value in its declared type (JSON: tuples as lists)."""

    settings: S
    requested: dict[str, Any]
    canonical: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """Base of every settings dataclass. Subclasses set ``WHAT`` (named in error messages)."""

    WHAT: ClassVar[str] = "recipe"
    UNKNOWN: ClassVar[str] = "unknown {what} setting {key!r}"  # how an unknown key is named

    # ------------------------------------------------------------------------ description
    @classmethod
    def fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in cls.fields())

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: _default(f) for f in cls.fields()}

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One row per setting: key, type, default, range and source (``--help-settings``, docs/settings.md)."""
        hints = _hints(cls)
        return [{"key": f.name, "type": _type_name(hints[f.name]), "default": _default(f),
                 "range": _range_text(f.metadata), "source": f.metadata.get("source", "")} for f in cls.fields()]

    # ------------------------------------------------------------------------ resolving
    @classmethod
    def resolve(cls: type[S], overrides: Mapping[str, Any] | None = None,
                recorded: Mapping[str, Any] | None = None) -> Resolved[S]:
        """Defaults, then store-recorded values for ``None`` defaults, then ``overrides`` (None values ignored)."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = sorted(set(given) - set(cls.keys()))
        if unknown:
            first = cls.UNKNOWN.format(what=cls.WHAT, key=unknown[0])
            raise MtdError(f"{first}; valid: {', '.join(sorted(cls.keys()))}")
        hints = _hints(cls)
        values, requested = {}, {}
        for f in cls.fields():
            default = _default(f)
            if f.name in given:
                raw = given[f.name]
                values[f.name] = _check(cls.WHAT, f, hints[f.name], raw)
            else:
                raw = default
                values[f.name] = _coerce(f.name, hints[f.name], default, cls.WHAT) if default is not None else None
            if recorded and values[f.name] is None and recorded.get(f.name) is not None:
                values[f.name] = _coerce(f.name, hints[f.name], recorded[f.name], cls.WHAT)
            if f.metadata.get("since") is None or (raw != default and f.metadata.get("keep", True)):
                requested[f.name] = raw
        settings = cls(**values)
        settings.check()
        return Resolved(settings, requested, cls.canonical(requested))

    @classmethod
    def canonical(cls, requested: Mapping[str, Any]) -> dict[str, Any]:
        """``requested`` with each known value in its declared type, as JSON (``4`` -> ``4.0`` for a float,
        ``(0, 6)`` -> ``[0, 6]``); unknown keys, and values that no longer fit their type (a record written by an
        older version), are kept as they are."""
        hints = _hints(cls)
        out = {}
        for key, value in requested.items():
            try:
                typed = _coerce(key, hints[key], value, cls.WHAT) if key in hints else value
            except MtdError:
                typed = value
            out[key] = list(typed) if isinstance(typed, tuple) else typed
        return out

    def check(self) -> None:
        """Rules across settings; subclasses extend it (one line naming the settings)."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.fields()}


# ---------------------------------------------------------------------------- types and ranges


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, globalns={**vars(typing), "LayerList": LayerList})


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def _optional(hint: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True  # noqa: UP007 - built at run time
    return hint, False


def _type_name(hint: Any) -> str:
    base, optional = _optional(hint)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "text", LayerList: "layers (e.g. 0,6)"}
    name = names.get(base) or ("list of floats" if typing.get_origin(base) is list else str(base))
    return f"{name} or null" if optional else name


def _coerce(key: str, hint: Any, value: Any, what: str) -> Any:
    """``value`` as the field's type; MtdError naming key, value and type when it is not one."""
    base, optional = _optional(hint)
    if value is None:
        if optional:
            return None
        raise MtdError(f"{_label(what, key, None)}: expected {_type_name(hint)}")

    def bad() -> MtdError:
        return MtdError(f"{_label(what, key, value)}: expected {_type_name(hint)}")

    if base is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise bad()
    if base is str:
        if isinstance(value, str):
            return value
        raise bad()
    if base == LayerList:
        return _layers(value, bad)
    if typing.get_origin(base) is list:  # list[float], from a list or "1,2,4"
        if isinstance(value, str):
            try:
                value = [float(p) for p in value.replace(" ", "").split(",") if p]
            except ValueError:
                raise bad() from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in value):
            return [float(v) for v in value]
        raise bad()
    if typing.get_origin(base) is typing.Union:  # e.g. str | bool: the first type that takes the value
        for option in typing.get_args(base):
            try:
                return _coerce(key, option, value, what)
            except MtdError:
                continue
        raise bad()
    raise TypeError(f"setting {key}: unsupported type {hint}")


def _layers(value: Any, bad) -> tuple[int, ...]:
    """A layer list from "0,6", 6 or [0, 6]."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        if not all(p.lstrip("-").isdigit() for p in parts):
            raise bad()
        return tuple(int(p) for p in parts)
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    raise bad()


def _check(what: str, f: dataclasses.Field, hint: Any, raw: Any) -> Any:
    value = _coerce(f.name, hint, raw, what)
    meta = f.metadata
    if meta.get("choices") and value is not None and value not in meta["choices"]:
        typed = _TYPED.get().get(f.name)
        raise MtdError(f"unknown {f.name} {raw!r}; valid: {_choices(meta)}" + (f" ({typed})" if typed else ""))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not _in_range(value, meta):
        raise MtdError(f"{_label(what, f.name, raw)} is out of range: expected {_range_text(meta)}")
    return value


def _in_range(v: float, meta: Mapping[str, Any]) -> bool:
    return not ((meta.get("low") is not None and v < meta["low"]) or (meta.get("high") is not None and v > meta["high"])
                or (meta.get("above") is not None and v <= meta["above"])
                or (meta.get("below") is not None and v >= meta["below"]))


def _choices(meta: Mapping[str, Any]) -> str:
    return ", ".join(map(str, meta["choices"]))


def _range_text(meta: Mapping[str, Any]) -> str:
    if meta.get("choices"):
        return "one of " + _choices(meta)
    parts = []
    if meta.get("low") is not None:
        parts.append(f">= {meta['low']:g}")
    if meta.get("above") is not None:
        parts.append(f"> {meta['above']:g}")
    if meta.get("high") is not None:
        parts.append(f"<= {meta['high']:g}")
    if meta.get("below") is not None:
        parts.append(f"< {meta['below']:g}")
    return " and ".join(parts)


def settings_table(cls: type[Settings]) -> str:
    """A markdown table of ``cls``'s settings (``mtd-train --help-settings``; docs/settings.md)."""
    rows = ["| setting | type | default | accepted | source |", "|---|---|---|---|---|"]
    for r in cls.describe():
        rows.append(f"| `{r['key']}` | {r['type']} | `{r['default']!r}` | {r['range']} | {r['source']} |")
    return "\n".join(rows) + "\n"
