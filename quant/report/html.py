"""The HTML report: one self-contained file (inline CSS, charts as base64 PNG, no script).

:func:`render_html` turns a :class:`~quant.report.schema.Report` into an HTML5 page; it never runs
models, everything shown is in the report. Sections, in order: summary table (per precision:
accuracy, agreement, SQNR, latency), deltas against the reference, per-output fidelity, per-layer
error chart and table (``extra["layers"]``), activation histograms with amax marked
(``extra["histograms"]``), calibration settings, build, model, data, environment. A section the
report lacks (e.g. a ``quant eval`` report without ``--layers``) is replaced by a line saying
what is missing and how to get it.

Every string taken from the report is escaped (``html.escape``); chart labels are escaped for
matplotlib's mathtext. A Content-Security-Policy meta tag forbids scripts and any resource that is
not an inline ``data:`` image, so the page cannot fetch anything. Charts are drawn with matplotlib
(the ``report`` extra), imported lazily through its object-oriented API (no pyplot, no global
backend switch); without matplotlib the page has the tables and says how to get the charts.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant._io import atomic_write, check_output_not_input
from quant.report.schema import arithmetic_line
from quant.report.sections import ActivationHistogram, HistogramSection, LayerSection, read_sections
from quant.report.table import fmt_number, fmt_signed

if TYPE_CHECKING:
    from quant.eval.evaluate import EvalResult, PrecisionResult
    from quant.eval.layers import LayerError
    from quant.eval.metrics import FidelityMetrics
    from quant.report.schema import Report

logger = logging.getLogger(__name__)

__all__ = ["MAX_CHART_LAYERS", "render_html", "worst_layer_line", "write_html_report"]

#: The per-layer chart shows at most this many layers (worst first); the table lists all.
MAX_CHART_LAYERS = 40
_DPI = 100
_LABEL_CHARS = 42

_CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dee7; --bg-alt: #f5f7fa; --accent: #2f5fb3;
        --bad: #b3261e; --good: #1e7b34; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); margin: 0; background: #fff; line-height: 1.45; font-size: 15px; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.22em; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.02em; margin: 18px 0 6px; }
p { margin: 6px 0; }
.sub { color: var(--muted); margin: 0 0 8px; }
.note { color: var(--muted); background: var(--bg-alt); border-left: 4px solid var(--line);
        padding: 8px 12px; margin: 8px 0; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.92em;
              overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 0.93em; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: var(--bg-alt); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
table.kv th { width: 15em; }
td.bad { color: var(--bad); font-weight: 600; }
td.good { color: var(--good); }
figure { margin: 10px 0 18px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 4px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 8px 18px; }
nav { margin: 10px 0 0; font-size: 0.92em; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
footer { color: var(--muted); font-size: 0.85em; margin-top: 36px; }
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# --- small HTML helpers ---------------------------------------------------------------------


def _e(value: object) -> str:
    """Escape any value for HTML text or attribute use."""
    return html.escape("" if value is None else str(value), quote=True)


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Sequence[int] = (),
           classes: Sequence[Sequence[str]] | None = None, css: str = "") -> str:
    """A table; headers are plain text (escaped), cells are HTML already escaped by the caller."""
    num = set(numeric)
    head = "".join(f'<th{" class=num" if i in num else ""}>{_e(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            cls = ["num"] if i in num else []
            if classes is not None and classes[r][i]:
                cls.append(classes[r][i])
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls_attr = f' class="{css}"' if css else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv(rows: Iterable[tuple[str, object]]) -> str:
    """A two-column key/value table (values escaped; None shown as "-")."""
    body = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e('-' if v is None or v == '' else v)}</td></tr>" for k, v in rows
    )
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _fmt_value(value: object) -> str:
    """Plain-text form of a JSON value for key/value tables."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt_value(v) for v in value) or "-"
    return "-" if value is None else str(value)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sqnr_text(f: FidelityMetrics | None) -> str:
    if f is None:
        return "-"
    if f.nonfinite:
        return "non-finite"
    if f.exact:
        return "exact"
    return fmt_number(f.sqnr_db, 1) if f.sqnr_db is not None else "undefined"


