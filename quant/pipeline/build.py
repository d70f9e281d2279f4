"""The build stage: ``quant build`` (INT8 Q/DQ, FP16 or the cleaned FP32 model), with the
accuracy-budget fallback that keeps the most sensitive layers in float (docs/SENSITIVITY.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.config import BuildOptions, DataOptions, FallbackOptions
from quant.errors import UsageError
from quant.pipeline.prepare import (
    PreparedModel,
    capped,
    data_file,
    effective_batch_size,
    open_data,
    prepare_model,
    sidecar_of,
    with_node_names,
)
from quant.pipeline.quantize import build_int8_model, load_cache_for_model

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOutcome:
    """A built model and what went into it."""

    output: Path
    precision: str
    target: str
    quantized_tensors: tuple[str, ...] = ()
    quantized_weights: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)
    cache_missing: tuple[str, ...] = ()
    cache_unknown: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    cache_internal: tuple[str, ...] = ()  # TensorRT-internal cache entries (never in an ONNX model)
    fallback: Any = None  # quant.sensitivity.FallbackResult when built with an accuracy budget
    fallback_path: Path | None = None  # the fallback file (--exclude-from reads it)
    cpu: str | None = None  # the CPU class an onnxruntime-target model was built for
    weight_type: str | None = None  # its weights' storage type (uint8 for x86 without VNNI)

    def summary(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "precision": self.precision,
            "target": self.target,
            "quantized_tensors": len(self.quantized_tensors),
            "quantized_weights": len(self.quantized_weights),
            "skipped": dict(self.skipped),
            "cache_missing": list(self.cache_missing),
            "cache_unknown": list(self.cache_unknown),
            "cache_internal": list(self.cache_internal),
            "warnings": list(self.warnings),
            **({"cpu": self.cpu, "weight_type": self.weight_type} if self.cpu else {}),
        }


def build(
    model: str | Path | None,
    *,
    output: str | Path,
    cache: str | Path | None = None,
    options: BuildOptions | None = None,
    prepared: PreparedModel | None = None,
    data: DataOptions | None = None,
    fallback: FallbackOptions | None = None,
    exclude_from: str | Path | None = None,
    progress: bool = False,
) -> BuildOutcome:
    """Build an INT8 Q/DQ model (from a cache), an FP16 model or the cleaned FP32 model.

    ``exclude_from``: a fallback file (or JSON list) whose exclusions are added to
    ``options.exclude``. With ``fallback`` holding a budget, the INT8 build measures ``data`` and
    keeps the most sensitive layers in float (:func:`build_with_fallback`).
    """
    from quant._io import check_output_not_input
    from quant.graph.load import save_model

    options = options or BuildOptions()
    prepared = prepared or prepare_model(model)
    if exclude_from is not None:
        options = _with_exclude_file(options, exclude_from, prepared)
    if fallback is not None and fallback.active:
        return build_with_fallback(
            None, output=output, cache=cache, data=data, options=options, fallback=fallback,
            prepared=prepared, progress=progress,
        )
    out = Path(output)
    check_output_not_input(out, prepared.path, cache, sidecar_of(cache))
    warnings: list[str] = []
    fields: dict[str, Any] = {}
    if options.precision == "int8":
        if cache is None:
            raise UsageError("--precision int8 needs --cache (run 'quant calibrate' first)")
        if options.exclude or exclude_from is not None:
            prepared = with_node_names(prepared)  # exclusions match names: see build_with_fallback
        loaded, warnings = load_cache_for_model(cache, prepared, strict=options.strict)
        built, fields = build_int8_model(
            prepared, loaded, target=options.target, exclude=options.exclude, strict=options.strict,
            cpu=options.cpu,
        )
    elif options.precision == "fp16":
        from quant.graph.fp16 import to_fp16

        built = to_fp16(prepared.clean)
    else:
        built = prepared.clean
    save_model(built, out)
    return BuildOutcome(
        output=out,
        precision=options.precision,
        target=options.target,
        warnings=tuple(warnings),
        **fields,
    )


def _with_exclude_file(options: BuildOptions, path: str | Path, prepared: PreparedModel) -> BuildOptions:
    """``options`` with the exclusions of a fallback file (``--exclude-from``) appended."""
    from dataclasses import replace

    from quant.sensitivity.io import read_exclude_file

    loaded = read_exclude_file(path)
    fp = loaded.model_fingerprint
    mine = prepared.fingerprint.to_dict()
    if fp is not None and any(fp.get(k) != mine.get(k) for k in ("graph", "weights")):
        log.warning(
            "--exclude-from '%s' was made for another version of model '%s'; its exclusions may not match",
            path,
            prepared.name,
        )
    extra = tuple(p for p in loaded.exclude if p not in options.exclude)
    return replace(options, exclude=options.exclude + extra)


def build_with_fallback(
    model: str | Path | None,
    *,
    output: str | Path,
    cache: str | Path | None,
    data: DataOptions | None,
    fallback: FallbackOptions,
    options: BuildOptions | None = None,
    prepared: PreparedModel | None = None,
    progress: bool = False,
) -> BuildOutcome:
    """Build the INT8 Q/DQ model, keeping the most sensitive layers in float until the budget holds.

    1. run FP32 once over ``data`` (at most ``DEFAULT_BUDGET_SAMPLES`` unless
       ``data.max_samples`` says otherwise), keeping inputs and outputs in memory;
    2. rank the layers with :func:`sensitivity`'s measurements on the first
       ``fallback.rank_samples`` (default ``DEFAULT_MAX_SAMPLES``) of them (metric: top-1 accuracy
       with labels, else top-1 agreement, for an accuracy budget; SQNR for ``min_sqnr`` alone);
    3. measure all INT8 on every sample, then keep layers in float one at a time in ranking
       order, re-measuring, until the budget holds (checked on the real Q/DQ model too) or every
       layer is float;
    4. save the model and the fallback file (exclusions, every step, the ranking), which
       ``build(..., exclude_from=...)`` reads to rebuild the same model.

    Node names are what exclusions match: unnamed nodes are named first (see
    :func:`with_node_names`).
    """
    from quant._io import check_output_not_input
    from quant.backends.onnxruntime import OrtRunner
    from quant.graph.load import save_model
    from quant.sensitivity import DEFAULT_BUDGET_SAMPLES, DEFAULT_MAX_SAMPLES, Budget, build_switchable_model
    from quant.sensitivity.io import fallback_path, save_fallback
    from quant.sensitivity.measure import (
        BatchStore,
        StoredDataset,
        SwitchableRunner,
        fill_store,
        greedy_fallback,
        measure_sensitivity,
        measure_stored,
    )
    from quant.sensitivity.results import Measurement

    options = options or BuildOptions()
    budget = Budget(accuracy_points=fallback.accuracy_budget, min_sqnr_db=fallback.min_sqnr)
    if options.precision != "int8":
        raise UsageError(f"--accuracy-budget / --min-sqnr need --precision int8, not {options.precision}")
    if options.target != "tensorrt":
        raise UsageError("--accuracy-budget / --min-sqnr support --target tensorrt only")
    if cache is None:
        raise UsageError("--accuracy-budget / --min-sqnr need --cache (run 'quant calibrate' first)")
    if data is None:
        raise UsageError("--accuracy-budget / --min-sqnr need --data: the samples the budget is measured on")
    prepared = with_node_names(prepared or prepare_model(model))
    out = Path(output)
    fb_path = Path(fallback.report) if fallback.report else fallback_path(out)
    if fb_path.resolve() == out.resolve():
        raise UsageError(f"--fallback-report '{fb_path}' is the output model; choose another path")
    for written in (out, fb_path):
        check_output_not_input(written, prepared.path, cache, sidecar_of(cache), data_file(data))
    loaded, warnings = load_cache_for_model(cache, prepared, strict=options.strict)
    for w in warnings:
        log.warning("%s", w)
    data = capped(data, DEFAULT_BUDGET_SAMPLES)
    dataset = open_data(prepared, data)
    switchable = build_switchable_model(prepared.clean, loaded.amax, exclude=options.exclude)
    # The ranking uses the budget's own metric (SQNR when only --min-sqnr is given).
    metric = "agreement" if budget.accuracy_points is not None and not dataset.has_labels else "accuracy"
    if budget.accuracy_points is None:
        metric = "sqnr"

    built: dict[tuple[str, ...], tuple[onnx.ModelProto, dict[str, Any]]] = {}

    def int8(exclude: tuple[str, ...]) -> tuple[onnx.ModelProto, dict[str, Any]]:
        if exclude not in built:
            built.clear()  # keep one model in memory
            built[exclude] = build_int8_model(
                prepared, loaded, target=options.target, exclude=exclude, strict=options.strict
            )
        return built[exclude]

    batch_size = effective_batch_size(prepared.inputs, data.batch_size)
    rank_samples = fallback.rank_samples or DEFAULT_MAX_SAMPLES
    with BatchStore() as store, SwitchableRunner(switchable, threads=fallback.threads) as runner:
        # FP32 once over every sample (the budget's samples), then the ranking on the first ones.
        fill_store(runner, dataset, store, batch_size=batch_size, progress=progress)
        sens = measure_sensitivity(
            runner,
            StoredDataset(store, limit=rank_samples, source=data.path),
            batch_size=batch_size,
            metric=metric,
            classifier_output=fallback.classifier_output,
            progress=progress,
        )
        runner.release_segments()  # the greedy steps change several layers: full passes only

        def verify(exclude: tuple[str, ...]) -> Measurement:
            candidate, _fields = int8(exclude)
            with OrtRunner(candidate, threads=fallback.threads, name=f"{out.name} (candidate)") as r:
                return measure_stored(
                    r.infer, store, outputs=runner.outputs, classifier_output=sens.classifier_output
                )

        result = greedy_fallback(runner, sens, store, budget, verify=verify)
    final, fields = int8(result.exclude)
    save_model(final, out)
    summary = dataset.summary().to_dict()
    summary["fingerprint"] = dataset.fingerprint()
    save_fallback(
        fb_path,
        {
            "model": {"path": str(prepared.path), "fingerprint": prepared.fingerprint.to_dict()},
            "cache": str(cache),
            "output": str(out),
            "target": options.target,
            "data": summary,
            "exclude": list(result.exclude),
            "fallback": result.to_dict(),
            "sensitivity": sens.to_dict(),
        },
    )
    return BuildOutcome(
        output=out,
        precision="int8",
        target=options.target,
        warnings=tuple(warnings),
        fallback=result,
        fallback_path=fb_path,
        **fields,
    )
