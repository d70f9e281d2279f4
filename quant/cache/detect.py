"""Tell the calibration-cache formats apart by content and parse them (pure).

Detection looks at the bytes, never at the file name (ONNX Runtime's ``calibration.cache`` and
TensorRT's ``*.cache`` share the extension):

1. only whitespace -> "empty" error;
2. valid UTF-8 without NUL: JSON object -> ONNX Runtime ``calibration.json``; first line ``TRT-...``
   or three numbers -> TensorRT (legacy) cache; first line ``name: hex`` -> a TensorRT cache whose
   header is missing (error); first line ``name decimal`` -> ONNX Runtime ``calibration.cache``;
3. anything else binary -> ONNX Runtime ``calibration.flatbuffers`` if it is a well-formed
   ``TrtTable``, else a "binary data" error naming the first bad byte (and line).
"""

from __future__ import annotations

from quant.cache.ort import (
    NotFlatbuffersError,
    looks_like_ort_text_line,
    parse_ort_flatbuffers,
    parse_ort_json,
    parse_ort_text,
)
from quant.cache.trt import ParsedCache, is_legacy_header, looks_like_trt_entry, parse_trt_cache
from quant.errors import CacheError


def detect_format(data: bytes) -> str:
    """Best guess of the format of ``data`` without validating it fully (for messages and tools).

    One of ``tensorrt``, ``tensorrt-legacy``, ``onnxruntime-json``, ``onnxruntime-flatbuffers``,
    ``onnxruntime-text``, ``empty``, ``binary``, ``unknown``.
    """
    if not data.strip():
        return "empty"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        try:
            parse_ort_flatbuffers(data, source="")
        except NotFlatbuffersError:
            return "binary"
        except CacheError:
            pass
        return "onnxruntime-flatbuffers"
    text = text.lstrip("\ufeff")
    if text.lstrip().startswith(("{", "[")):
        return "onnxruntime-json"
    first = text.split("\n", 1)[0].rstrip("\r")
    if first.startswith("TRT-"):
        return "tensorrt"
    if is_legacy_header(first):
        return "tensorrt-legacy"
    if looks_like_trt_entry(first):
        return "tensorrt"
    if looks_like_ort_text_line(first):
        return "onnxruntime-text"
    return "unknown"


def _first_bad_byte(data: bytes) -> int:
    nul = data.find(b"\x00")
    try:
        data.decode("utf-8")
        bad = len(data)
    except UnicodeDecodeError as exc:
        bad = exc.start
    return min(bad, nul) if nul >= 0 else bad


def parse_cache_bytes(data: bytes, *, source: str) -> ParsedCache:
    """Parse any supported calibration cache from its bytes; CacheError names ``source``."""
    kind = detect_format(data)
    if kind == "empty":
        raise CacheError(f"cache '{source}' is empty; recalibrate or pass the right file")
    if kind == "onnxruntime-flatbuffers":
        return parse_ort_flatbuffers(data, source=source)
    if kind == "binary":
        bad = _first_bad_byte(data)
        line = data[:bad].count(b"\n") + 1
        if data.lstrip(b"\xef\xbb\xbf").startswith(b"TRT-"):
            raise CacheError(
                f"cache '{source}' line {line}: contains binary data (byte {bad}); the file is "
                f"corrupted, recalibrate"
            )
        raise CacheError(
            f"cache '{source}' is not a calibration cache: binary data at byte {bad} (line {line}); "
            f"pass a TensorRT cache or ONNX Runtime's calibration.json / .flatbuffers / .cache"
        )
    text = data.decode("utf-8")
    if kind == "onnxruntime-json":
        return parse_ort_json(text.lstrip("\ufeff"), source=source)
    if kind == "onnxruntime-text":
        return parse_ort_text(text, source=source)
    # tensorrt, tensorrt-legacy, unknown: the TensorRT parser gives the precise error for the last
    # two (header missing, naming line 1).
    return parse_trt_cache(text, source=source)


__all__ = ["detect_format", "parse_cache_bytes"]
