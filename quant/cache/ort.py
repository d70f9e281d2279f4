"""Readers for the three tables ONNX Runtime's ``write_calibration_table`` writes (pure).

What onnxruntime 1.31 (``onnxruntime/quantization/quant_utils.py``) really writes, for a mapping
``tensor name -> TensorData`` (a ``TensorsData`` from ``calibrator.compute_data()`` or a plain dict):

- ``calibration.json``: ``json.dumps`` of the mapping with ORT's ``CalibrationCacheEncoder``. A
  ``TensorsData`` becomes ``{"CLS": "TensorsData", "data": {...}, "calibration_method": {...}}``, a
  plain dict is ``{name: {...}}``. Each entry is a ``TensorData`` dict ``{"lowest": L, "highest": H,
  ..., "CLS": "TensorData"}`` (plus ``hist``, ``bins``... for histogram calibrators) where L and H
  are plain numbers or ``{"data": number-or-list, "dtype": "float32", "CLS": "numpy.array"}``.
  Older versions wrote ``[lowest, highest]`` pairs; we read those too.
- ``calibration.flatbuffers``: a ``TrtTable`` with a vector of ``KeyValue{key, value}`` strings, in
  *reverse* sorted key order (ORT prepends them in sorted order).
- ``calibration.cache``: no header, one ``name value`` line per tensor in sorted order, value in
  decimal (``str(float)``).

The value in the flatbuffers and text forms is ``max(highest, lowest)``, i.e. ``highest``: it is
the amax only when the range is symmetric (``lowest == -highest``, ORT's ``symmetric=True``). For
an asymmetric MinMax calibration the negative side is lost (x in [-2.3, 1.3] is written as 1.3),
and an all-negative tensor gets a negative value. Only ``calibration.json`` keeps both ends, so we
take amax = max(|lowest|, |highest|) from it and warn when ranges are asymmetric; for the other two
forms the value is taken as the amax (that is what ORT's TensorRT execution provider does), and a
negative value is an error that points to calibration.json.

The flatbuffers table is read by a small bounds-checked reader of that two-table schema rather
than the generated ``onnxruntime.quantization.CalTableFlatBuffers`` classes: importing those pulls
in all of onnxruntime (slow, and not needed to read 40 bytes of strings), and they do no bounds
checking, so a corrupt file would surface as struct.error or garbage instead of a CacheError. The
tests check this reader against the generated classes on files ORT writes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from quant.cache.trt import ParsedCache
from quant.errors import CacheError

_DECIMAL_RE = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|infinity|nan)", re.IGNORECASE)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SIDECAR_SCHEMA = "quant.calibration-sidecar"


def is_decimal(text: str) -> bool:
    """True if ``text`` is a decimal number as Python's ``str(float)`` writes it."""
    return _DECIMAL_RE.fullmatch(text.strip()) is not None


def looks_like_ort_text_line(line: str) -> bool:
    """True if ``line`` has the shape ``<name> <decimal>`` of ORT's calibration.cache."""
    name, sep, value = line.rstrip("\r").rpartition(" ")
    return bool(sep) and name != "" and is_decimal(value)


# --------------------------------------------------------------------------------------------
# Shared checks
# --------------------------------------------------------------------------------------------


