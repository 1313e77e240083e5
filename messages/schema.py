"""A tiny declarative validator for message payloads.

A schema maps field names to a `Field` (accepted types, required, default, an optional
check). `validate(schema, payload)` returns a new dict holding exactly the schema's fields
or raises `BadRequest` naming every wrong field, so a bad message is refused whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from messages.errors import BadRequest

_MISSING: Any = object()


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    required: bool = True
    default: Any = None
    check: Callable[[Any], str | None] | None = None  # returns an error text or None
    nullable: bool = False


def field(*types: type, required: bool = True, default: Any = None,
          check: Callable[[Any], str | None] | None = None, nullable: bool = False) -> Field:
    return Field(tuple(types), required, default, check, nullable)


Schema = dict[str, Field]

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean",
               list: "list", dict: "map", bytes: "bytes"}


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    if object in types:
        return True
    # bool is an int subclass; a flag must never pass as a count or an id
    if isinstance(value, bool) and bool not in types:
        return False
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def validate(schema: Schema, payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise BadRequest("payload must be a map", {"payload": "expected a map"})
    errors: dict[str, str] = {}
    out: dict[str, Any] = {}
    for name, spec in schema.items():
        value = payload.get(name, _MISSING)
        if value is _MISSING or (value is None and not spec.nullable):
            if spec.required:
                errors[name] = "required field"
            else:
                out[name] = spec.default
            continue
        if value is None:
            out[name] = None
            continue
        if not _is_instance(value, spec.types):
            errors[name] = f"expected {_type_name(spec.types)}"
            continue
        if spec.check is not None:
            problem = spec.check(value)
            if problem:
                errors[name] = problem
                continue
        out[name] = value
    # key=str: msgpack map keys may be of any type, and None < True cannot be sorted
    unknown = sorted(set(payload) - set(schema), key=str)
    for name in unknown:
        errors[str(name)] = "unknown field"
    if errors:
        summary = "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
        raise BadRequest(f"invalid payload ({summary})", {"fields": errors})
    return out
