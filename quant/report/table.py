"""Plain-text rendering of a report: a short header and one fixed-width row per precision.

Columns: top-1 / top-5 accuracy (%), top-1 agreement with the reference (%), the worst output's
SQNR (dB; "exact" when identical to the reference), the lowest whole-set cosine over the outputs,
mean latency per batch (ms) and throughput (samples/s). "-" means not measured or not applicable
(e.g. agreement of the reference itself). When accuracy was measured against labels, the accuracy
delta of each precision against the reference is listed under the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from quant.eval.evaluate import EvalResult, PrecisionResult
from quant.report.schema import Report, arithmetic_line

DASH = "-"


def fmt_number(value: float | None, digits: int = 2) -> str:
    """A number for a table cell: "-" for None, "exact"/"-inf" for infinities."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if value == math.inf:
        return "exact"
    if value == -math.inf:
        return "-inf"
    return f"{value:.{digits}f}"


def fmt_signed(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return fmt_number(value, digits)
    return f"{value:+.{digits}f}"


def format_columns(headers: Sequence[str], rows: Sequence[Sequence[str]], *, align: str | None = None) -> str:
    """Fixed-width columns; ``align`` has one letter per column, "l" (left) or "r" (right);
    default: the first column left, the others right."""
    if align is None:
        align = "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers):
        raise ValueError("align needs one letter per column")
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def _sqnr_cell(p: PrecisionResult) -> str:
    if p.is_reference or not p.fidelity:
        return DASH
    if any(f.nonfinite for f in p.fidelity):
        return "nonfinite"
    worst = p.worst_sqnr
    if worst == -math.inf:
        return "undef"
    return fmt_number(worst)


def _row(p: PrecisionResult) -> list[str]:
    c = p.classification
    lat = p.latency
    return [
        p.name + (" (ref)" if p.is_reference else ""),
        fmt_number(None if c is None else c.top1),
        fmt_number(None if c is None else c.top5),
        DASH if p.is_reference else fmt_number(None if c is None else c.agreement),
        _sqnr_cell(p),
        fmt_number(p.min_cosine, 4),
        fmt_number(None if lat is None else lat.mean_ms),
        fmt_number(None if lat is None else lat.throughput, 1),
    ]


def _trt_header_text(header: object) -> str:
    """``TRT-<version>-<algorithm>`` as in the cache's first line; "" when unknown."""
    if isinstance(header, str):
        return header
    if isinstance(header, dict) and header.get("version") is not None and header.get("algorithm"):
        return f"TRT-{header['version']}-{header['algorithm']}"
    return ""


def _header(report: Report) -> list[str]:
    model = report.model
    fp = model.get("fingerprint") or {}
    graph_fp = str(fp.get("graph", ""))[:12]
    data = report.data
    lines = [f"model:        {model.get('path') or '(in memory)'}" + (f"  [{graph_fp}]" if graph_fp else "")]
    samples = data.get("num_samples")
    skipped = data.get("num_skipped") or 0
    data_line = f"data:         {data.get('source', '?')}  {samples} samples"
    if skipped:
        data_line += f" ({skipped} skipped)"
    lines.append(data_line)
    cal = report.calibration
    if cal is not None:
        raw_amax = cal.get("amax")
        amax: dict[str, Any] = raw_amax if isinstance(raw_amax, dict) else {}
        cal_line = f"calibration:  {cal.get('method', '?')} on {cal.get('num_samples', '?')} samples"
        if amax.get("count") is not None:
            cal_line += f", {amax['count']} tensor ranges"
        if amax.get("no_range"):
            cal_line += f", {_size(amax['no_range'])} without range"
        if cal.get("cache"):
            cal_line += f"; cache {cal['cache']}"
            header = _trt_header_text(cal.get("trt_header"))
            if header:
                cal_line += f" ({header})"
        lines.append(cal_line)
    else:
        lines.append("calibration:  none")
    for precision, entry in (report.build or {}).items():
        lines.append(f"build:        {precision}: {_build_text(entry)}")
    arithmetic = arithmetic_line(report.environment)
    if arithmetic:
        lines.append(f"arithmetic:   {arithmetic}")
    return lines


def _build_text(entry: object) -> str:
    if not isinstance(entry, dict):
        return "?"
    if entry.get("source"):
        return f"given model {entry['source']}"
    text = f"target {entry.get('target', '?')}, {entry.get('quantized_tensors', '?')} quantized activations"
    if entry.get("quantized_weights") is not None:
        text += f", {entry['quantized_weights']} quantized weights"
    if entry.get("excluded"):
        text += f", {_size(entry['excluded'])} excluded"
    if entry.get("skipped"):
        text += f", {_size(entry['skipped'])} skipped"
    return text


def _size(value: object) -> object:
    """How many items a report field lists (a hand-edited report may hold a number instead)."""
    return len(value) if isinstance(value, (list, tuple, dict)) else value


def _eval_lines(ev: EvalResult) -> list[str]:
    lines = [
        f"evaluation:   {ev.num_samples} samples, batch size {ev.batch_size}, reference {ev.reference}, "
        f"classifier output {ev.classifier_output or '(none: fidelity only)'}",
        "",
    ]
    headers = [
        "precision",
        "top-1 %",
        "top-5 %",
        "agree %",
        "min SQNR dB",
        "min cos",
        "ms/batch",
        "samples/s",
    ]
    lines.append(format_columns(headers, [_row(p) for p in ev.precisions]))
    ref = ev.get(ev.reference)
    ref_c = None if ref is None else ref.classification
    if ev.has_labels and ref_c is not None and ref_c.top1 is not None:
        deltas = []
        for p in ev.precisions:
            c = p.classification
            if p.is_reference or c is None or c.top1 is None:
                continue
            text = f"{p.name} - {ev.reference}: top-1 {fmt_signed(c.top1 - ref_c.top1)} points"
            if c.top5 is not None and ref_c.top5 is not None:
                text += f", top-5 {fmt_signed(c.top5 - ref_c.top5)} points"
            deltas.append(text)
        if deltas:
            lines.append("")
            lines.extend(deltas)
    return lines


def render_table(report: Report) -> str:
    """The report as readable fixed-width text (header, per-precision table, accuracy deltas)."""
    lines = [f"quant report (created {report.created}, quant {report.quant_version})"]
    lines.extend(_header(report))
    if report.evaluation is None:
        lines.append("evaluation:   none")
    else:
        lines.extend(_eval_lines(report.evaluation))
    return "\n".join(lines) + "\n"
