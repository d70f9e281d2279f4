"""Small validators for the ``from_dict`` constructors of eval and report value objects.

Every error is a :class:`~quant.errors.ReportError` naming the dotted field path (``where``), so a
damaged or hand-edited report file points at the exact field. :func:`quant.report.schema.load_report`
prefixes the messages with the file name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from quant.errors import ReportError

_MISSING = object()


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _bad(where: str, key: str, expected: str, value: object) -> ReportError:
    return ReportError(
        f"field '{where}.{key}' should be {expected} but is {_type_name(value)}; "
        "the report is damaged or was not written by quant"
    )


def as_mapping(data: object, where: str) -> Mapping[str, Any]:
    """``data`` itself must be a JSON object."""
    if not isinstance(data, Mapping):
        raise ReportError(
            f"field '{where}' should be an object but is {_type_name(data)}; "
            "the report is damaged or was not written by quant"
        )
    return data


def _get(data: Mapping[str, Any], key: str, where: str, optional: bool) -> Any:
    if key not in data:
        if optional:
            return _MISSING
        raise ReportError(
            f"field '{where}.{key}' is missing; the report is damaged or was not written by quant"
        )
    return data[key]


def get_str(data: Mapping[str, Any], key: str, where: str, *, nullable: bool = False) -> Any:
    value = _get(data, key, where, nullable)
    if value is _MISSING or (nullable and value is None):
        return None
    if not isinstance(value, str):
        raise _bad(where, key, "a string", value)
    return value


def get_int(
    data: Mapping[str, Any], key: str, where: str, *, nullable: bool = False, minimum: int = 0
) -> Any:
    value = _get(data, key, where, nullable)
    if value is _MISSING or (nullable and value is None):
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, key, "an integer", value)
    if value < minimum:
        raise ReportError(
            f"field '{where}.{key}' is {value} but must be >= {minimum}; "
            "the report is damaged or was not written by quant"
        )
    return value


def get_float(data: Mapping[str, Any], key: str, where: str, *, nullable: bool = False) -> Any:
    """A finite number (ints accepted), or None when ``nullable`` (missing counts as None too)."""
    value = _get(data, key, where, nullable)
    if value is _MISSING or (nullable and value is None):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(where, key, "a finite number" + (" or null" if nullable else ""), value)
    return float(value)


def get_bool(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = _get(data, key, where, False)
    if not isinstance(value, bool):
        raise _bad(where, key, "true or false", value)
    return value


def get_list(data: Mapping[str, Any], key: str, where: str, *, nullable: bool = False) -> Any:
    value = _get(data, key, where, nullable)
    if value is _MISSING or (nullable and value is None):
        return None
    if not isinstance(value, (list, tuple)):
        raise _bad(where, key, "a list", value)
    return list(value)


def get_mapping(data: Mapping[str, Any], key: str, where: str, *, nullable: bool = False) -> Any:
    value = _get(data, key, where, nullable)
    if value is _MISSING or (nullable and value is None):
        return None
    if not isinstance(value, Mapping):
        raise _bad(where, key, "an object", value)
    return value


def finite_or_none(value: float | None) -> float | None:
    """JSON cannot hold NaN or infinity: map them to None (null)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
