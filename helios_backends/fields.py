"""Field values as front ends receive them -> the Python types a dataclass annotates.

One set of rules for every front end, so a value means the same thing whether it came as JSON,
as a form string or from a command line: `"false"` is False everywhere, never truthy. Each value
is converted from its annotation alone:

- bool: true/false; in a form also "true"/"false"/"1"/"0" (any case), and 1/0 (SGLang decodes
  form strings as JSON before we see them). Anything else is refused.
- int: integers and integral numbers ("12", 12.0), never a bool or 2.5; float: finite numbers.
- Literal[...]: one of its values; str: a string.
- tuple[X, ...] / tuple[X, Y]: a JSON list, a JSON-encoded list ("[2, 2, 2]"), or the list of
  strings a repeated `key[]` form field gives (see `form_fields`), each item converted as X.
- X | Y: the first member that accepts the value; None only where the annotation allows it.
- Any: kept as given, for the caller to convert.

Errors are `RequestError`s naming the field and what it accepts, on one line.
"""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal

from .errors import RequestError

TRUE_WORDS = frozenset({"true", "1"})
FALSE_WORDS = frozenset({"false", "0"})
SHOWN_CHARS = 60  # of a refused value in an error: base64 media would fill a screen


class _Refused(Exception):
    """A value its annotation does not accept; `convert` words the error for the whole field."""


def describe(annotation: Any) -> str:
    """What an annotation accepts, in words for an error message."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return 'true or false (or "1"/"0")'
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a finite number"
    if annotation is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin in (tuple, list):
        item = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(args[0], describe(args[0]))
        if origin is tuple and Ellipsis not in args:
            return f"a list of {len(args)} {item}"
        return f"a list of {item}"
    return str(annotation)


def _number(value: Any) -> Any:
    """A form string's number; other values as given."""
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value)
            except ValueError:
                pass
        raise _Refused
    return value


def _items(value: Any) -> list:
    """A list from a JSON list, a JSON-encoded list or a `key[]` form field's strings."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _Refused from None
    if not isinstance(value, (list, tuple)):
        raise _Refused
    return list(value)


def _convert(annotation: Any, value: Any) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _Refused
        for member in args:
            if member is not type(None):
                try:
                    return _convert(member, value)
                except _Refused:
                    pass
        raise _Refused
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        if type(value) is int and value in (0, 1):
            return bool(value)
        raise _Refused
    if annotation is int:
        value = _number(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Refused
        return value
    if annotation is float:
        value = _number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Refused
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise _Refused
        return value
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise _Refused
    if origin in (tuple, list):
        items = _items(value)
        if origin is tuple and Ellipsis not in args:
            if len(items) != len(args):
                raise _Refused
            return tuple(_convert(a, v) for a, v in zip(args, items))
        converted = [_convert(args[0], v) for v in items]
        return tuple(converted) if origin is tuple else converted
    raise TypeError(f"no conversion for the annotation {annotation!r}")


def shown(value: Any) -> str:
    """A value as an error quotes it, cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def convert(name: str, annotation: Any, value: Any) -> Any:
    """`value` as the type `annotation` names, or a RequestError naming field `name` and what it accepts."""
    try:
        return _convert(annotation, value)
    except _Refused:
        raise RequestError(name, f"must be {describe(annotation)}, got {shown(value)}") from None


def unknown_field(name: str, accepted: Iterable[str]) -> RequestError:
    """The error for a key that is not a field: names it, the closest accepted name, and the accepted ones."""
    accepted = sorted(accepted)
    close = difflib.get_close_matches(name, accepted, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return RequestError(name, f"is not a Helios request option; {hint}accepted: {', '.join(accepted)}")


def form_fields(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A form's (key, value) pairs as one mapping; a key sent more than once, or as `key[]`, becomes one list under `key`.

    The OpenAI SDK (and any qs-style encoder) sends a list in a form as repeated `key[]` fields;
    others repeat the plain key. A key sent both ways is refused rather than one part dropped.
    """
    fields: dict[str, Any] = {}
    plain: dict[str, list] = {}
    brackets: dict[str, list] = {}
    for key, value in items:
        name = key.removesuffix("[]")
        (brackets if key.endswith("[]") else plain).setdefault(name, []).append(value)
    both = sorted(plain.keys() & brackets.keys())
    if both:
        raise RequestError(both[0], f"is sent both as {both[0]} and as {both[0]}[]")
    for name, values in plain.items():
        fields[name] = values[0] if len(values) == 1 else values
    fields.update(brackets)
    return fields
