"""The models of each precision from a prepared model: a cache checked against the model, the
INT8 Q/DQ model built from its ranges, FP16, and the set to evaluate."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.errors import CacheError, UsageError
from quant.pipeline.prepare import PreparedModel
from quant.pipeline.staleness import stale_reasons

if TYPE_CHECKING:
    import onnx

    from quant.cache.io import LoadedCache

log = logging.getLogger(__name__)


def load_cache_for_model(
    cache: str | Path, prepared: PreparedModel, *, strict: bool = False
) -> tuple[LoadedCache, list[str]]:
    """Read a cache (quant's, TensorRT's or ONNX Runtime's), check it fits the model.

    Returns the cache and warnings. A cache for another model fails; a stale quant cache warns,
    or fails with ``strict``.
    """
    from quant.cache.io import check_cache_against_model, read_cache
    from quant.graph.qdq import calibration_tensors

    loaded = read_cache(cache)
    warnings: list[str] = []
    match = check_cache_against_model(loaded, calibration_tensors(prepared.clean, scope="all"))
    match.raise_if_foreign(model_name=prepared.name)
    if loaded.sidecar is not None:
        reasons = stale_reasons(loaded, prepared, None)
        if reasons:
            msg = f"cache '{cache}' is stale: {'; '.join(reasons)}; recalibrate with 'quant calibrate' (it notices the change)"
            if strict:
                raise CacheError(msg)
            warnings.append(msg)
    if match.unknown or match.internal:
        names = [*match.unknown, *match.internal]
        listed = ", ".join(repr(n) for n in names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
        warnings.append(
            f"{len(names)} cache entries are not tensors of model '{prepared.name}' "
            f"({len(match.internal)} TensorRT-internal, {len(match.unknown)} unknown); ignored: {listed}"
        )
    return loaded, warnings


def build_int8_model(
    prepared: PreparedModel,
    loaded: LoadedCache,
    *,
    target: str = "tensorrt",
    exclude: Sequence[str] = (),
    strict: bool = False,
    cpu: str = "auto",
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Insert Q/DQ from the cache's ranges into the cleaned model (in memory).

    The ``onnxruntime`` target is built for CPU class ``cpu`` (``auto``: this machine's; see
    quant/backends/cpu.py), recorded in the model's metadata and in the returned fields."""
    from quant.backends.cpu import resolve_cpu, weight_type_for
    from quant.cache.io import check_cache_against_model
    from quant.graph.qdq import calibration_tensors, insert_qdq, quantizable_inputs
    from quant.pipeline.arithmetic import stamp_cpu

    cpu_fields: dict[str, Any] = {}
    weight_type = "int8"
    if target == "onnxruntime":
        cpu_class = resolve_cpu(cpu)
        weight_type = weight_type_for(cpu_class)
        cpu_fields = {"cpu": cpu_class, "weight_type": weight_type}
    res = insert_qdq(prepared.clean, loaded.amax, target=target, exclude=tuple(exclude), weight_type=weight_type)
    if cpu_fields:
        stamp_cpu(res.model, cpu_fields["cpu"], weight_type)
    match = check_cache_against_model(loaded, calibration_tensors(prepared.clean, scope="all"))
    wanted = set(quantizable_inputs(prepared.clean, exclude=tuple(exclude)))
    missing = tuple(sorted(t for t in wanted if t not in loaded.amax))
    if missing and strict:
        raise CacheError(
            f"cache '{loaded.path}' has no range for {len(missing)} tensors that INT8 needs "
            f"(first: {missing[0]!r}); recalibrate or drop --strict"
        )
    return res.model, {
        "quantized_tensors": tuple(res.quantized_tensors),
        "quantized_weights": tuple(res.quantized_weights),
        "skipped": dict(res.skipped),
        "cache_missing": missing,
        "cache_unknown": match.unknown,
        "cache_internal": match.internal,
        **cpu_fields,
    }


def precision_models(
    prepared: PreparedModel,
    precisions: Sequence[str],
    *,
    cache: str | Path | None = None,
    int8_model: str | Path | None = None,
    exclude: Sequence[str] = (),
    strict: bool = False,
    cpu: str = "auto",
) -> tuple[dict[str, onnx.ModelProto], dict[str, Any]]:
    """The ModelProto to evaluate for each precision, plus build info for the report (``cpu``: the
    CPU class ``int8-ort`` is built for)."""
    from quant.graph.load import load_model

    models: dict[str, onnx.ModelProto] = {}
    build_info: dict[str, Any] = {}
    loaded = None
    for p in precisions:
        if p == "fp32":
            models[p] = prepared.clean
        elif p == "fp16":
            from quant.graph.fp16 import to_fp16

            models[p] = to_fp16(prepared.clean)
        elif p in ("int8", "int8-ort"):
            target = "tensorrt" if p == "int8" else "onnxruntime"
            if p == "int8" and int8_model is not None:
                models[p] = load_model(int8_model)
                build_info[p] = {"source": str(int8_model)}
                continue
            if cache is None:
                raise UsageError(f"precision {p} needs --cache (or --int8-model for int8)")
            if loaded is None:
                loaded, warnings = load_cache_for_model(cache, prepared, strict=strict)
                for w in warnings:
                    log.warning("%s", w)
            models[p], fields = build_int8_model(
                prepared, loaded, target=target, exclude=exclude, strict=strict, cpu=cpu
            )
            build_info[p] = {
                "target": target,
                "quantized_tensors": len(fields["quantized_tensors"]),
                "quantized_weights": len(fields["quantized_weights"]),
                "skipped": fields["skipped"],
                "cache_missing": list(fields["cache_missing"]),
                "excluded": list(exclude),
                **{k: fields[k] for k in ("cpu", "weight_type") if k in fields},
            }
    if "fp32" not in models:
        # Agreement and fidelity are measured against FP32: always run it as the reference.
        models = {"fp32": prepared.clean, **models}
    return models, build_info
