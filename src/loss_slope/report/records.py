"""Frozen records read from and written to ``stats.json``, and the error a malformed file raises.

A :class:`Record` is a frozen, keyword-only dataclass whose fields are the keys of one
JSON object, in the order they are written.  ``from_dict`` checks each value against
the field's annotation and converts nested objects into their records:

- a field without a default is a required key; a missing one raises :class:`StatsFormatError`;
- ``str``, ``int``, ``float``, ``bool``, ``X | None``, ``tuple[...]``, ``Mapping[str, X]`` and
  nested records are checked; a value of the wrong JSON kind raises :class:`StatsFormatError`;
- a record with an ``extra`` field keeps the keys it does not declare there (they are
  written back after the declared ones); a record without one rejects them.

The error names the offending key by its path from the top of the file
(``h2.overall.spearman_rho``).  ``to_dict`` writes every field in declaration order,
then ``extra``.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Any

__all__ = ["Record", "StatsFormatError", "convert", "empty", "freeze", "thaw"]


class StatsFormatError(ValueError):
    """``stats.json`` (or a section of it) lacks a key or holds a value of the wrong kind."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"stats.json: key {key!r} {problem}")


def freeze(value: Any) -> Any:
    """JSON value -> immutable: lists become tuples, objects read-only mappings."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze`; a record (anything with ``to_dict``) is written with its own."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def empty() -> Mapping:
    """The default of a mapping field: an empty read-only mapping."""
    return MappingProxyType({})


def _join(at: str, key: Any) -> str:
    return f"{at}.{key}" if at else str(key)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool before jsonable


_SCALARS = {
    str: (lambda v: isinstance(v, str), "a string"),
    int: (_is_int, "an integer"),
    float: (_is_number, "a number"),
    bool: (_is_bool, "true or false"),
}


def convert(value: Any, hint: Any, at: str) -> Any:
    """``value`` checked against the annotation ``hint`` and frozen; nested records built.

    Raises
    ------
    StatsFormatError
        ``value`` is not of the kind ``hint`` says; the key is ``at``.
    """
    if hint is Any:
        return freeze(value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return convert(value, option, at)
            except StatsFormatError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise StatsFormatError(at, f"must be one of {' | '.join(_name(o) for o in args)}, got {_kind(value)}")
    if value is None:
        raise StatsFormatError(at, f"must be {_name(hint)}, got null")
    if hint in _SCALARS:
        ok, what = _SCALARS[hint]
        if not ok(value):
            raise StatsFormatError(at, f"must be {what}, got {value!r} ({_kind(value)})")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise StatsFormatError(at, f"must be a list, got {_kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], _join(at, i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise StatsFormatError(at, f"must be a list of {len(args)} values, got {len(value)}")
        return tuple(convert(v, a, _join(at, i)) for i, (v, a) in enumerate(zip(value, args)))
    if origin is Mapping or hint is Mapping:
        if not isinstance(value, Mapping):
            raise StatsFormatError(at, f"must be an object, got {_kind(value)}")
        sub = args[1] if args else Any
        return MappingProxyType({k: convert(v, sub, _join(at, k)) for k, v in value.items()})
    if isinstance(hint, type) and hasattr(hint, "read"):
        return hint.read(value, at)
    raise TypeError(f"no JSON conversion for the annotation {hint!r} of {at!r}")  # a bug here, not in the file


def _name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if hint in _SCALARS:
        return _SCALARS[hint][1]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "a list"
    if origin is Mapping or hint is Mapping:
        return "an object"
    return getattr(hint, "__name__", str(hint))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Record:
    """``from_dict`` / ``to_dict`` for the frozen dataclasses of ``stats.json`` (see the module)."""

    @classmethod
    def read(cls, data: Any, at: str = ""):
        """``cls`` from the JSON object at key path ``at`` (:class:`StatsFormatError` when malformed)."""
        if not isinstance(data, Mapping):
            raise StatsFormatError(at or cls.__name__, f"must be an object, got {_kind(data)}")
        hints = _hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        keeps_extra = "extra" in fields
        rest = {k: v for k, v in data.items() if k not in fields or k == "extra"}
        if rest and not keeps_extra:
            raise StatsFormatError(_join(at, next(iter(rest))), f"is not a key of {cls.__name__}")
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            if name == "extra":
                continue
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise StatsFormatError(_join(at, name), f"is missing ({cls.__name__} requires it)")
                continue
            kwargs[name] = convert(data[name], hints[name], _join(at, name))
        if keeps_extra:
            kwargs["extra"] = freeze(rest)
        return cls(**kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """``cls`` from its JSON object (:class:`StatsFormatError` when malformed)."""
        return cls.read(data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every field in declaration order, then ``extra``."""
        out = {f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(thaw(getattr(self, "extra", {})))
        return out