def _short(text: str, limit: int = _LABEL_CHARS) -> str:
    """Shorten a long name in the middle (both ends carry meaning in layer names)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "\u2026" + text[-(limit - 1 - head):]


def _mpl_text(text: str) -> str:
    """Text from the report made literal for matplotlib ($ would start mathtext)."""
    return text.replace("$", r"\$")


# --- charts ---------------------------------------------------------------------------------


def _figure_classes() -> tuple[Any, Any] | None:
    """(Figure, FigureCanvasAgg), or None when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def _png(fig: Any, canvas_cls: Any) -> str:
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(data: str, alt: str, caption: str) -> str:
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _layer_chart(items: Sequence[LayerError], classes: tuple[Any, Any]) -> str:
    """Horizontal bars of SQNR per layer, worst at the top."""
    figure_cls, canvas_cls = classes
    shown = list(items[:MAX_CHART_LAYERS])
    has_local = any(e.local is not None for e in shown)
    series: list[tuple[str, str, list[FidelityMetrics | None]]] = []
    if has_local:
        series.append(("this layer alone (inputs from FP32)", "#2f5fb3", [e.local for e in shown]))
    series.append(("in the INT8 model (error accumulated from earlier layers)", "#e39b3a",
                   [e.fidelity for e in shown]))
    finite = [
        f.sqnr_db for _, _, fs in series for f in fs
        if f is not None and not f.exact and f.sqnr_db is not None and not f.nonfinite
    ]
    top = max([*finite, 1.0])
    low = min([*finite, 0.0])
    xmax = top * 1.18 + 2.0
    xmin = low * 1.1 if low < 0 else 0.0
    n = len(shown)
    per = 0.38 if has_local else 0.26
    fig = figure_cls(figsize=(10.5, 1.4 + per * n), layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / len(series)
    for s_idx, (label, color, fs) in enumerate(series):
        ys = [i + (s_idx - (len(series) - 1) / 2) * height for i in range(n)]
        widths = []
        texts = []
        for f in fs:
            if f is None:
                widths.append(0.0)
                texts.append("n/a")
            elif f.nonfinite:
                widths.append(0.0)
                texts.append("non-finite")
            elif f.exact:
                widths.append(xmax)
                texts.append("exact")
            elif f.sqnr_db is None:
                widths.append(0.0)
                texts.append("undefined")
            else:
                widths.append(f.sqnr_db)
                texts.append(f"{f.sqnr_db:.1f}")
        ax.barh(ys, widths, height=height * 0.92, color=color, label=label)
        for y, w, t in zip(ys, widths, texts, strict=True):
            x = min(max(w, 0.0), xmax)
            ax.text(x + (xmax - xmin) * 0.008, y, t, va="center", ha="left", fontsize=8, color="#333333")
    ax.set_yticks(range(n))
    ax.set_yticklabels([_mpl_text(_short(f"{e.layer} ({e.op_type})")) for e in shown], fontsize=9)
    ax.invert_yaxis()  # worst at the top
    ax.set_xlim(xmin, xmax * 1.06)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlabel("SQNR of the layer's output against FP32 (dB, higher is better)")
    ax.grid(axis="x", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series), fontsize=9, frameon=False)
    return _png(fig, canvas_cls)


