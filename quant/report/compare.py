"""Compare a report with a baseline report, metric by metric and precision by precision.

Metrics compared for each precision present in either report (keys of :attr:`ComparisonRow.metric`):

* ``top1``, ``top5`` (accuracy, %), ``agreement`` (top-1 agreement with the reference, %):
  gated by :attr:`Thresholds.max_drop` (accuracy points, absolute) and
  :attr:`Thresholds.max_relative_drop` (fraction of the baseline value); both apply when set.
* ``sqnr:<output>`` (dB, per output; +inf when exact): gated by the floor :attr:`Thresholds.min_sqnr`.
* ``latency_ms`` (mean ms per batch): gated by :attr:`Thresholds.max_latency_increase` (fraction)
  only when set; compared only when both reports used the same batch size.

Status of a row: ``regression`` (worse than the limit), ``improved`` (better than the baseline),
``ok`` (otherwise), ``new`` (only in the current report), ``missing`` (only in the baseline).
Only regressions fail the comparison (:attr:`Comparison.ok`); ``missing`` rows are shown but do not
fail it, so dropping a precision from an evaluation is visible without being an error.

A change of exactly the budget is *not* a regression. Accuracies are percentages derived from
counts, so a drop of exactly 0.5 points can compute as 0.5000000000000071; every comparison
allows :data:`EPSILON` (1e-9, in the metric's own units, far below any meaningful difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from quant.errors import ReportError, UsageError
from quant.eval._fields import as_mapping, finite_or_none, get_float
from quant.eval.evaluate import EvalResult, PrecisionResult
from quant.report.schema import Report
from quant.report.table import fmt_number, format_columns

EPSILON = 1e-9

STATUSES = ("ok", "regression", "improved", "new", "missing")

_ACCURACY = "accuracy"
_SQNR = "sqnr"
_LATENCY = "latency"


@dataclass(frozen=True)
class Thresholds:
    """Regression budgets; None switches a gate off.

    ``max_drop``: accuracy points (absolute) top-1/top-5/agreement may drop; ``max_relative_drop``:
    the same as a fraction of the baseline value (0.01 = 1 %); ``min_sqnr``: floor in dB for every
    output's SQNR; ``max_latency_increase``: fraction the mean latency may grow (default: not gated).
    """

    max_drop: float | None = 0.5
    max_relative_drop: float | None = None
    min_sqnr: float | None = None
    max_latency_increase: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_drop", "max_relative_drop", "max_latency_increase"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise UsageError(f"threshold {name} must be a non-negative number or None, not {value!r}")
        if self.min_sqnr is not None and (
            isinstance(self.min_sqnr, bool)
            or not isinstance(self.min_sqnr, (int, float))
            or not math.isfinite(self.min_sqnr)
        ):
            raise UsageError(f"threshold min_sqnr must be a number of dB or None, not {self.min_sqnr!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_drop": self.max_drop,
            "max_relative_drop": self.max_relative_drop,
            "min_sqnr": self.min_sqnr,
            "max_latency_increase": self.max_latency_increase,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "thresholds") -> Thresholds:
        d = as_mapping(data, where)
        return cls(
            max_drop=get_float(d, "max_drop", where, nullable=True),
            max_relative_drop=get_float(d, "max_relative_drop", where, nullable=True),
            min_sqnr=get_float(d, "min_sqnr", where, nullable=True),
            max_latency_increase=get_float(d, "max_latency_increase", where, nullable=True),
        )


@dataclass(frozen=True)
class ComparisonRow:
    """One metric of one precision. ``limit`` is the worst acceptable current value (a minimum for
    accuracy and SQNR, a maximum for latency), None when not gated. SQNR values may be +inf (exact)."""

    precision: str
    metric: str
    baseline: float | None
    current: float | None
    delta: float | None
    limit: float | None
    status: str
    note: str = ""

    @property
    def label(self) -> str:
        """Human-readable metric name with unit."""
        if self.metric == "top1":
            return "top-1 %"
        if self.metric == "top5":
            return "top-5 %"
        if self.metric == "agreement":
            return "agree %"
        if self.metric == "latency_ms":
            return "ms/batch"
        if self.metric.startswith("sqnr:"):
            return f"SQNR {self.metric[5:]} dB"
        return self.metric

    def to_dict(self) -> dict[str, Any]:
        # JSON has no infinity: an exact SQNR is null here; the table renders it as "exact".
        return {
            "precision": self.precision,
            "metric": self.metric,
            "baseline": finite_or_none(self.baseline),
            "current": finite_or_none(self.current),
            "delta": finite_or_none(self.delta),
            "limit": finite_or_none(self.limit),
            "status": self.status,
            "note": self.note,
        }


@dataclass(frozen=True)
class Comparison:
    """All rows of a comparison; :attr:`ok` is True when no row is a regression."""

    baseline: str
    current: str
    thresholds: Thresholds
    rows: tuple[ComparisonRow, ...]

    @property
    def regressions(self) -> tuple[ComparisonRow, ...]:
        return tuple(r for r in self.rows if r.status == "regression")

    @property
    def missing(self) -> tuple[ComparisonRow, ...]:
        return tuple(r for r in self.rows if r.status == "missing")

    @property
    def ok(self) -> bool:
        """True when nothing regressed (``missing`` and ``new`` rows do not fail)."""
        return not self.regressions

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "current": self.current,
            "thresholds": self.thresholds.to_dict(),
            "ok": self.ok,
            "rows": [r.to_dict() for r in self.rows],
        }


def _metrics(p: PrecisionResult) -> dict[str, tuple[float, str]]:
    """The comparable metrics of one precision, in display order: name -> (value, kind)."""
    out: dict[str, tuple[float, str]] = {}
    c = p.classification
    if c is not None:
        for key, value in (("top1", c.top1), ("top5", c.top5)):
            if value is not None:
                out[key] = (value, _ACCURACY)
        if not p.is_reference and c.agreement is not None:
            out["agreement"] = (c.agreement, _ACCURACY)
    for f in p.fidelity:
        out[f"sqnr:{f.output}"] = (f.sqnr_value, _SQNR)
    if p.latency is not None:
        out["latency_ms"] = (p.latency.mean_ms, _LATENCY)
    return out


def _delta(b: float, c: float) -> float | None:
    if math.isinf(b) and math.isinf(c) and b == c:
        return 0.0
    d = c - b
    return None if math.isnan(d) else d


def _accuracy_row(prec: str, metric: str, b: float, c: float, th: Thresholds) -> ComparisonRow:
    drop = b - c
    limits = []
    regression = False
    if th.max_drop is not None:
        limits.append(b - th.max_drop)
        regression |= drop > th.max_drop + EPSILON
    if th.max_relative_drop is not None:
        limits.append(b * (1.0 - th.max_relative_drop))
        regression |= b > 0 and drop / b > th.max_relative_drop + EPSILON
    status = "regression" if regression else ("improved" if c > b + EPSILON else "ok")
    return ComparisonRow(prec, metric, b, c, _delta(b, c), max(limits) if limits else None, status)


def _sqnr_row(prec: str, metric: str, b: float, c: float, th: Thresholds) -> ComparisonRow:
    if th.min_sqnr is not None and c < th.min_sqnr - EPSILON:
        status = "regression"
    elif c > b + EPSILON:
        status = "improved"
    else:
        status = "ok"
    note = "undefined or non-finite output" if c == -math.inf else ""
    return ComparisonRow(prec, metric, b, c, _delta(b, c), th.min_sqnr, status, note)


def _latency_row(prec: str, b: float, c: float, th: Thresholds, b_batch: int, c_batch: int) -> ComparisonRow:
    if b_batch != c_batch:
        note = f"batch size {b_batch} vs {c_batch}: latency not compared"
        return ComparisonRow(prec, "latency_ms", b, c, None, None, "ok", note)
    limit = None if th.max_latency_increase is None else b * (1.0 + th.max_latency_increase)
    if limit is not None and c > limit + EPSILON:
        status = "regression"
    elif c < b - EPSILON:
        status = "improved"
    else:
        status = "ok"
    return ComparisonRow(prec, "latency_ms", b, c, _delta(b, c), limit, status)


def _fingerprint_text(section: dict[str, Any]) -> str:
    fp = section.get("fingerprint")
    if isinstance(fp, dict):
        return ", ".join(f"{k} {str(fp.get(k))[:12]}" for k in ("graph", "weights"))
    return str(fp)[:12]


def _model_identity(report: Report) -> tuple[object, object]:
    # graph + weights digests; other keys (e.g. a derived "combined" digest) are not compared.
    fp = report.model.get("fingerprint")
    if isinstance(fp, dict):
        return fp.get("graph"), fp.get("weights")
    return fp, None


def _check_comparable(baseline: Report, current: Report) -> tuple[EvalResult, EvalResult]:
    if baseline.schema_version != current.schema_version:
        raise ReportError(
            f"baseline {baseline.name} has schema version {baseline.schema_version} but current "
            f"{current.name} has {current.schema_version}; load both with load_report, which upgrades "
            "older reports"
        )
    if _model_identity(baseline) != _model_identity(current):
        raise ReportError(
            f"baseline {baseline.name} and current {current.name} are for different models: "
            f"baseline model '{baseline.model.get('path')}' ({_fingerprint_text(baseline.model)}) vs "
            f"current model '{current.model.get('path')}' ({_fingerprint_text(current.model)}); "
            "compare reports of the same model"
        )
    if baseline.data.get("fingerprint") != current.data.get("fingerprint"):
        raise ReportError(
            f"baseline {baseline.name} and current {current.name} were evaluated on different data: "
            f"baseline data '{baseline.data.get('source')}' ({_fingerprint_text(baseline.data)}) vs "
            f"current data '{current.data.get('source')}' ({_fingerprint_text(current.data)}); "
            "evaluate both on the same samples with the same preprocessing"
        )
    b_ev, c_ev = baseline.evaluation, current.evaluation
    for which, report, ev in (("baseline", baseline, b_ev), ("current", current, c_ev)):
        if ev is None:
            raise ReportError(
                f"{which} {report.name} has no evaluation results; compare reports written by `quant eval`"
            )
    if b_ev is None or c_ev is None:  # unreachable after the loop; narrows the types for mypy
        raise ReportError("a report has no evaluation results")
    return b_ev, c_ev


def compare_reports(baseline: Report, current: Report, thresholds: Thresholds | None = None) -> Comparison:
    """Compare ``current`` with ``baseline`` under ``thresholds`` (default :class:`Thresholds`)."""
    th = thresholds if thresholds is not None else Thresholds()
    b_ev, c_ev = _check_comparable(baseline, current)
    names = list(b_ev.names) + [n for n in c_ev.names if n not in b_ev.names]
    rows: list[ComparisonRow] = []
    for prec in names:
        bp = b_ev.get(prec)
        cp = c_ev.get(prec)
        bm = {} if bp is None else _metrics(bp)
        cm = {} if cp is None else _metrics(cp)
        for metric in list(bm) + [m for m in cm if m not in bm]:
            if metric not in cm:
                rows.append(ComparisonRow(prec, metric, bm[metric][0], None, None, None, "missing"))
                continue
            if metric not in bm:
                rows.append(ComparisonRow(prec, metric, None, cm[metric][0], None, None, "new"))
                continue
            (b, kind), (c, _) = bm[metric], cm[metric]
            if kind == _ACCURACY:
                rows.append(_accuracy_row(prec, metric, b, c, th))
            elif kind == _SQNR:
                rows.append(_sqnr_row(prec, metric, b, c, th))
            else:
                rows.append(_latency_row(prec, b, c, th, b_ev.batch_size, c_ev.batch_size))
    return Comparison(baseline=baseline.name, current=current.name, thresholds=th, rows=tuple(rows))


def _delta_cell(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{value:+.2f}"


def _limit_cell(row: ComparisonRow) -> str:
    if row.limit is None:
        return "-"
    sign = "<=" if row.metric == "latency_ms" else ">="
    return f"{sign} {row.limit:.2f}"


def _summary(comparison: Comparison) -> str:
    counts = ", ".join(f"{comparison.count(s)} {s}" for s in ("improved", "new", "missing"))
    if comparison.ok:
        return f"OK: no regressions ({counts})"
    regs = comparison.regressions
    which = ", ".join(f"{r.precision} {r.label}" for r in regs)
    return f"FAILED: {len(regs)} regression{'s' if len(regs) != 1 else ''} ({which}); {counts}"


def _thresholds_text(th: Thresholds) -> str:
    def opt(v: float | None, unit: str) -> str:
        return "off" if v is None else f"{v:g}{unit}"

    rel = None if th.max_relative_drop is None else th.max_relative_drop * 100
    lat = None if th.max_latency_increase is None else th.max_latency_increase * 100
    return (
        f"max drop {opt(th.max_drop, ' points')}, max relative drop {opt(rel, ' %')}, "
        f"min SQNR {opt(th.min_sqnr, ' dB')}, max latency increase {opt(lat, ' %')}"
    )


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def render_comparison(comparison: Comparison, fmt: str = "text") -> str:
    """The comparison as fixed-width text (``fmt="text"``) or a GitHub markdown table for a PR
    comment (``fmt="markdown"``)."""
    body = [
        [
            r.precision,
            r.label,
            fmt_number(r.baseline),
            fmt_number(r.current),
            _delta_cell(r.delta),
            _limit_cell(r),
            r.status + (f" ({r.note})" if r.note else ""),
        ]
        for r in comparison.rows
    ]
    headers = ["precision", "metric", "baseline", "current", "delta", "limit", "status"]
    if fmt == "text":
        lines = [
            f"baseline:   {comparison.baseline}",
            f"current:    {comparison.current}",
            f"thresholds: {_thresholds_text(comparison.thresholds)}",
            "",
            format_columns(headers, body, align="llrrrrl"),
            "",
            _summary(comparison),
        ]
        return "\n".join(lines) + "\n"
    if fmt == "markdown":
        lines = [
            "### quant: comparison with baseline",
            "",
            f"**{_md_escape(_summary(comparison))}**",
            "",
            f"Baseline: {_md_escape(comparison.baseline)}; current: {_md_escape(comparison.current)}.  ",
            f"Thresholds: {_md_escape(_thresholds_text(comparison.thresholds))}.",
            "",
            "| " + " | ".join(headers) + " |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for r, cells in zip(comparison.rows, body, strict=True):
            escaped = [_md_escape(c) for c in cells]
            if r.status == "regression":
                escaped[-1] = f"**{escaped[-1]}**"
            lines.append("| " + " | ".join(escaped) + " |")
        return "\n".join(lines) + "\n"
    raise UsageError(f"unknown comparison format '{fmt}'; use 'text' or 'markdown'")
