"""The evaluate stage: ``quant eval`` runs the same samples through FP32 / FP16 / INT8 on ONNX
Runtime and returns the report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.config import DataOptions, EvalOptions
from quant.errors import UsageError
from quant.pipeline.layers import with_layer_sections
from quant.pipeline.prepare import data_file, effective_batch_size, open_data, prepare_model, sidecar_of
from quant.pipeline.quantize import precision_models
from quant.pipeline.report import make_report

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import onnx

    from quant.pipeline.calibrate import CalibrateOutcome
    from quant.pipeline.prepare import PreparedModel
    from quant.report.schema import Report


def evaluate(
    model: str | Path | None,
    data: DataOptions,
    *,
    cache: str | Path | None = None,
    int8_model: str | Path | None = None,
    options: EvalOptions | None = None,
    exclude: Sequence[str] = (),
    report: str | Path | None = None,
    progress: bool = False,
    command: Sequence[str] | None = None,
    prepared: PreparedModel | None = None,
    calibration: CalibrateOutcome | None = None,
    prebuilt: tuple[dict[str, onnx.ModelProto], dict[str, Any]] | None = None,
    layers: bool = False,
    shard: str | None = None,
) -> Report:
    """Run the same samples through FP32 / FP16 / INT8 and return (and optionally save) a report.

    ``layers`` adds the per-layer errors and activation histograms (:func:`analyze_layers`) to
    ``report.extra``; it needs ``cache`` or ``int8_model``.

    ``shard`` (``"K/N"``): evaluate only that deterministic 1/N of the samples (whole batches,
    :mod:`quant.datasets.shard`) and return a *partial* report (``extra["shard"]``, the whole
    data set's fingerprint) that :func:`quant.report.merge.merge_reports` merges exactly.
    """
    from quant.eval.evaluate import evaluate as run_eval
    from quant.report.schema import save_report

    options = options or EvalOptions()
    if layers and cache is None and int8_model is None and not (prebuilt and "int8" in prebuilt[0]):
        raise UsageError("--layers needs --cache (or --int8-model): the per-layer errors compare the INT8 model with FP32")
    prepared = prepared or prepare_model(model)
    if report is not None:
        from quant._io import check_output_not_input

        check_output_not_input(report, prepared.path, data_file(data), cache, sidecar_of(cache), int8_model)
    dataset = open_data(prepared, data)
    sharded = None
    if shard is not None:
        if layers:
            raise UsageError("--layers cannot be combined with --shard: run the layer analysis unsharded")
        from quant.datasets.shard import shard_dataset

        sharded = shard_dataset(dataset, shard, batch_size=effective_batch_size(prepared.inputs, data.batch_size))
        dataset = sharded
    if prebuilt is not None:
        models, build_info = prebuilt
    else:
        models, build_info = precision_models(
            prepared, options.precisions, cache=cache, int8_model=int8_model, exclude=exclude, cpu=options.cpu
        )
    batch_size = effective_batch_size(prepared.inputs, data.batch_size)
    from quant.backends.onnxruntime import OrtRunner
    from quant.pipeline.arithmetic import cpu_mismatch, describe, int8_mode

    threads = options.threads
    # Errors name the user's model file (and the precision), not the ONNX graph's internal name.
    runner_names = {id(m): f"{prepared.name} ({p})" if p != "fp32" else prepared.name for p, m in models.items()}
    # int8-ort runs ONNX Runtime's fused integer kernels (what the deployed CPU model does); every
    # other precision, int8 included, computes Q/DQ exactly (TensorRT's arithmetic on every CPU).
    modes = {id(m): int8_mode(p) for p, m in models.items()}
    arithmetic = {p: d for p, m in models.items() if (d := describe(p, m)) is not None}
    for p, m in models.items():
        mismatch = cpu_mismatch(p, m)
        if mismatch:
            log.warning("%s", mismatch)

    def runner_factory(m: Any) -> Any:
        return OrtRunner(m, threads=threads, name=runner_names.get(id(m), prepared.name),
                         int8=modes.get(id(m), "exact"))

    result = run_eval(
        models,
        dataset,
        batch_size=batch_size,
        warmup=options.warmup,
        progress=progress,
        classifier_output=options.classifier_output,
        runner_factory=runner_factory,
    )
    rep = make_report(
        prepared,
        dataset,
        result,
        cache=cache,
        build_info=build_info,
        command=command,
        calibration=calibration,
        int8_arithmetic=arithmetic,
    )
    if sharded is not None:
        from dataclasses import replace

        rep = replace(
            rep,
            data={**rep.data, "fingerprint": sharded.full_fingerprint()},
            extra={**rep.extra, "shard": sharded.describe()},
        )
    if layers:
        rep = with_layer_sections(
            rep, prepared, dataset, models, cache=cache, exclude=exclude, batch_size=data.batch_size,
            progress=progress, threads=options.threads,
        )
    if report is not None:
        save_report(rep, report)
    return rep