class _Table:
    """Accumulates name -> value with duplicate and range checks."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.amax: dict[str, float] = {}
        self.zero: list[str] = []
        self.where_seen: dict[str, str] = {}

    def add(self, name: str, value: float, where: str, *, from_highest: bool) -> None:
        if name in self.where_seen:
            raise CacheError(
                f"cache '{self.source}' {where}: tensor '{name}' appears twice (first {self.where_seen[name]}); "
                f"remove one of the entries"
            )
        self.where_seen[name] = where
        if math.isnan(value) or math.isinf(value):
            raise CacheError(
                f"cache '{self.source}' {where}: range of tensor '{name}' is {value}; ranges must be "
                f"finite, recalibrate"
            )
        if value < 0:
            hint = (
                "; ONNX Runtime writes max(highest, lowest) here, which is negative for an all-negative "
                "tensor calibrated asymmetrically: use calibration.json (it keeps both ends) or "
                "recalibrate with symmetric=True"
                if from_highest
                else "; recalibrate"
            )
            raise CacheError(
                f"cache '{self.source}' {where}: range of tensor '{name}' is negative ({value:g}){hint}"
            )
        if value == 0.0:
            self.zero.append(name)
        else:
            self.amax[name] = float(value)

    def result(self, fmt: Any, warnings: Iterable[str]) -> ParsedCache:
        w = list(warnings)
        if not self.amax and not self.zero:
            w.append("the cache holds no tensor entries")
        return ParsedCache(
            format=fmt,
            trt_version=None,
            algorithm=None,
            amax=self.amax,
            zero_scale_names=tuple(self.zero),
            warnings=tuple(w),
            header=None,
        )


# --------------------------------------------------------------------------------------------
# calibration.json
# --------------------------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _numbers(value: Any, name: str, field_name: str, source: str) -> list[float]:
    """Flatten a JSON number, list or ORT ``numpy.array`` dict into floats."""
    if isinstance(value, dict) and value.get("CLS") == "numpy.array" and "data" in value:
        return _numbers(value["data"], name, field_name, source)
    if isinstance(value, bool):
        pass
    elif isinstance(value, (int, float)):
        return [float(value)]
    elif isinstance(value, list) and value:
        out: list[float] = []
        for v in value:
            out.extend(_numbers(v, name, field_name, source))
        return out
    raise CacheError(
        f"cache '{source}': '{field_name}' of tensor '{name}' is {json.dumps(value)[:60]}, not a number; "
        f"the file is not an ONNX Runtime calibration table"
    )


def parse_ort_json(text: str, *, source: str) -> ParsedCache:
    """Read ONNX Runtime's ``calibration.json`` (see the module docstring for the shapes)."""
    try:
        top = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise CacheError(
            f"cache '{source}' is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); "
            f"the file is corrupted or truncated, recalibrate"
        ) from exc
    except _DuplicateKey as exc:
        raise CacheError(
            f"cache '{source}': key '{exc.key}' appears twice in the JSON; remove one of the entries"
        ) from exc
    if not isinstance(top, dict):
        raise CacheError(
            f"cache '{source}' is JSON but not an ONNX Runtime calibration table (top level is a "
            f"{type(top).__name__}, expected an object of tensor ranges)"
        )
    if top.get("schema") == _SIDECAR_SCHEMA:
        raise CacheError(
            f"cache '{source}' is quant's sidecar, not a cache; pass the cache file next to it "
            f"(the same name without '.json')"
        )
    entries: Any = top
    if top.get("CLS") == "TensorsData":
        entries = top.get("data")
        if not isinstance(entries, dict):
            raise CacheError(
                f"cache '{source}': TensorsData without a 'data' object; the file is not a complete "
                f"ONNX Runtime calibration table"
            )
    table = _Table(source)
    asymmetric: list[str] = []
    for name, entry in entries.items():
        where = f"entry '{name}'"
        if isinstance(entry, dict):
            if "lowest" not in entry or "highest" not in entry:
                raise CacheError(
                    f"cache '{source}': tensor '{name}' has no 'lowest'/'highest' range (keys: "
                    f"{', '.join(sorted(entry))}); the table was not written by a range calibrator"
                )
            lows = _numbers(entry["lowest"], name, "lowest", source)
            highs = _numbers(entry["highest"], name, "highest", source)
        elif isinstance(entry, list) and len(entry) == 2:  # older ORT: (lowest, highest) tuples
            lows = _numbers(entry[0], name, "lowest", source)
            highs = _numbers(entry[1], name, "highest", source)
        elif isinstance(entry, (int, float)) and not isinstance(entry, bool):
            table.add(name, float(entry), where, from_highest=False)
            continue
        else:
            raise CacheError(
                f"cache '{source}': entry of tensor '{name}' is {json.dumps(entry)[:60]}; expected a "
                f"TensorData object with 'lowest' and 'highest'"
            )
        values = lows + highs
        bad = [v for v in values if math.isnan(v) or math.isinf(v)]
        amax = bad[0] if bad else max(abs(v) for v in values)
        if not bad and (len(lows) != 1 or len(highs) != 1 or lows[0] != -highs[0]):
            asymmetric.append(name)
        table.add(name, amax, where, from_highest=False)
    warnings = []
    if asymmetric:
        warnings.append(
            f"{len(asymmetric)} of {len(entries)} tensors have asymmetric ranges (first: '{asymmetric[0]}'); "
            f"amax = max(|lowest|, |highest|) here, while ONNX Runtime's calibration.cache and "
            f"calibration.flatbuffers from the same table hold max(lowest, highest)"
        )
    return table.result("onnxruntime-json", warnings)


# --------------------------------------------------------------------------------------------
# calibration.cache (headerless text)
# --------------------------------------------------------------------------------------------


