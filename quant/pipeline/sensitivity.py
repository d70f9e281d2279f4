"""The sensitivity stage: ``quant sensitivity`` ranks the quantized layers by how much INT8 hurts
the output metric, and adds the ranking to a report (docs/SENSITIVITY.md)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant.config import DataOptions
from quant.errors import DataError
from quant.pipeline.prepare import (
    PreparedModel,
    capped,
    effective_batch_size,
    model_section,
    open_data,
    prepare_model,
    with_node_names,
)
from quant.pipeline.quantize import load_cache_for_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SensitivityOutcome:
    """What :func:`sensitivity` measured, the data it used and where the report went (if anywhere)."""

    result: Any  # quant.sensitivity.SensitivityResult
    section: dict[str, Any]  # what went into report.extra["sensitivity"]
    report_path: Path | None = None
    warnings: tuple[str, ...] = ()


def sensitivity(
    model: str | Path | None,
    data: DataOptions,
    *,
    cache: str | Path,
    options: Any = None,
    report: str | Path | None = None,
    progress: bool = False,
    command: Sequence[str] | None = None,
    prepared: PreparedModel | None = None,
    shard: str | None = None,
) -> SensitivityOutcome:
    """Rank the quantized layers of ``model`` by how much INT8 hurts the output metric.

    For each layer: the loss with it alone in INT8 (damage) and the loss saved with it alone in
    float (gain), against FP32 on ``data`` (at most ``DEFAULT_MAX_SAMPLES`` samples unless
    ``data.max_samples`` says otherwise). ``options`` is a
    :class:`quant.sensitivity.SensitivityOptions`. With ``report``, the result is added as
    ``extra["sensitivity"]`` to that report (created when it does not exist).

    Unless ``options.exact``, the samples are read in rounds and the measurement stops once the
    ranking's split-half reliability reaches ``options.confidence`` (reported as ``confidence``).
    ``shard`` (``"K/N"``): measure only that contiguous 1/N of the layers, on all the samples
    (sensitivity shards by layers; :func:`quant.report.merge.merge_sensitivity` merges them).
    """
    from quant.sensitivity import DEFAULT_MAX_SAMPLES, SensitivityOptions

    opts: SensitivityOptions = options or SensitivityOptions()
    prepared = with_node_names(prepared or prepare_model(model))
    loaded, warnings = load_cache_for_model(cache, prepared)
    for w in warnings:
        log.warning("%s", w)
    data = capped(data, DEFAULT_MAX_SAMPLES)
    dataset = open_data(prepared, data)
    if opts.metric == "accuracy" and not dataset.has_labels:
        raise DataError(
            f"--metric accuracy needs labelled data and '{data.path}' has no labels (class subfolders or an "
            "npz 'labels' key); use --metric agreement"
        )
    batch_size = effective_batch_size(prepared.inputs, data.batch_size)
    result, shard_info = None, None
    if _first_order(opts, shard):
        result = _estimate(prepared, loaded.amax, opts, dataset, batch_size, progress, data.seed)
    if result is None:
        result, shard_info = _measure(prepared, loaded.amax, opts, dataset, batch_size, progress, shard)
    summary = dataset.summary().to_dict()
    summary["fingerprint"] = dataset.fingerprint()
    section = {"cache": str(cache), "data": summary, **result.to_dict()}
    if shard_info is not None:
        section["shard"] = shard_info
    report_path = None
    if report is not None and shard_info is not None:
        # A partial report of its own (never added into another report): merge-reports merges them.
        from quant.report.schema import Report, save_report

        report_path = save_report(
            Report.create(model=model_section(prepared), data=summary, command=command,
                          extra={"sensitivity": section, "shard": shard_info}),
            report,
        )
    elif report is not None:
        report_path = _save_sensitivity_report(report, prepared, summary, section, command)
    return SensitivityOutcome(result=result, section=section, report_path=report_path, warnings=tuple(warnings))


def _first_order(opts: Any, shard: str | None) -> bool:
    """Whether to try the first-order estimate: ``--ranking first-order``, or ``auto`` without
    ``--exact`` and without layer shards (a shard measures its layers; the estimate has all of
    them at once, so sharding it by layers would save nothing)."""
    if opts.ranking == "first-order":
        if opts.exact or shard is not None:
            from quant.errors import UsageError

            raise UsageError("--ranking first-order cannot be combined with --exact or --shard/--shards "
                             "(both measure); drop one")
        return True
    # The estimate ranks by SQNR: a classification metric asked for by name is measured.
    return opts.ranking == "auto" and not opts.exact and shard is None and opts.metric in ("auto", "sqnr")


def _estimate(
    prepared: PreparedModel, amax: Any, opts: Any, dataset: Any, batch_size: int, progress: bool, dataset_seed: int
) -> Any:
    """The first-order estimate, or None (``--ranking auto``) when it does not apply here."""
    from quant.sensitivity.estimate import EstimateUnavailable, estimate_sensitivity
    from quant.sensitivity.switchable import plan_layers

    try:
        return estimate_sensitivity(
            plan_layers(prepared.clean, amax, exclude=opts.exclude),
            dataset,
            batch_size=batch_size,
            metric=opts.metric,
            classifier_output=opts.classifier_output,
            probes=opts.probes,
            seed=dataset_seed,
            threads=opts.threads,
            progress=progress,
            gains=opts.gains,
        )
    except EstimateUnavailable as exc:
        if opts.ranking == "first-order":
            raise
        log.info("sensitivity: %s; measuring instead", exc)
        return None


def _measure(
    prepared: PreparedModel, amax: Any, opts: Any, dataset: Any, batch_size: int, progress: bool, shard: str | None
) -> tuple[Any, dict[str, Any] | None]:
    """The ONNX Runtime measurement (all layers, or a layer shard) and the shard's record."""
    from quant.sensitivity import build_switchable_model
    from quant.sensitivity.measure import SwitchableRunner, measure_sensitivity

    switchable = build_switchable_model(prepared.clean, amax, exclude=opts.exclude)
    chosen = None
    shard_info = None
    if shard is not None:
        from quant.datasets.shard import Shard

        part = Shard.parse(shard)
        first, last = part.batch_bounds(switchable.num_layers)
        chosen = list(range(first, last))
        shard_info = {"kind": "layers", **part.to_dict(), "start": first, "stop": last,
                      "total_layers": switchable.num_layers}
    with SwitchableRunner(switchable, threads=opts.threads, segments=opts.segments) as runner:
        result = measure_sensitivity(
            runner,
            dataset,
            batch_size=batch_size,
            metric=opts.metric,
            classifier_output=opts.classifier_output,
            progress=progress,
            layers=chosen,
            # Layer shards must measure the same samples: they sample all of them.
            confidence=None if opts.exact or shard is not None else opts.confidence,
            round_samples=opts.round_samples,
            min_samples=opts.min_samples,
        )
    return result, shard_info


def _save_sensitivity_report(
    path: str | Path,
    prepared: PreparedModel,
    data_summary: dict[str, Any],
    section: dict[str, Any],
    command: Sequence[str] | None,
) -> Path:
    """Add ``section`` as ``extra["sensitivity"]`` to the report at ``path``, or write a new one."""
    from dataclasses import replace

    from quant.errors import ReportError
    from quant.report.schema import Report, load_report, save_report

    p = Path(path)
    if p.exists():
        existing = load_report(p)
        theirs = (existing.model or {}).get("fingerprint") or {}
        mine = prepared.fingerprint.to_dict()
        if any(theirs.get(k) != mine.get(k) for k in ("graph", "weights")):
            raise ReportError(
                f"report '{p}' is for another model ({(existing.model or {}).get('path')}), not "
                f"'{prepared.path}'; give another --report path"
            )
        rep = replace(existing, extra={**existing.extra, "sensitivity": section})
    else:
        rep = Report.create(
            model=model_section(prepared),
            data=data_summary,
            command=command,
            extra={"sensitivity": section},
        )
    return save_report(rep, p)
