"""Merge the partial reports of shards into the report of one unsharded run, exactly.

A partial report (``quant eval --shard K/N``) holds ``extra["shard"]`` (which samples of how
many, in which batches: :meth:`quant.datasets.shard.ShardedDataset.describe`) and an evaluation
whose metrics carry their sums and counts (:class:`quant.eval.metrics.FidelitySums`,
:class:`quant.eval.metrics.ClassificationMetrics`). Merging adds those up, so accuracy, top-5,
agreement, SQNR (signal and noise energies), cosine, relative and maximum errors and sample
counts are what one run over all samples gives (up to the order of float64 additions, about
1e-16 relative), whatever the order of the reports.

Latency is not merged into one number: the shards may have run on different machines at the same
time. Each shard's latency (and its host) stays in ``extra["shards"]``; the merged precisions have
``latency = None``.

Sensitivity shards (``quant sensitivity --shard K/N``) measure a share of the layers on all the
samples; merging collects the layers and ranks them again (:func:`merge_sensitivity`).

Reports of another model, data set, calibration cache, precision set, batch size or shard count
are refused with one line naming the difference (:class:`~quant.errors.ReportError`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from quant.errors import ReportError
from quant.eval.evaluate import EvalResult, PrecisionResult
from quant.report.schema import Report

log = logging.getLogger(__name__)

__all__ = ["check_compatible", "merge_evaluations", "merge_reports", "merge_sensitivity"]

#: Calibration fields that identify the cache (its path may differ from machine to machine).
_CALIBRATION_KEYS = ("method", "params", "trt_header", "num_samples", "amax")


def _shard_of(report: Report) -> dict[str, Any]:
    shard = report.extra.get("shard")
    if not isinstance(shard, Mapping) or not all(k in shard for k in ("index", "count")):
        raise ReportError(
            f"{report.name} is not a partial report (no extra.shard); merge the reports that "
            "'quant eval --shard K/N' or 'quant sensitivity --shard K/N' wrote"
        )
    return dict(shard)


def _differs(what: str, a: Report, b: Report, detail: str) -> ReportError:
    return ReportError(f"{b.name} is of another {what} than {a.name} ({detail}); merge only shards of one run")


def check_compatible(first: Report, other: Report) -> None:
    """ReportError naming the first difference that forbids merging ``other`` with ``first``."""
    fa = (first.model or {}).get("fingerprint") or {}
    fb = (other.model or {}).get("fingerprint") or {}
    for key in ("graph", "weights"):
        if fa.get(key) != fb.get(key):
            raise _differs("model", first, other, f"{key} fingerprint {fb.get(key)} vs {fa.get(key)}")
    da, db = first.data.get("fingerprint"), other.data.get("fingerprint")
    if da != db:
        raise _differs("data set", first, other, f"data fingerprint {db} vs {da}")
    ca, cb = first.calibration, other.calibration
    if (ca is None) != (cb is None):
        raise _differs("calibration cache", first, other, "one has a calibration cache, the other none")
    if ca is not None and cb is not None:
        for key in _CALIBRATION_KEYS:
            if ca.get(key) != cb.get(key):
                raise _differs(
                    "calibration cache", first, other, f"calibration '{key}' differs: {cb.get('cache')} vs {ca.get('cache')}"
                )
    sa, sb = _shard_of(first), _shard_of(other)
    for key in ("count", "total_samples", "batch_size", "kind"):
        if sa.get(key) != sb.get(key):
            raise ReportError(
                f"{other.name} has shard {key} {sb.get(key)} but {first.name} has {sa.get(key)}; "
                "merge only shards of one run"
            )
    ea, eb = first.evaluation, other.evaluation
    if (ea is None) != (eb is None):
        raise _differs("kind", first, other, "one has an evaluation, the other none")
    if ea is not None and eb is not None:
        if ea.names != eb.names or ea.reference != eb.reference:
            raise _differs("precision set", first, other, f"{', '.join(eb.names)} vs {', '.join(ea.names)}")
        if ea.outputs != eb.outputs or ea.classifier_output != eb.classifier_output:
            raise _differs("model", first, other, "other outputs or classifier output")
        if ea.batch_size != eb.batch_size or ea.warmup != eb.warmup:
            raise ReportError(
                f"{other.name} was evaluated with batch size {eb.batch_size} / warm-up {eb.warmup}, "
                f"{first.name} with {ea.batch_size} / {ea.warmup}; merge only shards of one run"
            )
    if ("sensitivity" in first.extra) != ("sensitivity" in other.extra):
        raise _differs("kind", first, other, "one has a sensitivity section, the other none")


def _check_shard_set(reports: Sequence[Report]) -> None:
    count = int(_shard_of(reports[0])["count"])
    seen: dict[int, Report] = {}
    for r in reports:
        k = int(_shard_of(r)["index"])
        if k in seen:
            raise ReportError(f"{r.name} and {seen[k].name} are both shard {k}/{count}; give each shard once")
        seen[k] = r
    missing = [k for k in range(1, count + 1) if k not in seen]
    if missing:
        raise ReportError(
            f"shard{'s' if len(missing) > 1 else ''} {', '.join(f'{k}/{count}' for k in missing)} missing "
            f"({len(reports)} of {count} given); merge every shard of the run"
        )


def _merge_precision(a: PrecisionResult, b: PrecisionResult) -> PrecisionResult:
    cls = a.classification
    if cls is not None and b.classification is not None:
        cls = cls.merge(b.classification)
    elif cls is None and b.classification is not None:
        cls = b.classification
    fb = {f.output: f for f in b.fidelity}
    return PrecisionResult(
        name=a.name,
        is_reference=a.is_reference,
        classification=cls,
        fidelity=tuple(f.merge(fb[f.output]) for f in a.fidelity),
        latency=None,
    )


def merge_evaluations(results: Sequence[EvalResult]) -> EvalResult:
    """One EvalResult from the evaluations of disjoint shards (same precisions and outputs).

    Counts and sums are added; latency is None (kept per shard by :func:`merge_reports`).
    """
    if not results:
        raise ReportError("nothing to merge: give at least one evaluation")
    first = results[0]
    precisions = list(first.precisions)
    for r in results[1:]:
        precisions = [_merge_precision(p, r.precision(p.name)) for p in precisions]
    if len(results) == 1:
        precisions = [_merge_precision(p, _empty_like(p)) for p in precisions]
    return EvalResult(
        reference=first.reference,
        precisions=tuple(precisions),
        num_samples=sum(r.num_samples for r in results),
        num_batches=sum(r.num_batches for r in results),
        batch_size=first.batch_size,
        warmup=first.warmup,
        has_labels=any(r.has_labels for r in results),
        classifier_output=first.classifier_output,
        outputs=first.outputs,
    )


def _empty_like(p: PrecisionResult) -> PrecisionResult:
    from quant.eval.metrics import FidelityMetrics, FidelitySums

    return PrecisionResult(
        name=p.name,
        is_reference=p.is_reference,
        classification=None,
        fidelity=tuple(FidelityMetrics.from_sums(f.output, FidelitySums()) for f in p.fidelity),
    )


def _sensitivity_sections(reports: Sequence[Report]) -> list[Mapping[str, Any]]:
    sections = []
    for r in reports:
        s = r.extra.get("sensitivity")
        if not isinstance(s, Mapping):
            raise ReportError(f"{r.name} has no sensitivity section; merge reports of one kind")
        sections.append(s)
    return sections


def merge_sensitivity(sections: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sensitivity section of the whole run from its layer shards: every layer once, ranked
    again (most sensitive first, the same order one run gives). ReportError when the shards
    measured other samples, metrics or references, or a layer twice."""
    from quant.sensitivity.results import LayerSensitivity

    first = sections[0]
    for s in sections[1:]:
        for key in ("metric", "num_samples", "batch_size", "outputs", "classifier_output", "method"):
            if s.get(key) != first.get(key):
                raise ReportError(
                    f"sensitivity shards differ in '{key}' ({s.get(key)!r} vs {first.get(key)!r}); "
                    "merge only shards of one run"
                )
        for key in ("reference", "all_int8"):
            if s.get(key) != first.get(key):
                raise ReportError(
                    f"sensitivity shards measured different '{key}' results ({s.get(key)} vs {first.get(key)}); "
                    "they ran on other data or another runtime; run the shards again"
                )
    layers: dict[int, LayerSensitivity] = {}
    for s in sections:
        for i, d in enumerate(s.get("layers") or []):
            layer = LayerSensitivity.from_dict(d, f"sensitivity.layers[{i}]")
            if layer.index in layers:
                raise ReportError(f"layer '{layer.name}' is in two sensitivity shards; give each shard once")
            layers[layer.index] = layer
    ranked = sorted(layers.values(), key=lambda x: (-x.score, -x.noise_score, x.index))
    merged = dict(first)
    merged["layers"] = [{**layer.to_dict(), "rank": r} for r, layer in enumerate(ranked, start=1)]
    for key in ("configurations", "forward_passes", "seconds"):
        if all(isinstance(s.get(key), (int, float)) for s in sections):
            merged[key] = sum(s[key] for s in sections)
    merged.pop("shard", None)
    return merged