def parse_ort_text(text: str, *, source: str) -> ParsedCache:
    """Read ONNX Runtime's headerless ``calibration.cache``: ``name value`` lines, value decimal."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if text.strip() == "":
        raise CacheError(f"cache '{source}' is empty; recalibrate or pass the right file")
    lines = text.split("\n")
    ends_with_newline = lines[-1] == ""
    if ends_with_newline:
        lines.pop()
    table = _Table(source)
    for lineno, raw0 in enumerate(lines, start=1):
        raw = raw0[:-1] if raw0.endswith("\r") else raw0
        where = f"line {lineno}"
        if _CONTROL_RE.search(raw):
            raise CacheError(f"cache '{source}' line {lineno}: contains binary data; the file is corrupted")
        if raw.strip() == "":
            continue
        name, sep, value = raw.rpartition(" ")
        if not sep or name == "" or not is_decimal(value):
            if lineno == len(lines) and not ends_with_newline:
                raise CacheError(
                    f"cache '{source}' line {lineno}: last line '{raw[:60]}' has no newline and does not "
                    f"parse; the file looks truncated, recalibrate"
                )
            raise CacheError(
                f"cache '{source}' line {lineno}: expected '<tensor name> <decimal range>' as in ONNX "
                f"Runtime's calibration.cache, got '{raw[:60]}'; fix or remove the line"
            )
        table.add(name, float(value), where, from_highest=True)
    return table.result("onnxruntime-text", [])


# --------------------------------------------------------------------------------------------
# calibration.flatbuffers
# --------------------------------------------------------------------------------------------


class NotFlatbuffersError(Exception):
    """The bytes are not a well-formed ORT ``TrtTable`` flatbuffer (internal; see detect)."""


class _Fb:
    """Bounds-checked access to a flatbuffer."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def _get(self, pos: int, size: int, signed: bool = False) -> int:
        if pos < 0 or pos + size > len(self.buf):
            raise NotFlatbuffersError(f"offset {pos} out of bounds")
        return int.from_bytes(self.buf[pos : pos + size], "little", signed=signed)

    def u32(self, pos: int) -> int:
        return self._get(pos, 4)

    def deref(self, pos: int) -> int:
        return pos + self.u32(pos)

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field ``index`` of the table at ``table``, None if absent."""
        vtable = table - self._get(table, 4, signed=True)
        vt_size = self._get(vtable, 2)
        tbl_size = self._get(vtable + 2, 2)
        if vt_size < 4 or vt_size % 2:
            raise NotFlatbuffersError("bad vtable")
        slot = 4 + 2 * index
        if slot + 2 > vt_size:
            return None
        off = self._get(vtable + slot, 2)
        if off == 0:
            return None
        if off + 4 > tbl_size:
            raise NotFlatbuffersError("field outside its table")
        return table + off

    def string(self, pos: int) -> str:
        start = self.deref(pos)
        n = self.u32(start)
        end = start + 4 + n
        if end + 1 > len(self.buf) or self.buf[end] != 0:
            raise NotFlatbuffersError("bad string")
        try:
            return self.buf[start + 4 : end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotFlatbuffersError("string is not UTF-8") from exc


def read_flatbuffers_pairs(data: bytes) -> list[tuple[str, str]]:
    """(key, value) strings of an ORT ``TrtTable`` flatbuffer, in vector order.

    Raises NotFlatbuffersError if ``data`` is not such a buffer.
    """
    fb = _Fb(data)
    if len(data) < 12:
        raise NotFlatbuffersError("too short")
    root = fb.deref(0)
    dict_field = fb.field(root, 0)
    if dict_field is None:
        return []
    vec = fb.deref(dict_field)
    n = fb.u32(vec)
    if vec + 4 + 4 * n > len(data):
        raise NotFlatbuffersError("vector out of bounds")
    pairs: list[tuple[str, str]] = []
    for i in range(n):
        kv = fb.deref(vec + 4 + 4 * i)
        key_field = fb.field(kv, 0)
        value_field = fb.field(kv, 1)
        if key_field is None or value_field is None:
            raise NotFlatbuffersError("KeyValue without key or value")
        pairs.append((fb.string(key_field), fb.string(value_field)))
    return pairs


def parse_ort_flatbuffers(data: bytes, *, source: str) -> ParsedCache:
    """Read ONNX Runtime's ``calibration.flatbuffers``.

    Raises NotFlatbuffersError when the bytes are not a TrtTable at all (so that the caller can
    report "binary garbage"), CacheError when it is one with bad values.
    """
    pairs = read_flatbuffers_pairs(data)
    table = _Table(source)
    for i, (name, value) in enumerate(pairs):
        where = f"entry {i}"
        if not is_decimal(value):
            raise CacheError(
                f"cache '{source}' {where}: value '{value[:40]}' of tensor '{name}' is not a decimal "
                f"number; the table is corrupted, recalibrate"
            )
        table.add(name, float(value), where, from_highest=True)
    return table.result("onnxruntime-flatbuffers", [])


__all__ = [
    "NotFlatbuffersError",
    "is_decimal",
    "looks_like_ort_text_line",
    "parse_ort_flatbuffers",
    "parse_ort_json",
    "parse_ort_text",
    "read_flatbuffers_pairs",
]
