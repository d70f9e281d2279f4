"""TensorRT's calibration cache, text form: version helpers, writer and strict parser (pure).

The format (see /work/shared/REFERENCE.md)::

    TRT-8600-EntropyCalibration2
    input: 3c010a14
    conv1/Relu:0: 3d237c3a

Line 1 is ``TRT-<version>-<algorithm>``; every other line is ``<tensor name>: <hex>`` where hex
is the big-endian IEEE-754 bit pattern of the float32 *scale* = amax / 127. Names may contain
colons and spaces, so a line is split on its **last** ``": "``. Hex written by TensorRT is not
zero-padded (``0`` is a valid scale and means "no range"). A cache made by TensorRT's legacy
calibrator starts with a line of three numbers instead of the ``TRT-`` header.

Everything here is pure: text in, text out. Files are read and written by :mod:`quant.cache.io`.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from quant.errors import CacheError, UsageError

logger = logging.getLogger(__name__)

#: TensorRT 10.13, the newest 10.x release quant is written against. TensorRT ignores (or, on
#: some 10.x versions, rejects) a cache whose header names another version, so callers should
#: pass the version they deploy with (``--trt-version``); this default only suits 10.13.
DEFAULT_TRT_VERSION = 101300

#: The calibrator algorithms TensorRT writes in cache headers.
ALGORITHMS: tuple[str, ...] = (
    "EntropyCalibration2",
    "EntropyCalibration",
    "MinMaxCalibration",
    "LegacyCalibration",
)

CacheFormat = Literal[
    "tensorrt", "tensorrt-legacy", "onnxruntime-json", "onnxruntime-flatbuffers", "onnxruntime-text"
]
CACHE_FORMATS: tuple[str, ...] = (
    "tensorrt",
    "tensorrt-legacy",
    "onnxruntime-json",
    "onnxruntime-flatbuffers",
    "onnxruntime-text",
)

# How a calibration method maps to the algorithm in the header. TensorRT hands a cache only to a
# calibrator of the header's algorithm (another one ignores or rejects it), and quant's TensorRT
# backend serves every histogram method (entropy, percentile, mse) through an IInt8EntropyCalibrator2
# that returns the cache from read_calibration_cache(); so percentile and mse caches must say
# EntropyCalibration2 to be accepted. The sidecar keeps the true method. ``auto`` mixes methods per
# tensor (its ranges are not any one TensorRT calibrator's), so it takes the default calibrator's.
_METHOD_ALGORITHM = {
    "auto": "EntropyCalibration2",
    "entropy": "EntropyCalibration2",
    "percentile": "EntropyCalibration2",
    "mse": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
}

_HEADER_RE = re.compile(r"TRT-(\d+)-(.*)")
_HEX_RE = re.compile(r"[0-9a-fA-F]{1,8}")
_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)?")
# C0 control characters except tab, CR and LF, plus DEL: never in a text cache.
_BINARY_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_LEGACY_HEADER_RE = re.compile(r"\s*(\S+)\s+(\S+)\s+(\S+)\s*")


# --------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------


def _is_valid_encoded(n: int) -> bool:
    # TensorRT < 10: major*1000 + minor*100 + patch (1000..9999);
    # TensorRT >= 10: major*10000 + minor*100 + patch (>= 100000).
    return 1000 <= n <= 9999 or n >= 100000


def encode_trt_version(text: str) -> int:
    """TensorRT version text to the number in cache headers.

    ``"8.6"`` -> 8600, ``"8.6.1"`` -> 8601, ``"8.6.1.6"`` -> 8601 (build ignored), ``"10.3"`` ->
    100300, ``"10.13.1"`` -> 101301. An already-encoded number (``"100300"``) is accepted as is,
    a bare major version (``"10"``) means ``"10.0"``.
    """
    s = str(text).strip()
    if s.isdigit():
        n = int(s)
        if _is_valid_encoded(n):
            return n
        if 1 <= n <= 99:
            return n * (10000 if n >= 10 else 1000)
        raise UsageError(
            f"--trt-version '{text}' is not a TensorRT version; give it as '10.13', '8.6.1' or as "
            f"the number in a cache header such as '101300'"
        )
    m = _VERSION_RE.fullmatch(s)
    if m is None:
        raise UsageError(
            f"--trt-version '{text}' is not a TensorRT version; give it as '10.13', '8.6.1' or as "
            f"the number in a cache header such as '101300'"
        )
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if major < 1 or patch > 99 or (major < 10 and minor > 9) or minor > 99:
        raise UsageError(
            f"--trt-version '{text}' cannot be written in a cache header (TensorRT {major}.x "
            f"allows minor <= {9 if major < 10 else 99} and patch <= 99); check the version"
        )
    if major < 10:
        return major * 1000 + minor * 100 + patch
    return major * 10000 + minor * 100 + patch


def decode_trt_version(n: int) -> str:
    """The number in a cache header to version text: 100300 -> "10.3.0", 8600 -> "8.6.0"."""
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or not _is_valid_encoded(int(n)):
        raise UsageError(
            f"--trt-version {n!r} is not a TensorRT header version (expected e.g. 8600 or 101300)"
        )
    n = int(n)
    if n >= 100000:
        return f"{n // 10000}.{(n // 100) % 100}.{n % 100}"
    return f"{n // 1000}.{(n // 100) % 10}.{n % 100}"


def algorithm_for_method(method: str) -> str:
    """Header algorithm for a quant calibration method (see the table above for why)."""
    try:
        return _METHOD_ALGORITHM[method.lower()]
    except KeyError:
        raise UsageError(
            f"calibration method '{method}' has no TensorRT cache algorithm; use one of "
            f"{', '.join(sorted(_METHOD_ALGORITHM))} or pass --algorithm explicitly"
        ) from None


def check_algorithm(algorithm: str) -> str:
    """Return ``algorithm`` if TensorRT knows it, else raise UsageError naming --algorithm."""
    if algorithm not in ALGORITHMS:
        raise UsageError(
            f"--algorithm '{algorithm}' is not a TensorRT calibration algorithm; use one of "
            f"{', '.join(ALGORITHMS)}"
        )
    return algorithm


# --------------------------------------------------------------------------------------------
# Scales
# --------------------------------------------------------------------------------------------


def _f32_bits(value: float) -> int:
    """Bits of ``value`` rounded (to nearest) to float32; OverflowError if it rounds to inf."""
    return int.from_bytes(struct.pack(">f", value), "big")


def _bits_f32(bits: int) -> float:
    return float(struct.unpack(">f", bits.to_bytes(4, "big"))[0])


def to_float32(value: float) -> float:
    """``value`` rounded to the nearest float32, as a Python float (OverflowError past float32)."""
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def scale_to_hex(scale: float) -> str:
    """The float32 bit pattern of ``scale`` as 8 lowercase hex digits (most significant first)."""
    s = float(scale)
    if math.isnan(s) or s < 0 or math.isinf(s):
        raise CacheError(f"scale {scale!r} cannot be written to a TensorRT cache; scales are >= 0 and finite")
    try:
        return f"{_f32_bits(s):08x}"
    except OverflowError:
        raise CacheError(
            f"scale {scale!r} is beyond float32 and cannot be written to a TensorRT cache"
        ) from None


def hex_to_scale(text: str) -> float:
    """Scale from hex bits, short hex allowed (``"0"``, ``"3c0a"``); the float32 value as a float."""
    t = text.strip()
    if not _HEX_RE.fullmatch(t):
        raise CacheError(f"'{text}' is not a float32 bit pattern (1 to 8 hex digits)")
    return _bits_f32(int(t, 16))


def scale_for_amax(amax: float) -> float:
    """float32 scale = amax / 127, as written to the cache.

    The division is done in float64 and rounded once to float32 (more exact than dividing in
    float32). Raises OverflowError if the scale does not fit in float32.
    """
    return to_float32(float(amax) / 127.0)


def amax_from_scale(scale: float) -> float | None:
    """amax = scale * 127 (float64, exact for a float32 scale); scale 0 -> None ("no range")."""
    s = float(scale)
    if s == 0.0:
        return None
    return s * 127.0


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name == "":
        raise CacheError(
            f"tensor name {name!r} cannot be written to a TensorRT cache; names must be non-empty text"
        )
    if "\n" in name or "\r" in name or _BINARY_RE.search(name):
        raise CacheError(
            f"tensor name {name!r} contains a line break or control character, which TensorRT's "
            f"line-based cache cannot hold; rename the tensor in the model"
        )
    return name


def format_trt_cache(amax: Mapping[str, float | None], *, trt_version: int, algorithm: str) -> str:
    """Cache text for ``amax`` (tensor name -> amax), names in the given order, trailing newline.

    Entries whose amax is None or 0 ("no range") are omitted, as are positive amax values so small
    that their float32 scale underflows to 0 (logged). The scale written is float32(amax / 127).
    """
    decode_trt_version(trt_version)  # validates
    check_algorithm(algorithm)
    lines = [f"TRT-{trt_version}-{algorithm}"]
    for name, value in amax.items():
        _check_name(name)
        if value is None:
            continue
        a = float(value)
        if math.isnan(a) or math.isinf(a) or a < 0:
            raise CacheError(
                f"tensor '{name}' has amax {value!r}; a cache holds finite amax >= 0, so check the "
                f"calibration (non-finite activations?)"
            )
        if a == 0.0:
            continue
        try:
            scale = scale_for_amax(a)
        except OverflowError:
            raise CacheError(
                f"tensor '{name}' has amax {value!r}, whose scale amax/127 does not fit in float32; "
                f"check the calibration"
            ) from None
        if scale == 0.0:
            logger.warning(
                "tensor '%s': amax %r is too small for a float32 scale; left out of the cache", name, a
            )
            continue
        lines.append(f"{name}: {_f32_bits(scale):08x}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Parsed result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedCache:
    """What a calibration cache holds, whatever its format.

    ``amax`` (tensor -> amax, file order) is the primary field. Entries whose scale is 0 (TensorRT's
    "no range", not an amax of 0) are not in ``amax`` but listed in ``zero_scale_names``.
    ``header`` is the first line of TensorRT caches (None for ONNX Runtime formats).
    """

    format: CacheFormat
    trt_version: int | None
    algorithm: str | None
    amax: dict[str, float]
    zero_scale_names: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    header: str | None = None
    legacy: dict[str, Any] | None = None  # legacy calibrator's parameters (see legacy_parameters)

    @property
    def is_legacy(self) -> bool:
        """True for a legacy-calibrator cache (header-less or ``TRT-...-LegacyCalibration``)."""
        return self.format == "tensorrt-legacy" or self.algorithm == "LegacyCalibration"

    @property
    def names(self) -> tuple[str, ...]:
        """Every tensor the cache names: those with a range, then the zero-scale ones."""
        return (*self.amax, *self.zero_scale_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "trt_version": self.trt_version,
            "algorithm": self.algorithm,
            "amax": dict(self.amax),
            "zero_scale_names": list(self.zero_scale_names),
            "warnings": list(self.warnings),
            "header": self.header,
            "legacy": None if self.legacy is None else dict(self.legacy),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParsedCache:
        try:
            fmt = d["format"]
            if fmt not in CACHE_FORMATS:
                raise ValueError(f"unknown format {fmt!r}")
            tv = d.get("trt_version")
            return cls(
                format=fmt,
                trt_version=None if tv is None else int(tv),
                algorithm=d.get("algorithm"),
                amax={str(k): float(v) for k, v in d["amax"].items()},
                zero_scale_names=tuple(str(n) for n in d.get("zero_scale_names", ())),
                warnings=tuple(str(w) for w in d.get("warnings", ())),
                header=d.get("header"),
                legacy=None if d.get("legacy") is None else dict(d["legacy"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CacheError(f"parsed cache record is malformed ({exc}); re-read the cache file") from exc


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def _where(source: str, lineno: int) -> str:
    return f"cache '{source}' line {lineno}"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_HEX_DOUBLE_RE = re.compile(r"[0-9a-fA-F]{16}")

#: What quant tells about reusing a legacy-calibrator cache with TensorRT.
LEGACY_NOTE = (
    "legacy-calibrator cache: TensorRT 8.6+ reuses it only through an IInt8LegacyCalibrator "
    "(CalibrationAlgoType.LEGACY_CALIBRATION), which is deprecated; quant reads its scales, and "
    "'quant build' turns them into a Q/DQ model that needs no calibrator"
)


def _legacy_number(token: str) -> float | None:
    """A legacy parameter: 16 hex digits are an IEEE-754 double's bits (TensorRT writes them so),
    anything else a decimal number; None if it is neither."""
    if _HEX_DOUBLE_RE.fullmatch(token):
        return float(struct.unpack(">d", bytes.fromhex(token))[0])
    try:
        return float(token)
    except ValueError:
        return None


def legacy_parameters(line: str) -> dict[str, Any] | None:
    """The legacy calibrator's parameter line (``0 3ff0000000000000 3fefff2e48e8a71e``: a leading
    field, then the quantile and the regression cutoff as hex doubles; one to three numbers), or
    None when ``line`` is not one. Returns ``fields`` (the tokens), ``values`` (decoded) and, where
    present, ``quantile`` and ``regression_cutoff``."""
    tokens = line.split()
    if not 1 <= len(tokens) <= 3:
        return None
    values = [_legacy_number(t) for t in tokens]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    out: dict[str, Any] = {"fields": tokens, "values": values}
    named = values[1:] if len(values) == 3 else values
    for key, value in zip(("quantile", "regression_cutoff"), named, strict=False):
        out[key] = value
    return out


def is_legacy_header(line: str) -> bool:
    """True for the first line of a header-less legacy-calibrator cache: three numbers (decimal, or
    16-hex-digit doubles as TensorRT writes them)."""
    m = _LEGACY_HEADER_RE.fullmatch(line)
    return m is not None and legacy_parameters(line) is not None


def looks_like_trt_entry(line: str) -> bool:
    """True if ``line`` has the shape ``<name>: <hex>``."""
    name, sep, value = line.rpartition(": ")
    return bool(sep) and bool(name) and _HEX_RE.fullmatch(value.strip()) is not None


def parse_trt_cache(text: str, *, source: str) -> ParsedCache:
    """Parse TensorRT cache text (``TRT-`` header or legacy three-number header), strictly.

    Accepts the quirks of real files: names with colons (split on the last ``": "``), short hex
    and a bare ``0``, CRLF line ends, a missing final newline, blank lines. Raises CacheError naming
    ``source`` and the line for anything else: empty text, missing header, unknown algorithm, a
    line that is not ``name: hex``, bad hex, a truncated last line (one that does not parse, or
    ends in a short non-zero hex with no newline after it), duplicate names, negative /
    NaN / infinite scales, binary bytes.
    """
    warnings: list[str] = []
    legacy: dict[str, Any] | None = None
    if text.startswith("\ufeff"):
        text = text[1:]
        warnings.append("file starts with a byte-order mark (ignored); TensorRT may not read it")
    if text.strip() == "":
        raise CacheError(f"cache '{source}' is empty; recalibrate or pass the right file")
    lines = text.split("\n")
    ends_with_newline = lines[-1] == ""
    if ends_with_newline:
        lines.pop()
    last_lineno = len(lines)

    header = lines[0].rstrip("\r")
    if _BINARY_RE.search(header):
        raise CacheError(f"{_where(source, 1)}: contains binary data; this is not a calibration cache")
    fmt: CacheFormat
    trt_version: int | None
    m = _HEADER_RE.fullmatch(header.strip())
    if m is not None:
        fmt = "tensorrt"
        trt_version = int(m.group(1))
        algorithm = m.group(2)
        if algorithm not in ALGORITHMS:
            raise CacheError(
                f"{_where(source, 1)}: unknown calibration algorithm '{algorithm}' in header "
                f"'{_short(header)}'; expected one of {', '.join(ALGORITHMS)}"
            )
        if not _is_valid_encoded(trt_version):
            warnings.append(f"header version {trt_version} is not a TensorRT version number")
    elif header.startswith("TRT-"):
        raise CacheError(
            f"{_where(source, 1)}: malformed header '{_short(header)}'; expected "
            f"'TRT-<version>-<algorithm>' such as 'TRT-8600-EntropyCalibration2'"
        )
    elif is_legacy_header(header):
        fmt = "tensorrt-legacy"
        trt_version = None
        algorithm = "LegacyCalibration"
        legacy = legacy_parameters(header)
    else:
        raise CacheError(
            f"{_where(source, 1)}: header missing: expected 'TRT-<version>-<algorithm>' such as "
            f"'TRT-8600-EntropyCalibration2', got '{_short(header)}'; add the header line or recalibrate"
        )

    amax: dict[str, float] = {}
    zero: list[str] = []
    first_seen: dict[str, int] = {}
    blank = 0
    crlf = False
    first_entry = 2
    if fmt == "tensorrt" and algorithm == "LegacyCalibration" and last_lineno >= 2:
        # TRT-<version>-LegacyCalibration: the line after the header holds the quantile (and cutoff)
        second = lines[1].rstrip("\r")
        params = None if looks_like_trt_entry(second) else legacy_parameters(second)
        if params is not None:
            legacy = params
            first_entry = 3
    for lineno in range(first_entry, last_lineno + 1):
        raw = lines[lineno - 1]
        if raw.endswith("\r"):
            crlf = True
            raw = raw[:-1]
        where = _where(source, lineno)
        truncated = lineno == last_lineno and not ends_with_newline
        if _BINARY_RE.search(raw):
            raise CacheError(f"{where}: contains binary data; the file is corrupted, recalibrate")
        if raw.strip() == "":
            blank += 1
            continue
        name, sep, value = raw.rpartition(": ")
        value = value.strip()
        if not sep or not _HEX_RE.fullmatch(value):
            if truncated:
                raise CacheError(
                    f"{where}: last line '{_short(raw)}' has no newline and does not parse; the file "
                    f"looks truncated, recalibrate"
                )
            if not sep:
                raise CacheError(
                    f"{where}: expected '<tensor name>: <hex scale>', got '{_short(raw)}'; fix or "
                    f"remove the line"
                )
            raise CacheError(
                f"{where}: '{_short(value)}' is not a hex float32 scale (1 to 8 hex digits) for "
                f"tensor '{_short(name)}'; fix or remove the line"
            )
        if name == "":
            raise CacheError(f"{where}: empty tensor name; fix or remove the line")
        if truncated and len(value) < 8 and int(value, 16) != 0:
            # A cut-off 8-digit scale still parses as short hex (a tiny, wrong scale): with no final
            # newline after it, a short value is far more likely a truncated file than a quirk.
            raise CacheError(
                f"{where}: last line '{_short(raw)}' has no newline and a short scale '{value}'; the "
                f"file looks truncated, recalibrate"
            )
        if name in first_seen:
            raise CacheError(
                f"{where}: tensor '{_short(name)}' appears twice (first on line {first_seen[name]}); "
                f"remove one of the lines"
            )
        first_seen[name] = lineno
        scale = _bits_f32(int(value, 16))
        if math.isnan(scale) or math.isinf(scale):
            raise CacheError(
                f"{where}: scale of tensor '{_short(name)}' is {scale} (hex {value}); a scale must be "
                f"finite, recalibrate"
            )
        if scale < 0:
            raise CacheError(
                f"{where}: scale of tensor '{_short(name)}' is negative ({scale:g}, hex {value}); recalibrate"
            )
        if scale == 0.0:  # includes -0.0 (hex 80000000)
            zero.append(name)
        else:
            amax[name] = scale * 127.0
    if blank:
        warnings.append(f"{blank} blank line(s) ignored")
    if crlf:
        warnings.append("Windows line ends (CRLF)")
    if not amax and not zero:
        warnings.append("the cache holds no tensor entries")
    return ParsedCache(
        format=fmt,
        trt_version=trt_version,
        algorithm=algorithm,
        amax=amax,
        zero_scale_names=tuple(zero),
        warnings=tuple(warnings),
        header=header,
        legacy=legacy,
    )


__all__ = [
    "LEGACY_NOTE",
    "legacy_parameters",
    "ALGORITHMS",
    "CACHE_FORMATS",
    "DEFAULT_TRT_VERSION",
    "CacheFormat",
    "ParsedCache",
    "algorithm_for_method",
    "amax_from_scale",
    "check_algorithm",
    "decode_trt_version",
    "encode_trt_version",
    "format_trt_cache",
    "hex_to_scale",
    "is_legacy_header",
    "looks_like_trt_entry",
    "parse_trt_cache",
    "scale_for_amax",
    "scale_to_hex",
    "to_float32",
]
