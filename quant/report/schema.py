"""The versioned report: one JSON document per run, readable by later versions of quant.

A report renders result objects (it never runs models). Top-level fields (full reference with
examples in ``docs/REPORT_SCHEMA.md``; keep both in step when changing the schema):

==================  ===================  ========================================================
field               type                 meaning
==================  ===================  ========================================================
schema              str                  always ``"quant.report"``: identifies the file type
schema_version      int                  layout version, :data:`SCHEMA_VERSION`
created             str                  creation time, ISO 8601 UTC (``2025-01-31T12:00:00Z``)
quant_version       str                  version of quant that wrote the report
command             list[str] | null     the command line that produced it (null from Python)
model               object               path (str | null), fingerprint {graph, weights} (hex
                                         str), inputs / outputs: [{name, shape, dtype}]
data                object               DataSummary fields (source, kind, num_samples,
                                         num_skipped, skipped, class_names, preprocess) and
                                         fingerprint (hex str)
calibration         object | null        method, params, cache (path | null), trt_header
                                         ({version, version_text, algorithm} | null),
                                         num_samples, amax: :func:`amax_summary`
build               object | null        per precision ("int8", ...): target, quantized_tensors,
                                         quantized_weights (counts), excluded, skipped,
                                         cache_missing; or {source: path} for a given model
evaluation          object | null        :meth:`quant.eval.EvalResult.to_dict`
environment         object               :func:`environment_info`
extra               object               later sections (e.g. ``sensitivity``), free-form
==================  ===================  ========================================================

Version policy: a reader accepts any version up to :data:`SCHEMA_VERSION`; older versions are
brought up to date one step at a time through :data:`UPGRADES` (version ``v`` -> ``v + 1``),
newer ones are refused with a message telling the user to upgrade quant. Bump the version when a
field is removed, renamed or changes meaning; adding an optional field does not need a bump.

NaN and infinity are never written (JSON has no such values): :func:`save_report` turns them into
null, and metrics that can be infinite say so explicitly (e.g. SQNR ``exact: true``).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import math
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quant._io import atomic_write
from quant.errors import ReportError
from quant.eval._fields import (
    as_mapping,
    get_int,
    get_list,
    get_mapping,
    get_str,
)
from quant.eval.evaluate import EvalResult

if TYPE_CHECKING:
    from quant.backends.base import TensorSpec
    from quant.datasets.base import DataSummary

logger = logging.getLogger(__name__)

SCHEMA_NAME = "quant.report"
SCHEMA_VERSION = 1
LARGEST_AMAX = 10

#: Upgrade functions: ``UPGRADES[v]`` turns a report dict of schema version ``v`` into version
#: ``v + 1``. Empty while only version 1 exists; add an entry with every version bump.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def _now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quant_version() -> str:
    from quant import __version__

    return __version__


def _package_version(name: str) -> str | None:
    # importlib.metadata reads the installed version without importing the package (cheap:
    # onnxruntime is never loaded just to write a report).
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back below
    return platform.processor() or platform.machine() or "unknown"


#: How the ``int8`` (TensorRT placement) precision is computed: see quant/backends/onnxruntime.py.
EXACT_ARITHMETIC = "exact: Q/DQ as float maths (TensorRT's int32 accumulation up to float rounding)"


def environment_info(int8_arithmetic: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Versions and machine facts that latency and accuracy numbers depend on.

    ``cpu_int8_features`` and ``cpu_int8_class`` say which int8 instructions this CPU has (see
    quant/backends/cpu.py); ``int8_arithmetic`` names, per INT8 precision, the arithmetic that
    produced its numbers (exact simulation, or ONNX Runtime's fused integer kernels and which)."""
    from quant.backends.cpu import host_cpu

    cpu = host_cpu()
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        usable = os.cpu_count()
    return {
        "quant": _quant_version(),
        "onnx": _package_version("onnx"),
        "onnxruntime": _package_version("onnxruntime"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_int8_features": list(cpu.features),
        "cpu_int8_class": cpu.int8_class,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        **({"int8_arithmetic": dict(int8_arithmetic)} if int8_arithmetic else {}),
    }


def arithmetic_line(env: Mapping[str, Any]) -> str | None:
    """One line for tables and pages: which arithmetic produced each INT8 precision, on which CPU
    (None for a report that does not say, e.g. one written by an older quant)."""
    arithmetic = env.get("int8_arithmetic")
    if not isinstance(arithmetic, Mapping) or not arithmetic:
        return None
    features = env.get("cpu_int8_features")
    feats = " ".join(str(f) for f in features) if isinstance(features, list) and features else "no int8 extensions"
    parts = "; ".join(f"{k} = {v}" for k, v in arithmetic.items())
    return f"INT8 arithmetic on {env.get('cpu', 'this CPU')} [{feats}]: {parts}"


def amax_summary(amax: Mapping[str, float], no_range: Sequence[str] = ()) -> dict[str, Any]:
    """Count, min, median, max and the :data:`LARGEST_AMAX` largest of the calibrated ranges, plus the
    tensors that got no range (``no_range``, sorted). Non-finite amax values are reported as null."""
    values = np.asarray([float(v) for v in amax.values()], dtype=np.float64)
    finite = values[np.isfinite(values)]
    largest = sorted(amax.items(), key=lambda kv: (-_sort_key(kv[1]), kv[0]))[:LARGEST_AMAX]
    return {
        "count": len(amax),
        "min": float(finite.min()) if finite.size else None,
        "median": float(np.median(finite)) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "largest": [{"name": k, "amax": _finite(v)} for k, v in largest],
        "no_range": sorted(no_range),
    }


def _sort_key(v: float) -> float:
    v = float(v)
    return v if math.isfinite(v) or v == math.inf else math.inf  # NaN sorts with the largest


def _finite(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _spec_dict(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "shape": [d if isinstance(d, (int, str)) or d is None else str(d) for d in spec.shape],
        "dtype": str(np.dtype(spec.dtype)),
    }


def model_section(
    path: str | os.PathLike[str] | None,
    *,
    graph_fingerprint: str,
    weights_fingerprint: str,
    inputs: Sequence[TensorSpec] = (),
    outputs: Sequence[TensorSpec] = (),
) -> dict[str, Any]:
    """The ``model`` section: path, fingerprint {graph, weights}, inputs and outputs."""
    return {
        "path": None if path is None else str(path),
        "fingerprint": {"graph": graph_fingerprint, "weights": weights_fingerprint},
        "inputs": [_spec_dict(s) for s in inputs],
        "outputs": [_spec_dict(s) for s in outputs],
    }


def data_section(summary: DataSummary, fingerprint: str) -> dict[str, Any]:
    """The ``data`` section: the data summary plus its fingerprint."""
    section = summary.to_dict()
    section["fingerprint"] = fingerprint
    return section


def calibration_section(
    *,
    method: str,
    params: Mapping[str, Any],
    num_samples: int,
    amax: Mapping[str, float],
    no_range: Sequence[str] = (),
    cache: str | os.PathLike[str] | None = None,
    trt_version: int | None = None,
    trt_version_text: str | None = None,
    algorithm: str | None = None,
) -> dict[str, Any]:
    """The ``calibration`` section: method and parameters, cache path and its TensorRT header
    (``trt_header``: {version, version_text, algorithm}, e.g. 100300 / "10.3.0" /
    "EntropyCalibration2"; null when the cache has no TensorRT header), amax summary."""
    header = None
    if trt_version is not None or algorithm is not None:
        header = {"version": trt_version, "version_text": trt_version_text, "algorithm": algorithm}
    return {
        "method": method,
        "params": dict(params),
        "cache": None if cache is None else str(cache),
        "trt_header": header,
        "num_samples": num_samples,
        "amax": amax_summary(amax, no_range),
    }


def build_section(
    *,
    target: str,
    quantized_tensors: int,
    quantized_weights: int = 0,
    excluded: Sequence[str] = (),
    skipped: Any = None,
    cache_missing: Sequence[str] = (),
) -> dict[str, Any]:
    """One entry of the ``build`` section (which maps precision -> entry) for a Q/DQ model built
    by quant: target, counts of quantized activations and weights, exclusions, tensors skipped
    (with the reason) and cache tensors missing from the model. A model given ready-made is the
    entry ``{"source": path}`` instead."""
    return {
        "target": target,
        "quantized_tensors": quantized_tensors,
        "quantized_weights": quantized_weights,
        "excluded": list(excluded),
        "skipped": skipped if skipped is not None else {},
        "cache_missing": list(cache_missing),
    }


@dataclass(frozen=True)
class Report:
    """One run's report. Build with :meth:`create`; ``source`` is the file it was loaded from
    (for messages; never serialized, ignored by ``==``)."""

    created: str
    quant_version: str
    model: dict[str, Any]
    data: dict[str, Any]
    evaluation: EvalResult | None = None
    calibration: dict[str, Any] | None = None
    build: dict[str, Any] | None = None
    environment: dict[str, Any] = field(default_factory=dict)
    command: Sequence[str] | None = None  # stored as a tuple
    extra: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA_NAME
    schema_version: int = SCHEMA_VERSION
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Accept the JSON forms too (an evaluation dict, a command list), so callers that build a
        # report from dicts get the same typed object as load_report gives.
        if isinstance(self.evaluation, Mapping):
            object.__setattr__(self, "evaluation", EvalResult.from_dict(self.evaluation, "evaluation"))
        if self.command is not None and not isinstance(self.command, tuple):
            object.__setattr__(self, "command", tuple(self.command))

    @classmethod
    def create(
        cls,
        *,
        model: dict[str, Any],
        data: dict[str, Any],
        evaluation: EvalResult | None = None,
        calibration: dict[str, Any] | None = None,
        build: dict[str, Any] | None = None,
        command: Sequence[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Report:
        """A new report stamped with the current time, quant version and :func:`environment_info`."""
        return cls(
            created=_now_utc(),
            quant_version=_quant_version(),
            model=dict(model),
            data=dict(data),
            evaluation=evaluation,
            calibration=None if calibration is None else dict(calibration),
            build=None if build is None else dict(build),
            environment=environment_info(),
            command=None if command is None else tuple(command),
            extra=dict(extra or {}),
        )

    @property
    def name(self) -> str:
        """How messages name this report: its file, else its model path."""
        if self.source:
            return f"report '{self.source}'"
        return f"report of model '{self.model.get('path')}'"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "schema_version": self.schema_version,
            "created": self.created,
            "quant_version": self.quant_version,
            "command": None if self.command is None else list(self.command),
            "model": self.model,
            "data": self.data,
            "calibration": self.calibration,
            "build": self.build,
            "evaluation": None if self.evaluation is None else self.evaluation.to_dict(),
            "environment": self.environment,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: object, *, source: str | os.PathLike[str] | None = None) -> Report:
        """Validate and load a report dict (upgrading older schema versions); ``source`` names the
        file in error messages."""
        src = None if source is None else str(source)
        prefix = f"report '{src}'" if src else "report"
        if not isinstance(data, Mapping):
            raise ReportError(f"{prefix} is not a JSON object; it is not a quant report")
        if "schema" not in data:
            raise ReportError(f"{prefix} has no field 'schema'; it is not a quant report")
        if data["schema"] != SCHEMA_NAME:
            raise ReportError(
                f"{prefix} has field 'schema' = {data['schema']!r}, expected {SCHEMA_NAME!r}; "
                "it is not a quant report"
            )
        version = data.get("schema_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ReportError(
                f"{prefix} has field 'schema_version' = {version!r}, expected an integer; "
                "the report is damaged"
            )
        if version > SCHEMA_VERSION:
            raise ReportError(
                f"{prefix} has schema version {version}; this quant reads up to {SCHEMA_VERSION}; "
                "upgrade quant"
            )
        d = upgrade_report_dict(dict(data), version, source=src)
        try:
            return cls._parse(d, src)
        except ReportError as exc:
            raise ReportError(f"{prefix}: {exc}") from exc

    @classmethod
    def _parse(cls, d: Mapping[str, Any], src: str | None) -> Report:
        model = get_mapping(d, "model", "report")
        get_str(model, "path", "model", nullable=True)
        fp = get_mapping(model, "fingerprint", "model")
        get_str(fp, "graph", "model.fingerprint")
        get_str(fp, "weights", "model.fingerprint")
        get_list(model, "inputs", "model")
        get_list(model, "outputs", "model")
        data = get_mapping(d, "data", "report")
        get_str(data, "source", "data")
        get_int(data, "num_samples", "data")
        get_str(data, "fingerprint", "data")
        calibration = get_mapping(d, "calibration", "report", nullable=True)
        if calibration is not None:
            # method / num_samples are null for a cache without a sidecar (made by another tool).
            get_str(calibration, "method", "calibration", nullable=True)
            get_int(calibration, "num_samples", "calibration", nullable=True)
            get_mapping(calibration, "amax", "calibration")
        build = get_mapping(d, "build", "report", nullable=True)
        for precision in build or {}:
            entry = get_mapping(build, precision, "build")
            get_str(entry, "target", f"build.{precision}", nullable=True)
        ev = get_mapping(d, "evaluation", "report", nullable=True)
        command = get_list(d, "command", "report", nullable=True)
        if command is not None and not all(isinstance(c, str) for c in command):
            raise ReportError("field 'report.command' should be a list of strings; the report is damaged")
        extra = get_mapping(d, "extra", "report", nullable=True)
        return cls(
            created=get_str(d, "created", "report"),
            quant_version=get_str(d, "quant_version", "report"),
            model=dict(model),
            data=dict(data),
            evaluation=None if ev is None else EvalResult.from_dict(ev, "evaluation"),
            calibration=None if calibration is None else dict(calibration),
            build=None if build is None else dict(build),
            environment=dict(as_mapping(d.get("environment", {}), "environment")),
            command=None if command is None else tuple(command),
            extra=dict(extra or {}),
            schema=SCHEMA_NAME,
            schema_version=SCHEMA_VERSION,
            source=src,
        )


def upgrade_report_dict(
    data: dict[str, Any],
    version: int,
    *,
    source: str | None = None,
    upgrades: Mapping[int, Callable[[dict[str, Any]], dict[str, Any]]] = UPGRADES,
    target: int = SCHEMA_VERSION,
) -> dict[str, Any]:
    """Bring a report dict from schema ``version`` up to ``target`` through ``upgrades``."""
    prefix = f"report '{source}'" if source else "report"
    while version < target:
        step = upgrades.get(version)
        if step is None:
            raise ReportError(
                f"{prefix} has schema version {version}, which this quant cannot read "
                f"(it reads versions {min(upgrades, default=target)} to {target}); regenerate the report"
            )
        data = step(dict(data))
        version += 1
        data["schema_version"] = version
        logger.debug("upgraded %s to schema version %d", prefix, version)
    return data


def _jsonable(obj: Any, where: str) -> Any:
    """Plain JSON types only; NaN/inf become None, tuples lists, numpy scalars Python numbers."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise ReportError(
        f"report field '{where}' holds a {type(obj).__name__}, which JSON cannot store; "
        "convert it to a number, string, list or dict"
    )


def report_json(report: Report) -> str:
    """The report as JSON text: sorted keys, indent 2, never NaN or infinity."""
    return json.dumps(_jsonable(report.to_dict(), "report"), sort_keys=True, indent=2, allow_nan=False) + "\n"


def save_report(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write ``report`` to ``path`` as JSON, atomically."""
    return atomic_write(path, report_json(report))


def load_report(path: str | os.PathLike[str]) -> Report:
    """Read and validate a report file (older schema versions are upgraded)."""
    p = Path(path)
    if not p.exists():
        raise ReportError(f"report '{p}' does not exist; check the path")
    if p.is_dir():
        raise ReportError(f"report '{p}' is a directory; give the report's JSON file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(f"report '{p}' is not UTF-8 text; it is not a quant report") from exc
    except OSError as exc:
        raise ReportError(f"cannot read report '{p}': {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"report '{p}' is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "is it a quant report?"
        ) from exc
    return Report.from_dict(data, source=p)
