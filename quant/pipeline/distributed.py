"""Sharded runs: evaluation and sensitivity split into N shard tasks on an executor (local or Ray),
merged exactly into the report one unsharded run gives, and ``merge-reports``.

Each task receives only paths and options and opens the model, the cache and its shard of the
data itself (:func:`eval_shard_task`, :func:`sensitivity_shard_task`: module-level, so Ray
pickles them by name). The driver merges the partial results (:mod:`quant.report.merge`) and
writes the one report atomically, after every task succeeded: a failed or interrupted run
leaves no report behind.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from quant.config import DataOptions, EvalOptions
from quant.errors import UsageError

log = logging.getLogger(__name__)

__all__ = [
    "calibrate_shard_task",
    "calibrate_sharded",
    "eval_shard_task",
    "evaluate_sharded",
    "merge_report_files",
    "sensitivity_shard_task",
    "sensitivity_sharded",
]


def _check_shards(shards: int) -> None:
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise UsageError(f"--shards must be a positive integer, got {shards!r}")


def _executor(executor: Any, address: str | None) -> tuple[Any, bool]:
    """(executor object, whether this call owns it and must close it)."""
    if isinstance(executor, str):
        from quant.executors import make_executor

        return make_executor(executor, address=address), True
    return executor, False


def _task_threads(ex: Any, threads: int | None) -> int | None:
    # A Ray task reserves task_cpus CPUs: its ONNX Runtime threads match, so that tasks sharing a
    # node do not oversubscribe it.
    if threads is None and getattr(ex, "name", "local") == "ray":
        return int(getattr(ex, "task_cpus", 1))
    return threads


def eval_shard_task(options: Mapping[str, Any]) -> dict[str, Any]:
    """One evaluation shard (runs on a worker): its partial report as a dict."""
    from quant.pipeline.evaluate import evaluate

    rep = evaluate(
        options["model"],
        options["data"],
        cache=options.get("cache"),
        int8_model=options.get("int8_model"),
        options=options["options"],
        exclude=tuple(options.get("exclude") or ()),
        shard=options["shard"],
    )
    return rep.to_dict()


def evaluate_sharded(
    model: str | Path,
    data: DataOptions,
    *,
    shards: int,
    executor: Any = "local",
    ray_address: str | None = None,
    cache: str | Path | None = None,
    int8_model: str | Path | None = None,
    options: EvalOptions | None = None,
    exclude: Sequence[str] = (),
    report: str | Path | None = None,
    command: Sequence[str] | None = None,
) -> Any:
    """Evaluate ``shards`` shards of ``data`` as tasks of ``executor`` (``"local"``, ``"ray"`` or
    an executor object) and return the merged report (saved to ``report`` when given): the
    same accuracy, agreement, SQNR, cosine, errors and counts as one unsharded run; each shard's
    latency is kept in ``extra["shards"]``, how the tasks ran (attempts, seconds) in
    ``extra["executor"]``."""
    from quant.executors import ShardTask
    from quant.pipeline.prepare import resolve_model_path
    from quant.report.merge import merge_reports
    from quant.report.schema import Report, save_report

    _check_shards(shards)
    path = resolve_model_path(model)
    if report is not None:
        from quant._io import check_output_not_input
        from quant.pipeline.prepare import data_file, sidecar_of

        check_output_not_input(report, path, data_file(data), cache, sidecar_of(cache), int8_model)
    ex, owned = _executor(executor, ray_address)
    try:
        opts = options or EvalOptions()
        opts = replace(opts, threads=_task_threads(ex, opts.threads))
        tasks = [
            ShardTask(
                f"shard {k}/{shards}",
                {
                    "model": str(path),
                    "data": data,
                    "cache": None if cache is None else str(cache),
                    "int8_model": None if int8_model is None else str(int8_model),
                    "options": opts,
                    "exclude": list(exclude),
                    "shard": f"{k}/{shards}",
                },
            )
            for k in range(1, shards + 1)
        ]
        parts = ex.run(eval_shard_task, tasks)
        reports = [Report.from_dict(p, source=t.label) for p, t in zip(parts, tasks, strict=True)]
        merged = merge_reports(reports, command=command)
        merged = replace(
            merged,
            extra={**merged.extra, "executor": {"name": ex.name, "tasks": [r.to_dict() for r in ex.reports]}},
        )
    finally:
        if owned:
            ex.close()
    if report is not None:
        save_report(merged, report)
    return merged


def sensitivity_shard_task(options: Mapping[str, Any]) -> dict[str, Any]:
    """One sensitivity shard (a share of the layers, all samples): its section as a dict."""
    from quant.pipeline.sensitivity import sensitivity

    out = sensitivity(
        options["model"], options["data"], cache=options["cache"], options=options["options"],
        shard=options["shard"],
    )
    return out.section


def sensitivity_sharded(
    model: str | Path,
    data: DataOptions,
    *,
    cache: str | Path,
    shards: int,
    executor: Any = "local",
    ray_address: str | None = None,
    options: Any = None,
    report: str | Path | None = None,
    command: Sequence[str] | None = None,
) -> Any:
    """Sensitivity with the layers split into ``shards`` tasks of ``executor``, every task on all
    the samples (so every layer is measured on the same samples as unsharded), merged into one
    ranking; returns a :class:`~quant.pipeline.sensitivity.SensitivityOutcome`."""
    from quant.executors import ShardTask
    from quant.pipeline.prepare import prepare_model, resolve_model_path, with_node_names
    from quant.pipeline.sensitivity import SensitivityOutcome, _save_sensitivity_report
    from quant.report.merge import merge_sensitivity
    from quant.sensitivity import DEFAULT_MAX_SAMPLES, SensitivityOptions, SensitivityResult

    _check_shards(shards)
    path = resolve_model_path(model)
    opts: SensitivityOptions = options or SensitivityOptions()
    from quant.pipeline.prepare import capped

    data = capped(data, DEFAULT_MAX_SAMPLES)
    ex, owned = _executor(executor, ray_address)
    try:
        opts = replace(opts, threads=_task_threads(ex, opts.threads))
        tasks = [
            ShardTask(
                f"layer shard {k}/{shards}",
                {"model": str(path), "data": data, "cache": str(cache), "options": opts, "shard": f"{k}/{shards}"},
            )
            for k in range(1, shards + 1)
        ]
        sections = ex.run(sensitivity_shard_task, tasks)
        task_reports = [r.to_dict() for r in ex.reports]
    finally:
        if owned:
            ex.close()
    merged = merge_sensitivity(sections)
    merged["executor"] = {"name": ex.name, "tasks": task_reports}
    result = SensitivityResult.from_dict(merged)
    report_path = None
    if report is not None:
        prepared = with_node_names(prepare_model(path))
        report_path = _save_sensitivity_report(report, prepared, dict(merged["data"]), merged, command)
    return SensitivityOutcome(result=result, section=merged, report_path=report_path)


def merge_report_files(
    inputs: Sequence[str | Path], *, output: str | Path, command: Sequence[str] | None = None
) -> Any:
    """``quant merge-reports``: load the partial reports, merge them, write ``output`` atomically."""
    from quant.report.merge import merge_reports
    from quant.report.schema import load_report, save_report

    if not inputs:
        raise UsageError("merge-reports needs the partial reports of every shard")
    out = Path(output)
    for p in inputs:
        if Path(p).resolve() == out.resolve():
            raise UsageError(f"output '{out}' is one of the inputs; write the merged report elsewhere")
    merged = merge_reports([load_report(p) for p in inputs], command=command)
    save_report(merged, out)
    return merged


def calibrate_shard_task(options: Mapping[str, Any]) -> dict[str, Any]:
    """One calibration shard (runs on a worker): the statistics of its samples, as dicts."""
    from quant.calibrators.calibrate import collect_statistics
    from quant.datasets.shard import shard_dataset
    from quant.graph.qdq import calibration_tensors
    from quant.pipeline.prepare import effective_batch_size, open_data, prepare_model

    prepared = prepare_model(options["model"])
    data: DataOptions = options["data"]
    batch_size = effective_batch_size(prepared.inputs, data.batch_size)
    dataset = shard_dataset(open_data(prepared, data), options["shard"], batch_size=batch_size)
    tensors = calibration_tensors(prepared.clean, scope=options["scope"])
    collector, seen = collect_statistics(
        prepared.clean, dataset, tensors, batch_size=batch_size, num_bins=options["num_bins"],
        threads=options.get("threads"), model_name=prepared.name,
    )
    return {
        "stats": {name: s.to_dict() for name, s in collector.stats().items()},
        "meta": {
            "num_samples": seen,
            "model_fingerprint": prepared.fingerprint.to_dict(),
            "data_fingerprint": dataset.fingerprint(),
            "scope": options["scope"],
            "num_bins": options["num_bins"],
        },
    }


def calibrate_sharded(
    model: str | Path,
    data: DataOptions,
    *,
    cache: str | Path,
    shards: int,
    executor: Any = "local",
    ray_address: str | None = None,
    options: Any = None,
) -> Any:
    """Collect calibration statistics in ``shards`` shard tasks of ``executor``, merge them
    exactly (:func:`quant.calibrators.stats_io.merge_statistics`) and write the cache from the
    merged statistics (:func:`quant.pipeline.calibrate.calibrate_from_stats`): the same ranges as
    one calibration over all the samples. Returns the :class:`CalibrateOutcome`."""
    import tempfile

    from quant.calibrators.stats import TensorStats
    from quant.calibrators.stats_io import merge_statistics, save_stats
    from quant.config import CalibrationOptions
    from quant.executors import ShardTask
    from quant.pipeline.calibrate import calibrate_from_stats
    from quant.pipeline.prepare import resolve_model_path

    _check_shards(shards)
    opts: CalibrationOptions = options or CalibrationOptions()
    if opts.method == "auto":
        raise UsageError("--method auto cannot run in --shards; collect with another method, then --from-stats")
    path = resolve_model_path(model)
    ex, owned = _executor(executor, ray_address)
    try:
        tasks = [
            ShardTask(
                f"calibration shard {k}/{shards}",
                {"model": str(path), "data": data, "shard": f"{k}/{shards}", "scope": opts.scope,
                 "num_bins": opts.num_bins, "threads": _task_threads(ex, None)},
            )
            for k in range(1, shards + 1)
        ]
        parts = ex.run(calibrate_shard_task, tasks)
    finally:
        if owned:
            ex.close()
    decoded = [
        (t.label, {n: TensorStats.from_dict(d) for n, d in p["stats"].items()}, p["meta"])
        for t, p in zip(tasks, parts, strict=True)
    ]
    if len(decoded) == 1:
        stats, meta = decoded[0][1], dict(decoded[0][2])
    else:
        stats, meta = merge_statistics(decoded)
    with tempfile.TemporaryDirectory(prefix="quant-shards-") as tmp:
        merged = save_stats(Path(tmp) / "merged.stats.npz", stats, meta)
        return calibrate_from_stats(path, merged, cache=cache, options=opts)
