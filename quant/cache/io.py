"""Write quant's calibration cache + sidecar; read any calibration cache from disk.

``write_cache`` writes two files: the TensorRT cache (text, what TensorRT reads) and
``<cache>.json``, a sidecar that keeps what the cache format cannot: the exact float64 amax, the
calibration method and parameters (the header only says EntropyCalibration2 for percentile and
mse too), sample count and model / data fingerprints, plus the sha256 of the cache bytes so that a
cache edited after calibration is noticed instead of silently trusted.

``read_cache`` detects the format by content (see :mod:`quant.cache.detect`), and when a sidecar
is present checks it against the cache bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from quant._io import atomic_write, check_schema_header, commit_together
from quant.cache.detect import parse_cache_bytes
from quant.cache.trt import (
    DEFAULT_TRT_VERSION,
    ParsedCache,
    algorithm_for_method,
    check_algorithm,
    decode_trt_version,
    format_trt_cache,
    scale_for_amax,
)
from quant.errors import CacheError

logger = logging.getLogger(__name__)

SIDECAR_SCHEMA = "quant.calibration-sidecar"
SIDECAR_SCHEMA_VERSION = 1

# Names TensorRT gives to tensors of layers it created itself; never in the ONNX model.
_TRT_INTERNAL_RE = re.compile(r"\(Unnamed Layer\* ?\d+\) \[[^\]]*\].*")


class _HasToDict(Protocol):
    def to_dict(self) -> Mapping[str, Any]: ...


def sidecar_path(cache_path: str | os.PathLike[str]) -> Path:
    """The sidecar of a cache: the cache path with ``.json`` appended (``m.cache.json``)."""
    return Path(os.fspath(cache_path) + ".json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_cache(
    path: str | os.PathLike[str],
    result: _HasToDict | Mapping[str, Any],
    *,
    trt_version: int = DEFAULT_TRT_VERSION,
    algorithm: str | None = None,
) -> tuple[Path, Path]:
    """Write the TensorRT cache for ``result`` (a CalibrationResult) and its sidecar.

    ``algorithm`` defaults to :func:`quant.cache.trt.algorithm_for_method` of the result's method.
    Returns ``(cache path, sidecar path)``.

    Both files are written as one set (:func:`quant._io.commit_together`): both temporary files
    are complete before either is renamed, the two renames run under a directory lock (a second
    process writing the same cache cannot interleave its pair) with Ctrl-C / SIGTERM held back
    until both are done. An error or interrupt before the renames leaves the previous pair
    untouched. Only a SIGKILL or power loss between the two renames (microseconds) can leave the
    new sidecar with the old cache; ``read_cache`` then fails loudly on the hash mismatch and
    ``quant calibrate`` recalibrates, instead of using a half-updated pair. The sidecar is renamed
    first, so a new cache never exists without its sidecar.
    """
    calibration = dict(result.to_dict()) if hasattr(result, "to_dict") else dict(result)
    amax = calibration.get("amax")
    if not isinstance(amax, Mapping):
        raise CacheError(
            "calibration result has no 'amax' table of tensor ranges; calibrate before writing a cache"
        )
    method = calibration.get("method")
    if algorithm is None:
        if not isinstance(method, str):
            raise CacheError("calibration result has no 'method'; pass the cache algorithm explicitly")
        algorithm = algorithm_for_method(method)
    else:
        check_algorithm(algorithm)
    version_text = decode_trt_version(trt_version)
    text = format_trt_cache(amax, trt_version=trt_version, algorithm=algorithm)
    cache_bytes = text.encode("utf-8")

    cache = Path(path)
    side = sidecar_path(cache)
    sidecar = {
        "schema": SIDECAR_SCHEMA,
        "schema_version": SIDECAR_SCHEMA_VERSION,
        "cache_file": cache.name,
        "cache_sha256": _sha256(cache_bytes),
        "trt_version": trt_version,
        "trt_version_text": version_text,
        "algorithm": algorithm,
        "calibration": calibration,
    }
    try:
        sidecar_text = json.dumps(sidecar, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise CacheError(
            f"cannot write sidecar '{side}': the calibration result is not plain JSON data ({exc}); "
            f"check the calibration parameters"
        ) from exc
    with commit_together():
        atomic_write(side, sidecar_text)
        atomic_write(cache, cache_bytes)
    logger.info(
        "wrote cache '%s' (%d tensors, %s) and sidecar '%s'", cache, text.count("\n") - 1, algorithm, side
    )
    return cache, side


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedCache:
    """A cache read from disk: the parsed content plus the sidecar when there is a valid one.

    ``amax`` is the sidecar's exact float64 amax when the sidecar matches the cache bytes, else the
    amax from the cache's own values (file order either way).
    """

    path: Path
    parsed: ParsedCache
    sidecar: dict[str, Any] | None
    amax: dict[str, float]
    format: str

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The sidecar's CalibrationResult dict, or None."""
        if self.sidecar is None:
            return None
        cal = self.sidecar.get("calibration")
        return cal if isinstance(cal, dict) else None

    @property
    def auto(self) -> dict[str, Any] | None:
        """The ``--method auto`` record of the sidecar (per tensor the chosen method, the score of
        every candidate), or None."""
        record = (self.calibration or {}).get("auto")
        return record if isinstance(record, dict) else None

    def _cal(self, key: str) -> Any:
        cal = self.calibration
        return None if cal is None else cal.get(key)

    @property
    def method(self) -> str | None:
        m = self._cal("method")
        return m if isinstance(m, str) else None

    @property
    def model_fingerprint(self) -> Any:
        """As stored by the calibration (a ModelFingerprint dict, or a digest string), or None."""
        return self._cal("model_fingerprint")

    @property
    def data_fingerprint(self) -> str | None:
        d = self._cal("data_fingerprint")
        return d if isinstance(d, str) else None

    @property
    def zero_scale_names(self) -> tuple[str, ...]:
        return self.parsed.zero_scale_names

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "parsed": self.parsed.to_dict(),
            "sidecar": self.sidecar,
            "amax": dict(self.amax),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoadedCache:
        try:
            return cls(
                path=Path(d["path"]),
                parsed=ParsedCache.from_dict(d["parsed"]),
                sidecar=None if d.get("sidecar") is None else dict(d["sidecar"]),
                amax={str(k): float(v) for k, v in d["amax"].items()},
                format=str(d["format"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CacheError(f"loaded cache record is malformed ({exc}); re-read the cache file") from exc


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CacheError(f"{what} '{path}': no such file; check the path or calibrate first") from None
    except IsADirectoryError:
        raise CacheError(f"{what} '{path}' is a directory; give the {what} file") from None
    except OSError as exc:
        raise CacheError(
            f"{what} '{path}': cannot read it ({exc.strerror or exc}); check permissions"
        ) from exc


def _same_scale(a: float, b: float) -> bool:
    """True if amax ``a`` and ``b`` give the same float32 scale (what the cache can tell apart)."""
    try:
        return scale_for_amax(a) == scale_for_amax(b)
    except OverflowError:
        return False


def _load_sidecar(
    side: Path, cache: Path, data: bytes, parsed: ParsedCache
) -> tuple[dict[str, Any], dict[str, float]]:
    raw = _read_bytes(side, "sidecar")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CacheError(f"sidecar '{side}' is not text ({exc.reason}); delete it or recalibrate") from exc
    except json.JSONDecodeError as exc:
        raise CacheError(
            f"sidecar '{side}' is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); "
            f"delete it or recalibrate"
        ) from exc
    check_schema_header(
        doc, schema=SIDECAR_SCHEMA, max_version=SIDECAR_SCHEMA_VERSION, label=f"sidecar '{side}'",
        kind="quant calibration sidecar", fix="delete it or recalibrate", error=CacheError,
    )
    if doc.get("cache_sha256") != _sha256(data):
        raise CacheError(
            f"sidecar '{side.name}' does not match cache '{cache.name}' (cache edited after "
            f"calibration?); delete the sidecar or recalibrate"
        )
    cal = doc.get("calibration")
    table = cal.get("amax") if isinstance(cal, dict) else None
    if not isinstance(table, dict):
        raise CacheError(f"sidecar '{side}' has no calibration.amax table; delete it or recalibrate")
    exact: dict[str, float] = {}
    for name, value in table.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CacheError(
                f"sidecar '{side}': amax of tensor '{name}' is {value!r}, not a finite number; "
                f"delete the sidecar or recalibrate"
            )
        if value > 0:
            exact[name] = float(value)
    # The hash matches, so the sidecar was written with this cache; a hand edit of the sidecar's
    # amax would still go unnoticed, so check that each one gives the scale the cache holds.
    merged: dict[str, float] = {}
    for name, cache_amax in parsed.amax.items():
        side_amax = exact.get(name)
        if side_amax is None or not _same_scale(side_amax, cache_amax):
            raise CacheError(
                f"sidecar '{side}': amax of tensor '{name}' ({side_amax!r}) disagrees with cache "
                f"'{cache.name}' ({cache_amax!r}); delete the sidecar or recalibrate"
            )
        merged[name] = side_amax
    extra = [n for n, a in exact.items() if n not in merged and not _same_scale(a, 0.0)]
    if extra:
        raise CacheError(
            f"sidecar '{side}': tensor '{extra[0]}' has an amax but is not in cache '{cache.name}'; "
            f"delete the sidecar or recalibrate"
        )
    return doc, merged


def read_cache(path: str | os.PathLike[str], *, require_sidecar: bool = False) -> LoadedCache:
    """Read a calibration cache of any supported format, with its sidecar when present.

    Raises CacheError for a missing / unreadable / malformed cache, a sidecar that is not valid
    JSON or does not match the cache bytes, and (with ``require_sidecar``) a missing sidecar.
    """
    cache = Path(path)
    data = _read_bytes(cache, "cache")
    parsed = parse_cache_bytes(data, source=str(path))
    side = sidecar_path(cache)
    sidecar: dict[str, Any] | None = None
    amax = dict(parsed.amax)
    if side.exists():
        sidecar, amax = _load_sidecar(side, cache, data, parsed)
    elif require_sidecar:
        raise CacheError(
            f"cache '{cache}' has no sidecar '{side.name}' (it records the calibration method, data and "
            f"model fingerprints); recalibrate with quant to get one"
        )
    for w in parsed.warnings:
        logger.warning("cache '%s': %s", cache, w)
    return LoadedCache(path=cache, parsed=parsed, sidecar=sidecar, amax=amax, format=parsed.format)


# --------------------------------------------------------------------------------------------
# Cache vs model
# --------------------------------------------------------------------------------------------


def is_trt_internal_name(name: str) -> bool:
    """True for names TensorRT gives its own layers' outputs, e.g. ``(Unnamed Layer* 37) [Constant]_output``."""
    return _TRT_INTERNAL_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class CacheMatch:
    """How a cache's tensor names line up with a model's tensors.

    ``matched``: cache entries with a range that the model has (file order). ``missing``: model
    tensors without a range in the cache (model order; includes zero-scale entries).
    ``zero_scale``: zero-scale ("no range") cache entries the model has. ``unknown``: cache entries
    the model does not have. ``internal``: TensorRT-internal names such as
    ``(Unnamed Layer* 37) [Constant]_output``; never in an ONNX model, so not counted as unknown
    (TensorRT-written caches of the right model contain them).
    """

    cache: str
    model: str
    matched: tuple[str, ...]
    missing: tuple[str, ...]
    unknown: tuple[str, ...]
    zero_scale: tuple[str, ...] = ()
    internal: tuple[str, ...] = ()

    def raise_if_foreign(self, *, model_name: str | None = None, max_unknown_fraction: float = 0.5) -> None:
        """CacheError when more than ``max_unknown_fraction`` of the cache's entries (TensorRT-internal
        names aside) are not in the model: the cache was most likely made for another model.

        ``model_name`` overrides the name given to :func:`check_cache_against_model` in the message.
        """
        considered = len(self.matched) + len(self.zero_scale) + len(self.unknown)
        if considered and self.unknown and len(self.unknown) / considered > max_unknown_fraction:
            raise CacheError(
                f"cache '{self.cache}': {len(self.unknown)} of {considered} tensors are not in model "
                f"'{model_name or self.model}' (first: '{self.unknown[0]}'); was it made for another model?"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache": self.cache,
            "model": self.model,
            "matched": list(self.matched),
            "missing": list(self.missing),
            "unknown": list(self.unknown),
            "zero_scale": list(self.zero_scale),
            "internal": list(self.internal),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CacheMatch:
        try:
            return cls(
                cache=str(d["cache"]),
                model=str(d["model"]),
                **{
                    k: tuple(str(n) for n in d.get(k, ()))
                    for k in ("matched", "missing", "unknown", "zero_scale", "internal")
                },
            )
        except (KeyError, TypeError) as exc:
            raise CacheError(f"cache match record is malformed ({exc})") from exc


def check_cache_against_model(
    loaded: LoadedCache, model_tensors: Collection[str], *, model_name: str = "model"
) -> CacheMatch:
    """Compare the cache's names with ``model_tensors`` (e.g. the tensors quant would calibrate).

    Call :meth:`CacheMatch.raise_if_foreign` to fail on a cache made for another model.
    """
    model_set = set(model_tensors)
    matched = tuple(n for n in loaded.amax if n in model_set)
    with_range = set(loaded.amax)
    missing = tuple(n for n in model_tensors if n not in with_range)
    unknown: list[str] = []
    internal: list[str] = []
    zero: list[str] = []
    for n in loaded.parsed.names:
        if n in model_set:
            if n not in with_range:
                zero.append(n)
        elif is_trt_internal_name(n):
            internal.append(n)
        else:
            unknown.append(n)
    return CacheMatch(
        cache=str(loaded.path),
        model=model_name,
        matched=matched,
        missing=missing,
        unknown=tuple(unknown),
        zero_scale=tuple(zero),
        internal=tuple(internal),
    )


__all__ = [
    "SIDECAR_SCHEMA",
    "SIDECAR_SCHEMA_VERSION",
    "CacheMatch",
    "LoadedCache",
    "check_cache_against_model",
    "is_trt_internal_name",
    "read_cache",
    "sidecar_path",
    "write_cache",
]
