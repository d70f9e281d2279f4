"""The result of one calibration: a small validated value object."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quant.errors import CacheError

TENSOR_SCOPES = ("all", "qdq")


def now_iso() -> str:
    """Current UTC time as ISO 8601 with seconds, e.g. '2025-01-31T12:00:00+00:00'."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _quant_version() -> str:
    from quant import __version__

    return __version__


@dataclass(frozen=True)
class CalibrationResult:
    """Ranges of one calibration and where they came from.

    ``amax`` holds only tensors with a range (amax > 0); tensors whose every value was zero are
    listed in ``no_range`` and are excluded from the cache (the Q/DQ builder keeps them float).
    ``model_fingerprint`` is ``{"graph": ..., "weights": ...}`` or a single digest string.
    ``tensors_scope`` says which tensors were calibrated: "all" activations or only the "qdq" ones.
    Treat the dict fields as read-only.
    """

    method: str
    params: dict[str, Any]
    amax: dict[str, float]
    no_range: tuple[str, ...]
    num_samples: int
    model_fingerprint: dict[str, str] | str
    data_fingerprint: str
    tensors_scope: str = "all"
    created: str = field(default_factory=now_iso)
    quant_version: str = field(default_factory=_quant_version)

    @classmethod
    def from_ranges(
        cls,
        ranges: Mapping[str, float | None],
        *,
        method: str,
        params: Mapping[str, Any],
        num_samples: int,
        model_fingerprint: Mapping[str, str] | str,
        data_fingerprint: str,
        tensors_scope: str = "all",
    ) -> CalibrationResult:
        """Split ``compute_amax`` output (None / 0 = no range) into ``amax`` and ``no_range``."""
        amax = {n: float(a) for n, a in ranges.items() if a is not None and a > 0}
        no_range = tuple(n for n, a in ranges.items() if a is None or a <= 0)
        fp = model_fingerprint if isinstance(model_fingerprint, str) else dict(model_fingerprint)
        return cls(
            method=method,
            params=dict(params),
            amax=amax,
            no_range=no_range,
            num_samples=num_samples,
            model_fingerprint=fp,
            data_fingerprint=data_fingerprint,
            tensors_scope=tensors_scope,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "method": self.method,
            "params": dict(self.params),
            "amax": dict(self.amax),
            "no_range": list(self.no_range),
            "num_samples": self.num_samples,
            "model_fingerprint": self.model_fingerprint
            if isinstance(self.model_fingerprint, str)
            else dict(self.model_fingerprint),
            "data_fingerprint": self.data_fingerprint,
            "tensors_scope": self.tensors_scope,
            "created": self.created,
            "quant_version": self.quant_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "calibration result") -> CalibrationResult:
        """Validate and build; CacheError naming ``source`` and the bad field otherwise."""
        if not isinstance(data, Mapping):
            raise CacheError(f"{source}: expected an object, got {type(data).__name__}")
        for key in (
            "method",
            "params",
            "amax",
            "no_range",
            "num_samples",
            "model_fingerprint",
            "data_fingerprint",
            "tensors_scope",
            "created",
            "quant_version",
        ):
            if key not in data:
                raise CacheError(f"{source}: field '{key}' is missing; recreate it with 'quant calibrate'")

        def bad(key: str, what: str) -> CacheError:
            return CacheError(
                f"{source}: field '{key}' must be {what} (got {data[key]!r:.80}); recreate it with 'quant calibrate'"
            )

        for key in ("method", "data_fingerprint", "created", "quant_version"):
            if not isinstance(data[key], str) or not data[key]:
                raise bad(key, "a non-empty string")
        try:
            _dt.datetime.fromisoformat(data["created"])
        except ValueError:
            raise bad("created", "an ISO 8601 time") from None
        if data["tensors_scope"] not in TENSOR_SCOPES:
            raise bad("tensors_scope", "'all' or 'qdq'")
        params = data["params"]
        if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
            raise bad("params", "an object")
        amax_raw = data["amax"]
        if not isinstance(amax_raw, Mapping):
            raise bad("amax", "an object mapping tensor names to ranges")
        amax: dict[str, float] = {}
        for name, value in amax_raw.items():
            if (
                not isinstance(name, str)
                or isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise CacheError(
                    f"{source}: field 'amax' has an invalid range {value!r} for tensor {name!r} "
                    "(must be a finite number > 0); recreate it with 'quant calibrate'"
                )
            amax[name] = float(value)
        no_range_raw = data["no_range"]
        if not isinstance(no_range_raw, (list, tuple)) or not all(isinstance(n, str) for n in no_range_raw):
            raise bad("no_range", "a list of tensor names")
        both = sorted(set(no_range_raw) & set(amax))
        if both:
            raise CacheError(
                f"{source}: field 'no_range' lists tensor '{both[0]}' that also has an amax; the result is corrupt"
            )
        num_samples = data["num_samples"]
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            raise bad("num_samples", "a non-negative integer")
        fp = data["model_fingerprint"]
        if isinstance(fp, Mapping):
            if not fp or not all(isinstance(k, str) and isinstance(v, str) for k, v in fp.items()):
                raise bad("model_fingerprint", "a string or an object of strings such as {graph, weights}")
            fp = dict(fp)
        elif not isinstance(fp, str) or not fp:
            raise bad("model_fingerprint", "a string or an object of strings such as {graph, weights}")
        return cls(
            method=data["method"],
            params=dict(params),
            amax=amax,
            no_range=tuple(no_range_raw),
            num_samples=num_samples,
            model_fingerprint=fp,
            data_fingerprint=data["data_fingerprint"],
            tensors_scope=data["tensors_scope"],
            created=data["created"],
            quant_version=data["quant_version"],
        )