def merge_reports(reports: Sequence[Report], *, command: Sequence[str] | None = None) -> Report:
    """The report of the whole run from the partial reports of all its shards, in any order.

    ReportError (one line, naming the difference) for reports of another model, data set,
    calibration cache, precision set or run, a shard given twice or missing.
    """
    if not reports:
        raise ReportError("nothing to merge: give the partial reports of every shard")
    first = reports[0]
    for other in reports[1:]:
        check_compatible(first, other)
    _check_shard_set(reports)
    ordered = sorted(reports, key=lambda r: int(_shard_of(r)["index"]))
    shards = []
    for r in ordered:
        entry: dict[str, Any] = {"shard": _shard_of(r), "created": r.created}
        if r.evaluation is not None:
            entry["latency"] = {
                p.name: None if p.latency is None else p.latency.to_dict() for p in r.evaluation.precisions
            }
        entry["environment"] = dict(r.environment)
        shards.append(entry)
    extra: dict[str, Any] = {"shards": shards}
    dropped = sorted({k for r in ordered for k in r.extra if k not in ("shard", "sensitivity")})
    if dropped:
        log.warning("merge-reports: sections %s of the partial reports are not merged (left out)", ", ".join(dropped))
    if "sensitivity" in first.extra:
        extra["sensitivity"] = merge_sensitivity(_sensitivity_sections(ordered))
    evaluation = None
    if first.evaluation is not None:
        evaluation = merge_evaluations([r.evaluation for r in ordered if r.evaluation is not None])
    data = dict(first.data)
    if _shard_of(first).get("kind", "samples") == "samples":
        # Sample shards saw disjoint samples; layer shards (sensitivity) all saw the same ones.
        data["num_samples"] = sum(int(r.data.get("num_samples", 0)) for r in ordered)
        data["num_skipped"] = sum(int(r.data.get("num_skipped", 0) or 0) for r in ordered)
        data["skipped"] = [s for r in ordered for s in (r.data.get("skipped") or [])]
    return Report.create(
        model=first.model,
        data=data,
        evaluation=evaluation,
        calibration=first.calibration,
        build=first.build,
        command=command,
        extra=extra,
    )