def _histogram_chart(h: ActivationHistogram, classes: tuple[Any, Any]) -> str:
    """|x| histogram (log counts) with amax and max |x| marked."""
    figure_cls, canvas_cls = classes
    fig = figure_cls(figsize=(5.6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    edges = h.edges
    # One filled step artist (not one patch per bin); empty bins sit on the log axis' floor.
    floor = 0.7
    ax.set_yscale("log")
    ax.stairs([max(c, floor) for c in h.counts], edges, baseline=floor, fill=True, color="#7f9cc9")
    right = max(edges[-1], h.absmax, h.amax or 0.0) * 1.04
    if h.amax is not None:
        ax.axvspan(h.amax, right, color="#b3261e", alpha=0.07, linewidth=0)
        ax.axvline(h.amax, color="#b3261e", linestyle="--", linewidth=1.6,
                   label=f"amax {h.amax:.4g}" + (f" ({_mpl_text(h.method)})" if h.method else ""))
    ax.axvline(h.absmax, color="#444444", linestyle=":", linewidth=1.4, label=f"max |x| {h.absmax:.4g}")
    ax.set_xlim(0.0, right)
    ax.set_ylim(bottom=floor, top=max([*h.counts, 1]) * 2.5)
    ax.set_xlabel("|x| (activation magnitude)")
    ax.set_ylabel("values per bin (log scale)")
    ax.set_title(_mpl_text(_short(h.tensor, 56)), fontsize=10)
    # Below the axes: a legend inside would cover bars wherever the data reach the top corners.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8, frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _png(fig, canvas_cls)


# --- sections -------------------------------------------------------------------------------


def _header(report: Report) -> str:
    model = report.model.get("path") or "(in-memory model)"
    parts = [
        f"<h1>quant report: {_e(Path(str(model)).name)}</h1>",
        f'<p class="sub">created {_e(report.created)} by quant {_e(report.quant_version)}'
        f" &middot; model <code>{_e(model)}</code></p>",
    ]
    if report.command:
        parts.append(f'<p class="sub">command: <code>{_e(" ".join(report.command))}</code></p>')
    links = [("summary", "Summary"), ("layers", "Per-layer error"), ("histograms", "Histograms"),
             ("calibration", "Calibration"), ("build", "Build"), ("model", "Model and data"),
             ("environment", "Environment")]
    parts.append("<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in links) + "</nav>")
    return "\n".join(parts)


def _summary(ev: EvalResult | None) -> str:
    out = ['<h2 id="summary">Summary</h2>']
    if ev is None:
        out.append(_note("No evaluation in this report (it was made without running the models)."))
        return "\n".join(out)
    out.append(
        f'<p class="sub">{ev.num_samples} samples, batch size {ev.batch_size}, reference '
        f"<b>{_e(ev.reference)}</b>, classifier output <code>{_e(ev.classifier_output or '(none: fidelity only)')}"
        f"</code>; latency is ONNX Runtime on this machine's CPU, warm-up batches excluded.</p>"
    )
    headers = ["precision", "top-1 (%)", "top-5 (%)", "agreement with reference (%)", "worst SQNR (dB)",
               "min cosine", "latency (ms/batch)", "throughput (samples/s)"]
    rows = []
    for p in ev.precisions:
        c = p.classification
        lat = p.latency
        rows.append([
            _e(p.name) + (" (reference)" if p.is_reference else ""),
            fmt_number(None if c is None else c.top1),
            fmt_number(None if c is None else c.top5),
            "-" if p.is_reference else fmt_number(None if c is None else c.agreement),
            "-" if p.is_reference else _e(_worst_sqnr_text(p)),
            fmt_number(p.min_cosine, 4),
            fmt_number(None if lat is None else lat.mean_ms),
            fmt_number(None if lat is None else lat.throughput, 1),
        ])
    out.append(_table(headers, rows, numeric=range(1, 8)))
    out.append(_deltas(ev))
    out.append(_fidelity(ev))
    return "\n".join(out)


def _worst_sqnr_text(p: PrecisionResult) -> str:
    if not p.fidelity:
        return "-"
    worst = min(p.fidelity, key=lambda f: f.sqnr_value)
    return _sqnr_text(worst)


def _deltas(ev: EvalResult) -> str:
    ref = ev.get(ev.reference)
    others = [p for p in ev.precisions if not p.is_reference]
    title = f"<h3>Against {_e(ev.reference)}</h3>"
    if ref is None or not others:
        return title + _note("Only the reference precision was evaluated: nothing to compare.")
    rc = ref.classification
    rows = []
    classes = []
    for p in others:
        c = p.classification
        d1 = d5 = None
        if ev.has_labels and c is not None and rc is not None:
            if c.top1 is not None and rc.top1 is not None:
                d1 = c.top1 - rc.top1
            if c.top5 is not None and rc.top5 is not None:
                d5 = c.top5 - rc.top5
        speed = None
        if p.latency is not None and ref.latency is not None and p.latency.mean_ms > 0:
            speed = ref.latency.mean_ms / p.latency.mean_ms
        disagree = None if c is None or c.agreement is None else 100.0 - c.agreement
        rows.append([
            _e(p.name),
            fmt_signed(d1),
            fmt_signed(d5),
            fmt_number(disagree),
            _e(_worst_sqnr_text(p)),
            "-" if speed is None else f"{speed:.2f}\u00d7",
        ])
        classes.append([
            "",
            "bad" if d1 is not None and d1 <= -0.5 else "",
            "bad" if d5 is not None and d5 <= -0.5 else "",
            "bad" if disagree is not None and disagree > 1.0 else "",
            "",
            "good" if speed is not None and speed > 1.0 else "",
        ])
    headers = ["precision", "top-1 change (points)", "top-5 change (points)", "top-1 disagreement (%)",
               "worst SQNR (dB)", f"speed vs {ev.reference} (\u00d7, >1 is faster)"]
    note = "" if ev.has_labels else _note("The data has no labels: accuracy changes cannot be measured.")
    return title + _table(headers, rows, numeric=range(1, 6), classes=classes) + note


def _fidelity(ev: EvalResult) -> str:
    rows = []
    for p in ev.precisions:
        for f in p.fidelity:
            rows.append([
                _e(p.name), f"<code>{_e(f.output)}</code>", _e(_sqnr_text(f)),
                fmt_number(f.cosine, 5), fmt_number(f.min_sample_cosine, 4),
                fmt_number(None if f.mean_rel_error is None else f.mean_rel_error * 100, 3),
                fmt_number(f.max_abs_error, 4),
            ])
    if not rows:
        return ""
    headers = ["precision", "output", "SQNR (dB)", "cosine", "worst sample cosine", "mean relative error (%)",
               "max abs error"]
    return f"<h3>Model outputs against {_e(ev.reference)}</h3>" + _table(headers, rows, numeric=range(2, 7))


def _layers(section: LayerSection | None, classes: tuple[Any, Any] | None) -> str:
    out = ['<h2 id="layers">Per-layer quantization error</h2>']
    if section is None:
        out.append(_note(
            "Per-layer errors are not in this report. They are measured by <code>quant run</code>, or by "
            "<code>quant eval MODEL --data DATA --cache CACHE --layers --report report.json</code>."
        ))
        return "\n".join(out)
    if section.unavailable or not section.items:
        out.append(_note(f"No per-layer errors: {_e(section.unavailable or 'no quantized layer was measured')}."))
        return "\n".join(out)
    items = section.items
    data = f" of <code>{_e(section.data)}</code>" if section.data else ""
    out.append(
        f'<p class="sub">SQNR of each INT8 layer\'s output against the FP32 model on the first '
        f"{section.num_samples} samples{data} (batch size {section.batch_size}); worst first. "
        "<i>This layer alone</i>: the layer on FP32 inputs through its own Q/DQ, i.e. the error it adds. "
        "<i>In the INT8 model</i>: the output inside the fully quantized model, which also carries the error "
        "of every earlier layer.</p>"
    )
    if classes is not None:
        more = f"; the {len(items) - MAX_CHART_LAYERS} others are in the table" if len(items) > MAX_CHART_LAYERS else ""
        caption = f"SQNR per layer, worst at the top ({min(len(items), MAX_CHART_LAYERS)} layers shown{more})."
        out.append(_img(_layer_chart(items, classes), "bar chart of SQNR per layer", _e(caption)))
    else:
        out.append(_note(_MPL_MISSING))
    rows = []
    for rank, e in enumerate(items, 1):
        rows.append([
            str(rank), f"<code>{_e(e.layer)}</code>", _e(e.op_type), f"<code>{_e(e.tensor)}</code>",
            ", ".join(f"<code>{_e(t)}</code>" for t in e.inputs) or "-",
            _e(_sqnr_text(e.local)), _e(_sqnr_text(e.fidelity)),
            fmt_number(e.fidelity.cosine, 5), fmt_number(e.fidelity.max_abs_error, 4),
        ])
    headers = ["#", "layer", "op", "output tensor", "quantized inputs", "SQNR alone (dB)",
               "SQNR in INT8 model (dB)", "cosine in INT8 model", "max abs error"]
    out.append(_table(headers, rows, numeric=(0, 5, 6, 7, 8)))
    return "\n".join(out)


def _histograms(section: HistogramSection | None, classes: tuple[Any, Any] | None, num_layers: int | None) -> str:
    out = ['<h2 id="histograms">Activation histograms of the worst layers</h2>']
    if section is None:
        out.append(_note(
            "Activation histograms are not in this report; they come with the per-layer errors "
            "(<code>quant run</code> or <code>quant eval ... --cache CACHE --layers</code>)."
        ))
        return "\n".join(out)
    if section.unavailable:
        out.append(_note(f"No histograms: {_e(section.unavailable)}."))
        return "\n".join(out)
    if not section.items:
        out.append(_note("No histograms: the worst layers have no calibrated input tensors."))
        return "\n".join(out)
    out.append(
        f'<p class="sub">|x| of each quantized input of the {_worst_text(section.worst, num_layers)} over the '
        "calibration data (calibration statistics, about "
        f"{section.bins} bins up to the largest |x|). The dashed line is the amax in the cache: "
        "values above it (shaded) are clipped to it; values far below one INT8 step (amax/127) round to zero.</p>"
    )
    cards = []
    for h in section.items:
        users = ", ".join(f"<code>{_e(u)}</code>" for u in h.layers)
        if h.bin_width <= 0:
            cards.append(f"<div><h3><code>{_e(h.tensor)}</code></h3>"
                         + _note("Every value was zero: no INT8 range (the tensor stays float).") + "</div>")
            continue
        amax = "none (stays float)" if h.amax is None else f"{h.amax:.5g}"
        step = "" if h.amax is None else f", INT8 step {h.amax / 127:.3g}"
        caption = (
            f"<code>{_e(h.tensor)}</code>, input of {users}: amax {_e(amax)}"
            + (f" ({_e(h.method)})" if h.method else "")
            + f"{step}, max |x| {h.absmax:.5g}, {h.count:,} values, {100 * h.clipped_fraction:.3g} % above amax."
        )
        if classes is not None:
            cards.append("<div>" + _img(_histogram_chart(h, classes), f"histogram of {h.tensor}", caption) + "</div>")
        else:
            cards.append(f"<div><p>{caption}</p></div>")
    if classes is None:
        out.append(_note(_MPL_MISSING))
    out.append('<div class="grid">' + "".join(cards) + "</div>")
    if section.missing:
        out.append(_note("No statistics for: " + ", ".join(f"<code>{_e(t)}</code>" for t in section.missing)))
    return "\n".join(out)


def _worst_text(worst: int, num_layers: int | None) -> str:
    if num_layers is not None and num_layers <= worst:
        return "layer" if num_layers == 1 else f"{num_layers} layers"
    return f"{worst} worst layers"


def _calibration(cal: Mapping[str, Any] | None) -> str:
    out = ['<h2 id="calibration">Calibration</h2>']
    if cal is None:
        out.append(_note("No calibration in this report (no cache was given)."))
        return "\n".join(out)
    header = cal.get("trt_header") if isinstance(cal.get("trt_header"), Mapping) else None
    header_text = None
    if header and header.get("version") is not None:
        header_text = f"TRT-{header.get('version')}-{header.get('algorithm')}"
        if header.get("version_text"):
            header_text += f" (TensorRT {header['version_text']})"
    amax = _mapping(cal.get("amax"))
    rows: list[tuple[str, object]] = [
        ("method", cal.get("method")),
        ("parameters", _fmt_value(cal.get("params") or {})),
        ("calibration samples", cal.get("num_samples")),
        ("tensors calibrated", cal.get("tensors_scope")),
        ("cache", cal.get("cache")),
        ("cache format", cal.get("format")),
        ("cache header", header_text),
        ("tensor ranges", amax.get("count")),
        ("amax min / median / max", " / ".join(_fmt_value(amax.get(k)) for k in ("min", "median", "max"))),
        ("tensors without a range", _fmt_value(amax.get("no_range") or [])),
    ]
    if "seconds" in cal:
        rows.append(("calibration time (s)", cal.get("seconds")))
    if "reused" in cal:
        rows.append(("cache reused", "yes (up to date)" if cal.get("reused") else "no (calibrated now)"))
    data = cal.get("data")
    if isinstance(data, Mapping):
        rows.append(("calibration data", data.get("source")))
        rows.append(("calibration data preprocessing", _fmt_value(data.get("preprocess"))))
    out.append(_kv(rows))
    largest = amax.get("largest")
    if isinstance(largest, list) and largest:
        rows2 = [
            [f"<code>{_e(x.get('name'))}</code>", fmt_number(x.get("amax"), 4)]
            for x in largest if isinstance(x, Mapping)
        ]
        out.append("<h3>Largest ranges</h3>" + _table(["tensor", "amax"], rows2, numeric=(1,)))
    out.append(_method_scores(cal))
    return "\n".join(out)


def _method_scores(cal: Mapping[str, Any]) -> str:
    """Methods against fidelity (``--method auto``): each candidate for every tensor, and the
    per-tensor choice, measured on the same held-out samples."""
    from quant.report.sections import method_scores

    rows = method_scores(cal)
    if not rows:
        return ""
    record = _mapping(cal.get("auto"))
    cost = _mapping(record.get("cost"))
    firm = _mapping(record.get("firmness"))
    shown = any(r.get("best_share") is not None for r in rows)
    body = []
    for r in rows:
        label = _e(r["label"]) + (" (best single)" if r["best_single"] else "")
        if r["label"] == "auto":
            label = "<strong>auto (per tensor)</strong>"
        sqnr = "&infin;" if r["sqnr_db"] is None else fmt_number(r["sqnr_db"], 2)
        agree = "-" if r["agreement"] is None else fmt_number(r["agreement"], 1)
        cells = [label, _e(_fmt_value(r["params"]) if r["params"] else "-"), sqnr, agree, _e(r["tensors"])]
        if shown:
            share = r.get("best_share")
            cells.append("" if r["label"] == "auto" else "-" if share is None else fmt_number(100.0 * float(share), 0))
        body.append(cells)
    folds = int(cost.get("folds") or 1)
    where = (
        f"{_e(record.get('held_out'))} calibration samples held aside from the statistics"
        + (f" (in {folds} folds, each scored with ranges from the other samples)" if folds > 1 else "")
        if record.get("scoring_data", "held-out") == "held-out"
        else f"{_e(record.get('held_out'))} samples of separate scoring data"
    )
    note = _note(
        f"Output SQNR and top-1 agreement with FP32 on {where}, TensorRT's exact INT8 arithmetic; "
        f"{_e(record.get('evaluations'))} evaluations costing {_e(cost.get('passes'))}x one forward pass over "
        "the calibration set. 'tensors' counts the tensors that chose each method."
    )
    headers = ["method", "parameters", "SQNR dB", "top-1 agree %", "tensors"]
    if shown:
        from quant.cache.inspect import best_share, firmness_line

        headers.append("best in %")
        best = str(record.get("best_single"))
        if best_share(dict(firm), best) is not None:
            note += _note(_e(firmness_line(dict(firm), best)) + ".")
    return (
        '<h3 id="methods">Methods against fidelity</h3>'
        + _table(headers, body, numeric=(2, 3, 4, 5) if shown else (2, 3, 4))
        + note
    )


def _build(build: Mapping[str, Any] | None) -> str:
    out = ['<h2 id="build">Build</h2>']
    if not build:
        out.append(_note("No build information in this report."))
        return "\n".join(out)
    for precision, entry in build.items():
        out.append(f"<h3>{_e(precision)}</h3>")
        if not isinstance(entry, Mapping):
            out.append(_kv([("entry", entry)]))
            continue
        if entry.get("source"):
            out.append(_kv([("model given", entry["source"])]))
            continue
        skipped = entry.get("skipped") or {}
        out.append(_kv([
            ("Q/DQ target", entry.get("target")),
            ("quantized activations", entry.get("quantized_tensors")),
            ("quantized weights", entry.get("quantized_weights")),
            ("excluded", _fmt_value(entry.get("excluded") or [])),
            ("tensors missing from the cache", _fmt_value(entry.get("cache_missing") or [])),
            ("tensors kept float", len(skipped) if isinstance(skipped, Mapping) else _fmt_value(skipped)),
        ]))
        if isinstance(skipped, Mapping) and skipped:
            rows = [[f"<code>{_e(k)}</code>", _e(v)] for k, v in skipped.items()]
            out.append(_table(["tensor kept float", "reason"], rows))
    return "\n".join(out)


def _model_and_data(report: Report) -> str:
    out = ['<h2 id="model">Model and data</h2>']
    m = report.model
    fp = _mapping(m.get("fingerprint"))
    out.append(_kv([
        ("model", m.get("path") or "(in memory)"),
        ("graph fingerprint", fp.get("graph")),
        ("weights fingerprint", fp.get("weights")),
    ]))
    rows = []
    for kind in ("inputs", "outputs"):
        for t in m.get(kind) or []:
            if isinstance(t, Mapping):
                shape = "[" + ", ".join("?" if d is None else str(d) for d in (t.get("shape") or [])) + "]"
                rows.append([kind[:-1], f"<code>{_e(t.get('name'))}</code>", _e(shape), _e(t.get("dtype"))])
    if rows:
        out.append(_table(["", "tensor", "shape", "type"], rows))
    d = report.data
    out.append("<h3>Evaluation data</h3>")
    out.append(_kv([
        ("source", d.get("source")),
        ("kind", d.get("kind")),
        ("samples", d.get("num_samples")),
        ("skipped (bad images)", d.get("num_skipped")),
        ("preprocessing", _fmt_value(d.get("preprocess"))),
        ("fingerprint", d.get("fingerprint")),
    ]))
    return "\n".join(out)


def _arithmetic(env: Mapping[str, Any]) -> str:
    """The one line saying which arithmetic produced each INT8 precision (empty when unknown)."""
    line = arithmetic_line(env)
    return f'<p class="sub" id="arithmetic">{_e(line)}</p>' if line else ""


def _environment(env: Mapping[str, Any]) -> str:
    out = ['<h2 id="environment">Environment</h2>']
    if not env:
        out.append(_note("No environment information in this report."))
    else:
        out.append(_kv((str(k), _fmt_value(v)) for k, v in env.items()))
    return "\n".join(out)


_MPL_MISSING = "Charts need matplotlib (a quant dependency), which is not installed: <code>pip install matplotlib</code>."


def render_html(report: Report) -> str:
    """The report as one self-contained HTML5 page (see the module docstring)."""
    layers, hists = read_sections(report.extra or {})
    classes = _figure_classes()
    if classes is None:
        logger.warning("matplotlib is not installed: the HTML report has tables but no charts")
    body = [
        _header(report),
        _summary(report.evaluation),
        _arithmetic(report.environment),
        _layers(layers, classes),
        _histograms(hists, classes, None if layers is None else len(layers.items)),
        _calibration(report.calibration),
        _build(report.build),
        _model_and_data(report),
        _environment(report.environment),
        f"<footer>quant report schema {report.schema_version} &middot; made by quant "
        f"{_e(report.quant_version)}; self-contained: no scripts, no external files.</footer>",
    ]
    title = Path(str(report.model.get("path") or "model")).name
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>quant report: {_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        "<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def worst_layer_line(report: Report) -> str:
    """One line naming the worst INT8 layer of ``report`` (or why there is none), for the CLI."""
    layers, _ = read_sections(report.extra or {})
    if layers is None:
        return "per-layer errors: not measured"
    if not layers.items:
        return f"per-layer errors: none ({layers.unavailable or 'no quantized layer'})"
    worst = layers.items[0]

    def db(f: FidelityMetrics) -> str:
        text = _sqnr_text(f)
        return f"SQNR {text} dB" if f.sqnr_db is not None and not f.exact and not f.nonfinite else f"SQNR {text}"

    alone = "" if worst.local is None else f"{db(worst.local)} alone, "
    return (
        f"worst INT8 layer of {len(layers.items)}: {worst.layer} ({worst.op_type}), {alone}"
        f"{db(worst.fidelity)} in the INT8 model"
    )


def write_html_report(report: Report, path: str | os.PathLike[str]) -> Path:
    """Render ``report`` and write it to ``path`` atomically (never over the report it came from)."""
    check_output_not_input(path, report.source)
    return atomic_write(path, render_html(report))

